"""Pretrain the world's small CLIP on its class-balanced image-caption corpus.

The stand-in for web-scale pretraining: an open_clip ``CLIP`` (``lmpt-world-tiny``: ViT at
64 px, CLIP text transformer with causal mask and EOT pooling, CLIP BPE tokenizer at context
length 32) trained from scratch with CLIP's symmetric contrastive loss, AdamW and a cosine
schedule, for a fixed number of steps (deterministic; about 5 minutes on 2 CPU threads), with CLIP's temperature
scheduled from its initial 1/0.07 to its final 100.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..backbone import quiet_open_clip
from ..io import atomic_write_bytes, atomic_write_json, safetensors_bytes
from ..metrics import average_precision
from ..progress import progress as progress_bar
from .clip import IMAGE_MEAN, IMAGE_STD, WORLD_MODEL_NAME, get_world_tokenizer, register_world_models

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RECIPE", "pretrain_world_clip", "zero_shot_map",
           "encode_images", "load_split_images", "IMAGE_MEAN", "IMAGE_STD"]

PROMPT = "a photo of a {}."


# Hyper-parameters of the pretraining run (part of the weights' cache key).
DEFAULT_RECIPE: dict[str, Any] = dict(
    steps=400,
    batch_size=128,
    lr=2e-3,
    weight_decay=0.1,
    warmup_steps=50,
    betas=(0.9, 0.98),
    eps=1e-6,
    hflip=True,
    # The temperature: CLIP learns it and ends at its clamp, 100. Learned here it stays near its start (13.6 after
    # 300 steps; captions that seldom single out their image, bench/caption_ambiguity.py), so it is scheduled:
    # from CLIP's initial 1/0.07 up to CLIP's final 100, geometrically over all steps (bench/README.md, issue 14).
    logit_scale=100.0,
    logit_scale_start=1 / 0.07,
)


def load_split_images(world_dir: Union[str, Path], split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images ``[N, 64, 64, 3]`` uint8, labels ``[N, C]`` and class names of a world split."""
    from ..data.manifest import load_manifest_split

    world_dir = Path(world_dir)
    classes = (world_dir / "classes.txt").read_text(encoding="utf-8").split()
    data = load_manifest_split(world_dir / f"{split}.jsonl", classes, name=split)
    imgs = []
    for path in data.paths:
        with Image.open(path) as im:
            imgs.append(np.asarray(im.convert("RGB")))
    return np.stack(imgs), data.labels, classes


