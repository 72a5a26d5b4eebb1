"""The metadata an exported classifier carries (both formats), and its validation on load. Imports no torch."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Union

from ..data.imagefile import PIL_FILTERS, SIGNATURE_KEYS
from ..errors import CheckpointError
from .checks import check_calibration

EXPORT_VERSION = 1
META_NAME = "lmpt.json"  # the JSON file inside a TorchScript archive
REQUIRED_KEYS = ("export_version", "class_names", "thresholds", "calibration", "preprocess", "kind", "source",
                 "lmpt_version")


def validate_meta(meta: dict[str, Any], path: Union[str, Path]) -> dict[str, Any]:
    """``meta`` if it describes a usable classifier; else CheckpointError naming the file and the key."""
    def bad(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"{path}: metadata key {key!r} {why}; re-export the run with `lmpt export RUN --out "
                               f"{Path(path).name}`")

    for key in REQUIRED_KEYS:
        if key not in meta:
            raise bad(key, "is missing")
    version = meta["export_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("export_version", f"is {version!r}, not a format version")
    if version > EXPORT_VERSION:
        raise CheckpointError(f"{path} was written by a newer lmpt (export version {version}, this lmpt reads "
                              f"{EXPORT_VERSION}); upgrade lmpt to read it")
    if version != EXPORT_VERSION:
        raise bad("export_version", f"is {version}, this lmpt reads version {EXPORT_VERSION}")
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "is not a non-empty list of names")
    thresholds = meta["thresholds"]
    if not isinstance(thresholds, list) or len(thresholds) != len(names):
        raise bad("thresholds", f"does not hold one threshold per class ({len(names)})")
    for name, t in zip(names, thresholds):
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or not 0 <= t <= 1:
            raise bad("thresholds", f"has {t!r} for class {name!r} (a threshold is a probability in [0, 1])")
    pre = meta["preprocess"]
    if not isinstance(pre, dict):
        raise bad("preprocess", "is not a preprocessing description")
    for key in SIGNATURE_KEYS:
        if key not in pre:
            raise bad(f"preprocess.{key}", "is missing")
    if pre["interpolation"] not in PIL_FILTERS or pre["resize"] not in ("squash", "shortest_side+center_crop"):
        raise bad("preprocess", f"names an unknown resize ({pre['resize']!r}, {pre['interpolation']!r})")
    if not isinstance(pre["image_size"], int) or pre["image_size"] < 1:
        raise bad("preprocess.image_size", f"is {pre['image_size']!r}")
    for key in ("mean", "std"):
        v = pre[key]
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
            raise bad(f"preprocess.{key}", f"is {v!r}, not 3 numbers")
    if any(x <= 0 for x in pre["std"]):
        raise bad("preprocess.std", f"is {pre['std']!r} (must be positive)")
    check_calibration(meta["calibration"], len(names), path)
    return meta


__all__ = ["EXPORT_VERSION", "META_NAME", "REQUIRED_KEYS", "validate_meta"]
