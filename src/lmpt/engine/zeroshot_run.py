"""Zero-shot CLIP as a run: template-ensemble text features, no training."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .. import distributed as dist_utils
from ..io import atomic_write_json
from ..zeroshot import zeroshot_text_features
from .config import Config
from .data import Prepared
from .evaluate import logits_from_features, per_class_rows, split_metrics


def run_zeroshot(cfg: Config, prepared: Prepared, run_dir: Path, device: torch.device,
                 timings: dict[str, float]):
    from .report import write_run_report
    from .train import RunResult, _write_csv, run_metrics

    t0 = time.perf_counter()
    backbone = prepared.backbone
    text = zeroshot_text_features(backbone, prepared.class_names, cfg.run.templates, device=device)
    backbone.model.to("cpu")
    scale = float(backbone.model.logit_scale.detach().exp())
    results: dict[str, Any] = {}
    for split in ("test", "val"):
        feats = prepared.features.get(split)
        data_split = getattr(prepared.dataset, split)
        if feats is not None and data_split is not None:
            logits = logits_from_features(feats, text.cpu(), scale)
            results[split] = split_metrics(logits, data_split.labels, prepared.dataset.class_freq)
    timings["eval_s"] = time.perf_counter() - t0
    metrics = run_metrics(cfg, prepared, results["test"], results.get("val"),
                          selection=f"none (zero-shot, templates: {cfg.run.templates})", selected_epoch=None)
    metrics["timing"] = timings
    if dist_utils.is_main():
        atomic_write_json(run_dir / "metrics.json", metrics)
        _write_csv(run_dir / "per_class.csv", per_class_rows(prepared.dataset, results["test"]))
        write_run_report(run_dir, metrics, [])
    return RunResult(run_dir=run_dir, metrics=metrics, history=[])
