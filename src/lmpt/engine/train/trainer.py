"""The trainer interface the training loop relies on, written down.

A trainer holds what one trained run computes with: the learnable parameters, the loss of a batch of
training rows, and the logits of a split with the current parameters. :func:`lmpt.engine.train.loop.fit`
uses exactly the members of :class:`Trainer` and nothing else; ``PromptTrainer`` and ``ProbeTrainer`` are the
two implementations.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch

from ..methods import MethodKind
from .loss import LossDecision


class Trainer(Protocol):
    """What the training loop and the training step need from a run's model.

    Attributes:
        kind: the method kind (weights file, optimiser section).
        device: where the parameters and the cached training tensors live.
        params: the parameters the optimiser updates.
        loss_decision: what :func:`lmpt.engine.train.loss.resolve_loss` decided (written to metrics.json).
        distributed: whether gradients are summed across ranks after each backward pass (the CUDA-graph
            step is not used then).
        capturable: whether the step may be captured as a CUDA graph (not when it runs the image tower).
    """

    kind: MethodKind
    device: torch.device
    params: list[torch.nn.Parameter]
    loss_decision: LossDecision
    distributed: bool
    capturable: bool

    def train(self) -> None:
        """Put the trainable modules in training mode (the frozen CLIP stays as its BatchNorm setting says)."""

    def loss(self, idx: torch.Tensor, flip: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        """``{"loss", "cls", "cse"}`` for the training rows ``idx`` with flip variants ``flip``."""

    def all_reduce_grads(self) -> None:
        """Sum the parameters' gradients across ranks (nothing in a single process)."""

    def logits(self, split: str) -> Optional[torch.Tensor]:
        """``[N, C]`` float32 CPU logits of a split with the current parameters; None without that split."""

    def state(self) -> dict[str, torch.Tensor]:
        """The learned tensors (what the classifier file and checkpoints store)."""

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state`."""
