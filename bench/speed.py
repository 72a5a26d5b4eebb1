"""One 50-epoch LMPT run against a reference-style loop, on the generated world and at CLIP size (RN50, 224 px).

World part (``--part world``): same data (the generated world, 20 classes by default), same small CLIP, same
losses, same machine, one process. The reference-style loop (bench/reference_loop.py) decodes and encodes
every image at every step, runs 77-token (full-context) text, re-encodes prompts for every test batch and
evaluates on the full test set after every epoch. By default it runs ``--ref-epochs`` epochs and its
50-epoch time is extrapolated from the measured per-epoch time (said so in the output); ``--ref-epochs 50``
measures it all. lmpt's run is measured whole, with a cold and a warm feature cache.

RN50 part (``--part rn50``): a random-init open_clip RN50 (``pretrained=None``, no download) at 224 px on
synthetic 500x375 JPEGs (VOC's typical size) with the VOC-LT lists' labels and captions (1,142 train + 4,952
test rows, 20 classes; lmpt carves its default 10% validation split from train: 1,028 + 114). Only
``--rn50-images`` distinct JPEGs are written (half train, half test rows); the other rows are symlinks to
them, so every decode is a real decode of a VOC-sized JPEG. Nothing here runs a whole epoch of RN50 on a
CPU; every part is timed on a piece and extrapolated by count:

* lmpt extraction: ``split_features`` (lmpt's own path, cold cache, the config's decoder and workers) on
  the first ``--rn50-extract`` training rows (plain + mirrored, one decode each) and as many test rows
  (plain); seconds per image of each kind x (1,028 training images) and x (114 val + 4,952 test images).
  Worker start-up and the first batch are inside the timed piece, so this over-estimates lmpt.
* lmpt training + evaluation: ``lmpt.engine.train.run.run`` (the real loop: steps, validation every epoch,
  final evaluation, run files) with ``optim.epochs=1`` on random features of the full VOC-LT shape; its
  training time (17 steps + one validation pass, the first step's warm-up included) x 50 epochs, plus its
  final evaluation and its set-up/writing time once.
* the backbone's construction is counted once on both sides.
* reference-style loop: ``reference_style_run`` on all 1,142 training rows (no validation split, as the
  reference) for ``--rn50-ref-batches`` training batches of 64 and as many test batches; the median
  training batch (with 3 or more, the first, a warm-up, left out) x (1,142 / 64) + the median test batch
  x (4,952 / 64) = one epoch; x 50 epochs. Partial last batches are counted by their share of images,
  which under-estimates the reference's per-batch text work.

Time: the RN50 part took about 6 minutes and the world part (world read from a cache) about 8 on a 2-core
machine with two other CPU-bound jobs on it (load average 4); faster on an idle one (not measured).

    python bench/speed.py [--part all|world|rn50] [--epochs 50] [--ref-epochs 3] [--classes 20] [--threads 2]

Prints one JSON line per figure; then ``speedup_vs_reference_rn50_cpu: X`` (RN50 part) and, as the last
line, ``speedup_vs_reference: X`` (the world, cold cache) when the world part runs.
"""
from __future__ import annotations

import argparse
import json
import math
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

