"""``run(cfg)``: one run of any method, from a config to a run folder.

The method's kind (:mod:`lmpt.engine.methods`) says what the run does: a trained kind builds its trainer and
``loop.fit`` trains it on cached features; a kind without training is its own run (zero-shot). The run folder
gets its config first, so a killed run can always be resumed (``resume=True``), and a resumed run is checked
against the settings it was started with.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ... import distributed as dist_utils
from ...io import atomic_write_text
from ..config import Config, load_config
from ..methods import kind_of
from ..prepared import Prepared, prepare, resolve_device
from ..rundir.outputs import RunResult, open_run_dir, run_log
from ..validation import check_resume
from .loop import fit


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def run(cfg: Config, prepared: Optional[Prepared] = None, run_dir: Optional[Union[str, Path]] = None,
        resume: bool = False) -> RunResult:
    """Run ``cfg`` (train, or evaluate for ``run.method=zeroshot``) and write the run folder.

    ``prepared`` shares data, backbone and features across runs (sweeps); ``resume`` continues the run in
    ``run_dir`` from its last epoch checkpoint, after checking that ``cfg`` computes the same thing.
    """
    kind = kind_of(cfg.run.method)
    device = resolve_device(cfg.run.device)
    dist_utils.init_from_env(str(device))
    if dist_utils.is_initialized() and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    seed_everything(cfg.run.seed)
    with open_run_dir(cfg, run_dir, resume) as layout:
        if resume and layout.config.is_file():
            check_resume(load_config(layout.config), cfg, str(layout.root))
        if dist_utils.is_main():
            atomic_write_text(layout.config, cfg.to_yaml())
        return _run_in(cfg, kind, layout, prepared, device, resume)


def _run_in(cfg: Config, kind, layout, prepared: Optional[Prepared], device: torch.device, resume: bool) -> RunResult:
    with run_log(layout):
        t0 = time.perf_counter()
        if prepared is None:
            prepared = prepare(cfg, device)
        timings = {"prepare_s": time.perf_counter() - t0}
        if not kind.trains:
            return kind.trainer_factory()(cfg, prepared, layout, device, timings)
        trainer = kind.trainer_factory()(cfg, prepared, device)
        return fit(cfg, trainer, prepared, layout, resume, timings)
