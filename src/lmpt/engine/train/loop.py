"""The training loop shared by the trained methods (prompt tuning and the linear probe).

Epochs of shuffled batches of cached features (a random flip variant per image), a resumable training state
after every epoch, validation mAP (and, only when asked for, the test-set oracle) per epoch, checkpoint
selection, and the final evaluation. Evaluation, logs and checkpoints happen on rank 0.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from ... import distributed as dist_utils
from ...errors import ConfigError, UserError
from ...progress import progress
from ..config import Config
from ..prepared import Prepared
from ..rundir.checkpoint import load_state, save_state
from ..rundir.finish import finish_run
from ..rundir.layout import RunLayout
from ..rundir.outputs import ORACLE_LABEL, SELECTION_LABELS, RunResult, TensorBoardLog, write_history
from ..rundir.scoring import headline, score_splits
from .builders import build_scheduler, optimizer_for, plateau_metric
from .step import grad_scaler, make_step
from .trainer import Trainer

logger = logging.getLogger(__name__)


# the history column the plateau schedule follows, by plateau_metric's answer
_PLATEAU_KEYS = {"val": "val_total", "train": "train_loss", "test": "oracle_test_total"}
_PLATEAU_TEXT = {"val": "validation mAP", "train": "training loss", "test": f"test mAP ({ORACLE_LABEL})"}


class TrainingError(UserError):
    """Training cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""


