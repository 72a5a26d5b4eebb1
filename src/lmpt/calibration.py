"""From logits to decisions: calibrated probabilities and per-class decision thresholds.

Prompt-tuned CLIP has no class bias and a large logit scale, so ``sigmoid(logit) >= 0.5`` says yes to
nearly every class. A :class:`Calibration` is fitted on held-out labelled data (the validation split):

* a map of each class's logit ``z`` to a probability ``p = sigmoid(a * z + b)``; the methods
  (:data:`CALIBRATIONS`) differ in what is shared across classes:

  - ``platt``: ``a`` and ``b`` per class (Platt scaling);
  - ``temperature-bias``: one ``a`` (an inverse temperature) for all classes, ``b`` per class;
  - ``global``: one ``a`` and one ``b`` for all classes;

  fitted by minimising the cross-entropy against Platt's smoothed targets (``(n+ + 1) / (n+ + 2)`` for
  positives, ``1 / (n- + 2)`` for negatives, which keeps a fit on few examples from going to 0 or 1);
* a decision threshold per class on ``p`` that maximises that class's F-beta on the held-out data.

A class with fewer than ``min_positives`` held-out positives gets the pooled fit instead of its own: the
``global`` map (``a``, ``b`` fitted on all classes' entries together) and one shared threshold that
maximises the micro F-beta of the pooled entries.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from .registry import Registry

ArrayLike = Union[np.ndarray, torch.Tensor, list]
logger = logging.getLogger(__name__)

CALIBRATIONS: Registry[str] = Registry("calibration method")
CALIBRATIONS.register("platt", "a and b per class")
CALIBRATIONS.register("temperature-bias", "one a for all classes, b per class")
CALIBRATIONS.register("global", "one a and one b for all classes")


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def platt_targets(labels: np.ndarray) -> np.ndarray:
    """Platt's smoothed targets, per column: ``(n+ + 1)/(n+ + 2)`` for positives, ``1/(n- + 2)`` for negatives."""
    y = labels > 0
    n_pos = y.sum(axis=0)
    n_neg = y.shape[0] - n_pos
    return np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def fit_sigmoid_map(logits: ArrayLike, labels: ArrayLike, shared_a: bool, shared_b: bool,
                    iters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` of ``sigmoid(a * z + b)``, each ``[C]``, minimising the mean cross-entropy on smoothed targets.

    ``shared_a`` / ``shared_b`` fit one value for all classes (repeated in the result). Convex in ``(a, b)``;
    solved by L-BFGS in float64 on standardised logits.
    """
    z = _np(logits)
    y = _np(labels)
    if z.ndim != 2 or z.shape != y.shape:
        raise ValueError(f"logits and labels must both be [N, C], got {z.shape} and {y.shape}")
    n, c = z.shape
    if n == 0:
        raise ValueError("cannot calibrate on zero examples")
    # one map for every class pools the counts of all entries; otherwise each column has its own
    targets = torch.from_numpy(platt_targets(y.reshape(-1, 1)).reshape(y.shape) if shared_a and shared_b
                               else platt_targets(y))
    mu, sd = float(z.mean()), float(z.std()) or 1.0
    x = torch.from_numpy((z - mu) / sd)
    a = torch.ones(1 if shared_a else c, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1 if shared_b else c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=iters, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * x + b, targets)
        loss.backward()
        return loss

    opt.step(closure)
    a_std = a.detach().numpy() * np.ones(c)
    b_std = b.detach().numpy() * np.ones(c)
    return a_std / sd, b_std - a_std * mu / sd


def apply_sigmoid_map(logits: ArrayLike, a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """``sigmoid(a * z + b)`` per class, float64."""
    t = _np(logits) * _np(a) + _np(b)
    return 1.0 / (1.0 + np.exp(-np.clip(t, -500, 500)))


def fbeta(tp: np.ndarray, n_pred: np.ndarray, n_pos: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """F-beta from counts (0 where undefined)."""
    b2 = beta * beta
    denom = (1 + b2) * tp + b2 * (n_pos - tp) + (n_pred - tp)
    return np.divide((1 + b2) * tp, denom, out=np.zeros(np.broadcast(tp, denom).shape), where=denom > 0)


def best_threshold(scores: ArrayLike, labels: ArrayLike, beta: float = 1.0) -> tuple[float, float]:
    """The threshold on ``scores`` (pooled over all entries given) maximising F-beta of ``score >= t``.

    Returns ``(threshold, f_beta)``. Candidates are the distinct scores; the threshold returned is the
    midpoint between the chosen score and the next lower distinct score (so it keeps the same decisions
    on these data and sits in the gap). With no positive at all it returns a threshold above every score.
    """
    s = _np(scores).ravel()
    y = _np(labels).ravel() > 0
    if s.size == 0 or not y.any():
        return (float(s.max()) + 1.0 if s.size else 1.0), 0.0
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # last entry of each block of tied scores
    tp = np.cumsum(y_sorted)[last].astype(np.float64)
    n_pred = (np.flatnonzero(last) + 1).astype(np.float64)
    f = fbeta(tp, n_pred, np.full_like(tp, y.sum()), beta)
    k = int(np.argmax(f))
    distinct = s_sorted[last]
    lower = distinct[k + 1] if k + 1 < len(distinct) else distinct[k] - 1.0
    return float((distinct[k] + lower) / 2.0), float(f[k])


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, bins: int = 15) -> float:
    """ECE over all entries: ``sum_b n_b / N * |mean(y in b) - mean(p in b)|``, ``bins`` equal-width bins on [0, 1].

    A probability equal to a bin's upper edge falls in that bin (``p = 1`` in the last).
    """
    p = _np(probs).ravel()
    y = (_np(labels).ravel() > 0).astype(np.float64)
    if p.size == 0:
        return float("nan")
    idx = np.clip(np.ceil(p * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / p.size * abs(y[m].mean() - p[m].mean())
    return float(total)


@dataclass
class Calibration:
    """Per-class probability map and decision thresholds, fitted on held-out data (JSON-serialisable)."""

    method: str
    a: list[float]
    b: list[float]
    thresholds: list[float]
    fitted_on: str = "val"
    min_positives: int = 5
    beta: float = 1.0
    own_fit: list[bool] = field(default_factory=list)  # classes with their own map and threshold
    shared_threshold: Optional[float] = None

    @classmethod
    def identity(cls, num_classes: int) -> "Calibration":
        """No calibration: ``p = sigmoid(logit)`` and the fixed threshold 0.5 (classifier files from before calibration)."""
        return cls(method="none", a=[1.0] * num_classes, b=[0.0] * num_classes, thresholds=[0.5] * num_classes,
                   fitted_on="none", own_fit=[False] * num_classes)

    @property
    def num_classes(self) -> int:
        return len(self.a)

    def probabilities(self, logits: ArrayLike) -> np.ndarray:
        """Calibrated probabilities ``[N, C]``."""
        z = _np(logits)
        if z.shape[-1] != self.num_classes:
            raise ValueError(f"calibration is for {self.num_classes} classes, logits have {z.shape[-1]}")
        return apply_sigmoid_map(z, self.a, self.b)

    def decide(self, probs: ArrayLike) -> np.ndarray:
        """Boolean ``[N, C]``: ``p >= threshold`` of the class."""
        return _np(probs) >= np.asarray(self.thresholds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def fit_calibration(logits: ArrayLike, labels: ArrayLike, method: str = "platt", min_positives: int = 5,
                    beta: float = 1.0, fitted_on: str = "val") -> Calibration:
    """Fit the probability map and the per-class thresholds on held-out ``logits`` / ``labels`` ``[N, C]``."""
    CALIBRATIONS.lookup(method)
    if min_positives < 1:
        raise ValueError(f"min_positives must be at least 1, got {min_positives}")
    z = _np(logits)
    y = _np(labels) > 0
    own = y.sum(axis=0) >= min_positives
    ga, gb = fit_sigmoid_map(z, y, shared_a=True, shared_b=True)
    a, b = ga.copy(), gb.copy()
    if method != "global" and own.any():
        fa, fb = fit_sigmoid_map(z[:, own], y[:, own], shared_a=method == "temperature-bias", shared_b=False)
        a[own], b[own] = fa, fb
        # A slope <= 0 would invert (or flatten) the class's ranking, against the logits the mAP is computed on:
        # such a class keeps the pooled map and threshold instead (its held-out scores are no better than chance).
        inverted = own & (a <= 0)
        if inverted.any():
            logger.warning("calibration: %d class(es) (#%s) got a slope <= 0 on the held-out data (their scores rank "
                           "positives below negatives there); they use the pooled calibration instead",
                           int(inverted.sum()), ", #".join(map(str, np.flatnonzero(inverted)[:10])))
            a[inverted], b[inverted] = ga[inverted], gb[inverted]
            own = own & ~inverted
    probs = apply_sigmoid_map(z, a, b)
    shared, _ = best_threshold(probs, y, beta)
    thresholds = np.full(z.shape[1], shared)
    for c in np.flatnonzero(own):
        thresholds[c], _ = best_threshold(probs[:, c], y[:, c], beta)
    return Calibration(method=method, a=[float(v) for v in a], b=[float(v) for v in b],
                       thresholds=[float(t) for t in thresholds], fitted_on=fitted_on,
                       min_positives=int(min_positives), beta=float(beta), own_fit=[bool(o) for o in own],
                       shared_threshold=float(shared))


def decision_metrics(probs: ArrayLike, labels: ArrayLike, thresholds: Union[float, ArrayLike]) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 of ``p >= threshold`` and the mean number of labels per image, predicted and true."""
    from .metrics import f1_scores

    p = _np(probs)
    y = _np(labels) > 0
    t = np.asarray(thresholds, dtype=np.float64)
    out = f1_scores(p, y, t)
    out["labels_per_image"] = float((p >= t).sum(axis=1).mean()) if len(p) else float("nan")
    out["true_labels_per_image"] = float(y.sum(axis=1).mean()) if len(p) else float("nan")
    return out


__all__ = ["CALIBRATIONS", "Calibration", "fit_calibration", "fit_sigmoid_map", "apply_sigmoid_map",
           "best_threshold", "expected_calibration_error", "decision_metrics",
           "platt_targets", "fbeta"]
