"""Checkpoints: the trained classifier (safetensors + metadata) and the resumable training state.

* The classifier file (its name is the method kind's, :mod:`lmpt.engine.methods`): the learned tensors
  (the prompt context ``ctx``; the probe's ``linear.weight`` and ``linear.bias``; zero-shot text features) with
  JSON metadata: backbone name and weights fingerprint, class names, config, which epoch and how it was
  selected, the preprocessing and the calibration. This is what ``lmpt eval``, ``lmpt predict`` and
  ``lmpt export`` load.
* The training state (:attr:`RunLayout.STATE`): everything needed to continue a killed run bit for bit on the
  CPU (weights, optimiser, scheduler and loss-scaler state, the sampling RNG, history, best-so-far). Written
  after every epoch.

Both are written atomically: a crash while writing leaves the previous file intact.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ...backbone import CLIPBackbone
from ...calibration import Calibration
from ...deploy.checks import check_calibration, check_class_names, check_finite
from ...errors import CheckpointError
from ...io import atomic_write_bytes, safetensors_bytes
from ..config import Config
from ..methods import METHOD_KINDS, MethodKind, weights_files
from ..prepared import Prepared
from .layout import RunLayout

FORMAT_VERSION = 2


def save_weights(path: Union[str, Path], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write a run's learned tensors and their metadata to a safetensors file, atomically."""
    meta = dict(meta, format_version=FORMAT_VERSION)
    atomic_write_bytes(path, safetensors_bytes({k: v.detach().cpu().float().contiguous() for k, v in tensors.items()},
                                               {"lmpt": json.dumps(meta)}))


def classifier_meta(cfg: Config, prepared: Prepared, kind: MethodKind, calibration: Calibration, **extra: Any
                    ) -> dict[str, Any]:
    """The metadata a classifier file carries: backbone, class names, config, preprocessing and calibration."""
    meta = {"backbone": prepared.backbone.describe(), "class_names": prepared.dataset.class_names,
            "config": cfg.to_dict(), "method": cfg.run.method, "kind": kind.name,
            "logit_scale": prepared.backbone.logit_scale,
            "preprocess": cfg.data.preprocess, "calibration": calibration.to_dict()}
    meta.update(extra)
    return meta


def model_file(path: Union[str, Path]) -> Path:
    """The classifier file of a run folder (or the file itself)."""
    path = Path(path)
    if path.is_dir():
        found = RunLayout(path).find_weights()
        if found is None:
            raise CheckpointError(f"no classifier in {path}: pass a run folder written by `lmpt train` or "
                                  f"`lmpt zeroshot` (it holds {' or '.join(weights_files())}) or the .safetensors "
                                  "file itself")
        return found
    if not path.is_file():
        raise CheckpointError(f"no classifier file at {path}: pass a run folder written by `lmpt train` "
                              f"or its {' / '.join(weights_files())}")
    return path


def load_weights(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a run's classifier file: ``(tensors, metadata)``."""
    from safetensors import safe_open

    path = model_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("lmpt", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable lmpt classifier file ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or not meta:
        raise CheckpointError(f"{path} has no lmpt metadata; was it written by `lmpt train`?")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version!r}, newer than this lmpt reads ({FORMAT_VERSION}); "
                              "upgrade lmpt to read it")
    names = check_class_names(meta, path)
    for key in ("backbone", "config"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{path}: metadata '{key}' is missing or not a mapping; the file is damaged")
    if not isinstance(meta["backbone"].get("model"), str):
        raise CheckpointError(f"{path}: metadata 'backbone' does not name its model; the file is damaged")
    check_calibration(meta.get("calibration"), len(names), path)
    check_finite(tensors, path)
    meta.setdefault("kind", next((k.name for k in METHOD_KINDS.values() if k.weights_file == path.name), "prompt"))
    return tensors, meta


def check_compatible(meta: dict[str, Any], class_names: Optional[Sequence[str]], backbone: CLIPBackbone,
                     source: Union[str, Path]) -> None:
    """Refuse a checkpoint whose classes (unless ``class_names`` is None) or backbone differ from what it is used with."""
    saved = list(meta.get("class_names", []))
    if class_names is not None:
        if len(saved) != len(class_names):
            raise CheckpointError(f"{source} was trained for {len(saved)} classes but the data has "
                                  f"{len(class_names)}; use the data set (and class list) the prompt was trained on")
        if saved != list(class_names):
            diff = [(i, a, b) for i, (a, b) in enumerate(zip(saved, class_names)) if a != b][:3]
            detail = ", ".join(f"#{i}: '{a}' vs '{b}'" for i, a, b in diff)
            raise CheckpointError(f"{source}: class names differ from the data's ({detail}); "
                                  "use the same class list and data.class_names setting as in training")
    bb = meta.get("backbone", {})
    weights = bb.get("weights_fingerprint", bb.get("fingerprint"))  # the weights as loaded, before any BatchNorm change
    if bb.get("model") != backbone.model_name or weights != backbone.weights_fingerprint:
        raise CheckpointError(
            f"{source} was trained with backbone {bb.get('model')} (weights {bb.get('pretrained')}, fingerprint "
            f"{bb.get('fingerprint')}) but this run loads {backbone.model_name} (weights {backbone.pretrained}, "
            f"fingerprint {backbone.fingerprint}); pass the same model.backbone and model.pretrained")


def save_state(path: Union[str, Path], state: dict[str, Any]) -> None:
    """Write the training state atomically (serialised in memory first; a failed write keeps the previous file)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Union[str, Path]) -> Optional[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read training state {path} ({type(exc).__name__}: {exc}); "
                              "delete it to restart the run from scratch") from None
