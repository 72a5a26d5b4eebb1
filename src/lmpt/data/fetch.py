"""HTTP for the image downloads: one file with retries and back-off, resumable archives, verified images.

Built on :mod:`urllib.request` (no extra dependency). Nothing half-written ever sits at a file's final name:
images are decoded from memory and then written with :func:`lmpt.io.atomic_path`; an archive grows in a
``.part`` file (resumed with an HTTP ``Range`` request) and is renamed only when complete.
"""
from __future__ import annotations

import http.client
import io
import logging
import os
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from ..errors import DataError
from ..io import atomic_path

logger = logging.getLogger(__name__)

T = TypeVar("T")
USER_AGENT = "lmpt-download/1 (+https://github.com/richard-peng-xia/LMPT)"
CHUNK = 1 << 16


class TransferError(OSError):
    """A transfer that failed in a way worth retrying (connection, 5xx, truncated body, undecodable image)."""


class ConnectError(TransferError):
    """The host could not be reached at all (DNS, refused, timed out): no HTTP answer."""


class RangeNotSatisfiable(TransferError):
    """HTTP 416 to a resume: the part on disk is not a prefix of the host's file; it is dropped and restarted."""


class NotFound(OSError):
    """The host answered that it does not have the file (HTTP 404/403/410): not retried on that host."""


def _open(url: str, timeout: float, start: int = 0):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 404, 410):
            raise NotFound(f"{url}: HTTP {exc.code}") from None
        if exc.code == 416 and start:  # asked past the end: the part is complete or stale
            raise RangeNotSatisfiable(f"{url}: HTTP 416 for a resume at byte {start}") from None
        raise TransferError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise ConnectError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def with_retries(fn: Callable[[], T], retries: int = 4, backoff: float = 0.5, what: str = "") -> T:
    """Call ``fn``; on :class:`TransferError` wait ``backoff * 2**k`` seconds (with jitter) and try again."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except TransferError as exc:
            if attempt == retries:
                raise
            delay = backoff * (2 ** attempt) * (0.5 + random.random() / 2)
            logger.info("%s: %s; retrying in %.2f s (%d/%d)", what, exc, delay, attempt + 1, retries)
            time.sleep(delay)
    raise AssertionError("unreachable")


def get_bytes(url: str, timeout: float = 30.0) -> bytes:
    """The whole body of ``url``; TransferError when it is shorter than the Content-Length the host sent."""
    with _open(url, timeout) as resp:
        expected = resp.headers.get("Content-Length")
        try:
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:  # IncompleteRead, reset connection
            raise TransferError(f"{url}: transfer broke off ({type(exc).__name__})") from None
    if expected is not None and len(body) != int(expected):
        raise TransferError(f"{url}: got {len(body)} of {expected} bytes")
    return body


def decode_check(data: bytes, name: str) -> None:
    """TransferError unless ``data`` decodes fully as an image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad transfer
        raise TransferError(f"{name}: the downloaded file does not decode ({type(exc).__name__})") from None


def fetch_image(urls: Sequence[str], dest: Path, retries: int = 4, backoff: float = 0.5,
                timeout: float = 30.0) -> int:
    """Download one image from the first of ``urls`` that has it, check that it decodes, write it atomically.

    Each host gets ``retries`` retries with exponential back-off. Returns the bytes written. Raises
    :class:`TransferError` / :class:`NotFound` (with every host's reason) when no host delivered a good file.
    """
    errors: list[Exception] = []
    for url in urls:
        def attempt() -> bytes:
            data = get_bytes(url, timeout)
            decode_check(data, url)
            return data

        try:
            data = with_retries(attempt, retries, backoff, what=url)
        except (TransferError, NotFound) as exc:
            errors.append(exc)
            continue
        with atomic_path(dest) as tmp:
            tmp.write_bytes(data)
        return len(data)
    if len(errors) == 1:
        raise errors[0]
    kind = TransferError if any(isinstance(e, TransferError) for e in errors) else NotFound
    raise kind(" | ".join(str(e) for e in errors) or f"no host for {dest.name}")


def reachable(url: str, retries: int = 2, backoff: float = 0.5, timeout: float = 15.0) -> bool:
    """False when ``url``'s host gives no HTTP answer at all after ``retries`` retries (any HTTP status is True)."""
    def probe() -> bool:
        try:
            with _open(url, timeout):
                return True
        except ConnectError:
            raise
        except (TransferError, NotFound):
            return True

    try:
        return with_retries(probe, retries, backoff, what=url)
    except ConnectError:
        return False


def part_path(dest: Path) -> Path:
    """Where an unfinished download of ``dest`` grows (hidden, not an archive name)."""
    return dest.with_name(f".{dest.name}.part")


def download_resumable(url: str, dest: Path, part: Optional[Path] = None, show_progress: bool = True,
                       timeout: float = 60.0) -> int:
    """Download ``url`` to ``dest``, continuing a ``.part`` file left by an interrupted run (HTTP Range).

    A host that ignores Range (answers 200) restarts the part from zero. The part is renamed to ``dest`` only
    when its length equals the total the host announced; a broken transfer raises TransferError and keeps the
    part for the next attempt. Returns the bytes transferred by this call.
    """
    from ..progress import progress

    part = part or part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    got = 0
    try:
        resp = _open(url, timeout, start)
    except RangeNotSatisfiable:
        part.unlink()  # longer than the host's file: start over on the next attempt
        raise
    with resp:
        status = getattr(resp, "status", 200)
        if start and status != 206:
            start = 0  # no range support: start over
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        if start:
            logger.info("%s: resuming at byte %d", url, start)
        bar = progress(total or 0, f"downloading {dest.name}", unit="B", enabled=show_progress,
                       every=max(1, (total or 0) // 10), initial=start)
        with bar, open(part, "ab" if start else "wb") as fh:
            try:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise TransferError(f"{url}: transfer broke off after {start + got} bytes "
                                    f"({type(exc).__name__})") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise TransferError(f"{url}: got {size} of {total} bytes (kept {part.name} to resume)")
    os.replace(part, dest)
    return got


def remove_if_exists(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def describe_failure(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, (TransferError, NotFound, DataError)) else f"{type(exc).__name__}: {exc}"