def _restore(trainer: Trainer, prepared: Prepared, state: dict[str, Any], optimizer, scheduler, scaler, generator,
             run_dir: Path) -> None:
    fingerprint = prepared.backbone.fingerprint
    if state.get("backbone") not in (None, fingerprint):
        raise ConfigError(f"cannot resume {run_dir}: it was trained with backbone weights {state['backbone']}, "
                          f"but this run loads {fingerprint}; pass the model.pretrained it was started with")
    trainer.load_state(state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    generator.set_state(state["generator"])


def _save_or_explain(state_path: Path, history: list[dict[str, Any]], start_epoch: int, state: dict[str, Any]) -> None:
    """Save the training state; a failed write (full disk) keeps the previous checkpoint and says which it is."""
    try:
        save_state(state_path, state)
    except UserError as exc:
        epoch = history[-1]["epoch"] if history else start_epoch
        if state_path.is_file():
            then = (f"the last good checkpoint {state_path} is kept; `lmpt train --resume {state_path.parent}` "
                    "continues once there is space")
        else:
            then = "there is no earlier checkpoint: run it again once there is space"
        raise TrainingError(f"{exc}; training stopped after epoch {epoch} ({then})") from None


def fit(cfg: Config, trainer: Trainer, prepared: Prepared, layout: RunLayout, resume: bool,
        timings: dict[str, float]) -> RunResult:
    """Train ``trainer`` for ``optim.epochs`` and finish the run (:func:`~lmpt.engine.rundir.finish.finish_run`)."""
    o = cfg.optim
    main = dist_utils.is_main()
    device = trainer.device
    run_dir = layout.root
    optimizer = optimizer_for(cfg, trainer.kind, trainer.params)
    has_val = prepared.features.get("val") is not None
    if cfg.run.select == "val" and not has_val:
        raise ConfigError("run.select=val but this data set has no validation split (data.val_fraction=0?)")
    scheduler = build_scheduler(o, optimizer, has_val)
    plateau_on = plateau_metric(o, has_val)
    scaler = grad_scaler(device, cfg.run.precision)
    generator = torch.Generator().manual_seed(cfg.run.seed)
    n = len(prepared.dataset.train)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "score": -math.inf, "weights": None}
    start_epoch = 0
    state_path = layout.state
    if resume:
        state = load_state(state_path)
        if state is not None:
            _restore(trainer, prepared, state, optimizer, scheduler, scaler, generator, run_dir)
            history, best, start_epoch = list(state["history"]), dict(state["best"]), int(state["epoch"])
            logger.info("resuming %s after epoch %d", run_dir, start_epoch)
            if main:
                print(f"resuming {run_dir} after epoch {start_epoch} of {o.epochs}")
        else:
            logger.info("no training state in %s: starting from scratch", run_dir)

    tb = TensorBoardLog(layout / RunLayout.TENSORBOARD, enabled=main)
    steps_per_epoch = (n + o.batch_size - 1) // o.batch_size
    protocol = cfg.run.protocol
    bar = progress(o.epochs, f"{cfg.run.method} seed {cfg.run.seed}", "epochs", enabled=main and cfg.run.progress,
                   every=1, initial=start_epoch)
    t_train = time.perf_counter()
    trainer.train()
    sizes_needed = {min(o.batch_size, n)} | ({n % o.batch_size} if n % o.batch_size else set())
    graphs = cfg.run.cuda_graphs if trainer.capturable else "off"  # a step that runs the image tower is not captured
    step_fn = make_step(trainer, optimizer, sizes_needed, graphs, scaler, distributed=trainer.distributed)
    for epoch in range(start_epoch, o.epochs):
        t_epoch = time.perf_counter()
        perm = torch.randperm(n, generator=generator)
        flips = torch.randint(0, 2, (n,), generator=generator)
        perm, flips = perm.to(device), flips.to(device)
        stats = torch.zeros(steps_per_epoch, 3, device=device)
        for i in range(steps_per_epoch):
            sl = slice(i * o.batch_size, (i + 1) * o.batch_size)
            stats[i] = step_fn(perm[sl], flips[sl])
        stats_cpu = stats.cpu()
        bad = (~torch.isfinite(stats_cpu)).any(dim=1).nonzero()
        if len(bad):
            step = epoch * steps_per_epoch + int(bad[0]) + 1
            last_good = start_epoch if not history else history[-1]["epoch"]
            raise TrainingError(
                f"non-finite loss at epoch {epoch + 1}, step {step} (batch {int(bad[0]) + 1} of the epoch); "
                f"training stopped. The last good checkpoint is {state_path} (after epoch {last_good}). "
                "Lower optim.lr or check the data; `lmpt train --resume` continues from that checkpoint.")
        sizes = torch.tensor([min(o.batch_size, n - i * o.batch_size) for i in range(steps_per_epoch)],
                             dtype=torch.float64)
        mean = (stats_cpu.double() * sizes[:, None]).sum(0) / n
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                               "train_loss": float(mean[0]), "train_cls": float(mean[1]),
                               "train_cse": float(mean[2]) if trainer.uses_cse else None}
        quiet = epoch > start_epoch
        if has_val:
            val = score_splits(prepared.dataset, trainer.logits, ("val",), quiet=quiet)["val"]
            row.update({f"val_{k}": v for k, v in headline(val, protocol).items()})
        if cfg.run.select == "test":
            test_now = score_splits(prepared.dataset, trainer.logits, ("test",), quiet=quiet)["test"]
            row.update({f"oracle_test_{k}": v for k, v in headline(test_now, protocol).items()})
        row["epoch_s"] = time.perf_counter() - t_epoch
        history.append(row)
        score = {"val": row.get("val_total"), "test": row.get("oracle_test_total")}.get(cfg.run.select)
        if score is not None:
            score = float(dist_utils.broadcast_object(score))
            if score > best["score"]:
                best = {"epoch": epoch + 1, "score": score, "weights": trainer.state()}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            metric = row[_PLATEAU_KEYS[plateau_on]]
            scheduler.step(float(dist_utils.broadcast_object(metric)))
        elif scheduler is not None:
            scheduler.step()
        bar.set_postfix({k: f"{row[k]:.4f}" for k in ("train_loss", "val_total") if row.get(k) is not None})
        bar.update(1)
        if main:
            tb.log(row)
            write_history(layout, history)
            last = epoch + 1 == o.epochs
            if last or (epoch + 1) % max(1, cfg.run.checkpoint_every) == 0:
                _save_or_explain(state_path, history, start_epoch, {
                    "epoch": epoch + 1, "weights": trainer.state(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "generator": generator.get_state(), "history": history, "best": best,
                    "backbone": prepared.backbone.fingerprint})
        dist_utils.barrier()
    bar.close()
    tb.close()
    timings["train_s"] = time.perf_counter() - t_train

    if cfg.run.select in ("val", "test") and best["weights"] is not None:
        trainer.load_state(best["weights"])
        selected_epoch = best["epoch"]
    else:
        selected_epoch = o.epochs
    return finish_run(cfg, prepared, layout, trainer.kind, trainer.logits, trainer.state(), timings,
                      SELECTION_LABELS[cfg.run.select], selected_epoch, history=history,
                      extra_metrics={"loss": trainer.loss_decision.to_dict(), "schedule": {
                          "name": o.schedule, "plateau_on": _PLATEAU_TEXT[plateau_on] if o.schedule == "plateau" else None}})


__all__ = ["fit", "TrainingError", "ORACLE_LABEL"]
