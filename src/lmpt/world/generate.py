"""Generate the offline benchmark world: long-tailed multi-label images, captions, a CLIP corpus.

Layout of a generated world folder::

    images/train/000000.png ...      64 x 64 RGB PNGs (also images/val, images/test)
    train.jsonl val.jsonl test.jsonl {"image": "images/train/000000.png", "labels": [...],
                                      "caption": "..."}   (caption only in train)
    classes.txt                      one class name a line, in class-index order
    pretrain_images.npy              uint8 [N, 64, 64, 3]: the CLIP pretraining corpus (own images)
    pretrain_captions.json           N captions
    pretrain_labels.npy              uint8 [N, C] (for analysis only; CLIP never sees labels)
    world.json                       metadata; written last: its presence marks a complete world

Everything is a function of ``(GENERATOR_VERSION, num_classes, seed, scale, sizes)``: each
image draws from its own random stream ``(seed, split, index)``, so the bytes do not depend on
the number of worker processes.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from ..data.dataset import MultiLabelSplit, class_groups
from ..data.manifest import write_manifest
from ..io import atomic_path, atomic_write_json, atomic_write_text
from ..progress import progress as progress_bar
from .captions import make_caption, web_prefix
from .labels import LabelSet, label_matrix, lt_profile, make_spec, sample_balanced, sample_split
from .render import IMAGE_SIZE, assign_looks, render_image
from .vocab import PAIRS, SCENES

logger = logging.getLogger(__name__)

__all__ = ["GENERATOR_VERSION", "default_sizes", "generate_world", "draw_extra_images", "is_complete_world", "MARKER"]

GENERATOR_VERSION = 3
# Per-class probability that a pretraining caption calls a mentioned object by its name (drawn
# per class and world from this range): web captions name things unevenly.
NAMING_RANGE = (0.4, 1.0)
# Per-class probability that a pretraining caption calls an object by the name of another class
# of its scene (its "confuser", drawn per class and world).
CONFUSION_RANGE = (0.4, 0.9)
# Probability that a pretraining caption also names an absent partner of a present class.
HALLUCINATION = 0.25
# Probability that a pretraining caption starts with alt-text clutter (see captions.web_prefix).
WEB_PREFIX = 0.6
MARKER = "world.json"
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "pretrain": 4, "extra": 5}  # "extra": draw_extra_images
_SCENE_BY_NAME = {s.name: s for s in SCENES}


def default_sizes(num_classes: int) -> dict[str, int]:
    """Images in val, test and the pretraining corpus (the train size follows the LT profile).

    20 classes: val 500, test 1500, pretrain 12000; 80 classes: val 800, test 2400,
    pretrain 13800; in between and beyond, scaled with ``(num_classes / 20) ** 0.34`` (val, test)
    and ``** 0.1`` (pretrain: the CLIP sees a fixed number of samples whatever the class count).
    """
    r = max(num_classes, 2) / 20.0
    return {
        "val": int(round(500 * r ** 0.34, -1)),
        "test": int(round(1500 * r ** 0.34, -1)),
        "pretrain": int(round(12000 * r ** 0.1, -2)),
    }


def is_complete_world(world_dir: Union[str, Path]) -> bool:
    """True when ``world_dir`` holds a finished world (its marker, ``world.json``, is written last)."""
    path = Path(world_dir) / MARKER
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(meta.get("complete"))


def _image_rng(seed: int, split: str, index: int, stream: Optional[int] = None) -> np.random.Generator:
    key = [int(seed), _SPLIT_CODES[split], int(index), GENERATOR_VERSION]
    return np.random.default_rng(key if stream is None else key + [int(stream)])


def _render_chunk(task: tuple[str, int, list, dict]) -> tuple[Optional[np.ndarray], list[Optional[str]]]:
    """Worker: draw images ``start..`` of one split; PNGs for splits, an array for the corpus.

    ``ctx`` holds what every chunk shares: classes, looks, seed, out_dir, and the pretraining
    captioner's noise (naming rates, confusions, partners).
    """
    split, start, sets, ctx = task
    classes, partners = ctx["classes"], ctx["partners"]
    captions: list[Optional[str]] = []
    arr = np.empty((len(sets), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8) if split == "pretrain" else None
    for k, (scene, objects) in enumerate(sets):
        idx = start + k
        rng = _image_rng(ctx["seed"], split, idx, ctx.get("stream"))
        img, records = render_image(ctx["looks"], _SCENE_BY_NAME[scene], [classes[o] for o in objects], rng)
        if split == "train":
            captions.append(make_caption(records, scene, rng))
        elif split == "pretrain":
            absent = sorted({q for o in objects for q in partners.get(o, ()) if q not in objects})
            extra = []
            if absent and rng.random() < HALLUCINATION:
                extra = [classes[absent[rng.integers(len(absent))]]]
            text = make_caption(records, scene, rng, naming=ctx["naming"], confusion=ctx["confusion"],
                                hallucinate=extra)
            if rng.random() < WEB_PREFIX:
                text = web_prefix(rng) + text
            captions.append(text)
        else:
            captions.append(None)
        if arr is not None:
            arr[k] = img
        else:
            path = os.path.join(ctx["out_dir"], "images", ctx.get("folder", split), f"{idx:06d}.png")
            Image.fromarray(img).save(path, compress_level=1)
    return arr, captions


def _render_all(jobs: dict[str, list[LabelSet]], ctx: dict, workers: int,
                progress: bool) -> dict[str, tuple[Optional[np.ndarray], list[Optional[str]]]]:
    chunk = 250
    tasks = []
    for split, sets in jobs.items():
        if split != "pretrain":
            (Path(ctx["out_dir"]) / "images" / ctx.get("folder", split)).mkdir(parents=True, exist_ok=True)
        for start in range(0, len(sets), chunk):
            part = [(s.scene, list(s.objects)) for s in sets[start:start + chunk]]
            tasks.append((split, start, part, ctx))
    total = sum(len(s) for s in jobs.values())
    results: dict[str, list] = {split: [] for split in jobs}
    bar = progress_bar(total, "world: drawing images", unit="img", enabled=progress)
    try:
        if workers > 1:
            # fork (as torch's DataLoader does): workers only use numpy and PIL, and unlike spawn
            # it works from scripts without an ``if __name__ == "__main__"`` guard
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("fork" if "fork" in methods else "spawn")
            with ctx.Pool(workers) as pool:
                for task, res in zip(tasks, pool.imap(_render_chunk, tasks)):
                    results[task[0]].append(res)
                    bar.update(len(task[2]))
        else:
            for task in tasks:
                results[task[0]].append(_render_chunk(task))
                bar.update(len(task[2]))
    finally:
        bar.close()
    out = {}
    for split, parts in results.items():
        caps = [c for _, cs in parts for c in cs]
        arrs = [a for a, _ in parts if a is not None]
        out[split] = (np.concatenate(arrs) if arrs else None, caps)
    return out


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        n = os.cpu_count() or 1
    return max(1, min(2, n))


def _streams(num_classes: int, seed: int) -> list[np.random.Generator]:
    """The world's random streams: class order, train, val, test, pretraining labels, caption noise."""
    ss = np.random.SeedSequence([int(seed), int(num_classes), GENERATOR_VERSION])
    return [np.random.default_rng(s) for s in ss.spawn(6)]


