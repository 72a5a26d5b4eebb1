"""Tiny generated data and configs for the engine, CLI and distributed tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["red", "green", "blue", "yellow", "cyan", "magenta"]
COLORS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (230, 230, 30),
          "cyan": (30, 220, 220), "magenta": (220, 30, 220)}
PROBS = np.array([0.75, 0.3, 0.2, 0.08, 0.06, 0.05])


def _labels(rng: np.random.Generator, balanced: bool) -> list[int]:
    p = np.full(len(CLASSES), 0.3) if balanced else PROBS
    labels = [c for c in range(len(CLASSES)) if rng.random() < p[c]]
    return labels or [int(rng.integers(len(CLASSES)))]


def _image(rng: np.random.Generator, labels: list[int]) -> Image.Image:
    im = rng.integers(0, 70, (32, 32, 3)).astype(np.uint8)
    for c in labels:
        x, y = rng.integers(0, 22, 2)
        im[y:y + 10, x:x + 10] = COLORS[CLASSES[c]]
    return Image.fromarray(im)


def make_tiny_dataset(root: Path, n_train: int = 160, n_test: int = 90, seed: int = 0) -> dict:
    """Write images and JSONL manifests; return the paths."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    out = {"root": root}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            labels = _labels(rng, balanced=split == "test")
            rel = f"img/{split}{i:04d}.png"
            _image(rng, labels).save(root / rel)
            row = {"image": rel, "labels": [CLASSES[c] for c in labels]}
            if split == "train":
                named = [CLASSES[c] for c in labels if rng.random() < 0.8] or [CLASSES[labels[0]]]
                row["caption"] = "a picture of " + " and ".join(f"a {n} square" for n in named)
            rows.append(row)
        path = root / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[split] = path
    return out


def tiny_overrides(data: dict, tmp: Path, **extra) -> list[str]:
    """Config overrides that train the tiny ViT on the tiny data quickly."""
    values = {
        "data.dataset": "manifest", "data.train": str(data["train"]), "data.test": str(data["test"]),
        "data.val_fraction": 0.2, "data.cache_dir": str(tmp / "cache"), "data.num_workers": 0,
        "model.backbone": "lmpt-test-vit", "model.n_ctx": 4, "optim.epochs": 4, "optim.lr": 0.02,
        "optim.batch_size": 32, "run.output_dir": str(tmp / "runs"), "run.progress": False,
        "run.device": "cpu",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def die_at_call(monkeypatch, cls, n: int, method: str = "loss") -> None:
    """Make ``cls.method`` raise KeyboardInterrupt at its ``n``-th call, as a killed run would stop."""
    original = getattr(cls, method)
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, dying)
