"""Builders: the loss, the model, the optimizer and the schedule of a run, from its config."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ..data.dataset import MultiLabelDataset
from ..errors import UserError
from ..losses import ClassSpecificEmbeddingLoss, LMPTLoss, build_classification_loss, db_preset
from ..model import PromptCLIP
from ..prompts import PromptConfig
from .config import Config, OptimConfig


def build_loss(cfg: Config, dataset: MultiLabelDataset) -> LMPTLoss:
    """The classification loss (and the CSE loss, if on) with the counts of the images trained on."""
    counts = dataset.train.class_counts
    if (counts == 0).any():
        missing = [dataset.class_names[i] for i in np.flatnonzero(counts == 0)[:5]]
        raise UserError(f"classes without any training image: {', '.join(missing)}; every class needs one")
    kwargs: dict[str, Any] = {}
    name = cfg.loss.classification
    if name == "db":
        preset = cfg.loss.db_preset or (dataset.name if dataset.name in ("voc-lt", "coco-lt") else None)
        if preset:
            kwargs.update(db_preset(preset))
        kwargs.update(cfg.loss.db)
        kwargs["focal"] = cfg.loss.db_focal
    elif name == "asl":
        kwargs.update(cfg.loss.asl)
    elif name == "focal":
        kwargs["gamma"] = cfg.loss.focal_gamma
    cls = build_classification_loss(name, counts, len(dataset.train), **kwargs)
    cse = None
    if cfg.loss.cse:
        cse = ClassSpecificEmbeddingLoss(counts, margin=cfg.loss.cse_margin, gamma=cfg.loss.cse_gamma,
                                         shift=cfg.loss.cse_shift, form=cfg.loss.cse_form,
                                         distance=cfg.loss.cse_distance)
    return LMPTLoss(cls, cse, lam=cfg.loss.lam if cse is not None else 1.0)


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


def build_scheduler(o: OptimConfig, optimizer: torch.optim.Optimizer, has_val: bool,
                    epochs: Optional[int] = None):
    """The learning-rate schedule; the plateau schedule follows validation mAP, or the training loss without
    a validation split: it never reads the test set."""
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs or o.epochs, eta_min=o.min_lr)
    if o.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max" if has_val else "min",
                                                          patience=o.patience, factor=o.factor, min_lr=o.min_lr)
    return None
