"""Multi-label evaluation: per-class AP (identical to scikit-learn's non-interpolated
``average_precision_score``), mAP with head/medium/tail breakdown, CP/CR/CF1/OP/OR/OF1.

All AP/mAP values are **fractions in [0, 1]**, not percent. Inputs may be numpy arrays or
torch tensors. A target entry counts as positive when it is > 0.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence, Union

import numpy as np

from lmpt.data.dataset import HEAD_MIN, TAIL_MAX, class_groups

__all__ = [
    "average_precision",
    "weighted_average_precision",
    "mean_ap",
    "lt_map",
    "lt_map_from_ap",
    "scores_from_logits",
    "f1_scores",
    "evaluate_scores",
    "PROTOCOLS",
]

ArrayLike = Union[np.ndarray, Sequence, Any]  # numpy array, nested sequence or torch.Tensor

PROTOCOLS = ("sigmoid", "softmax")


def _to_numpy(x: ArrayLike, dtype: type = np.float64) -> np.ndarray:
    """numpy copy/view of ``x`` (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        import torch

        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=dtype)


def _scores_targets(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores)
    y = _to_numpy(targets) > 0
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores and targets must both be [N, C] with the same shape, got {s.shape} and {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; AP is undefined for unordered scores")
    return s, y


def average_precision(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Per-class non-interpolated AP, ``[C]`` float64; NaN for a class without positives.

    For every class with at least one positive it equals
    ``sklearn.metrics.average_precision_score(targets[:, c], scores[:, c])``:
    ``AP = sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds in descending order, so tied
    scores enter together. Equivalently, each positive contributes ``1/P`` times the precision
    at the end of its tie group.

    A class without positives has no defined AP: scikit-learn returns 0 for it (with a warning), which
    would pull every mean down; here it is NaN, and :func:`mean_ap` / :func:`lt_map_from_ap` leave it out
    of the means and report how many classes they left out (``"excluded"``).
    """
    s, y = _scores_targets(scores, targets)
    n, c = s.shape
    ap = np.full(c, np.nan, dtype=np.float64)
    if n == 0:
        return ap
    order = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=0)
    y_sorted = np.take_along_axis(y, order, axis=0)
    tp = np.cumsum(y_sorted, axis=0, dtype=np.float64)
    rank = np.arange(1, n + 1, dtype=np.float64)[:, None]
    precision = tp / rank
    # Index of the last element of each element's tie group (column-wise).
    is_last = np.ones((n, c), dtype=bool)
    is_last[:-1] = s_sorted[:-1] != s_sorted[1:]
    idx = np.where(is_last, np.arange(n)[:, None], n)
    group_end = np.minimum.accumulate(idx[::-1], axis=0)[::-1]
    prec_at_end = np.take_along_axis(precision, group_end, axis=0)
    n_pos = tp[-1]
    has_pos = n_pos > 0
    ap[has_pos] = (y_sorted[:, has_pos] * prec_at_end[:, has_pos]).sum(axis=0) / n_pos[has_pos]
    return ap


def weighted_average_precision(scores: ArrayLike, targets: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """Per-class AP of many weightings of the same images: ``[B, C]`` for ``weights`` ``[B, N]``.

    With integer weights (how often each image was drawn) this is :func:`average_precision` of the resampled
    rows, for every resample at once (the images are sorted once): ``AP = sum_i w_i y_i P(end of i's tie group)
    / sum_i w_i y_i`` with ``P(k) = sum_{j<=k} w_j y_j / sum_{j<=k} w_j``. NaN where a class has no positive
    of positive weight.
    """
    s, y = _scores_targets(scores, targets)
    w = _to_numpy(weights)
    if w.ndim != 2 or w.shape[1] != s.shape[0]:
        raise ValueError(f"weights must be [B, N] with N = {s.shape[0]} images, got {w.shape}")
    n, c = s.shape
    out = np.full((w.shape[0], c), np.nan)
    for k in range(c):
        order = np.argsort(-s[:, k], kind="stable")
        s_k, y_k, w_k = s[order, k], y[order, k].astype(np.float64), w[:, order]
        is_last = np.ones(n, dtype=bool)
        is_last[:-1] = s_k[:-1] != s_k[1:]
        group_end = np.minimum.accumulate(np.where(is_last, np.arange(n), n)[::-1])[::-1]
        tp = np.cumsum(w_k * y_k, axis=1)
        seen = np.cumsum(w_k, axis=1)
        precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)[:, group_end]
        positives = tp[:, -1]
        has = positives > 0
        out[has, k] = (w_k[has] * y_k * precision[has]).sum(axis=1) / positives[has]
    return out


def mean_ap(ap: ArrayLike) -> float:
    """Mean of the non-NaN APs; warns (UserWarning) how many classes were skipped; NaN if all are."""
    a = _to_numpy(ap).ravel()
    nan = np.isnan(a)
    if nan.any():
        warnings.warn(f"mean_ap: skipped {int(nan.sum())} of {a.size} classes with no positive example",
                      UserWarning, stacklevel=2)
    if nan.all():
        return float("nan")
    return float(a[~nan].mean())


def _nanmean_quiet(a: np.ndarray) -> float:
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def lt_map_from_ap(ap: ArrayLike, class_freq: Sequence[int], head: int = HEAD_MIN,
                   tail: int = TAIL_MAX) -> dict[str, float]:
    """``{"total", "head", "medium", "tail"}`` mean AP (fractions) from per-class AP, plus ``"excluded"``.

    Groups by training count: head ``n >= head``, tail ``n < tail``, medium otherwise. Classes
    with NaN AP (no positive example) are left out of every mean (``total`` warns via
    :func:`mean_ap`); ``"excluded"`` is how many were left out. An empty group gives NaN.
    """
    a = _to_numpy(ap).ravel()
    freq = np.asarray(class_freq).ravel()
    if freq.size != a.size:
        raise ValueError(f"class_freq has {freq.size} entries but there are {a.size} per-class APs")
    groups = class_groups(freq, head=head, tail=tail)
    out = {"total": mean_ap(a)}
    for name in ("head", "medium", "tail"):
        out[name] = _nanmean_quiet(a[groups[name]])
    out["excluded"] = int(np.isnan(a).sum())
    return out


def lt_map(scores: ArrayLike, targets: ArrayLike, class_freq: Sequence[int], head: int = HEAD_MIN,
           tail: int = TAIL_MAX) -> dict[str, float]:
    """Total/head/medium/tail mAP (fractions in [0, 1]) and ``"excluded"``; see :func:`lt_map_from_ap`."""
    return lt_map_from_ap(average_precision(scores, targets), class_freq, head=head, tail=tail)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def scores_from_logits(logits: ArrayLike, protocol: str) -> np.ndarray:
    """float64 scores: ``"sigmoid"`` per entry, or ``"softmax"`` across classes per image (the
    reference's evaluation protocol)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not supported; use one of {', '.join(map(repr, PROTOCOLS))}")
    z = _to_numpy(logits)
    if protocol == "sigmoid":
        return _sigmoid(z)
    if z.ndim != 2:
        raise ValueError(f"softmax protocol needs [N, C] logits, got shape {z.shape}")
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def f1_scores(scores: ArrayLike, targets: ArrayLike, threshold: float) -> dict[str, float]:
    """CP, CR, CF1 (per-class, averaged) and OP, OR, OF1 (over all entries); prediction is
    ``score >= threshold``.

    Per-class precision is 0 for a class with no predicted positive. CP and CR average over the
    classes with at least one positive target (the classes mAP counts; NaN if there are none).
    ``F1 = 2PR/(P+R)``, 0 when ``P = R = 0``. OP is 0 without any prediction, OR NaN without
    any positive target.
    """
    s, y = _scores_targets(scores, targets)
    pred = s >= threshold
    tp = (pred & y).sum(axis=0).astype(np.float64)
    n_pred = pred.sum(axis=0).astype(np.float64)
    n_pos = y.sum(axis=0).astype(np.float64)
    valid = n_pos > 0
    prec_c = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    rec_c = np.divide(tp, n_pos, out=np.zeros_like(tp), where=valid)
    cp = float(prec_c[valid].mean()) if valid.any() else float("nan")
    cr = float(rec_c[valid].mean()) if valid.any() else float("nan")
    op = float(tp.sum() / n_pred.sum()) if n_pred.sum() > 0 else 0.0
    orr = float(tp.sum() / n_pos.sum()) if n_pos.sum() > 0 else float("nan")

    def f1(p: float, r: float) -> float:
        if np.isnan(p) or np.isnan(r):
            return float("nan")
        return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)

    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": orr, "OF1": f1(op, orr)}


def evaluate_scores(
    logits: ArrayLike,
    targets: ArrayLike,
    class_freq: Sequence[int],
    head: int = HEAD_MIN,
    tail: int = TAIL_MAX,
    threshold_sigmoid: float = 0.5,
    threshold_softmax: float = 0.3,
) -> dict[str, Any]:
    """Full evaluation for both protocols (JSON-serialisable; NaN where undefined).

    Returns ``{"sigmoid": {...}, "softmax": {...}, "per_class_ap": {"sigmoid": [...],
    "softmax": [...]}}``; each protocol dict has total/head/medium/tail mAP (fractions), CP, CR,
    CF1, OP, OR, OF1, the threshold used and ``excluded`` (classes without a positive, left out of
    every mAP). Sigmoid AP is computed on the raw logits: sigmoid
    is monotone so the AP is the same, and float64 sigmoid would turn logits above ~36 into
    artificial ties at 1.0.
    """
    z = _to_numpy(logits)
    y = _to_numpy(targets)
    out: dict[str, Any] = {"per_class_ap": {}}
    for protocol, threshold in (("sigmoid", threshold_sigmoid), ("softmax", threshold_softmax)):
        scores = scores_from_logits(z, protocol)
        ap = average_precision(z if protocol == "sigmoid" else scores, y)
        res: dict[str, Any] = lt_map_from_ap(ap, class_freq, head=head, tail=tail)
        res.update(f1_scores(scores, y, threshold))
        res["threshold"] = float(threshold)
        out[protocol] = res
        out["per_class_ap"][protocol] = [float(v) for v in ap]
    return out
