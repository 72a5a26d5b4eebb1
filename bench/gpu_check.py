"""GPU check at VOC-LT scale: extraction (CPU and GPU JPEG decoding), training step, full run, reference ratio.

Writes synthetic 500x375 JPEGs at VOC-LT scale (1,142 train + 4,952 test rows, labels and captions from the
official VOC-LT lists; bench/voc_like.py), then for each backbone (random-init RN50 and ViT-B/16 at 224 px,
``pretrained=None``, bf16 autocast on the GPU) prints one JSON line per figure:

  1. ``extraction_images_per_s`` with ``decode=cpu`` (PIL in DataLoader workers) and ``decode=gpu``
     (torchvision's nvJPEG, batches, resize on the GPU): every split of the run (train plain + mirrored,
     val, test), cold cache, backbone already built; and ``decode_feature_difference`` between the two;
  2. ``full_run_s``: ``lmpt.engine.train.run.run`` from a cold feature cache with lmpt's defaults (``data.decode=auto``,
     i.e. GPU decoding): backbone, extraction, 50 epochs (validation every epoch), final evaluation, run files;
  3. ``step_ms``: the training step (batch 64, CSE on), median of ``--steps`` single steps and back to back:
     CUDA graph with the end-of-text-only last block (lmpt's default), CUDA graph with the full last block, eager;
  4. ``evaluation_s``: text features once + scoring the cached test features + AP;
  5. ``reference_style_run_s`` and ``speedup_vs_reference``: bench/reference_loop.py on the same GPU and
     data (PIL decoding in the main process, every image encoded every step, 77-token text, the full test set
     after every epoch, bf16 autocast like lmpt), ``--ref-epochs`` epochs timed, the median epoch x 50,
     against ``full_run_s``.

Sized for under 5 minutes on one H100/H200 (most of it the reference-style epochs). ``--smoke`` runs the
same code on the CPU with tiny sizes (tiny open_clip models, about 100 images, 2 epochs) in well under a
minute, so the script cannot rot (tests/test_gpu_check.py runs it); there, "gpu" decoding is the same
tensor path with torchvision's CPU decoder (``decode=tensor``) and no CUDA graph is captured.

    python bench/gpu_check.py [--backbones RN50,ViT-B-16] [--scale 1.0] [--epochs 50] [--ref-epochs 2]
    python bench/gpu_check.py --smoke
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

T_START = time.perf_counter()
SMOKE_MODELS = {  # the tiny architectures of tests/conftest.py
    "lmpt-smoke-rn": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8,
                                                      "patch_size": None},
                      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
    "lmpt-smoke-vit": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                                                       "patch_size": 8},
                       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
}


def emit(**fields) -> None:
    fields["elapsed_s"] = round(time.perf_counter() - T_START, 1)
    print(json.dumps(fields), flush=True)


def step_times(trainer, optimizer, steps: int, graphs: bool) -> tuple[list[float], float]:
    import torch

    from lmpt.engine.train.step import make_step

    n = len(trainer.prepared.dataset.train)
    bs = trainer.cfg.optim.batch_size
    step = make_step(trainer, optimizer, {bs}, "on" if graphs else "off")
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, n, (bs,), generator=gen).to(trainer.device),
                torch.randint(0, 2, (bs,), generator=gen).to(trainer.device)) for _ in range(steps + 3)]
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for idx, flip in batches[:3]:
        step(idx, flip)
    sync()
    times = []
    for idx, flip in batches[3:]:
        t0 = time.perf_counter()
        step(idx, flip)
        sync()
        times.append(time.perf_counter() - t0)
    # throughput: many steps back to back, one sync (what a run sees)
    t0 = time.perf_counter()
    for idx, flip in batches[3:]:
        step(idx, flip)
    sync()
    return times, (time.perf_counter() - t0) / steps


def extraction(cfg, backbone, dataset, device, decode: str, cache_dir: Path):
    """Every split of a run, cold cache, with one decoder; returns (seconds, images, encoder passes, features)."""
    import torch

    from lmpt.data.features import extract_features
    from lmpt.data.images import PreprocessConfig

    d = cfg.data
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    feats = {}
    sync()
    t0 = time.perf_counter()
    for name, flips in (("train", True), ("val", False), ("test", False)):
        split = getattr(dataset, name)
        if split is not None:
            feats[name] = extract_features(backbone, split, preprocess=PreprocessConfig(d.preprocess), flips=flips,
                                           cache_dir=cache_dir, device=device, batch_size=d.feature_batch_size,
                                           chunk_size=d.feature_chunk_size, num_workers=d.num_workers,
                                           precision=cfg.run.precision, progress=False, decode=decode)
    sync()
    seconds = time.perf_counter() - t0
    images = sum(len(getattr(dataset, s)) for s in feats)
    passes = sum(f.shape[0] * f.shape[1] for f in feats.values())
    return seconds, images, passes, feats


def check_backbone(name: str, args, data: dict, work: Path, device, workers: int) -> None:
    import torch

    import lmpt.engine.train.prompt as prompt_task
    from lmpt.engine.config import load_config
    from lmpt.engine.prepared import Prepared, backbone_from_config, dataset_from_config
    from lmpt.engine.rundir.scoring import score_splits
    from lmpt.engine.train.prompt import PromptTrainer
    from lmpt.engine.train.run import run as train
    from lmpt.prompts import encode_token_embeddings
    from reference_loop import reference_style_run

    cuda = device.type == "cuda"
    base = [
        "data.dataset=manifest", f"data.train={data['train']}", f"data.test={data['test']}",
        f"data.classes={data['classes']}", f"data.cache_dir={work / ('cache-' + name)}", f"data.num_workers={workers}",
        "data.feature_batch_size=256", f"model.backbone={name}", f"optim.epochs={args.epochs}",
        f"run.device={device}", f"run.output_dir={work / 'runs'}", "run.progress=false",
    ]
    cfg = load_config(None, base)
    dataset = dataset_from_config(cfg)
    backbone = backbone_from_config(cfg)

    # 1. extraction with each decoder (cold caches), and how far their features are apart
    results = {}
    for decode in ("cpu", "gpu" if cuda else "tensor"):
        seconds, images, passes, feats = extraction(cfg, backbone, dataset, device, decode, work / f"x-{name}-{decode}")
        results[decode] = feats
        emit(figure="extraction_images_per_s", backbone=name, decode=decode, value=round(images / seconds, 1),
             images=images, encoder_passes=passes, seconds=round(seconds, 2), workers=workers,
             note="all splits, cold cache, decoding included, backbone already built")
    a, b = results["cpu"]["test"], results["gpu" if cuda else "tensor"]["test"]
    cos = torch.nn.functional.cosine_similarity(a.flatten(0, 1), b.flatten(0, 1), dim=-1)
    emit(figure="decode_feature_difference", backbone=name, min_cosine=round(float(cos.min()), 6),
         max_relative_l2=float((a - b).norm(dim=-1).max() / a.norm(dim=-1).min()), rows=a.shape[0])
    backbone.model.to("cpu")
    del results, feats
    if cuda:
        torch.cuda.empty_cache()

    # 2. full run, cold cache: backbone + extraction (decode=auto) + epochs + evaluation + run files
    cfg = load_config(None, base + [f"run.name={name}-full"])
    t0 = time.perf_counter()
    result = train(cfg)
    full = time.perf_counter() - t0
    timing = result.metrics["timing"]
    emit(figure="full_run_s", backbone=name, value=round(full, 2), epochs=args.epochs,
         prepare_s=round(timing["prepare_s"], 2), train_s=round(timing["train_s"], 2),
         eval_s=round(timing["eval_s"], 2),
         decode=cfg.data.decode, test_map=round(result.metrics["headline"]["total"], 4),
         note="random-init CLIP: mAP is not meaningful")

    # 3. training step: CUDA graph with the EOT-only last block (default), CUDA graph with the full last block, eager
    from lmpt.engine.prepared import prepare

    prepared = prepare(cfg, device)  # features from the cache the full run wrote
    variants = [("graph", True, True), ("graph", True, False), ("eager", False, True)] if cuda else \
        [("eager", False, True), ("eager", False, False)]
    original = prompt_task.encode_token_embeddings
    for label, graphs, eot_only in variants:
        prompt_task.encode_token_embeddings = functools.partial(encode_token_embeddings, eot_only=eot_only)
        try:
            trainer = PromptTrainer(cfg, prepared, device)
            opt = torch.optim.SGD(trainer.params, lr=cfg.optim.lr, momentum=0.9, weight_decay=1e-4)
            times, per_step = step_times(trainer, opt, args.steps, graphs)
        except Exception as exc:  # report and go on: the other figures still count
            emit(figure="step_ms", backbone=name, mode=label, eot_only_last_block=eot_only,
                 error=f"{type(exc).__name__}: {exc}")
            continue
        finally:
            prompt_task.encode_token_embeddings = original
        emit(figure="step_ms", backbone=name, mode=label, eot_only_last_block=eot_only,
             value=round(1000 * statistics.median(times), 3), back_to_back_ms=round(1000 * per_step, 3),
             precision=cfg.run.precision, classes=trainer.model.prompt_learner.num_classes,
             batch=cfg.optim.batch_size, tokens=trainer.prompt_len, cse=trainer.uses_cse)

    # 4. evaluation: text features once, score the cached test features, AP
    trainer = PromptTrainer(cfg, prepared, device)
    score_splits(prepared.dataset, trainer.logits, ("test",))
    t0 = time.perf_counter()
    score_splits(prepared.dataset, trainer.logits, ("test",))
    emit(figure="evaluation_s", backbone=name, test_images=len(prepared.dataset.test),
         value=round(time.perf_counter() - t0, 3))
    del trainer
    if cuda:
        torch.cuda.empty_cache()

    # 5. reference-style loop on the same device and data (no validation split, as the reference)
    cfg_ref = load_config(None, base + ["data.val_fraction=0"])
    ds_ref = dataset_from_config(cfg_ref)
    ref = reference_style_run(cfg_ref, Prepared(dataset=ds_ref, backbone=prepared.backbone, features={}),
                              args.ref_epochs, device)
    per_epoch = statistics.median(ref["epoch_s"])
    ref_total = per_epoch * args.epochs
    emit(figure="reference_style_run_s", backbone=name, value=round(ref_total, 1), epochs=args.epochs,
         measured_epochs=args.ref_epochs, epoch_s=[round(x, 2) for x in ref["epoch_s"]], extrapolated=True,
         images={"train": len(ds_ref.train), "test": len(ds_ref.test)})
    emit(figure="speedup_vs_reference", backbone=name, value=round(ref_total / full, 1))
    prepared.backbone.model.to("cpu")
    del prepared
    if cuda:
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=None, help="default: RN50,ViT-B-16 (tiny models with --smoke)")
    ap.add_argument("--scale", type=float, default=None, help="fraction of the VOC-LT lists (default 1; smoke 0.01)")
    ap.add_argument("--epochs", type=int, default=None, help="default 50 (smoke 2)")
    ap.add_argument("--ref-epochs", type=int, default=2, help="reference-style epochs timed")
    ap.add_argument("--steps", type=int, default=None, help="steps timed per step figure (default 100; smoke 3)")
    ap.add_argument("--device", default=None, help="default cuda (smoke: cpu)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="the same code on the CPU with tiny sizes")
    args = ap.parse_args()
    smoke = args.smoke
    args.backbones = args.backbones or (",".join(SMOKE_MODELS) if smoke else "RN50,ViT-B-16")
    args.scale = args.scale if args.scale is not None else (0.01 if smoke else 1.0)
    args.epochs = args.epochs or (2 if smoke else 50)
    args.steps = args.steps or (3 if smoke else 100)
    args.device = args.device or ("cpu" if smoke else "cuda")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from voc_like import build_data

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device is visible: run on a GPU machine, or use --smoke (the same code on the CPU)")
    if smoke:  # tiny ops: one thread is fastest, and immune to a busy machine's descheduled OpenMP threads
        torch.set_num_threads(1)
    workers = args.workers if args.workers is not None else (1 if smoke else max(1, min(16, (os.cpu_count() or 2) - 1)))
    emit(figure="environment", torch=torch.__version__, device=str(device), smoke=smoke,
         gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None, cpus=os.cpu_count())
    work = Path(args.work or tempfile.mkdtemp(prefix="lmpt-gpu-"))
    try:
        if smoke:
            import open_clip

            folder = work / "model-configs"
            folder.mkdir(parents=True, exist_ok=True)
            for model_name, spec in SMOKE_MODELS.items():
                (folder / f"{model_name}.json").write_text(json.dumps(spec))
            open_clip.add_model_config(folder)
            os.environ["LMPT_MODEL_CONFIGS"] = str(folder)
        data = build_data(work / "data", args.scale, workers=max(1, workers))
        emit(figure="jpeg_generation_s", value=round(data["jpeg_generation_s"], 2),
             images=data["train_rows"] + data["test_rows"], mean_file_kb=round(data["mean_file_kb"], 1))
        for name in args.backbones.split(","):
            check_backbone(name, args, data, work, device, workers)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    emit(figure="total_s", value=round(time.perf_counter() - T_START, 1))


if __name__ == "__main__":
    main()
