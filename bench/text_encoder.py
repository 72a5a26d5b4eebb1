"""Text-encoder step with prompts cut to the longest EOT + 1 versus the full 77 tokens.

Three variants: the reference's full 77-token pass; the prompts cut to the longest EOT + 1; and lmpt's
path, cut and with the last block evaluated at the EOT rows only. Same prompts, same features (checked), one prompt-tuning step each (forward, backward, SGD) with a real
CLIP text tower (random weights: the speed does not depend on them).

    python bench/text_encoder.py [--model RN50] [--classes 20] [--repeats 5] [--device cpu]

Prints one JSON line per measurement, then ``speedup_short_vs_77: X``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from lmpt.backbone import create_clip  # noqa: E402
from lmpt.data.benchmarks import readable_class_name  # noqa: E402
from lmpt.model import PromptCLIP  # noqa: E402
from lmpt.prompts import encode_token_embeddings  # noqa: E402

VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
       "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def time_step(model: PromptCLIP, length: int, eot_only: bool, repeats: int, device: torch.device) -> list[float]:
    pl = model.prompt_learner
    opt = torch.optim.SGD([pl.ctx], lr=1e-3, momentum=0.9)
    target = torch.randn(pl.num_classes, model.backbone.embed_dim, device=device)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad()
        feats = encode_token_embeddings(model.clip, pl(length), pl.eot, eot_only=eot_only)
        loss = (feats - target).pow(2).mean()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="RN50")
    ap.add_argument("--classes", type=int, default=20, help="20 (VOC-LT names) or 80 (names repeated)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbone = create_clip(args.model, None)
    names = [readable_class_name(n) for n in VOC] * (args.classes // 20 + 1)
    torch.manual_seed(0)
    model = PromptCLIP(backbone, names[: args.classes]).to(device)
    pl = model.prompt_learner
    with torch.no_grad():
        ours = encode_token_embeddings(model.clip, pl(), pl.eot)
        full = encode_token_embeddings(model.clip, pl(pl.context_length), pl.eot, eot_only=False)
    diff = (ours - full).abs().max().item()
    results = {}
    for label, length, eot_only in (("full_77", pl.context_length, False), ("short", pl.seq_len, False),
                                    ("short_eot_only", pl.seq_len, True)):
        times = time_step(model, length, eot_only, args.repeats, device)
        results[label] = statistics.median(times)
        print(json.dumps({"figure": "text_encoder_step", "variant": label, "tokens": length,
                          "classes": args.classes, "model": args.model, "device": str(device),
                          "threads": args.threads, "median_s": round(results[label], 4), "repeats": args.repeats}))
    print(json.dumps({"figure": "same_features", "max_abs_diff": diff}))
    print(json.dumps({"figure": "speedup_short_vs_77_without_eot_only",
                      "value": round(results["full_77"] / results["short"], 2)}))
    print(f"speedup_short_vs_77: {results['full_77'] / results['short_eot_only']:.2f}")


if __name__ == "__main__":
    main()
