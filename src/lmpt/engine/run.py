"""``run(cfg)``: one run of any method, from a config to a run folder.

Zero-shot evaluates; prompt methods and the linear probe train on cached features (``loop.fit``). The run
folder gets ``config.yaml`` first, so a killed run can always be resumed (``resume=True``), and a resumed
run is checked against the settings it was started with.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .. import distributed as dist_utils
from ..io import atomic_write_text
from .config import Config, load_config
from .data import Prepared, prepare, resolve_device
from .loop import fit
from .methods import METHODS, resolve_method
from .outputs import RunResult, make_run_dir, run_log
from .probe import ProbeTrainer
from .prompt_task import PromptTrainer
from .validation import check_resume
from .zeroshot_run import run_zeroshot


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
    cfg = resolve_method(cfg)
    device = resolve_device(cfg.run.device)
    dist_utils.init_from_env(str(device))
    if dist_utils.is_initialized() and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    seed_everything(cfg.run.seed)
    run_dir = make_run_dir(cfg, run_dir, resume)
    saved = run_dir / "config.yaml"
    if resume and saved.is_file():
        check_resume(resolve_method(load_config(saved)), cfg, str(run_dir))
    if dist_utils.is_main():
        atomic_write_text(saved, cfg.to_yaml())
    with run_log(run_dir):
        t0 = time.perf_counter()
        if prepared is None:
            prepared = prepare(cfg, device)
        timings = {"prepare_s": time.perf_counter() - t0}
        kind = METHODS[cfg.run.method].kind
        if kind == "zeroshot":
            return run_zeroshot(cfg, prepared, run_dir, device, timings)
        trainer = ProbeTrainer(cfg, prepared, device) if kind == "probe" else PromptTrainer(cfg, prepared, device)
        return fit(cfg, trainer, prepared, run_dir, resume, timings)
