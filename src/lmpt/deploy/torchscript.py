"""An exported TorchScript classifier (``lmpt export --format torchscript``), usable without the run folder or
open_clip.

The file holds the frozen image tower and the class head (class text features computed once, CLIP's logit
scale folded in; the linear probe's weights for ``linear-probe`` runs) as a traced module whose forward maps
preprocessed images ``[B, 3, s, s]`` to ``(logits, probabilities)``, the probabilities calibrated. The JSON
metadata inside the archive (``lmpt.json``) gives the class names, per-class thresholds, calibration, the
preprocessing and where it came from. ``load_classifier(path)`` reads it::

    clf = lmpt.load_classifier("model.pt")
    result = clf.predict(["a.jpg", "photos/"])   # files, folders, globs or manifests
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ..errors import CheckpointError
from ..predictor import Predicting
from ..predictor_torch import TorchBatching
from .checks import check_finite
from .meta import EXPORT_VERSION, META_NAME, validate_meta


class ExportedClassifier(TorchBatching, Predicting):
    """A loaded ``lmpt export`` file: preprocessing, the traced model and its decisions."""

    def __init__(self, module: torch.jit.ScriptModule, meta: dict[str, Any], device: Union[str, torch.device] = "cpu"):
        from ..data.images import transform_from_signature

        self.module, self.meta, self.device = module, meta, torch.device(device)
        self.class_names: list[str] = list(meta["class_names"])
        self.thresholds = np.asarray(meta["thresholds"], dtype=np.float64)
        self.image_size = int(meta["preprocess"]["image_size"])
        self.transform = transform_from_signature(meta["preprocess"])

    @torch.no_grad()
    def logits_and_probabilities(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, probs = self.module(images.to(self.device, torch.float32))
        return logits.float().cpu(), probs.float().cpu()

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities ``[B, C]`` of preprocessed images."""
        return self.logits_and_probabilities(images)[1].double().numpy()


def load_classifier(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> ExportedClassifier:
    """Load a classifier written by ``lmpt export`` (TorchScript)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no exported classifier at {path}: write one with `lmpt export RUN_DIR --out {path}`")
    extra = {META_NAME: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice; the format still loads
            module = torch.jit.load(str(path), map_location=str(device), _extra_files=extra)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a TorchScript file written by `lmpt export` "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not extra[META_NAME]:
        raise CheckpointError(f"{path} has no lmpt metadata; was it written by `lmpt export`?")
    try:
        meta = json.loads(extra[META_NAME])
    except ValueError:
        raise CheckpointError(f"{path}: its lmpt metadata is not JSON; re-export the run with `lmpt export`") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its lmpt metadata is not a JSON object; re-export the run with `lmpt export`")
    meta = validate_meta(meta, path)
    check_finite(dict(module.named_buffers()), path)
    module.eval()
    return ExportedClassifier(module, meta, device)


__all__ = ["ExportedClassifier", "load_classifier", "META_NAME", "EXPORT_VERSION"]
