"""Using a finished run: rebuild its classifier, re-evaluate it (``lmpt eval``) and label images (``lmpt predict``).

The run's classifier file (``prompt.safetensors`` or ``probe.safetensors``) is the one source of its
settings: its metadata holds the resolved config, the backbone's identity and the class names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ..backbone import create_clip
from ..data.features import PreprocessConfig
from ..data.images import ImageListDataset, build_transform
from ..errors import UserError
from ..io import atomic_write_json
from ..metrics import scores_from_logits
from ..model import LinearProbe, PromptCLIP
from .builders import prompt_config
from .checkpoint import check_compatible, load_weights, model_file
from .config import Config, config_from_dict
from .data import prepare, resolve_device
from .evaluate import evaluate_splits, logits_from_features
from .outputs import ORACLE_LABEL, run_metrics


class Classifier(torch.nn.Module):
    """A trained run's classifier on image features: the prompt model or the linear probe, one interface."""

    def __init__(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor], backbone) -> None:
        super().__init__()
        self.meta = meta
        self.kind = meta.get("kind", "prompt")
        self.backbone = backbone
        self.class_names = list(meta["class_names"])
        if self.kind == "probe":
            scale = float(backbone.model.logit_scale.detach().exp())
            self.probe = LinearProbe(backbone.embed_dim, len(self.class_names), scale)
            self.probe.load_state_dict(tensors)
        else:
            self.prompt = PromptCLIP(backbone, self.class_names, prompt_config(meta["config"]["model"]))
            self.prompt.load_prompt_state(tensors)
        self.eval()

    @property
    def scale(self) -> float:
        return float(self.backbone.model.logit_scale.detach().exp())

    @torch.no_grad()
    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` logits of cached (or freshly encoded) image features ``[N, D]`` / ``[N, V, D]``."""
        if self.kind == "probe":
            x = features[:, 0] if features.dim() == 3 else features
            device = self.probe.linear.weight.device
            return self.probe(x.to(device).float()).cpu()
        return logits_from_features(features, self.prompt.encode_text(), self.scale)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.model.encode_image(images)


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: Config
    meta: dict[str, Any]
    model: Classifier


def load_run(run: Union[str, Path], weights: Optional[str] = None, device: Union[str, torch.device] = "cpu",
             overrides: Sequence[str] = ()) -> LoadedRun:
    """The trained classifier of a run folder (or its .safetensors file), with its backbone rebuilt and verified."""
    path = model_file(run)
    tensors, meta = load_weights(path)
    bb = meta["backbone"]
    pretrained = weights or bb.get("pretrained")
    if pretrained and not Path(pretrained).exists() and ("/" in pretrained or pretrained.endswith((".pt", ".safetensors"))):
        raise UserError(f"the weights file this classifier was trained with is gone: {pretrained}; "
                        "pass its new location with --weights PATH")
    backbone = create_clip(bb["model"], pretrained, quick_gelu=bb.get("quick_gelu", "auto"))
    check_compatible(meta, meta["class_names"], backbone, path)
    model = Classifier(meta, tensors, backbone).to(device)
    cfg = config_from_dict(meta["config"], overrides)
    return LoadedRun(run_dir=path.parent, cfg=cfg, meta=meta, model=model)


def evaluate_run(run_dir: Union[str, Path], overrides: Sequence[str] = (), write: bool = True) -> dict[str, Any]:
    """Recompute a run's metrics from its classifier file and the (cached) features of its data."""
    run_dir = Path(run_dir)
    path = model_file(run_dir)
    tensors, meta = load_weights(path)
    cfg = config_from_dict(meta["config"], overrides)
    device = resolve_device(cfg.run.device)
    prepared = prepare(cfg, device)
    check_compatible(meta, prepared.class_names, prepared.backbone, path)
    model = Classifier(meta, tensors, prepared.backbone).to(device)
    results = evaluate_splits(prepared.dataset, lambda s: model.feature_logits(prepared.features[s])
                              if prepared.features.get(s) is not None else None)
    metrics = run_metrics(cfg, prepared, results["test"], results.get("val"), selection=meta.get("selection", "?"),
                          selected_epoch=meta.get("selected_epoch"))
    metrics["oracle"] = meta.get("selection") == ORACLE_LABEL
    if write:
        atomic_write_json(path.parent / "eval.json", metrics)
    return metrics


@dataclass
class Prediction:
    image: str
    labels: list[tuple[str, float]]
    scores: dict[str, float]


def predict_images(run: LoadedRun, images: Sequence[Union[str, Path]], threshold: Optional[float] = None,
                   top_k: Optional[int] = None, protocol: str = "sigmoid", batch_size: int = 32,
                   device: Union[str, torch.device] = "cpu") -> list[Prediction]:
    """Scores for every class and the predicted labels (score >= threshold, or the top k) per image."""
    model = run.model.to(device)
    backbone = model.backbone
    mode = run.meta.get("preprocess", "reference")
    sig = PreprocessConfig(mode=mode).resolve(backbone)
    transform = build_transform(sig["mode"], sig["image_size"], sig["mean"], sig["std"], sig["interpolation"])
    dataset = ImageListDataset([str(p) for p in images], transform)
    if threshold is None and top_k is None:
        threshold = 0.5 if protocol == "sigmoid" else 0.3
    names = model.class_names
    out: list[Prediction] = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = torch.stack([dataset[i][1] for i in range(start, min(len(dataset), start + batch_size))])
            logits = model.feature_logits(model.encode_image(batch.to(device)))
            scores = scores_from_logits(logits, protocol)
            for row, score in enumerate(scores):
                order = score.argsort()[::-1]
                chosen = order[:top_k] if top_k is not None else [c for c in order if score[c] >= threshold]
                out.append(Prediction(image=str(images[start + row]),
                                      labels=[(names[c], float(score[c])) for c in chosen],
                                      scores={names[c]: float(score[c]) for c in range(len(names))}))
    return out


def predictions_json(preds: Sequence[Prediction]) -> str:
    return json.dumps([{"image": p.image, "labels": [{"label": n, "score": s} for n, s in p.labels],
                        "scores": p.scores} for p in preds], indent=2)


def predictions_table(preds: Sequence[Prediction]) -> str:
    width = max([len(p.image) for p in preds] + [5])
    lines = [f"{'image':<{width}}  labels (score)"]
    for p in preds:
        labels = ", ".join(f"{n} ({s:.3f})" for n, s in p.labels) or "–"
        lines.append(f"{p.image:<{width}}  {labels}")
    return "\n".join(lines)
