"""Image decoding and preprocessing.

Two preprocessing modes:

* ``"reference"``: what the LMPT reference code does: ``Resize((s, s))`` (squash, aspect ratio not
  kept, bilinear), ``ToTensor``, ImageNet mean/std.
* ``"clip"``: the backbone's own preprocessing: resize the shortest side to ``s`` (bicubic), center
  crop ``s``, ``ToTensor``, CLIP mean/std (OpenAI's unless given).

The reference's only augmentation is a random horizontal flip. Here ``flip`` is deterministic:
``flip=True`` always mirrors, as the last step (an exact mirror of the unflipped tensor), so a
feature cache can store both variants of every training image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from PIL import Image
from torchvision import transforms as T

from ..errors import DataError  # noqa: F401  (re-exported for callers)
from .imagefile import exif_orientation, load_image, to_rgb  # noqa: F401  (decoding lives in the torch-free module)
from ..registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)



@dataclass(frozen=True)
class PreprocessMode:
    """A preprocessing mode: how an image is resized to ``s x s`` and which statistics normalise it."""

    resize: str  # "squash" (Resize((s, s))) or "shortest_side+center_crop" (Resize(s) + CenterCrop(s))
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


PREPROCESSING: Registry[PreprocessMode] = Registry("preprocessing mode")
PREPROCESSING.register("reference", PreprocessMode("squash", "bilinear", IMAGENET_MEAN, IMAGENET_STD))
PREPROCESSING.register("clip", PreprocessMode("shortest_side+center_crop", "bicubic", OPENAI_CLIP_MEAN,
                                              OPENAI_CLIP_STD))
_INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "lanczos": T.InterpolationMode.LANCZOS,
}


def _resolve(mode: str, mean, std, interpolation) -> tuple[tuple, tuple, str]:
    spec = PREPROCESSING.lookup(mode)
    mean = tuple(float(x) for x in (spec.mean if mean is None else mean))
    std = tuple(float(x) for x in (spec.std if std is None else std))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got mean={mean} std={std}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {std}")
    interpolation = str(spec.interpolation if interpolation is None else interpolation).lower()
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {tuple(_INTERPOLATIONS)}")
    return mean, std, interpolation


class HorizontalFlip(torch.nn.Module):
    """Always mirror a ``[..., H, W]`` tensor left-right (deterministic, picklable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, dims=(-1,))


def _resize_steps(mode: str, size: int, interpolation: str) -> list:
    """The mode's resize (and crop) to ``size x size`` as torchvision PIL transforms."""
    im = _INTERPOLATIONS[interpolation]
    if PREPROCESSING[mode].resize == "squash":
        return [T.Resize((size, size), interpolation=im)]
    return [T.Resize(size, interpolation=im), T.CenterCrop(size)]


