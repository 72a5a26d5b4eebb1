"""Losses for LMPT, one module per loss: distribution-balanced (``db``), class-specific embedding (``cse``),
the multi-label baselines (``bce``, ``focal``, ``asl``) and their combination (``combined``).

Classification losses are picked by name (``loss.classification``) from :data:`CLASSIFICATION_LOSSES`. Each
entry says how to build the loss, which keyword arguments it takes (``loss.params`` may set any of them) and
how it reads its own settings from a config's loss section (:meth:`LossEntry.settings`); the engine's
``resolve_loss`` asks the entry and nothing else. Adding a loss: a module with the ``nn.Module``, and one
``CLASSIFICATION_LOSSES.register`` line below.

All losses compute in at least float32 (half-precision inputs are upcast) and never modify the caller's
tensors. docs/method.md ("Losses") gives the formulas and where they differ from the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch.nn as nn

from ..registry import Registry
from ._common import Counts
from .asl import ASL_PARAMS, ASL_REDUCTIONS, AsymmetricLoss
from .bce import BCELoss
from .combined import LMPTLoss
from .cse import CSE_DISTANCES, CSE_FORMS, ClassSpecificEmbeddingLoss
from .db import DB_FOCAL_MODES, DB_PARAMS, DB_PRESETS, DistributionBalancedLoss, db_preset
from .focal import FocalLoss

__all__ = [
    "DistributionBalancedLoss", "ClassSpecificEmbeddingLoss", "BCELoss", "FocalLoss", "AsymmetricLoss", "LMPTLoss",
    "LossEntry", "CLASSIFICATION_LOSSES", "build_classification_loss", "db_preset", "DB_PRESETS", "DB_FOCAL_MODES",
    "DB_PARAMS", "CSE_FORMS", "CSE_DISTANCES", "ASL_PARAMS", "ASL_REDUCTIONS",
]


def _no_settings(loss_cfg: Any, dataset: str) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class LossEntry:
    """A classification loss users pick by name.

    Attributes:
        build: ``(class_freq, num_train, **params) -> nn.Module``.
        params: the keyword arguments ``build`` accepts (what ``loss.params`` may set).
        settings: ``(loss section, data set name) -> params`` read from the config's own keys for this loss
            (``loss.db``, ``loss.asl``, ...); ``loss.params`` is applied on top.
        description: one line for help texts.
    """

    build: Callable[..., nn.Module]
    params: tuple[str, ...] = ()
    settings: Callable[[Any, str], dict[str, Any]] = field(default=_no_settings)
    description: str = ""


def _db_settings(loss_cfg: Any, dataset: str) -> dict[str, Any]:
    """The reference's preset for the data set (``loss.db_preset`` or the data set's own name), ``loss.db`` on
    top, and the focal mode (``loss.db_focal``)."""
    preset = DB_PRESETS.get(loss_cfg.db_preset or dataset, {})
    return {**preset, **loss_cfg.db, "focal": loss_cfg.db_focal}


CLASSIFICATION_LOSSES: Registry[LossEntry] = Registry("classification loss")
CLASSIFICATION_LOSSES.register("db", LossEntry(
    lambda freq, n, **kw: DistributionBalancedLoss(freq, n, **kw), DB_PARAMS + ("focal",), _db_settings,
    "distribution-balanced loss (the reference's presets per data set)"))
CLASSIFICATION_LOSSES.register("bce", LossEntry(lambda freq, n, **kw: BCELoss(**kw), (), _no_settings,
                                                "binary cross-entropy"))
CLASSIFICATION_LOSSES.register("focal", LossEntry(
    lambda freq, n, **kw: FocalLoss(**kw), ("gamma", "alpha"), lambda lc, ds: {"gamma": lc.focal_gamma},
    "sigmoid focal loss"))
CLASSIFICATION_LOSSES.register("asl", LossEntry(
    lambda freq, n, **kw: AsymmetricLoss(**kw), ASL_PARAMS, lambda lc, ds: dict(lc.asl), "asymmetric loss"))


def build_classification_loss(name: str, class_freq: Counts, num_train: int, **kwargs: Any) -> nn.Module:
    """Classification loss by name (see :data:`CLASSIFICATION_LOSSES`); ``kwargs`` go to the constructor."""
    entry: Optional[LossEntry] = CLASSIFICATION_LOSSES.lookup(name, normalize=lambda n: str(n).strip().lower())
    return entry.build(class_freq, num_train, **kwargs)
