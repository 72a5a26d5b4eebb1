"""Feature cache: hit, miss, invalidation, interrupted extraction, correctness of the stored features."""
from __future__ import annotations

import os

import pytest
import torch

import lmpt.data.features as features_mod
from lmpt.data.features import FINAL_NAME, extract_features, feature_cache_key
from lmpt.data.images import build_transform, load_image
from lmpt.data.manifest import load_manifest_dataset
from lmpt.errors import DataError


@pytest.fixture
def split(tiny_data):
    return load_manifest_dataset(tiny_data["train"], tiny_data["test"]).test


def _count_encodes(monkeypatch):
    calls = {"images": 0}
    original = features_mod._encode_chunks

    def counting(backbone, split, signature, flips, folder, chunks, *args):
        calls["images"] += sum(stop - start for _, start, stop in chunks)
        return original(backbone, split, signature, flips, folder, chunks, *args)

    monkeypatch.setattr(features_mod, "_encode_chunks", counting)
    return calls


def test_features_equal_direct_encoding_and_flip_is_the_mirror(tiny_backbone, split, tmp_path):
    feats = extract_features(tiny_backbone, split, flips=True, cache_dir=tmp_path, num_workers=0, progress=False,
                             chunk_size=32)
    assert feats.shape == (len(split), 2, 32) and feats.dtype == torch.float32
    transform = build_transform("reference", 32)
    idx = [0, 33, len(split) - 1]
    images = torch.stack([transform(load_image(split.paths[i])) for i in idx])
    with torch.no_grad():
        plain = tiny_backbone.model.encode_image(images)
        mirrored = tiny_backbone.model.encode_image(torch.flip(images, dims=(-1,)))
    torch.testing.assert_close(feats[idx, 0], plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats[idx, 1], mirrored, atol=1e-5, rtol=1e-5)


def test_cache_hit_miss_and_invalidation(tiny_backbone, split, tmp_path, monkeypatch):
    calls = _count_encodes(monkeypatch)
    kw = dict(cache_dir=tmp_path, num_workers=0, progress=False)
    a = extract_features(tiny_backbone, split, **kw)
    assert calls["images"] == len(split)
    b = extract_features(tiny_backbone, split, **kw)  # hit
    assert calls["images"] == len(split)
    torch.testing.assert_close(a, b)

    extract_features(tiny_backbone, split, preprocess="clip", **kw)  # other preprocessing: miss
    assert calls["images"] == 2 * len(split)
    extract_features(tiny_backbone, split, flips=True, **kw)  # flip variants: miss
    assert calls["images"] == 3 * len(split)
    extract_features(tiny_backbone, split.subset(range(10)), **kw)  # other image list: miss
    assert calls["images"] == 3 * len(split) + 10

    from lmpt.backbone import create_clip

    other = create_clip(tiny_backbone.model_name, None, seed=7)  # other weights: miss
    extract_features(other, split, **kw)
    assert calls["images"] == 4 * len(split) + 10

    # a changed image file changes the key
    key = feature_cache_key(tiny_backbone, features_mod.PreprocessConfig().resolve(tiny_backbone), split, False)
    st = os.stat(split.paths[0])
    os.utime(split.paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert feature_cache_key(tiny_backbone, features_mod.PreprocessConfig().resolve(tiny_backbone), split, False) != key
    extract_features(tiny_backbone, split, **kw)
    assert calls["images"] == 5 * len(split) + 10


def test_interrupted_extraction_is_not_complete_and_resumes(tiny_backbone, split, tmp_path, monkeypatch):
    original = features_mod._save_tensor
    saved = {"n": 0}

    def crash_on_third(path, tensor):
        if path.name.startswith("chunk-"):
            saved["n"] += 1
            if saved["n"] == 3:
                raise KeyboardInterrupt  # killed while writing the third chunk
        return original(path, tensor)

    monkeypatch.setattr(features_mod, "_save_tensor", crash_on_third)
    kw = dict(cache_dir=tmp_path, num_workers=0, progress=False, chunk_size=16)
    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny_backbone, split, **kw)
    folders = list((tmp_path / "features").iterdir())
    assert len(folders) == 1
    assert not (folders[0] / FINAL_NAME).exists()
    assert sorted(p.name for p in folders[0].glob("chunk-*")) == ["chunk-00000.safetensors", "chunk-00001.safetensors"]
    assert not list(folders[0].glob("*.tmp"))

    monkeypatch.setattr(features_mod, "_save_tensor", original)
    calls = _count_encodes(monkeypatch)
    feats = extract_features(tiny_backbone, split, **kw)
    assert calls["images"] == len(split) - 32  # the two finished chunks are reused
    fresh = extract_features(tiny_backbone, split, cache_dir=tmp_path / "fresh", num_workers=0, progress=False)
    torch.testing.assert_close(feats, fresh)
    assert (folders[0] / FINAL_NAME).exists() and not list(folders[0].glob("chunk-*"))


def test_bad_image_is_named(tiny_backbone, split, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    broken = split.subset(range(3))
    broken.paths[1] = str(bad)
    with pytest.raises(DataError, match="broken.png"):
        extract_features(tiny_backbone, broken, cache_dir=tmp_path, num_workers=0, progress=False)


def test_bad_image_is_named_from_worker_processes(tiny_backbone, split, tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    broken = split.subset(range(len(split)))
    broken.paths[70] = str(bad)
    with pytest.raises(DataError) as exc:
        extract_features(tiny_backbone, broken, cache_dir=tmp_path, num_workers=1, progress=False)
    assert "corrupt.png" in str(exc.value) and "Traceback" not in str(exc.value)
