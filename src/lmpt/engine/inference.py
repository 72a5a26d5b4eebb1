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

from ..backbone import create_clip
from ..calibration import Calibration
from ..data.features import PreprocessConfig
from ..data.images import transform_from_signature
from ..errors import UserError
from ..io import atomic_write_json
from ..model import LinearProbe, PromptCLIP
from ..predictor import Inputs, PredictResult, collect_inputs, predict_paths
from .builders import prompt_config
from .checkpoint import check_compatible, load_weights, model_file
from .config import Config, config_from_dict
from .data import prepare, resolve_device
from .decide import test_decisions
from .evaluate import evaluate_splits, logits_from_features
from .outputs import ORACLE_LABEL, run_metrics

logger = logging.getLogger(__name__)


class Classifier(torch.nn.Module):
    """A run's classifier on image features, whatever the method: ``logits = norm(x) @ weight.T + bias``.

    ``weight`` (``[C, D]``, CLIP's logit scale folded in) and ``bias`` come from the learned prompts' text
    features, the zero-shot text features, or the linear probe.
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
        scale = backbone.logit_scale
        with torch.no_grad():
            if self.kind == "probe":
                probe = LinearProbe(backbone.embed_dim, len(self.class_names), scale)
                probe.load_state_dict(tensors)
                weight, bias = probe.linear.weight * scale, probe.linear.bias
            else:
                if self.kind == "zeroshot":
                    text = tensors["text_features"]
                else:
                    prompt = PromptCLIP(backbone, self.class_names, prompt_config(meta["config"]["model"]))
                    prompt.load_prompt_state(tensors)
                    text = prompt.encode_text()
                weight = scale * torch.nn.functional.normalize(text.float(), dim=-1)
                bias = torch.zeros(len(self.class_names))
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())
        self.eval()

    @torch.no_grad()
    def feature_logits(self, features: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """``[N, C]`` float32 CPU logits of image features ``[N, D]`` (or cached ``[N, V, D]``: variant 0)."""
        return logits_from_features(features, self.weight, 1.0, batch_size, normalize_text=False) + self.bias.cpu()

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.model.encode_image(images.to(self.weight.device))


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: Config
    meta: dict[str, Any]
    model: Classifier


def load_run(run: Union[str, Path], weights: Optional[str] = None, device: Union[str, torch.device] = "cpu",
             overrides: Sequence[str] = ()) -> LoadedRun:
    """The classifier of a run folder (or its .safetensors file), with its backbone rebuilt and verified."""
    path = model_file(run)
    tensors, meta = load_weights(path)
    bb = meta["backbone"]
    pretrained = weights or bb.get("pretrained")
    if pretrained and not Path(pretrained).exists() and ("/" in pretrained or pretrained.endswith((".pt", ".safetensors"))):
        raise UserError(f"the weights file this classifier was trained with is gone: {pretrained}; "
                        "pass its new location with --weights PATH")
    backbone = create_clip(bb["model"], pretrained, quick_gelu=bb.get("quick_gelu", "auto"))
    check_compatible(meta, None, backbone, path)  # no data to compare classes with: the backbone must match
    model = Classifier(meta, tensors, backbone).to(device)
    cfg = config_from_dict(meta["config"], overrides)
    return LoadedRun(run_dir=path.parent, cfg=cfg, meta=meta, model=model)


def evaluate_run(run_dir: Union[str, Path], overrides: Sequence[str] = (), write: bool = True) -> dict[str, Any]:
    """Recompute a run's metrics, and its decisions at the stored calibration, from its classifier file."""
    run_dir = Path(run_dir)
    path = model_file(run_dir)
    tensors, meta = load_weights(path)
    cfg = config_from_dict(meta["config"], overrides)
    device = resolve_device(cfg.run.device)
    prepared = prepare(cfg, device)
    check_compatible(meta, prepared.class_names, prepared.backbone, path)
    model = Classifier(meta, tensors, prepared.backbone).to(device)
    logits = {s: model.feature_logits(prepared.features[s]) for s in ("test", "val")
              if prepared.features.get(s) is not None}
    results = evaluate_splits(prepared.dataset, logits.get)
    metrics = run_metrics(cfg, prepared, results["test"], results.get("val"), selection=meta.get("selection", "?"),
                          selected_epoch=meta.get("selected_epoch"))
    metrics["oracle"] = meta.get("selection") == ORACLE_LABEL
    if model.calibrated:
        metrics["decisions"] = test_decisions(model.calibration, logits["test"], prepared.dataset.test.labels)
    if write:
        atomic_write_json(path.parent / "eval.json", metrics)
    return metrics


class RunScorer:
    """A loaded run as a :class:`lmpt.predictor.Scorer`: its preprocessing, calibrated probabilities, thresholds."""

    def __init__(self, run: LoadedRun) -> None:
        self.model = run.model
        self.class_names = self.model.class_names
        if not self.model.calibrated:
            logger.warning("this classifier file has no calibration (written by an older lmpt): scores are "
                           "sigmoid(logit) and the threshold 0.5; re-run `lmpt train` for calibrated decisions")
        self.thresholds = np.asarray(self.model.calibration.thresholds)
        self.transform = transform_from_signature(preprocess_signature(run.meta, self.model.backbone))

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.feature_logits(self.model.encode_image(images))

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        return self.model.calibration.probabilities(self.logits(images))


def preprocess_signature(meta: dict[str, Any], backbone) -> dict[str, Any]:
    """The resolved preprocessing a classifier was trained with (mode, size, mean, std, interpolation)."""
    return PreprocessConfig(mode=meta.get("preprocess", "reference")).resolve(backbone)


def predict_images(run: LoadedRun, inputs: Union[Inputs, Sequence[Union[str, Path]]], threshold: Optional[float] = None,
                   top_k: Optional[int] = None, batch_size: int = 32, num_workers: int = 0, strict: bool = False,
                   show_progress: bool = False) -> PredictResult:
    """Calibrated probabilities for every class and the chosen labels (each class's threshold, ``threshold`` for
    all, or the top ``k``) of images, folders, glob patterns or manifests."""
    inputs = inputs if isinstance(inputs, Inputs) else collect_inputs(inputs)
    return predict_paths(RunScorer(run), inputs, threshold=threshold, top_k=top_k, batch_size=batch_size,
                         num_workers=num_workers, strict=strict, show_progress=show_progress)
