"""Asymmetric loss (Ridnik et al., ICCV 2021), by default exactly as the LMPT reference uses it."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ._common import _check_logits_targets, _compute_dtype


ASL_REDUCTIONS = ("mean", "sum")
ASL_PARAMS = ("gamma_neg", "gamma_pos", "clip", "eps", "reduction", "focal_grad")


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021), by default exactly as the LMPT reference uses it.

    ``p = sigmoid(z)``; negatives use the shifted probability ``p_m = min(1 - p + clip, 1)``
    (``1 - p`` when ``clip`` is 0/None); per element
    ``l = -[y log p + (1-y) log p_m] * (1 - p_t)^g`` with ``p_t = y p + (1-y) p_m`` and
    ``g = gamma_pos y + gamma_neg (1-y)``; logs clamp at ``eps``.

    * Default (``reduction="mean"``, ``focal_grad=False``): the LMPT reference (``lmpt/asl.py``,
      built with ``gamma_neg=4, gamma_pos=0, clip=0.05, disable_torch_grad_focal_loss=True``): the mean
      over all ``B * C`` elements, and the focusing weight ``(1 - p_t)^g`` is a constant for autograd.
    * ``reduction="sum"``: the sum over elements, as the original ASL paper's code returns it. At batch
      64 it is ``64 * C`` times the reference's value (1,280x on VOC-LT), which would drown the CSE term.
    * ``focal_grad=True`` lets gradients flow through the focusing weight.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: Optional[float] = 0.05,
                 eps: float = 1e-8, reduction: str = "mean", focal_grad: bool = False) -> None:
        super().__init__()
        if reduction not in ASL_REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not supported; use 'mean' (LMPT reference) or "
                             "'sum' (original ASL code)")
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = 0.0 if clip is None else float(clip)
        self.eps = float(eps)
        self.reduction = reduction
        self.focal_grad = bool(focal_grad)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_logits_targets(logits, targets)
        dtype = _compute_dtype(logits)
        y = targets.to(dtype)
        xs_pos = torch.sigmoid(logits.to(dtype))
        xs_neg = 1.0 - xs_pos
        if self.clip > 0:
            xs_neg = (xs_neg + self.clip).clamp(max=1.0)
        loss = y * torch.log(xs_pos.clamp(min=self.eps)) + (1.0 - y) * torch.log(xs_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.set_grad_enabled(self.focal_grad and torch.is_grad_enabled()):
                p_t = xs_pos * y + xs_neg * (1.0 - y)
                exponent = self.gamma_pos * y + self.gamma_neg * (1.0 - y)
                weight = torch.pow(1.0 - p_t, exponent)
            loss = loss * weight
        return -loss.sum() if self.reduction == "sum" else -loss.mean()

    def extra_repr(self) -> str:
        return (f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, "
                f"reduction={self.reduction!r}, focal_grad={self.focal_grad}")
