"""GPU check at VOC-LT scale: feature extraction, training step, a full 50-epoch run, evaluation.

Writes JPEG files at VOC-LT scale (1,142 train + 4,952 test, 500x375, labels and captions from the
official VOC-LT lists), then for each backbone (random-init RN50 and ViT-B/16 at 224 px):
  1. a full run from a cold feature cache: extraction (decoding included) + 50 epochs + evaluation;
  2. the training step time, replayed as a CUDA graph and eager (median over many steps);
  3. the evaluation time (text features once + scoring the cached test features + AP).
Prints one JSON line per figure. Sized to finish in a few minutes on one H100/H200; runs on the CPU
too (use --scale to shrink the data set there).

    python bench/gpu_check.py [--backbones RN50,ViT-B-16] [--scale 1.0] [--device cuda] [--epochs 50]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _write_jpegs(job: tuple[list[str], int]) -> None:
    from PIL import Image, ImageDraw

    paths, seed = job
    rng = np.random.default_rng(seed)
    for path in paths:
        base = rng.integers(0, 255, 3)
        grad = np.linspace(0, 1, 500)[None, :, None] * rng.integers(-120, 120, 3)
        arr = np.clip(base + grad + rng.normal(0, 12, (375, 500, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.integers(0, 400), rng.integers(0, 280)
            draw.ellipse([x, y, x + rng.integers(30, 200), y + rng.integers(30, 150)], fill=tuple(rng.integers(0, 255, 3)))
        im.save(path, quality=90)


def build_data(root: Path, scale: float, workers: int) -> dict:
    """JPEGs and JSONL manifests with the VOC-LT labels and captions (the images are synthetic)."""
    from importlib import resources

    res = resources.files("lmpt.data") / "resources" / "voc_lt"
    names = [line.split()[0] for line in (res / "voc_labels.txt").read_text().splitlines() if line.strip()]
    train = [line.split() for line in (res / "voc_lt_train.txt").read_text().splitlines() if line.strip()]
    test = [line.split() for line in (res / "voc_lt_test.txt").read_text().splitlines() if line.strip()]
    captions = {}
    for line in (res / "voc_lt_captions.txt").read_text().splitlines():
        if line.strip():
            path, _, text = line.partition(" ")
            captions[path] = text
    rng = np.random.default_rng(0)
    if scale < 1:  # a random subset that still holds every class in train
        keep = {next(i for i, row in enumerate(train) if str(c) in row[1:]) for c in range(len(names))}
        keep |= set(rng.choice(len(train), max(40, int(len(train) * scale)), replace=False).tolist())
        train = [train[i] for i in sorted(keep)]
        test = [test[i] for i in sorted(rng.choice(len(test), max(40, int(len(test) * scale)), replace=False))]
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    out = {"classes": root / "classes.txt"}
    all_paths = []
    for split, rows in (("train", train), ("test", test)):
        lines = []
        for i, row in enumerate(rows):
            rel = f"img/{split}{i:05d}.jpg"
            all_paths.append(str(root / rel))
            rec = {"image": rel, "labels": [names[int(c)] for c in row[1:]]}
            if split == "train":
                rec["caption"] = captions.get(row[0], "")
            lines.append(json.dumps(rec))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        out[split] = root / f"{split}.jsonl"
    t0 = time.perf_counter()
    chunks = [all_paths[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_jpegs, [(c, i) for i, c in enumerate(chunks)]))
    emit(figure="jpeg_generation_s", value=round(time.perf_counter() - t0, 2), images=len(all_paths))
    return out


def step_times(trainer, optimizer, steps: int, graphs: bool) -> tuple[list[float], float]:
    import torch

    from lmpt.engine.step import make_step

    n = trainer.train_feats.shape[0]
    bs = trainer.cfg.optim.batch_size
    step = make_step(trainer, optimizer, {bs}, "on" if graphs else "off")
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, n, (bs,), generator=gen).to(trainer.device),
                torch.randint(0, 2, (bs,), generator=gen).to(trainer.device)) for _ in range(steps + 10)]
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for idx, flip in batches[:10]:
        step(idx, flip)
    sync()
    times = []
    for idx, flip in batches[10:]:
        t0 = time.perf_counter()
        step(idx, flip)
        sync()
        times.append(time.perf_counter() - t0)
    # throughput: many steps back to back, one sync (what a run sees)
    t0 = time.perf_counter()
    for idx, flip in batches[10:]:
        step(idx, flip)
    sync()
    return times, (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="RN50,ViT-B-16")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the VOC-LT lists to use")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=200, help="steps timed for the step figure")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from lmpt.engine.config import load_config
    from lmpt.engine.data import prepare
    from lmpt.engine.prompt_task import PromptTrainer
    from lmpt.engine.run import run as train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workers = args.workers or max(1, (os.cpu_count() or 2) - 1)
    device = torch.device(args.device)
    emit(figure="environment", torch=torch.__version__, device=str(device),
         gpu=torch.cuda.get_device_name(0) if device.type == "cuda" else None, cpus=os.cpu_count())
    work = Path(args.work or tempfile.mkdtemp(prefix="lmpt-gpu-"))
    data = build_data(work / "data", args.scale, workers)
    for name in args.backbones.split(","):
        base = [
            "data.dataset=manifest", f"data.train={data['train']}", f"data.test={data['test']}", f"data.classes={data['classes']}",
            f"data.cache_dir={work / ('cache-' + name)}", f"data.num_workers={workers}", "data.feature_batch_size=256",
            f"model.backbone={name}", f"optim.epochs={args.epochs}", f"run.device={args.device}",
            f"run.output_dir={work / 'runs'}", "run.progress=false",
        ]
        # 1. full run, cold cache: extraction + 50 epochs + evaluation
        cfg = load_config(None, base + [f"run.name={name}-full"])
        t0 = time.perf_counter()
        result = train(cfg)
        total = time.perf_counter() - t0
        timing = result.metrics["timing"]
        n_images = result.metrics["dataset"]["train_images"] + result.metrics["dataset"]["val_images"] + \
            result.metrics["dataset"]["test_images"]
        emit(figure="feature_extraction", backbone=name, images=n_images, seconds=round(timing["prepare_s"], 2),
             images_per_s=round(n_images / timing["prepare_s"], 1),
             note="decode+preprocess+encode (train: plain and flipped in one pass), backbone load included")
        emit(figure="full_run_s", backbone=name, value=round(total, 2), epochs=args.epochs,
             train_s=round(timing["train_s"], 2), eval_s=round(timing["eval_s"], 2),
             test_map=round(result.metrics["headline"]["total"], 4), note="random-init CLIP: mAP is not meaningful")
        # 2. training step: CUDA graph vs eager
        cfg = load_config(None, base + [f"run.name={name}-steps"])
        prepared = prepare(cfg, device)
        for graphs in ((True, False) if device.type == "cuda" else (False,)):
            trainer = PromptTrainer(cfg, prepared, device)
            opt = torch.optim.SGD(trainer.params, lr=cfg.optim.lr, momentum=0.9, weight_decay=1e-4)
            try:
                times, per_step = step_times(trainer, opt, args.steps, graphs)
            except Exception as exc:  # report and go on: the other figures still count
                emit(figure="train_step_ms", backbone=name, cuda_graph=graphs, error=f"{type(exc).__name__}: {exc}")
                continue
            emit(figure="train_step_ms", backbone=name, cuda_graph=graphs, classes=trainer.model.prompt_learner.num_classes,
                 batch=cfg.optim.batch_size, median_ms=round(1000 * statistics.median(times), 3),
                 back_to_back_ms=round(1000 * per_step, 3), cse=trainer.uses_cse)
        # 3. evaluation: text features once, score the cached test features, AP
        from lmpt.engine.evaluate import evaluate_splits

        trainer = PromptTrainer(cfg, prepared, device)
        evaluate_splits(prepared.dataset, trainer.logits, ("test",))
        t0 = time.perf_counter()
        evaluate_splits(prepared.dataset, trainer.logits, ("test",))
        emit(figure="evaluation_s", backbone=name, test_images=len(prepared.dataset.test),
             value=round(time.perf_counter() - t0, 3))
        del prepared, trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
