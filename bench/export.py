"""Deployment formats compared on the CPU: ONNX (onnxruntime fp32 and int8) against ``lmpt predict --run`` (eager
torch) and TorchScript: agreement, test mAP, speed, file size and cold start.

    python bench/export.py [--demo DIR] [--images 64] [--threads 2] [--repeats 3] [--batch-size 16] [--no-rn50]

* Agreement and mAP: the demo's ``lmpt-seed0`` and ``linear-probe-seed0`` runs when ``--demo DIR`` (a folder
  written by ``lmpt demo``) is given, else a linear probe trained here on the world (a few epochs). On the run's
  whole test split: max |probability difference| of ONNX fp32 against the run folder (target <= 1e-4) and whether
  the chosen labels are identical; the test mAP of the run folder, ONNX fp32, ONNX int8 (dynamic) and ONNX
  int8-static (calibrated on 64 training images) and each int8's change in mAP and in labels.
* Speed (images/s of the model on preprocessed batches, decoding excluded; median of ``--repeats`` alternating
  rounds after a warm-up): onnxruntime fp32, int8 and int8-static, TorchScript and eager torch, at the world's size
  (the demo run's CLIP, 64 px) and at RN50 224 px (random-init open_clip ``RN50``, a zero-shot-style head).
* File sizes of the three exports; cold start (a new process, from its start to the first prediction) for the
  ONNX file with and without ``import torch``, the TorchScript file and the run folder.

Prints one JSON line per figure.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import lmpt  # noqa: E402
from lmpt.backbone import create_clip  # noqa: E402
from lmpt.calibration import fit_calibration  # noqa: E402
from lmpt.data.imagefile import load_image  # noqa: E402
from lmpt.engine.config import load_config  # noqa: E402
from lmpt.engine.methods import METHOD_KINDS  # noqa: E402
from lmpt.engine.rundir.checkpoint import save_weights  # noqa: E402
from lmpt.engine.use.export import export_run  # noqa: E402
from lmpt.engine.use.inference import RunScorer, load_run  # noqa: E402
from lmpt.metrics import average_precision, mean_ap  # noqa: E402
from lmpt.predictor import collect_inputs, choose  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def zeroshot_run(folder: Path, model: str, n_classes: int = 20) -> Path:
    """A run folder holding a zero-shot-style classifier for a random-init ``model`` (speed only)."""
    backbone = create_clip(model, None)
    rng = np.random.default_rng(0)
    text = torch.nn.functional.normalize(torch.randn(n_classes, backbone.embed_dim), dim=-1)
    logits, labels = 20 + 3 * rng.standard_normal((400, n_classes)), rng.random((400, n_classes)) < 0.1
    cfg = load_config(None, [f"model.backbone={model}", "data.dataset=manifest", "data.train=-", "data.test=-",
                             "run.method=zeroshot"], check_source=False)
    meta = {"backbone": backbone.describe(), "class_names": [f"class{i}" for i in range(n_classes)],
            "config": cfg.to_dict(), "method": "zeroshot", "kind": "zeroshot", "preprocess": "reference",
            "calibration": fit_calibration(logits, labels).to_dict()}
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / METHOD_KINDS["zeroshot"].weights_file, {"text_features": text}, meta)
    return folder


def exports(run: Path, work: Path, calibration=None) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    return {"onnx_fp32": export_run(run, work / "model.onnx"),
            "onnx_int8": export_run(run, work / "model-int8.onnx", quantize="int8"),
            "onnx_int8_static": export_run(run, work / "model-int8-static.onnx", quantize="int8-static",
                                           calibration_images=calibration),
            "torchscript": export_run(run, work / "model.pt")}


def noise_images(folder: Path, n: int = 16) -> list[str]:
    """``n`` random-noise PNGs: calibration images for the random-init RN50 (its speed is what is measured)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"noise{i:02d}.png")
    return [str(folder)]


def scorers(run: Path, files: dict[str, Path], threads: int) -> dict:
    from lmpt.deploy.onnxfile import ONNXClassifier

    return {"onnx_fp32": ONNXClassifier(files["onnx_fp32"], threads=threads),
            "onnx_int8": ONNXClassifier(files["onnx_int8"], threads=threads),
            "onnx_int8_static": ONNXClassifier(files["onnx_int8_static"], threads=threads),
            "torchscript": lmpt.load_classifier(files["torchscript"]), "eager_torch": RunScorer(load_run(run))}


