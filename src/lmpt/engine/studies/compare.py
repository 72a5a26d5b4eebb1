"""Is one method better than another, beyond the noise? Paired differences with intervals over seeds and images.

For two methods A and B evaluated on the same test images, the difference of their mAP (total, tail, ...) is
the difference of the two methods' means over their seeds. Two sources of variation move it:

- **the seeds** (a rerun with other seeds, or another machine's last bits, lands elsewhere): each method's mean
  over ``n`` seeds has variance ``s**2 / n`` (``s`` the sample std of its per-seed mAP); a method with one run
  (zero-shot, which does not depend on the seed) contributes none;
- **the test images**: the variance of the seed-mean difference over a paired bootstrap of the test images
  (``n_boot`` resamples, the same images for both methods and every seed).

The 95% interval is ``diff ± t * sqrt(seed variance + image variance)``, with ``t`` Student's quantile at the
Welch-Satterthwaite degrees of freedom (the image term counts as exactly known). With 3 seeds that is ``t(2)
= 4.30`` when the seeds dominate: a bootstrap over 3 seeds would see 10 distinct resamples and underestimate
their spread (docs/demo.md). Each entry says which sources its interval covers (``covers``); the images-only
bootstrap percentile interval is kept as ``images_low`` / ``images_high``. Runs store their test logits
(``test_logits.npy``, and ``test_rows.npy`` when they scored a subset of the test split, as the reference's
zero-shot protocol does); comparisons use the images every compared run scored.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...data.dataset import class_groups
from ...metrics import scores_from_logits, weighted_average_precision
from ..rundir.layout import RunLayout

SEEDLESS = ("zeroshot",)  # methods whose result does not depend on the seed (they run once)
SEEDS, IMAGES = "seeds", "test images"


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


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile at probability ``p`` (0.5 < p < 1) for ``df`` degrees of freedom (``inf``: normal).

    The density is integrated (Simpson, 4,000 intervals) and the CDF inverted by bisection: good to about 1e-7,
    without scipy.
    """
    if not 0.5 < p < 1:
        raise ValueError(f"p must be in (0.5, 1), got {p}")
    if math.isinf(df) or df > 1e6:
        lo, hi = 0.0, 10.0
        while hi - lo > 1e-10:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
        return 0.5 * (lo + hi)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(grid ** 2 / df))
        h = x / 4000
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-9 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


def seed_and_image_interval(per_seed_a: Sequence[float], per_seed_b: Sequence[float], image_var: float,
                            seedless: tuple[bool, bool] = (False, False), level: float = 0.95) -> dict[str, Any]:
    """The interval of ``mean(a) - mean(b)`` over seeds and test images (see the module docstring).

    ``per_seed_*``: each method's mAP per seed on all test images; ``image_var``: the bootstrap variance of the
    seed-mean difference over test images. Returns ``diff``, ``low``, ``high``, ``se``, ``df``, ``covers``.
    """
    terms = []  # (variance of the mean, degrees of freedom)
    seeds_estimated = True
    for values, fixed in zip((per_seed_a, per_seed_b), seedless):
        values = np.asarray(values, dtype=np.float64)
        if len(values) >= 2:
            terms.append((float(np.var(values, ddof=1)) / len(values), len(values) - 1))
        elif not fixed:
            seeds_estimated = False
    diff = float(np.mean(per_seed_a) - np.mean(per_seed_b))
    seed_var = sum(v for v, _ in terms)
    total = seed_var + float(image_var)
    denom = sum(v * v / k for v, k in terms)
    df = total * total / denom if denom > 0 else math.inf
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(total) if np.isfinite(total) else math.nan
    covers = ([SEEDS] if seeds_estimated and (terms or all(seedless)) else []) + [IMAGES]
    return {"diff": diff, "low": diff - half, "high": diff + half, "se": math.sqrt(total) if total >= 0 else math.nan,
            "df": df if math.isfinite(df) else None, "covers": covers}


def paired_differences(runs: dict[str, Sequence[Path]], labels: np.ndarray, class_freq: Sequence[int],
                       pairs: Sequence[tuple[str, str]], protocol: str = "softmax", n_boot: int = 1000,
                       seed: int = 0, metrics: Sequence[str] = ("total", "tail"),
                       seedless: Sequence[str] = SEEDLESS) -> dict[str, Any]:
    """``{"A - B": {metric: {"diff", "low", "high", ...}, "images", "runs", "covers"}}`` for each pair in ``runs``.

    ``seedless`` names the methods whose single run has no seed variation (zero-shot); any other method with one
    run leaves the seeds out of its pair's interval, and ``covers`` says so.
    """
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

        def per_run(method: str) -> list[dict[str, np.ndarray]]:
            out_runs = []
            for logits, rows in loaded[method]:
                pos = np.searchsorted(rows, common)
                scores = scores_from_logits(logits[pos], protocol)
                out_runs.append(_group_means(weighted_average_precision(scores, y, weights), groups))
            return out_runs

        ra, rb = per_run(a), per_run(b)
        entry: dict[str, Any] = {"images": int(len(common)), "runs": [len(ra), len(rb)], "resamples": n_boot}
        for g in metrics:
            boot = np.mean([r[g] for r in ra], axis=0) - np.mean([r[g] for r in rb], axis=0)
            finite = np.isfinite(boot[1:]).any()
            low, high = np.nanpercentile(boot[1:], [2.5, 97.5]) if finite else (np.nan, np.nan)
            image_var = float(np.nanvar(boot[1:], ddof=1)) if finite else math.nan
            e = seed_and_image_interval([r[g][0] for r in ra], [r[g][0] for r in rb], image_var,
                                        (a in seedless, b in seedless))
            entry["covers"] = e.pop("covers")
            entry[g] = {**e, "images_low": float(low), "images_high": float(high)}
        out[f"{a} - {b}"] = entry
    return out


def default_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Every method against zero-shot, and ``lmpt`` against ``coop-db``."""
    pairs = [(m, "zeroshot") for m in methods if m != "zeroshot" and "zeroshot" in methods]
    if "lmpt" in methods and "coop-db" in methods:
        pairs.append(("lmpt", "coop-db"))
    return pairs


def covers_text(comparisons: dict[str, Any]) -> str:
    """What the intervals of ``comparisons`` cover, in words ("seeds and test images"; mixed: per pair)."""
    kinds = {" and ".join(e.get("covers", [IMAGES])) for e in comparisons.values()}
    return kinds.pop() if len(kinds) == 1 else "per comparison (see the table)"


def comparison_table(comparisons: dict[str, Any], metrics: Sequence[str] = ("total", "tail")) -> str:
    """Markdown: the paired differences in mAP points with their 95% intervals and what the intervals cover."""
    head = " | ".join(f"{g} diff [95% CI]" for g in metrics)
    lines = [f"| comparison | {head} | images | runs | interval covers |",
             "|---|" + "---|" * len(metrics) + "---|---|---|"]
    for name, e in comparisons.items():
        cells = " | ".join(f"{100 * e[g]['diff']:+.2f} [{100 * e[g]['low']:+.2f}, {100 * e[g]['high']:+.2f}]"
                           for g in metrics)
        covers = " + ".join(e.get("covers", [IMAGES]))
        lines.append(f"| {name} | {cells} | {e['images']} | {e['runs'][0]} vs {e['runs'][1]} | {covers} |")
    return "\n".join(lines)
