"""Labelling speed: ``lmpt predict --run`` (the run folder: open_clip backbone + class head) against the exported
TorchScript classifier (``lmpt export``), on the generated world's test images with a random-init CLIP RN50 at
224 px, on the CPU. Also the export file's size.

    python bench/predict.py [--images 256] [--batch-size 32] [--workers 2] [--threads 2] [--repeats 3]
                            [--cache-dir DIR]

The classifier is a zero-shot-style head (random unit class features, calibration fitted on random logits):
the image tower dominates the cost either way, and its weights do not change the speed. Both paths decode
and preprocess the same images the same way; after three warm-up batches each, the two are timed alternately
``--repeats`` times (median reported), loading excluded.
Prints one JSON line per figure; the last is ``exported_vs_run: X`` (images/s ratio; >= 1 means not slower).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from lmpt.backbone import create_clip  # noqa: E402
from lmpt.calibration import fit_calibration  # noqa: E402
from lmpt.data.manifest import read_manifest_images  # noqa: E402
from lmpt.engine.methods import METHOD_KINDS  # noqa: E402
from lmpt.engine.rundir.checkpoint import save_weights  # noqa: E402
from lmpt.engine.config import load_config  # noqa: E402
from lmpt.engine.studies.demo import build_demo_world  # noqa: E402
from lmpt.engine.use.export import export_run  # noqa: E402
from lmpt.engine.use.inference import RunScorer, load_run  # noqa: E402
from lmpt.deploy import load_classifier  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def write_run(folder: Path, model: str, class_names: list[str]) -> Path:
    """A run folder holding a zero-shot-style classifier for ``model`` (random init, seed 0)."""
    backbone = create_clip(model, None)
    rng = np.random.default_rng(0)
    text = torch.nn.functional.normalize(torch.randn(len(class_names), backbone.embed_dim), dim=-1)
    logits, labels = 20 + 3 * rng.standard_normal((400, len(class_names))), rng.random((400, len(class_names))) < 0.1
    cfg = load_config(None, [f"model.backbone={model}", "data.dataset=manifest", "data.train=-", "data.test=-",
                            "run.method=zeroshot"])
    meta = {"backbone": backbone.describe(), "class_names": class_names, "config": cfg.to_dict(),
            "method": "zeroshot", "kind": "zeroshot", "preprocess": "reference",
            "calibration": fit_calibration(logits, labels).to_dict()}
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / METHOD_KINDS["zeroshot"].weights_file, {"text_features": text}, meta)
    return folder


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    out = fn()
    assert len(out.predictions) == n, (len(out.predictions), n)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="RN50")
    ap.add_argument("--cache-dir", default=None, help="where the world lives (default: lmpt's cache)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    world = build_demo_world(cache_dir=args.cache_dir, progress=False)
    paths = read_manifest_images(world.test_manifest)[0][:args.images]
    names = [n for n in Path(world.classes_file).read_text().splitlines() if n.strip()]
    work = Path(tempfile.mkdtemp(prefix="lmpt-predict-bench-"))
    run_dir = write_run(work / "run", args.model, names)
    model_file = export_run(run_dir, work / "model.pt", fmt="torchscript")
    emit(figure="export_file_mb", value=round(model_file.stat().st_size / 2 ** 20, 1), model=args.model)
    run = RunScorer(load_run(run_dir))
    exported = load_classifier(model_file)
    kw = dict(batch_size=args.batch_size, num_workers=args.workers)
    warm = paths[:args.batch_size * 3]  # TorchScript's profiling executor optimises after its first calls
    run.predict(warm, **kw)
    exported.predict(warm, **kw)
    run_times, exp_times = [], []
    for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike; report the medians
        run_times.append(timed(lambda: run.predict(paths, **kw), len(paths)))
        exp_times.append(timed(lambda: exported.predict(paths, **kw), len(paths)))
    run_ips, exp_ips = statistics.median(run_times), statistics.median(exp_times)
    common = dict(model=args.model, images=len(paths), batch_size=args.batch_size, workers=args.workers,
                  threads=args.threads, device="cpu")
    emit(figure="predict_run_images_per_s", value=round(run_ips, 2), **common)
    emit(figure="predict_exported_images_per_s", value=round(exp_ips, 2), **common)
    print(f"exported_vs_run: {exp_ips / run_ips:.2f}")


if __name__ == "__main__":
    main()
