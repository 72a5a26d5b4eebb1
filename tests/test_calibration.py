"""Calibration and thresholds against independent computations on small inputs."""
from __future__ import annotations

import numpy as np
import pytest

from lmpt.calibration import (Calibration, apply_sigmoid_map, best_threshold, decision_metrics,
                              expected_calibration_error, fit_calibration, fit_sigmoid_map)
from lmpt.errors import ConfigError


def newton_platt(z: np.ndarray, t: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """Platt scaling of one score vector ``z`` to targets ``t`` by damped Newton steps (independent solver)."""
    a, b = 0.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * z + b)))
        g = np.array([((p - t) * z).sum(), (p - t).sum()])
        w = p * (1 - p)
        h = np.array([[(w * z * z).sum(), (w * z).sum()], [(w * z).sum(), w.sum()]]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(h, g)
        loss = lambda a_, b_: -(t * np.log(1 / (1 + np.exp(-(a_ * z + b_)))) +  # noqa: E731
                                (1 - t) * np.log(1 - 1 / (1 + np.exp(-(a_ * z + b_))))).sum()
        s = 1.0
        while loss(a - s * step[0], b - s * step[1]) > loss(a, b) and s > 1e-8:
            s /= 2
        a, b = a - s * step[0], b - s * step[1]
    return a, b


def smoothed(y: np.ndarray) -> np.ndarray:
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    return np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def scores(rng):
    n, c = 120, 4
    y = rng.random((n, c)) < np.array([0.5, 0.3, 0.1, 0.05])
    z = 20 + 3 * rng.standard_normal((n, c)) + 2.5 * y  # CLIP-like: every logit far above 0
    y[:, 3] = False  # a class without any held-out positive
    y[:, 2] = False  # and one with 3, too few for its own fit
    y[0, 2] = y[1, 2] = y[2, 2] = True
    return z, y


def test_platt_per_class_matches_newton(scores):
    z, y = scores
    a, b = fit_sigmoid_map(z[:, :3], y[:, :3], shared_a=False, shared_b=False)
    for c in range(3):
        na, nb = newton_platt(z[:, c], smoothed(y[:, c]))
        assert a[c] == pytest.approx(na, rel=1e-4, abs=1e-6)
        assert b[c] == pytest.approx(nb, rel=1e-4, abs=1e-5)


def test_global_map_matches_newton_on_pooled_entries(scores):
    z, y = scores
    a, b = fit_sigmoid_map(z, y, shared_a=True, shared_b=True)
    na, nb = newton_platt(z.ravel(), smoothed(y.ravel()))
    assert np.allclose(a, na, rtol=1e-4) and np.allclose(b, nb, rtol=1e-4)


def test_temperature_bias_is_a_stationary_point(scores):
    z, y = scores
    a, b = fit_sigmoid_map(z[:, :3], y[:, :3], shared_a=True, shared_b=False)
    assert len(set(np.round(a, 12))) == 1 and len(set(np.round(b, 6))) == 3
    t = np.stack([smoothed(y[:, c]) for c in range(3)], axis=1)
    p = apply_sigmoid_map(z[:, :3], a, b)
    # gradient of the summed cross-entropy: d/db_c = sum_n (p - t), d/da = sum_{n,c} (p - t) z
    assert np.abs((p - t).sum(axis=0)).max() < 1e-5
    assert abs(((p - t) * z[:, :3]).sum()) < 1e-3


def brute_f1(s: np.ndarray, y: np.ndarray, t: float) -> float:
    pred = s >= t
    tp = (pred & y).sum()
    return 0.0 if tp == 0 else 2 * tp / (pred.sum() + y.sum())


def test_best_threshold_maximises_f1_by_brute_force(rng):
    s = np.round(rng.random(60), 2)  # ties included
    y = rng.random(60) < 0.3
    t, f = best_threshold(s, y)
    best = max(brute_f1(s, y, c) for c in np.unique(s))
    assert f == pytest.approx(best) and brute_f1(s, y, t) == pytest.approx(best)
    # the midpoint: no score lies between the chosen score and t
    chosen = s[s >= t].min()
    assert not ((s < chosen) & (s >= t)).any() and t < chosen


def test_fit_calibration_falls_back_for_classes_without_positives(scores):
    z, y = scores
    cal = fit_calibration(z, y, "platt", min_positives=5)
    assert cal.own_fit == [True, True, False, False]
    ga, gb = fit_sigmoid_map(z, y, shared_a=True, shared_b=True)
    assert cal.a[3] == pytest.approx(ga[0]) and cal.b[2] == pytest.approx(gb[0])
    probs = cal.probabilities(z)
    # shared threshold: the pooled micro-F1 optimum over all classes' entries
    best = max(brute_f1(probs.ravel(), y.ravel(), c) for c in np.unique(probs))
    assert brute_f1(probs.ravel(), y.ravel(), cal.shared_threshold) == pytest.approx(best)
    assert cal.thresholds[3] == cal.shared_threshold == cal.thresholds[2]
    for c in (0, 1):
        own = max(brute_f1(probs[:, c], y[:, c], t) for t in np.unique(probs[:, c]))
        assert brute_f1(probs[:, c], y[:, c], cal.thresholds[c]) == pytest.approx(own)
    again = Calibration.from_dict(cal.to_dict())
    assert np.array_equal(again.decide(probs), cal.decide(probs))


def test_calibration_cures_predict_all(scores):
    z, y = scores
    cal = fit_calibration(z, y, "platt")
    raw = decision_metrics(1 / (1 + np.exp(-z)), y, 0.5)
    assert raw["labels_per_image"] == 4  # sigmoid(20) >= 0.5 everywhere
    calibrated = decision_metrics(cal.probabilities(z), y, cal.thresholds)
    assert calibrated["labels_per_image"] < 2 and calibrated["OF1"] > raw["OF1"]


def test_ece_matches_a_loop_over_bins():
    p = np.array([0.05, 0.1, 0.15, 0.5, 0.55, 0.9, 1.0, 0.2])
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    # 5 bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]: {.05,.1,.15,.2} {} {.5,.55} {} {.9,1}
    expected = 4 / 8 * abs(1 / 4 - 0.125) + 2 / 8 * abs(0.5 - 0.525) + 2 / 8 * abs(1 - 0.95)
    assert expected_calibration_error(p, y, bins=5) == pytest.approx(expected)


def test_decision_metrics_with_per_class_thresholds():
    p = np.array([[0.9, 0.2], [0.4, 0.6], [0.1, 0.35]])
    y = np.array([[1, 0], [1, 1], [0, 0]])
    m = decision_metrics(p, y, [0.5, 0.3])  # predictions: [[1,0],[0,1],[0,1]]
    assert m["labels_per_image"] == pytest.approx(1.0) and m["true_labels_per_image"] == pytest.approx(1.0)
    assert m["OP"] == pytest.approx(2 / 3) and m["OR"] == pytest.approx(2 / 3)
    assert m["CP"] == pytest.approx((1 + 0.5) / 2) and m["CR"] == pytest.approx((0.5 + 1) / 2)


def _bench_calibration():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "calibration.py"
    spec = importlib.util.spec_from_file_location("bench_calibration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cross_validated_loss_prefers_a_calibrated_map(scores):
    z, y = scores
    assert np.isfinite(_bench_calibration().cross_validated_loss(z[:, :3], y[:, :3], "platt", folds=3))
    with pytest.raises(ConfigError, match="calibration method"):
        fit_calibration(z, y, "isotonic")


def test_cross_validation_folds_partition_the_rows():
    cross_validation_folds = _bench_calibration().cross_validation_folds

    folds = list(cross_validation_folds(23, folds=5, seed=3))
    assert len(folds) == 5
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests.tolist()) == list(range(23))  # every row held out exactly once
    for train, test in folds:
        assert set(train.tolist()) | set(test.tolist()) == set(range(23)) and not set(train) & set(test)
    again = [test.tolist() for _, test in cross_validation_folds(23, folds=5, seed=3)]
    assert again == [test.tolist() for _, test in folds]
