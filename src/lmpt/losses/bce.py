"""Binary cross-entropy with logits (CoOp's multi-label loss)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import _check_logits_targets, _compute_dtype


class BCELoss(nn.Module):
    """Binary cross-entropy with logits, mean over all ``B * C`` elements."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_logits_targets(logits, targets)
        dtype = _compute_dtype(logits)
        return F.binary_cross_entropy_with_logits(logits.to(dtype), targets.to(dtype))
