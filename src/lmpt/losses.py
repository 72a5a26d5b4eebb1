"""Losses for LMPT: distribution-balanced (DB) classification loss, class-specific embedding
(CSE) loss, multi-label baselines (BCE, focal, ASL) and their combination.

See ``docs/METHOD.md`` sections 2a/2b for the method as the reference code implements it.
Differences from the reference that matter to callers:

* DB loss: the NTR bias is added out of place (the reference modifies the caller's logits);
  both focal variants are available (``focal="elementwise"`` = original DB paper,
  ``focal="batch"`` = the LMPT reference's batch-scalar ``p_t``).
* CSE loss: the class-aware margin and the re-weighting use *raw* class counts (the reference's
  softmax over counts is one-hot and gives inf/NaN), the weight normaliser sums over classes,
  and the summed cosine is computed as one einsum without a ``[B, C, L, D]`` intermediate.

All losses compute in at least float32 (half-precision inputs are upcast) and never modify the
caller's tensors.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Registry

__all__ = [
    "DistributionBalancedLoss",
    "ClassSpecificEmbeddingLoss",
    "BCELoss",
    "FocalLoss",
    "AsymmetricLoss",
    "LMPTLoss",
    "build_classification_loss",
    "db_preset",
    "DB_PRESETS",
    "DB_FOCAL_MODES",
    "CSE_FORMS",
    "CSE_DISTANCES",
    "CLASSIFICATION_LOSSES",
    "DB_PARAMS",
    "ASL_PARAMS",
]

Counts = Union[Sequence[float], np.ndarray, torch.Tensor]

DB_FOCAL_MODES = ("elementwise", "batch")
CSE_FORMS = ("hinge", "reference")
CSE_DISTANCES = ("mean", "sum")

# Smallest allowed "repeat rate" r_b of an image in the DB weights. A row without positives
# has r_b = 0; clamping gives (1/n_c)/r_b ~ 1e12/n_c, so sigmoid(...) = 1 and w = 1 + alpha,
# which is exactly the limit the original DB code reaches through an inf.
_MIN_REPEAT_RATE = 1e-12

_DB_DEFAULTS = dict(alpha=0.1, beta=10.0, mu=0.3, kappa=0.05, neg_scale=5.0, gamma=2.0, balance=2.0)
DB_PARAMS = tuple(_DB_DEFAULTS)  # the keyword arguments a DB preset (or ``loss.db``) may set
DB_PRESETS: dict[str, dict[str, float]] = {
    "voc-lt": {**_DB_DEFAULTS, "mu": 0.3, "neg_scale": 5.0},
    "coco-lt": {**_DB_DEFAULTS, "mu": 0.2, "neg_scale": 2.0},
}


def db_preset(dataset: str) -> dict:
    """DB-loss keyword arguments used by the reference (and DB's configs) for ``dataset``.

    Known names: ``"voc-lt"``, ``"coco-lt"`` (case-insensitive; ``_`` is accepted for ``-``).
    """
    key = str(dataset).strip().lower().replace("_", "-")
    if key not in DB_PRESETS:
        raise ValueError(f"unknown DB-loss preset {dataset!r}; known presets: {', '.join(sorted(DB_PRESETS))}")
    return dict(DB_PRESETS[key])


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


class DistributionBalancedLoss(nn.Module):
    """Distribution-balanced loss (Wu et al., ECCV 2020) as used by LMPT.

    Re-balanced weights ``w = sigmoid(beta * ((1/n_c)/r_b - mu)) + alpha`` with
    ``r_b = sum_c y_bc / n_c`` (clamped to >= 1e-12 so an image without positives gets
    ``w = 1 + alpha`` instead of a division by zero), negative-tolerant regularisation (class bias
    ``v_c = -log(N/n_c - 1) * kappa / neg_scale``, negatives' logits scaled by ``neg_scale`` and
    their weights divided by it) and a focal term, either per element (``focal="elementwise"``,
    original DB) or with a batch-scalar ``p_t`` (``focal="batch"``, LMPT reference code).
    The weights depend on the targets only and carry no gradient.

    Args:
        class_freq: ``[C]`` positive training images per class, each in ``(0, num_train)``.
        num_train: number of training images ``N``.
    """

    def __init__(
        self,
        class_freq: Counts,
        num_train: int,
        alpha: float = 0.1,
        beta: float = 10.0,
        mu: float = 0.3,
        kappa: float = 0.05,
        neg_scale: float = 5.0,
        gamma: float = 2.0,
        balance: float = 2.0,
        focal: str = "elementwise",
    ) -> None:
        super().__init__()
        if focal not in DB_FOCAL_MODES:
            raise ValueError(f"focal={focal!r} is not supported; use one of {', '.join(map(repr, DB_FOCAL_MODES))}")
        if not neg_scale > 0:
            raise ValueError(f"neg_scale must be > 0, got {neg_scale}")
        freq = _counts_float64(class_freq)
        n_train = float(num_train)
        if not math.isfinite(n_train) or n_train <= 0:
            raise ValueError(f"num_train must be a positive number, got {num_train}")
        for i, n in enumerate(freq):
            if n >= n_train:
                raise ValueError(
                    f"class_freq[{i}] = {n:g} must be < num_train = {n_train:g} "
                    "(the NTR bias -log(N/n - 1) is undefined otherwise)")
        self.num_train = n_train
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.mu = float(mu)
        self.kappa = float(kappa)
        self.neg_scale = float(neg_scale)
        self.gamma = float(gamma)
        self.balance = float(balance)
        self.focal = focal
        init_bias = -np.log(n_train / freq - 1.0) * self.kappa / self.neg_scale
        self.register_buffer("class_freq", torch.as_tensor(freq, dtype=torch.float32))
        self.register_buffer("init_bias", torch.as_tensor(init_bias, dtype=torch.float32))

    @property
    def num_classes(self) -> int:
        return int(self.class_freq.numel())

    def rebalance_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` re-balanced weights ``w`` (before the NTR division), without gradient."""
        with torch.no_grad():
            y = targets.to(_compute_dtype(targets))
            inv = 1.0 / self.class_freq.to(y.dtype)
            repeat = (y * inv).sum(dim=1, keepdim=True).clamp_min(_MIN_REPEAT_RATE)
            return torch.sigmoid(self.beta * (inv / repeat - self.mu)) + self.alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar DB loss for ``logits`` and 0/1 ``targets`` of shape ``[B, C]``."""
        _check_logits_targets(logits, targets, self.num_classes)
        dtype = _compute_dtype(logits)
        z = logits.to(dtype)
        y = targets.to(dtype)
        w = self.rebalance_weights(y)
        # NTR: class bias (out of place), negatives scaled by neg_scale, their weights divided.
        z = z + self.init_bias.to(dtype)
        z = z * (y + self.neg_scale * (1.0 - y))
        w = w * (y + (1.0 - y) / self.neg_scale)
        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        if self.focal == "elementwise":
            p_t = torch.exp(-bce)
            return (self.balance * (1.0 - p_t) ** self.gamma * w * bce).mean()
        p_t = torch.exp(-bce.mean())
        return self.balance * (1.0 - p_t) ** self.gamma * (w * bce).mean()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, num_train={self.num_train:g}, alpha={self.alpha}, beta={self.beta}, "
                f"mu={self.mu}, kappa={self.kappa}, neg_scale={self.neg_scale}, gamma={self.gamma}, "
                f"balance={self.balance}, focal={self.focal!r}")


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


class BCELoss(nn.Module):
    """Binary cross-entropy with logits, mean over all ``B * C`` elements."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_logits_targets(logits, targets)
        dtype = _compute_dtype(logits)
        return F.binary_cross_entropy_with_logits(logits.to(dtype), targets.to(dtype))


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


# Classification losses by name: each builder takes ``(class_freq, num_train, **kwargs)``.
CLASSIFICATION_LOSSES: Registry = Registry("classification loss")
CLASSIFICATION_LOSSES.register("db", lambda freq, n, **kw: DistributionBalancedLoss(freq, n, **kw))
CLASSIFICATION_LOSSES.register("bce", lambda freq, n, **kw: BCELoss(**kw))
CLASSIFICATION_LOSSES.register("focal", lambda freq, n, **kw: FocalLoss(**kw))
CLASSIFICATION_LOSSES.register("asl", lambda freq, n, **kw: AsymmetricLoss(**kw))


def build_classification_loss(name: str, class_freq: Counts, num_train: int, **kwargs) -> nn.Module:
    """Classification loss by name: ``"db"``, ``"bce"``, ``"focal"`` or ``"asl"`` (see ``CLASSIFICATION_LOSSES``).

    ``class_freq``/``num_train`` are used by ``"db"`` only; ``kwargs`` go to the constructor.
    """
    builder = CLASSIFICATION_LOSSES.lookup(name, normalize=lambda n: str(n).strip().lower())
    return builder(class_freq, num_train, **kwargs)
