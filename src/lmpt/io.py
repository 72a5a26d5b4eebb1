"""Small file helpers: atomic writes and content hashing."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash or exception inside the block leaves ``path`` untouched (the temporary file is
    removed), so a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically (NaN and infinities become ``null``)."""
    text = json.dumps(_finite_or_none(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (e.g. the mAP of an empty class group) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _finite_or_none(obj.tolist())
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON form of ``obj`` (dict keys sorted)."""
    data = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:length]
