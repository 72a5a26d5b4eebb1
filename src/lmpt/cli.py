"""The ``lmpt`` command line: parses arguments, calls the engine, prints results."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .errors import UserError

logger = logging.getLogger("lmpt")

EPILOG = "Overrides are section.key=value, e.g. optim.epochs=20 data.root=/data/VOC model.pretrained=RN50.pt"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("lmpt").setLevel(logging.INFO)


def _print_headline(metrics: dict, run_dir: Optional[Path] = None) -> None:
    from . import distributed as dist_utils
    from .engine.report import metrics_table

    if not dist_utils.is_main():
        return
    if run_dir is not None:
        print(f"run folder: {run_dir}")
    if metrics.get("oracle"):
        print("NOTE: test-selected (oracle): the checkpoint was chosen on the test set")
    print(f"test mAP (%), selection: {metrics['selection']}")
    print(metrics_table(metrics, "test"))


def _overrides(args: argparse.Namespace) -> list[str]:
    config = getattr(args, "config", None)
    if config is not None and "=" in config:  # no CONFIG given: the first argument is an override
        args.overrides = [config] + list(args.overrides or [])
        args.config = None
    out = list(args.overrides or [])
    for flag, key in (("select_on", "run.select"), ("out", "run.output_dir"), ("name", "run.name"),
                      ("seed", "run.seed"), ("device", "run.device")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.config import load_config
    from .engine.train import train

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass the folder `lmpt train` printed")
        overrides = _overrides(args)
        if args.config is not None:
            raise UserError("with --resume the run's own config.yaml is used; drop the CONFIG argument")
        cfg = load_config(run_dir / "config.yaml", overrides)
        result = train(cfg, run_dir=run_dir, resume=True)
    else:
        overrides = _overrides(args)
        if args.config is None and not overrides:
            raise UserError("lmpt train needs a CONFIG (a YAML file or built-in name) or --resume RUN_DIR")
        cfg = load_config(args.config, overrides)
        if args.method:
            cfg.run.method = args.method
        result = train(cfg)
    _print_headline(result.metrics, result.run_dir)
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .engine.config import load_config
    from .engine.train import train

    overrides = _overrides(args)
    cfg = load_config(args.config, overrides + ["run.method=zeroshot"])
    result = train(cfg)
    _print_headline(result.metrics, result.run_dir)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine.inference import evaluate_run

    metrics = evaluate_run(args.run_dir, args.overrides or [])
    _print_headline(metrics, Path(args.run_dir))
    print(f"written: {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.data import resolve_device
    from .engine.inference import load_run, predict_images, predictions_json, predictions_table

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise UserError(f"image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    device = resolve_device(args.device or "auto")
    run = load_run(args.run, weights=args.weights, device=device)
    preds = predict_images(run, args.images, threshold=args.threshold, top_k=args.top_k, protocol=args.protocol,
                           device=device)
    print(predictions_json(preds) if args.format == "json" else predictions_table(preds))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .engine.config import METHODS, load_config
    from .engine.report import summary_table
    from .engine.sweep import run_sweep

    overrides = _overrides(args)
    cfg = load_config(args.config, overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UserError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    out = Path(args.out or Path(cfg.run.output_dir) / f"sweep-{Path(str(args.config)).stem}")
    summary = run_sweep(cfg, methods, seeds, out, title=f"sweep: {args.config}")
    print(summary_table(summary["methods"], f"selection: {summary['selection']}; protocol: {summary['protocol']}"))
    print(f"written: {out / 'summary.md'}, {out / 'summary.json'}")
    return 0


def _dataset_from_args(args: argparse.Namespace):
    if args.source in ("voc-lt", "coco-lt"):
        from .data.benchmarks import load_benchmark

        if not args.root:
            raise UserError(f"lmpt data check {args.source} needs --root DIR (the folder that holds the images)")
        return load_benchmark(args.source, args.root)
    if args.source == "manifest":
        from .data.manifest import load_manifest_dataset

        if not (args.train and args.test):
            raise UserError("lmpt data check manifest needs --train and --test manifest files")
        return load_manifest_dataset(args.train, args.test, val=args.val, classes=args.classes,
                                     image_root=args.image_root, check_files=False)
    raise UserError(f"unknown data source {args.source!r}")


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_dataset

    dataset = _dataset_from_args(args)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    report = check_dataset(dataset, num_workers=workers, progress=not args.quiet)
    print(report.format(max_listed=args.max_listed))
    return 0 if report.ok else 1


def cmd_data_features(args: argparse.Namespace) -> int:
    """Fill the feature cache for a config (sharded across ranks under torchrun)."""
    from . import distributed as dist_utils
    from .engine.config import load_config
    from .engine.data import prepare, resolve_device

    overrides = _overrides(args)
    cfg = load_config(args.config, overrides)
    device = resolve_device(cfg.run.device)
    dist_utils.init_from_env(str(device))
    prepared = prepare(cfg, device)
    if dist_utils.is_main():
        for split, feats in prepared.features.items():
            if feats is not None:
                print(f"{split}: {tuple(feats.shape)} features cached")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .engine.demo import run_demo

    run_demo(out_dir=args.out, quick=args.quick, world_seed=args.world_seed, num_classes=args.classes,
             seeds=args.seeds, cache_dir=args.cache_dir, device=args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmpt", description="Long-tailed multi-label recognition with CLIP prompt "
                                "tuning (LMPT): train, evaluate, predict, sweep, demo.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"lmpt {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show INFO logs on the console")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def run_flags(sp: argparse.ArgumentParser, select: bool = True) -> None:
        sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (section.key=value)")
        if select:
            sp.add_argument("--select-on", choices=["last", "val", "test"], default=None,
                            help="checkpoint selection (test = oracle, labelled as such)")
        sp.add_argument("--out", default=None, help="output folder for runs (run.output_dir)")
        sp.add_argument("--name", default=None, help="run name (folder under --out)")
        sp.add_argument("--seed", type=int, default=None, help="random seed (run.seed)")
        sp.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")

    sp = sub.add_parser("train", help="train a prompt", epilog=EPILOG,
                        description="Train class-specific prompts. CONFIG is a YAML file or a built-in name "
                                    "(voc-lt-rn50, voc-lt-vitb16, coco-lt-rn50, coco-lt-vitb16, world).")
    sp.add_argument("config", nargs="?", default=None, help="YAML config or built-in name")
    sp.add_argument("--method", default=None, choices=["coop", "coop-db", "lmpt", "lmpt-asl", "zeroshot"])
    sp.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run from its checkpoint")
    run_flags(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("zeroshot", help="evaluate zero-shot CLIP (prompt-template ensemble)", epilog=EPILOG)
    sp.add_argument("config", help="YAML config or built-in name")
    run_flags(sp, select=False)
    sp.set_defaults(func=cmd_zeroshot)

    sp = sub.add_parser("eval", help="re-evaluate a finished run", epilog=EPILOG)
    sp.add_argument("run_dir", help="run folder written by lmpt train")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.root=/new/path")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("predict", help="label new images with a trained prompt")
    sp.add_argument("images", nargs="+", help="image files")
    sp.add_argument("--run", required=True, help="run folder (or its prompt.safetensors)")
    sp.add_argument("--threshold", type=float, default=None, help="report labels with score >= T "
                    "(default 0.5 for sigmoid, 0.3 for softmax)")
    sp.add_argument("--top-k", type=int, default=None, help="report the K best labels instead of a threshold")
    sp.add_argument("--protocol", choices=["sigmoid", "softmax"], default="sigmoid", help="score per class "
                    "(sigmoid) or across classes (softmax)")
    sp.add_argument("--format", choices=["table", "json"], default="table")
    sp.add_argument("--weights", default=None, help="CLIP weights file, if it moved since training")
    sp.add_argument("--device", default=None)
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("sweep", help="methods x seeds, with a mean ± std table", epilog=EPILOG)
    sp.add_argument("config", help="YAML config or built-in name")
    sp.add_argument("--methods", default="zeroshot,coop,coop-db,lmpt", help="comma-separated methods")
    sp.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    run_flags(sp)
    sp.set_defaults(func=cmd_sweep)

    data = sub.add_parser("data", help="check data sets, fill the feature cache")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    sp = dsub.add_parser("check", help="check that every image exists and decodes; print a summary")
    sp.add_argument("source", choices=["voc-lt", "coco-lt", "manifest"])
    sp.add_argument("--root", default=None, help="folder holding VOCdevkit/ or train2017/ + val2017/")
    sp.add_argument("--train", default=None)
    sp.add_argument("--val", default=None)
    sp.add_argument("--test", default=None)
    sp.add_argument("--classes", default=None)
    sp.add_argument("--image-root", default=None)
    sp.add_argument("--workers", type=int, default=None)
    sp.add_argument("--max-listed", type=int, default=20)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_data_check)
    sp = dsub.add_parser("features", help="compute the image-feature cache of a config (torchrun: sharded)",
                         epilog=EPILOG)
    sp.add_argument("config", help="YAML config or built-in name")
    run_flags(sp, select=False)
    sp.set_defaults(func=cmd_data_features)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])

    sp = sub.add_parser("demo", help="the offline benchmark: generated world, small CLIP, all methods x 3 seeds")
    sp.add_argument("--quick", action="store_true", help="a smaller, faster version (< 2 min) for smoke tests")
    sp.add_argument("--out", default="lmpt-demo", help="output folder (default: ./lmpt-demo)")
    sp.add_argument("--world-seed", type=int, default=0)
    sp.add_argument("--classes", type=int, default=20, help="20: VOC-LT-like; 80: COCO-LT-like")
    sp.add_argument("--seeds", default=None, help="comma-separated training seeds (default 0,1,2)")
    sp.add_argument("--cache-dir", default=None)
    sp.add_argument("--device", default="auto")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose)
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if os.environ.get("LMPT_ALLOW_DOWNLOAD") != "1" else None
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        rank = os.environ.get("RANK")
        prefix = f"error (rank {rank}): " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else "error: "
        print(prefix + str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted. Finished work is kept: feature chunks stay cached and `lmpt train --resume RUN_DIR` "
              "continues a run from its last checkpoint.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
