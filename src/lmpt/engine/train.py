"""The training loop: prompt tuning on cached image features.

Each step encodes the C class prompts with the frozen text transformer (cut to the longest EOT + 1),
scores a batch of cached image features, and updates the context with SGD on
``lam * L_cls + (1 - lam) * L_cse``. No image is decoded or encoded during training.

Under ``torchrun`` the class prompts are split across ranks: each rank runs the text encoder on its
share of the classes, the features are gathered, every rank computes the same loss, and the context
gradients are summed with an all-reduce (each rank's gradient flows only through its own classes,
so the sum is exactly the single-process gradient). Evaluation, logs and checkpoints happen on rank 0.
"""
from __future__ import annotations

import csv
import logging
import math
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed as dist_utils
from ..errors import ConfigError, UserError
from ..io import atomic_write_json, atomic_write_text
from ..losses import ClassSpecificEmbeddingLoss, LMPTLoss, build_classification_loss, db_preset
from ..model import PromptCLIP
from ..prompts import PromptConfig, cse_length, encode_token_embeddings
from .checkpoint import PROMPT_FILE, STATE_FILE, load_state, save_prompt, save_state
from .config import Config, OptimConfig, resolve_method
from .data import Prepared, caption_embeddings, prepare, resolve_device
from .evaluate import headline, logits_from_features, per_class_rows, split_metrics

logger = logging.getLogger(__name__)

ORACLE_LABEL = "test-selected (oracle)"


