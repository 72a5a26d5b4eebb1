"""Deployed classifiers: files written by ``lmpt export``, loaded without the run folder, the engine or open_clip.

``load_classifier(path)`` reads an exported file: ``.onnx`` (:mod:`lmpt.deploy.onnxfile`: onnxruntime, numpy and
Pillow; no torch) or TorchScript ``.pt`` (:mod:`lmpt.deploy.torchscript`), and returns an object whose
``predict(inputs)`` labels images (files, folders, glob patterns, manifests, in-memory images)::

    clf = lmpt.load_classifier("model.onnx")
    result = clf.predict(["a.jpg", "photos/"])

(``lmpt.load_classifier`` also takes a run folder.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

ONNX_SUFFIXES = (".onnx",)


def is_onnx(path: Union[str, Path]) -> bool:
    """An ``.onnx`` name, or (any name) a file that does not start as a zip archive (TorchScript files are zips)."""
    path = Path(path)
    if path.suffix.lower() in ONNX_SUFFIXES:
        return True
    if path.suffix.lower() in (".pt", ".pth", ".torchscript") or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(2) != b"PK"


def load_classifier(path: Union[str, Path], device: Any = "cpu"):
    """Load a classifier written by ``lmpt export`` (ONNX or TorchScript, told by the name or the content)."""
    if is_onnx(path):
        from .onnxfile import load_classifier as load_onnx

        return load_onnx(path, device)
    from .torchscript import load_classifier as load_torchscript

    return load_torchscript(path, device)


__all__ = ["load_classifier", "is_onnx"]
