"""``lmpt export``: a run's classifier as one self-contained TorchScript file (see :mod:`lmpt.deploy`).

The image tower is traced at the backbone's input size in float32; the class head is the run's
:class:`~lmpt.engine.inference.Classifier` weights (text features computed once: no text tower at inference),
followed by the run's calibration. Metadata (class names, thresholds, calibration, preprocessing, source)
travels inside the archive as ``lmpt.json``.
"""
from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ... import __version__
from ...errors import UserError
from ...deploy.torchscript import EXPORT_VERSION, META_NAME
from ...io import atomic_write_bytes
from .inference import Classifier, load_run, preprocess_signature

logger = logging.getLogger(__name__)


class ExportModule(torch.nn.Module):
    """images ``[B, 3, s, s]`` -> ``(logits, calibrated probabilities)``, both ``[B, C]``."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.visual = classifier.backbone.model.visual
        cal = classifier.calibration
        self.register_buffer("weight", classifier.weight.detach().cpu().clone())
        self.register_buffer("bias", classifier.bias.detach().cpu().clone())
        self.register_buffer("cal_a", torch.tensor(cal.a, dtype=torch.float32))
        self.register_buffer("cal_b", torch.tensor(cal.b, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.visual(images)
        features = features / features.norm(dim=-1, keepdim=True)
        logits = features @ self.weight.t() + self.bias
        return logits, torch.sigmoid(logits * self.cal_a + self.cal_b)


def export_meta(classifier: Classifier, meta: dict[str, Any], source: str) -> dict[str, Any]:
    cal = classifier.calibration
    return {"export_version": EXPORT_VERSION, "lmpt_version": __version__, "source": source,
            "class_names": classifier.class_names, "thresholds": list(cal.thresholds),
            "calibration": cal.to_dict() if classifier.calibrated else None,
            "preprocess": preprocess_signature(meta, classifier.backbone),
            "backbone": meta.get("backbone"), "method": meta.get("method"), "kind": classifier.kind}


def export_run(run: Union[str, Path], out: Union[str, Path], weights: Optional[str] = None) -> Path:
    """Write the TorchScript classifier of ``run`` (a run folder or its classifier file) to ``out``."""
    out = Path(out)
    if out.suffix == ".onnx":
        raise UserError(f"--out {out}: only TorchScript export is available (write a .pt file); ONNX export is not "
                        "implemented")
    loaded = load_run(run, weights=weights, device="cpu")
    classifier = loaded.model
    if not classifier.calibrated:
        logger.warning("%s has no calibration (written by an older lmpt): the export uses sigmoid(logit) and "
                       "threshold 0.5", run)
    module = ExportModule(classifier).float().eval()
    size = int(classifier.backbone.image_size)
    example = torch.zeros(2, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks inside the towers; the input size is fixed
        traced = torch.jit.trace(module, example, check_trace=False)
    meta = export_meta(classifier, loaded.meta, str(run))
    buffer = io.BytesIO()  # serialised in memory: TorchScript's file writer aborts the process on a full disk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, buffer, _extra_files={META_NAME: json.dumps(meta)})
    atomic_write_bytes(out, buffer.getvalue())
    return out
