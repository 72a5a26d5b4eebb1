"""In-memory description of a multi-label data set: image list, label matrix, captions.

Everything between the files on disk and the training tensors goes through these two
dataclasses. Readers (benchmarks, manifests, the generated world) build them; the feature
cache, the trainer and the evaluator consume them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

HEAD_MIN = 100  # head: >= 100 training images
TAIL_MAX = 20  # tail: < 20 training images; medium in between


@dataclass
class MultiLabelSplit:
    """One split of a multi-label data set.

    Attributes:
        name: "train", "val" or "test" (free text for own data).
        paths: absolute image paths, in list order.
        ids: stable identifiers, usually the path relative to the data root as written in the
            list or manifest; used in error messages, reports and cache keys.
        labels: ``[N, C]`` uint8 matrix, 1 where the class is present.
        captions: one caption per image, or None when the split has none.
    """

    name: str
    paths: list[str]
    ids: list[str]
    labels: np.ndarray
    captions: Optional[list[str]] = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.uint8)
        n = len(self.paths)
        if len(self.ids) != n or self.labels.shape[0] != n:
            raise ValueError(
                f"split '{self.name}': {n} paths, {len(self.ids)} ids and {self.labels.shape[0]} label rows "
                "must have the same length")
        if self.captions is not None and len(self.captions) != n:
            raise ValueError(f"split '{self.name}': {len(self.captions)} captions for {n} images")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    @property
    def class_counts(self) -> np.ndarray:
        """Images per class (``[C]`` int64)."""
        return self.labels.sum(axis=0).astype(np.int64)

    def subset(self, index: Sequence[int], name: Optional[str] = None) -> "MultiLabelSplit":
        """The rows ``index`` of this split, in that order."""
        idx = np.asarray(index, dtype=np.int64)
        return replace(
            self,
            name=name or self.name,
            paths=[self.paths[i] for i in idx],
            ids=[self.ids[i] for i in idx],
            labels=self.labels[idx],
            captions=None if self.captions is None else [self.captions[i] for i in idx],
        )


@dataclass
class MultiLabelDataset:
    """A data set: class names, splits, and the per-class training counts.

    ``class_freq`` holds the per-class image counts of the *full* training split (the official
    list for VOC-LT/COCO-LT); head/medium/tail groups come from it. When a validation split is
    carved out of train, ``train`` shrinks but ``class_freq`` does not, so the groups stay
    those of the benchmark. Losses use ``train.class_counts`` (what the model actually sees).
    """

    name: str
    class_names: list[str]
    train: MultiLabelSplit
    test: MultiLabelSplit
    val: Optional[MultiLabelSplit] = None
    class_freq: Optional[np.ndarray] = None
    root: Optional[Path] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.class_freq is None:
            self.class_freq = self.train.class_counts
        self.class_freq = np.asarray(self.class_freq, dtype=np.int64)
        c = len(self.class_names)
        for split in (self.train, self.val, self.test):
            if split is not None and split.num_classes != c:
                raise ValueError(
                    f"split '{split.name}' has {split.num_classes} label columns but the data set has {c} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def groups(self, head: int = HEAD_MIN, tail: int = TAIL_MAX) -> dict[str, np.ndarray]:
        """Class indices of the head (>= head), medium and tail (< tail) groups."""
        return class_groups(self.class_freq, head=head, tail=tail)


def class_groups(class_freq: Sequence[int], head: int = HEAD_MIN, tail: int = TAIL_MAX) -> dict[str, np.ndarray]:
    """Split classes by training count: head ``n >= head``, tail ``n < tail``, medium otherwise."""
    freq = np.asarray(class_freq)
    return {
        "head": np.flatnonzero(freq >= head),
        "medium": np.flatnonzero((freq >= tail) & (freq < head)),
        "tail": np.flatnonzero(freq < tail),
    }
