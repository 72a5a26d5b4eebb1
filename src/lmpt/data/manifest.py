"""Your own data: one manifest file per split, CSV or JSON Lines.

JSON Lines (``.jsonl`` / ``.json-lines``), one object per line::

    {"image": "photos/001.jpg", "labels": ["cat", "dog"], "caption": "a cat next to a dog"}

``labels`` may also be one string with names separated by ``;`` or ``|``. ``caption`` is optional
(missing, null or "" means none). Blank lines are skipped.

CSV (``.csv``): a header row with the columns ``image`` and ``labels`` (names separated by ``;`` or
``|``) and optionally ``caption``; other columns are ignored, header names are matched case-insensitively.

Relative image paths resolve against ``image_root`` when given, else against the manifest's folder;
``ids`` keep the path as written. Classes come from a class list file (one name per line, ``#``
comments and blank lines ignored) or, without one, are the sorted union of the labels in the train
manifest. Label names are matched exactly (case-sensitive, surrounding spaces stripped).

Captions: a split's ``captions`` is None when none of its rows has one; when only some rows have one,
the others get "" (the caption loss treats them like any other text, so give every training image a
caption or none).

Every problem is reported with the file and the 1-based line number (for CSV the header is line 1);
all row problems of all manifests are collected and raised together in one DataError.
"""
from __future__ import annotations

import csv
import difflib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import DataError
from ..io import atomic_path
from .dataset import MultiLabelDataset, MultiLabelSplit
from .manifest_rows import LABEL_SEP, PathLike, Row, fmt_errors, manifest_format, read_manifest
from .splits import split_train_val

log = logging.getLogger(__name__)

def read_class_list(path: PathLike) -> list[str]:
    """Class names from a text file: one per line; ``#`` starts a comment; blank lines are ignored."""
    return list(_read_class_list(path))


def _read_class_list(path: PathLike) -> dict[str, int]:
    """Class name -> 1-based line number, in file order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"class list {path} does not exist; give a text file with one class name per line")
    names: list[str] = []
    first: dict[str, int] = {}
    errors = []
    with open(path, encoding="utf-8-sig") as f:
        for no, line in enumerate(f, start=1):
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if LABEL_SEP.search(name):
                errors.append(f"{path}, line {no}: class name {name!r} contains ';' or '|', which separate labels")
            elif name in first:
                errors.append(f"{path}, line {no}: class {name!r} already listed on line {first[name]}")
            else:
                first[name] = no
                names.append(name)
    if errors:
        raise DataError(fmt_errors(errors, str(path)))
    if not names:
        raise DataError(f"class list {path} has no class names; write one name per line")
    return first


def _suggest(name: str, classes: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, classes, n=1, cutoff=0.6)
    if not close:
        lower = {c.lower(): c for c in classes}
        close = [lower[name.lower()]] if name.lower() in lower else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _image_path(image: str, base: Path) -> str:
    """A manifest row's image as a normalised path: absolute as given, else relative to ``base``."""
    p = Path(image).expanduser()
    return os.path.normpath(str(p if p.is_absolute() else base / p))


def _build_split(split_name: str, path: Path, rows: list[Row], classes: list[str], base: Path,
                 errors: list[str], class_source: str) -> MultiLabelSplit:
    index = {c: i for i, c in enumerate(classes)}
    labels = np.zeros((len(rows), len(classes)), dtype=np.uint8)
    seen: dict[str, int] = {}
    paths, ids, captions = [], [], []
    for r, row in enumerate(rows):
        where = f"{path}, line {row.line}"
        if not row.labels:
            errors.append(f"{where}: image {row.image!r} has no labels; every row needs at least one class name")
        for name in row.labels:
            if name in index:
                labels[r, index[name]] = 1
            else:
                errors.append(f"{where}: unknown label {name!r} (not in {class_source}){_suggest(name, classes)}")
        full = _image_path(row.image, base)
        if full in seen:
            errors.append(f"{where}: image {row.image!r} is listed twice in the {split_name} split (also line "
                          f"{seen[full]}); remove one of the two rows")
        else:
            seen[full] = row.line
        paths.append(full)
        ids.append(row.image)
        captions.append(row.caption or "")
    has_caption = any(row.caption for row in rows)
    return MultiLabelSplit(name=split_name, paths=paths, ids=ids, labels=labels,
                           captions=captions if has_caption else None)


