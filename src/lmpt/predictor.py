"""Labelling images at scale: inputs, batched decoding with skipped failures, decisions, output formats.

Used by ``lmpt predict`` and ``lmpt.load_classifier`` for a run folder (:mod:`lmpt.engine.use.inference`), a
TorchScript file (:mod:`lmpt.deploy.torchscript`) and an ONNX file (:mod:`lmpt.deploy.onnxfile`). This module
imports no torch (numpy and Pillow only), so an ONNX classifier labels images without PyTorch installed; torch
scorers decode in DataLoader worker processes (:mod:`lmpt.predictor_torch`).

A *scorer* has ``class_names``, ``thresholds`` (per class, on its probabilities), ``transform`` (PIL image ->
``[3, s, s]`` array or tensor) and ``probabilities(batch) -> [B, C]`` numpy array; optionally ``image_size``
(checks preprocessed inputs), ``stack(list) -> batch`` (default: a float32 numpy array) and
``batches(items, decode, batch_size, num_workers)`` (default: :func:`decoded_batches`, threads).
"""
from __future__ import annotations

import csv
import functools
import glob
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np

from .errors import DataError, UserError
from .progress import progress

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MANIFEST_EXTENSIONS = (".jsonl", ".json-lines", ".csv")
FORMATS = ("table", "json", "jsonl", "csv")


class Scorer(Protocol):
    class_names: list[str]
    thresholds: np.ndarray
    transform: Callable

    def probabilities(self, images: Any) -> np.ndarray: ...


@dataclass
class Inputs:
    """Images to label (names: paths, or ``<array 0>``-style names of in-memory images), with their true labels
    when a manifest gave them (``None`` otherwise); ``images`` holds the in-memory ones by position."""

    paths: list[str]
    labels: Optional[list[Optional[list[str]]]] = None
    images: dict[int, Any] = field(default_factory=dict)


def collect_inputs(items: Sequence[Union[str, os.PathLike]]) -> Inputs:
    """Image files, folders (recursive, image extensions), glob patterns and manifests (.jsonl/.csv), in order."""
    from .data.manifest import read_manifest_images

    paths: list[str] = []
    labels: list[Optional[list[str]]] = []
    any_labels = False
    for item in map(str, items):
        if not item.strip():  # Path("") is the current folder: never what an empty value meant
            raise UserError("an input is an empty string: give image files, folders, glob patterns or manifests "
                            "(use . for the current folder)")
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UserError(f"folder {item} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")
            paths += found
            labels += [None] * len(found)
        elif p.is_file() and p.suffix.lower() in MANIFEST_EXTENSIONS:
            files, names = read_manifest_images(p)
            paths += files
            labels += [n if n else None for n in names]
            any_labels = any_labels or any(names)
        elif p.is_file():
            paths.append(str(p))
            labels.append(None)
        elif glob.has_magic(item):
            found = sorted(f for f in glob.glob(os.path.expanduser(item), recursive=True) if os.path.isfile(f))
            if not found:
                raise UserError(f"no file matches {item!r}")
            paths += found
            labels += [None] * len(found)
        else:
            raise UserError(f"input not found: {item} (give image files, folders, glob patterns or a .jsonl/.csv "
                            "manifest)")
    return Inputs(paths, labels if any_labels else None)


def _in_memory_kind(obj: Any) -> Optional[str]:
    """"image", "array" or "tensor" for an in-memory image; None for anything else."""
    from PIL import Image

    from .data.imagefile import is_tensor

    if isinstance(obj, Image.Image):
        return "image"
    if isinstance(obj, np.ndarray):
        return "array"
    return "tensor" if is_tensor(obj) else None


def as_inputs(inputs: Any) -> Inputs:
    """:class:`Inputs` of whatever ``predict`` was given: one path (a string is one path), one PIL image, array or
    tensor (a 4-D array or tensor is a batch of them), or a sequence mixing paths, folders, globs, manifests and
    in-memory images (named ``<array 0>``, ``<image 1>``, ``<tensor 2>`` by their position)."""
    if isinstance(inputs, Inputs):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    elif _in_memory_kind(inputs) in ("array", "tensor") and len(inputs.shape) == 4:
        inputs = list(inputs)
    elif _in_memory_kind(inputs) is not None:
        inputs = [inputs]
    out = Inputs([], [])
    any_labels = False
    for k, item in enumerate(inputs):
        kind = _in_memory_kind(item)
        if kind is not None:
            out.images[len(out.paths)] = item
            out.paths.append(f"<{kind} {k}>")
            out.labels.append(None)
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise UserError(f"cannot label a {type(item).__name__} (item {k}): give paths, folders, globs, manifests, "
                            "PIL images, numpy arrays or tensors")
        found = collect_inputs([item])
        out.paths += found.paths
        out.labels += found.labels or [None] * len(found.paths)
        any_labels = any_labels or found.labels is not None
    if not any_labels:
        out.labels = None
    return out


