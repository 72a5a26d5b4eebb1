"""Helpers shared by the losses: class counts, compute precision, shape checks."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

Counts = Union[Sequence[float], np.ndarray, torch.Tensor]


def _counts_float64(class_freq: Counts, what: str = "class_freq") -> np.ndarray:
    """Class counts as a 1-D float64 array, checked to be finite and > 0."""
    if isinstance(class_freq, torch.Tensor):
        arr = class_freq.detach().cpu().to(torch.float64).numpy()
    else:
        arr = np.asarray(class_freq, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence of counts, got shape {tuple(arr.shape)}")
    for i, n in enumerate(arr):
        if not math.isfinite(n) or n <= 0:
            raise ValueError(f"{what}[{i}] = {n:g}: every class count must be finite and > 0")
    return arr


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/integer inputs, the input dtype for float32/float64."""
    if t.dtype in (torch.float32, torch.float64):
        return t.dtype
    return torch.float32


def _check_logits_targets(logits: torch.Tensor, targets: torch.Tensor, num_classes: Optional[int] = None) -> None:
    if logits.dim() != 2 or tuple(logits.shape) != tuple(targets.shape):
        raise ValueError(
            f"logits and targets must both be [B, C] with the same shape, got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes but the loss was built for {num_classes} "
                         f"(logits shape {tuple(logits.shape)})")
