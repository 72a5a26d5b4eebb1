"""Paired bootstrap differences between methods, against an explicit resampling with scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from lmpt.engine.rundir.layout import RunLayout
from lmpt.engine.rundir.outputs import save_test_logits
from lmpt.engine.studies.compare import comparison_table, default_pairs, paired_differences
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
    assert entry["total"]["low"] == pytest.approx(low, abs=1e-9)
    assert entry["total"]["high"] == pytest.approx(high, abs=1e-9)
    assert "| lmpt - zeroshot |" in comparison_table(out)


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
    assert default_pairs(["zeroshot", "coop", "coop-db", "lmpt"]) == [
        ("coop", "zeroshot"), ("coop-db", "zeroshot"), ("lmpt", "zeroshot"), ("lmpt", "coop-db")]
