"""The ``zeroshot`` kind: zero-shot CLIP as a run, class text features from prompt templates, no training.

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
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...data.dataset import MultiLabelDataset
from ...zeroshot import zeroshot_text_features
from ..config import Config
from ..methods import METHOD_KINDS, Head
from ..prepared import Prepared, split_features
from ..rundir.finish import finish_run
from ..rundir.layout import RunLayout
from ..rundir.outputs import RunResult, run_identity
from ..rundir.scoring import logits_from_features

logger = logging.getLogger(__name__)

KIND = METHOD_KINDS["zeroshot"]


def _reference_names(dataset: MultiLabelDataset) -> list[str]:
    raw = dataset.meta.get("raw_class_names") or dataset.class_names
    return [n.split()[0] for n in raw]


def _labelled_only(dataset: MultiLabelDataset) -> tuple[MultiLabelDataset, dict[str, np.ndarray]]:
    """The data set with label-less val/test images dropped, and the rows kept per split."""
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


def run_zeroshot(cfg: Config, prepared: Prepared, layout: RunLayout, device: torch.device,
                 timings: dict[str, float]) -> RunResult:
    """Score the splits with zero-shot text features and finish the run (no training)."""
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
    view = Prepared(dataset=dataset, backbone=backbone, features=features)

    def logits_of(split: str) -> Any:
        if split == "train" and cfg.run.zeroshot_protocol == "reference":
            features["train"] = split_features(cfg, backbone, dataset.train, device, preprocess="clip")
        feats = features.get(split)
        if feats is None or getattr(dataset, split) is None:
            return None
        return logits_from_features(feats, text.cpu(), scale)

    timings["eval_s"] = time.perf_counter() - t0
    info = {"protocol": cfg.run.zeroshot_protocol, "templates": templates, "class_names": names}
    rows = keep.get("test")
    return finish_run(
        cfg, prepared, layout, KIND, logits_of, {"text_features": text.float().cpu()}, timings, selection, None,
        view=view, test_rows=rows if rows is not None and len(rows) < len(prepared.dataset.test) else None,
        extra_meta={"preprocess": "clip" if cfg.run.zeroshot_protocol == "reference" else cfg.data.preprocess,
                    "zeroshot": info},
        # the data the run was asked to read, not its view of it
        extra_metrics={"identity": run_identity(cfg, prepared), "zeroshot": info})


def zeroshot_head(meta: dict[str, Any], tensors: dict[str, torch.Tensor], backbone) -> Head:
    """The classifier of a zero-shot run's file: its text features times CLIP's logit scale."""
    text = tensors["text_features"]
    return Head(backbone.logit_scale * F.normalize(text.float(), dim=-1), torch.zeros(len(meta["class_names"])))
