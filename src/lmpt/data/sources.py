"""Data sources by name: every source ends as the same thing, a :class:`~lmpt.data.dataset.MultiLabelDataset`.

* ``voc-lt`` / ``coco-lt`` (:data:`lmpt.data.benchmarks.BENCHMARKS`): the packaged official lists with images
  under ``root``;
* ``manifest``: your own CSV / JSON Lines manifests (``train``, ``test``, optional ``val`` and ``classes``).

:func:`load_dataset` is the one way to build a data set from its source; the engine (from a config) and
``lmpt data check`` (from command-line options) both call it. Each source says which settings it needs
(:attr:`DataSource.requires`); :func:`check_source_settings` is the one check of them, used when a config is
loaded (before any slow work) and again here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..errors import ConfigError
from ..registry import Registry
from .benchmarks import BENCHMARKS
from .dataset import MultiLabelDataset

PathLike = Union[str, Path]


@dataclass(frozen=True)
class DataSource:
    """How to build a data set of one kind, and the settings it cannot do without."""

    load: Callable[..., MultiLabelDataset]
    requires: tuple[str, ...]  # keys of the data section (``root``, ``train``, ``test``) that must be set
    hint: str  # what to pass, for the error message


DATA_SOURCES: Registry[DataSource] = Registry("data set")


def _benchmark(name: str) -> Callable[..., MultiLabelDataset]:
    def load(*, root=None, val_fraction=0.0, split_seed=0, class_names="readable", **unused) -> MultiLabelDataset:
        from .benchmarks import load_benchmark

        return load_benchmark(name, root, val_fraction=val_fraction, seed=split_seed, class_names=class_names)

    return load


def _manifest(*, train=None, val=None, test=None, classes=None, image_root=None, val_fraction=0.0, split_seed=0,
              check_files=True, **unused) -> MultiLabelDataset:
    from .manifest import load_manifest_dataset

    return load_manifest_dataset(train, test, val=val, classes=classes, image_root=image_root,
                                 val_fraction=0.0 if val else val_fraction, seed=split_seed, check_files=check_files)


for _name in BENCHMARKS:
    DATA_SOURCES.register(_name, DataSource(
        _benchmark(_name), ("root",),
        f"pass data.root=DIR, the folder that holds the {_name} images (lmpt data check: --root DIR); see README "
        "'Reproduce LMPT on VOC-LT and COCO-LT'"))
DATA_SOURCES.register("manifest", DataSource(
    _manifest, ("train", "test"),
    "a manifest data set needs a train and a test manifest: data.train=FILE data.test=FILE (lmpt data check: "
    "--train FILE --test FILE); CSV or JSON Lines, see README 'Your own data'"))


def check_source_settings(source: str, settings: dict[str, Any]) -> None:
    """ConfigError when ``source`` is unknown or a setting it requires is empty."""
    entry = DATA_SOURCES.lookup(source)
    missing = [k for k in entry.requires if not settings.get(k)]
    if missing:
        raise ConfigError(f"data.dataset={source} but data.{missing[0]} is not set: {entry.hint}")


def load_dataset(source: str, *, root: Optional[PathLike] = None, train: Optional[PathLike] = None,
                 val: Optional[PathLike] = None, test: Optional[PathLike] = None,
                 classes: Optional[PathLike] = None, image_root: Optional[PathLike] = None,
                 class_names: str = "readable", val_fraction: float = 0.0, split_seed: int = 0,
                 check_files: bool = True) -> MultiLabelDataset:
    """Build the data set of ``source`` (a name in :data:`DATA_SOURCES`); options a source does not use are ignored.

    ``val_fraction`` carves a validation split out of train by ``split_seed`` (never a class's last image);
    a ``val`` manifest replaces it.
    """
    settings = dict(root=root, train=train, val=val, test=test, classes=classes, image_root=image_root)
    check_source_settings(source, settings)
    return DATA_SOURCES[source].load(**settings, class_names=class_names, val_fraction=val_fraction,
                                     split_seed=split_seed, check_files=check_files)
