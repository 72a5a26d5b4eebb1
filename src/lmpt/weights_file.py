"""Reading CLIP weights files without running code from them.

State dicts (``.pt``/``.bin``) load with ``torch.load(weights_only=True)``, ``.safetensors`` files with
safetensors, and OpenAI's TorchScript archives (``RN50.pt``, ``ViT-B-16.pt``) are read as data: the archive's
``data.pkl`` is unpickled by a restricted unpickler that builds tensors from the ``data/N`` storages and stands
a plain record in for every TorchScript object, so neither the archive's TorchScript code nor any
``__setstate__`` it defines is executed (``torch.jit.load`` would run both). Anything in the pickle other than
tensors, storages, containers and TorchScript objects is refused.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from .errors import UserError

logger = logging.getLogger(__name__)

OPENAI_MARKER_KEYS = ("input_resolution", "context_length", "vocab_size")
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


@dataclass
class LoadedWeights:
    """A state dict read from a file, with what was learned about its origin."""

    state_dict: dict[str, torch.Tensor]
    openai: bool
    source: str
    kind: str  # "torchscript", "safetensors", "state_dict", "checkpoint"


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_weights_file(path: Union[str, Path]) -> LoadedWeights:
    """Read a CLIP weights file into a state dict (on the CPU) and detect OpenAI weights.

    OpenAI weights are recognised only by evidence that cannot misfire: the entries OpenAI's
    checkpoints carry and no open_clip model has (``input_resolution``, ``context_length``,
    ``vocab_size``; present in OpenAI's ``RN50.pt``/``ViT-B-16.pt`` archives and in state dicts taken
    from them). A bare fp16 state dict is *not* taken for OpenAI's (GELU models are exported in fp16
    too); it gets a warning that says how to force QuickGELU (``model.quick_gelu=true``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file not found: {path}. Pass the path of a CLIP weights file "
                        "(e.g. OpenAI's RN50.pt or ViT-B-16.pt), or leave pretrained empty for random init.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
            kind = "safetensors"
        elif _is_torchscript(path):
            raw = read_torchscript_tensors(path)  # the tensors only: the archive's code is never run
            kind = "torchscript"
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
            kind = "state_dict"
    except UserError:
        raise
    except Exception as exc:  # corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"could not read weights file {path}: {type(exc).__name__}: {first[:300]}. "
                        "Expected OpenAI's TorchScript archive, a state_dict .pt, a .safetensors file "
                        "or an open_clip checkpoint.") from None

    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw, kind = raw["state_dict"], "checkpoint"
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserError(f"{path} does not hold a CLIP state dict (found {type(raw).__name__}).")
    sd = dict(raw)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    openai = any(k in sd for k in OPENAI_MARKER_KEYS)
    if not openai and "text_projection" in sd:
        floats = [v for v in sd.values() if v.is_floating_point()]
        if floats and all(v.dtype == torch.float16 for v in floats):
            logger.warning("%s: fp16 CLIP weights without OpenAI's marker entries: built with the architecture's own "
                           "activation. If these are OpenAI's CLIP weights saved as a state dict, pass "
                           "model.quick_gelu=true (OpenAI's models use QuickGELU).", path)
    for key in OPENAI_MARKER_KEYS:
        sd.pop(key, None)
    return LoadedWeights(state_dict=sd, openai=openai, source=str(path), kind=kind)


class _ScriptObject:
    """Stands in for a TorchScript object (``__torch__.*``) in the pickle: keeps its state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:  # ours, not the archive's
        self.state = state


class _StorageType:
    def __init__(self, name: str) -> None:
        if name not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported storage type torch.{name}")
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *unused: Any) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), int(offset)).clone()


def _build_list(values: Any) -> list:
    return list(values)


class _TensorsOnly(pickle.Unpickler):
    """Unpickles a TorchScript archive's ``data.pkl``: tensors, containers and stand-ins, nothing else."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, data: bytes) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_") and name != "build_tensor_from_id":
            return _build_list
        if (module, name) == ("torch", "device"):
            return torch.device
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a weights archive holds tensors only")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            flat = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
            if flat.numel() < int(numel):
                raise pickle.UnpicklingError(f"storage {key} holds {flat.numel()} values, {numel} expected")
            self.storages[key] = flat
        return self.storages[key]


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    if depth > 200:
        raise UserError("the archive's objects nest too deeply")
    if isinstance(obj, torch.Tensor):
        out.setdefault(prefix, obj)
    elif isinstance(obj, _ScriptObject):
        _collect(obj.state, prefix, out, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and key not in ("training", "_is_full_backward_hook"):
                _collect(value, f"{prefix}.{key}" if prefix else key, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _collect(value, f"{prefix}.{i}" if prefix else str(i), out, depth + 1)


def read_torchscript_tensors(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive by their dotted attribute names (the module's state dict), read
    without executing the archive's code (see the module docstring)."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UserError(f"{path}: a TorchScript archive holds one <name>/data.pkl, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        root = _TensorsOnly(archive, prefix, archive.read(pickles[0])).load()
    tensors: dict[str, torch.Tensor] = {}
    _collect(root, "", tensors)
    return tensors
