"""Why prompt tuning does not beat zero-shot on the generated world: a few measurements on its validation split.

1. chance level: mAP of scores independent of the image;
2. zero-shot (the simple template, cosine logits);
3. linear heads on the frozen, normalised image features, trained on the train split (full batch, Adam, 300
   steps, BCE), initialised at the zero-shot class features: (a) normalised class vectors at the CLIP logit
   scale and no bias (what a prompt can at best express), (b) the same plus a per-class bias, (c) a free
   linear layer with bias and positive re-weighting (a standard linear probe);
4. the same heads (a) and (c) trained on the 12,000 balanced pretraining images instead: what the
   features allow when data is plentiful and balanced; then prompt tuning itself (16 class-specific context
   tokens, BCE, SGD with momentum, batch 64) on those 12,000 images for 3 epochs at two learning rates: the
   validation mAP (softmax protocol, as the demo's headline) after each epoch;
5. the effective rank (exp of the entropy of the normalised squared singular values) of the class text
   features: the 20 zero-shot prompts, and 200 random contexts for one class (the directions a prompt can reach).

    python bench/world_diagnosis.py [--cache-dir DIR] [--classes 20]

Prints one JSON line per figure (mAP in %; ``val_mAP`` ranks raw logits, ``*_softmax`` softmax scores).
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
from lmpt.engine.data import load_dataset, prepare  # noqa: E402
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


def effective_rank(features: torch.Tensor) -> float:
    s = torch.linalg.svdvals(features - features.mean(0))
    p = s ** 2 / (s ** 2).sum()
    return round(float(torch.exp(-(p * torch.log(p + 1e-12)).sum())), 1)


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
                scale: float, lr: float, epochs: int) -> list[float]:
    """Validation mAP (softmax protocol) at the start and after each epoch of CoOp-style prompt tuning."""
    torch.manual_seed(0)
    model = PromptCLIP(backbone, class_names)
    opt = torch.optim.SGD([model.prompt_learner.ctx], lr=lr, momentum=0.9, weight_decay=1e-4)

    def val() -> float:
        with torch.no_grad():
            return soft_pct(scale * xv @ model.encode_text().t(), yv)

    out = [val()]
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            loss = F.binary_cross_entropy_with_logits(scale * x[b] @ model.encode_text().t(), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(val())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=None, help="where the world lives (default: lmpt's cache)")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = ["run.progress=false", f"data.world_classes={args.classes}"]
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    cfg = load_config("world", overrides)
    prepared = prepare(cfg, loaded=load_dataset(cfg))
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

    world = prepared.world
    if world is not None:
        from lmpt.world.pretrain import encode_images

        images = np.load(Path(world.root) / "pretrain_images.npy", mmap_mode="r")
        labels = torch.as_tensor(np.load(Path(world.root) / "pretrain_labels.npy")).float()
        with torch.no_grad():
            xp = encode_images(backbone.model, images).float()
        for name, normalise, bias, pw in (("normalised_no_bias", True, False, False),
                                          ("linear_probe_bias_posweight", False, True, True)):
            w, b = train_head(xp, labels, t0, scale, normalise, bias, pw)
            emit(figure=f"head_{name}_on_balanced_pretraining_corpus", images=len(xp),
                 val_mAP=map_pct(xv @ w.t() + b, yv), val_mAP_softmax=soft_pct(xv @ w.t() + b, yv))

        for lr in (5e-4, 5e-5):
            emit(figure="prompt_tuning_on_balanced_pretraining_corpus", lr=lr, epochs=3,
                 val_mAP_softmax_by_epoch=prompt_tune(backbone, ds.class_names, xp, labels, xv, yv, scale, lr, 3))

    with torch.no_grad():
        one = PromptCLIP(backbone, [ds.class_names[0]] * 200)
        one.prompt_learner.ctx.normal_(0, 0.05)
        reach = F.normalize(one.encode_text(normalize=False), dim=-1)
    emit(figure="effective_rank_class_prompts", value=effective_rank(t0), of=len(t0), dim=int(t0.shape[1]))
    emit(figure="effective_rank_one_class_200_random_contexts", value=effective_rank(reach), dim=int(t0.shape[1]))


if __name__ == "__main__":
    main()
