"""What each ``lmpt`` command does: read its arguments, call the engine, print. Failures a user can fix are
:class:`~lmpt.errors.UserError` and end as one line (see :func:`lmpt.cli.main`)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError, UserError


def _print_headline(metrics: dict, run_dir: Optional[Path] = None) -> None:
    from .. import distributed as dist_utils
    from ..engine.rundir.report import metrics_table

    if not dist_utils.is_main():
        return
    if run_dir is not None:
        print(f"run folder: {run_dir}")
    if metrics.get("oracle"):
        print("NOTE: test-selected (oracle): the checkpoint was chosen on the test set")
    print(f"test mAP (%), selection: {metrics['selection']}")
    print(metrics_table(metrics, "test"))
    d = metrics.get("decisions")
    if d:
        c = d["calibrated"]
        print(f"decisions at calibrated thresholds: {c['labels_per_image']:.2f} labels per image (true "
              f"{c['true_labels_per_image']:.2f}), OF1 {100 * c['OF1']:.2f}, CF1 {100 * c['CF1']:.2f}; ECE {d['ece']:.3f}")


def _overrides(args: argparse.Namespace) -> list[str]:
    """The KEY=VALUE overrides, with the flags that are shorthands for config keys appended."""
    config = getattr(args, "config", None)
    if config is not None and "=" in config:  # no CONFIG given: the first argument is an override
        args.overrides = [config] + list(args.overrides or [])
        args.config = None
    out = list(args.overrides or [])
    for flag, key in (("method", "run.method"), ("select_on", "run.select"), ("out", "run.output_dir"),
                      ("name", "run.name"), ("seed", "run.seed"), ("device", "run.device")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    bad = [o for o in out if "=" not in o]
    if bad:
        raise ConfigError(f"unexpected argument {bad[0]!r}: overrides look like section.key=value "
                          "(e.g. optim.epochs=20), and a command takes at most one CONFIG")
    return out


def _config(args: argparse.Namespace, extra: Sequence[str] = ()):
    """The config a command names (a YAML file, a built-in name, or ``world``), with its overrides."""
    from ..engine.config import load_config

    overrides = _overrides(args) + list(extra)
    if args.config == "world":
        from ..engine.studies.demo import world_run_config

        return world_run_config(overrides)
    if args.config is None and not overrides:
        raise UserError(f"{args.command} needs a CONFIG (a YAML file, a built-in name or `world`) or KEY=VALUE overrides")
    return load_config(args.config, overrides)


def train_cmd(args: argparse.Namespace) -> int:
    from ..engine.config import load_config
    from ..engine.rundir.layout import RunLayout
    from ..engine.train.run import run

    if args.resume:
        run_dir = Path(args.resume)
        if not RunLayout(run_dir).config.is_file():
            raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass the folder `lmpt train` printed")
        if args.config is not None and "=" not in args.config:
            raise UserError("with --resume the run's own config.yaml is used; drop the CONFIG argument")
        cfg = load_config(RunLayout(run_dir).config, _overrides(args))
        result = run(cfg, run_dir=run_dir, resume=True)
    else:
        result = run(_config(args))
    _print_headline(result.metrics, result.run_dir)
    return 0


def zeroshot_cmd(args: argparse.Namespace) -> int:
    from ..engine.train.run import run

    result = run(_config(args, ["run.method=zeroshot"]))
    _print_headline(result.metrics, result.run_dir)
    return 0


def eval_cmd(args: argparse.Namespace) -> int:
    from ..engine.rundir.layout import RunLayout
    from ..engine.use.inference import reevaluate_run

    metrics = reevaluate_run(args.run_dir, _overrides(args))
    _print_headline(metrics, Path(args.run_dir))
    print(f"written: {RunLayout(args.run_dir) / RunLayout.EVAL}")
    return 0


def predict_cmd(args: argparse.Namespace) -> int:
    from ..deploy import is_onnx, load_classifier
    from ..predictor import collect_inputs, format_predictions, notes

    if args.run is not None and args.model is not None:
        raise UserError("give one classifier, not both: --run RUN_DIR (a run folder) or --model FILE (from "
                        "`lmpt export`)")
    if args.run is None and args.model is None:
        raise UserError("give the classifier: --run RUN_DIR (a run folder) or --model FILE (from `lmpt export`)")
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0)):
        if value is not None and value < low:
            raise UserError(f"{flag} {value}: must be at least {low}")
    inputs = collect_inputs(args.inputs)
    if args.model is not None and is_onnx(args.model):  # onnxruntime: torch is never imported on this path
        scorer = load_classifier(args.model, args.device or "cpu")
    else:
        from ..engine.prepared import resolve_device

        device = resolve_device(args.device or "auto")
        if args.model is not None:
            scorer = load_classifier(args.model, device)
        else:
            from ..engine.use.inference import RunScorer, load_run

            scorer = RunScorer(load_run(args.run, weights=args.weights, device=device))
    workers = args.workers if args.workers is not None else (min(4, os.cpu_count() or 1) if len(inputs.paths) > 64 else 0)
    result = scorer.predict(inputs, threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                            num_workers=workers, strict=args.strict, show_progress=not args.quiet)
    before, after = notes(result, len(inputs.paths))
    for line in before:
        print(line, file=sys.stderr)
    if not result.predictions:
        return 2
    text = format_predictions(result, args.format)
    if args.out:
        from ..io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"written: {args.out} ({len(result.predictions)} images)", file=sys.stderr)
    else:
        print(text)
    for line in after:
        print(line, file=sys.stderr)
    return 0


def export_cmd(args: argparse.Namespace) -> int:
    from ..engine.use.export import export_run

    out = export_run(args.run_dir, args.out, weights=args.weights, fmt=args.format, quantize=args.quantize,
                     calibration_images=args.calibration_images)
    size = out.stat().st_size / 2 ** 20
    print(f"written: {out} ({size:.1f} MiB; load it with `lmpt predict --model {out} IMAGES` or lmpt.load_classifier)")
    return 0


def sweep_cmd(args: argparse.Namespace) -> int:
    from ..engine.methods import METHODS
    from ..engine.rundir.layout import SweepLayout
    from ..engine.rundir.report import summary_table
    from ..engine.studies.sweep import check_sweep_lists, check_sweep_overrides, parse_int_list, run_sweep

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS or m == "custom"]
    if bad or not methods:
        raise UserError(f"--methods {args.methods!r}: unknown method(s) {', '.join(bad) or '(none given)'}; "
                        f"choose from {', '.join(m for m in METHODS if m != 'custom')}")
    seeds = parse_int_list(args.seeds, "--seeds")
    check_sweep_lists(methods, seeds)
    check_sweep_overrides(_overrides(args), "lmpt sweep")
    cfg = _config(args)
    out = Path(args.out or Path(cfg.run.output_dir) / f"sweep-{Path(str(args.config)).stem}")
    summary = run_sweep(cfg, methods, seeds, out, title=f"sweep: {args.config}")
    print(summary_table(summary["methods"], f"selection: {summary['selection']}; protocol: {summary['protocol']}"))
    print(f"written: {out / SweepLayout.SUMMARY_MD}, {out / SweepLayout.SUMMARY_JSON}")
    return 0


def data_check_cmd(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset
    from ..data.sources import load_dataset

    for flag, value in (("--workers", args.workers), ("--max-listed", args.max_listed)):
        if value is not None and value < 0:
            raise UserError(f"{flag} {value}: must be 0 or more")
    dataset = load_dataset(args.source, root=args.root, train=args.train, val=args.val, test=args.test,
                           classes=args.classes, image_root=args.image_root, check_files=False)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    report = check_dataset(dataset, num_workers=workers, progress=not args.quiet)
    print(report.format(max_listed=args.max_listed))
    return 0 if report.ok else 1


def data_download_cmd(args: argparse.Namespace) -> int:
    """Download a benchmark's listed images, then print the `lmpt data check` report."""
    from ..data.check import check_dataset
    from ..data.download import download_coco_lt, download_voc_lt
    from ..data.sources import load_dataset

    if args.source == "voc-lt":
        report = download_voc_lt(args.root, mirrors=args.mirror, keep_archives=args.keep_archives,
                                 show_progress=not args.quiet)
    else:
        report = download_coco_lt(args.root, mirrors=args.mirror, workers=args.workers, retries=args.retries,
                                  archives=not args.no_archives, keep_archives=args.keep_archives,
                                  show_progress=not args.quiet)
    print(report.format())
    dataset = load_dataset(args.source, root=args.root, check_files=False)
    check = check_dataset(dataset, num_workers=min(8, os.cpu_count() or 1), progress=not args.quiet)
    print(check.format())
    return 0 if check.ok and not report.failed else 1


