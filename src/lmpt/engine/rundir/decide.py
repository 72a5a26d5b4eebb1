"""Decisions of a finished run: fit its calibration and thresholds on held-out data, and score them on test.

Every run (zero-shot included) fits a :class:`~lmpt.calibration.Calibration` on the validation split's logits
(``run.calibration``, ``run.calibration_min_positives``, ``run.threshold_beta``); without a validation split it
falls back to the training split, says so in ``metrics.json`` and warns. The classifier file stores the
calibration; ``metrics.json`` and ``report.md`` give the test decisions at the calibrated thresholds next to
the fixed threshold (``sigmoid(logit) >= 0.5``, uncalibrated) and predicting every label.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import numpy as np
import torch

from ...calibration import Calibration, decision_metrics, expected_calibration_error, fit_calibration
from ...data.dataset import MultiLabelDataset
from ...metrics import scores_from_logits
from ..config import Config
from .scoring import THRESHOLDS

logger = logging.getLogger(__name__)

FIXED_THRESHOLD = THRESHOLDS["sigmoid"]  # the CF1/OF1 threshold of metrics.json's sigmoid block
FIXED_LABEL = f"fixed threshold {FIXED_THRESHOLD} on sigmoid(logit), uncalibrated"


def fit_run_calibration(cfg: Config, dataset: MultiLabelDataset,
                        logits_of: Callable[[str], Optional[torch.Tensor]]) -> Calibration:
    """The run's calibration, fitted on ``val`` (or, without one, on ``train``, with a warning)."""
    split = "val"
    logits = logits_of("val") if dataset.val is not None else None
    if logits is None:
        split, logits = "train", logits_of("train")
        logger.warning("no validation split: calibration and thresholds are fitted on the training split, which "
                       "the classifier has seen (probabilities too confident, thresholds optimistic); set "
                       "data.val_fraction > 0 or give data.val for held-out calibration")
    labels = getattr(dataset, split).labels
    return fit_calibration(logits, labels, cfg.run.calibration, min_positives=cfg.run.calibration_min_positives,
                           beta=cfg.run.threshold_beta, fitted_on=split)


def test_decisions(calibration: Calibration, logits: torch.Tensor, labels: np.ndarray) -> dict[str, Any]:
    """Test-split decisions at the calibrated thresholds, at the fixed threshold and for predict-all, with ECE."""
    probs = calibration.probabilities(logits)
    raw = scores_from_logits(logits, "sigmoid")
    own = np.asarray(calibration.own_fit, dtype=bool)
    return {
        "calibration": {"method": calibration.method, "fitted_on": calibration.fitted_on,
                        "classes_with_own_fit": int(own.sum()), "classes_with_shared_fit": int((~own).sum()),
                        "min_positives": calibration.min_positives, "beta": calibration.beta,
                        "shared_threshold": calibration.shared_threshold},
        "calibrated": decision_metrics(probs, labels, calibration.thresholds),
        "ece": expected_calibration_error(probs, labels),
        "fixed": dict(decision_metrics(raw, labels, FIXED_THRESHOLD), label=FIXED_LABEL),
        "ece_uncalibrated": expected_calibration_error(raw, labels),
        "predict_all": decision_metrics(np.ones_like(raw), labels, 0.5),
    }


def add_decisions(cfg: Config, dataset: MultiLabelDataset, logits_of: Callable[[str], Optional[torch.Tensor]],
                  test_logits: torch.Tensor, metrics: dict[str, Any]) -> Calibration:
    """Fit the calibration, put the test decisions into ``metrics["decisions"]``, return the calibration."""
    calibration = fit_run_calibration(cfg, dataset, logits_of)
    metrics["decisions"] = test_decisions(calibration, test_logits, dataset.test.labels)
    d = metrics["decisions"]
    logger.info("test decisions at calibrated thresholds (%s, fitted on %s): %.2f labels/image (true %.2f), "
                "OF1 %.3f (fixed 0.5: %.3f, predict-all: %.3f), ECE %.3f", calibration.method,
                calibration.fitted_on, d["calibrated"]["labels_per_image"], d["calibrated"]["true_labels_per_image"],
                d["calibrated"]["OF1"], d["fixed"]["OF1"], d["predict_all"]["OF1"], d["ece"])
    return calibration
