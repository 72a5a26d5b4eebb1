"""RN's BatchNorm regimes side by side: how far ``adapt`` lands from the reference's ``train``, and what each costs.

    python bench/bn_modes.py [--epochs 6] [--images 240] [--size 64] [--threads 2] [--device cpu]

On a small random-initialised ModifiedResNet CLIP (open_clip's RN architecture at reduced width; OpenAI's RN50
weights are not on this machine) and a generated long-tailed multi-label image set (coloured squares, captions),
it trains ``lmpt`` once per ``model.batchnorm`` mode (frozen, adapt, train) with the same seed and prints JSON
lines:

* ``bn_adapt_vs_train``: the mean cosine between each test image's features under ``adapt`` (statistics
  re-estimated once) and under ``train`` (statistics drifted through training, read at the end), the same for
  ``frozen`` vs ``train``, and the test mAP (softmax protocol, %) of each mode with the differences;
* ``bn_cost``: seconds of preparation (feature extraction, and the re-estimation pass for adapt) and of training
  per epoch for each mode.
Random weights say nothing about the size of the drift on OpenAI's RN50; they show the mechanics and the cost.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from lmpt.engine import load_config, prepare  # noqa: E402
from lmpt.engine import run as train  # noqa: E402

COLORS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (230, 230, 30),
          "cyan": (30, 220, 220), "magenta": (220, 30, 220), "white": (240, 240, 240), "orange": (240, 140, 20)}
PROBS = np.array([0.7, 0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.03])


def make_data(root: Path, n_train: int, n_test: int, size: int) -> dict[str, Path]:
    """Long-tailed train / balanced test manifests of coloured squares on noise, with captions."""
    from PIL import Image

    rng = np.random.default_rng(0)
    names = list(COLORS)
    (root / "img").mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            p = PROBS if split == "train" else np.full(len(names), 0.3)
            labels = [c for c in range(len(names)) if rng.random() < p[c]] or [int(rng.integers(len(names)))]
            im = rng.integers(0, 70, (size, size, 3)).astype(np.uint8)
            for c in labels:
                x, y = rng.integers(0, size - size // 3, 2)
                im[y:y + size // 3, x:x + size // 3] = COLORS[names[c]]
            rel = f"img/{split}{i:05d}.png"
            Image.fromarray(im).save(root / rel)
            rows.append({"image": rel, "labels": [names[c] for c in labels],
                         "caption": "a picture of " + " and ".join(f"a {names[c]} square" for c in labels)})
        out[split] = root / f"{split}.jsonl"
        out[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def model_config(folder: Path, size: int) -> str:
    """A small ModifiedResNet CLIP (open_clip's RN layout, width 16) as a model-config JSON in ``folder``."""
    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": size, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}
    (folder / "bench-rn-small.json").write_text(json.dumps(cfg))
    return "bench-rn-small"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--images", type=int, default=240, help="training images (test: as many)")
    ap.add_argument("--size", type=int, default=64, help="image resolution of the small RN")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bn-modes-"))
    data = make_data(work / "data", args.images, args.images, args.size)
    import os

    os.environ["LMPT_MODEL_CONFIGS"] = str(work)
    name = model_config(work, args.size)
    base = ["data.dataset=manifest", f"data.train={data['train']}", f"data.test={data['test']}",
            "data.val_fraction=0", f"data.cache_dir={work / 'cache'}", "data.num_workers=0", f"model.backbone={name}",
            "model.n_ctx=4", f"optim.epochs={args.epochs}", "optim.lr=0.02", "optim.batch_size=32",
            f"run.output_dir={work / 'runs'}", "run.progress=false", f"run.device={args.device}"]
    feats, maps, cost = {}, {}, {}
    for mode in ("frozen", "adapt", "train"):
        cfg = load_config(None, base + [f"model.batchnorm={mode}", f"run.name={mode}"])
        t0 = time.perf_counter()
        prepared = prepare(cfg)
        t_prep = time.perf_counter() - t0
        result = train(cfg, prepared=prepared)
        epoch_s = float(np.mean([r["epoch_s"] for r in result.history]))
        maps[mode] = 100 * result.metrics["headline"]["total"]
        cost[mode] = {"prepare_s": round(t_prep, 2), "epoch_s": round(epoch_s, 3)}
        if mode == "train":
            from lmpt.engine import load_run
            from lmpt.engine.prepared import split_features

            backbone = load_run(result.run_dir).model.backbone  # the drifted statistics, from the classifier file
            feats[mode] = split_features(cfg, backbone, prepared.dataset.test, torch.device(args.device))[:, 0]
        else:
            feats[mode] = prepared.features["test"][:, 0]

    def cosine(a: str, b: str) -> float:
        return float(torch.nn.functional.cosine_similarity(feats[a], feats[b], dim=-1).mean())

    print(json.dumps({"figure": "bn_adapt_vs_train", "feature_cosine_adapt_train": round(cosine("adapt", "train"), 4),
                      "feature_cosine_frozen_train": round(cosine("frozen", "train"), 4),
                      "map": {k: round(v, 2) for k, v in maps.items()},
                      "map_adapt_minus_train": round(maps["adapt"] - maps["train"], 2),
                      "map_frozen_minus_train": round(maps["frozen"] - maps["train"], 2),
                      "images": args.images, "epochs": args.epochs}))
    print(json.dumps({"figure": "bn_cost", "device": args.device, **{k: v for k, v in cost.items()}}))


if __name__ == "__main__":
    main()