def load_manifest_split(path: PathLike, classes: Union[PathLike, Sequence[str]], image_root: Optional[PathLike] = None,
                        name: str = "split") -> MultiLabelSplit:
    """One manifest as a :class:`MultiLabelSplit` with the label columns of ``classes`` (a class list file or names).

    Problems are reported like :func:`load_manifest_dataset`'s, with file and line; image files are not checked.
    """
    path = Path(path).expanduser()
    if isinstance(classes, (str, os.PathLike)):
        class_names = read_class_list(classes)
        class_source = f"class list {classes}"
    else:
        class_names, class_source = [str(c) for c in classes], "the given class names"
    errors: list[str] = []
    rows = read_manifest(path, errors)
    base = Path(image_root).expanduser() if image_root is not None else path.parent
    split = _build_split(name, path, rows, class_names, base.absolute(), errors, class_source)
    if errors:
        raise DataError(fmt_errors(errors, str(path)) + "\nFix these rows and run again.")
    return split


def read_manifest_images(path: PathLike, image_root: Optional[PathLike] = None) -> tuple[list[str], list[list[str]]]:
    """The image paths (resolved against ``image_root`` or the manifest's folder) and label names of a manifest.

    For labelling new images: rows may have empty labels, and class names are not checked.
    """
    path = Path(path).expanduser()
    errors: list[str] = []
    rows = read_manifest(path, errors)
    if errors:
        raise DataError(fmt_errors(errors, str(path)) + "\nFix these rows and run again.")
    base = (Path(image_root).expanduser() if image_root is not None else path.parent).absolute()
    return [_image_path(r.image, base) for r in rows], [list(r.labels) for r in rows]


