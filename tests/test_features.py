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


def _crash_on_chunk(monkeypatch, which: int):
    original = features_mod._save_tensor
    saved = {"n": 0}

    def crash(path, tensor, meta):
        if path.name.startswith("chunk-"):
            saved["n"] += 1
            if saved["n"] == which:
                raise KeyboardInterrupt  # killed while writing this chunk
        return original(path, tensor, meta)

    monkeypatch.setattr(features_mod, "_save_tensor", crash)
    return original


def test_interrupted_extraction_is_not_complete_and_resumes(tiny_backbone, split, tmp_path, monkeypatch):
    original = _crash_on_chunk(monkeypatch, 3)
    kw = dict(cache_dir=tmp_path, num_workers=0, progress=False, chunk_size=16)
    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny_backbone, split, **kw)
    folders = list((tmp_path / "features").iterdir())
    assert len(folders) == 1
    assert not (folders[0] / FINAL_NAME).exists()
    chunks = folders[0] / "chunks-16"
    assert sorted(p.name for p in chunks.glob("chunk-*")) == ["chunk-00000.safetensors", "chunk-00001.safetensors"]
    assert not list(folders[0].rglob("*.tmp"))

    monkeypatch.setattr(features_mod, "_save_tensor", original)
    calls = _count_encodes(monkeypatch)
    feats = extract_features(tiny_backbone, split, **kw)
    assert calls["images"] == len(split) - 32  # the two finished chunks are reused
    fresh = extract_features(tiny_backbone, split, cache_dir=tmp_path / "fresh", num_workers=0, progress=False)
    torch.testing.assert_close(feats, fresh)
    assert (folders[0] / FINAL_NAME).exists() and not chunks.exists()


def test_resume_with_another_chunk_size_equals_a_fresh_extraction(tiny_backbone, split, tmp_path, monkeypatch):
    """Interrupt with chunk size 16, resume with 24: no old chunk is joined with new ones (rows stay in order)."""
    original = _crash_on_chunk(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny_backbone, split, cache_dir=tmp_path, num_workers=0, progress=False, chunk_size=16)
    monkeypatch.setattr(features_mod, "_save_tensor", original)
    resumed = extract_features(tiny_backbone, split, cache_dir=tmp_path, num_workers=0, progress=False,
                               chunk_size=24)
    fresh = extract_features(tiny_backbone, split, cache_dir=tmp_path / "fresh", num_workers=0, progress=False,
                             use_cache=False)
    assert resumed.shape[0] == len(split)
    torch.testing.assert_close(resumed, fresh)
    # and the finished cache is read back as the same rows
    again = extract_features(tiny_backbone, split, cache_dir=tmp_path, num_workers=0, progress=False, chunk_size=7)
    torch.testing.assert_close(again, fresh)


def test_a_cache_of_another_image_list_is_never_read(tiny_backbone, split, tmp_path, monkeypatch):
    kw = dict(cache_dir=tmp_path, num_workers=0, progress=False)
    extract_features(tiny_backbone, split, **kw)
    (folder,) = list((tmp_path / "features").iterdir())
    final = folder / FINAL_NAME
    feats, meta = features_mod._load_tensor(final)
    # a final file with one row too few, or written for another image list: recomputed, not returned
    features_mod._save_tensor(final, feats[:-1], dict(meta, rows=len(split) - 1))
    calls = _count_encodes(monkeypatch)
    torch.testing.assert_close(extract_features(tiny_backbone, split, **kw), feats)
    assert calls["images"] == len(split)
    features_mod._save_tensor(final, feats, dict(meta, images="0" * 24))
    torch.testing.assert_close(extract_features(tiny_backbone, split, **kw), feats)
    assert calls["images"] == 2 * len(split)


def test_key_covers_ids_paths_and_precision(tiny_backbone, split):
    sig = features_mod.PreprocessConfig().resolve(tiny_backbone)
    key = feature_cache_key(tiny_backbone, sig, split, False)
    renamed = split.subset(range(len(split)))
    renamed.ids[0] = "another-id.png"
    assert feature_cache_key(tiny_backbone, sig, renamed, False) != key
    moved = split.subset(range(len(split)))
    moved.paths[0], moved.paths[1] = moved.paths[1], moved.paths[0]  # same files, another order
    assert feature_cache_key(tiny_backbone, sig, moved, False) != key
    assert feature_cache_key(tiny_backbone, sig, split, False, "bf16") != key
    assert feature_cache_key(tiny_backbone, sig, split, False, "fp32") == key
    from lmpt.precision import resolve_precision

    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda") == "bf16"


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


def test_progress_is_plain_lines_off_a_terminal(tiny_backbone, split, tmp_path, capfd):
    """In a CI log (stderr not a terminal) extraction prints whole lines, never carriage-return frames."""
    extract_features(tiny_backbone, split, cache_dir=tmp_path, num_workers=0, progress=True)
    err = capfd.readouterr().err
    assert "\r" not in err and f"features {split.name}: {len(split)}/{len(split)} img" in err
