"""Progress for long work: a tqdm bar on a terminal, plain lines in logs.

When stderr is not a terminal (CI logs, ``nohup``, files) a bar's carriage-return frames would fill the log,
so :func:`progress` returns a :class:`LineProgress` that prints one plain line per step of ``every`` units
(one per epoch for training) and a last line with the elapsed time.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO


class LineProgress:
    """The part of tqdm's interface lmpt uses (``update``, ``set_postfix``, ``close``), as plain lines."""

    def __init__(self, total: int, desc: str, unit: str, every: Optional[int] = None,
                 stream: Optional[TextIO] = None, initial: int = 0) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.every = max(1, int(every)) if every else max(1, self.total // 4)
        self.stream = stream or sys.stderr
        self.n = int(initial)
        self._last = self.n
        self._postfix = ""
        self._start = time.perf_counter()
        self._closed = False

    def set_postfix(self, values: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        items = {**(values or {}), **kwargs}
        self._postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self._last >= self.every or self.n >= self.total:
            self._last = self.n
            self._print()

    def _print(self) -> None:
        elapsed = time.perf_counter() - self._start
        extra = f", {self._postfix}" if self._postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}{extra} ({elapsed:.1f} s)", file=self.stream, flush=True)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(LineProgress):
    def _print(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True, every: Optional[int] = None,
             initial: int = 0):
    """A progress reporter: tqdm on a terminal, :class:`LineProgress` otherwise, nothing when not ``enabled``."""
    if not enabled:
        return _Silent(total, desc, unit, every, initial=initial)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False)
    return LineProgress(total, desc, unit, every, initial=initial)
