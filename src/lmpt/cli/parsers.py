"""The argument parsers of the ``lmpt`` commands (no work is done here)."""
from __future__ import annotations

import argparse
from typing import NoReturn

EPILOG = "Overrides are section.key=value, e.g. optim.epochs=20 data.root=/data/VOC model.pretrained=RN50.pt"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit code 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def run_parser(prog: str, description: str, config: str = "optional", select: bool = True) -> Parser:
    sp = Parser(prog=prog, description=description, epilog=EPILOG)
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


def train_parser() -> Parser:
    from ..engine.methods import METHODS

    sp = run_parser("lmpt train", "Train a classifier: class-specific prompts (or the linear probe). CONFIG is a "
                                   "YAML file, a built-in name (voc-lt-rn50, voc-lt-vitb16, coco-lt-rn50, "
                                   "coco-lt-vitb16) or `world` (the generated benchmark).")
    sp.add_argument("--method", default=None, choices=list(METHODS), help="run.method")
    sp.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run from its checkpoint")
    return sp


def zeroshot_parser() -> Parser:
    return run_parser("lmpt zeroshot", "Evaluate zero-shot CLIP (prompt templates).", config="required",
                       select=False)


def eval_parser() -> Parser:
    sp = Parser(prog="lmpt eval", description="Re-evaluate a finished run.", epilog=EPILOG)
    sp.add_argument("run_dir", help="run folder written by lmpt train")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.root=/new/path")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


def predict_parser() -> Parser:
    from ..predictor import FORMATS

    sp = Parser(prog="lmpt predict", description="Label images with a trained run or an exported classifier. "
                 "Inputs: image files, folders (recursive), glob patterns, or .jsonl/.csv manifests (their labels, "
                 "if any, give precision/recall/F1 at the end).")
    sp.add_argument("inputs", nargs="+", help="images, folders, glob patterns or manifests")
    sp.add_argument("--run", default=None, help="run folder (or its .safetensors classifier file)")
    sp.add_argument("--model", default=None, help="a classifier written by `lmpt export`, .onnx or .pt (instead of "
                    "--run); an .onnx file needs no PyTorch")
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


def export_parser() -> Parser:
    sp = Parser(prog="lmpt export", description="Write a run's classifier as one ONNX (default) or TorchScript file "
                 "(image tower, class features, calibration, thresholds, class names, preprocessing). An .onnx file "
                 "runs on onnxruntime with numpy and Pillow, without PyTorch.")
    sp.add_argument("run_dir", help="run folder (or its .safetensors classifier file)")
    sp.add_argument("--out", required=True, help="output file: model.onnx (ONNX) or model.pt (TorchScript)")
    sp.add_argument("--format", choices=["onnx", "torchscript"], default=None,
                    help="file format (default: from the --out suffix, .pt -> torchscript, else onnx)")
    sp.add_argument("--quantize", choices=["int8", "int8-static"], default=None,
                    help="ONNX only, written instead of the float32 model: int8 = int8 MatMul/Gemm weights "
                    "(dynamic quantization); int8-static = int8 Conv/MatMul/Gemm with activation ranges calibrated "
                    "on images (fastest for ResNets)")
    sp.add_argument("--calibration-images", action="append", default=None, metavar="PATH",
                    help="int8-static: images, folders, globs or a manifest to calibrate on (repeatable; default: "
                    "64 of the run's training images)")
    sp.add_argument("--weights", default=None, help="CLIP weights file, if it moved since training")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


def sweep_parser() -> Parser:
    sp = run_parser("lmpt sweep", "Methods x seeds on one feature cache, with a mean ± std table.",
                     config="required")
    sp.add_argument("--methods", default="zeroshot,coop,coop-db,lmpt", help="comma-separated methods")
    sp.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    return sp


def check_parser() -> Parser:
    from ..data.sources import DATA_SOURCES

    sp = Parser(prog="lmpt data check", description="Check that every image exists and decodes; print a summary. "
                 "Exit code 0: every image reads; exit code 1: problems were found (listed); 2: a usage error.")
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


def download_parser() -> Parser:
    sp = Parser(prog="lmpt data download", description="Download the images a benchmark's lists name into --root, "
                "then check them (the report of `lmpt data check`). VOC-LT: the VOC2012 trainval and VOC2007 test "
                "archives (MD5-checked, resumed), only the listed images extracted. COCO-LT: the 6,909 listed images "
                "one by one from COCO's image server (archives as the fallback). A rerun resumes.")
    sp.add_argument("source", choices=["voc-lt", "coco-lt"])
    sp.add_argument("--root", required=True, help="folder to fill (VOCdevkit/ or train2017/ + val2017/ go here)")
    sp.add_argument("--mirror", action="append", default=[], metavar="URL",
                    help="a host serving the same paths, tried first (repeatable)")
    sp.add_argument("--workers", type=int, default=16, help="parallel image transfers (COCO-LT; default 16)")
    sp.add_argument("--retries", type=int, default=4, help="retries per file and host, with back-off (default 4)")
    sp.add_argument("--no-archives", action="store_true", help="COCO-LT: no archive fallback for missing images")
    sp.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extracting")
    sp.add_argument("--quiet", action="store_true", help="no progress")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


def weights_parser() -> Parser:
    sp = Parser(prog="lmpt weights fetch", description="Download pretrained CLIP weights into the Hugging Face cache "
                "(where open_clip looks), for machines that train offline; prints where each file is.")
    sp.add_argument("models", nargs="+", metavar="MODEL", help="architectures, e.g. RN50 ViT-B-16")
    sp.add_argument("--tag", default="openai", help="open_clip pretrained tag (default: openai)")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


def features_parser() -> Parser:
    return run_parser("lmpt data features", "Compute the image-feature cache of a config (torchrun: sharded).",
                       config="required", select=False)


def demo_parser() -> Parser:
    sp = Parser(prog="lmpt demo", description="The offline benchmark: generated world, small CLIP, every method "
                                                "x 3 seeds.")
    sp.add_argument("--quick", action="store_true", help="a smaller, faster version (< 2 min) for smoke tests")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings for every run (loss.db.kappa=0.05)")
    sp.add_argument("--out", default="lmpt-demo", help="output folder (default: ./lmpt-demo)")
    sp.add_argument("--world-seed", type=int, default=0)
    sp.add_argument("--classes", type=int, default=20, help="20: VOC-LT-like; 80: COCO-LT-like")
    sp.add_argument("--seeds", default=None, help="comma-separated training seeds (default 0,1,2)")
    sp.add_argument("--cache-dir", default=None)
    sp.add_argument("--device", default="auto")
    sp.add_argument("--threads", type=int, default=2,
                    help="CPU threads for features and training (the results depend on it; default 2)")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp


def compare_parser() -> Parser:
    sp = Parser(prog="lmpt compare", description="Lay a finished sweep beside the paper: total/head/medium/tail per "
                "method, the paper's figure where it gives one, the difference and each row's protocol.")
    sp.add_argument("sweep_dir", help="folder written by `lmpt sweep` (or `lmpt demo`)")
    sp.add_argument("--out", default=None, help="also write the table to this markdown file")
    sp.add_argument("-v", "--verbose", action="store_true")
    return sp
