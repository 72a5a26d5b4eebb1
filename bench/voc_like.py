"""A VOC-LT-shaped data set of synthetic JPEGs, for timing (bench/speed.py, bench/gpu_check.py).

Labels and captions come from the official VOC-LT lists shipped with lmpt (1,142 train + 4,952 test
images, 20 classes); the images are synthetic 500x375 JPEGs (VOC's typical size, quality 90, about
50-60 KB: a colour gradient, noise and a few ellipses). ``unique=N`` writes only N distinct files and
points the other rows at them through symlinks (every row keeps its own file name), for CPU timing runs
that decode only a subset anyway.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

WIDTH, HEIGHT = 500, 375


def write_jpegs(job: tuple[list[str], int, int, int]) -> None:
    from PIL import Image, ImageDraw

    paths, seed, width, height = job
    rng = np.random.default_rng(seed)
    for path in paths:
        base = rng.integers(0, 255, 3)
        grad = np.linspace(0, 1, width)[None, :, None] * rng.integers(-120, 120, 3)
        arr = np.clip(base + grad + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.integers(0, int(width * 0.8)), rng.integers(0, int(height * 0.75))
            draw.ellipse([x, y, x + rng.integers(width // 16, width // 2), y + rng.integers(height // 12, height // 2)],
                         fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        im.save(path, quality=90)


def voc_lt_lists() -> tuple[list[str], list[list[str]], list[list[str]], dict[str, str]]:
    res = resources.files("lmpt.data") / "resources" / "voc_lt"
    names = [line.split()[0] for line in (res / "voc_labels.txt").read_text().splitlines() if line.strip()]
    train = [line.split() for line in (res / "voc_lt_train.txt").read_text().splitlines() if line.strip()]
    test = [line.split() for line in (res / "voc_lt_test.txt").read_text().splitlines() if line.strip()]
    captions = {}
    for line in (res / "voc_lt_captions.txt").read_text().splitlines():
        if line.strip():
            path, _, text = line.partition(" ")
            captions[path] = text
    return names, train, test, captions


def build_data(root: Path, scale: float = 1.0, workers: int = 1, unique: Optional[int] = None,
               size: tuple[int, int] = (WIDTH, HEIGHT)) -> dict:
    """JPEGs and JSONL manifests under ``root``; returns the manifest paths and what was written."""
    names, train, test, captions = voc_lt_lists()
    rng = np.random.default_rng(0)
    if scale < 1:  # a random subset that still holds every class in train
        keep = {next(i for i, row in enumerate(train) if str(c) in row[1:]) for c in range(len(names))}
        keep |= set(rng.choice(len(train), max(40, int(len(train) * scale)), replace=False).tolist())
        train = [train[i] for i in sorted(keep)]
        test = [test[i] for i in sorted(rng.choice(len(test), max(40, int(len(test) * scale)), replace=False))]
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    out: dict = {"classes": root / "classes.txt", "train_rows": len(train), "test_rows": len(test)}
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
    # distinct files: the first `unique` rows of train and of test (the rows a timing subset reads first)
    if unique is None or unique >= len(all_paths):
        real = all_paths
    else:
        half = max(1, unique // 2)
        real = all_paths[:half] + all_paths[len(train):len(train) + unique - half]
    t0 = time.perf_counter()
    chunks = [real[i::workers] for i in range(workers)]
    jobs = [(c, i, size[0], size[1]) for i, c in enumerate(chunks)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(write_jpegs, jobs))
    else:
        for job in jobs:
            write_jpegs(job)
    real_set = set(real)
    for k, path in enumerate(p for p in all_paths if p not in real_set):
        os.symlink(real[k % len(real)], path)
    out["jpeg_generation_s"] = time.perf_counter() - t0
    out["distinct_files"] = len(real)
    out["mean_file_kb"] = float(np.mean([os.path.getsize(p) for p in real[:50]]) / 1024)
    return out