def build_transform(mode: str, image_size: int = 224, mean: Optional[Sequence[float]] = None,
                    std: Optional[Sequence[float]] = None, interpolation: Optional[str] = None,
                    flip: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """A picklable callable ``PIL image -> float tensor [3, s, s]``.

    ``mean``/``std`` default to ImageNet's for "reference" and OpenAI CLIP's for "clip";
    ``interpolation`` defaults to "bilinear" for "reference" and "bicubic" for "clip".
    ``flip=True`` always mirrors the result horizontally.
    """
    mean, std, interp = _resolve(mode, mean, std, interpolation)
    s = int(image_size)
    if s <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    steps = _resize_steps(mode, s, interp) + [T.ToTensor(), T.Normalize(mean, std)]
    if flip:
        steps.append(HorizontalFlip())
    return T.Compose(steps)


def build_uint8_transform(signature: dict) -> Callable[[Image.Image], torch.Tensor]:
    """``PIL image -> uint8 [3, s, s]``: the resize and crop of a resolved preprocessing, before ``ToTensor`` and
    the normalisation (see :func:`normalize_uint8`). Images kept in memory this way take a quarter of the space."""
    steps = _resize_steps(signature["mode"], int(signature["image_size"]), signature["interpolation"])
    return T.Compose(steps + [T.PILToTensor()])


def normalize_uint8(images: torch.Tensor, signature: dict) -> torch.Tensor:
    """uint8 ``[..., 3, s, s]`` -> float: ``/ 255`` and the mean/std normalisation, exactly as ``ToTensor`` and
    ``Normalize`` compute them, so ``normalize_uint8(build_uint8_transform(sig)(im), sig)`` equals
    ``transform_from_signature(sig)(im)``."""
    mean = torch.tensor(signature["mean"], dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.tensor(signature["std"], dtype=torch.float32, device=images.device).view(3, 1, 1)
    return (images.to(torch.float32).div(255) - mean) / std


def transform_signature(mode: str, image_size: int = 224, mean: Optional[Sequence[float]] = None,
                        std: Optional[Sequence[float]] = None, interpolation: Optional[str] = None) -> dict:
    """JSON-serialisable description of the preprocessing (defaults resolved), for cache keys.

    The flip is not part of it: a cache stores both variants under one key.
    """
    mean, std, interp = _resolve(mode, mean, std, interpolation)
    return {
        "mode": mode,
        "image_size": int(image_size),
        "resize": PREPROCESSING[mode].resize,
        "interpolation": interp,
        "mean": list(mean),
        "std": list(std),
        "version": 1,
    }


def transform_from_signature(signature: dict, flip: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """:func:`build_transform` for a resolved preprocessing description (:func:`transform_signature`'s keys)."""
    return build_transform(signature["mode"], signature["image_size"], signature["mean"], signature["std"],
                           signature["interpolation"], flip=flip)


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become encoder inputs (see :mod:`lmpt.data.images`).

    ``mode="reference"`` squashes to the backbone's resolution with ImageNet statistics, as the LMPT
    reference does; ``mode="clip"`` uses the backbone's own resize, crop and statistics.
    """

    mode: str = "reference"

    def resolve(self, backbone: Any) -> dict:
        """The resolved description (:func:`transform_signature`) for a backbone (a ``CLIPBackbone``: its
        ``image_size``, ``mean`` and ``std``)."""
        if self.mode == "clip":
            return transform_signature("clip", backbone.image_size, backbone.mean, backbone.std)
        return transform_signature(self.mode, backbone.image_size)


class ImageListDataset(torch.utils.data.Dataset):
    """``(index, tensor)`` for each path; usable from DataLoader worker processes.

    ``transform`` is one callable (tensor ``[3, s, s]``) or a sequence of callables, in which case the
    image is decoded once and the results are stacked (``[V, 3, s, s]``), e.g. unflipped and flipped.
    A missing or undecodable file raises DataError naming it.
    """

    def __init__(self, paths: Sequence[Union[str, os.PathLike]],
                 transform: Union[Callable, Sequence[Callable]]):
        self.paths = [os.fspath(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        image = load_image(self.paths[index])
        if callable(self.transform):
            return index, self.transform(image)
        return index, torch.stack([t(image) for t in self.transform])


def load_images_uint8(paths: Sequence[Union[str, os.PathLike]], signature: dict, num_workers: int = 0,
                      batch_size: int = 64) -> torch.Tensor:
    """Every image of ``paths`` decoded, resized and cropped once: uint8 ``[N, 3, s, s]`` in list order.

    A missing or undecodable file raises DataError naming it.
    """
    s = int(signature["image_size"])
    if not len(paths):
        return torch.zeros(0, 3, s, s, dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(ImageListDataset(paths, build_uint8_transform(signature)),
                                         batch_size=batch_size, num_workers=num_workers if len(paths) > 64 else 0)
    out = torch.empty(len(paths), 3, s, s, dtype=torch.uint8)
    for index, images in reraise_data_errors(loader):
        out[index] = images
    return out


def reraise_data_errors(loader: Iterable):
    """Iterate ``loader``; a DataError raised in a worker comes back as a plain one-line DataError."""
    try:
        yield from loader
    except DataError as exc:
        text = str(exc)
        if "Original Traceback" in text:
            last = [line for line in text.splitlines() if "DataError:" in line]
            text = last[-1].split("DataError:", 1)[1].strip() if last else text
        raise DataError(text) from None
