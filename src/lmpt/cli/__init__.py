"""The ``lmpt`` command line: parses arguments (:mod:`.parsers`), runs a command (:mod:`.commands`), prints.

Options and ``section.key=value`` overrides may come in any order (argparse's intermixed parsing). Every
mistake a user can make (a :class:`~lmpt.errors.UserError`) ends in one line on stderr and exit code 2; any
other exception is a bug and keeps its traceback. Logging is set up here and nowhere else.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Callable, Optional, Sequence

from .. import __version__
from ..errors import UserError
from . import commands, parsers
from .parsers import EPILOG, Parser

logger = logging.getLogger("lmpt")

# command -> (one-line help, parser factory, handler)
COMMANDS: dict[str, tuple[str, Callable[[], Parser], Callable[[argparse.Namespace], int]]] = {
    "train": ("train a classifier (prompts, or --method linear-probe)", parsers.train_parser, commands.train_cmd),
    "zeroshot": ("evaluate zero-shot CLIP", parsers.zeroshot_parser, commands.zeroshot_cmd),
    "eval": ("re-evaluate a finished run", parsers.eval_parser, commands.eval_cmd),
    "predict": ("label images with a run or an exported classifier", parsers.predict_parser, commands.predict_cmd),
    "export": ("write a run's classifier as one ONNX or TorchScript file", parsers.export_parser, commands.export_cmd),
    "sweep": ("methods x seeds, with a mean ± std table", parsers.sweep_parser, commands.sweep_cmd),
    "compare": ("a finished sweep beside the paper's figures, with each row's protocol", parsers.compare_parser,
                commands.compare_cmd),
    "data check": ("check a data set's images and print a summary", parsers.check_parser, commands.data_check_cmd),
    "data features": ("fill the feature cache of a config (torchrun: sharded)", parsers.features_parser,
                      commands.data_features_cmd),
    "data download": ("download VOC-LT or COCO-LT images (only those the lists name)", parsers.download_parser,
                      commands.data_download_cmd),
    "weights fetch": ("download pretrained CLIP weights ahead of time (RN50 ViT-B-16)", parsers.weights_parser,
                      commands.weights_fetch_cmd),
    "demo": ("the offline benchmark: generated world, all methods x 3 seeds", parsers.demo_parser, commands.demo_cmd),
}


# command -> what an interrupted run keeps and how to go on (Ctrl-C)
INTERRUPTED = {
    "train": "Finished work is kept: feature chunks stay cached and `lmpt train --resume RUN_DIR` continues a run "
             "from its last checkpoint.",
    "data download": "Images already downloaded are kept: the same command fetches only the missing ones (a "
                     "partly downloaded archive resumes).",
    "weights fetch": "Weights already fetched are kept: the same command fetches the others.",
    "demo": "Finished work is kept: the world, its CLIP and the feature caches are reused when the same command "
            "runs again.",
}


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


def _top_help() -> str:
    lines = [f"usage: lmpt COMMAND [options] [KEY=VALUE ...]   (lmpt {__version__})", "",
             "Long-tailed multi-label recognition with CLIP prompt tuning (LMPT).", "", "commands:"]
    lines += [f"  {name:<15} {text}" for name, (text, _, _) in COMMANDS.items()]
    lines += ["", "`lmpt COMMAND --help` shows a command's options. " + EPILOG, "",
              "options: -v/--verbose (INFO logs on the console), --version"]
    return "\n".join(lines)


def _group_help(group: str) -> str:
    lines = [f"usage: lmpt {group} ACTION [options]", "", "actions:"]
    lines += [f"  {name.split()[1]:<15} {text}" for name, (text, _, _) in COMMANDS.items() if name.startswith(group + " ")]
    lines += ["", f"`lmpt {group} ACTION --help` shows an action's options."]
    return "\n".join(lines)


_GROUPS = ("data", "weights")


def _split_command(argv: list[str]) -> tuple[Optional[str], list[str]]:
    if argv[:1] and argv[0] in _GROUPS and len(argv) > 1 and f"{argv[0]} {argv[1]}" in COMMANDS:
        return f"{argv[0]} {argv[1]}", argv[2:]
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
    if command is None and argv[0] in _GROUPS:
        if argv[1:2] in (["-h"], ["--help"]):
            print(_group_help(argv[0]))
            return 0
        actions = " or ".join(f"`lmpt {c} ...`" for c in COMMANDS if c.startswith(argv[0] + " "))
        print(f"error: `lmpt {argv[0]}` needs an action: {actions} (`lmpt {argv[0]} --help`)", file=sys.stderr)
        return 2
    if command is None:
        import difflib

        close = difflib.get_close_matches(argv[0], [c.split()[0] for c in COMMANDS], n=1)
        hint = f" Did you mean `lmpt {close[0]}`?" if close else ""
        print(f"error: unknown command {' '.join(argv[:2]) if argv[0] in _GROUPS else argv[0]!r}.{hint} "
              f"Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    _, make_parser, handler = COMMANDS[command]
    try:
        args = make_parser().parse_intermixed_args(rest)
    except SystemExit as exc:
        return int(exc.code or 0)
    args.command = f"lmpt {command}"
    _setup_logging(verbose or getattr(args, "verbose", False))
    try:
        return int(handler(args) or 0)
    except UserError as exc:
        if getattr(args, "verbose", False) or verbose:
            raise
        rank = os.environ.get("RANK")
        prefix = f"error (rank {rank}): " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else "error: "
        print(prefix + str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted. " + INTERRUPTED.get(command, INTERRUPTED["train"]), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
