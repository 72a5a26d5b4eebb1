"""Using a finished run: re-evaluate it (``lmpt eval``) and label new images (``lmpt predict``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..backbone import CLIPBackbone, create_clip
from ..data.features import PreprocessConfig
from ..data.images import ImageListDataset, build_transform
from ..errors import CheckpointError, UserError
from ..io import atomic_write_json
from ..metrics import scores_from_logits
from ..model import PromptCLIP
from ..prompts import PromptConfig
from .checkpoint import PROMPT_FILE, check_compatible, load_prompt
from .config import Config, config_from_dict, load_config
from .data import prepare, resolve_device
from .evaluate import logits_from_features, split_metrics
from .train import ORACLE_LABEL, run_metrics


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: Config
    meta: dict[str, Any]
    model: PromptCLIP


def _run_config(run_dir: Path, overrides: Sequence[str] = ()) -> Config:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml); pass a folder written by `lmpt train`")
    return load_config(path, overrides)


def _model_from_meta(ctx: torch.Tensor, meta: dict[str, Any], backbone: CLIPBackbone) -> PromptCLIP:
    m = meta["config"]["model"]
    pcfg = PromptConfig(n_ctx=m["n_ctx"], class_specific=m["class_specific"], ctx_init=m["ctx_init"],
                        init_std=m["init_std"])
    model = PromptCLIP(backbone, meta["class_names"], pcfg)
    model.load_prompt_state({"ctx": ctx})
    return model.eval()


def load_run(run_dir: Union[str, Path], weights: Optional[str] = None, device: Union[str, torch.device] = "cpu") -> LoadedRun:
    """The trained model of a run folder (or a prompt .safetensors), with its backbone rebuilt and verified."""
    path = Path(run_dir)
    ctx, meta = load_prompt(path)
    run_folder = path if path.is_dir() else path.parent
    bb = meta["backbone"]
    pretrained = weights or bb.get("pretrained")
    if pretrained and not Path(pretrained).exists() and ("/" in pretrained or pretrained.endswith((".pt", ".safetensors"))):
        raise UserError(f"the weights file this prompt was trained with is gone: {pretrained}; "
                        "pass its new location with --weights PATH")
    backbone = create_clip(bb["model"], pretrained, quick_gelu=bb.get("quick_gelu", "auto"))
    check_compatible(meta, meta["class_names"], backbone, path)
    model = _model_from_meta(ctx, meta, backbone).to(device)
    cfg = config_from_dict(meta["config"])
    return LoadedRun(run_dir=run_folder, cfg=cfg, meta=meta, model=model)


def evaluate_run(run_dir: Union[str, Path], overrides: Sequence[str] = (), write: bool = True) -> dict[str, Any]:
    """Recompute a run's metrics from its prompt checkpoint and (cached) features."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir, overrides)
    ctx, meta = load_prompt(run_dir)
    device = resolve_device(cfg.run.device)
    prepared = prepare(cfg, device)
    check_compatible(meta, prepared.class_names, prepared.backbone, run_dir / PROMPT_FILE)
    model = _model_from_meta(ctx, meta, prepared.backbone).to(device)
    scale = float(model.logit_scale)
    with torch.no_grad():
        text = model.encode_text()
    results = {}
    for split in ("test", "val"):
        feats = prepared.features.get(split)
        data_split = getattr(prepared.dataset, split)
        if feats is not None and data_split is not None:
            results[split] = split_metrics(logits_from_features(feats, text, scale), data_split.labels,
                                           prepared.dataset.class_freq)
    metrics = run_metrics(cfg, prepared, results["test"], results.get("val"), selection=meta.get("selection", "?"),
                          selected_epoch=meta.get("selected_epoch"))
    metrics["oracle"] = meta.get("selection") == ORACLE_LABEL
    if write:
        atomic_write_json(run_dir / "eval.json", metrics)
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
    with torch.no_grad():
        text = model.encode_text()
        out: list[Prediction] = []
        for start in range(0, len(dataset), batch_size):
            batch = torch.stack([dataset[i][1] for i in range(start, min(len(dataset), start + batch_size))])
            feats = model.encode_image(batch.to(device))
            logits = logits_from_features(feats, text, float(model.logit_scale))
            scores = scores_from_logits(logits, protocol)
            for row, score in enumerate(scores):
                names = run.meta["class_names"]
                order = score.argsort()[::-1]
                if top_k is not None:
                    chosen = order[:top_k]
                else:
                    chosen = [c for c in order if score[c] >= threshold]
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
