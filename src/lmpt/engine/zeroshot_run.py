"""Zero-shot CLIP as a run: class text features from prompt templates, no training.

Two protocols (``run.zeroshot_protocol``):

* ``matched`` (ours, and the default): the same cached features, test images and class names as the trained
  runs of the same config, with ``run.templates`` prompts: a like-for-like baseline row.
* ``reference``: what the reference's ``zero_shot_clip/test.py`` does, for reproducing the paper's zero-shot row:
  CLIP's own preprocessing (bicubic resize of the short side, centre crop, CLIP mean/std) whatever
  ``data.preprocess`` says; one text per class, the 80 ImageNet templates joined and cut to 76 characters
  (``reference`` templates); the class names as that script reads them (the first word of each line of the
  label file: COCO's "traffic light" becomes "traffic"); and test images without any label skipped
  (48 of COCO-LT's 5,000).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .. import distributed as dist_utils
from ..data.dataset import MultiLabelDataset
from ..zeroshot import zeroshot_text_features
from .checkpoint import ZEROSHOT_FILE, classifier_meta, save_weights
from .compare import save_test_logits
from .config import Config
from .data import Prepared, split_features
from .decide import add_decisions
from .evaluate import evaluate_splits, logits_from_features
from .outputs import RunResult, run_identity, run_metrics, write_run_files

logger = logging.getLogger(__name__)


def _reference_names(dataset: MultiLabelDataset) -> list[str]:
    raw = dataset.meta.get("raw_class_names") or dataset.class_names
    return [n.split()[0] for n in raw]


def _labelled_only(dataset: MultiLabelDataset) -> tuple[MultiLabelDataset, dict[str, np.ndarray]]:
    """The data set with label-less val/test images dropped, and the rows kept per split."""
    from dataclasses import replace

    keep = {}
    splits = {}
    for name in ("val", "test"):
        split = getattr(dataset, name)
        if split is None:
            continue
        rows = np.flatnonzero(split.labels.sum(axis=1) > 0)
        keep[name] = rows
        splits[name] = split.subset(rows) if len(rows) < len(split) else split
    return replace(dataset, **splits), keep


def run_zeroshot(cfg: Config, prepared: Prepared, run_dir: Path, device: torch.device,
                 timings: dict[str, float]) -> RunResult:
    t0 = time.perf_counter()
    backbone = prepared.backbone
    dataset = prepared.dataset
    features = dict(prepared.features)
    keep: dict[str, np.ndarray] = {}
    if cfg.run.zeroshot_protocol == "reference":
        names, templates = _reference_names(dataset), "reference"
        dataset, keep = _labelled_only(dataset)
        for split, rows in keep.items():
            full = getattr(prepared.dataset, split)
            features[split] = split_features(cfg, backbone, full, device, preprocess="clip")[rows]
        skipped = len(prepared.dataset.test) - len(dataset.test)
        selection = (f"none (zero-shot, reference protocol: CLIP preprocessing, reference templates, first-word "
                     f"class names, {skipped} unlabelled test images skipped)")
    else:
        names, templates = dataset.class_names, cfg.run.templates
        selection = f"none (zero-shot, templates: {templates})"
    text = zeroshot_text_features(backbone, names, templates, device=device)
    backbone.model.to("cpu")
    scale = backbone.logit_scale
    logits = {s: logits_from_features(features[s], text.cpu(), scale) for s in ("test", "val")
              if features.get(s) is not None and getattr(dataset, s) is not None}
    results = evaluate_splits(dataset, logits.get)
    view = Prepared(dataset=dataset, backbone=backbone, features=features)
    metrics: dict[str, Any] = run_metrics(cfg, view, results["test"], results.get("val"), selection=selection,
                                          selected_epoch=None)

    def logits_of(split: str) -> Optional[torch.Tensor]:
        if split not in logits and split == "train":
            feats = features["train"] if cfg.run.zeroshot_protocol != "reference" else \
                split_features(cfg, backbone, dataset.train, device, preprocess="clip")
            logits["train"] = logits_from_features(feats, text.cpu(), scale)
        return logits.get(split)

    calibration = add_decisions(cfg, dataset, logits_of, logits["test"], metrics)
    timings["eval_s"] = time.perf_counter() - t0
    metrics["identity"] = run_identity(cfg, prepared)  # the data the run was asked to read, not its view of it
    metrics["zeroshot"] = {"protocol": cfg.run.zeroshot_protocol, "templates": templates, "class_names": names}
    metrics["timing"] = timings
    if dist_utils.is_main():
        preprocess = "clip" if cfg.run.zeroshot_protocol == "reference" else cfg.data.preprocess
        meta = classifier_meta(cfg, view, "zeroshot", calibration, selection=selection, selected_epoch=None,
                               preprocess=preprocess, zeroshot=metrics["zeroshot"])
        save_weights(run_dir / ZEROSHOT_FILE, {"text_features": text.float().cpu()}, meta)
        write_run_files(run_dir, view, metrics, [], results["test"])
        rows = keep.get("test")
        save_test_logits(run_dir, logits["test"], rows if rows is not None and len(rows) < len(prepared.dataset.test)
                         else None)
    return RunResult(run_dir=run_dir, metrics=metrics, history=[])
