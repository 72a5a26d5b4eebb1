"""Distribution-balanced (DB) loss (Wu et al., ECCV 2020) as LMPT uses it; docs/method.md, "Losses".

Differences from the reference that matter to callers: the NTR bias is added out of place (the reference
modifies the caller's logits), and both focal variants are available (``focal="elementwise"`` = the original
DB paper, ``focal="batch"`` = the LMPT reference's batch-scalar ``p_t``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import Counts, _check_logits_targets, _compute_dtype, _counts_float64

DB_FOCAL_MODES = ("elementwise", "batch")

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
