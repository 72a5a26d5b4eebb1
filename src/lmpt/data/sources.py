"""Data sources by name: every source ends as the same thing, a :class:`~lmpt.data.dataset.MultiLabelDataset`.

* ``voc-lt`` / ``coco-lt``: the packaged official lists with images under ``root``;
* ``manifest``: your own CSV / JSON Lines manifests (``train``, ``test``, optional ``val`` and ``classes``).

:func:`load_dataset` is the one way to build a data set from its source; the engine (from a config)
and ``lmpt data check`` (from command-line options) both call it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from ..errors import ConfigError
from ..registry import Registry
from .dataset import MultiLabelDataset

PathLike = Union[str, Path]

DATA_SOURCES: Registry[Callable[..., MultiLabelDataset]] = Registry("data set")


def _benchmark(name: str) -> Callable[..., MultiLabelDataset]:
    def load(*, root=None, val_fraction=0.0, split_seed=0, class_names="readable", **unused) -> MultiLabelDataset:
        from .benchmarks import load_benchmark

        if not root:
            raise ConfigError(f"{name} needs the folder that holds its images: pass data.root=DIR "
                              f"(lmpt data check: --root DIR); see README 'Reproduce LMPT on VOC-LT and COCO-LT'")
        return load_benchmark(name, root, val_fraction=val_fraction, seed=split_seed, class_names=class_names)

    return load


def _manifest(*, train=None, val=None, test=None, classes=None, image_root=None, val_fraction=0.0, split_seed=0,
              check_files=True, **unused) -> MultiLabelDataset:
    from .manifest import load_manifest_dataset

    if not (train and test):
        raise ConfigError("a manifest data set needs a train and a test manifest (data.train=FILE data.test=FILE; "
                          "lmpt data check: --train FILE --test FILE); CSV or JSON Lines, see README 'Your own data'")
    return load_manifest_dataset(train, test, val=val, classes=classes, image_root=image_root,
                                 val_fraction=0.0 if val else val_fraction, seed=split_seed, check_files=check_files)


DATA_SOURCES.register("voc-lt", _benchmark("voc-lt"))
DATA_SOURCES.register("coco-lt", _benchmark("coco-lt"))
DATA_SOURCES.register("manifest", _manifest)


def load_dataset(source: str, *, root: Optional[PathLike] = None, train: Optional[PathLike] = None,
                 val: Optional[PathLike] = None, test: Optional[PathLike] = None,
                 classes: Optional[PathLike] = None, image_root: Optional[PathLike] = None,
                 class_names: str = "readable", val_fraction: float = 0.0, split_seed: int = 0,
                 check_files: bool = True) -> MultiLabelDataset:
    """Build the data set of ``source`` (a name in :data:`DATA_SOURCES`); options a source does not use are ignored.

    ``val_fraction`` carves a validation split out of train by ``split_seed`` (never a class's last image);
    a ``val`` manifest replaces it.
    """
    try:
        loader = DATA_SOURCES.lookup(source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return loader(root=root, train=train, val=val, test=test, classes=classes, image_root=image_root,
                  class_names=class_names, val_fraction=val_fraction, split_seed=split_seed, check_files=check_files)
