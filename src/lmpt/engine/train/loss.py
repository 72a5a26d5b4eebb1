"""The one place where a run's loss is decided: :func:`resolve_loss`.

What the loss of a run is depends on the method (``run.method`` fixes the classification loss and whether the
CSE loss is on, except ``custom``), on the loss section (each classification loss reads its own settings, see
:class:`lmpt.losses.LossEntry`; ``loss.params`` on top), on the data set (the DB loss's preset by data set name)
and on the data (no captions: no CSE loss). :func:`resolve_loss` weighs all of them once and returns a
:class:`LossDecision` that says what it decided and why; the run writes it to ``metrics.json`` ("loss") and to
its log, and :meth:`LossDecision.build` makes the loss module.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from ...data.dataset import MultiLabelDataset
from ...errors import DataError
from ...losses import CLASSIFICATION_LOSSES, ClassSpecificEmbeddingLoss, LMPTLoss
from ..config import Config
from ..methods import METHODS
from ..prepared import train_captions

logger = logging.getLogger(__name__)


@dataclass
class LossDecision:
    """A run's loss: ``lam * classification + (1 - lam) * CSE``, or the classification loss alone.

    Attributes:
        classification: the classification loss's name (:data:`lmpt.losses.CLASSIFICATION_LOSSES`).
        params: its keyword arguments.
        cse: the CSE loss's keyword arguments, or None when it is off.
        lam: the weight of the classification term (1.0 without CSE).
        notes: why, one line per decision.
    """

    classification: str
    params: dict[str, Any]
    cse: Optional[dict[str, Any]]
    lam: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(self, dataset: MultiLabelDataset) -> LMPTLoss:
        """The loss module, with the class counts of the images trained on."""
        counts = dataset.train.class_counts
        if (counts == 0).any():
            missing = [dataset.class_names[i] for i in np.flatnonzero(counts == 0)[:5]]
            raise DataError(f"classes without any training image: {', '.join(missing)}; every class needs one")
        cls = CLASSIFICATION_LOSSES[self.classification].build(counts, len(dataset.train), **self.params)
        cse = None if self.cse is None else ClassSpecificEmbeddingLoss(counts, **self.cse)
        return LMPTLoss(cls, cse, lam=self.lam)


def resolve_loss(cfg: Config, dataset: MultiLabelDataset, uses_captions: bool = True) -> LossDecision:
    """Decide the loss of a trained run of ``cfg`` on ``dataset`` (see the module docstring).

    ``uses_captions=False`` is for kinds that have no prompt to tie to captions (the linear probe): CSE is off.
    """
    lo = cfg.loss
    method = METHODS[cfg.run.method]
    notes = []
    if method.classification is not None:
        name = method.classification
        notes.append(f"classification loss {name}: set by run.method={method.name}")
    else:
        name = lo.classification
        notes.append(f"classification loss {name}: loss.classification")
    entry = CLASSIFICATION_LOSSES[name]
    params = {**entry.settings(lo, dataset.name), **lo.params}
    cse_on = lo.cse if method.cse is None else method.cse
    cse: Optional[dict[str, Any]] = None
    if cse_on and not uses_captions:
        notes.append(f"CSE off: {method.name} has no prompt for it")
    elif cse_on and train_captions(cfg, dataset) is None:
        notes.append("CSE off: no captions (data.captions=class-names builds them from the labels)")
        logger.warning("the training split has no captions: the CSE loss is off for this run "
                       "(set data.captions=class-names to build captions from the labels)")
    elif cse_on:
        cse = {"margin": lo.cse_margin, "gamma": lo.cse_gamma, "shift": lo.cse_shift, "form": lo.cse_form,
               "distance": lo.cse_distance}
        notes.append(f"CSE on ({'set by run.method=' + method.name if method.cse is not None else 'loss.cse'}), "
                     f"lam {lo.lam}")
    else:
        notes.append(f"CSE off: {'set by run.method=' + method.name if method.cse is not None else 'loss.cse'}")
    decision = LossDecision(name, params, cse, lo.lam if cse is not None else 1.0, notes)
    logger.info("loss: %s", "; ".join(notes))
    return decision