def load_manifest_dataset(train: PathLike, test: PathLike, val: Optional[PathLike] = None,
                          classes: Union[PathLike, Sequence[str], None] = None, image_root: Optional[PathLike] = None,
                          val_fraction: float = 0.0, seed: int = 0, name: str = "custom",
                          check_files: bool = True) -> MultiLabelDataset:
    """Build a data set from per-split manifests (see the module docstring for the formats).

    ``classes`` is a class list file, or a sequence of names, or None (sorted union of train labels).
    ``class_freq`` and the head/medium/tail groups are those of the full train manifest, before
    ``val_fraction`` carves a val split out of it (``val`` and ``val_fraction > 0`` exclude each other).
    With ``check_files`` every image path must exist (decoding is checked by ``lmpt.data.check``).
    """
    if val is not None and val_fraction:
        raise DataError(f"both a val manifest ({val}) and val_fraction={val_fraction} were given; use one of them")
    files = {"train": Path(train).expanduser(), "test": Path(test).expanduser()}
    if val is not None:
        files["val"] = Path(val).expanduser()
    errors: list[str] = []
    rows = {k: read_manifest(p, errors) for k, p in files.items()}

    class_file: Optional[Path] = None
    if classes is None:
        class_names = sorted({n for row in rows["train"] for n in row.labels})
        class_source = f"the labels of the train manifest {files['train']}"
    elif isinstance(classes, (str, os.PathLike)):
        class_file = Path(classes).expanduser()
        class_lines = _read_class_list(class_file)
        class_names = list(class_lines)
        class_source = f"class list {class_file}"
    else:
        class_names = [str(c).strip() for c in classes]
        if len(set(class_names)) != len(class_names) or not all(class_names):
            raise DataError(f"class names must be unique and non-empty, got {class_names}")
        class_source = "the given class names"

    splits = {}
    for k, p in files.items():
        base = Path(image_root).expanduser() if image_root is not None else p.parent
        splits[k] = _build_split(k, p, rows[k], class_names, base.absolute(), errors, class_source)
    if errors:
        raise DataError(fmt_errors(errors, "the manifests") + "\nFix these rows and run again.")
    if not class_names or len(splits["train"]) == 0:
        raise DataError(f"train manifest {files['train']} has no rows; it needs at least one labelled image")
    for k in ("test",) + (("val",) if "val" in splits else ()):
        if len(splits[k]) == 0:
            raise DataError(f"{k} manifest {files[k]} has no rows; it needs at least one labelled image")

    freq = splits["train"].class_counts
    empty = np.flatnonzero(freq == 0)
    if len(empty):
        if class_file is not None:
            listed = ", ".join(f"{class_names[i]!r} ({class_file}, line {class_lines[class_names[i]]})"
                               for i in empty)
        else:
            listed = ", ".join(repr(class_names[i]) for i in empty)
        raise DataError(f"{len(empty)} class(es) of {class_source} have no training image: {listed}. Every class "
                        f"needs at least one training image in {files['train']}; add images or remove the class.")

    if check_files:
        missing = [(k, files[k], row.line, path) for k in splits
                   for row, path in zip(rows[k], splits[k].paths) if not os.path.isfile(path)]
        if missing:
            shown = "\n  ".join(f"{f}, line {no}: {p}" for _, f, no, p in missing[:5])
            more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
            where = f"image_root {image_root}" if image_root is not None else "each manifest's folder"
            raise DataError(f"{len(missing)} image file(s) listed in the manifests do not exist:\n  {shown}{more}\n"
                            f"Relative paths resolve against {where}; pass image_root or fix the paths.")

    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        overlap = set(splits[a].paths) & set(splits[b].paths) if a in splits and b in splits else set()
        if overlap:
            log.warning("%d image(s) appear in both the %s and %s manifests (e.g. %s): %s scores are then not "
                        "held out", len(overlap), a, b, sorted(overlap)[0], b)

    train_split = splits["train"]
    val_split = splits.get("val")
    if val_fraction:
        train_split, val_split = split_train_val(train_split, val_fraction, seed)
    meta = {
        "manifests": {k: str(p) for k, p in files.items()},
        "classes_file": str(class_file) if class_file else None,
        "image_root": str(image_root) if image_root is not None else None,
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "unlabelled_test_images": 0,
    }
    root = Path(image_root).expanduser().absolute() if image_root is not None else files["train"].parent.absolute()
    return MultiLabelDataset(name=name, class_names=class_names, train=train_split, test=splits["test"],
                             val=val_split, class_freq=freq, root=root, meta=meta)


def write_manifest(path: PathLike, split: MultiLabelSplit, class_names: Sequence[str],
                   image_root: Optional[PathLike] = None) -> Path:
    """Write ``split`` as a manifest (JSON Lines, or CSV when ``path`` ends in .csv).

    Image paths are written relative to ``image_root`` when given (load it back with the same
    ``image_root``), else relative to the manifest's folder when the image lies inside it, else
    absolute. Captions are written when the split has them (empty ones omitted).
    """
    path = Path(path).expanduser()
    fmt = manifest_format(path)
    if split.num_classes != len(class_names):
        raise ValueError(f"{len(class_names)} class names for {split.num_classes} label columns")
    base = Path(image_root).expanduser().absolute() if image_root is not None else path.parent.absolute()
    if fmt == "csv":
        bad = [c for c in class_names if LABEL_SEP.search(c)]
        if bad:
            raise DataError(f"cannot write CSV manifest {path}: class names {bad} contain ';' or '|'; use .jsonl")

    def rel(p: str) -> str:
        ap = Path(os.path.abspath(p))
        try:
            return ap.relative_to(base).as_posix()
        except ValueError:
            return str(ap)

    records = []
    for i in range(len(split)):
        rec = {"image": rel(split.paths[i]), "labels": [class_names[j] for j in np.flatnonzero(split.labels[i])]}
        if split.captions is not None and split.captions[i]:
            rec["caption"] = split.captions[i]
        records.append(rec)
    with atomic_path(path) as tmp:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image", "labels", "caption"])
                for rec in records:
                    w.writerow([rec["image"], ";".join(rec["labels"]), rec.get("caption", "")])
    return path
