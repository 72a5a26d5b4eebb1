"""Where JPEGs are decoded for feature extraction: PIL in worker processes, or torchvision on the GPU.

Decoders (``data.decode``):

* ``"cpu"``: the default path. DataLoader workers decode every image with PIL and preprocess it with
  :func:`lmpt.data.images.build_transform` (PIL resize, ``ToTensor``, normalise).
* ``"gpu"``: workers only read the files' bytes; the main process decodes each batch of JPEGs with
  ``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG) and resizes, crops and normalises the uint8
  tensors on the GPU (:class:`TensorPreprocess`). The next batch is decoded in a helper thread on its own
  CUDA stream while the current one is encoded. Needs a CUDA device: on any other device it is an error
  (:class:`~lmpt.errors.ConfigError`), never a silent fallback, because the decoder is part of the
  feature-cache key.
* ``"auto"``: ``"gpu"`` when the encoder runs on CUDA and torchvision can decode there, else ``"cpu"``.
* ``"tensor"`` (library and benchmarks, not offered by the config): the ``"gpu"`` code path on any device,
  e.g. the CPU, with torchvision's libjpeg-turbo decoder.

Files that are not JPEGs (PNG, ...), and JPEGs the tensor decoder rejects, go through the PIL path
(:func:`lmpt.data.images.load_image` + the PIL transform), so every readable image still gets a feature and
an unreadable one still raises the DataError naming it. Features from the two decoders differ slightly
(resampling is done on tensors instead of by PIL; nvJPEG's IDCT is not libjpeg-turbo's), so the resolved
decoder ("pil", "torchvision-cpu", "torchvision-cuda") goes into the cache key.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, Union

import torch
from PIL import Image

from ..errors import ConfigError
from .images import _INTERPOLATIONS, PREPROCESSING, exif_orientation, load_image, transform_from_signature

logger = logging.getLogger(__name__)

DECODE_CHOICES = ("auto", "cpu", "gpu")  # what data.decode accepts
DECODERS = DECODE_CHOICES + ("tensor",)  # what extract_features accepts
JPEG_MAGIC = b"\xff\xd8\xff"


def gpu_decode_available() -> bool:
    """True when torchvision can decode JPEGs on a visible CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:  # an odd torchvision build
        return False
    return True


def _quiet_torchvision_io() -> None:
    # torchvision 0.29 warns that its decoders will move to torchcodec; they work, and we fall back to PIL
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)


def resolve_decoder(decode: str, device: Union[str, torch.device]) -> str:
    """The decoder a request means on ``device``: "pil", "torchvision-cpu" or "torchvision-cuda"."""
    device = torch.device(device)
    if decode not in DECODERS:
        raise ConfigError(f"data.decode={decode!r} is not one of {', '.join(DECODE_CHOICES)}")
    if decode == "cpu":
        return "pil"
    if decode == "tensor":
        return f"torchvision-{device.type}"
    if decode == "gpu":
        if device.type != "cuda":
            raise ConfigError(f"data.decode=gpu needs the encoder on a CUDA device, but it runs on {device}; "
                              "use data.decode=auto (GPU decoding only on CUDA) or data.decode=cpu")
        if not gpu_decode_available():
            raise ConfigError("data.decode=gpu but this torchvision cannot decode JPEGs on the GPU; "
                              "use data.decode=cpu")
        return "torchvision-cuda"
    return "torchvision-cuda" if device.type == "cuda" and gpu_decode_available() else "pil"


