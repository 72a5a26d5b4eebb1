"""The end of every run, whatever its kind: :func:`finish_run`.

Score the test and validation splits, fit the calibration and thresholds and score the test decisions, save
the classifier file, the test logits, the metrics, the per-class table and the report. The trained kinds call
it after their last epoch, zero-shot after computing its text features.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from ... import distributed as dist_utils
from ...batchnorm import STATE_PREFIX, batchnorm_state
from ..config import Config
from ..methods import MethodKind
from ..prepared import Prepared
from .checkpoint import classifier_meta, save_weights
from .decide import add_decisions
from .layout import RunLayout
from .outputs import RunResult, run_metrics, save_test_logits, write_run_files
from .scoring import score_splits


def finish_run(cfg: Config, prepared: Prepared, layout: RunLayout, kind: MethodKind,
               logits_of: Callable[[str], Optional[torch.Tensor]], weights: dict[str, torch.Tensor],
               timings: dict[str, float], selection: str, selected_epoch: Optional[int],
               history: Optional[list[dict[str, Any]]] = None, view: Optional[Prepared] = None,
               test_rows: Optional[np.ndarray] = None, extra_meta: Optional[dict[str, Any]] = None,
               extra_metrics: Optional[dict[str, Any]] = None) -> RunResult:
    """Evaluate, decide and write a finished run; returns its :class:`RunResult`.

    Args:
        logits_of: ``split -> [N, C]`` logits with the final classifier (``train`` is asked for only when
            there is no validation split to calibrate on).
        weights: the classifier's tensors (the classifier file); BatchNorm statistics of the image tower that
            differ from its weights file's (``model.batchnorm`` adapt or train) are stored with them.
        view: the data the run scored, when it is not ``prepared`` itself (zero-shot's reference protocol
            drops unlabelled test images; ``test_rows`` then index the kept rows of the full test split).
        extra_meta, extra_metrics: added to the classifier file's metadata and to the metrics.
    """
    t0 = time.perf_counter()
    view = view or prepared
    dataset = view.dataset
    cache: dict[str, Optional[torch.Tensor]] = {}

    def logits(split: str) -> Optional[torch.Tensor]:
        if split not in cache:
            cache[split] = logits_of(split)
        return cache[split]

    results = score_splits(dataset, logits, ("test", "val"))
    metrics = run_metrics(cfg, view, results["test"], results.get("val"), selection=selection,
                          selected_epoch=selected_epoch)
    calibration = add_decisions(cfg, dataset, logits, logits("test"), metrics)
    metrics.update(extra_metrics or {})
    timings["eval_s"] = timings.get("eval_s", 0.0) + time.perf_counter() - t0
    metrics["timing"] = timings
    backbone = view.backbone
    if backbone.fingerprint != backbone.weights_fingerprint and not any(k.startswith(STATE_PREFIX) for k in weights):
        weights = {**weights, **batchnorm_state(backbone.model.visual)}  # re-estimated statistics (batchnorm=adapt)
    if dist_utils.is_main():
        meta = classifier_meta(cfg, view, kind, calibration, selection=selection, selected_epoch=selected_epoch,
                               **(extra_meta or {}))
        save_weights(layout.weights(kind), weights, meta)
        save_test_logits(layout, logits("test"), test_rows)
        write_run_files(layout, view, metrics, history or [], results["test"])
    dist_utils.barrier()
    return RunResult(run_dir=layout.root, metrics=metrics, history=history or [])
