"""Which calibration: the methods of ``lmpt.calibration`` compared on a run's validation split.

    python bench/calibration.py RUN_DIR [--folds 5]

For each method, the mean held-out cross-entropy (true labels) in k-fold cross-validation over the
validation images, and the expected calibration error of the held-out probabilities. Validation data only:
the test split is not read. Prints one JSON line per method and a last line ``best: METHOD``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from lmpt.calibration import CALIBRATIONS, cross_validated_loss, expected_calibration_error, fit_calibration  # noqa: E402
from lmpt.engine.data import prepare  # noqa: E402
from lmpt.engine.inference import load_run  # noqa: E402


def held_out_ece(logits: np.ndarray, labels: np.ndarray, method: str, folds: int, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(logits))
    probs = np.zeros_like(logits, dtype=np.float64)
    for k in range(folds):
        test = order[k::folds]
        cal = fit_calibration(logits[np.setdiff1d(order, test)], labels[np.setdiff1d(order, test)], method)
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
    print(f"best: {min(scores, key=scores.get)}")


if __name__ == "__main__":
    main()
