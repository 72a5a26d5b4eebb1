"""Deployed classifiers: files written by ``lmpt export``, loaded without the run folder, the engine or open_clip.

``load_classifier(path)`` reads an exported file (:mod:`lmpt.deploy.torchscript`) and returns an object whose
``predict(inputs)`` labels images (files, folders, glob patterns, manifests)::

    clf = lmpt.load_classifier("model.pt")
    result = clf.predict(["a.jpg", "photos/"])
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union


def load_classifier(path: Union[str, Path], device: Any = "cpu"):
    """Load a classifier written by ``lmpt export``."""
    from .torchscript import load_classifier as load_torchscript

    return load_torchscript(path, device)


__all__ = ["load_classifier"]
