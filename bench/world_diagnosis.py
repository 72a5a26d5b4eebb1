"""Why prompt tuning does not beat zero-shot on the generated world: measurements on its validation split.

1. chance level: mAP of scores independent of the image;
2. zero-shot (the simple template, cosine logits);
3. linear heads on the frozen, normalised image features (full batch, Adam, 300 steps, BCE), initialised at
   the zero-shot class features: (a) normalised class vectors at the CLIP logit scale and no bias (the form
   of classifier a prompt produces), (b) the same plus a per-class bias, (c) a free linear layer with bias
   and positive re-weighting; trained on the long-tailed train split, then (a) and (c) on the 12,000
   class-balanced pretraining images: what the features allow;
4. reach: the class-specific contexts fitted (Adam, 300 steps) so that each prompt's text feature points
   along head (a)'s balanced-data class vector: can a prompt express that classifier through the frozen
   text tower? (mean cosine reached, and the validation mAP of the fitted prompts);
5. prompt tuning itself (16 class-specific context tokens, BCE, batch 64, 30 epochs) on a class-balanced
   set of the train split's size drawn from the pretraining corpus, with Adam (lr 1e-3) and with the
   reference's SGD (lr 5e-4, momentum 0.9), and with Adam on the long-tailed train split: validation mAP
   along training (and the balanced Adam run's test mAP: what prompt tuning reaches on this CLIP).

    python bench/world_diagnosis.py [--cache-dir DIR] [--classes 20]

Prints one JSON line per figure (mAP in %; ``val_mAP`` ranks raw logits, ``*_softmax`` softmax scores, the
demo's headline protocol). About 3 minutes on 2 CPU cores with the world cached.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from lmpt.engine.config import load_config  # noqa: E402
from lmpt.engine.prepared import prepare  # noqa: E402
from lmpt.engine.studies.demo import build_demo_world, world_overrides  # noqa: E402
from lmpt.metrics import average_precision, scores_from_logits  # noqa: E402
from lmpt.model import PromptCLIP  # noqa: E402
from lmpt.zeroshot import zeroshot_text_features  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def map_pct(scores, labels: np.ndarray) -> float:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().numpy()
    return round(100 * float(np.nanmean(average_precision(scores, labels))), 1)


def soft_pct(logits: torch.Tensor, labels: np.ndarray) -> float:
    """mAP of softmax-over-classes scores (the reference's protocol)."""
    return map_pct(scores_from_logits(logits.detach().numpy(), "softmax"), labels)


def train_head(x: torch.Tensor, y: torch.Tensor, init: torch.Tensor, scale: float, normalise: bool, bias: bool,
               pos_weight: bool, steps: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    w = (init * (1.0 if normalise else scale)).clone().requires_grad_(True)
    b = torch.zeros(len(init), requires_grad=True)
    opt = torch.optim.Adam([w, b] if bias else [w], lr=1e-2)
    pw = ((len(y) - y.sum(0)) / y.sum(0).clamp_min(1)) if pos_weight else None
    for _ in range(steps):
        weights = F.normalize(w, dim=-1) * scale if normalise else w
        loss = F.binary_cross_entropy_with_logits(x @ weights.t() + (b if bias else 0), y, pos_weight=pw)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (F.normalize(w, dim=-1) * scale if normalise else w), (b if bias else torch.zeros_like(b))


def prompt_tune(backbone, class_names, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: np.ndarray,
                scale: float, optimizer: str, lr: float, epochs: int, every: int = 5):
    """CoOp-style prompt tuning with BCE; validation mAP (softmax protocol) at the start and every ``every``
    epochs; returns ``(curve, model)``."""
    torch.manual_seed(0)
    model = PromptCLIP(backbone, class_names)
    ctx = [model.prompt_learner.ctx]
    opt = (torch.optim.Adam(ctx, lr=lr) if optimizer == "adam"
           else torch.optim.SGD(ctx, lr=lr, momentum=0.9, weight_decay=1e-4))

    def val() -> float:
        with torch.no_grad():
            return soft_pct(scale * xv @ model.encode_text().t(), yv)

    curve = [(0, val())]
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            loss = F.binary_cross_entropy_with_logits(scale * x[b] @ model.encode_text().t(), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % every == 0 or epoch == epochs:
            curve.append((epoch, val()))
    return curve, model


def fit_prompts(backbone, class_names, targets: torch.Tensor, steps: int = 300) -> PromptCLIP:
    """Class-specific contexts fitted so that each class's text feature points along ``targets[c]``."""
    torch.manual_seed(0)
    model = PromptCLIP(backbone, class_names)
    opt = torch.optim.Adam([model.prompt_learner.ctx], lr=1e-2)
    for _ in range(steps):
        loss = (1 - (model.encode_text() * targets).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=None, help="where the world lives (default: lmpt's cache)")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    world = build_demo_world(args.classes, 0, cache_dir=args.cache_dir, progress=False)
    overrides = world_overrides(world) + ["run.progress=false", "run.device=cpu"]
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    cfg = load_config("world", overrides)
    prepared = prepare(cfg)
    ds = prepared.dataset
    x = F.normalize(prepared.features["train"][:, 0].float(), dim=-1)
    y = torch.as_tensor(ds.train.labels).float()
    xv = F.normalize(prepared.features["val"][:, 0].float(), dim=-1)
    yv = np.asarray(ds.val.labels)
    backbone = prepared.backbone
    scale = float(backbone.model.logit_scale.exp())

    emit(figure="chance_val_mAP", value=round(100 * float(yv.mean(0).mean()), 1),
         note="mean positive rate per class: the AP of image-independent scores")
    t0 = zeroshot_text_features(backbone, ds.class_names, "simple")
    emit(figure="zeroshot_val_mAP", value=map_pct(xv @ t0.t(), yv), softmax=soft_pct(scale * xv @ t0.t(), yv),
         logit_scale=round(scale, 2))
    for name, normalise, bias, pw in (("normalised_no_bias", True, False, False),
                                      ("normalised_with_bias", True, True, False),
                                      ("linear_probe_bias_posweight", False, True, True)):
        w, b = train_head(x, y, t0, scale, normalise, bias, pw)
        emit(figure=f"head_{name}", train_mAP=map_pct(x @ w.t() + b, y.numpy()), val_mAP=map_pct(xv @ w.t() + b, yv),
             val_mAP_softmax=soft_pct(xv @ w.t() + b, yv))

    from lmpt.world.pretrain import encode_images

    xt = F.normalize(prepared.features["test"][:, 0].float(), dim=-1)
    yt = np.asarray(ds.test.labels)
    images = np.load(Path(world.root) / "pretrain_images.npy", mmap_mode="r")
    labels = torch.as_tensor(np.load(Path(world.root) / "pretrain_labels.npy")).float()
    with torch.no_grad():
        xp = F.normalize(encode_images(backbone.model, images).float(), dim=-1)
    heads = {}
    for name, normalise, bias, pw in (("normalised_no_bias", True, False, False),
                                      ("linear_probe_bias_posweight", False, True, True)):
        w, b = heads[name] = train_head(xp, labels, t0, scale, normalise, bias, pw)
        emit(figure=f"head_{name}_on_balanced_pretraining_corpus", images=len(xp),
             val_mAP=map_pct(xv @ w.t() + b, yv), val_mAP_softmax=soft_pct(xv @ w.t() + b, yv))

    target = F.normalize(heads["normalised_no_bias"][0], dim=-1)
    fitted = fit_prompts(backbone, ds.class_names, target)
    with torch.no_grad():
        t = fitted.encode_text()
    emit(figure="reach_prompts_fitted_to_balanced_head", mean_cosine=round(float((t * target).sum(-1).mean()), 3),
         min_cosine=round(float((t * target).sum(-1).min()), 3), val_mAP_softmax=soft_pct(scale * xv @ t.t(), yv),
         note="the frozen text tower can express the balanced-data classifier")

    idx = torch.randperm(len(xp), generator=torch.Generator().manual_seed(0))[:len(x)]
    for data, (xs, ys), optimizer, lr in (("balanced", (xp[idx], labels[idx]), "adam", 1e-3),
                                          ("balanced", (xp[idx], labels[idx]), "sgd", 5e-4),
                                          ("long_tailed_train", (x, y), "adam", 1e-3)):
        curve, model = prompt_tune(backbone, ds.class_names, xs, ys, xv, yv, scale, optimizer, lr, 30)
        extra = {}
        if data == "balanced" and optimizer == "adam":
            with torch.no_grad():
                extra["test_mAP_softmax"] = soft_pct(scale * xt @ model.encode_text().t(), yt)
            extra["zeroshot_test_mAP_softmax"] = soft_pct(scale * xt @ t0.t(), yt)
        emit(figure=f"prompt_tuning_{data}", images=len(xs), optimizer=optimizer, lr=lr,
             val_mAP_softmax_by_epoch=curve, **extra)


if __name__ == "__main__":
    main()
