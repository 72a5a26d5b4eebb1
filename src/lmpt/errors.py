"""User-facing errors.

Raise :class:`UserError` (or a subclass) for anything a user can fix: a missing file, a bad
config value, a malformed manifest line. The message must name the file, line or value and say
what to do. The CLI prints these without a traceback and exits with status 2.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as a message rather than a traceback."""


class DataError(UserError):
    """A problem with data files: lists, manifests, images, captions."""


class ConfigError(UserError):
    """A problem with a configuration value or override."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, or does not match the data or backbone."""
