"""Small file helpers: atomic writes and content hashing."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from .errors import UserError

PathLike = Union[str, Path]


def write_error(path: PathLike, exc: BaseException) -> UserError:
    """A one-line :class:`UserError` for a failed write of ``path`` (full disk, permissions, a folder in the way)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    low = text.lower()
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or any(k in low for k in (
            "no space", "file too large", "file size limit", "write failed", "os error 28", "os error 27",
            "os error 122", "unexpected pos")):
        why = "no space left on the device (or a file-size limit); free some space and try again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS) or "os error 13" in low:
        why = "permission denied (or a read-only file system); choose a folder you can write to"
    elif code == errno.EISDIR or (code is None and Path(path).is_dir()):
        why = "it is a folder; give a file name"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        why = "a part of the path is a file, not a folder"
    elif code == errno.ENAMETOOLONG:
        why = "the name is too long"
    else:
        first = text.splitlines()[0] if text else type(exc).__name__
        why = f"{getattr(exc, 'strerror', None) or first}"
    return UserError(f"cannot write {path}: {why}")


def make_dir(path: PathLike, what: str = "folder") -> Path:
    """``mkdir -p path``, with an error naming it when that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot create {what} {path}: a file of that name is in the way") from None
    except OSError as exc:
        raise UserError(f"cannot create {what} {path}: {write_error(path, exc).args[0].split(': ', 1)[1]}") from None
    return path


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash or exception inside the block leaves ``path`` untouched (the temporary file is
    removed), so a reader never sees a half-written file. A write that fails for want of space or
    permission, or because ``path`` is a folder, raises a :class:`UserError` naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file name")
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except UserError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from None
    except Exception as exc:  # torch's and safetensors' writers report a full disk in their own exception types
        if _is_write_failure(exc):
            raise write_error(path, exc) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _is_write_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("write failed", "no space", "file too large", "unexpected pos", "pytorchstreamwriter",
                                   "os error 28", "os error 27", "os error 13", "os error 122"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (serialise in memory first: a C++ writer that fails on a full disk
    may abort the process instead of raising)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def safetensors_bytes(tensors: dict[str, Any], metadata: Union[dict[str, str], None] = None) -> bytes:
    """``tensors`` in the safetensors format with a canonical header (metadata and tensors in key order), so the
    same tensors and metadata always give the same bytes: safetensors itself writes metadata in hash order."""
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    ordered: dict[str, Any] = {}
    meta = header.pop("__metadata__", None)
    if meta:
        ordered["__metadata__"] = dict(sorted(meta.items()))
    ordered.update(sorted(header.items()))  # data offsets are relative to the data section: unchanged
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


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
