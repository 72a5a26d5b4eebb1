"""Reading a manifest file (CSV or JSON Lines) into rows that remember their line numbers.

The formats are described in :mod:`lmpt.data.manifest`; every problem of a row is collected with the file and
the 1-based line number (for CSV the header is line 1) instead of raised at once.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import DataError

PathLike = Union[str, os.PathLike]
_JSONL_EXT = (".jsonl", ".json-lines")
_CSV_EXT = (".csv",)
LABEL_SEP = re.compile(r"[;|]")
MAX_LISTED = 20


@dataclass
class Row:
    line: int
    image: str
    labels: list[str]
    caption: Optional[str]


def fmt_errors(errors: list[str], what: str) -> str:
    head = errors[:MAX_LISTED]
    more = len(errors) - len(head)
    text = f"{len(errors)} problem(s) in {what}:\n  " + "\n  ".join(head)
    if more:
        text += f"\n  ... and {more} more"
    return text


def split_labels(value: str) -> list[str]:
    return [s.strip() for s in LABEL_SEP.split(value) if s.strip()]


def manifest_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_JSONL_EXT):
        return "jsonl"
    if name.endswith(_CSV_EXT):
        return "csv"
    raise DataError(f"{path}: unknown manifest format; use a .csv file (columns image, labels[, caption]) or a "
                    ".jsonl / .json-lines file (one JSON object per line)")


def _read_jsonl(path: Path, errors: list[str]) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {no}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{where}: malformed JSON ({e.msg} at column {e.colno}); each line must be one "
                              'object like {"image": "a.jpg", "labels": ["cat"]}')
                continue
            if not isinstance(obj, dict):
                errors.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
                continue
            missing = [k for k in ("image", "labels") if k not in obj]
            if missing:
                errors.append(f"{where}: missing field(s) {', '.join(repr(m) for m in missing)}; every line needs "
                              '"image" and "labels"')
                continue
            image = obj["image"]
            if not isinstance(image, str) or not image.strip():
                errors.append(f"{where}: \"image\" must be a non-empty string, got {image!r}")
                continue
            labels = obj["labels"]
            if isinstance(labels, str):
                names = split_labels(labels)
            elif isinstance(labels, list) and all(isinstance(x, str) for x in labels):
                names = [x.strip() for x in labels if x.strip()]
            else:
                errors.append(f"{where}: \"labels\" must be a list of names or a string like \"cat;dog\", "
                              f"got {labels!r}")
                continue
            caption = obj.get("caption")
            if caption is not None and not isinstance(caption, str):
                errors.append(f"{where}: \"caption\" must be a string, got {caption!r}")
                continue
            rows.append(Row(no, image.strip(), names, caption.strip() if caption else None))
    return rows


def _read_csv(path: Path, errors: list[str]) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = None
        for rec in reader:
            if not any(cell.strip() for cell in rec):
                continue
            header = [h.strip().lower() for h in rec]
            header_line = reader.line_num
            break
        if header is None:
            errors.append(f"{path}, line 1: empty file; expected a header row with columns image, labels[, caption]")
            return rows
        missing = [c for c in ("image", "labels") if c not in header]
        if missing:
            errors.append(f"{path}, line {header_line}: missing column(s) {', '.join(missing)} in header "
                          f"{rec!r}; the header must name the columns image, labels and optionally caption")
            return rows
        i_img, i_lab = header.index("image"), header.index("labels")
        i_cap = header.index("caption") if "caption" in header else None
        while True:
            first_line = reader.line_num + 1  # a record may span lines (quoted newlines): report its first
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                errors.append(f"{path}, line {first_line}: malformed CSV ({e})")
                break
            if not any(cell.strip() for cell in rec):
                continue
            where = f"{path}, line {first_line}"
            if len(rec) <= max(i_img, i_lab):
                errors.append(f"{where}: {len(rec)} column(s), but the header puts image and labels in columns "
                              f"{i_img + 1} and {i_lab + 1}")
                continue
            image = rec[i_img].strip()
            if not image:
                errors.append(f"{where}: empty image path")
                continue
            caption = rec[i_cap].strip() if i_cap is not None and i_cap < len(rec) else ""
            rows.append(Row(first_line, image, split_labels(rec[i_lab]), caption or None))
    return rows


def read_manifest(path: Path, errors: list[str]) -> list[Row]:
    fmt = manifest_format(path)
    if not path.exists():
        raise DataError(f"manifest {path} does not exist; check the path")
    if not path.is_file():
        raise DataError(f"manifest {path} is not a file")
    try:
        return _read_jsonl(path, errors) if fmt == "jsonl" else _read_csv(path, errors)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); save the manifest as UTF-8") from None