def decode_item(item: Any, transform: Callable, image_size: Optional[int] = None) -> Any:
    """One input (a path, or an in-memory image) as the scorer's ``[3, s, s]`` input."""
    from .data.imagefile import in_memory_image, load_image

    if isinstance(item, str):
        return transform(load_image(item))
    image = in_memory_image(item)
    if isinstance(image, np.ndarray):  # already preprocessed
        if image_size is not None and image.shape[1:] != (image_size, image_size):
            raise DataError(f"a preprocessed input must be [3, {image_size}, {image_size}], got {image.shape}")
        return image
    return transform(image)


def decoded_batches(items: Sequence[Any], decode: Callable[[Any], Any], batch_size: int,
                    num_workers: int = 0) -> Iterator[list[tuple[int, Any, Optional[str]]]]:
    """``[(index, decoded or None, error or None)]`` per batch; ``num_workers`` threads decode the next batch
    while the caller scores this one (PIL releases the GIL while it decodes and resizes)."""
    def one(i: int) -> tuple[int, Any, Optional[str]]:
        try:
            return i, decode(items[i]), None
        except DataError as exc:
            return i, None, str(exc).split(". ")[0]

    starts = range(0, len(items), max(1, batch_size))
    if num_workers <= 0:
        for s in starts:
            yield [one(i) for i in range(s, min(len(items), s + batch_size))]
        return
    with ThreadPoolExecutor(num_workers) as pool:
        submit = lambda s: [pool.submit(one, i) for i in range(s, min(len(items), s + batch_size))]  # noqa: E731
        pending = submit(0) if len(items) else []
        for s in starts:
            current, pending = pending, (submit(s + batch_size) if s + batch_size < len(items) else [])
            yield [f.result() for f in current]


@dataclass
class Prediction:
    image: str
    labels: list[tuple[str, float]]
    scores: dict[str, float]
    true_labels: Optional[list[str]] = None


@dataclass
class PredictResult:
    predictions: list[Prediction]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    summary: Optional[dict[str, float]] = None  # precision/recall/F1 when the inputs had labels

    def to_json(self) -> list[dict[str, Any]]:
        return [prediction_record(p) for p in self.predictions]


def choose(scores: np.ndarray, thresholds: np.ndarray, threshold: Optional[float] = None,
           top_k: Optional[int] = None) -> list[int]:
    """The chosen classes of one image, best first: the top ``k``, or ``score >= threshold`` (one for all classes
    if given, else each class's own)."""
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        return [int(c) for c in order[:top_k]]
    t = thresholds if threshold is None else np.full_like(thresholds, threshold)
    return [int(c) for c in order if scores[c] >= t[c]]


class Predicting:
    """``predict(inputs)`` for a scorer (a run folder's or an exported file's classifier)."""

    def predict(self, inputs: Any, threshold: Optional[float] = None, top_k: Optional[int] = None,
                batch_size: int = 32, num_workers: int = 0, strict: bool = False,
                show_progress: bool = False) -> "PredictResult":
        """Label images: one path (a string is always one path), or a list of files, folders, glob patterns,
        manifests, PIL images, numpy ``HxWx3`` uint8 arrays and tensors (``3xHxW`` uint8: raw; float: already
        preprocessed); see :func:`as_inputs` and :func:`predict_paths`."""
        return predict_paths(self, as_inputs(inputs), threshold=threshold, top_k=top_k, batch_size=batch_size,
                             num_workers=num_workers, strict=strict, show_progress=show_progress)


def stack_arrays(items: Sequence[Any]) -> np.ndarray:
    """A float32 batch ``[B, 3, s, s]`` of arrays (or CPU tensors)."""
    return np.stack([np.asarray(x, dtype=np.float32) for x in items])