def speed(models: dict, batch: np.ndarray, repeats: int) -> dict[str, float]:
    """images/s of each scorer's ``probabilities`` on the same preprocessed batch, alternating rounds."""
    inputs = {k: (torch.from_numpy(batch) if k in ("torchscript", "eager_torch") else batch) for k in models}
    for k, m in models.items():  # warm-up (TorchScript's profiling executor optimises after its first calls)
        for _ in range(3):
            m.probabilities(inputs[k])
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            t0 = time.perf_counter()
            m.probabilities(inputs[k])
            times[k].append(len(batch) / (time.perf_counter() - t0))
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def agreement(name: str, run: Path, models: dict, threads: int) -> None:
    """ONNX fp32/int8 against the run folder on the whole test split: probabilities, labels, mAP."""
    cfg = load_config(Path(run) / "config.yaml", check_source=False)
    inputs = collect_inputs([cfg.data.test])
    ref = models["eager_torch"]
    x = [ref.transform(load_image(p)) for p in inputs.paths]
    names = list(ref.class_names)
    y = np.array([[n in (t or []) for n in names] for t in inputs.labels], dtype=float)
    probs = {}
    for k in ("eager_torch", "onnx_fp32", "onnx_int8", "onnx_int8_static"):
        out = []
        for s in range(0, len(x), 64):
            chunk = torch.stack(x[s:s + 64])
            out.append(models[k].probabilities(chunk if k == "eager_torch" else chunk.numpy()))
        probs[k] = np.concatenate(out)
    t = np.asarray(ref.thresholds)
    labels = {k: [choose(p, t) for p in v] for k, v in probs.items()}
    mAP = {k: 100 * mean_ap(average_precision(v, y)) for k, v in probs.items()}
    emit(figure="onnx_vs_run", run=name, images=len(x), max_abs_prob_diff=float(np.abs(probs["onnx_fp32"] - probs["eager_torch"]).max()),
         labels_identical=labels["onnx_fp32"] == labels["eager_torch"], target="<= 1e-4")
    emit(figure="test_mAP", run=name, run_folder=round(mAP["eager_torch"], 3), onnx_fp32=round(mAP["onnx_fp32"], 3),
         onnx_int8=round(mAP["onnx_int8"], 3), int8_change_points=round(mAP["onnx_int8"] - mAP["onnx_fp32"], 3),
         int8_images_with_other_labels=sum(a != b for a, b in zip(labels["onnx_int8"], labels["onnx_fp32"])),
         int8_max_abs_prob_diff=float(np.abs(probs["onnx_int8"] - probs["onnx_fp32"]).max()), target="|change| <= 0.5")
    emit(figure="test_mAP_int8_static", run=name, onnx_int8_static=round(mAP["onnx_int8_static"], 3),
         change_points=round(mAP["onnx_int8_static"] - mAP["onnx_fp32"], 3),
         images_with_other_labels=sum(a != b for a, b in zip(labels["onnx_int8_static"], labels["onnx_fp32"])),
         max_abs_prob_diff=float(np.abs(probs["onnx_int8_static"] - probs["onnx_fp32"]).max()),
         quantization=models["onnx_int8_static"].meta["quantization"], target="|change| <= 0.5")


def cold_start(files: dict[str, Path], run: Path, image: str) -> None:
    """Seconds from a new process's start to its first prediction (median of 3): wall clock and CPU time."""
    cases = {
        "onnx_without_torch": f"import sys; sys.modules['torch'] = None; import lmpt; lmpt.load_classifier({str(files['onnx_fp32'])!r}).predict({image!r})",
        "onnx_with_torch_imported": f"import torch, lmpt; lmpt.load_classifier({str(files['onnx_fp32'])!r}).predict({image!r})",
        "torchscript": f"import lmpt; lmpt.load_classifier({str(files['torchscript'])!r}).predict({image!r})",
        "run_folder": f"import lmpt; lmpt.load_classifier({str(run)!r}).predict({image!r})",
    }
    for name, code in cases.items():
        times, cpu = [], []
        for _ in range(3):
            t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            times.append(time.perf_counter() - t0)
            cpu.append(c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime)
        # wall time depends on the machine's load; the process's CPU time (user + system) much less
        emit(figure="cold_start_s", case=name, value=round(statistics.median(times), 2),
             cpu_s=round(statistics.median(cpu), 2), target="< 1 s" if name == "onnx_without_torch" else None)


def sizes(files: dict[str, Path], model: str) -> None:
    emit(figure="file_mb", model=model, **{k: round(p.stat().st_size / 2 ** 20, 2) for k, p in files.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default=None, help="a folder written by `lmpt demo` (its lmpt and linear-probe runs)")
    ap.add_argument("--images", type=int, default=64, help="batch of preprocessed images timed per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-rn50", action="store_true")
    ap.add_argument("--only-cold-start", action="store_true", help="skip agreement and speed (the first run only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lmpt-export-bench-"))
    if args.demo:
        runs = {n: Path(args.demo) / n for n in ("lmpt-seed0", "linear-probe-seed0") if (Path(args.demo) / n).is_dir()}
    else:
        from lmpt.engine.studies.demo import world_run_config
        from lmpt.engine.use.api import train

        cfg = world_run_config(["run.method=linear-probe", "optim.epochs=5", f"run.output_dir={work}",
                                "run.name=linear-probe", "run.progress=false"])
        runs = {"linear-probe": train(cfg).run_dir}
    for i, (name, run) in enumerate(runs.items()):
        files = exports(run, work / name)
        if args.only_cold_start:
            cold_start(files, run, collect_inputs([load_config(run / "config.yaml", check_source=False).data.test]).paths[0])
            return
        models = scorers(run, files, args.threads)
        agreement(name, run, models, args.threads)
        if i == 0:
            size = int(models["onnx_fp32"].image_size)
            batch = np.random.default_rng(0).standard_normal((args.images, 3, size, size)).astype(np.float32)
            emit(figure="images_per_s", model=models["eager_torch"].model.backbone.model_name, size=size, images=args.images,
                 threads=args.threads, **speed(models, batch, args.repeats))
            sizes(files, models["eager_torch"].model.backbone.model_name)
            test = collect_inputs([load_config(run / "config.yaml", check_source=False).data.test]).paths[0]
            cold_start(files, run, test)
    if not args.no_rn50:
        run = zeroshot_run(work / "rn50-run", "RN50")
        files = exports(run, work / "rn50", noise_images(work / "noise"))
        models = scorers(run, files, args.threads)
        batch = np.random.default_rng(0).standard_normal((args.images, 3, 224, 224)).astype(np.float32)
        emit(figure="images_per_s", model="RN50 (random init)", size=224, images=args.images, threads=args.threads,
             **speed(models, batch, args.repeats))
        sizes(files, "RN50")


if __name__ == "__main__":
    main()
