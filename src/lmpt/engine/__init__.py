"""The engine: configs, runs, run folders, using a finished run, and studies over many runs.

The folders say what is inside:

* ``config`` / ``validation`` / ``methods`` / ``prepared`` (top): the settings of a run, their checks, the
  methods and method kinds, and the data, backbone and cached features a run reads;
* ``train/``: one run from a config (``run``), the training loop and step, the trainers, the loss decision;
* ``rundir/``: what a run writes (``layout``: every file name; ``finish``: the end of every run; metrics,
  decisions, checkpoints, report);
* ``use/``: a finished run as a classifier (``lmpt eval``, ``lmpt predict``, ``lmpt export``);
* ``studies/``: many runs (sweeps, paired comparisons, the demo).

This module is the small facade tests, benchmarks and notebooks import from; each name is loaded when first
used, so ``import lmpt.engine`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_FACADE = {
    "Config": "config", "load_config": "config", "config_from_dict": "config",
    "METHODS": "methods", "METHOD_KINDS": "methods",
    "Prepared": "prepared", "prepare": "prepared", "resolve_device": "prepared", "dataset_from_config": "prepared",
    "backbone_from_config": "prepared", "split_features": "prepared",
    "run": "train.run", "resolve_loss": "train.loss", "LossDecision": "train.loss",
    "RunLayout": "rundir.layout", "SweepLayout": "rundir.layout", "RunResult": "rundir.outputs",
    "ORACLE_LABEL": "rundir.outputs",
    "load_run": "use.inference", "reevaluate_run": "use.inference", "RunScorer": "use.inference",
    "export_run": "use.export",
    "run_sweep": "studies.sweep", "paired_differences": "studies.compare", "run_demo": "studies.demo",
    "build_demo_world": "studies.demo", "world_overrides": "studies.demo", "world_run_config": "studies.demo",
}

__all__ = sorted(_FACADE)


def __getattr__(name: str) -> Any:
    if name not in _FACADE:
        raise AttributeError(f"module 'lmpt.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_FACADE[name]}"), name)
