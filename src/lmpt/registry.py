"""Registries for what users pick by name: classification losses, methods, preprocessing modes, ...

A :class:`Registry` maps names to entries (a builder function or a description object). Config
validation and the command line read the same registry, so adding an entry in one place makes it
valid everywhere.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Callable, Generic, Iterator, Optional, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    """An ordered, read-mostly mapping ``name -> entry`` with helpful lookup errors.

    Iterating yields the names in registration order, so ``", ".join(registry)`` lists them.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, entry: Optional[T] = None):
        """Register ``entry`` under ``name``; without ``entry``, return a decorator."""
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add if entry is None else add(entry)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def suggest(self, name: str) -> str:
        """`` Did you mean x?`` for a close name, else an empty string."""
        close = difflib.get_close_matches(str(name), list(self._items), n=2, cutoff=0.5)
        return f" Did you mean {' or '.join(close)}?" if close else ""

    def lookup(self, name: str, normalize: Callable[[str], str] = str) -> T:
        """The entry of ``normalize(name)``; :class:`~lmpt.errors.ConfigError` naming the known entries otherwise."""
        key = normalize(name)
        if key not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self._items)}.{self.suggest(key)}")
        return self._items[key]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
