"""Scoring cached features, and the metrics of the splits of a data set (:func:`score_splits`)."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...data.dataset import MultiLabelDataset
from ...metrics import evaluate_scores
from ...model import cosine_logits

# Fixed thresholds of the CF1/OF1 figures: the reference's test.py uses 0.3 on softmax scores.
THRESHOLDS = {"sigmoid": 0.5, "softmax": 0.3}
GROUPS = ("total", "head", "medium", "tail")


@torch.no_grad()
def logits_from_features(features: torch.Tensor, text_features: torch.Tensor, logit_scale: float,
                         batch_size: int = 8192, normalize_text: bool = True,
                         normalize_images: bool = True) -> torch.Tensor:
    """``logit_scale * cos`` for cached features ``[N, V, D]`` (variant 0, unflipped) or ``[N, D]``; float32 on CPU.

    ``normalize_text=False`` takes the rows of ``text_features`` as they are (a head with the scale folded in);
    ``normalize_images=False`` takes the image features as they are (a linear probe on raw features).
    """
    if features.dim() == 3:
        features = features[:, 0]
    text = F.normalize(text_features.float(), dim=-1) if normalize_text else text_features.float()
    out = []
    for i in range(0, features.shape[0], batch_size):
        x = features[i:i + batch_size].to(text.device).float()
        out.append(cosine_logits(x, text, logit_scale, normalize_images=normalize_images).cpu())
    return torch.cat(out) if out else torch.zeros(0, text.shape[0])


def split_metrics(logits: torch.Tensor, labels: np.ndarray, class_freq: np.ndarray) -> dict[str, Any]:
    """total/head/medium/tail mAP, CF1/OF1 and per-class AP under both scoring protocols."""
    return evaluate_scores(logits, labels, class_freq, threshold_sigmoid=THRESHOLDS["sigmoid"],
                           threshold_softmax=THRESHOLDS["softmax"])


def score_splits(dataset: MultiLabelDataset, logits_of: Callable[[str], Optional[torch.Tensor]],
                    splits: Iterable[str] = ("test", "val"), quiet: bool = False) -> dict[str, dict[str, Any]]:
    """Metrics of every split in ``splits`` that exists; ``logits_of(split)`` gives its ``[N, C]`` logits.

    ``quiet`` hides the warning about classes without positives (they are counted in ``excluded`` anyway).
    """
    out = {}
    for split in splits:
        data_split = getattr(dataset, split)
        if data_split is None:
            continue
        logits = logits_of(split)
        if logits is None:
            continue
        with warnings.catch_warnings():
            if quiet:
                warnings.filterwarnings("ignore", message="mean_ap: skipped")
            out[split] = split_metrics(logits, data_split.labels, dataset.class_freq)
    return out


def headline(metrics: dict[str, Any], protocol: str) -> dict[str, float]:
    """The four long-tailed mAP numbers of one protocol."""
    return {k: metrics[protocol][k] for k in GROUPS}


def per_class_rows(dataset: MultiLabelDataset, test_metrics: dict[str, Any],
                   val_metrics: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """One row per class: name, train count, group, test AP under both protocols."""
    groups = dataset.groups()
    group_of = {int(c): g for g, idx in groups.items() for c in idx}
    train_counts = dataset.train.class_counts
    test_counts = dataset.test.class_counts
    rows = []
    for c, name in enumerate(dataset.class_names):
        row = {"class": name, "index": c, "group": group_of[c], "train_images": int(dataset.class_freq[c]),
               "train_images_used": int(train_counts[c]), "test_images": int(test_counts[c]),
               "ap_softmax": test_metrics["per_class_ap"]["softmax"][c],
               "ap_sigmoid": test_metrics["per_class_ap"]["sigmoid"][c]}
        if val_metrics is not None:
            row["val_ap_softmax"] = val_metrics["per_class_ap"]["softmax"][c]
        rows.append(row)
    return rows
