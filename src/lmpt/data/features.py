"""Feature cache: frozen image features are computed once and reused by every run.

The image encoder is frozen and the only augmentation is a horizontal flip, so each training image
has exactly two feature vectors (plain, mirrored) and each test image one. They are stored under
``<cache>/features/<key>/`` where ``key`` hashes everything the rows depend on: the backbone
(architecture, quick_gelu, a hash of its weights), the preprocessing, the numeric precision the image
tower runs at, the image list (ids, paths, file sizes and modification times) and the flip variants.
Change any of them and the key changes.

Extraction proceeds in fixed chunks of images, each written atomically (temporary file + rename) as
``chunks-<chunk size>/chunk-XXXXX.safetensors`` with its row range in the file's metadata; the
finished cache is one ``features.safetensors``, written atomically once every chunk exists, with the
row count and a hash of the image list in its metadata. Chunks of another chunk size are never joined,
a chunk whose row range does not match is recomputed, and a finished cache whose row count or image
list does not match is neither written nor read. A killed extraction therefore never leaves a file
that is read as complete, and a restart recomputes only the missing chunks. Under ``torchrun`` chunk
``i`` is encoded by rank ``i % world_size``, so the ranks' shards form the one cache (and a cache made
by one process is reused by several and vice versa).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader

from .. import distributed as dist_utils
from ..backbone import CLIPBackbone
from ..cache import resolve_cache_dir
from ..errors import DataError
from ..io import atomic_write_bytes, atomic_write_json, make_dir, safetensors_bytes, stable_hash
from ..precision import autocast, resolve_precision
from ..progress import progress as progress_bar
from .dataset import MultiLabelSplit
from .decode import BatchDecoder, FileBytesDataset, collate_payloads, prefetched, resolve_decoder
from .images import ImageListDataset, PreprocessConfig, reraise_data_errors, transform_from_signature

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
FINAL_NAME = "features.safetensors"


def _file_stamps(paths: Sequence[str]) -> list:
    stamps = []
    for p in paths:
        try:
            st = os.stat(p)
            stamps.append([st.st_size, st.st_mtime_ns])
        except OSError:
            stamps.append(None)
    return stamps


def image_list_hash(split: MultiLabelSplit) -> str:
    """Hash of a split's image ids and absolute paths, in order (stored with a cache and checked on reading)."""
    return stable_hash({"ids": split.ids, "paths": [os.path.abspath(p) for p in split.paths]}, length=24)


def feature_cache_key(backbone: CLIPBackbone, preprocess: dict, split: MultiLabelSplit, flips: bool,
                      precision: str = "fp32", decoder: str = "pil") -> str:
    """Hash of everything the cached rows depend on; ``precision`` is the resolved one (fp32, bf16, fp16),
    ``decoder`` the resolved one (:func:`lmpt.data.decode.resolve_decoder`; "pil" leaves the key as it was
    before decoders existed, so older caches stay valid)."""
    payload = {
        "version": CACHE_VERSION,
        "backbone": {"model": backbone.model_name, "fingerprint": backbone.fingerprint,
                     "quick_gelu": backbone.quick_gelu},
        "preprocess": preprocess,
        "precision": precision,
        "ids": split.ids,
        "paths": [os.path.abspath(p) for p in split.paths],
        "files": _file_stamps(split.paths),
        "flips": flips,
    }
    if decoder != "pil":
        payload["decoder"] = decoder
    return stable_hash(payload, length=24)


