"""An exported ONNX classifier (``lmpt export --format onnx``), run by onnxruntime with numpy and Pillow: no torch.

The graph maps preprocessed images ``images`` ``[batch, 3, s, s]`` (float32) to ``logits`` and calibrated
``probabilities`` (both ``[batch, C]``). The model's metadata properties hold, each as JSON, the class names,
per-class thresholds, the calibration, the preprocessing, the source run, lmpt's version, the run's kind and the
export format version (:mod:`lmpt.deploy.meta`). ``load_classifier(path)`` reads it::

    clf = lmpt.load_classifier("model.onnx")
    result = clf.predict(["a.jpg", "photos/"])
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..data.imagefile import ArrayTransform
from ..errors import CheckpointError, UserError
from ..predictor import Predicting
from .meta import REQUIRED_KEYS, validate_meta

def read_meta(props: dict[str, str], path: Union[str, Path]) -> dict[str, Any]:
    """The metadata from an ONNX model's ``metadata_props`` (string -> JSON string)."""
    meta: dict[str, Any] = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            if key in REQUIRED_KEYS:
                raise CheckpointError(f"{path}: metadata key {key!r} is not JSON ({value[:40]!r})") from None
            meta[key] = value
    return validate_meta(meta, path)


def _providers(device: Any) -> list[str]:
    import onnxruntime as ort

    device = str(device or "cpu")
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(f"--device {device}: this onnxruntime has no CUDA provider "
                            f"({', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use the CPU")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class ONNXClassifier(Predicting):
    """A loaded ONNX export: numpy preprocessing, an onnxruntime session and the run's decisions."""

    def __init__(self, path: Union[str, Path], device: Any = "cpu", threads: Optional[int] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("reading an .onnx classifier needs onnxruntime: pip install 'lmpt[onnx]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"no exported classifier at {path}: write one with `lmpt export RUN_DIR --out {path}`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_providers(device))
        except UserError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path} is not a readable ONNX file ({first}); re-export it with `lmpt export`") from None
        self.meta = read_meta(dict(self.session.get_modelmeta().custom_metadata_map), path)
        names = [o.name for o in self.session.get_outputs()]
        if "probabilities" not in names or [i.name for i in self.session.get_inputs()] != ["images"]:
            raise CheckpointError(f"{path} is an ONNX model but not an lmpt classifier (inputs "
                                  f"{[i.name for i in self.session.get_inputs()]}, outputs {names})")
        self.class_names: list[str] = list(self.meta["class_names"])
        self.thresholds = np.asarray(self.meta["thresholds"], dtype=np.float64)
        self.image_size = int(self.meta["preprocess"]["image_size"])
        self.transform = ArrayTransform(self.meta["preprocess"])

    def logits_and_probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.session.run(["logits", "probabilities"], {"images": np.asarray(images, np.float32)})
        return logits, probs

    def probabilities(self, images: Union[np.ndarray, Sequence]) -> np.ndarray:
        """Calibrated probabilities ``[B, C]`` of preprocessed images ``[B, 3, s, s]``."""
        return self.logits_and_probabilities(images)[1].astype(np.float64)


def load_classifier(path: Union[str, Path], device: Any = "cpu") -> ONNXClassifier:
    """Load a classifier written by ``lmpt export --format onnx``."""
    return ONNXClassifier(path, device)


__all__ = ["ONNXClassifier", "load_classifier", "read_meta"]
