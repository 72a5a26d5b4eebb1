"""Numeric precision of the frozen towers: one rule for feature extraction and training.

``"auto"`` means bf16 autocast on a GPU and fp32 elsewhere; ``"fp32"``, ``"bf16"`` and ``"fp16"`` are
honoured on any device. Trainable parameters always stay fp32 (the LMPT reference trains pure fp16).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, Union

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: Union[str, torch.device]) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: what ``precision`` means on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(device: Union[str, torch.device], precision: str) -> ContextManager:
    """Autocast for ``precision`` on ``device`` (nothing for fp32).

    The weight-cast cache is off: the frozen weights are cast on the fly, and CUDA-graph capture needs it off.
    """
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[resolved], cache_enabled=False)
