"""JPEG decoders for feature extraction (lmpt.data.decode): the choice, the cache key, the tensor path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import lmpt.data.features as features_mod
from lmpt.data.decode import BatchDecoder, FileBytesDataset, TensorPreprocess, collate_payloads, resolve_decoder
from lmpt.data.features import extract_features, feature_cache_key
from lmpt.data.images import build_transform, load_image, transform_signature
from lmpt.data.manifest import load_manifest_dataset
from lmpt.errors import ConfigError, DataError

# Observed on the CPU (torch 2.14.1, torchvision 0.29.1, pillow 13.0, libjpeg-turbo in both): the decoded
# pixels are identical; after resizing, pixels differ by at most 0.0175 in normalised units (one grey level:
# 1/255/std) and by 4e-5 (squash, bilinear) / 1e-4 (shortest side, bicubic) on average; the tiny ViT's
# features by at most 1.1e-4 relative L2 (cosine >= 0.9999999). The bounds below leave a margin of ~10x.
PIXEL_MEAN_TOL = 1e-3
PIXEL_MAX_TOL = 0.03  # under two grey levels
FEATURE_REL_TOL = 2e-3


@pytest.fixture
def jpeg_split(tiny_data, tmp_path):
    """The tiny test split re-saved as JPEGs, plus two noisy VOC-sized photos-to-be."""
    split = load_manifest_dataset(tiny_data["train"], tiny_data["test"]).test.subset(range(12))
    rng = np.random.default_rng(0)
    for i, path in enumerate(list(split.paths)):
        out = tmp_path / f"img{i:02d}.jpg"
        if i < 2:
            base = rng.integers(0, 255, 3) + np.linspace(0, 1, 500)[None, :, None] * rng.integers(-120, 120, 3)
            arr = np.clip(base + rng.normal(0, 12, (375, 500, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(out, quality=90)
        else:
            load_image(path).save(out, quality=90)
        split.paths[i] = str(out)
    return split


def test_gpu_decoding_without_cuda_is_a_clear_error(tiny_backbone, jpeg_split, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(ConfigError, match="data.decode=gpu needs the encoder on a CUDA device"):
        extract_features(tiny_backbone, jpeg_split, decode="gpu", cache_dir=tmp_path, num_workers=0, progress=False)
    assert resolve_decoder("auto", "cpu") == "pil" and resolve_decoder("cpu", "cpu") == "pil"
    assert resolve_decoder("tensor", "cpu") == "torchvision-cpu"
    with pytest.raises(ConfigError, match="data.decode='nvjpeg' is not one of auto, cpu, gpu"):
        resolve_decoder("nvjpeg", "cpu")


def test_config_validates_decode():
    from lmpt.engine.config import load_config

    assert load_config(None, ["data.dataset=manifest", "data.train=a", "data.test=b"]).data.decode == "auto"
    with pytest.raises(ConfigError, match="data.decode='gpus' is not one of auto, cpu, gpu"):
        load_config(None, ["data.dataset=manifest", "data.train=a", "data.test=b", "data.decode=gpus"])


def test_cache_key_differs_per_decoder(tiny_backbone, jpeg_split):
    sig = features_mod.PreprocessConfig().resolve(tiny_backbone)
    keys = {d: feature_cache_key(tiny_backbone, sig, jpeg_split, False, "fp32", d)
            for d in ("pil", "torchvision-cpu", "torchvision-cuda")}
    assert len(set(keys.values())) == 3
    assert keys["pil"] == feature_cache_key(tiny_backbone, sig, jpeg_split, False)  # older caches stay valid


@pytest.mark.parametrize("mode", ["reference", "clip"])
def test_tensor_preprocessing_is_close_to_pil(jpeg_split, mode):
    sig = transform_signature(mode, 224)
    pil = build_transform(sig["mode"], sig["image_size"], sig["mean"], sig["std"], sig["interpolation"])
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    tensor = TensorPreprocess(sig)
    for path in jpeg_split.paths[:4]:
        a = pil(load_image(path))
        b = tensor(decode_jpeg(read_file(path), mode=ImageReadMode.RGB))
        assert a.shape == b.shape == (3, 224, 224)
        diff = (a - b).abs()
        assert float(diff.mean()) < PIXEL_MEAN_TOL and float(diff.max()) < PIXEL_MAX_TOL, \
            (path, float(diff.mean()), float(diff.max()))


def test_tensor_decoder_features_are_close_to_pil_and_cached_apart(tiny_backbone, jpeg_split, tmp_path):
    kw = dict(cache_dir=tmp_path, num_workers=0, progress=False, flips=True)
    pil = extract_features(tiny_backbone, jpeg_split, decode="cpu", **kw)
    tensor = extract_features(tiny_backbone, jpeg_split, decode="tensor", **kw)
    assert pil.shape == tensor.shape
    assert not torch.equal(pil, tensor)  # a separate cache entry, not a hit on the PIL one
    cos = torch.nn.functional.cosine_similarity(pil.flatten(0, 1), tensor.flatten(0, 1), dim=-1)
    rel = float((pil - tensor).norm(dim=-1).max() / pil.norm(dim=-1).min())
    assert rel < FEATURE_REL_TOL and float(cos.min()) > 0.9999, (rel, float(cos.min()))
    assert len(list((tmp_path / "features").iterdir())) == 2


def test_non_jpegs_and_rejected_jpegs_take_the_pil_path(tiny_backbone, tiny_data, jpeg_split, tmp_path):
    pngs = load_manifest_dataset(tiny_data["train"], tiny_data["test"]).test.subset(range(3))
    mixed = jpeg_split.subset(range(4))
    mixed.paths[1] = pngs.paths[1]  # a PNG: preprocessed by PIL in the worker
    sig = features_mod.PreprocessConfig().resolve(tiny_backbone)
    pil = build_transform(sig["mode"], sig["image_size"], sig["mean"], sig["std"], sig["interpolation"])
    ds = FileBytesDataset(mixed.paths, sig)
    indices, images = BatchDecoder(sig, mixed.paths, torch.device("cpu"))(collate_payloads([ds[i] for i in range(4)]))
    assert indices == [0, 1, 2, 3] and images.shape == (4, 3, sig["image_size"], sig["image_size"])
    torch.testing.assert_close(images[1], pil(load_image(mixed.paths[1])))
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    mixed.paths[2] = str(bad)
    with pytest.raises(DataError, match="truncated.jpg"):
        extract_features(tiny_backbone, mixed, decode="tensor", cache_dir=tmp_path, num_workers=0, progress=False)