def predict_paths(scorer: Scorer, inputs: Union[Inputs, Sequence[str]], threshold: Optional[float] = None,
                  top_k: Optional[int] = None, batch_size: int = 32, num_workers: int = 0, strict: bool = False,
                  show_progress: bool = True) -> PredictResult:
    """Score every image and choose its labels; unreadable files are skipped and listed (``strict``: raise)."""
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise UserError(f"--threshold {threshold}: a threshold on probabilities lies in [0, 1]")
    if not isinstance(inputs, Inputs):
        inputs = Inputs([str(p) for p in inputs])
    names = list(scorer.class_names)
    thresholds = np.asarray(scorer.thresholds)
    items = [inputs.images.get(i, p) for i, p in enumerate(inputs.paths)]
    decode = functools.partial(decode_item, transform=scorer.transform, image_size=getattr(scorer, "image_size", None))
    batches = getattr(scorer, "batches", decoded_batches)
    stack = getattr(scorer, "stack", stack_arrays)
    result = PredictResult([])
    bar = progress(len(inputs.paths), "predict", unit="img", enabled=show_progress)
    for batch in batches(items, decode, batch_size, num_workers):
        good = [(i, x) for i, x, _ in batch if x is not None]
        for i, _, err in batch:
            if err is not None:
                err = f"{inputs.paths[i]}: {err}" if i in inputs.images else err
                if strict:
                    raise DataError(f"{err} (--strict stops at the first unreadable file)")
                logger.info("skipped: %s", err)  # listed once, by notes() or result.failed
                result.failed.append((inputs.paths[i], err))
        if good:
            probs = scorer.probabilities(stack([x for _, x in good]))
            for (i, _), p in zip(good, probs):
                chosen = choose(p, thresholds, threshold, top_k)
                true = inputs.labels[i] if inputs.labels is not None else None
                result.predictions.append(Prediction(inputs.paths[i], [(names[c], float(p[c])) for c in chosen],
                                                     {n: float(v) for n, v in zip(names, p)}, true))
        bar.update(len(batch))
    bar.close()
    if inputs.labels is not None:
        result.summary = labelled_summary(result.predictions, names)
    return result


def labelled_summary(predictions: Sequence[Prediction], class_names: Sequence[str]) -> Optional[dict[str, float]]:
    """Precision, recall and F1 over all (image, label) decisions of the images that came with labels."""
    from .metrics import f1_scores

    rows = [p for p in predictions if p.true_labels is not None]
    if not rows:
        return None
    index = {n: i for i, n in enumerate(class_names)}
    unknown = sorted({n for p in rows for n in p.true_labels if n not in index})
    if unknown:
        logger.warning("labels not among the classifier's classes are ignored: %s", ", ".join(unknown[:10]))
    y = np.zeros((len(rows), len(class_names)), dtype=bool)
    pred = np.zeros_like(y)
    for r, p in enumerate(rows):
        y[r, [index[n] for n in p.true_labels if n in index]] = True
        pred[r, [index[n] for n, _ in p.labels]] = True
    m = f1_scores(pred.astype(float), y, 0.5)
    m["labels_per_image"], m["true_labels_per_image"] = float(pred.sum(1).mean()), float(y.sum(1).mean())
    return {"images": len(rows), "precision": m["OP"], "recall": m["OR"], "f1": m["OF1"], "CF1": m["CF1"],
            "labels_per_image": m["labels_per_image"], "true_labels_per_image": m["true_labels_per_image"]}


def notes(result: PredictResult, n_inputs: int, listed: int = 5) -> tuple[list[str], list[str]]:
    """Lines for the user: (before the output) skipped files and, if nothing was read, the error; (after it) the
    precision/recall summary of labelled inputs."""
    before = [f"skipped: {reason}" for _, reason in result.failed[:listed]]
    if len(result.failed) > listed:
        before.append(f"skipped {len(result.failed) - listed} more unreadable files")
    if not result.predictions:
        before.append(f"error: none of the {n_inputs} images could be read")
    after = []
    if result.summary:
        s = result.summary
        after.append(f"with labels: {s['images']} images: precision {s['precision']:.3f}, recall {s['recall']:.3f}, "
                     f"F1 {s['f1']:.3f}; {s['labels_per_image']:.2f} labels per image (true "
                     f"{s['true_labels_per_image']:.2f})")
    return before, after


def prediction_record(p: Prediction) -> dict[str, Any]:
    rec: dict[str, Any] = {"image": p.image, "labels": [{"label": n, "score": s} for n, s in p.labels],
                           "scores": p.scores}
    if p.true_labels is not None:
        rec["true_labels"] = p.true_labels
    return rec


def format_predictions(result: PredictResult, fmt: str = "table") -> str:
    """The predictions as a table, a JSON list, JSON lines or CSV (``image,labels,<one score column per class>``)."""
    preds = result.predictions
    if fmt == "json":
        return json.dumps(result.to_json(), indent=2)
    if fmt == "jsonl":
        return "".join(json.dumps(prediction_record(p)) + "\n" for p in preds).rstrip("\n")
    if fmt == "csv":
        names = list(preds[0].scores) if preds else []
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "labels"] + names)
        for p in preds:
            w.writerow([p.image, ";".join(n for n, _ in p.labels)] + [f"{p.scores[n]:.6g}" for n in names])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    width = max([len(p.image) for p in preds] + [5])
    lines = [f"{'image':<{width}}  labels (probability)"]
    for p in preds:
        labels = ", ".join(f"{n} ({s:.3f})" for n, s in p.labels) or "-"
        lines.append(f"{p.image:<{width}}  {labels}")
    return "\n".join(lines)


__all__ = ["collect_inputs", "as_inputs", "decoded_batches", "decode_item", "predict_paths", "Predicting", "format_predictions", "Prediction", "PredictResult", "Inputs",
           "choose", "FORMATS", "IMAGE_EXTENSIONS"]
