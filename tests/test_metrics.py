"""Tests for lmpt.metrics against scikit-learn and hand-computed examples."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from lmpt.metrics import (
    average_precision,
    evaluate_scores,
    f1_scores,
    lt_map,
    lt_map_from_ap,
    mean_ap,
    scores_from_logits,
)


def _sklearn_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    out = []
    for c in range(scores.shape[1]):
        if targets[:, c].sum() == 0:
            out.append(np.nan)
        else:
            out.append(average_precision_score(targets[:, c], scores[:, c]))
    return np.array(out)


def _ap_by_definition(s: np.ndarray, y: np.ndarray) -> float:
    """AP = sum over distinct thresholds (descending) of (R_k - R_{k-1}) * P_k, plain loops."""
    n_pos = int(y.sum())
    ap, prev_r = 0.0, 0.0
    for thr in sorted(set(s.tolist()), reverse=True):
        sel = [i for i in range(len(s)) if s[i] >= thr]
        tp = sum(int(y[i]) for i in sel)
        p, r = tp / len(sel), tp / n_pos
        ap += (r - prev_r) * p
        prev_r = r
    return ap


@pytest.mark.parametrize("seed", range(25))
def test_ap_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(5, 60)), 7
    decimals = int(rng.integers(0, 3))  # heavy ties at 0 or 1 decimal
    scores = np.round(rng.random((n, c)), decimals)
    targets = (rng.random((n, c)) < rng.uniform(0.05, 0.6)).astype(np.int64)
    targets[:, 0] = 0
    targets[0, 0] = 1  # exactly one positive
    targets[:, 1] = 1  # all positive
    targets[:, 2] = 0  # no positive
    got = average_precision(scores, targets)
    ref = _sklearn_ap(scores, targets)
    assert np.isnan(got[2]) and np.isnan(ref[2])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14, equal_nan=True)


def test_ap_against_definition_loop_and_hand_example():
    rng = np.random.default_rng(100)
    scores = np.round(rng.random((30, 4)), 1)
    targets = (rng.random((30, 4)) < 0.4).astype(int)
    got = average_precision(scores, targets)
    for c in range(4):
        assert got[c] == pytest.approx(_ap_by_definition(scores[:, c], targets[:, c]), rel=1e-12)
    # hand example: scores .9 (pos), .8 (neg), .8 (pos), .1 (pos)
    # thresholds: .9 -> P=1, R=1/3; .8 -> P=2/3, R=2/3; .1 -> P=3/4, R=1
    s = np.array([[0.9], [0.8], [0.8], [0.1]])
    y = np.array([[1], [0], [1], [1]])
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 4)
    assert average_precision(s, y)[0] == pytest.approx(expected, rel=1e-12)


def test_ap_all_tied_and_no_warning():
    s = np.zeros((6, 2))
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ap = average_precision(s, y)
    assert ap[0] == pytest.approx(2 / 6) and np.isnan(ap[1])
    assert ap.dtype == np.float64 and ap.shape == (2,)


def test_ap_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([[np.nan], [1.0]]), np.array([[1], [0]]))


def test_mean_ap_warns_and_skips():
    with pytest.warns(UserWarning, match="skipped 2 of 4"):
        m = mean_ap(np.array([0.5, np.nan, 1.0, np.nan]))
    assert m == pytest.approx(0.75)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mean_ap(np.array([0.2, 0.4])) == pytest.approx(0.3)
    with pytest.warns(UserWarning, match="skipped 2 of 2"):
        assert math.isnan(mean_ap([np.nan, np.nan]))


def test_lt_map_groups_hand_example():
    class_freq = [500, 100, 99, 20, 19, 1]  # head: 0,1; medium: 2,3; tail: 4,5
    ap = np.array([0.9, 0.7, 0.5, 0.3, 0.2, np.nan])
    with pytest.warns(UserWarning, match="skipped 1 of 6"):
        out = lt_map_from_ap(ap, class_freq)
    assert set(out) == {"total", "head", "medium", "tail", "excluded"}
    assert out["excluded"] == 1  # the class without positives is left out of every mean, and counted
    assert out["total"] == pytest.approx((0.9 + 0.7 + 0.5 + 0.3 + 0.2) / 5)
    assert out["head"] == pytest.approx(0.8)
    assert out["medium"] == pytest.approx(0.4)
    assert out["tail"] == pytest.approx(0.2)
    # custom thresholds; an empty group is NaN, not a crash
    out2 = lt_map_from_ap(ap[:4], class_freq[:4], head=1000, tail=20)
    assert math.isnan(out2["head"]) and math.isnan(out2["tail"])
    assert out2["medium"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="class_freq"):
        lt_map_from_ap(ap, class_freq[:3])


def test_lt_map_from_scores():
    rng = np.random.default_rng(1)
    scores = rng.random((40, 5))
    targets = (rng.random((40, 5)) < 0.4).astype(int)
    freq = [150, 50, 5, 120, 3]
    ref = _sklearn_ap(scores, targets)
    out = lt_map(scores, targets, freq)
    assert out["total"] == pytest.approx(ref.mean())
    assert out["head"] == pytest.approx(ref[[0, 3]].mean())
    assert out["medium"] == pytest.approx(ref[1])
    assert out["tail"] == pytest.approx(ref[[2, 4]].mean())
    assert out["excluded"] == 0
    assert all(0.0 <= out[g] <= 1.0 for g in ("total", "head", "medium", "tail"))  # fractions, not percent
    # a class without positives: NaN (scikit-learn would say 0), excluded from the means and counted
    targets[:, 1] = 0
    with pytest.warns(UserWarning, match="skipped 1 of 5"):
        out = lt_map(scores, targets, freq)
    keep = [0, 2, 3, 4]
    assert out["total"] == pytest.approx(_sklearn_ap(scores[:, keep], targets[:, keep]).mean())
    assert out["excluded"] == 1 and math.isnan(out["medium"])


def test_scores_from_logits():
    z = np.array([[2.0, -1.0, 0.5], [800.0, -800.0, 0.0]])
    sig = scores_from_logits(z, "sigmoid")
    expected = np.array([[1 / (1 + math.exp(-v)) if v > -700 else 0.0 for v in row] for row in z])
    np.testing.assert_allclose(sig, expected, rtol=1e-12, atol=1e-300)
    sm = scores_from_logits(z, "softmax")
    e = np.exp([2.0, -1.0, 0.5])
    np.testing.assert_allclose(sm[0], e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(sm[1], [1.0, 0.0, 0.0], atol=1e-300)
    assert np.isfinite(sig).all() and np.isfinite(sm).all() and sm.dtype == np.float64
    with pytest.raises(ValueError, match="'probit'.*sigmoid.*softmax"):
        scores_from_logits(z, "probit")


def test_sigmoid_protocol_equals_logits_softmax_differs():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, size=(60, 6)) + rng.normal(0, 3, size=(60, 1))  # per-image offsets
    targets = (rng.random((60, 6)) < 0.3).astype(int)
    ap_logits = average_precision(logits, targets)
    ap_sig = average_precision(scores_from_logits(logits, "sigmoid"), targets)
    ap_sm = average_precision(scores_from_logits(logits, "softmax"), targets)
    np.testing.assert_allclose(ap_sig, ap_logits, rtol=1e-12)
    np.testing.assert_allclose(ap_sm, _sklearn_ap(scores_from_logits(logits, "softmax"), targets), rtol=1e-12)
    assert abs(np.mean(ap_sm) - np.mean(ap_logits)) > 1e-3


def test_f1_hand_example():
    scores = np.array([[0.9, 0.2, 0.6],
                       [0.4, 0.7, 0.1],
                       [0.8, 0.6, 0.3],
                       [0.1, 0.3, 0.2]])
    targets = np.array([[1, 0, 1],
                        [1, 1, 0],
                        [0, 1, 0],
                        [0, 0, 0]])
    out = f1_scores(scores, targets, 0.5)
    # predictions (>= .5): c0 rows {0,2}, c1 rows {1,2}, c2 rows {0}
    # c0: tp 1, pred 2, pos 2 -> P .5 R .5; c1: tp 2, pred 2, pos 2 -> 1, 1; c2: tp 1, pred 1, pos 1 -> 1, 1
    cp = cr = (0.5 + 1 + 1) / 3
    assert out["CP"] == pytest.approx(cp) and out["CR"] == pytest.approx(cr)
    assert out["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert out["OP"] == pytest.approx(4 / 5) and out["OR"] == pytest.approx(4 / 5)
    assert out["OF1"] == pytest.approx(0.8)
    # threshold is inclusive, and a class with no predictions has precision 0
    out2 = f1_scores(scores, targets, 0.7)
    # c0 rows {0,2}: tp 1 pred 2 pos 2; c1 row {1}: tp 1 pred 1 pos 2; c2: none -> P 0, R 0
    assert out2["CP"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert out2["CR"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert out2["OP"] == pytest.approx(2 / 3) and out2["OR"] == pytest.approx(2 / 5)
    # nothing predicted at all: zeros, no division error
    out3 = f1_scores(scores, targets, 2.0)
    assert out3["CP"] == out3["CF1"] == out3["OP"] == out3["OF1"] == 0.0


def test_f1_skips_classes_without_positives():
    scores = np.array([[0.9, 0.9], [0.1, 0.9]])
    targets = np.array([[1, 0], [0, 0]])
    out = f1_scores(scores, targets, 0.5)
    assert out["CP"] == pytest.approx(1.0) and out["CR"] == pytest.approx(1.0)
    assert out["OP"] == pytest.approx(1 / 3) and out["OR"] == pytest.approx(1.0)


def test_torch_and_numpy_inputs_agree():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=g) * 4
    targets = (torch.rand(50, 6, generator=g) < 0.3).to(torch.uint8)
    targets[:, 5] = 0
    freq = [300, 120, 60, 25, 10, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = evaluate_scores(logits.requires_grad_(True), targets, freq)
        b = evaluate_scores(logits.detach().numpy(), targets.numpy(), np.array(freq))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    np.testing.assert_array_equal(average_precision(logits, targets),
                                  average_precision(logits.detach().double().numpy(), targets.numpy()))


def test_evaluate_scores_structure_and_values():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, size=(80, 5)) + 40.0  # reference-sized logits: float64 sigmoid saturates
    targets = (rng.random((80, 5)) < 0.3).astype(int)
    freq = [200, 100, 50, 19, 5]
    out = evaluate_scores(logits, targets, freq)
    json.loads(json.dumps(out))  # serialisable
    assert set(out) == {"sigmoid", "softmax", "per_class_ap"}
    for protocol, thr in (("sigmoid", 0.5), ("softmax", 0.3)):
        res = out[protocol]
        for key in ("total", "head", "medium", "tail", "CP", "CR", "CF1", "OP", "OR", "OF1"):
            assert isinstance(res[key], float)
        assert res["threshold"] == thr
        assert len(out["per_class_ap"][protocol]) == 5
    ref_sig = _sklearn_ap(logits, targets)  # sigmoid AP == AP of the raw logits, saturation or not
    np.testing.assert_allclose(out["per_class_ap"]["sigmoid"], ref_sig, rtol=1e-12)
    sm = scores_from_logits(logits, "softmax")
    ref_sm = _sklearn_ap(sm, targets)
    np.testing.assert_allclose(out["per_class_ap"]["softmax"], ref_sm, rtol=1e-12)
    assert out["softmax"]["total"] == pytest.approx(ref_sm.mean())
    assert out["softmax"]["head"] == pytest.approx(ref_sm[:2].mean())
    assert out["softmax"]["tail"] == pytest.approx(ref_sm[3:].mean())
    assert out["softmax"]["CF1"] == pytest.approx(f1_scores(sm, targets, 0.3)["CF1"])
    assert out["sigmoid"]["OF1"] == pytest.approx(
        f1_scores(scores_from_logits(logits, "sigmoid"), targets, 0.5)["OF1"])


def test_weighted_ap_equals_sklearn_on_the_resampled_rows():
    from lmpt.metrics import weighted_average_precision

    rng = np.random.default_rng(7)
    scores = np.round(rng.random((30, 4)), 1)  # ties
    targets = (rng.random((30, 4)) < 0.4).astype(int)
    targets[:, 3] = 0
    targets[2, 3] = 1  # one positive: some resamples miss it
    draws = rng.integers(0, 30, size=(25, 30))
    weights = np.stack([np.bincount(d, minlength=30) for d in draws])
    got = weighted_average_precision(scores, targets, weights)
    for b, d in enumerate(draws):
        for c in range(4):
            y = targets[d, c]
            if y.sum() == 0:
                assert np.isnan(got[b, c])
            else:
                assert got[b, c] == pytest.approx(average_precision_score(y, scores[d, c]), rel=1e-12)
    np.testing.assert_allclose(weighted_average_precision(scores, targets, np.ones((1, 30)))[0],
                               _sklearn_ap(scores, targets), rtol=1e-12)