def train_targets(num_classes: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Training images wanted per class: the long-tailed profile, assigned to classes in the world seed's order."""
    target = np.empty(num_classes, dtype=np.int64)
    target[_streams(num_classes, seed)[0].permutation(num_classes)] = lt_profile(num_classes, scale)
    return target


def generate_world(out_dir: Union[str, Path], num_classes: int = 20, seed: int = 0, *, scale: float = 1.0,
                   sizes: Optional[dict] = None, workers: Optional[int] = None, progress: bool = True,
                   naming_range: Optional[tuple[float, float]] = None,
                   confusion_range: Optional[tuple[float, float]] = None) -> dict:
    """Write a world of ``num_classes`` classes into ``out_dir`` (created; should be empty).

    Args:
        scale: multiplies the long-tailed train counts (tests use small worlds).
        sizes: overrides of :func:`default_sizes` (``val``, ``test``, ``pretrain`` image counts).
        workers: processes drawing images (default: up to 2); the output does not depend on it.
        progress: progress on stderr (a bar on a terminal, plain lines otherwise).
        naming_range, confusion_range: experiment knobs for the pretraining captions' name
            noise (default :data:`NAMING_RANGE`, :data:`CONFUSION_RANGE`); not part of
            :func:`lmpt.world.build_world`'s cache key, which always uses the defaults.

    Returns the metadata also written to ``world.json``.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = default_sizes(num_classes)
    if sizes:
        unknown = set(sizes) - set(size)
        if unknown:
            raise ValueError(f"unknown size keys {sorted(unknown)}; known: {sorted(size)}")
        size.update({k: int(v) for k, v in sizes.items()})
    workers = _default_workers() if workers is None else max(1, int(workers))

    spec = make_spec(num_classes)
    classes = spec.classes
    looks = assign_looks(classes)
    _, r_train, r_val, r_test, r_pre, r_name = _streams(num_classes, seed)
    naming_range = NAMING_RANGE if naming_range is None else tuple(naming_range)
    confusion_range = CONFUSION_RANGE if confusion_range is None else tuple(confusion_range)
    lo, hi = naming_range
    naming = {c: round(float(q), 3) for c, q in zip(classes, r_name.uniform(lo, hi, num_classes))}
    lo, hi = confusion_range
    confusion = {}
    for i, c in enumerate(classes):
        mates = sorted({j for idx in spec.scenes.values() if i in idx for j in idx if j != i})
        if not mates:
            mates = [j for j in range(num_classes) if j != i]
        confusion[c] = (classes[int(mates[r_name.integers(len(mates))])], round(float(r_name.uniform(lo, hi)), 3))

    target = train_targets(num_classes, seed, scale)
    jobs = {
        "train": sample_split(spec, target, r_train, pool_factor=10.0),
        "val": sample_balanced(spec, size["val"], r_val),
        "test": sample_balanced(spec, size["test"], r_test),
        "pretrain": sample_balanced(spec, size["pretrain"], r_pre),
    }
    t_labels = time.perf_counter()
    logger.info("world: label sets for %d classes in %.2fs (train %d, val %d, test %d, pretrain %d images)",
                num_classes, t_labels - t_start, *(len(jobs[k]) for k in ("train", "val", "test", "pretrain")))

    ctx = {"classes": classes, "looks": looks, "seed": int(seed), "out_dir": str(out_dir), "naming": naming,
           "confusion": confusion, "partners": spec.partner}
    drawn = _render_all(jobs, ctx, workers, progress)
    t_draw = time.perf_counter()
    logger.info("world: drew %d images in %.2fs with %d worker(s)", sum(len(v) for v in jobs.values()),
                t_draw - t_labels, workers)

    counts = {}
    for split in ("train", "val", "test"):
        labels = label_matrix(jobs[split], num_classes)
        _write_manifest(out_dir, split, split, labels, classes, drawn[split][1] if split == "train" else None)
        counts[split] = labels.sum(axis=0).astype(int).tolist()
    atomic_write_text(out_dir / "classes.txt", "\n".join(classes) + "\n")
    pre_arr, pre_caps = drawn["pretrain"]
    if pre_arr is None:
        pre_arr = np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    with atomic_path(out_dir / "pretrain_images.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, pre_arr)
    with atomic_path(out_dir / "pretrain_labels.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, label_matrix(jobs["pretrain"], num_classes))
    atomic_write_json(out_dir / "pretrain_captions.json", pre_caps)
    counts["pretrain"] = label_matrix(jobs["pretrain"], num_classes).sum(axis=0).astype(int).tolist()

    train_counts = np.asarray(counts["train"])
    groups = {name: [classes[i] for i in idx] for name, idx in class_groups(train_counts).items()}
    index = set(classes)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_classes": int(num_classes),
        "scale": float(scale),
        "image_size": IMAGE_SIZE,
        "classes": classes,
        "sizes": {k: len(v) for k, v in jobs.items()},
        "requested_sizes": size,
        "labels_per_image": {k: round(float(label_matrix(v, num_classes).sum()) / max(1, len(v)), 3)
                             for k, v in jobs.items()},
        "train_target": target.tolist(),
        "counts": counts,
        "groups": groups,
        "scenes": {name: [classes[i] for i in idx] for name, idx in spec.scenes.items()},
        "pairs": [[a, b] for a, b in PAIRS if a in index and b in index],
        "pretrain_noise": {"naming_range": list(naming_range), "confusion_range": list(confusion_range),
                           "hallucination": HALLUCINATION},
        "pretrain_naming_rates": naming,
        "pretrain_confusions": {c: {"called": o, "rate": p} for c, (o, p) in confusion.items()},
        "looks": {w: {"shape": lk.shape, "colour": lk.colour, "texture": lk.texture} for w, lk in looks.items()},
        "timings_s": {"labels": round(t_labels - t_start, 3), "images": round(t_draw - t_labels, 3),
                      "total": round(time.perf_counter() - t_start, 3)},
        "complete": True,
    }
    atomic_write_json(out_dir / MARKER, meta)  # last: marks the world complete
    logger.info("world: generated %d-class world (seed %d) in %.2fs at %s", num_classes, seed,
                time.perf_counter() - t_start, out_dir)
    return meta


def _write_manifest(out_dir: Path, name: str, folder: str, labels: np.ndarray, classes: list[str],
                    captions: Optional[list[str]]) -> Path:
    """``out_dir/<name>.jsonl`` for the images ``out_dir/images/<folder>/000000.png, ...``, by the one manifest
    writer (:func:`lmpt.data.manifest.write_manifest`)."""
    paths = [str(out_dir / "images" / folder / f"{i:06d}.png") for i in range(len(labels))]
    split = MultiLabelSplit(name=name, paths=paths, ids=paths, labels=labels, captions=captions)
    return write_manifest(out_dir / f"{name}.jsonl", split, classes)


def draw_extra_images(out_dir: Union[str, Path], n: int, num_classes: int = 20, seed: int = 0, draw_seed: int = 1,
                      *, workers: int = 1, progress: bool = False) -> Path:
    """``n`` fresh images of the ``(num_classes, seed)`` world, drawn like its val/test splits (equal class weights).

    Writes ``out_dir/images/extra-{draw_seed}/*.png`` and returns ``out_dir/extra-{draw_seed}.jsonl`` (labels,
    no captions). The label sets and every image come from random streams of their own (the ``extra`` code,
    plus ``draw_seed``), so no image repeats one of the world's train, val or test images or its CLIP's
    pretraining corpus, and different ``draw_seed`` give different images. Classes, looks and scenes are the
    world's (they do not depend on its seed).
    """
    out_dir = Path(out_dir)
    spec = make_spec(num_classes)
    classes = spec.classes
    code = _SPLIT_CODES["extra"]
    rng = np.random.default_rng([int(seed), int(num_classes), GENERATOR_VERSION, code, int(draw_seed)])
    sets = sample_balanced(spec, int(n), rng)
    name = f"extra-{int(draw_seed)}"
    ctx = {"classes": classes, "looks": assign_looks(classes), "seed": int(seed), "out_dir": str(out_dir),
           "partners": spec.partner, "stream": int(draw_seed), "folder": name}
    _render_all({"extra": sets}, ctx, max(1, int(workers)), progress)
    return _write_manifest(out_dir, name, name, label_matrix(sets, num_classes), classes, None)
