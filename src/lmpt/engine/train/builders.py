"""Builders: the prompt model, the optimizer and the schedule of a run, from its config (the loss:
:mod:`lmpt.engine.train.loss`)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ...model import PromptCLIP
from ...prompts import PromptConfig
from ...errors import ConfigError
from ..config import Config, OptimConfig
from ..methods import MethodKind


def prompt_config(model_cfg: Any) -> PromptConfig:
    """The :class:`PromptConfig` of a ``model`` config section (a dataclass or its saved dict)."""
    get = (lambda k: model_cfg[k]) if isinstance(model_cfg, dict) else (lambda k: getattr(model_cfg, k))
    return PromptConfig(n_ctx=get("n_ctx"), class_specific=get("class_specific"), ctx_init=get("ctx_init"),
                        init_std=get("init_std"))


def build_prompt_model(cfg: Config, backbone, class_names: list[str], device: torch.device) -> PromptCLIP:
    """The prompt-tuned CLIP of a run; the context is drawn from ``run.seed``."""
    torch.manual_seed(cfg.run.seed)
    return PromptCLIP(backbone, class_names, prompt_config(cfg.model)).to(device)


def build_optimizer(name: str, params: list[torch.Tensor], lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with momentum (the reference), or Adam/AdamW with ``momentum`` as beta1."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


def optimizer_for(cfg: Config, kind: MethodKind, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimiser of a trained kind, from the config section the kind names (``optim`` or ``probe``).

    A section without its own momentum (``probe``) uses ``optim.momentum`` (Adam's beta1 for AdamW).
    """
    section = getattr(cfg, kind.optimizer_section)
    return build_optimizer(section.optimizer_name, params, section.lr, section.weight_decay,
                           momentum=getattr(section, "momentum", cfg.optim.momentum))


def plateau_metric(o: OptimConfig, has_val: bool) -> str:
    """What the plateau schedule follows: ``val`` (validation mAP), ``train`` (training loss) or ``test`` (test mAP,
    the reference's choice, allowed only under the oracle protocol; validation checks that)."""
    if o.plateau_on == "auto":
        return "val" if has_val else "train"
    if o.plateau_on == "val" and not has_val:
        raise ConfigError("optim.plateau_on=val but this data set has no validation split; set data.val_fraction > 0 "
                          "or data.val=FILE, or optim.plateau_on=auto")
    return o.plateau_on


def build_scheduler(o: OptimConfig, optimizer: torch.optim.Optimizer, has_val: bool,
                    epochs: Optional[int] = None):
    """The learning-rate schedule; the plateau schedule follows :func:`plateau_metric` (validation mAP, or the
    training loss without a validation split; test mAP only when ``optim.plateau_on=test`` asks, under the oracle
    protocol)."""
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs or o.epochs, eta_min=o.min_lr)
    if o.schedule == "plateau":
        mode = "min" if plateau_metric(o, has_val) == "train" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, patience=o.patience, factor=o.factor,
                                                          min_lr=o.min_lr)
    return None