class TrainingError(UserError):
    """Training cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def autocast_context(device: torch.device, precision: str):
    """bf16 (or fp16) autocast on a GPU; nothing on the CPU unless asked for.

    The weight-cast cache is off: the frozen weights are never cached anyway, and CUDA-graph capture
    needs it off.
    """
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def default_run_name(cfg: Config) -> str:
    backbone = cfg.model.backbone.replace("/", "-")
    data = cfg.data.dataset if cfg.data.dataset != "world" else f"world{cfg.data.world_classes}"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{data}-{backbone}-{cfg.run.method}-seed{cfg.run.seed}-{stamp}"


def make_run_dir(cfg: Config, run_dir: Optional[Union[str, Path]] = None, resume: bool = False) -> Path:
    path = Path(run_dir) if run_dir else Path(cfg.run.output_dir) / (cfg.run.name or default_run_name(cfg))
    if not resume and dist_utils.is_main() and (path / STATE_FILE).exists():
        raise ConfigError(f"run folder {path} already holds a run; continue it with `lmpt train --resume {path}` "
                          "or choose another run.name / run.output_dir")
    if dist_utils.is_main():
        path.mkdir(parents=True, exist_ok=True)
    return path


def build_loss(cfg: Config, prepared: Prepared) -> LMPTLoss:
    """The classification loss (and CSE loss, if on) with the counts of the images trained on."""
    ds = prepared.dataset
    counts = ds.train.class_counts
    if (counts == 0).any():
        missing = [ds.class_names[i] for i in np.flatnonzero(counts == 0)[:5]]
        raise UserError(f"classes without any training image: {', '.join(missing)}; every class needs one")
    kwargs: dict[str, Any] = {}
    name = cfg.loss.classification
    if name == "db":
        preset = cfg.loss.db_preset or (ds.name if ds.name in ("voc-lt", "coco-lt") else None)
        if preset:
            kwargs.update(db_preset(preset))
        kwargs.update(cfg.loss.db)
        kwargs["focal"] = cfg.loss.db_focal
    elif name == "asl":
        kwargs.update(cfg.loss.asl)
    elif name == "focal":
        kwargs["gamma"] = cfg.loss.focal_gamma
    cls = build_classification_loss(name, counts, len(ds.train), **kwargs)
    cse = None
    if cfg.loss.cse:
        cse = ClassSpecificEmbeddingLoss(counts, margin=cfg.loss.cse_margin, gamma=cfg.loss.cse_gamma,
                                         shift=cfg.loss.cse_shift, form=cfg.loss.cse_form,
                                         distance=cfg.loss.cse_distance)
    return LMPTLoss(cls, cse, lam=cfg.loss.lam if cse is not None else 1.0)


def build_model(cfg: Config, prepared: Prepared, device: torch.device) -> PromptCLIP:
    torch.manual_seed(cfg.run.seed)
    m = cfg.model
    pcfg = PromptConfig(n_ctx=m.n_ctx, class_specific=m.class_specific, ctx_init=m.ctx_init, init_std=m.init_std)
    return PromptCLIP(prepared.backbone, prepared.class_names, pcfg).to(device)


class ClassShard:
    """Which classes' prompts this rank encodes (all of them in a single process)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.world = dist_utils.world_size()
        self.rank = dist_utils.rank()
        bounds = np.linspace(0, num_classes, self.world + 1).round().astype(int)
        self.sizes = [int(bounds[r + 1] - bounds[r]) for r in range(self.world)]
        self.start, self.stop = int(bounds[self.rank]), int(bounds[self.rank + 1])
        self.num_classes = num_classes
        own = torch.zeros(num_classes, dtype=torch.bool)
        own[self.start:self.stop] = True
        self.own = own.to(device)

    @property
    def active(self) -> bool:
        return self.world > 1

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """All ranks' rows ``[C, D]``; only this rank's rows carry gradients."""
        if not self.active:
            return rows
        import torch.distributed as dist

        biggest = max(self.sizes)
        padded = rows.detach().new_zeros(biggest, rows.shape[1])
        padded[: rows.shape[0]] = rows.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        full = torch.cat([p[:s] for p, s in zip(parts, self.sizes)])
        index = torch.arange(self.start, self.stop, device=rows.device)
        return full.index_put((index,), rows)

    def own_rows_only(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with gradients flowing only through this rank's class rows."""
        if not self.active:
            return x
        return torch.where(self.own.view(-1, *([1] * (x.dim() - 1))), x, x.detach())

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


class PromptTrainer:
    """Holds the tensors and modules of one run and performs steps and evaluations."""

    def __init__(self, cfg: Config, prepared: Prepared, device: torch.device) -> None:
        self.cfg = cfg
        self.prepared = prepared
        self.device = device
        self.model = build_model(cfg, prepared, device)
        self.loss_fn = build_loss(cfg, prepared).to(device)
        self.params = self.model.trainable_parameters()
        ds = prepared.dataset
        self.shard = ClassShard(ds.num_classes, device)
        self.train_feats = F.normalize(prepared.features["train"].float(), dim=-1).to(device)
        self.train_labels = torch.as_tensor(ds.train.labels, dtype=torch.float32, device=device)
        self.scale = float(self.model.logit_scale)
        pl = self.model.prompt_learner
        self.prompt_len = pl.seq_len
        self.eot = pl.eot[self.shard.start:self.shard.stop]
        self.captions = None
        self.cse_len = self.prompt_len
        if self.loss_fn.cse_loss is not None:
            caps = caption_embeddings(cfg, prepared)
            if caps is None:
                logger.warning("the training split has no captions: the CSE loss is off for this run "
                               "(set data.captions=class-names to build captions from the labels)")
                self.loss_fn = LMPTLoss(self.loss_fn.cls_loss, None, lam=1.0)
            else:
                self.cse_len = cse_length(caps.length, self.prompt_len, cfg.loss.cse_shift, pl.context_length)
                caps = caption_embeddings(cfg, prepared, length=self.cse_len)
                self.captions = (caps.embeddings.to(device), caps.mask.to(device))
        self.autocast = lambda: autocast_context(device, cfg.run.precision)

    @property
    def uses_cse(self) -> bool:
        return self.loss_fn.cse_loss is not None

    def text_features(self, prompts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised class features ``[C, D]`` (gathered across ranks)."""
        if prompts is None:
            prompts = self.model.prompt_learner(self.prompt_len)
        own = prompts[self.shard.start:self.shard.stop, : self.prompt_len]
        with self.autocast():
            feats = encode_token_embeddings(self.model.clip, own, self.eot)
        return self.shard.gather(F.normalize(feats.float(), dim=-1))

    def loss(self, idx: torch.Tensor, flip: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for the batch of training rows ``idx`` with flip variants ``flip``."""
        prompts = self.model.prompt_learner(max(self.prompt_len, self.cse_len))
        text = self.text_features(prompts)
        x = self.train_feats[idx, flip]
        logits = self.scale * x @ text.t()
        y = self.train_labels[idx]
        if self.captions is None:
            return self.loss_fn(logits, y)
        cap, mask = self.captions
        cse_prompts = self.shard.own_rows_only(prompts[:, : self.cse_len])
        return self.loss_fn(logits, y, caption_emb=cap[idx], prompt_emb=cse_prompts, caption_mask=mask[idx])

    def step(self, idx: torch.Tensor, flip: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """One SGD step; returns ``[loss, cls, cse]`` as a tensor (no host sync)."""
        optimizer.zero_grad(set_to_none=True)
        out = self.loss(idx, flip)
        out["loss"].backward()
        self.shard.all_reduce_grads(self.params)
        optimizer.step()
        return self.stats_row(out)

    def stats_row(self, out: dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        """``[loss, cls, cse]`` of one step as a detached tensor (cse 0 without a CSE loss)."""
        cse = out["cse"] if out["cse"] is not None else torch.zeros((), device=self.device)
        return torch.stack([out["loss"].detach(), out["cls"].detach(), cse.detach()])

    def make_step(self, optimizer: torch.optim.Optimizer, batch_sizes: set[int]):
        """The step function: a replayed CUDA graph where possible, else eager :meth:`step`."""
        mode = self.cfg.run.cuda_graphs
        if self.device.type != "cuda" or mode == "off" or self.shard.active:
            if mode == "on" and self.device.type != "cuda":
                logger.warning("run.cuda_graphs=on needs a CUDA device; running eagerly")
            return lambda idx, flip: self.step(idx, flip, optimizer)
        try:
            graphed = GraphedStep(self, optimizer, batch_sizes)
        except Exception as exc:  # capture is an optimisation: fall back cleanly
            if mode == "on":
                raise
            logger.warning("CUDA graph capture failed (%s: %s); running the training step eagerly",
                           type(exc).__name__, exc)
            optimizer.zero_grad(set_to_none=True)
            return lambda idx, flip: self.step(idx, flip, optimizer)
        return graphed

    @torch.no_grad()
    def evaluate(self, split: str, quiet: bool = False) -> Optional[dict[str, Any]]:
        """Metrics of a split with the current prompts; ``quiet`` hides the classes-without-positives warning."""
        feats = self.prepared.features.get(split)
        data_split = getattr(self.prepared.dataset, split)
        if feats is None or data_split is None:
            return None
        text = self.text_features()
        logits = logits_from_features(feats, text, self.scale)
        with warnings.catch_warnings():
            if quiet:
                warnings.filterwarnings("ignore", message="mean_ap: skipped")
            return split_metrics(logits, data_split.labels, self.prepared.dataset.class_freq)


class GraphedStep:
    """Forward and backward of the training step captured as CUDA graphs, one per batch size.

    A prompt-tuning step is hundreds of tiny kernels (C short sequences through the text transformer),
    so launch overhead dominates on a GPU; replaying a graph removes it. The batch rows and flips are
    copied into static tensors, the graph writes the gradients into the parameters' ``.grad`` (zeroed
    inside the graph), and the optimiser step runs eagerly so the learning rate can change.
    """

    def __init__(self, trainer: "PromptTrainer", optimizer: torch.optim.Optimizer, batch_sizes: set[int]) -> None:
        self.trainer = trainer
        self.optimizer = optimizer
        self.graphs: dict[int, tuple] = {}
        device = trainer.device
        for p in trainer.params:
            p.grad = torch.zeros_like(p)
        pool = None
        for bs in sorted(batch_sizes, reverse=True):
            idx = torch.zeros(bs, dtype=torch.long, device=device)
            flip = torch.zeros(bs, dtype=torch.long, device=device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up outside the graph (allocator, autocast, cuBLAS handles)
                    self._forward_backward(idx, flip)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                stats = self._forward_backward(idx, flip)
            pool = graph.pool()
            self.graphs[bs] = (graph, idx, flip, stats)
        for p in trainer.params:
            p.grad.zero_()

    def _forward_backward(self, idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        for p in self.trainer.params:
            p.grad.zero_()
        out = self.trainer.loss(idx, flip)
        out["loss"].backward()
        return self.trainer.stats_row(out)

    def __call__(self, idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        graph, s_idx, s_flip, stats = self.graphs[idx.shape[0]]
        s_idx.copy_(idx)
        s_flip.copy_(flip)
        graph.replay()
        self.optimizer.step()
        return stats.clone()


def build_optimizer(o: OptimConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """SGD with momentum (the reference), or Adam/AdamW with ``momentum`` as beta1."""
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=(o.momentum, 0.999), weight_decay=o.weight_decay)


def _make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, has_val: bool):
    o = cfg.optim
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.epochs, eta_min=o.min_lr)
    if o.schedule == "plateau":
        # on validation mAP when there is a validation split, else on the training loss (never on test)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max" if has_val else "min",
                                                          patience=o.patience, factor=o.factor, min_lr=o.min_lr)
    return None


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    keys = list(history[0].keys())
    for row in history[1:]:
        keys += [k for k in row if k not in keys]
    lines = [",".join(keys)] + [",".join(_fmt(row.get(k)) for k in keys) for row in history]
    atomic_write_text(run_dir / "history.csv", "\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class _TensorBoard:
    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder))
            except Exception as exc:  # tensorboard is optional
                logger.info("TensorBoard logging off (%s)", exc)

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k.replace("_", "/", 1), v, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _selection_label(select: str) -> str:
    return {"last": "last epoch", "val": "best on validation", "test": ORACLE_LABEL}[select]


def train(cfg: Config, prepared: Optional[Prepared] = None, run_dir: Optional[Union[str, Path]] = None,
          resume: bool = False) -> RunResult:
    """Train (or, for ``run.method=zeroshot``, just evaluate) and write the run folder."""
    cfg = resolve_method(cfg)
    device = resolve_device(cfg.run.device)
    dist_utils.init_from_env(str(device))
    if dist_utils.is_initialized() and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    seed_everything(cfg.run.seed)
    run_dir = make_run_dir(cfg, run_dir, resume)
    if dist_utils.is_main():
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    log_handler = _attach_log_file(run_dir)
    try:
        t0 = time.perf_counter()
        if prepared is None:
            prepared = prepare(cfg, device)
        timings = {"prepare_s": time.perf_counter() - t0}
        if cfg.run.method == "zeroshot":
            from .zeroshot_run import run_zeroshot

            return run_zeroshot(cfg, prepared, run_dir, device, timings)
        return _train(cfg, prepared, run_dir, device, resume, timings)
    finally:
        if log_handler is not None:
            logging.getLogger("lmpt").removeHandler(log_handler)
            log_handler.close()


def _attach_log_file(run_dir: Path) -> Optional[logging.Handler]:
    if not dist_utils.is_main():
        return None
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("lmpt")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def _train(cfg: Config, prepared: Prepared, run_dir: Path, device: torch.device, resume: bool,
           timings: dict[str, float]) -> RunResult:
    from tqdm.auto import tqdm

    o = cfg.optim
    main = dist_utils.is_main()
    trainer = PromptTrainer(cfg, prepared, device)
    optimizer = build_optimizer(o, trainer.params)
    has_val = prepared.features.get("val") is not None
    if cfg.run.select == "val" and not has_val:
        raise ConfigError("run.select=val but this data set has no validation split (data.val_fraction=0?)")
    scheduler = _make_scheduler(cfg, optimizer, has_val)
    generator = torch.Generator().manual_seed(cfg.run.seed)
    n = len(prepared.dataset.train)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "score": -math.inf, "ctx": None}
    start_epoch = 0
    state_path = run_dir / STATE_FILE
    if resume:
        state = load_state(state_path)
        if state is not None:
            trainer.model.load_prompt_state({"ctx": state["ctx"]})
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler") is not None:
                scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            history = list(state["history"])
            best = dict(state["best"])
            start_epoch = int(state["epoch"])
            logger.info("resuming %s after epoch %d", run_dir, start_epoch)
            if main:
                print(f"resuming {run_dir} after epoch {start_epoch} of {o.epochs}")
        else:
            logger.info("no training state in %s: starting from scratch", run_dir)

    tb = _TensorBoard(run_dir / "tensorboard", enabled=main)
    steps_per_epoch = (n + o.batch_size - 1) // o.batch_size
    headline_protocol = cfg.run.protocol
    bar = tqdm(total=o.epochs, initial=start_epoch, desc=f"{cfg.run.method} seed {cfg.run.seed}", unit="epoch",
               disable=not (main and cfg.run.progress), leave=False)
    t_train = time.perf_counter()
    trainer.model.train()
    sizes_needed = {min(o.batch_size, n)} | ({n % o.batch_size} if n % o.batch_size else set())
    step_fn = trainer.make_step(optimizer, sizes_needed)
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
            raise TrainingError(
                f"non-finite loss at epoch {epoch + 1}, step {step} (batch {int(bad[0]) + 1} of the epoch); "
                f"training stopped. The last good checkpoint is {state_path} (after epoch {start_epoch if not history else history[-1]['epoch']}). "
                "Lower optim.lr or check the data; `lmpt train --resume` continues from that checkpoint.")
        sizes = torch.tensor([min(o.batch_size, n - i * o.batch_size) for i in range(steps_per_epoch)],
                             dtype=torch.float64)
        mean = (stats_cpu.double() * sizes[:, None]).sum(0) / n
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                               "train_loss": float(mean[0]), "train_cls": float(mean[1]),
                               "train_cse": float(mean[2]) if trainer.uses_cse else None}
        val = trainer.evaluate("val", quiet=epoch > start_epoch) if has_val else None
        if val is not None:
            row.update({f"val_{k}": v for k, v in headline(val, headline_protocol).items()})
        if cfg.run.select == "test":
            test_now = trainer.evaluate("test", quiet=epoch > start_epoch)
            row.update({f"oracle_test_{k}": v for k, v in headline(test_now, headline_protocol).items()})
        row["epoch_s"] = time.perf_counter() - t_epoch
        history.append(row)
        score = {"val": row.get("val_total"), "test": row.get("oracle_test_total")}.get(cfg.run.select)
        if score is not None:
            score = float(dist_utils.broadcast_object(score))
            if score > best["score"]:
                best = {"epoch": epoch + 1, "score": score, "ctx": trainer.model.prompt_state()["ctx"]}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            metric = row["val_total"] if has_val else row["train_loss"]
            scheduler.step(float(dist_utils.broadcast_object(metric)))
        elif scheduler is not None:
            scheduler.step()
        bar.update(1)
        bar.set_postfix({k: f"{row[k]:.4f}" for k in ("train_loss", "val_total") if row.get(k) is not None})
        if main:
            tb.log(row)
            _write_history(run_dir, history)
            last = epoch + 1 == o.epochs
            if last or (epoch + 1) % max(1, cfg.run.checkpoint_every) == 0:
                save_state(state_path, {
                    "epoch": epoch + 1, "ctx": trainer.model.prompt_state()["ctx"],
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "generator": generator.get_state(), "history": history, "best": best})
        dist_utils.barrier()
    bar.close()
    tb.close()
    timings["train_s"] = time.perf_counter() - t_train

    if cfg.run.select in ("val", "test") and best["ctx"] is not None:
        trainer.model.load_prompt_state({"ctx": best["ctx"]})
        selected_epoch = best["epoch"]
    else:
        selected_epoch = o.epochs
    t_eval = time.perf_counter()
    metrics = _final_metrics(cfg, trainer, prepared, selected_epoch)
    timings["eval_s"] = time.perf_counter() - t_eval
    metrics["timing"] = timings
    if main:
        _write_outputs(cfg, prepared, run_dir, trainer.model, metrics, history)
    dist_utils.barrier()
    return RunResult(run_dir=run_dir, metrics=metrics, history=history)


def _final_metrics(cfg: Config, trainer: PromptTrainer, prepared: Prepared, selected_epoch: int) -> dict[str, Any]:
    test = trainer.evaluate("test")
    val = trainer.evaluate("val")
    return run_metrics(cfg, prepared, test, val, selection=_selection_label(cfg.run.select),
                       selected_epoch=selected_epoch)


def run_metrics(cfg: Config, prepared: Prepared, test: dict[str, Any], val: Optional[dict[str, Any]],
                selection: str, selected_epoch: Optional[int]) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    ds = prepared.dataset
    groups = ds.groups()
    oracle = cfg.run.select == "test"
    return {
        "method": cfg.run.method,
        "seed": cfg.run.seed,
        "selection": selection,
        "selected_epoch": selected_epoch,
        "oracle": oracle,
        "protocol": cfg.run.protocol,
        "headline": headline(test, cfg.run.protocol),
        "test": {k: v for k, v in test.items() if k != "per_class_ap"},
        "val": None if val is None else {k: v for k, v in val.items() if k != "per_class_ap"},
        "per_class_ap": test["per_class_ap"],
        "dataset": {"name": ds.name, "classes": ds.num_classes, "train_images": len(ds.train),
                    "val_images": len(ds.val) if ds.val is not None else 0, "test_images": len(ds.test),
                    "groups": {g: [ds.class_names[i] for i in idx] for g, idx in groups.items()}},
        "backbone": prepared.backbone.describe(),
    }


def _write_outputs(cfg: Config, prepared: Prepared, run_dir: Path, model: PromptCLIP, metrics: dict[str, Any],
                   history: list[dict[str, Any]]) -> None:
    from .report import write_run_report

    ds = prepared.dataset
    meta = {"backbone": prepared.backbone.describe(), "class_names": ds.class_names, "config": cfg.to_dict(),
            "method": cfg.run.method, "selected_epoch": metrics["selected_epoch"], "selection": metrics["selection"],
            "logit_scale": float(model.logit_scale), "preprocess": cfg.data.preprocess}
    save_prompt(run_dir / PROMPT_FILE, model.prompt_state()["ctx"], meta)
    atomic_write_json(run_dir / "metrics.json", metrics)
    rows = per_class_rows(ds, {"per_class_ap": metrics["per_class_ap"]})
    _write_csv(run_dir / "per_class.csv", rows)
    write_run_report(run_dir, metrics, history)
    head = metrics["headline"]
    label = f" [{ORACLE_LABEL}]" if metrics["oracle"] else ""
    logger.info("test mAP (%s)%s: total %.4f head %.4f medium %.4f tail %.4f", metrics["protocol"], label,
                head["total"], head["head"], head["medium"], head["tail"])


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
