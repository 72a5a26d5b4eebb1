"""Data checks: does every image exist and decode, and what does the data set look like."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from .dataset import HEAD_MIN, TAIL_MAX, MultiLabelDataset


def check_image(path: str) -> Optional[str]:
    """None when ``path`` exists and decodes fully, else a short reason."""
    if not os.path.exists(path):
        return f"missing file {path}"
    if not os.path.isfile(path):
        return f"not a file: {path}"
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure is a problem to report
        return f"does not decode ({type(e).__name__}: {e}): {path}"
    return None


def _progress(it: Iterable, total: int, enabled: bool, desc: str) -> Iterable:
    from ..progress import progress

    bar = progress(total, desc, unit="img", enabled=enabled)
    for item in it:
        yield item
        bar.update(1)
    bar.close()


def check_images(paths: Sequence[str], ids: Optional[Sequence[str]] = None, num_workers: int = 0,
                 progress: bool = False) -> list[tuple[str, str]]:
    """``(id, reason)`` for every path that is missing or does not decode, in input order.

    ``num_workers > 0`` decodes in that many worker processes.
    """
    paths = [os.fspath(p) for p in paths]
    ids = list(paths) if ids is None else list(ids)
    if len(ids) != len(paths):
        raise ValueError(f"{len(ids)} ids for {len(paths)} paths")
    if num_workers and num_workers > 0 and len(paths) > 1:
        chunk = max(1, min(256, len(paths) // (num_workers * 8) or 1))
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            reasons = list(_progress(pool.map(check_image, paths, chunksize=chunk), len(paths), progress,
                                     "checking images"))
    else:
        reasons = [check_image(p) for p in _progress(paths, len(paths), progress, "checking images")]
    return [(i, r) for i, r in zip(ids, reasons) if r is not None]


def _splits(dataset: MultiLabelDataset):
    return [s for s in (dataset.train, dataset.val, dataset.test) if s is not None]


def summarize(dataset: MultiLabelDataset) -> str:
    """Human-readable overview: sizes, labels per image, head/medium/tail classes, captions."""
    names = dataset.class_names
    lines = [f"data set {dataset.name}: {dataset.num_classes} classes"
             + (f", root {dataset.root}" if dataset.root is not None else "")]
    for s in _splits(dataset):
        per_img = s.labels.sum(axis=1)
        caps = "no captions" if s.captions is None else \
            f"captions for {sum(1 for c in s.captions if c)}/{len(s)} images"
        unl = int((per_img == 0).sum())
        lines.append(f"  {s.name:<5} {len(s):>6} images, {per_img.mean() if len(s) else 0:.2f} labels/image"
                     + (f", {unl} without labels" if unl else "") + f", {caps}")
    groups = dataset.groups()
    freq = dataset.class_freq
    lines.append(f"  class groups by training images (head >= {HEAD_MIN}, tail < {TAIL_MAX}):")
    for g in ("head", "medium", "tail"):
        idx = groups[g]
        listed = ", ".join(f"{names[i]} {int(freq[i])}" for i in idx) or "(none)"
        lines.append(f"    {g:<6} {len(idx):>3}: {listed}")
    if dataset.val is not None and dataset.meta.get("val_fraction"):
        lines.append(f"  (groups use the full train counts; {len(dataset.val)} images were moved to val)")
    return "\n".join(lines)


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`: ``summary`` text and ``(id, reason)`` problems."""

    summary: str
    problems: list[tuple[str, str]] = field(default_factory=list)
    num_images: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_listed: int = 20) -> str:
        out = [self.summary]
        if self.ok:
            out.append(f"all {self.num_images} images exist and decode: OK")
            return "\n".join(out)
        out.append(f"{len(self.problems)} problem(s):")
        for ident, reason in self.problems[:max_listed]:
            out.append(f"  {ident}: {reason}")
        if len(self.problems) > max_listed:
            out.append(f"  ... and {len(self.problems) - max_listed} more ({len(self.problems)} in total)")
        return "\n".join(out)


def check_dataset(dataset: MultiLabelDataset, num_workers: int = 0, progress: bool = False) -> CheckReport:
    """Check every image of every split (each distinct file once) and the class counts."""
    problems: list[tuple[str, str]] = []
    freq = np.asarray(dataset.train.class_counts)
    for i in np.flatnonzero(freq == 0):
        problems.append((dataset.class_names[i], "class has no training image; every class needs at least one"))
    for s in _splits(dataset):
        if len(s) == 0:
            problems.append((s.name, "split has no images"))

    seen: dict[str, str] = {}
    paths, ids = [], []
    for s in _splits(dataset):
        for p, i in zip(s.paths, s.ids):
            if p not in seen:
                seen[p] = s.name
                paths.append(p)
                ids.append(f"[{s.name}] {i}")
    problems += check_images(paths, ids, num_workers=num_workers, progress=progress)
    return CheckReport(summary=summarize(dataset), problems=problems, num_images=len(paths))
