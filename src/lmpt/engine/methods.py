"""The methods a run can be (``run.method``): one registry, read by config validation, the CLI and the runner.

Each method is a kind of run (``zeroshot``: no training; ``prompt``: prompt tuning; ``probe``: a linear layer
on the cached image features) and, for trained kinds, the losses it implies. ``custom`` is prompt tuning with
the loss section exactly as configured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "zeroshot" | "prompt" | "probe"
    classification: Optional[str]  # the classification loss (None: keep loss.classification)
    cse: Optional[bool]  # the CSE loss on/off (None: keep loss.cse)
    description: str


METHODS: Registry[Method] = Registry("method")
for _m in (
    Method("zeroshot", "zeroshot", None, False, "zero-shot CLIP (prompt templates), no training"),
    Method("linear-probe", "probe", "db", False, "Linear(D, C) on the frozen image features, DB loss (the "
                                                 "reference's 'CLIP fine-tune' row)"),
    Method("coop", "prompt", "bce", False, "CoOp: class-specific prompts, BCE"),
    Method("coop-db", "prompt", "db", False, "CoOp with the distribution-balanced loss"),
    Method("lmpt", "prompt", "db", True, "LMPT: DB loss + class-specific embedding loss"),
    Method("lmpt-asl", "prompt", "asl", True, "LMPT with the asymmetric loss instead of DB"),
    Method("custom", "prompt", None, None, "prompt tuning with the loss section as configured"),
):
    METHODS.register(_m.name, _m)


def resolve_method(cfg: Any) -> Any:
    """A copy of ``cfg`` (a :class:`~lmpt.engine.config.Config`; not imported: config validation reads this
    registry) with the losses ``run.method`` implies (``custom`` keeps the loss section as is)."""
    cfg = cfg.copy()
    method = METHODS[cfg.run.method]
    if method.classification is not None:
        cfg.loss.classification = method.classification
    if method.cse is not None:
        cfg.loss.cse = method.cse
    return cfg
