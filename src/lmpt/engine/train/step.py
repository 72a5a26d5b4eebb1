"""The training step: mixed precision (with loss scaling for fp16), class sharding across ranks, CUDA graphs.

Under ``torchrun`` the class prompts are split across ranks: each rank runs the text encoder on its share of
the classes, the features are gathered, every rank computes the same loss, and the context gradients are
summed with an all-reduce (each rank's gradient flows only through its own classes, so the sum is exactly the
single-process gradient).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch

from ... import distributed as dist_utils
from ...precision import resolve_precision
from .trainer import Trainer

logger = logging.getLogger(__name__)


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


def stats_row(out: dict[str, Optional[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """``[loss, cls, cse]`` of one step as a detached tensor (cse 0 without a CSE loss)."""
    cse = out["cse"] if out["cse"] is not None else torch.zeros((), device=device)
    return torch.stack([out["loss"].detach(), out["cls"].detach(), cse.detach()])


def grad_scaler(device: torch.device, precision: str) -> Optional[torch.amp.GradScaler]:
    """A loss scaler for fp16 autocast (DB gradients of 1e-4..1e-6 per logit underflow in fp16 without one)."""
    if resolve_precision(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


class EagerStep:
    """One optimiser step: forward, backward (scaled under fp16), gradient sync, update."""

    def __init__(self, task: Trainer, optimizer: torch.optim.Optimizer,
                 scaler: Optional[torch.amp.GradScaler] = None) -> None:
        self.task, self.optimizer, self.scaler = task, optimizer, scaler

    def __call__(self, idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.task.loss(idx, flip)
        if self.scaler is None:
            out["loss"].backward()
            self.task.all_reduce_grads()
            self.optimizer.step()
        else:
            self.scaler.scale(out["loss"]).backward()
            self.task.all_reduce_grads()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return stats_row(out, self.task.device)


class GraphedStep:
    """Forward and backward of the training step captured as CUDA graphs, one per batch size.

    A prompt-tuning step is hundreds of tiny kernels (C short sequences through the text transformer),
    so launch overhead dominates on a GPU; replaying a graph removes it. The batch rows and flips are
    copied into static tensors, the graph writes the gradients into the parameters' ``.grad`` (zeroed
    inside the graph), and the optimiser step runs eagerly so the learning rate can change.
    """

    def __init__(self, task: Trainer, optimizer: torch.optim.Optimizer, batch_sizes: set[int]) -> None:
        self.task = task
        self.optimizer = optimizer
        self.graphs: dict[int, tuple] = {}
        device = task.device
        for p in task.params:
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
        for p in task.params:
            p.grad.zero_()

    def _forward_backward(self, idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        for p in self.task.params:
            p.grad.zero_()
        out = self.task.loss(idx, flip)
        out["loss"].backward()
        return stats_row(out, self.task.device)

    def __call__(self, idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        graph, s_idx, s_flip, stats = self.graphs[idx.shape[0]]
        s_idx.copy_(idx)
        s_flip.copy_(flip)
        graph.replay()
        self.optimizer.step()
        return stats.clone()


def make_step(task: Trainer, optimizer: torch.optim.Optimizer, batch_sizes: set[int], mode: str = "auto",
              scaler: Optional[torch.amp.GradScaler] = None, distributed: bool = False
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The step function: a replayed CUDA graph where possible (``mode`` auto/on), else :class:`EagerStep`."""
    device = task.device
    if device.type != "cuda" or mode == "off" or distributed or scaler is not None:
        if mode == "on" and device.type != "cuda":
            logger.warning("run.cuda_graphs=on needs a CUDA device; running eagerly")
        if mode == "on" and scaler is not None:
            logger.warning("run.cuda_graphs=on is not used with fp16 loss scaling; running eagerly")
        return EagerStep(task, optimizer, scaler)
    try:
        return GraphedStep(task, optimizer, batch_sizes)
    except Exception as exc:  # capture is an optimisation: fall back cleanly
        if mode == "on":
            raise
        logger.warning("CUDA graph capture failed (%s: %s); running the training step eagerly",
                       type(exc).__name__, exc)
        optimizer.zero_grad(set_to_none=True)
        return EagerStep(task, optimizer, scaler)
