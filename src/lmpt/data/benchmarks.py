"""The two LMPT benchmarks, VOC-LT and COCO-LT, read from the packaged official lists.

The lists (copied from the LMPT repository, see ``resources/*/PROVENANCE.md``) name images relative
to a data root: ``VOCdevkit/VOC2012/JPEGImages/<id>.jpg`` (train) and
``VOCdevkit/VOC2007/JPEGImages/<id>.jpg`` (test) for VOC-LT; ``train2017/<id>.jpg`` and
``val2017/<id>.jpg`` for COCO-LT. The user passes that root; :func:`resolve_root` also accepts a
folder one level off (``VOCdevkit`` itself, ``VOCdevkit/VOC2012``, COCO's parent of ``images/``,
``train2017`` itself, ...).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import DataError
from .dataset import MultiLabelDataset, MultiLabelSplit
from .splits import split_train_val

log = logging.getLogger(__name__)

BENCHMARKS = ("voc-lt", "coco-lt")


@dataclass(frozen=True)
class _Spec:
    folder: str  # resources sub-folder
    train: str
    test: str
    captions: str
    labels: str
    image_dirs: tuple[str, ...]  # relative to the root: train images, test images
    hint: str  # what the root should contain


_SPECS = {
    "voc-lt": _Spec("voc_lt", "voc_lt_train.txt", "voc_lt_test.txt", "voc_lt_captions.txt", "voc_labels.txt",
                    ("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2007/JPEGImages"),
                    "pass the folder that contains VOCdevkit (with VOC2012 for train and VOC2007 for test)"),
    "coco-lt": _Spec("coco_lt", "coco_lt_train.txt", "coco_lt_test.txt", "coco_lt_captions.txt", "coco_labels.txt",
                     ("train2017", "val2017"),
                     "pass the folder that contains train2017 and val2017"),
}

_READABLE = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}


def readable_class_name(name: str) -> str:
    """Class name as it reads in a prompt: VOC's run-together names split into words, "_" -> " ".

    ``diningtable`` -> "dining table", ``pottedplant`` -> "potted plant", ``tvmonitor`` -> "tv monitor";
    "aeroplane" and "motorbike" stay as they are; any other name only has underscores replaced and
    whitespace collapsed.
    """
    key = name.strip()
    key = _READABLE.get(key, key)
    return " ".join(key.replace("_", " ").split())


def canonical_name(name: str) -> str:
    """``"VOC_LT"``, ``"voc-lt"``, ``"voclt"`` -> ``"voc-lt"``; DataError for an unknown benchmark."""
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"voclt": "voc-lt", "voc-mlt": "voc-lt", "voc": "voc-lt",
               "cocolt": "coco-lt", "coco-mlt": "coco-lt", "coco": "coco-lt"}
    key = aliases.get(key, key)
    if key not in _SPECS:
        raise DataError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}, or use your own "
                        "data with a manifest (see lmpt.data.manifest)")
    return key


def _resource(folder: str, filename: str):
    return resources.files("lmpt.data").joinpath("resources").joinpath(folder).joinpath(filename)


def _read_resource(folder: str, filename: str) -> str:
    try:
        return _resource(folder, filename).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"packaged list file resources/{folder}/{filename} is missing or unreadable ({e}); "
                        "the lmpt installation is incomplete: reinstall the package") from None


def _lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line; CRLF and trailing spaces tolerated."""
    return [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip()]


def _parse_class_names(folder: str, filename: str) -> list[str]:
    where = f"resources/{folder}/{filename}"
    by_id: dict[int, str] = {}
    for no, line in _lines(_read_resource(folder, filename)):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{where}, line {no}: expected '<name> <id>', got {line!r}; reinstall lmpt")
        cid = int(parts[1])
        if cid in by_id:
            raise DataError(f"{where}, line {no}: class id {cid} appears twice; reinstall lmpt")
        by_id[cid] = parts[0].strip()
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{where}: class ids are not 0..{len(by_id) - 1}; reinstall lmpt")
    return [by_id[i] for i in range(len(by_id))]