def _digest(features: torch.Tensor) -> str:
    """SHA-256 of a feature tensor's bytes (stored with each cache file, checked on every read)."""
    return hashlib.sha256(features.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def _load_tensor(path: Path) -> tuple[torch.Tensor, dict]:
    """A cache file's features and metadata; ValueError when its content is damaged (checksum, NaN, shape)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        feats, meta = f.get_tensor("features"), dict(f.metadata() or {})
    if feats.ndim != 3 or not feats.is_floating_point():
        raise ValueError(f"features of shape {tuple(feats.shape)} ({feats.dtype}), expected [N, V, D] floats")
    if "sha256" in meta and meta["sha256"] != _digest(feats):
        raise ValueError("content does not match its checksum")
    if not bool(torch.isfinite(feats).all()):
        raise ValueError("features hold NaN or infinite values")
    return feats, meta


def _save_tensor(path: Path, features: torch.Tensor, meta: dict) -> None:
    meta = dict(meta, sha256=_digest(features))
    atomic_write_bytes(path, safetensors_bytes({"features": features.contiguous()},
                                               {k: str(v) for k, v in meta.items()}))


def _read_final(path: Path, n: int, images: str) -> Optional[torch.Tensor]:
    """The finished cache if it holds exactly ``n`` rows of this image list, else None."""
    try:
        feats, meta = _load_tensor(path)
    except Exception as exc:  # a damaged file is recomputed, never used
        logger.warning("feature cache %s is unreadable or damaged (%s); recomputing it", path, exc)
        return None
    if feats.shape[0] != n or meta.get("rows") != str(n) or meta.get("images") != images:
        logger.warning("feature cache %s does not hold the %d rows of this image list; recomputing", path, n)
        return None
    return feats


def _read_chunk(path: Path, start: int, stop: int) -> Optional[torch.Tensor]:
    """A finished chunk if it holds rows ``start:stop``, else None."""
    if not path.is_file():
        return None
    try:
        feats, meta = _load_tensor(path)
    except Exception as exc:  # a damaged chunk is recomputed, never used
        logger.warning("feature cache chunk %s is damaged (%s); recomputing it", path, exc)
        return None
    if feats.shape[0] != stop - start or meta.get("start") != str(start) or meta.get("stop") != str(stop):
        return None
    return feats


def default_num_workers() -> int:
    return max(0, min(16, (os.cpu_count() or 1) - 1))


def extract_features(
    backbone: CLIPBackbone,
    split: MultiLabelSplit,
    preprocess: Union[PreprocessConfig, str] = "reference",
    flips: bool = False,
    cache_dir: Optional[Union[str, Path]] = None,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 128,
    num_workers: Optional[int] = None,
    chunk_size: int = 1024,
    precision: str = "auto",
    progress: bool = True,
    use_cache: bool = True,
    decode: str = "auto",
) -> torch.Tensor:
    """Frozen image features of ``split``: ``[N, 2, D]`` with ``flips`` (plain, mirrored), else ``[N, 1, D]``.

    Reads the cache when it is complete, otherwise encodes the missing chunks (in parallel with other
    ``torchrun`` ranks, if any) and writes it. Features are float32 and not normalised. ``decode`` picks
    where JPEGs are decoded (:mod:`lmpt.data.decode`: auto, cpu, gpu, tensor); "auto" decodes on the GPU
    exactly when ``device`` is CUDA.
    """
    if isinstance(preprocess, str):
        preprocess = PreprocessConfig(mode=preprocess)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    signature = preprocess.resolve(backbone)
    decoder = resolve_decoder(decode, device)
    key = feature_cache_key(backbone, signature, split, flips, precision, decoder)
    folder = resolve_cache_dir(cache_dir) / "features" / key
    final = folder / FINAL_NAME
    n = len(split)
    images = image_list_hash(split)
    if use_cache and final.is_file():
        feats = _read_final(final, n, images)
        if feats is not None:
            logger.info("feature cache hit: %s (%s, %d images)", folder, split.name, n)
            return feats
    chunk_dir = folder / f"chunks-{int(chunk_size)}"
    make_dir(chunk_dir, "feature cache folder")
    if dist_utils.is_main():
        atomic_write_json(folder / "meta.json", {"split": split.name, "images": n, "flips": flips,
                                                 "backbone": backbone.describe(), "preprocess": signature,
                                                 "precision": precision, "decoder": decoder,
                                                 "version": CACHE_VERSION})
    chunks = [(i, i * chunk_size, min(n, (i + 1) * chunk_size)) for i in range((n + chunk_size - 1) // chunk_size)]
    rank, world = dist_utils.rank(), dist_utils.world_size()
    mine = [c for c in chunks if c[0] % world == rank]
    todo = [c for c in mine
            if not (use_cache and _read_chunk(chunk_dir / f"chunk-{c[0]:05d}.safetensors", c[1], c[2]) is not None)]
    if len(todo) < len(mine):
        logger.info("reusing %d finished chunks of %s", len(mine) - len(todo), chunk_dir)
    if todo:
        _encode_chunks(backbone, split, signature, flips, chunk_dir, todo, device, batch_size,
                       default_num_workers() if num_workers is None else num_workers, precision,
                       progress and dist_utils.is_main(), decoder)
    dist_utils.barrier()
    if dist_utils.is_main():
        parts = []
        for idx, start, stop in chunks:
            part = _read_chunk(chunk_dir / f"chunk-{idx:05d}.safetensors", start, stop)
            if part is None:
                raise DataError(f"feature chunk {chunk_dir / f'chunk-{idx:05d}.safetensors'} (rows {start}-{stop}) is "
                                "missing, incomplete or damaged (NaN features?) after extraction; run the command "
                                "again to finish the cache, and check the backbone's weights if it repeats")
            parts.append(part)
        feats = torch.cat(parts) if parts else torch.zeros(0, 2 if flips else 1, backbone.embed_dim)
        if feats.shape[0] != n:  # cannot happen with checked chunks; never write a wrong cache
            raise DataError(f"feature extraction gave {feats.shape[0]} rows for {n} images; the cache was not written")
        _save_tensor(final, feats, {"rows": n, "images": images, "version": CACHE_VERSION})
        shutil.rmtree(chunk_dir, ignore_errors=True)
    dist_utils.barrier()
    feats = _read_final(final, n, images)
    if feats is None:
        raise DataError(f"the feature cache {final} could not be read back; delete {folder} and run again")
    return feats


def _encode_chunks(backbone: CLIPBackbone, split: MultiLabelSplit, signature: dict, flips: bool, folder: Path,
                   chunks: list, device: torch.device, batch_size: int, num_workers: int, precision: str,
                   progress: bool, decoder: str = "pil") -> None:
    """Encode the images of ``chunks``; each chunk is saved as soon as its last image is encoded.

    One DataLoader serves all chunks (workers start once) and hands out small batches so every worker
    is busy; they are regrouped into encoder batches of ``batch_size`` that never straddle a chunk.
    With a torchvision decoder the workers only read the files and the batches are decoded and
    preprocessed on the encoder's device, the next one while the current one is encoded.
    """
    model = backbone.model.to(device).eval()
    order = [i for _, start, stop in chunks for i in range(start, stop)]
    total = len(order)
    load_bs = max(1, min(32, batch_size))
    workers = num_workers if total > 64 else 0
    if decoder == "pil":
        transform = transform_from_signature(signature)
        loader = DataLoader(torch.utils.data.Subset(ImageListDataset(split.paths, transform), order),
                            batch_size=load_bs, shuffle=False, num_workers=workers,
                            pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
        batches = reraise_data_errors(loader)
    else:
        loader = DataLoader(torch.utils.data.Subset(FileBytesDataset(split.paths, signature), order),
                            batch_size=max(1, min(64, batch_size)), shuffle=False, num_workers=workers,
                            collate_fn=collate_payloads, prefetch_factor=4 if workers else None)
        batches = prefetched(reraise_data_errors(loader), BatchDecoder(signature, split.paths, device), device)
    bar = progress_bar(total, f"features {split.name}", unit="img", enabled=progress)
    t0 = time.perf_counter()
    chunk_iter = iter(chunks)
    idx, start, stop = next(chunk_iter)
    out = torch.empty(stop - start, 2 if flips else 1, backbone.embed_dim)
    done = 0
    pending: list[torch.Tensor] = []
    n_pending = 0

    def encode(images: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(images).to(device, non_blocking=True)
        if flips:
            x = torch.cat([x, torch.flip(x, dims=(-1,))])
        with torch.inference_mode(), autocast(device, precision):
            feats = model.encode_image(x).float().cpu()
        n = feats.shape[0] // (2 if flips else 1)
        return torch.stack([feats[:n], feats[n:]], dim=1) if flips else feats[:, None]

    for _, images in batches:
        while images.shape[0]:
            take = min(images.shape[0], (stop - start) - done - n_pending)
            pending.append(images[:take])
            n_pending += take
            images = images[take:]
            if n_pending >= batch_size or done + n_pending == stop - start:
                out[done:done + n_pending] = encode(pending)
                done += n_pending
                bar.update(n_pending)
                pending, n_pending = [], 0
            if done == stop - start:
                _save_tensor(folder / f"chunk-{idx:05d}.safetensors", out, {"start": start, "stop": stop})
                nxt = next(chunk_iter, None)
                if nxt is None:
                    break
                idx, start, stop = nxt
                out = torch.empty(stop - start, 2 if flips else 1, backbone.embed_dim)
                done = 0
    bar.close()
    dt = time.perf_counter() - t0
    logger.info("encoded %d images of %s in %.1f s (%.0f img/s)", total, split.name, dt, total / max(dt, 1e-9))
