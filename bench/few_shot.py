"""The few-shot curve of the world's CLIP: CoOp with k labelled images per class against zero-shot.

What it measures (issue 14, item 1): on the default world (20 classes, world seed 0, as ``lmpt demo`` builds
it; reused from the cache), prompt tuning with k = 1, 2, 4, 8, 16 labelled images per class, scored by the
validation mAP (softmax-over-classes protocol, the demo's headline) minus the zero-shot validation mAP (same
protocol, same cached features, the ``run.templates`` prompts of the demo's zero-shot row: the 80-template
ensemble). OpenAI's CLIP RN50 loses about 1 point with 1 shot and gains most of its lead by 16 (CoOp).

The few-shot images.
    Fresh images drawn by the world's own generator (:func:`lmpt.world.generate.draw_extra_images`): the
    world's classes, looks and scenes with equal class weights, as its val/test splits are drawn, but from
    random streams of their own (``--pool-seed``). So none of them is an image the CLIP was pretrained on,
    nor a validation (or test, or train) image; the script also checks this, byte for byte, against the
    pretraining corpus and the train/val/test images, and stops if one matches. A pool of ``--pool`` images
    is drawn once (cached next to the world's features); each (k, seed) then picks its own k-shot set.
The k-shot set of a multi-label pool (:func:`sample_few_shot`).
    CoOp's "k images per class", C x k images in all: the classes in a random order, each takes k random pool
    images that show it and that no earlier class took. Every image keeps all its labels, so a class has at
    least k positives (more where it co-occurs with the classes that chose).
CoOp's protocol, as the world allows (Zhou et al., IJCV 2022, section 4.1, and its Dassl configs).
    lmpt's ``coop`` method: 16 context tokens initialised N(0, 0.02^2), class token at the end, class-specific
    contexts (lmpt's ``coop``, CoOp's CSC variant, as the issue's first measurement; ``--unified`` for CoOp's
    default shared context) and its plain classification loss, binary cross-entropy on CLIP's logits (CoOp's
    softmax cross-entropy needs one label per image; BCE is the multi-label form and is what ``coop`` trains
    with; no DB, no ASL, no CSE term). SGD, lr 0.002, momentum 0.9, weight decay 5e-4, batch 32 with
    Dassl's ``drop_last`` (a batch only when there are at least 32 images), a first warm-up epoch at a
    constant 1e-5, then cosine annealing to 0 over the remaining epochs; 50 epochs for 1 shot, 100 for 2 and
    4, 200 for 8 and 16 (CoOp's schedule for its data sets other than ImageNet); the last epoch is scored (no
    selection). The training step is lmpt's own (``PromptTrainer`` + ``make_step``); only the loop is here,
    for the warm-up and the schedule. Augmentation is the only difference: the world's cached features have
    a plain and a mirrored view of each image (one at random per step), CoOp also crops at random.
    Seeds (``--seeds``, default 1,2): each seeds the k-shot draw, the context initialisation and the batches.

    python bench/few_shot.py [--cache-dir DIR] [--seeds 1,2] [--epochs 50] [--unified] [--threads 1]

Prints one JSON line per run (and one on the pool), then, last, one JSON object:
``{"figure": "few_shot_curve", "zeroshot_val": Z, "gain": {"1": g1, ..., "16": g16}, "logit_scale": S}``
(mAP points, gains are means over seeds; S is the world CLIP's exp(logit_scale)). The world's features are
cached after the first run; then the text-encoder steps dominate: 7,100 with two seeds, under 3 minutes
with one thread on the project's shared, loaded 2-core machine (two threads: the same numbers, 7 times
slower there; bench/README.md). ``--epochs 50`` (CoOp's ImageNet schedule) needs 1,900 steps.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from lmpt.data.dataset import MultiLabelSplit  # noqa: E402
from lmpt.engine.train.builders import build_optimizer  # noqa: E402
from lmpt.engine.config import Config  # noqa: E402
from lmpt.engine.prepared import Prepared  # noqa: E402
from lmpt.engine.rundir.scoring import score_splits, logits_from_features  # noqa: E402
from lmpt.engine.train.prompt import PromptTrainer  # noqa: E402
from lmpt.engine.train.step import make_step  # noqa: E402
from lmpt.zeroshot import zeroshot_text_features  # noqa: E402

SHOTS = (1, 2, 4, 8, 16)
# CoOp's maximum epochs by shots (its data sets other than ImageNet, which uses 50 throughout).
COOP_EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
# CoOp's optimiser (Dassl defaults it keeps): SGD, lr 0.002, momentum 0.9, wd 5e-4, batch 32, 1 warm-up epoch at 1e-5.
COOP_OPTIM = {"name": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 32,
              "warmup_epochs": 1, "warmup_lr": 1e-5}


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def sample_few_shot(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Rows of a k-shot set of a multi-label pool ``labels [N, C]``: C x k distinct rows.

    The classes in a random order; each takes ``k`` random rows that show it and that no earlier class took.
    Raises ``ValueError`` when a class has fewer than ``k`` rows left.
    """
    labels = np.asarray(labels) > 0
    rng = np.random.default_rng([int(seed), int(k)])
    taken = np.zeros(len(labels), dtype=bool)
    rows = []
    for c in rng.permutation(labels.shape[1]):
        free = np.flatnonzero(labels[:, c] & ~taken)
        if len(free) < k:
            raise ValueError(f"class {c} has {len(free)} pool images left, {k} needed: draw a larger pool")
        pick = rng.choice(free, size=k, replace=False)
        taken[pick] = True
        rows.extend(int(r) for r in pick)
    return np.sort(np.asarray(rows, dtype=np.int64))