def _parse_list(folder: str, filename: str, num_classes: int) -> tuple[list[str], np.ndarray]:
    where = f"resources/{folder}/{filename}"
    rel: list[str] = []
    rows: list[list[int]] = []
    seen: dict[str, int] = {}
    for no, line in _lines(_read_resource(folder, filename)):
        parts = line.split()
        try:
            ids = [int(x) for x in parts[1:]]
        except ValueError:
            raise DataError(f"{where}, line {no}: class ids must be integers, got {line!r}") from None
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise DataError(f"{where}, line {no}: class id(s) {bad} outside 0..{num_classes - 1}")
        if parts[0] in seen:
            raise DataError(f"{where}, line {no}: image {parts[0]} already listed on line {seen[parts[0]]}")
        seen[parts[0]] = no
        rel.append(parts[0])
        rows.append(ids)
    labels = np.zeros((len(rel), num_classes), dtype=np.uint8)
    for r, ids in enumerate(rows):
        labels[r, ids] = 1
    return rel, labels


def _parse_captions(folder: str, filename: str, train_rel: list[str]) -> list[str]:
    where = f"resources/{folder}/{filename}"
    entries = _lines(_read_resource(folder, filename))
    if len(entries) != len(train_rel):
        raise DataError(f"{where}: {len(entries)} captions for {len(train_rel)} train images; "
                        "the caption file must be line-aligned with the train list")
    captions = []
    for k, ((no, line), path) in enumerate(zip(entries, train_rel)):
        parts = line.split(None, 1)
        if parts[0] != path:
            raise DataError(f"{where}, line {no}: caption is for {parts[0]!r} but train list entry {k + 1} is "
                            f"{path!r}; the caption file must be line-aligned with the train list")
        captions.append(parts[1].strip() if len(parts) > 1 else "")
    return captions


def _stats(folder: str) -> dict:
    try:
        return json.loads(_read_resource(folder, "class_stats.json"))
    except json.JSONDecodeError as e:
        raise DataError(f"resources/{folder}/class_stats.json is not valid JSON ({e}); reinstall lmpt") from None


def benchmark_class_names(name: str, style: str = "readable") -> list[str]:
    """The class names of a packaged benchmark (``"voc-lt"`` or ``"coco-lt"``), in label-id order.

    ``style="readable"`` gives prompt-ready names ("dining table"), ``"raw"`` the reference's training-prompt
    names ("diningtable", "traffic light"), ``"first-word"`` the reference's zero-shot script's ("diningtable",
    "traffic": it splits each label-file line at the first space).
    """
    spec = _SPECS[canonical_name(name)]
    return _styled_names(_parse_class_names(spec.folder, spec.labels), style)


# How class names are written in prompts: "readable" (ours), "raw" (the reference's training prompts) and
# "first-word" (the reference's zero-shot script, which keeps only the first word of each label-file line).
CLASS_NAME_STYLES = ("readable", "raw", "first-word")


def _styled_names(raw_names: list[str], style: str) -> list[str]:
    if style not in CLASS_NAME_STYLES:
        raise ValueError(f"class_names must be one of {', '.join(CLASS_NAME_STYLES)}, got {style!r}")
    if style == "readable":
        return [readable_class_name(n) for n in raw_names]
    if style == "first-word":
        return [n.split()[0] for n in raw_names]
    return list(raw_names)


