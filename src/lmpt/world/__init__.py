"""The generated world: an offline long-tailed multi-label benchmark with its own small CLIP.

No CLIP weights and no VOC/COCO images are needed: :func:`build_world` draws a long-tailed
multi-label world (20 classes like VOC-LT by default, 80 like COCO-LT), pretrains a small CLIP
(``lmpt-world-tiny``) on a separate class-balanced image-caption corpus, and caches both.

Cache layout: ``resolve_cache_dir(cache_dir) / "world" / <key>`` where ``<key>`` is
``v{GENERATOR_VERSION}-c{num_classes}-s{seed}-{h}`` and ``h`` is
``stable_hash({"version", "num_classes", "seed", "scale", "sizes"})``: any change to the
generator version, class count, seed, train scale or split sizes gives a new folder. A world
folder is complete when its ``world.json`` exists (written last, inside a temporary folder
that is renamed into place); the CLIP weights inside it are ``clip-<recipe hash>.safetensors``
(keyed by the pretraining recipe and seed; written atomically, with ``clip-<hash>.json``
holding the pretraining metrics, written after the weights).

Light to import: torch and open_clip are imported only when needed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union


from ..cache import resolve_cache_dir
from ..io import make_dir, stable_hash
from .clip import (
    CONFIG_PATH,
    WORLD_CONTEXT_LENGTH,
    WORLD_MODEL_CONFIG,
    WORLD_MODEL_NAME,
    get_world_tokenizer,
    register_world_models,
)
from .generate import GENERATOR_VERSION, default_sizes, generate_world, is_complete_world

logger = logging.getLogger(__name__)

__all__ = [
    "WORLD_MODEL_NAME", "WORLD_CONTEXT_LENGTH", "WORLD_MODEL_CONFIG", "WorldInfo", "register_world_models",
    "get_world_tokenizer", "world_key", "build_world",
    "generate_world", "GENERATOR_VERSION", "default_sizes", "is_complete_world",
]

@dataclass
class WorldInfo:
    """Where a built world lies and what it holds."""

    root: Path
    train_manifest: Path
    val_manifest: Path
    test_manifest: Path
    classes_file: Path
    class_names: list[str]
    clip_model_name: str
    clip_weights: Path
    metadata: dict = field(default_factory=dict)  # world.json, plus "clip": the pretraining metrics
    generated: bool = False  # this call generated the images (not taken from the cache)
    pretrained: bool = False  # this call pretrained the CLIP (not taken from the cache)


def world_key(num_classes: int = 20, seed: int = 0, scale: float = 1.0, sizes: Optional[dict] = None) -> str:
    """The cache folder name of a world (see the module docstring)."""
    size = default_sizes(num_classes)
    size.update({k: int(v) for k, v in (sizes or {}).items()})
    h = stable_hash({"version": GENERATOR_VERSION, "num_classes": int(num_classes), "seed": int(seed),
                     "scale": float(scale), "sizes": size}, length=10)
    return f"v{GENERATOR_VERSION}-c{int(num_classes)}-s{int(seed)}-{h}"


def _clip_stem(recipe: dict, seed: int) -> str:
    return "clip-" + stable_hash({"model": WORLD_MODEL_NAME, "config": WORLD_MODEL_CONFIG,
                                  "recipe": recipe, "seed": int(seed)}, length=10)


def _readable_clip(weights: Path, metrics_path: Path) -> bool:
    """Whether the cached CLIP and its metrics file are there and readable; a damaged one (a truncated or
    overwritten file) is pretrained again, never used, as damaged feature caches are recomputed."""
    if not (weights.is_file() and metrics_path.is_file()):
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            f.keys()
        json.loads(metrics_path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - any damage means: build it again
        logger.warning("world: the cached CLIP %s is unreadable or damaged (%s); pretraining it again", weights, exc)
        return False
    return True


def build_world(cache_dir: Optional[Union[str, Path]] = None, num_classes: int = 20, seed: int = 0,
                progress: bool = True, *, scale: float = 1.0, sizes: Optional[dict] = None,
                pretrain_steps: Optional[int] = None, pretrain_recipe: Optional[dict] = None,
                workers: Optional[int] = None) -> WorldInfo:
    """The world for ``(num_classes, seed)``: generated and its CLIP pretrained on first call, then cached.

    Args:
        cache_dir: cache root (default :func:`lmpt.cache.default_cache_dir`).
        scale, sizes: see :func:`~lmpt.world.generate.generate_world` (small worlds for tests).
        pretrain_steps, pretrain_recipe: override the pretraining recipe
            (:data:`~lmpt.world.pretrain.DEFAULT_RECIPE`); they are part of the weights' key.
        workers: processes drawing images (default up to 2).
    """
    from .pretrain import DEFAULT_RECIPE

    t0 = time.perf_counter()
    base = resolve_cache_dir(cache_dir) / "world"
    make_dir(base, "world cache folder")
    root = base / world_key(num_classes, seed, scale, sizes)
    generated = False
    if not is_complete_world(root):
        tmp = base / f".tmp-{root.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            logger.info("world: generating %s", root)
            generate_world(tmp, num_classes=num_classes, seed=seed, scale=scale, sizes=sizes, workers=workers,
                           progress=progress)
            if root.exists() and not is_complete_world(root):
                logger.warning("world: removing incomplete world folder %s", root)
                shutil.rmtree(root, ignore_errors=True)
            try:
                os.rename(tmp, root)
                generated = True
            except OSError:
                if not is_complete_world(root):  # someone else's rename won, or a real error
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((root / "world.json").read_text(encoding="utf-8"))

    recipe = dict(DEFAULT_RECIPE)
    recipe.update(pretrain_recipe or {})
    if pretrain_steps is not None:
        recipe["steps"] = int(pretrain_steps)
    recipe = json.loads(json.dumps(recipe))  # tuples -> lists, as in the key
    stem = _clip_stem(recipe, seed)
    weights = root / f"{stem}.safetensors"
    metrics_path = root / f"{stem}.json"
    pretrained = False
    if not _readable_clip(weights, metrics_path):
        from .pretrain import pretrain_world_clip

        pretrain_world_clip(root, weights, seed=seed, recipe=recipe, progress=progress)
        pretrained = True
    config_copy = root / CONFIG_PATH.name  # the weights' architecture travels with them (backbone registry)
    if not config_copy.is_file():
        shutil.copyfile(CONFIG_PATH, config_copy)
    meta["clip"] = json.loads(metrics_path.read_text(encoding="utf-8"))
    info = WorldInfo(
        root=root,
        train_manifest=root / "train.jsonl",
        val_manifest=root / "val.jsonl",
        test_manifest=root / "test.jsonl",
        classes_file=root / "classes.txt",
        class_names=list(meta["classes"]),
        clip_model_name=WORLD_MODEL_NAME,
        clip_weights=weights,
        metadata=meta,
        generated=generated,
        pretrained=pretrained,
    )
    logger.info("world: %s ready in %.1fs (%s)", root.name, time.perf_counter() - t0,
                "generated" if generated else "cached world" + ("" if pretrained else " and CLIP"))
    return info
