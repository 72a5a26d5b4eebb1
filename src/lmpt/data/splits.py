"""Carve a validation split out of a training split without starving any class.

Rule (exact):

* ``target = round(fraction * N)`` images should move to "val".
* Each class ``c`` with ``n_c`` training positives may give at most
  ``quota_c = min(n_c - 1, floor(fraction * n_c + 0.5))`` of its images to val, so the train split
  keeps ``max(1, n_c - round(fraction * n_c))`` positives of every class: at least one, and about
  ``1 - fraction`` of each class (a class with 4 images and fraction 0.1 keeps all 4; with 0.2 it
  gives 1 and keeps 3). A class with a single image never gives it away.
* Images are visited in an order drawn by ``numpy.random.default_rng(seed).permutation(N)``. An
  image moves to val when fewer than ``target`` images have moved and every one of its classes still
  has quota left; then each of its classes' quota drops by one. Images without labels move freely.
* Train and val rows keep the original order of the input split.

The val split can therefore be smaller than ``target`` when quotas run out (many images carry a
head class that is already at quota together with a tail class). It never leaves a class without a
training positive. The result depends only on the labels, ``fraction`` and ``seed``.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np

from .dataset import MultiLabelSplit

log = logging.getLogger(__name__)


def val_quota(class_counts: np.ndarray, fraction: float) -> np.ndarray:
    """Per-class maximum number of positives that may move to val (see module docstring)."""
    counts = np.asarray(class_counts, dtype=np.int64)
    quota = np.floor(fraction * counts + 0.5).astype(np.int64)
    return np.clip(np.minimum(quota, counts - 1), 0, None)


def split_train_val(split: MultiLabelSplit, fraction: float,
                    seed: int = 0) -> tuple[MultiLabelSplit, Optional[MultiLabelSplit]]:
    """Return ``(train, val)`` with about ``fraction`` of ``split`` moved to ``val``.

    ``fraction == 0`` returns ``(split, None)``. ``fraction`` outside ``[0, 1)`` raises ValueError.
    When no image can move (tiny data), a warning is logged and ``(split, None)`` is returned.
    """
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"val fraction must be a number in [0, 1), got {fraction!r}") from None
    if not (0.0 <= fraction < 1.0) or math.isnan(fraction):
        raise ValueError(f"val fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0.0 or len(split) == 0:
        return split, None

    labels = split.labels.astype(bool)
    n = labels.shape[0]
    target = int(math.floor(fraction * n + 0.5))
    quota = val_quota(labels.sum(axis=0), fraction)
    order = np.random.default_rng(seed).permutation(n)
    take = np.zeros(n, dtype=bool)
    moved = 0
    for i in order:
        if moved >= target:
            break
        cls = np.flatnonzero(labels[i])
        if np.all(quota[cls] > 0):
            quota[cls] -= 1
            take[i] = True
            moved += 1

    if moved == 0:
        log.warning("val fraction %.3g: no image of the %d-image train split can move to val without "
                    "leaving a class short of training images; training without a val split", fraction, n)
        return split, None
    if moved < target:
        log.info("val split: %d images (asked for %d); per-class quotas keep the rest in train", moved, target)
    train = split.subset(np.flatnonzero(~take), name=split.name)
    val = split.subset(np.flatnonzero(take), name="val")
    return train, val
