"""Checks of what a classifier file says before it is used: class names, thresholds, calibration, preprocessing
and tensors. A file that fails one is refused with a :class:`~lmpt.errors.CheckpointError` naming the file and
the entry, instead of a KeyError later or NaN probabilities printed as results.

Used by the loaders of exported files (:mod:`lmpt.deploy`) and of run classifier files
(:mod:`lmpt.engine.rundir.checkpoint`).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

PREPROCESS_KEYS = ("mode", "image_size", "mean", "std", "interpolation")


def _numbers(values: Any, n: int, what: str, source: Union[str, Path], low: Optional[float] = None,
             high: Optional[float] = None) -> list[float]:
    ok = isinstance(values, (list, tuple)) and len(values) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if ok and low is not None:
        ok = all(v >= low for v in values)
    if ok and high is not None:
        ok = all(v <= high for v in values)
    if not ok:
        rng = f" in [{low:g}, {high:g}]" if low is not None and high is not None else ""
        raise CheckpointError(f"{source}: metadata '{what}' must be {n} finite numbers{rng}; the file is damaged or "
                              "was edited: write it again (`lmpt train` / `lmpt export`)")
    return [float(v) for v in values]


def check_class_names(meta: Mapping[str, Any], source: Union[str, Path]) -> list[str]:
    names = meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise CheckpointError(f"{source}: metadata 'class_names' is missing or is not a list of names; the file is "
                              "damaged or was not written by lmpt")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{source}: metadata 'class_names' repeats a name; the file is damaged")
    return list(names)


def check_calibration(calibration: Any, num_classes: int, source: Union[str, Path]) -> None:
    """A calibration entry (None: none stored, the identity is used) with finite maps and thresholds in [0, 1]."""
    if calibration is None or calibration == {}:
        return
    if not isinstance(calibration, Mapping):
        raise CheckpointError(f"{source}: metadata 'calibration' must be a mapping, got {type(calibration).__name__}")
    for key in ("a", "b", "thresholds"):
        if key not in calibration:
            raise CheckpointError(f"{source}: metadata 'calibration' lacks '{key}'; the file is damaged")
    a = _numbers(calibration["a"], num_classes, "calibration.a", source)
    _numbers(calibration["b"], num_classes, "calibration.b", source)
    _numbers(calibration["thresholds"], num_classes, "calibration.thresholds", source, 0.0, 1.0)
    inverted = [i for i, v in enumerate(a) if v <= 0]
    if inverted:
        logger.warning("%s: the calibration of %d class(es) (#%s) has a slope <= 0, which inverts or flattens their "
                       "ranking; their probabilities are not meaningful", source, len(inverted),
                       ", #".join(map(str, inverted[:5])))


def check_finite(tensors: Mapping[str, Any], source: Union[str, Path]) -> None:
    """Refuse NaN or infinite values in a classifier's tensors (they would give NaN scores for every image)."""
    import torch  # only torch callers get here; the metadata checks above stay importable without it

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source}: tensor '{name}' holds NaN or infinite values; the file is damaged "
                                  "(or training diverged): train again or use another file")


__all__ = ["check_calibration", "check_class_names", "check_finite"]
