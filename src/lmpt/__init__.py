"""lmpt: long-tailed multi-label recognition with CLIP prompt tuning (LMPT, arXiv 2305.04536).

From Python (docs/api.md)::

    result = lmpt.train("config.yaml", ["run.seed=1"])   # a run folder, its metrics, .classifier()
    clf = lmpt.load_classifier("model.onnx")             # or "model.pt", or a run folder
    clf.predict(["photo.jpg", "photos/", pil_image, array]).predictions

``import lmpt`` imports no torch; loading an ``.onnx`` file never does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

__version__ = "0.1.0"

__all__ = ["__version__", "load_classifier", "train"]


def load_classifier(path: Union[str, Path], device: Any = "cpu", weights: Optional[str] = None):
    """A classifier whose ``predict(inputs)`` labels images: a run folder (or its .safetensors classifier file),
    an ``.onnx`` file (onnxruntime, no torch) or a TorchScript ``.pt`` file from ``lmpt export``."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".safetensors":
        from .engine.use.api import load_classifier as load_run_classifier

        return load_run_classifier(p, device, weights)
    from .deploy import load_classifier as load_exported

    return load_exported(p, device)


def __getattr__(name: str):
    """``lmpt.train`` without importing torch at ``import lmpt`` (the CLI starts faster)."""
    if name == "train":
        from .engine.use.api import train

        return train
    raise AttributeError(f"module 'lmpt' has no attribute {name!r}")