def coop_lr(epoch: int, epochs: int, lr: float, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """CoOp's learning rate in ``epoch`` (0-based): constant warm-up, then cosine annealing to 0."""
    if epoch < warmup_epochs:
        return warmup_lr
    t = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return 0.5 * lr * (1.0 + math.cos(math.pi * t))


def train_coop(cfg: Config, view: Prepared, epochs: int, optim: dict, device: torch.device) -> dict:
    """lmpt's prompt trainer for ``cfg.run.method`` on ``view.dataset.train``, with CoOp's loop; last epoch."""
    trainer = PromptTrainer(cfg, view, device)
    optimizer = build_optimizer(optim["name"], trainer.params, optim["lr"], optim["weight_decay"],
                                momentum=optim["momentum"])
    n, bs = len(view.dataset.train), int(optim["batch_size"])
    steps = n // bs if n >= bs else 1  # Dassl's drop_last, except for sets smaller than a batch
    size = min(bs, n)
    step = make_step(trainer, optimizer, {size}, cfg.run.cuda_graphs)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    trainer.train()
    losses = []
    for epoch in range(epochs):
        for g in optimizer.param_groups:
            g["lr"] = coop_lr(epoch, epochs, optim["lr"], optim["warmup_epochs"], optim["warmup_lr"])
        perm = torch.randperm(n, generator=gen).to(device)
        flips = torch.randint(0, 2, (n,), generator=gen).to(device)
        stats = torch.stack([step(perm[i * size:(i + 1) * size], flips[i * size:(i + 1) * size])
                             for i in range(steps)])
        losses.append(float(stats[:, 0].mean()))
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"non-finite loss at epoch {epoch + 1}")
    results = score_splits(view.dataset, trainer.logits, ("val", "test"), quiet=True)
    return {"val": results["val"], "test": results["test"], "steps": steps * epochs, "first_loss": losses[0],
            "last_loss": losses[-1]}


def zeroshot_scores(cfg: Config, prepared: Prepared) -> dict:
    """The demo's zero-shot row on the cached features (``run.templates`` prompts, matched protocol)."""
    text = zeroshot_text_features(prepared.backbone, prepared.class_names, cfg.run.templates)
    scale = prepared.backbone.logit_scale
    logits = {s: logits_from_features(prepared.features[s], text, scale) for s in ("val", "test")}
    return score_splits(prepared.dataset, logits.get, ("val", "test"), quiet=True)


def few_shot_curve(cfg: Config, prepared: Prepared, pool: MultiLabelSplit, pool_features: torch.Tensor,
                   shots: Sequence[int] = SHOTS, seeds: Sequence[int] = (1, 2),
                   epochs: Optional[dict[int, int]] = None, optim: Optional[dict] = None,
                   device: Optional[torch.device] = None, out: Callable[..., None] = emit) -> dict:
    """Train on k-shot sets of ``pool`` (features ``[N, 2, D]``: plain and mirrored) for every k and seed;
    score on ``prepared``'s val split against zero-shot. Calls ``out(**row)`` per run; returns the final figure.

    ``cfg`` names the method (its model and loss sections are used; ``optim`` replaces its optimiser with
    :data:`COOP_OPTIM`'s keys, ``epochs`` maps k to epochs, default :data:`COOP_EPOCHS`).
    """
    optim = {**COOP_OPTIM, **(optim or {})}
    epochs = {**COOP_EPOCHS, **(epochs or {})}
    device = device or torch.device("cpu")
    if prepared.features.get("val") is None or prepared.dataset.val is None:
        raise ValueError("the few-shot curve is scored on a validation split; this data set has none")
    zs = zeroshot_scores(cfg, prepared)
    zeroshot_val = 100 * zs["val"]["softmax"]["total"]
    gains: dict[str, list[float]] = {}
    for k in shots:
        for seed in seeds:
            t0 = time.perf_counter()
            rows = sample_few_shot(pool.labels, k, seed)
            train = pool.subset(rows, name="train")
            view = Prepared(dataset=replace(prepared.dataset, train=train), backbone=prepared.backbone,
                            features={"train": pool_features[rows], "val": prepared.features["val"],
                                      "test": prepared.features["test"]})
            run_cfg = cfg.copy()
            run_cfg.run.seed = int(seed)
            res = train_coop(run_cfg, view, epochs[k], optim, device)
            val = 100 * res["val"]["softmax"]["total"]
            gains.setdefault(str(k), []).append(val - zeroshot_val)
            out(figure="few_shot_run", shots=k, seed=seed, images=len(rows), epochs=epochs[k], steps=res["steps"],
                val_mAP_softmax=round(val, 2), gain=round(val - zeroshot_val, 2),
                val_mAP_sigmoid=round(100 * res["val"]["sigmoid"]["total"], 2),
                test_mAP_softmax=round(100 * res["test"]["softmax"]["total"], 2),
                loss_first_epoch=round(res["first_loss"], 4), loss_last_epoch=round(res["last_loss"], 4),
                wall_s=round(time.perf_counter() - t0, 1))
    out(figure="few_shot_summary", method=cfg.run.method, class_specific=bool(cfg.model.class_specific),
        seeds=list(seeds), zeroshot_test=round(100 * zs["test"]["softmax"]["total"], 2),
        gain_std={k: round(float(np.std(v)), 2) for k, v in gains.items()})
    scale = prepared.backbone.logit_scale
    return {"figure": "few_shot_curve", "zeroshot_val": round(zeroshot_val, 2),
            "gain": {k: round(float(np.mean(v)), 2) for k, v in gains.items()}, "logit_scale": round(scale, 2)}