class TensorPreprocess:
    """``uint8 [3, H, W]`` (any device) -> float ``[3, s, s]``: the tensor twin of ``build_transform``.

    Antialiased resize of the uint8 image (rounded back to uint8, as PIL does), the mode's crop, then
    ``/ 255`` and the mean/std normalisation. Resampling filters differ slightly from PIL's (see
    ``tests/test_decode.py`` for the feature difference).
    """

    def __init__(self, signature: dict) -> None:
        self.size = int(signature["image_size"])
        self.squash = PREPROCESSING[signature["mode"]].resize == "squash"
        self.interpolation = _INTERPOLATIONS[signature["interpolation"]]
        self.mean = torch.tensor(signature["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(signature["std"], dtype=torch.float32).view(3, 1, 1)
        self._stats: dict = {}

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[3, H, W]`` -> uint8 ``[3, s, s]`` (the mode's resize and crop)."""
        from torchvision.transforms.v2 import functional as TF

        s = self.size
        if self.squash:
            return TF.resize(image, [s, s], interpolation=self.interpolation, antialias=True)
        return TF.center_crop(TF.resize(image, s, interpolation=self.interpolation, antialias=True), [s, s])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., 3, s, s]`` -> float, ``/ 255``, mean/std (the statistics kept on each device)."""
        if x.device not in self._stats:
            self._stats[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._stats[x.device]
        return (x.float().div_(255) - mean) / std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize(image))


class FileBytesDataset(torch.utils.data.Dataset):
    """``(index, payload)``: a JPEG's raw bytes (uint8 tensor), or, for any other file, the PIL-preprocessed
    float tensor ``[3, s, s]``. Runs in DataLoader workers; a missing file raises DataError naming it."""

    def __init__(self, paths: Sequence[Union[str, os.PathLike]], signature: dict) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.signature = signature

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""  # let the PIL path raise the DataError that names the file and the problem
        if data[:3] == JPEG_MAGIC and _upright(data):
            return index, torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return index, _pil_tensor(path, self.signature)


def _upright(data: bytes) -> bool:
    """Whether a JPEG needs no EXIF rotation (the tensor decoders on the GPU ignore EXIF; rotated files go to PIL)."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            return exif_orientation(im) == 1
    except Exception:  # not readable by PIL either: the tensor decoder gets to try, then PIL reports the error
        return True


def _pil_tensor(path: str, signature: dict) -> torch.Tensor:
    return transform_from_signature(signature)(load_image(path))


def collate_payloads(batch):
    """Keep variable-length payloads as a list (the default collate would try to stack them)."""
    return [i for i, _ in batch], [p for _, p in batch]


class BatchDecoder:
    """One loader batch of payloads -> ``(indices, float [B, 3, s, s] on device)``."""

    def __init__(self, signature: dict, paths: Sequence[str], device: torch.device) -> None:
        _quiet_torchvision_io()
        self.signature = signature
        self.paths = paths
        self.device = device
        self.preprocess = TensorPreprocess(signature)
        self.fallbacks = 0

    def __call__(self, batch) -> tuple[list[int], torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        indices, payloads = batch
        jpeg = [k for k, p in enumerate(payloads) if p.dtype == torch.uint8]
        decoded: dict[int, torch.Tensor] = {}
        if jpeg:
            data = [payloads[k] for k in jpeg]
            try:
                images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
                decoded = dict(zip(jpeg, images))
            except Exception:  # one bad file fails the batch: decode one by one, the failures via PIL
                for k in jpeg:
                    try:
                        decoded[k] = decode_jpeg(payloads[k], mode=ImageReadMode.RGB, device=self.device)
                    except Exception as exc:
                        self._note_fallback(self.paths[indices[k]], exc)
        if len(decoded) == len(payloads):  # the usual case: resize each, normalise the batch at once
            return indices, self.preprocess.normalize(torch.stack([self.preprocess.resize(decoded[k])
                                                                   for k in range(len(payloads))]))
        out = []
        for k, p in enumerate(payloads):
            if k in decoded:
                out.append(self.preprocess(decoded[k]))
            elif p.dtype == torch.uint8:  # a JPEG the tensor decoder rejected
                out.append(_pil_tensor(self.paths[indices[k]], self.signature).to(self.device))
            else:  # not a JPEG: preprocessed by PIL in the worker
                out.append(p.to(self.device, non_blocking=True))
        return indices, torch.stack(out)

    def _note_fallback(self, path: str, exc: Exception) -> None:
        self.fallbacks += 1
        level = logging.WARNING if self.fallbacks == 1 else logging.DEBUG
        logger.log(level, "torchvision could not decode %s (%s: %s); decoding it with PIL on the CPU "
                   "(further such files are logged at debug level)", path, type(exc).__name__, exc)


def prefetched(batches: Iterable, fn: Callable[[object], torch.Tensor], device: torch.device) -> Iterator:
    """``fn(batch)`` for each batch, the next one computed in a helper thread (on its own CUDA stream on a
    GPU) while the caller works on the current one; results arrive in order."""
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def work(batch):
        if stream is None:
            return fn(batch), None
        with torch.cuda.stream(stream):
            out = fn(batch)
            event = torch.cuda.Event()
            event.record(stream)
        return out, event

    with ThreadPoolExecutor(1) as pool:
        it = iter(batches)
        first = next(it, None)
        if first is None:
            return
        future = pool.submit(work, first)
        for batch in it:
            result = future.result()
            future = pool.submit(work, batch)
            yield _ready(result, device)
        yield _ready(future.result(), device)


def _ready(result, device: torch.device):
    (indices, images), event = result
    if event is not None:  # the caller's stream waits for the decode stream; the memory is marked in use
        torch.cuda.current_stream(device).wait_event(event)
        images.record_stream(torch.cuda.current_stream(device))
    return indices, images
