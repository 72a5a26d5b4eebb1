"""The total LMPT loss: ``lam * L_cls + (1 - lam) * L_cse``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


class LMPTLoss(nn.Module):
    """Total LMPT loss ``lam * L_cls + (1 - lam) * L_cse`` (just ``L_cls`` without a CSE loss).

    ``forward`` returns ``{"loss", "cls", "cse"}``; ``"cse"`` is None when no CSE loss is set.
    """

    def __init__(self, cls_loss: nn.Module, cse_loss: Optional[nn.Module] = None, lam: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.cls_loss = cls_loss
        self.cse_loss = cse_loss
        self.lam = float(lam)

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        caption_emb: Optional[torch.Tensor] = None,
        prompt_emb: Optional[torch.Tensor] = None,
        caption_mask: Optional[torch.Tensor] = None,
    ) -> dict[str, Optional[torch.Tensor]]:
        cls = self.cls_loss(logits, targets)
        if self.cse_loss is None:
            return {"loss": cls, "cls": cls, "cse": None}
        if caption_emb is None or prompt_emb is None:
            raise ValueError("LMPTLoss has a CSE loss, so caption_emb and prompt_emb are required")
        cse = self.cse_loss(caption_emb, prompt_emb, targets, caption_mask)
        return {"loss": self.lam * cls + (1.0 - self.lam) * cse, "cls": cls, "cse": cse}

    def extra_repr(self) -> str:
        return f"lam={self.lam}"