# ------------------------------------------------------------------ the default world and its fresh pool


def _image_hashes(arrays) -> set[str]:
    return {hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arrays}


def _file_hashes(paths: Sequence[str]) -> set[str]:
    """Hashes of the decoded RGB pixels of image files."""
    from PIL import Image

    out = set()
    for p in paths:
        with Image.open(p) as im:
            out |= _image_hashes([np.asarray(im.convert("RGB"))])
    return out


def world_pool(world, n: int, draw_seed: int, cache_dir: Optional[str]) -> Path:
    """The manifest of ``n`` fresh images of ``world`` (drawn once, then cached beside the world)."""
    from lmpt.cache import resolve_cache_dir
    from lmpt.world.generate import draw_extra_images

    meta = world.metadata
    folder = resolve_cache_dir(cache_dir) / "few-shot-pool" / f"{Path(world.root).name}-n{n}-d{draw_seed}"
    manifest = folder / f"extra-{draw_seed}.jsonl"
    if not manifest.is_file():
        tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
        try:
            draw_extra_images(tmp, n, num_classes=meta["num_classes"], seed=meta["seed"], draw_seed=draw_seed)
            if folder.exists():
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def check_disjoint(world, pool: MultiLabelSplit, dataset) -> dict[str, int]:
    """How many pool images equal (byte for byte) an image of the pretraining corpus or of train/val/test."""
    fresh = _file_hashes(pool.paths)
    corpus = np.load(Path(world.root) / "pretrain_images.npy", mmap_mode="r")
    overlap = {"pretrain": len(fresh & _image_hashes(corpus[i] for i in range(len(corpus))))}
    for name in ("train", "val", "test"):
        overlap[name] = len(fresh & _file_hashes(getattr(dataset, name).paths))
    overlap["duplicates_in_pool"] = len(pool) - len(fresh)
    return overlap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=None, help="lmpt cache holding the world (default: lmpt's cache)")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--shots", default=",".join(map(str, SHOTS)))
    ap.add_argument("--pool", type=int, default=2000, help="fresh images drawn once for the k-shot sets")
    ap.add_argument("--pool-seed", type=int, default=1)
    ap.add_argument("--unified", action="store_true", help="one context shared by the classes (CoOp's default)")
    ap.add_argument("--epochs", type=int, default=None, help="the same epochs for every k (default CoOp's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest for this tiny text tower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()

    from lmpt.data.manifest import load_manifest_split
    from lmpt.engine.config import load_config
    from lmpt.engine.prepared import prepare, split_features
    from lmpt.engine.studies.demo import build_demo_world, world_overrides

    world = build_demo_world(20, 0, cache_dir=args.cache_dir, progress=False)
    overrides = world_overrides(world) + ["run.method=coop", "run.device=cpu", "run.progress=false",
                                          f"model.class_specific={not args.unified}"]
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    cfg = load_config("world", overrides)
    prepared = prepare(cfg)
    pool = load_manifest_split(world_pool(world, args.pool, args.pool_seed, args.cache_dir), world.classes_file,
                               name="pool")
    overlap = check_disjoint(world, pool, prepared.dataset)
    emit(figure="few_shot_pool", images=len(pool), pool_seed=args.pool_seed,
         positives_per_class_min=int(pool.class_counts.min()), overlap=overlap,
         setup_s=round(time.perf_counter() - t0, 1))
    if any(overlap.values()):
        raise SystemExit(f"the few-shot pool shares images with the world's other images: {overlap}")
    pool_features = split_features(cfg, prepared.backbone, pool, torch.device("cpu"), flips=True)
    shots = [int(s) for s in args.shots.split(",") if s.strip()]
    epochs = {k: args.epochs for k in shots} if args.epochs else None
    curve = few_shot_curve(cfg, prepared, pool, pool_features, shots=shots,
                           seeds=[int(s) for s in args.seeds.split(",") if s.strip()], epochs=epochs)
    emit(figure="few_shot_wall", wall_s=round(time.perf_counter() - t0, 1), threads=args.threads)
    print(json.dumps(curve), flush=True)


if __name__ == "__main__":
    main()