from lmpt.data.features import default_num_workers  # noqa: E402
from lmpt.engine.config import load_config  # noqa: E402
from lmpt.engine.prepared import Prepared, backbone_from_config, dataset_from_config, prepare, split_features  # noqa: E402
from lmpt.engine.studies.demo import build_demo_world, world_overrides  # noqa: E402
from lmpt.engine.train.run import run as train  # noqa: E402
from reference_loop import reference_style_run  # noqa: E402
from voc_like import build_data  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "world", "rn50"), default="all")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--ref-epochs", type=int, default=3, help="reference-style epochs actually run (world)")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default=None, help="where the world lives (default: lmpt's cache)")
    ap.add_argument("--rn50-images", type=int, default=160, help="distinct JPEGs written (RN50 part)")
    ap.add_argument("--rn50-extract", type=int, default=72, help="training rows and test rows extracted (RN50)")
    ap.add_argument("--rn50-ref-batches", type=int, default=2, help="reference-style batches timed (RN50)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="lmpt-speed-"))
    try:
        if args.part in ("all", "rn50"):
            rn50_part(args, work / "rn50", device)
        if args.part in ("all", "world"):
            world_part(args, work / "world", device)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rn50_part(args, work: Path, device: torch.device) -> None:
    """The comparison at CLIP size; every extrapolation is described in the module docstring."""
    t0 = time.perf_counter()
    data = build_data(work / "voc", unique=args.rn50_images)
    emit(figure="rn50_jpegs", seconds=round(time.perf_counter() - t0, 2), distinct_files=data["distinct_files"],
         rows=data["train_rows"] + data["test_rows"], mean_file_kb=round(data["mean_file_kb"], 1), size="500x375")
    base = ["data.dataset=manifest", f"data.train={data['train']}", f"data.test={data['test']}",
            f"data.classes={data['classes']}", f"data.cache_dir={work / 'cache'}", "model.backbone=RN50",
            f"optim.epochs={args.epochs}", f"run.device={device}", f"run.output_dir={work / 'runs'}",
            "run.progress=false", "data.feature_batch_size=64"]
    cfg = load_config(None, base)
    t0 = time.perf_counter()
    backbone = backbone_from_config(cfg)
    build_s = time.perf_counter() - t0
    dataset = dataset_from_config(cfg)
    n_train, n_val, n_test = len(dataset.train), len(dataset.val), len(dataset.test)
    n_sub = min(args.rn50_extract, n_train, n_test)

    # lmpt, extraction: a piece of train (plain + mirrored) and of test (plain), per image, x the counts
    per_image = {}
    for name, split, flips in (("train", dataset.train, True), ("test", dataset.test, False)):
        t0 = time.perf_counter()
        split_features(cfg, backbone, split.subset(range(n_sub)), device, flips=flips)
        per_image[name] = (time.perf_counter() - t0) / n_sub
    extraction = per_image["train"] * n_train + per_image["test"] * (n_val + n_test)
    emit(figure="rn50_lmpt_extraction_s", value=round(extraction, 1), extrapolated=True, timed_images=2 * n_sub,
         s_per_train_image_plain_and_mirrored=round(per_image["train"], 4),
         s_per_test_image=round(per_image["test"], 4),
         images={"train": n_train, "val": n_val, "test": n_test}, decode=cfg.data.decode,
         workers=cfg.data.num_workers if cfg.data.num_workers is not None else default_num_workers())

    # lmpt, training + evaluation: the real run, one epoch, on random features of the full shape
    d = backbone.embed_dim
    fake = Prepared(dataset=dataset, backbone=backbone, features={
        "train": torch.randn(n_train, 2, d), "val": torch.randn(n_val, 1, d), "test": torch.randn(n_test, 1, d)})
    t0 = time.perf_counter()
    result = train(load_config(None, base + ["optim.epochs=1", "run.name=rn50-one-epoch"]), prepared=fake)
    one_run = time.perf_counter() - t0
    timing = result.metrics["timing"]
    steps = math.ceil(n_train / 64)
    overhead = one_run - timing["train_s"] - timing["eval_s"]
    training = timing["train_s"] * args.epochs
    emit(figure="rn50_lmpt_training_s", value=round(training, 1), extrapolated=True, epochs=args.epochs,
         measured_epoch_s=round(timing["train_s"], 2), steps_per_epoch=steps,
         step_ms=round(1000 * timing["train_s"] / steps, 1), note="epoch = steps + validation; x epochs")
    emit(figure="rn50_lmpt_eval_and_setup_s", eval_s=round(timing["eval_s"], 2), setup_and_writing_s=round(overhead, 2),
         backbone_build_s=round(build_s, 2))
    lmpt_total = build_s + extraction + training + timing["eval_s"] + overhead
    emit(figure="rn50_lmpt_run_s", value=round(lmpt_total, 1), extrapolated=True, epochs=args.epochs)

    # reference-style loop: a few batches of one epoch, x batches per epoch, x epochs
    cfg_ref = load_config(None, base + ["data.val_fraction=0"])
    ds_ref = dataset_from_config(cfg_ref)
    ref = reference_style_run(cfg_ref, Prepared(dataset=ds_ref, backbone=backbone, features={}), 1, device,
                              max_batches=args.rn50_ref_batches)
    t_train = statistics.median(ref["train_batch_s"][1:] if len(ref["train_batch_s"]) > 2 else ref["train_batch_s"])
    t_test = statistics.median(ref["test_batch_s"])
    bs = cfg_ref.optim.batch_size
    ref_epoch = t_train * len(ds_ref.train) / bs + t_test * len(ds_ref.test) / bs
    ref_total = build_s + ref_epoch * args.epochs
    emit(figure="rn50_reference_style_run_s", value=round(ref_total, 1), extrapolated=True, epochs=args.epochs,
         epoch_s=round(ref_epoch, 1), train_batch_s=[round(x, 2) for x in ref["train_batch_s"]],
         test_batch_s=[round(x, 2) for x in ref["test_batch_s"]],
         images={"train": len(ds_ref.train), "test": len(ds_ref.test)}, batch=bs)
    emit(figure="speedup_vs_reference_rn50_cpu", value=round(ref_total / lmpt_total, 1), threads=args.threads)
    print(f"speedup_vs_reference_rn50_cpu: {ref_total / lmpt_total:.1f}", flush=True)


def world_part(args, work: Path, device: torch.device) -> None:
    work.mkdir(parents=True, exist_ok=True)
    base = [f"optim.epochs={args.epochs}", "run.progress=false", f"run.device={args.device}",
            f"run.output_dir={work / 'runs'}"]
    if args.cache_dir:
        base.append(f"data.cache_dir={args.cache_dir}")
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
    print(f"speedup_vs_reference: {ref_total / cold:.1f}", flush=True)


if __name__ == "__main__":
    main()
