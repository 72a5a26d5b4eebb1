"""Class-specific embedding (CSE) loss between caption and prompt token embeddings; docs/method.md, "Losses".

Differences from the reference: the class-aware margin and the re-weighting use *raw* class counts (the
reference's softmax over counts is one-hot and gives inf/NaN), the weight normaliser sums over classes, and
the summed cosine is one einsum without a ``[B, C, L, D]`` intermediate.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import Counts, _compute_dtype, _counts_float64

CSE_FORMS = ("hinge", "reference")
CSE_DISTANCES = ("mean", "sum")


class ClassSpecificEmbeddingLoss(nn.Module):
    """Class-specific embedding (CSE) loss between caption and prompt token embeddings.

    Caption position ``t`` is paired with prompt position ``t + shift`` for
    ``t = 0 .. L-shift-1``; ``x_bct = 1 - cos(caption[b, t], prompt[c, t+shift])``.

    * ``distance="sum"``: ``D_bc = sum_t x_bct`` over all ``L - shift`` positions (the reference;
      ``caption_mask`` is ignored).
    * ``distance="mean"``: ``D_bc = sum_t m_bt x_bct / max(sum_t m_bt, 1)`` with
      ``m = caption_mask[:, :L-shift]`` (all ones when no mask is given).

    With class-aware margin ``m_c = margin * n_c^(-1/4)`` and weights
    ``w_c = n_c^(-gamma) / sum_j n_j^(-gamma)`` from raw counts ``n_c``:

    * ``form="reference"``: ``mean_bc w_c * relu(m_c - (2y-1) * D_bc)`` (literal reference form).
    * ``form="hinge"``: ``mean_bc w_c * (D_bc if y = 1 else relu(m_c - D_bc))``.

    Never builds a ``[B, C, L, D]`` or ``[B, C, L]`` tensor: the summed cosine is one einsum of
    L2-normalised embeddings.

    Defaults (``form="reference"``, ``distance="sum"``): chosen on the generated benchmark's validation
    split (``bench/cse_defaults.py``; the evidence is in ``docs/method.md``).
    """

    def __init__(self, class_freq: Counts, margin: float = 0.2, gamma: float = 2.0, shift: int = 2,
                 form: str = "reference", distance: str = "sum") -> None:
        super().__init__()
        if form not in CSE_FORMS:
            raise ValueError(f"form={form!r} is not supported; use one of {', '.join(map(repr, CSE_FORMS))}")
        if distance not in CSE_DISTANCES:
            raise ValueError(
                f"distance={distance!r} is not supported; use one of {', '.join(map(repr, CSE_DISTANCES))}")
        if int(shift) != shift or shift < 0:
            raise ValueError(f"shift must be a non-negative integer, got {shift!r}")
        freq = _counts_float64(class_freq)
        self.margin = float(margin)
        self.gamma = float(gamma)
        self.shift = int(shift)
        self.form = form
        self.distance = distance
        margins = self.margin * freq ** -0.25
        raw = freq ** -self.gamma
        weights = raw / raw.sum()
        if not (np.all(np.isfinite(margins)) and np.all(np.isfinite(weights))):
            raise ValueError(f"class_freq gives non-finite margins or weights with gamma={self.gamma}")
        self.register_buffer("class_freq", torch.as_tensor(freq, dtype=torch.float32))
        self.register_buffer("margins", torch.as_tensor(margins, dtype=torch.float32))
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))

    @property
    def num_classes(self) -> int:
        return int(self.class_freq.numel())

    def _check(self, cap: torch.Tensor, prm: torch.Tensor, targets: torch.Tensor,
               mask: Optional[torch.Tensor]) -> None:
        shapes = (f"caption_emb {tuple(cap.shape)}, prompt_emb {tuple(prm.shape)}, targets {tuple(targets.shape)}"
                  + ("" if mask is None else f", caption_mask {tuple(mask.shape)}"))
        if cap.dim() != 3 or prm.dim() != 3 or targets.dim() != 2:
            raise ValueError(f"expected caption_emb [B,L,D], prompt_emb [C,L,D], targets [B,C]; got {shapes}")
        b, length, d = cap.shape
        c = prm.shape[0]
        if prm.shape[1] != length or prm.shape[2] != d:
            raise ValueError(f"caption and prompt embeddings must share L and D; got {shapes}")
        if c != self.num_classes:
            raise ValueError(f"prompt_emb has {c} classes but the loss was built for {self.num_classes}; got {shapes}")
        if tuple(targets.shape) != (b, c):
            raise ValueError(f"targets must be [B, C] = [{b}, {c}]; got {shapes}")
        if mask is not None and tuple(mask.shape) != (b, length):
            raise ValueError(f"caption_mask must be [B, L] = [{b}, {length}]; got {shapes}")
        if self.shift >= length:
            raise ValueError(f"shift={self.shift} leaves no positions for sequence length L={length}")

    def distances(self, caption_emb: torch.Tensor, prompt_emb: torch.Tensor,
                  caption_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, C]`` distances ``D_bc`` (see the class docstring)."""
        dtype = torch.promote_types(_compute_dtype(caption_emb), _compute_dtype(prompt_emb))
        t = caption_emb.shape[1] - self.shift
        cap = F.normalize(caption_emb[:, :t].to(dtype), dim=-1, eps=1e-8)
        prm = F.normalize(prompt_emb[:, self.shift:].to(dtype), dim=-1, eps=1e-8)
        if self.distance == "sum":
            return t - torch.einsum("btd,ctd->bc", cap, prm)
        if caption_mask is None:
            m = torch.ones(cap.shape[:2], dtype=dtype, device=cap.device)
        else:
            m = caption_mask[:, :t].to(device=cap.device, dtype=dtype)
        count = m.sum(dim=1, keepdim=True)
        cos_sum = torch.einsum("btd,ctd->bc", cap * m.unsqueeze(-1), prm)
        return (count - cos_sum) / count.clamp_min(1.0)

    def forward(self, caption_emb: torch.Tensor, prompt_emb: torch.Tensor, targets: torch.Tensor,
                caption_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scalar CSE loss; see the class docstring."""
        self._check(caption_emb, prompt_emb, targets, caption_mask)
        dist = self.distances(caption_emb, prompt_emb, caption_mask)
        y = targets.to(dist.dtype)
        margins = self.margins.to(dist.dtype)
        if self.form == "reference":
            term = F.relu(margins - (2.0 * y - 1.0) * dist)
        else:
            term = y * dist + (1.0 - y) * F.relu(margins - dist)
        return (self.weights.to(dist.dtype) * term).mean()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, margin={self.margin}, gamma={self.gamma}, shift={self.shift}, "
                f"form={self.form!r}, distance={self.distance!r}")