def resolve_root(name: str, root: Union[str, Path]) -> Path:
    """The folder the benchmark's relative image paths hang from.

    Accepts the right folder, or one a level or two off: for VOC-LT the folder containing
    ``VOCdevkit``, ``VOCdevkit`` itself, ``VOCdevkit/VOC2012`` (or ``VOC2007``) or its ``JPEGImages``;
    for COCO-LT the folder containing ``train2017`` and ``val2017``, a parent whose ``images/`` holds
    them, or ``train2017``/``val2017`` itself. DataError when the folder does not exist or none of
    these fits.
    """
    key = canonical_name(name)
    spec = _SPECS[key]
    if root is None or str(root).strip() == "":
        raise DataError(f"{key}: no data root given; {spec.hint}")
    given = Path(root).expanduser()
    if not given.exists():
        raise DataError(f"{key}: data root {given} does not exist; {spec.hint}")
    if not given.is_dir():
        raise DataError(f"{key}: data root {given} is not a folder; {spec.hint}")
    given = given.absolute()

    candidates = [given]
    if key == "coco-lt":
        candidates += [given / "images", given / "coco", given / "coco" / "images"]
    candidates += [p for p in list(given.parents)[:3]]
    for cand in candidates:
        if all((cand / d).is_dir() for d in spec.image_dirs):
            if cand != given:
                log.info("%s: data root %s resolved to %s (the folder that contains %s)",
                         key, given, cand, " and ".join(spec.image_dirs))
            return cand
    partial = [(cand, [d for d in spec.image_dirs if not (cand / d).is_dir()]) for cand in candidates
               if any((cand / d).is_dir() for d in spec.image_dirs)]
    if partial:
        cand, missing = partial[0]
        raise DataError(f"{key}: found {cand} but it lacks {', '.join(str(cand / d) for d in missing)}; "
                        f"{spec.hint}")
    expected = " and ".join(f"DIR/{d}" for d in spec.image_dirs)
    raise DataError(f"{key}: data root {given} does not look right: expected {expected}, found neither there "
                    f"nor one level up or down; {spec.hint}")


def load_benchmark(name: str, root: Union[str, Path], val_fraction: float = 0.0, seed: int = 0,
                   class_names: str = "readable") -> MultiLabelDataset:
    """Load VOC-LT or COCO-LT from the packaged lists, with images under ``root``.

    ``class_freq`` is the official per-class count of the full train list (checked against the
    packaged ``class_stats.json``); head/medium/tail groups come from it even when ``val_fraction > 0``
    carves a validation split out of train (see :func:`lmpt.data.splits.split_train_val`).
    ``class_names="readable"`` (default) applies :func:`readable_class_name`; ``"raw"`` keeps the
    reference's names; ``"first-word"`` keeps the first word of each (the reference's zero-shot script). Train captions go with the train (and val) split; test has none.
    Image files are not opened here (see :func:`lmpt.data.check.check_dataset`).
    """
    _styled_names([], class_names)  # a bad style fails before any file is read
    key = canonical_name(name)
    spec = _SPECS[key]
    base = resolve_root(key, root)

    raw_names = _parse_class_names(spec.folder, spec.labels)
    c = len(raw_names)
    train_rel, train_labels = _parse_list(spec.folder, spec.train, c)
    test_rel, test_labels = _parse_list(spec.folder, spec.test, c)
    captions = _parse_captions(spec.folder, spec.captions, train_rel)

    freq = train_labels.sum(axis=0).astype(np.int64)
    stats = _stats(spec.folder)
    if stats.get("class_names") != raw_names or list(stats.get("class_freq", [])) != freq.tolist():
        raise DataError(f"resources/{spec.folder}: class_stats.json disagrees with {spec.labels} / {spec.train}; "
                        "the packaged files are inconsistent: reinstall lmpt")

    def split(split_name: str, rel: list[str], labels: np.ndarray, caps: Optional[list[str]]) -> MultiLabelSplit:
        return MultiLabelSplit(name=split_name, paths=[str(base / r) for r in rel], ids=list(rel),
                               labels=labels, captions=caps)

    train = split("train", train_rel, train_labels, captions)
    test = split("test", test_rel, test_labels, None)
    val = None
    if val_fraction:
        train, val = split_train_val(train, val_fraction, seed)

    names = _styled_names(raw_names, class_names)
    meta = {
        "benchmark": key,
        "source": "richard-peng-xia/LMPT @ aab39ca (Apache-2.0); see lmpt/data/resources/"
                  f"{spec.folder}/PROVENANCE.md",
        "class_names_mode": class_names,
        "raw_class_names": list(raw_names),
        "num_train_official": len(train_rel),
        "unlabelled_test_images": int((test_labels.sum(axis=1) == 0).sum()),
        "unlabelled_train_images": int((train_labels.sum(axis=1) == 0).sum()),
        "val_fraction": float(val_fraction),
        "seed": int(seed),
    }
    return MultiLabelDataset(name=key, class_names=names, train=train, test=test, val=val,
                             class_freq=freq, root=base, meta=meta)
