"""Which calibration and which thresholds: compared on a run's validation split by cross-validation.

    python bench/calibration.py RUN_DIR [--folds 5]

For each calibration method, the mean held-out cross-entropy (true labels) in k-fold cross-validation over
the validation images and the expected calibration error of the held-out probabilities; then, for the
thresholds' F-beta (``run.threshold_beta``), the held-out decisions: labels per image over the true number,
OF1 and CF1. Validation data only: the test split is not read. Prints one JSON line per figure and a last
line ``best: METHOD``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from lmpt.calibration import (CALIBRATIONS, decision_metrics, expected_calibration_error,  # noqa: E402
                              fit_calibration)
from lmpt.engine.prepared import prepare  # noqa: E402
from lmpt.engine.use.inference import load_run  # noqa: E402


def cross_validation_folds(n: int, folds: int = 5, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` row indices of ``folds``-fold cross-validation over ``n`` rows in a seeded random order."""
    order = np.random.default_rng(seed).permutation(n)
    for k in range(folds):
        test = order[k::folds]
        yield np.setdiff1d(order, test), test


def cross_validated_loss(logits: np.ndarray, labels: np.ndarray, method: str, folds: int = 5,
                         min_positives: int = 5, seed: int = 0) -> float:
    """Mean held-out cross-entropy (true labels) of ``method`` in ``folds``-fold cross-validation over images."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels) > 0
    losses = []
    for train, test in cross_validation_folds(len(z), folds, seed):
        cal = fit_calibration(z[train], y[train], method, min_positives=min_positives)
        p = np.clip(cal.probabilities(z[test]), 1e-12, 1 - 1e-12)
        losses.append(-(y[test] * np.log(p) + (~y[test]) * np.log(1 - p)).mean())
    return float(np.mean(losses)) if losses else math.nan


def held_out_ece(logits: np.ndarray, labels: np.ndarray, method: str, folds: int, seed: int = 0) -> float:
    probs = np.zeros_like(logits, dtype=np.float64)
    for train, test in cross_validation_folds(len(logits), folds, seed):
        cal = fit_calibration(logits[train], labels[train], method)
        probs[test] = cal.probabilities(logits[test])
    return expected_calibration_error(probs, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    run = load_run(args.run_dir)
    prepared = prepare(run.cfg)
    if prepared.dataset.val is None:
        sys.exit(f"{args.run_dir}: the run has no validation split to compare calibrations on")
    logits = run.model.feature_logits(prepared.features["val"]).numpy()
    labels = prepared.dataset.val.labels > 0
    scores = {}
    for method in CALIBRATIONS:
        scores[method] = cross_validated_loss(logits, labels, method, folds=args.folds)
        print(json.dumps({"figure": "calibration_cv_cross_entropy", "method": method, "value": round(scores[method], 5),
                          "held_out_ece": round(held_out_ece(logits, labels, method, args.folds), 4),
                          "folds": args.folds, "val_images": len(logits), "run": str(args.run_dir)}), flush=True)
    best = min(scores, key=scores.get)
    for beta in (2.0, 1.0, 0.7, 0.5, 0.3):
        rows = []
        for train, test in cross_validation_folds(len(logits), args.folds):
            cal = fit_calibration(logits[train], labels[train], best, beta=beta)
            m = decision_metrics(cal.probabilities(logits[test]), labels[test], cal.thresholds)
            rows.append((m["labels_per_image"] / m["true_labels_per_image"], m["OF1"], m["CF1"]))
        r = np.mean(rows, axis=0)
        print(json.dumps({"figure": "threshold_beta_cv", "beta": beta, "calibration": best,
                          "labels_per_image_over_true": round(float(r[0]), 3), "OF1": round(float(r[1]), 4),
                          "CF1": round(float(r[2]), 4), "folds": args.folds}), flush=True)
    print(f"best: {best}")


if __name__ == "__main__":
    main()
