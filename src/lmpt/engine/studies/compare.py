"""Is one method better than another, beyond the noise? Paired differences with bootstrap intervals.

For two methods A and B evaluated on the same test images, the difference of their mAP (total, tail, ...) is
computed on the same resampled images for both (a paired bootstrap over test images, ``n_boot`` resamples),
each method's mAP being the mean over its seeds (runs are pooled over seeds). The 95% interval is the 2.5th and
97.5th percentile of the resampled differences. Runs store their test logits (``test_logits.npy``, and
``test_rows.npy`` when they scored a subset of the test split, as the reference's zero-shot protocol does);
comparisons use the images every compared run scored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...data.dataset import class_groups
from ...metrics import scores_from_logits, weighted_average_precision
from ..rundir.layout import RunLayout

def _load(run_dir: Path, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    layout = RunLayout(run_dir)
    logits = np.load(layout / RunLayout.TEST_LOGITS)
    rows_file = layout / RunLayout.TEST_ROWS
    rows = np.load(rows_file) if rows_file.is_file() else np.arange(n_test)
    return logits, rows


def _group_means(ap: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with np.errstate(all="ignore"):
        out = {"total": np.nanmean(ap, axis=-1)}
        for name, idx in groups.items():
            out[name] = np.nanmean(ap[..., idx], axis=-1) if len(idx) else np.full(ap.shape[:-1], np.nan)
    return out


def paired_differences(runs: dict[str, Sequence[Path]], labels: np.ndarray, class_freq: Sequence[int],
                       pairs: Sequence[tuple[str, str]], protocol: str = "softmax", n_boot: int = 1000,
                       seed: int = 0, metrics: Sequence[str] = ("total", "tail")) -> dict[str, Any]:
    """``{"A - B": {metric: {"diff", "low", "high"}, "images", "runs"}}`` for each pair present in ``runs``."""
    n_test = labels.shape[0]
    groups = class_groups(class_freq)
    loaded = {m: [_load(Path(d), n_test) for d in dirs] for m, dirs in runs.items() if dirs}
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for a, b in pairs:
        if a not in loaded or b not in loaded:
            continue
        common = np.arange(n_test)
        for logits, rows in loaded[a] + loaded[b]:
            common = np.intersect1d(common, rows)
        y = labels[common]
        draws = rng.multinomial(len(common), np.full(len(common), 1.0 / len(common)), size=n_boot).astype(np.float64)
        weights = np.vstack([np.ones((1, len(common))), draws])  # row 0: the images as they are

        def seed_mean(method: str) -> dict[str, np.ndarray]:
            per_run = []
            for logits, rows in loaded[method]:
                pos = np.searchsorted(rows, common)
                scores = scores_from_logits(logits[pos], protocol)
                per_run.append(_group_means(weighted_average_precision(scores, y, weights), groups))
            return {g: np.mean([r[g] for r in per_run], axis=0) for g in per_run[0]}

        ma, mb = seed_mean(a), seed_mean(b)
        entry: dict[str, Any] = {"images": int(len(common)), "runs": [len(loaded[a]), len(loaded[b])],
                                 "resamples": n_boot}
        for g in metrics:
            diff = ma[g] - mb[g]
            low, high = np.nanpercentile(diff[1:], [2.5, 97.5]) if np.isfinite(diff[1:]).any() else (np.nan, np.nan)
            entry[g] = {"diff": float(diff[0]), "low": float(low), "high": float(high)}
        out[f"{a} - {b}"] = entry
    return out


def default_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Every method against zero-shot, and ``lmpt`` against ``coop-db``."""
    pairs = [(m, "zeroshot") for m in methods if m != "zeroshot" and "zeroshot" in methods]
    if "lmpt" in methods and "coop-db" in methods:
        pairs.append(("lmpt", "coop-db"))
    return pairs


def comparison_table(comparisons: dict[str, Any], metrics: Sequence[str] = ("total", "tail")) -> str:
    """Markdown: the paired differences in mAP points with their 95% bootstrap intervals."""
    head = " | ".join(f"{g} diff [95% CI]" for g in metrics)
    lines = [f"| comparison | {head} | images | runs |", "|---|" + "---|" * len(metrics) + "---|---|"]
    for name, e in comparisons.items():
        cells = " | ".join(f"{100 * e[g]['diff']:+.2f} [{100 * e[g]['low']:+.2f}, {100 * e[g]['high']:+.2f}]"
                           for g in metrics)
        lines.append(f"| {name} | {cells} | {e['images']} | {e['runs'][0]} vs {e['runs'][1]} |")
    return "\n".join(lines)