def _to_input(batch_u8: torch.Tensor) -> torch.Tensor:
    x = batch_u8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def encode_images(model, images_u8: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image features of uint8 ``[N, H, W, 3]`` images."""
    model.eval()
    feats = []
    for i in range(0, len(images_u8), batch_size):
        x = _to_input(torch.from_numpy(np.ascontiguousarray(images_u8[i:i + batch_size])))
        feats.append(F.normalize(model.encode_image(x), dim=-1))
    return torch.cat(feats) if feats else torch.zeros(0, model.text_projection.shape[1])


@torch.no_grad()
def encode_prompts(model, tokenizer, class_names: Sequence[str], template: str = PROMPT) -> torch.Tensor:
    model.eval()
    tokens = tokenizer([template.format(c) for c in class_names])
    return F.normalize(model.encode_text(tokens), dim=-1)


def zero_shot_map(model, tokenizer, images_u8: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  template: str = PROMPT) -> dict:
    """Zero-shot multi-label mAP: cosine of each image with ``template.format(name)`` per class."""
    img = encode_images(model, images_u8)
    txt = encode_prompts(model, tokenizer, class_names, template)
    ap = average_precision((img @ txt.T).numpy(), labels)
    return {"mAP": float(np.nanmean(ap)), "AP": [None if np.isnan(a) else round(float(a), 4) for a in ap]}


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def logit_scale_at(step: int, total: int, recipe: dict) -> Optional[float]:
    """The fixed logit scale of ``step`` under ``recipe`` (None: the scale is learned, as CLIP's).

    ``recipe["logit_scale"]`` fixes it; with ``recipe["logit_scale_start"]`` it rises geometrically from that
    value (exclusive) to ``logit_scale`` over the first ``logit_scale_ramp`` steps (default: all of them), then stays.
    """
    end = recipe.get("logit_scale")
    if end is None:
        return None
    start = recipe.get("logit_scale_start")
    if start is None:
        return float(end)
    ramp = int(recipe.get("logit_scale_ramp") or total)
    t = min(1.0, (step + 1) / max(1, ramp))  # reaches logit_scale at step ramp - 1
    return float(math.exp(math.log(float(start)) + t * (math.log(float(end)) - math.log(float(start)))))


def pretrain_world_clip(world_dir: Union[str, Path], out_path: Union[str, Path], *, steps: Optional[int] = None,
                        seconds_budget: Optional[float] = None, seed: int = 0, recipe: Optional[dict] = None,
                        model_name: Optional[str] = None, threads: int = 2, eval_split: Optional[str] = "val",
                        progress: bool = True, callback: Optional[Callable] = None,
                        callback_every: int = 100) -> dict:
    """Train the small CLIP on ``world_dir``'s pretraining corpus; save its state_dict to ``out_path``.

    Args:
        steps: optimizer steps (default ``recipe["steps"]``); the run is deterministic for a
            given seed and thread count.
        seconds_budget: optional wall-clock cap: training stops early when it runs out (the
            cosine schedule still spans ``steps``). Off by default, since it makes the weights
            depend on the machine.
        recipe: overrides of :data:`DEFAULT_RECIPE`.
        threads: ``torch.set_num_threads`` during training (restored afterwards).
        eval_split: split for the zero-shot check after training (None: skip).
        callback: called as ``callback(step, model)`` every ``callback_every`` steps (for
            experiments; the model is in train mode again afterwards).

    Returns metrics: ``steps``, ``final_loss`` (mean of the last 20 steps), ``wall_s``,
    ``zero_shot_val_mAP`` (when ``eval_split`` is "val"), ``recipe``. They are also written
    next to the weights as ``<out_path stem>.json``.
    """
    import open_clip

    t0 = time.perf_counter()
    world_dir = Path(world_dir)
    out_path = Path(out_path)
    rec = dict(DEFAULT_RECIPE)
    rec.update(recipe or {})
    total_steps = int(rec["steps"] if steps is None else steps)
    rec["steps"] = total_steps
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        register_world_models()
        name = model_name or WORLD_MODEL_NAME
        torch.manual_seed(seed)
        with quiet_open_clip():  # random init is the point here
            model = open_clip.create_model(name, pretrained=None)
        if rec.get("logit_scale") is not None:  # a scheduled temperature instead of a learned one
            model.logit_scale.requires_grad_(False)
        tokenizer = get_world_tokenizer()

        images = np.load(world_dir / "pretrain_images.npy", mmap_mode="r")
        captions = json.loads((world_dir / "pretrain_captions.json").read_text(encoding="utf-8"))
        if len(captions) != len(images) or len(images) == 0:
            raise ValueError(f"{world_dir}: pretraining corpus has {len(images)} images and {len(captions)} captions")
        images_t = torch.from_numpy(np.array(images))  # a copy in memory: fast random batches
        tokens = tokenizer(captions)
        n = len(captions)
        bs = min(int(rec["batch_size"]), n)
        t_data = time.perf_counter()

        decay, no_decay = [], []
        for pname, p in model.named_parameters():
            (no_decay if p.ndim < 2 or "logit_scale" in pname or "embedding" in pname else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(rec["weight_decay"])},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=float(rec["lr"]), betas=tuple(rec["betas"]), eps=float(rec["eps"]))
        gen = torch.Generator().manual_seed(int(seed) + 1)
        model.train()
        losses: list[float] = []
        done = 0
        perm = torch.randperm(n, generator=gen)
        pos = 0
        bar = progress_bar(total_steps, "world: pretraining CLIP", unit="step", enabled=progress, every=50)
        try:
            for step in range(total_steps):
                if seconds_budget is not None and time.perf_counter() - t0 > seconds_budget:
                    logger.warning("world: pretraining stopped at step %d of %d (%.0fs budget)", step, total_steps,
                                   seconds_budget)
                    break
                if pos + bs > n:
                    perm = torch.randperm(n, generator=gen)
                    pos = 0
                idx = perm[pos:pos + bs]
                pos += bs
                x = images_t[idx]
                if rec.get("hflip", True):
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
                x = _to_input(x)
                fixed = logit_scale_at(step, total_steps, rec)
                if fixed is not None:
                    with torch.no_grad():
                        model.logit_scale.fill_(math.log(fixed))
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, total_steps, float(rec["lr"]), int(rec["warmup_steps"]))
                img_f, txt_f, scale = model(x, tokens[idx])[:3]
                logits = scale * img_f @ txt_f.T
                target = torch.arange(len(idx))
                loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                losses.append(loss.item())
                done = step + 1
                bar.update(1)
                if done % 25 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-25:]):.3f}")
                if callback is not None and done % callback_every == 0:
                    callback(done, model)
                    model.train()
        finally:
            bar.close()
        t_train = time.perf_counter()

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(out_path, safetensors_bytes(state, {"model": name, "steps": str(done)}))

        metrics = {
            "model": name,
            "steps": done,
            "final_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
            "train_s": round(t_train - t_data, 2),
            "data_s": round(t_data - t0, 2),
            "recipe": rec,
            "seed": int(seed),
            "threads": int(threads),
            "corpus_images": n,
            "logit_scale": round(float(model.logit_scale.detach().exp()), 4),
        }
        if eval_split:
            imgs, labels, classes = load_split_images(world_dir, eval_split)
            zs = zero_shot_map(model, tokenizer, imgs, labels, classes)
            metrics[f"zero_shot_{eval_split}_mAP"] = round(zs["mAP"], 4)
            metrics[f"zero_shot_{eval_split}_AP"] = zs["AP"]
        metrics["wall_s"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(out_path.with_suffix(".json"), metrics)
        logger.info("world: pretrained %s for %d steps in %.1fs (loss %.3f%s)", name, done, metrics["wall_s"],
                    metrics["final_loss"],
                    f", zero-shot {eval_split} mAP {metrics.get(f'zero_shot_{eval_split}_mAP', 0):.3f}"
                    if eval_split else "")
        return metrics
    finally:
        torch.set_num_threads(prev_threads)
