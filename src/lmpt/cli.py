"""The ``lmpt`` command line: parses arguments, calls the engine, prints results.

Options and ``section.key=value`` overrides may come in any order (argparse's intermixed parsing). Every
mistake a user can make ends in one line on stderr and exit code 2; logging is set up here and nowhere else.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, NoReturn, Optional, Sequence

from . import __version__
from .errors import ConfigError, UserError

logger = logging.getLogger("lmpt")

EPILOG = "Overrides are section.key=value, e.g. optim.epochs=20 data.root=/data/VOC model.pretrained=RN50.pt"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit code 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.set_name("lmpt-cli")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "lmpt-cli"]:  # main() called again in one process
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("lmpt").setLevel(logging.INFO)
    warnings.showwarning = lambda message, category, *a, **k: logger.warning("%s", message)


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
    from .engine.config import load_config

    overrides = _overrides(args) + list(extra)
    if args.config == "world":  # the generated world: build (or reuse) it, then point the settings at it
        from .engine.demo import build_demo_world, world_overrides

        # check the user's overrides before spending minutes on the world (its paths are filled in after)
        cache = load_config("world", ["data.train=-", "data.test=-"] + overrides).data.cache_dir
        overrides = world_overrides(build_demo_world(cache_dir=cache)) + overrides
    if args.config is None and not overrides:
        raise UserError(f"{args.command} needs a CONFIG (a YAML file, a built-in name or `world`) or KEY=VALUE overrides")
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.config import load_config
    from .engine.run import run

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass the folder `lmpt train` printed")
        if args.config is not None and "=" not in args.config:
            raise UserError("with --resume the run's own config.yaml is used; drop the CONFIG argument")
        cfg = load_config(run_dir / "config.yaml", _overrides(args))
        result = run(cfg, run_dir=run_dir, resume=True)
    else:
        result = run(_config(args))
    _print_headline(result.metrics, result.run_dir)
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .engine.run import run

    result = run(_config(args, ["run.method=zeroshot"]))
    _print_headline(result.metrics, result.run_dir)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine.inference import evaluate_run

    metrics = evaluate_run(args.run_dir, _overrides(args))
    _print_headline(metrics, Path(args.run_dir))
    print(f"written: {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.data import resolve_device
    from .predictor import collect_inputs, format_predictions, notes, predict_paths

    if (args.run is None) == (args.model is None):
        raise UserError("give the classifier: --run RUN_DIR (a run folder) or --model FILE (from `lmpt export`)")
    inputs = collect_inputs(args.inputs)
    device = resolve_device(args.device or "auto")
    if args.model is not None:
        from .exported import load_classifier

        scorer = load_classifier(args.model, device)
    else:
        from .engine.inference import RunScorer, load_run

        scorer = RunScorer(load_run(args.run, weights=args.weights, device=device))
    workers = args.workers if args.workers is not None else (min(4, os.cpu_count() or 1) if len(inputs.paths) > 64 else 0)
    result = predict_paths(scorer, inputs, threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                           num_workers=workers, strict=args.strict, show_progress=not args.quiet)
    before, after = notes(result, len(inputs.paths))
    for line in before:
        print(line, file=sys.stderr)
    if not result.predictions:
        return 2
    text = format_predictions(result, args.format)
    if args.out:
        from .io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"written: {args.out} ({len(result.predictions)} images)", file=sys.stderr)
    else:
        print(text)
    for line in after:
        print(line, file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .engine.export import export_run

    out = export_run(args.run_dir, args.out, weights=args.weights)
    print(f"written: {out} (load it with `lmpt predict --model {out} IMAGES` or lmpt.load_classifier)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .engine.methods import METHODS
    from .engine.report import summary_table
    from .engine.sweep import run_sweep

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS or m == "custom"]
    if bad or not methods:
        raise UserError(f"--methods {args.methods!r}: unknown method(s) {', '.join(bad) or '(none given)'}; "
                        f"choose from {', '.join(m for m in METHODS if m != 'custom')}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise UserError("--seeds is empty; give at least one seed, e.g. --seeds 0,1,2")
    cfg = _config(args)
    out = Path(args.out or Path(cfg.run.output_dir) / f"sweep-{Path(str(args.config)).stem}")
    summary = run_sweep(cfg, methods, seeds, out, title=f"sweep: {args.config}")
    print(summary_table(summary["methods"], f"selection: {summary['selection']}; protocol: {summary['protocol']}"))
    print(f"written: {out / 'summary.md'}, {out / 'summary.json'}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_dataset
    from .data.sources import load_dataset

    dataset = load_dataset(args.source, root=args.root, train=args.train, val=args.val, test=args.test,
                           classes=args.classes, image_root=args.image_root, check_files=False)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    report = check_dataset(dataset, num_workers=workers, progress=not args.quiet)
    print(report.format(max_listed=args.max_listed))
    return 0 if report.ok else 1


def cmd_data_features(args: argparse.Namespace) -> int:
    """Fill the feature cache for a config (sharded across ranks under torchrun)."""
    from . import distributed as dist_utils
    from .engine.data import prepare, resolve_device

    cfg = _config(args)
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

    if args.classes < 2:
        raise UserError(f"--classes {args.classes}: the world needs at least 2 classes (20: VOC-LT-like, 80: COCO-LT-like)")
    run_demo(out_dir=args.out, quick=args.quick, world_seed=args.world_seed, num_classes=args.classes,
             seeds=args.seeds, cache_dir=args.cache_dir, device=args.device,
             overrides=_overrides(argparse.Namespace(overrides=args.overrides)))
    return 0


def _run_parser(prog: str, description: str, config: str = "optional", select: bool = True) -> _Parser:
    sp = _Parser(prog=prog, description=description, epilog=EPILOG)
    if config == "optional":
        sp.add_argument("config", nargs="?", default=None, help="YAML config, built-in name, or `world`")
    else:
        sp.add_argument("config", help="YAML config, built-in name, or `world`")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (section.key=value)")
    if select:
        sp.add_argument("--select-on", choices=["last", "val", "test"], default=None,
                        help="checkpoint selection (test = oracle, labelled as such)")
    sp.add_argument("--out", default=None, help="output folder for runs (run.output_dir)")
    sp.add_argument("--name", default=None, help="run name (folder under --out)")
    sp.add_argument("--seed", type=int, default=None, help="random seed (run.seed)")
    sp.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    sp.add_argument("-v", "--verbose", action="store_true", help="show INFO logs on the console")
    return sp


def _train_parser() -> _Parser:
    from .engine.methods import METHODS

    sp = _run_parser("lmpt train", "Train a classifier: class-specific prompts (or the linear probe). CONFIG is a "
                                   "YAML file, a built-in name (voc-lt-rn50, voc-lt-vitb16, coco-lt-rn50, "
                                   "coco-lt-vitb16) or `world` (the generated benchmark).")
    sp.add_argument("--method", default=None, choices=list(METHODS), help="run.method")
    sp.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run from its checkpoint")
    return sp


def _zeroshot_parser() -> _Parser:
    return _run_parser("lmpt zeroshot", "Evaluate zero-shot CLIP (prompt templates).", config="required",
                       select=False)


def _eval_parser() -> _Parser:
    sp = _Parser(prog="lmpt eval", description="Re-evaluate a finished run.", epilog=EPILOG)
    sp.add_argument("run_dir", help="run folder written by lmpt train")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.root=/new/path")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


def _predict_parser() -> _Parser:
    from .predictor import FORMATS

    sp = _Parser(prog="lmpt predict", description="Label images with a trained run or an exported classifier. "
                 "Inputs: image files, folders (recursive), glob patterns, or .jsonl/.csv manifests (their labels, "
                 "if any, give precision/recall/F1 at the end).")
    sp.add_argument("inputs", nargs="+", help="images, folders, glob patterns or manifests")
    sp.add_argument("--run", default=None, help="run folder (or its .safetensors classifier file)")
    sp.add_argument("--model", default=None, help="a classifier written by `lmpt export` (instead of --run)")
    sp.add_argument("--threshold", type=float, default=None, help="one threshold T on the calibrated probability "
                    "for every class (default: each class's threshold fitted on validation data)")
    sp.add_argument("--top-k", type=int, default=None, help="report the K most probable labels instead")
    sp.add_argument("--format", choices=list(FORMATS), default="table")
    sp.add_argument("--out", default=None, help="write the predictions to this file instead of stdout")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--workers", type=int, default=None, help="image decoding processes (default: up to 4)")
    sp.add_argument("--strict", action="store_true", help="stop at the first unreadable image (default: skip it)")
    sp.add_argument("--weights", default=None, help="CLIP weights file, if it moved since training")
    sp.add_argument("--device", default=None)
    sp.add_argument("--quiet", action="store_true", help="no progress")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


def _export_parser() -> _Parser:
    sp = _Parser(prog="lmpt export", description="Write a run's classifier as one TorchScript file (image tower, "
                 "class features, calibration, thresholds, class names, preprocessing).")
    sp.add_argument("run_dir", help="run folder (or its .safetensors classifier file)")
    sp.add_argument("--out", required=True, help="output file, e.g. model.pt")
    sp.add_argument("--weights", default=None, help="CLIP weights file, if it moved since training")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


def _sweep_parser() -> _Parser:
    sp = _run_parser("lmpt sweep", "Methods x seeds on one feature cache, with a mean ± std table.",
                     config="required")
    sp.add_argument("--methods", default="zeroshot,coop,coop-db,lmpt", help="comma-separated methods")
    sp.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    return sp


def _check_parser() -> _Parser:
    from .data.sources import DATA_SOURCES

    sp = _Parser(prog="lmpt data check", description="Check that every image exists and decodes; print a summary.")
    sp.add_argument("source", choices=list(DATA_SOURCES))
    sp.add_argument("--root", default=None, help="folder holding VOCdevkit/ or train2017/ + val2017/")
    sp.add_argument("--train", default=None)
    sp.add_argument("--val", default=None)
    sp.add_argument("--test", default=None)
    sp.add_argument("--classes", default=None)
    sp.add_argument("--image-root", default=None)
    sp.add_argument("--workers", type=int, default=None)
    sp.add_argument("--max-listed", type=int, default=20)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


def _features_parser() -> _Parser:
    return _run_parser("lmpt data features", "Compute the image-feature cache of a config (torchrun: sharded).",
                       config="required", select=False)


def _demo_parser() -> _Parser:
    sp = _Parser(prog="lmpt demo", description="The offline benchmark: generated world, small CLIP, every method "
                                                "x 3 seeds.")
    sp.add_argument("--quick", action="store_true", help="a smaller, faster version (< 2 min) for smoke tests")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings for every run (loss.db.kappa=0.05)")
    sp.add_argument("--out", default="lmpt-demo", help="output folder (default: ./lmpt-demo)")
    sp.add_argument("--world-seed", type=int, default=0)
    sp.add_argument("--classes", type=int, default=20, help="20: VOC-LT-like; 80: COCO-LT-like")
    sp.add_argument("--seeds", default=None, help="comma-separated training seeds (default 0,1,2)")
    sp.add_argument("--cache-dir", default=None)
    sp.add_argument("--device", default="auto")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


# command -> (one-line help, parser factory, handler)
COMMANDS: dict[str, tuple[str, Callable[[], _Parser], Callable[[argparse.Namespace], int]]] = {
    "train": ("train a classifier (prompts, or --method linear-probe)", _train_parser, cmd_train),
    "zeroshot": ("evaluate zero-shot CLIP", _zeroshot_parser, cmd_zeroshot),
    "eval": ("re-evaluate a finished run", _eval_parser, cmd_eval),
    "predict": ("label images with a run or an exported classifier", _predict_parser, cmd_predict),
    "export": ("write a run's classifier as one TorchScript file", _export_parser, cmd_export),
    "sweep": ("methods x seeds, with a mean ± std table", _sweep_parser, cmd_sweep),
    "data check": ("check a data set's images and print a summary", _check_parser, cmd_data_check),
    "data features": ("fill the feature cache of a config (torchrun: sharded)", _features_parser, cmd_data_features),
    "demo": ("the offline benchmark: generated world, all methods x 3 seeds", _demo_parser, cmd_demo),
}


def _top_help() -> str:
    lines = [f"usage: lmpt COMMAND [options] [KEY=VALUE ...]   (lmpt {__version__})", "",
             "Long-tailed multi-label recognition with CLIP prompt tuning (LMPT).", "", "commands:"]
    lines += [f"  {name:<15} {text}" for name, (text, _, _) in COMMANDS.items()]
    lines += ["", "`lmpt COMMAND --help` shows a command's options. " + EPILOG, "",
              "options: -v/--verbose (INFO logs on the console), --version"]
    return "\n".join(lines)


def _split_command(argv: list[str]) -> tuple[Optional[str], list[str]]:
    if argv[:1] == ["data"] and len(argv) > 1 and f"data {argv[1]}" in COMMANDS:
        return f"data {argv[1]}", argv[2:]
    if argv and argv[0] in COMMANDS:
        return argv[0], argv[1:]
    return None, argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv[:1])
    if verbose:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"lmpt {__version__}")
        return 0
    command, rest = _split_command(argv)
    if command is None and argv[0] == "data":
        print("error: `lmpt data` needs an action: `lmpt data check ...` or `lmpt data features ...`", file=sys.stderr)
        return 2
    if command is None:
        import difflib

        close = difflib.get_close_matches(argv[0], [c.split()[0] for c in COMMANDS], n=1)
        hint = f" Did you mean `lmpt {close[0]}`?" if close else ""
        print(f"error: unknown command {' '.join(argv[:2]) if argv[0] == 'data' else argv[0]!r}.{hint} "
              f"Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    _, make_parser, handler = COMMANDS[command]
    try:
        args = make_parser().parse_intermixed_args(rest)
    except SystemExit as exc:
        return int(exc.code or 0)
    args.command = f"lmpt {command}"
    _setup_logging(verbose or getattr(args, "verbose", False))
    if os.environ.get("LMPT_ALLOW_DOWNLOAD") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return int(handler(args) or 0)
    except (UserError, ValueError) as exc:
        if getattr(args, "verbose", False) or verbose:
            raise
        rank = os.environ.get("RANK")
        prefix = f"error (rank {rank}): " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else "error: "
        print(prefix + " ".join(str(exc).split("\n")[0:1]) + _more_lines(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted. Finished work is kept: feature chunks stay cached and `lmpt train --resume RUN_DIR` "
              "continues a run from its last checkpoint.", file=sys.stderr)
        return 130


def _more_lines(exc: BaseException) -> str:
    """Data errors may list several problems, one per line: keep them after the first line."""
    lines = str(exc).split("\n")
    return ("\n" + "\n".join(lines[1:])) if len(lines) > 1 else ""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
