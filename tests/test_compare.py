"""Paired bootstrap differences between methods, against an explicit resampling with scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from lmpt.engine.rundir.layout import RunLayout
from lmpt.engine.rundir.outputs import save_test_logits
from lmpt.engine.studies.compare import (comparison_table, default_pairs, paired_differences,
                                         seed_and_image_interval, t_quantile)
from lmpt.metrics import scores_from_logits


def _map(logits, labels, cols):
    s = scores_from_logits(logits, "softmax")
    aps = [average_precision_score(labels[:, c], s[:, c]) for c in cols if labels[:, c].sum() > 0]
    return float(np.mean(aps))


def test_paired_bootstrap_matches_explicit_resampling(tmp_path):
    rng = np.random.default_rng(0)
    n, c = 60, 5
    labels = (rng.random((n, c)) < 0.3).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, c, n)] = 1
    freq = [200, 150, 50, 10, 5]  # head 0,1; medium 2; tail 3,4
    runs = {}
    for method, seeds, noise in (("zeroshot", 1, 3.0), ("lmpt", 2, 1.0)):
        runs[method] = []
        for s in range(seeds):
            d = tmp_path / f"{method}-{s}"
            d.mkdir()
            save_test_logits(RunLayout(d), labels * 2.0 + rng.normal(0, noise, (n, c)))
            runs[method].append(d)
    out = paired_differences(runs, labels, freq, [("lmpt", "zeroshot")], n_boot=50, seed=3)
    entry = out["lmpt - zeroshot"]
    assert entry["images"] == n and entry["runs"] == [2, 1] and entry["resamples"] == 50

    loaded = {m: [np.load(d / "test_logits.npy") for d in dirs] for m, dirs in runs.items()}

    def diff(rows, cols):
        a = np.mean([_map(x[rows], labels[rows], cols) for x in loaded["lmpt"]])
        b = np.mean([_map(x[rows], labels[rows], cols) for x in loaded["zeroshot"]])
        return a - b

    assert entry["total"]["diff"] == pytest.approx(diff(np.arange(n), range(c)), abs=1e-9)
    assert entry["tail"]["diff"] == pytest.approx(diff(np.arange(n), [3, 4]), abs=1e-9)
    # the same resamples, drawn again, scored explicitly (duplicated rows) with scikit-learn
    draws = np.random.default_rng(3).multinomial(n, np.full(n, 1.0 / n), size=50)
    explicit = [diff(np.repeat(np.arange(n), k), range(c)) for k in draws]
    low, high = np.percentile(explicit, [2.5, 97.5])
    assert entry["total"]["images_low"] == pytest.approx(low, abs=1e-9)
    assert entry["total"]["images_high"] == pytest.approx(high, abs=1e-9)
    # the reported interval: seeds (lmpt's two runs; zero-shot has no seed) and test images, recomputed with scipy
    from scipy import stats

    per_seed = [_map(x, labels, range(c)) for x in loaded["lmpt"]]
    seed_var = np.var(per_seed, ddof=1) / 2
    image_var = np.var(explicit, ddof=1)
    df = (seed_var + image_var) ** 2 / (seed_var ** 2 / 1)
    half = stats.t.ppf(0.975, df) * np.sqrt(seed_var + image_var)
    assert entry["total"]["df"] == pytest.approx(df, rel=1e-9)
    assert entry["total"]["low"] == pytest.approx(entry["total"]["diff"] - half, abs=1e-6)
    assert entry["total"]["high"] == pytest.approx(entry["total"]["diff"] + half, abs=1e-6)
    assert entry["covers"] == ["seeds", "test images"]
    assert "| lmpt - zeroshot |" in comparison_table(out) and "seeds + test images" in comparison_table(out)


def test_identical_methods_differ_by_zero_and_subsets_are_paired(tmp_path):
    rng = np.random.default_rng(1)
    labels = (rng.random((40, 3)) < 0.5).astype(np.uint8)
    logits = rng.normal(size=(40, 3))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    save_test_logits(RunLayout(a), logits)
    keep = np.arange(5, 40)  # b scored only rows 5..39 (e.g. labelled images): compared on those
    save_test_logits(RunLayout(b), logits[keep], rows=keep)
    out = paired_differences({"x": [a], "y": [b]}, labels, [100, 50, 5], [("x", "y")], n_boot=30)
    e = out["x - y"]
    assert e["images"] == 35
    assert e["total"]["diff"] == e["total"]["low"] == e["total"]["high"] == 0.0
    assert e["covers"] == ["test images"]  # one run each, neither seedless: the seeds are not covered
    assert default_pairs(["zeroshot", "coop", "coop-db", "lmpt"]) == [
        ("coop", "zeroshot"), ("coop-db", "zeroshot"), ("lmpt", "zeroshot"), ("lmpt", "coop-db")]


def test_t_quantile_matches_scipy():
    from scipy import stats

    for df in (1, 2, 2.5, 4, 30, 1e4):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-6)
    assert t_quantile(0.975, float("inf")) == pytest.approx(stats.norm.ppf(0.975), rel=1e-8)
    with pytest.raises(ValueError):
        t_quantile(0.3, 2)


def test_seed_variation_widens_the_interval(tmp_path):
    """Three seeds that land far apart (one good, two poor) against zero-shot: the images-only bootstrap is
    narrow, the interval over seeds and images is several times wider and contains every seed's difference."""
    rng = np.random.default_rng(4)
    n, c = 200, 4
    labels = (rng.random((n, c)) < 0.3).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, c, n)] = 1
    runs = {"zeroshot": [], "coop": []}
    for method, noises in (("zeroshot", [1.5]), ("coop", [0.3, 3.0, 6.0])):
        for k, noise in enumerate(noises):
            d = tmp_path / f"{method}-{k}"
            d.mkdir()
            save_test_logits(RunLayout(d), labels * 2.0 + rng.normal(0, noise, (n, c)))
            runs[method].append(d)
    e = paired_differences(runs, labels, [200, 100, 30, 5], [("coop", "zeroshot")], n_boot=200)["coop - zeroshot"]
    t = e["total"]
    per_seed = [_map(np.load(d / "test_logits.npy"), labels, range(c)) for d in runs["coop"]]
    zs = _map(np.load(runs["zeroshot"][0] / "test_logits.npy"), labels, range(c))
    assert max(per_seed) - min(per_seed) > 0.2  # the seeds dominate
    assert (t["high"] - t["low"]) > 5 * (t["images_high"] - t["images_low"])
    assert all(t["low"] < p - zs < t["high"] for p in per_seed)
    assert e["covers"] == ["seeds", "test images"] and 2.0 <= t["df"] < 2.5  # about n - 1: the seeds dominate


def test_interval_by_hand():
    """Two seeds at 0.50 and 0.60 against a seedless 0.40, image variance 0.0004: seed variance of the mean
    var([.5, .6]) / 2 = 0.0025, df = (0.0029 ** 2) / (0.0025 ** 2 / 1) = 1.3456, t(0.975, 1.3456) from scipy."""
    from scipy import stats

    e = seed_and_image_interval([0.5, 0.6], [0.4], 0.0004, (False, True))
    df = 0.0029 ** 2 / 0.0025 ** 2
    half = stats.t.ppf(0.975, df) * np.sqrt(0.0029)
    assert e["diff"] == pytest.approx(0.15) and e["df"] == pytest.approx(df)
    assert (e["low"], e["high"]) == pytest.approx((0.15 - half, 0.15 + half), abs=1e-7)
    assert e["covers"] == ["seeds", "test images"]
    one = seed_and_image_interval([0.5], [0.4], 0.0004)  # one seed, not seedless: images only, normal quantile
    assert one["covers"] == ["test images"] and one["df"] is None
    assert one["high"] - one["diff"] == pytest.approx(stats.norm.ppf(0.975) * 0.02, rel=1e-7)