def weights_fetch_cmd(args: argparse.Namespace) -> int:
    """Download pretrained weights ahead of time and print where they are."""
    from ..backbone import check_model_name
    from ..weights import fetch_weights

    for model in args.models:
        path = fetch_weights(check_model_name(model), args.tag)
        print(f"{model} ({args.tag}): {path} ({path.stat().st_size:,} bytes)")
    print("offline machines: copy these files and pass model.pretrained=FILE, or copy the cache folder.")
    return 0


def data_features_cmd(args: argparse.Namespace) -> int:
    """Fill the feature cache for a config (sharded across ranks under torchrun)."""
    from .. import distributed as dist_utils
    from ..engine.prepared import prepare, resolve_device

    cfg = _config(args)
    device = resolve_device(cfg.run.device)
    dist_utils.init_from_env(str(device))
    prepared = prepare(cfg, device)
    if dist_utils.is_main():
        for split, feats in prepared.features.items():
            if feats is not None:
                print(f"{split}: {tuple(feats.shape)} features cached")
    return 0


def demo_cmd(args: argparse.Namespace) -> int:
    from ..engine.studies.demo import run_demo

    from ..engine.studies.sweep import parse_int_list

    if args.classes < 2:
        raise UserError(f"--classes {args.classes}: the world needs at least 2 classes (20: VOC-LT-like, 80: COCO-LT-like)")
    if not 0 <= args.world_seed < 2 ** 32:
        raise UserError(f"--world-seed {args.world_seed}: must be an integer from 0 to 2^32-1")
    if args.seeds is not None:
        parse_int_list(args.seeds, "--seeds")
    if args.threads < 1:
        raise UserError(f"--threads {args.threads}: give at least 1 (the demo's figures are measured with 2)")
    run_demo(out_dir=args.out, quick=args.quick, world_seed=args.world_seed, num_classes=args.classes,
             seeds=args.seeds, cache_dir=args.cache_dir, device=args.device, threads=args.threads,
             overrides=_overrides(argparse.Namespace(overrides=args.overrides)))
    return 0


def compare_cmd(args: argparse.Namespace) -> int:
    from ..engine.studies.paper import compare_with_paper, paper_table

    table = paper_table(compare_with_paper(args.sweep_dir))
    print(table)
    if args.out:
        from ..io import atomic_write_text

        atomic_write_text(args.out, table + "\n")
        print(f"written: {args.out}", file=sys.stderr)
    return 0
