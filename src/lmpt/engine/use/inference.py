"""Using a finished run: rebuild its classifier, re-evaluate it (``lmpt eval``) and label images (``lmpt predict``).

The run's classifier file (``prompt.safetensors``, ``probe.safetensors`` or ``zeroshot.safetensors``) is the one
source of its settings: its metadata holds the resolved config, the backbone's identity, the class names, the
preprocessing and the calibration fitted on validation data.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ...backbone import create_clip
from ...batchnorm import load_batchnorm_state
from ...calibration import Calibration
from ...data.images import PreprocessConfig, transform_from_signature
from ...errors import CheckpointError, UserError
from ...io import atomic_write_json
from ...predictor import Predicting
from ...predictor_torch import TorchBatching
from ..config import Config, config_from_dict
from ..methods import METHOD_KINDS
from ..prepared import Prepared, dataset_from_config, resolve_device, split_features
from ..rundir.checkpoint import check_compatible, load_weights, model_file
from ..rundir.decide import test_decisions
from ..rundir.layout import RunLayout
from ..rundir.outputs import ORACLE_LABEL, run_metrics
from ..rundir.scoring import logits_from_features, score_splits

logger = logging.getLogger(__name__)


class Classifier(torch.nn.Module):
    """A run's classifier on image features, whatever the method: ``logits = f(x) @ weight.T + bias``.

    ``weight`` (``[C, D]``), ``bias`` and ``f`` (the L2 normalisation, or the identity for a probe on raw
    features) come from the run's kind's head (:class:`~lmpt.engine.methods.Head`): the learned prompts' text
    features or the zero-shot text features with CLIP's logit scale folded in, or the linear probe.
    """

    def __init__(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor], backbone) -> None:
        super().__init__()
        self.meta = meta
        self.kind = meta.get("kind", "prompt")
        self.backbone = backbone
        self.class_names = list(meta["class_names"])
        self.calibrated = bool(meta.get("calibration"))  # files from before calibration: sigmoid and 0.5
        self.calibration = Calibration.from_dict(meta["calibration"]) if self.calibrated \
            else Calibration.identity(len(self.class_names))
        with torch.no_grad():
            weight, bias, self.normalize_features = METHOD_KINDS.lookup(self.kind).head_builder()(meta, tensors,
                                                                                                  backbone)
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())
        self.eval()

    @torch.no_grad()
    def feature_logits(self, features: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """``[N, C]`` float32 CPU logits of image features ``[N, D]`` (or cached ``[N, V, D]``: variant 0)."""
        return logits_from_features(features, self.weight, 1.0, batch_size, normalize_text=False,
                                    normalize_images=self.normalize_features) + self.bias.cpu()

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.model.encode_image(images.to(self.weight.device))


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: Config
    meta: dict[str, Any]
    model: Classifier


def run_backbone(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path, pretrained: Optional[str],
                 seed: int = 0):
    """The backbone a classifier file was trained with: rebuilt from its weights, verified against the file's
    fingerprint, and carrying the BatchNorm statistics the file stores (``model.batchnorm`` adapt or train)."""
    bb = meta["backbone"]
    if pretrained and not Path(pretrained).exists() and ("/" in pretrained or pretrained.endswith((".pt", ".safetensors"))):
        raise UserError(f"the weights file this classifier was trained with is gone: {pretrained}; "
                        "pass its new location with --weights PATH")
    backbone = create_clip(bb["model"], pretrained, quick_gelu=bb.get("quick_gelu", "auto"), seed=seed)
    check_compatible(meta, None, backbone, path)  # no data to compare classes with: the backbone must match
    try:
        if load_batchnorm_state(backbone.model.visual, tensors):
            backbone.refresh_fingerprint()
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: its BatchNorm statistics do not fit {bb['model']} ({exc})") from None
    return backbone


def load_run(run: Union[str, Path], weights: Optional[str] = None, device: Union[str, torch.device] = "cpu",
             overrides: Sequence[str] = ()) -> LoadedRun:
    """The classifier of a run folder (or its .safetensors file), with its backbone rebuilt and verified."""
    path = model_file(run)
    tensors, meta = load_weights(path)
    backbone = run_backbone(meta, tensors, path, weights or meta["backbone"].get("pretrained"))
    model = Classifier(meta, tensors, backbone).to(device)
    cfg = config_from_dict(meta["config"], overrides)
    return LoadedRun(run_dir=path.parent, cfg=cfg, meta=meta, model=model)


def reevaluate_run(run_dir: Union[str, Path], overrides: Sequence[str] = (), write: bool = True) -> dict[str, Any]:
    """Recompute a run's metrics, and its decisions at the stored calibration, from its classifier file."""
    run_dir = Path(run_dir)
    path = model_file(run_dir)
    tensors, meta = load_weights(path)
    cfg = config_from_dict(meta["config"], overrides)
    device = resolve_device(cfg.run.device)
    dataset = dataset_from_config(cfg)
    backbone = run_backbone(meta, tensors, path, cfg.model.pretrained, seed=cfg.run.seed)
    check_compatible(meta, dataset.class_names, backbone, path)
    features = {s: split_features(cfg, backbone, getattr(dataset, s), device) for s in ("test", "val")
                if getattr(dataset, s) is not None}
    backbone.model.to("cpu")
    prepared = Prepared(dataset=dataset, backbone=backbone, features=features)
    model = Classifier(meta, tensors, backbone).to(device)
    logits = {s: model.feature_logits(prepared.features[s]) for s in ("test", "val")
              if prepared.features.get(s) is not None}
    results = score_splits(prepared.dataset, logits.get)
    metrics = run_metrics(cfg, prepared, results["test"], results.get("val"), selection=meta.get("selection", "?"),
                          selected_epoch=meta.get("selected_epoch"))
    metrics["oracle"] = meta.get("selection") == ORACLE_LABEL
    if model.calibrated:
        metrics["decisions"] = test_decisions(model.calibration, logits["test"], prepared.dataset.test.labels)
    if write:
        atomic_write_json(RunLayout(path.parent) / RunLayout.EVAL, metrics)
    return metrics


class RunScorer(TorchBatching, Predicting):
    """A loaded run as a :class:`lmpt.predictor.Scorer`: its preprocessing, calibrated probabilities, thresholds;
    ``predict(inputs)`` labels images (:meth:`lmpt.predictor.Predicting.predict`)."""

    def __init__(self, run: LoadedRun) -> None:
        self.model = run.model
        self.class_names = self.model.class_names
        if not self.model.calibrated:
            logger.warning("this classifier file has no calibration (written by an older lmpt): scores are "
                           "sigmoid(logit) and the threshold 0.5; re-run `lmpt train` for calibrated decisions")
        self.thresholds = np.asarray(self.model.calibration.thresholds)
        self.signature = preprocess_signature(run.meta, self.model.backbone)
        self.image_size = int(self.signature["image_size"])
        self.transform = transform_from_signature(self.signature)
        self.run_dir = run.run_dir

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.feature_logits(self.model.encode_image(images))

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        return self.model.calibration.probabilities(self.logits(images))


def preprocess_signature(meta: dict[str, Any], backbone) -> dict[str, Any]:
    """The resolved preprocessing a classifier was trained with (mode, size, mean, std, interpolation)."""
    return PreprocessConfig(mode=meta.get("preprocess", "reference")).resolve(backbone)
