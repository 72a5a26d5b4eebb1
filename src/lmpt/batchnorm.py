"""The frozen image tower's BatchNorm statistics: kept, re-estimated once, or drifting as in the reference.

OpenAI's RN50 (open_clip's ``ModifiedResNet``) normalises with BatchNorm; ViTs have none. The LMPT reference
calls ``model.train()`` on its whole model every epoch, so the "frozen" RN50 normalises every training batch
with that batch's statistics and updates its running statistics (momentum 0.1) on the training images; its
test features come from the drifted statistics. Three regimes (``model.batchnorm``, :data:`BATCHNORM_MODES`):

* ``frozen``: the statistics as loaded (CLIP's own); features are cached once. lmpt's default.
* ``adapt``: every BatchNorm's running statistics re-estimated once on the training images (training
  preprocessing, both flips) as a cumulative average over batches (:func:`adapt_batchnorm`), then frozen;
  features are cached as usual. Cheap; close to where the reference's statistics drift to.
* ``train``: the reference exactly: batch statistics in every training forward and running statistics updated
  with momentum 0.1, so training features are computed per batch, and evaluation uses the drifted statistics.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

BATCHNORM_MODES = ("frozen", "adapt", "train")
STATE_PREFIX = "batchnorm."  # keys of the BatchNorm buffers in a classifier file


def batchnorm_layers(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """``(name, layer)`` of every BatchNorm layer in ``module``, in module order."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(module: nn.Module) -> bool:
    return bool(batchnorm_layers(module))


def set_batchnorm_training(module: nn.Module, training: bool) -> None:
    """Put only the BatchNorm layers in training (batch statistics) or eval (running statistics) mode."""
    for _, layer in batchnorm_layers(module):
        layer.train(training)


def batchnorm_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The running statistics of every BatchNorm layer (``batchnorm.<layer>.<buffer>``), float32 on the CPU."""
    out = {}
    for name, layer in batchnorm_layers(module):
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(layer, buf, None)
            if value is not None:
                out[f"{STATE_PREFIX}{name}.{buf}"] = value.detach().to("cpu", torch.float32).clone()
    return out


def load_batchnorm_state(module: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy :func:`batchnorm_state` entries (other keys are ignored) into ``module``; returns how many."""
    layers = dict(batchnorm_layers(module))
    n = 0
    for key, value in state.items():
        if not key.startswith(STATE_PREFIX):
            continue
        name, _, buf = key[len(STATE_PREFIX):].rpartition(".")
        if name not in layers:
            raise KeyError(f"no BatchNorm layer {name!r} in the model ({key})")
        target = getattr(layers[name], buf)
        with torch.no_grad():
            target.copy_(value.to(target.device, target.dtype))
        n += 1
    return n


@torch.no_grad()
def adapt_batchnorm(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` of inputs; returns the batch count.

    The statistics start afresh and are the cumulative average over the batches (PyTorch's ``momentum=None``):
    ``running_mean`` = the mean of the batch means, ``running_var`` = the mean of the (unbiased) batch variances.
    The layers' momentum and the module's mode are restored afterwards; nothing else changes.
    """
    layers = [layer for _, layer in batchnorm_layers(module)]
    momenta = [layer.momentum for layer in layers]
    was_training = module.training
    module.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train(True)
    n = 0
    try:
        for batch in batches:
            module(batch)
            n += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        module.train(was_training)
    return n


__all__ = ["BATCHNORM_MODES", "STATE_PREFIX", "batchnorm_layers", "has_batchnorm", "set_batchnorm_training",
           "batchnorm_state", "load_batchnorm_state", "adapt_batchnorm"]
