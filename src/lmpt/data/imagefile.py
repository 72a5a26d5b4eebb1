"""Decoding images and preprocessing them with PIL and numpy only (no torch): what a deployed classifier needs.

:class:`ArrayTransform` re-implements :func:`lmpt.data.images.build_transform` (torchvision's PIL path) from a
preprocessing signature (:func:`lmpt.data.images.transform_signature`): the same PIL resize call with the same
filter, the same crop offsets, then ``/ 255`` and the mean/std normalisation in float32. The resampling is PIL's
in both, so the two agree to float32 rounding (tests/test_deploy.py measures it; bench/export.py prints it).
"""
from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

PIL_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
SIGNATURE_KEYS = ("mode", "image_size", "resize", "interpolation", "mean", "std")


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
    """Decode ``path`` fully and return it as an RGB PIL image, upright (EXIF orientation applied), 8 bits per
    channel (:func:`to_rgb`).

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


class ArrayTransform:
    """PIL image -> float32 array ``[3, s, s]``, as :func:`lmpt.data.images.transform_from_signature` computes it."""

    def __init__(self, signature: dict[str, Any]) -> None:
        self.size = int(signature["image_size"])
        self.squash = signature["resize"] == "squash"
        self.filter = PIL_FILTERS[signature["interpolation"]]
        self.mean = np.asarray(signature["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(signature["std"], dtype=np.float32).reshape(3, 1, 1)

    def resize(self, image: Image.Image) -> Image.Image:
        s = self.size
        if self.squash:
            return image.resize((s, s), self.filter)
        w, h = image.size
        if (w <= h and w == s) or (h <= w and h == s):  # torchvision leaves such an image as it is
            resized = image
        elif w <= h:
            resized = image.resize((s, int(s * h / w)), self.filter)
        else:
            resized = image.resize((int(s * w / h), s), self.filter)
        w, h = resized.size
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return resized.crop((left, top, left + s, top + s))

    def __call__(self, image: Image.Image) -> np.ndarray:
        x = np.asarray(self.resize(image.convert("RGB")), dtype=np.uint8)
        x = x.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        return (x - self.mean) / self.std


def is_tensor(obj: Any) -> bool:
    """A torch tensor, recognised without importing torch."""
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def in_memory_image(obj: Any) -> Union[Image.Image, np.ndarray]:
    """A PIL image (RGB) for a raw in-memory image, or a float32 ``[3, s, s]`` array already preprocessed.

    PIL images; numpy uint8 arrays ``HxWx3`` (or ``HxW`` grey); torch uint8 tensors ``3xHxW``: raw images.
    Float arrays or tensors ``[3, s, s]``: already preprocessed (resized, normalised) and used as they are.
    """
    if isinstance(obj, Image.Image):
        return obj.convert("RGB")
    tensor = is_tensor(obj)
    if not (tensor or isinstance(obj, np.ndarray)):
        raise DataError(f"cannot label a {type(obj).__name__}: give a path, a PIL image, a numpy array or a tensor")
    arr = np.asarray(obj.detach().cpu()) if tensor else obj
    if arr.dtype == np.uint8:
        if tensor and arr.ndim == 3:
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
            layout = "3xHxW" if tensor else "HxWx3"
            raise DataError(f"a uint8 image needs the shape {layout} (or HxW), got {tuple(obj.shape)}")
        return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    if np.issubdtype(arr.dtype, np.floating):
        if arr.ndim != 3 or arr.shape[0] != 3:
            raise DataError(f"a float array or tensor is taken as preprocessed [3, s, s], got {tuple(arr.shape)}; "
                            "give a raw image as uint8 (HxWx3 array or 3xHxW tensor)")
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise DataError(f"cannot label an array of dtype {arr.dtype}: give uint8 images or float32 preprocessed ones")


__all__ = ["ArrayTransform", "load_image", "in_memory_image", "is_tensor", "PIL_FILTERS", "SIGNATURE_KEYS"]
