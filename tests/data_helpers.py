"""Helpers for the data tests: fake VOCdevkit / COCO trees made of tiny JPEGs."""
from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image


def tiny_jpeg(size: int = 16, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def list_paths(folder: str, filename: str) -> list[str]:
    text = resources.files("lmpt.data").joinpath("resources").joinpath(folder).joinpath(filename).read_text()
    return [ln.split()[0] for ln in text.splitlines() if ln.strip()]


def make_tree(root: Path, folder: str, lists: tuple[str, ...]) -> Path:
    """Write one tiny JPEG at every path named in the packaged lists (same bytes for all)."""
    data = tiny_jpeg()
    made_dirs = set()
    for name in lists:
        for rel in list_paths(folder, name):
            p = root / rel
            if p.parent not in made_dirs:
                p.parent.mkdir(parents=True, exist_ok=True)
                made_dirs.add(p.parent)
            p.write_bytes(data)
    return root


def make_voc(root: Path) -> Path:
    return make_tree(root, "voc_lt", ("voc_lt_train.txt", "voc_lt_test.txt"))


def make_coco(root: Path) -> Path:
    return make_tree(root, "coco_lt", ("coco_lt_train.txt", "coco_lt_test.txt"))


def write_image(path: Path, size: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_jpeg(size, seed))
    return path
