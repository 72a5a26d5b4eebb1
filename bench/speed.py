"""One 50-epoch LMPT run: lmpt's path (cold and warm feature cache) against a reference-style loop.

Same data (the generated world, 20 classes by default), same small CLIP, same losses, same machine, one
process. The reference-style loop (bench/reference_loop.py) decodes and encodes every image at every
step, runs 77-token (full-context) text, re-encodes prompts for every test batch and evaluates on the
full test set after every epoch. By default it runs ``--ref-epochs`` epochs and its 50-epoch time is
extrapolated from the measured per-epoch time (said so in the output); ``--ref-epochs 50`` measures it all.

    python bench/speed.py [--epochs 50] [--ref-epochs 3] [--classes 20] [--threads 2]

Prints one JSON line per figure; the last line is ``speedup_vs_reference: X`` (cold cache).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from lmpt.engine.config import load_config  # noqa: E402
from lmpt.engine.data import prepare  # noqa: E402
from lmpt.engine.demo import build_demo_world, world_overrides  # noqa: E402
from lmpt.engine.run import run as train  # noqa: E402
from reference_loop import reference_style_run  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--ref-epochs", type=int, default=3, help="reference-style epochs actually run")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default=None, help="where the world lives (default: lmpt's cache)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="lmpt-speed-"))
    base = [f"optim.epochs={args.epochs}", "run.progress=false", f"run.device={args.device}",
            f"run.output_dir={work / 'runs'}"]
    if args.cache_dir:
        base.append(f"data.cache_dir={args.cache_dir}")
    try:
        # the world and its CLIP are built (or read from the cache) first: both paths need them
        t0 = time.perf_counter()
        base = world_overrides(build_demo_world(args.classes, cache_dir=args.cache_dir, progress=False)) + base
        emit(figure="world_ready_s", value=round(time.perf_counter() - t0, 2), note="generation+pretraining or cache")

        # lmpt, cold feature cache: extraction + 50 epochs + evaluation
        base.append(f"data.feature_cache_dir={work / 'feature-cache'}")  # empty: a cold cache
        cfg = load_config("world", base + ["run.name=cold"])
        t0 = time.perf_counter()
        result = train(cfg)
        cold = time.perf_counter() - t0
        emit(figure="lmpt_run_cold_cache_s", value=round(cold, 2), epochs=args.epochs,
             breakdown={k: round(v, 2) for k, v in result.metrics["timing"].items()},
             test_map_softmax=round(result.metrics["headline"]["total"], 4))
        # warm: features read from the cache
        cfg = load_config("world", base + ["run.name=warm"])
        t0 = time.perf_counter()
        result = train(cfg)
        warm = time.perf_counter() - t0
        emit(figure="lmpt_run_warm_cache_s", value=round(warm, 2), epochs=args.epochs,
             breakdown={k: round(v, 2) for k, v in result.metrics["timing"].items()})

        # reference-style loop
        prepared = prepare(load_config("world", base), device)
        t0 = time.perf_counter()
        ref = reference_style_run(load_config("world", base), prepared, args.ref_epochs, device)
        measured = time.perf_counter() - t0
        per_epoch = statistics.median(ref["epoch_s"])
        ref_total = measured if args.ref_epochs >= args.epochs else per_epoch * args.epochs
        emit(figure="reference_style_run_s", value=round(ref_total, 2), epochs=args.epochs,
             measured_epochs=args.ref_epochs, per_epoch_s=round(per_epoch, 3),
             extrapolated=args.ref_epochs < args.epochs)
        emit(figure="speedup_warm_cache", value=round(ref_total / warm, 1))
        print(f"speedup_vs_reference: {ref_total / cold:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
