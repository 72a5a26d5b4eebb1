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
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms as T

from ..errors import DataError
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


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright; 2-8 = mirrored and/or rotated), 1 when there is none."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: treat as upright
        return 1
    return value if isinstance(value, int) else 1


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB image of any PIL mode: 16- and 32-bit grayscale scaled to 8 bits (``convert`` would clip them
    to white), transparency composited onto white (``convert`` would show what lies under it, often black)."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        peak = float(arr.max()) if arr.size else 0.0
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "F":
            top = 1.0 if peak <= 1.0 else 255.0 if peak <= 255 else 65535.0
        else:  # "I": 32-bit integers holding 8- or 16-bit samples (older Pillow opens 16-bit PNGs so)
            top = 255.0 if peak <= 255 else 65535.0
        arr = np.clip(arr, 0, top) * (255.0 / top)
        return Image.fromarray(np.round(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in im.info or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im if mode == "RGB" else im.convert("RGB")


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Decode ``path`` fully and return it as an RGB PIL image.

    Raises DataError naming the file when it is missing, unreadable or does not decode
    (unknown format, truncated data, ...).
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}. Check the data root / image_root, or remove "
                        "the image from the list or manifest.") from None
    except IsADirectoryError:
        raise DataError(f"image path is a directory, not a file: {path}") from None
    except PermissionError as e:
        raise DataError(f"cannot read image {path}: {e}. Fix the file permissions.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}. Replace the file or "
                        "remove it from the list; `lmpt data check` lists all such files.") from None


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
    im = _INTERPOLATIONS[interp]
    if PREPROCESSING[mode].resize == "squash":
        steps = [T.Resize((s, s), interpolation=im)]
    else:
        steps = [T.Resize(s, interpolation=im), T.CenterCrop(s)]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if flip:
        steps.append(HorizontalFlip())
    return T.Compose(steps)


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
