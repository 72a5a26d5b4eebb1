"""What a run can be: method kinds and methods, one registry each, read by config validation, the CLI and the runner.

A **method kind** (:data:`METHOD_KINDS`) is how a run computes its classifier: ``prompt`` (prompt tuning),
``probe`` (a linear layer on the cached image features) or ``zeroshot`` (no training). It is one object that
carries everything the engine asks about a kind: its trainer, the config section holding its optimiser
settings, the head it rebuilds from a classifier file, and that file's name. The trainer and head are named by
import path (``"module:attribute"``) and imported when first used, so this registry stays cheap to import
(config validation reads it) and the trainers may import the engine's other layers freely.

A **method** (:data:`METHODS`) is a kind plus the losses it implies; ``custom`` is prompt tuning with the loss
section exactly as configured. Adding a method of an existing kind is one :data:`METHODS` entry; adding a kind
is one :data:`METHOD_KINDS` entry and its own module (see docs/DESIGN.md).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

from ..registry import Registry


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class Head(NamedTuple):
    """A run's classifier on image features: ``logits = f(x) @ weight.T + bias`` with ``f`` the L2 normalisation
    (``normalize_features``, CLIP's logit scale folded into ``weight``) or the identity (a probe on raw features)."""

    weight: Any
    bias: Any
    normalize_features: bool = True


@dataclass(frozen=True)
class MethodKind:
    """One way of computing a classifier.

    Attributes:
        name: ``prompt``, ``probe``, ``zeroshot``.
        weights_file: the classifier file a run of this kind writes into its folder.
        optimizer_section: the config section with its optimiser settings (``optim``, ``probe``), None when
            nothing is trained.
        trainer: ``"module:attribute"`` of ``(cfg, prepared, device) -> Trainer`` (see
            :class:`lmpt.engine.train.trainer.Trainer`), which ``lmpt.engine.train.loop.fit`` trains; for a kind
            without training, of ``(cfg, prepared, run_dir, device, timings) -> RunResult``, the whole run.
        head: ``"module:attribute"`` of ``(meta, tensors, backbone) -> Head``: the classifier on image
            features that the run's file describes.
    """

    name: str
    weights_file: str
    optimizer_section: Optional[str]
    trainer: str
    head: str

    @property
    def trains(self) -> bool:
        """Whether ``trainer`` builds a trainer for the training loop (else it is the whole run)."""
        return self.optimizer_section is not None

    def trainer_factory(self) -> Callable[..., Any]:
        return _resolve(self.trainer)

    def head_builder(self) -> Callable[..., Any]:
        return _resolve(self.head)


METHOD_KINDS: Registry[MethodKind] = Registry("method kind")
METHOD_KINDS.register("prompt", MethodKind("prompt", "prompt.safetensors", "optim",
                                           "lmpt.engine.train.prompt:PromptTrainer",
                                           "lmpt.engine.train.prompt:prompt_head"))
METHOD_KINDS.register("probe", MethodKind("probe", "probe.safetensors", "probe",
                                          "lmpt.engine.train.probe:ProbeTrainer",
                                          "lmpt.engine.train.probe:probe_head"))
METHOD_KINDS.register("zeroshot", MethodKind("zeroshot", "zeroshot.safetensors", None,
                                             "lmpt.engine.train.zeroshot:run_zeroshot",
                                             "lmpt.engine.train.zeroshot:zeroshot_head"))


@dataclass(frozen=True)
class Method:
    """A method users pick by name (``run.method``).

    ``classification`` and ``cse`` are the losses it implies (None: the loss section's own value).
    """

    name: str
    kind: str
    classification: Optional[str]
    cse: Optional[bool]
    description: str

    @property
    def method_kind(self) -> MethodKind:
        return METHOD_KINDS[self.kind]


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


def kind_of(method: str) -> MethodKind:
    """The kind of a method name."""
    return METHODS.lookup(method).method_kind


def weights_files() -> tuple[str, ...]:
    """Every kind's classifier file name (a run folder holds one of them)."""
    return tuple(k.weights_file for k in METHOD_KINDS.values())
