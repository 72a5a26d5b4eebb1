"""Sigmoid focal loss (Lin et al., ICCV 2017)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import _check_logits_targets, _compute_dtype


class FocalLoss(nn.Module):
    """Sigmoid focal loss ``alpha_t * (1 - p_t)^gamma * BCE``, mean over elements.

    ``alpha`` (optional) weights positives by ``alpha`` and negatives by ``1 - alpha``.
    """

    def __init__(self, gamma: float = 2.0, alpha: Optional[float] = None) -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_logits_targets(logits, targets)
        dtype = _compute_dtype(logits)
        z = logits.to(dtype)
        y = targets.to(dtype)
        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        p = torch.sigmoid(z)
        p_t = p * y + (1.0 - p) * (1.0 - y)
        loss = (1.0 - p_t) ** self.gamma * bce
        if self.alpha is not None:
            loss = loss * (self.alpha * y + (1.0 - self.alpha) * (1.0 - y))
        return loss.mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"
