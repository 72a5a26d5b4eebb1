"""How many captions of a pretraining batch name the same classes: the floor that ambiguity puts under CLIP's loss.

Issue 14's hypothesis for the world CLIP's low learned logit scale: its web-style captions ("a clock", "some plates
and a sofa") seldom single out their image, so a batch holds many images that match a caption equally well. This
counts, in random batches of the world's pretraining corpus, the captions that name the same set of class words
(plural or singular, ignoring colour, count and clutter words) as each caption, itself included (``m``). Captions
that name the same classes are interchangeable for a model that reads only names, so the text-to-image loss of
such a model cannot go below ``E[log m]``; CLIP's own captions nearly always single out their image (m = 1).

    python bench/caption_ambiguity.py [--cache-dir DIR] [--batch 128] [--batches 200]

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def named_classes(caption: str, singular: dict[str, str]) -> frozenset[str]:
    """The class words a caption names (plurals mapped to their singular)."""
    return frozenset(singular[t] for t in re.findall(r"[a-z\-]+", caption.lower()) if t in singular)


def same_name_counts(keys: list[frozenset], batch: int, batches: int, seed: int = 0) -> np.ndarray:
    """For each caption of ``batches`` random batches: how many captions of its batch name the same classes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        ks = [keys[i] for i in rng.choice(len(keys), size=min(batch, len(keys)), replace=False)]
        counts: dict[frozenset, int] = {}
        for k in ks:
            counts[k] = counts.get(k, 0) + 1
        out.extend(counts[k] for k in ks)
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args()
    from lmpt.engine.studies.demo import build_demo_world
    from lmpt.world.vocab import plural, pool_words

    world = build_demo_world(20, 0, cache_dir=args.cache_dir, progress=False)
    captions = json.loads((world.root / "pretrain_captions.json").read_text(encoding="utf-8"))
    singular = {w: w for w in pool_words()} | {plural(w): w for w in pool_words()}
    keys = [named_classes(c, singular) for c in captions]
    m = same_name_counts(keys, args.batch, args.batches)
    clip = world.metadata.get("clip", {})
    print(json.dumps({"figure": "caption_ambiguity", "batch": args.batch, "mean_same_name": round(float(m.mean()), 2),
                      "median_same_name": float(np.median(m)), "share_not_unique": round(float((m > 1).mean()), 3),
                      "loss_floor_nats": round(float(np.log(m).mean()), 3), "chance_nats": round(float(np.log(args.batch)), 3),
                      "no_class_named": round(sum(1 for k in keys if not k) / len(keys), 3),
                      "clip_final_loss": clip.get("final_loss"), "clip_logit_scale": clip.get("logit_scale")}))


if __name__ == "__main__":
    main()
