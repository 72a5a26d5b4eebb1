"""One process per run folder: an exclusive ``fcntl.flock`` on the folder's lock file (:attr:`RunLayout.LOCK`).

Two ``lmpt train --out D --name same`` started together would both write the same folder and one result would
be lost; the second now stops at once with one line. The lock is released (and its file removed) when the run
ends, and the kernel releases it when a process dies, so a killed run never leaves the folder locked.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ...errors import ConfigError
from ...io import write_error
from .layout import RunLayout

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL lock files instead
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def run_folder_lock(layout: RunLayout) -> Iterator[None]:
    """Hold the run folder's lock while the block runs; raise ConfigError when another process holds it."""
    path = layout / RunLayout.LOCK
    fd = _acquire(path, layout.root)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing releases the flock


def _acquire(path: Path, root: Path) -> int:
    while True:
        try:
            flags = os.O_RDWR | os.O_CREAT | (0 if fcntl is not None else os.O_EXCL)
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            raise _busy(path, root) from None
        except OSError as exc:
            raise write_error(path, exc) from None
        if fcntl is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise _busy(path, root) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not a file its last holder just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _busy(path: Path, root: Path) -> ConfigError:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return ConfigError(f"run folder {root} is in use by another lmpt process (pid {pid if pid.isdigit() else '?'}); "
                       "wait for it to finish, or choose another run.name / --name")
