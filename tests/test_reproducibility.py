"""`lmpt demo` is bitwise reproducible: two cold runs (own caches: world, CLIP, features) give the same digest."""
from __future__ import annotations

import copy
import hashlib

import numpy as np

from lmpt.engine.studies.sweep import results_digest

WORLD = {"scale": 0.1, "sizes": {"val": 40, "test": 60, "pretrain": 128}, "pretrain_steps": 3}


def _cold_demo(tmp_path, name):
    import torch

    from lmpt.engine.studies.demo import run_demo

    threads = torch.get_num_threads()
    summary = run_demo(tmp_path / f"out-{name}", quick=True, cache_dir=str(tmp_path / f"cache-{name}"), device="cpu",
                       seeds="0", methods=("zeroshot", "coop"), world_options=WORLD,
                       overrides=["optim.epochs=2", "run.progress=false"])
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()  # restored
    weights = [p for p in (tmp_path / f"cache-{name}" / "world").glob("*/clip-*.safetensors")]
    assert len(weights) == 1
    return summary, hashlib.sha256(weights[0].read_bytes()).hexdigest()


def test_two_cold_quick_demos_give_the_same_digest(tmp_path):
    import torch

    a, clip_a = _cold_demo(tmp_path, "a")
    b, clip_b = _cold_demo(tmp_path, "b")
    assert clip_a == clip_b  # the world's CLIP, pretrained twice
    assert a["runs"]["coop"][0]["run_dir"] != b["runs"]["coop"][0]["run_dir"]
    assert a["reproducibility"] == {"threads": 2, "deterministic_algorithms": True,
                                    "torch": b["reproducibility"]["torch"], "cpu": b["reproducibility"]["cpu"]}
    assert torch.backends.cpu.get_cpu_capability() in a["reproducibility"]["cpu"]
    for method in ("zeroshot", "coop"):  # zero-shot depends on the features only, CoOp on training too
        la, lb = (np.load(s["runs"][method][0]["run_dir"] + "/test_logits.npy") for s in (a, b))
        assert np.array_equal(la, lb), f"{method}: test logits differ by up to {np.abs(la - lb).max():.3g}"
    assert a["results_digest"] == b["results_digest"] == results_digest(b)


def test_digest_covers_every_figure_and_no_path_or_timing():
    head = {"total": 0.5, "head": 0.6, "medium": 0.4, "tail": 0.3}
    summary = {"methods": {"coop": {"total": {"mean": 0.5, "std": 0.0, "n": 1}}}, "val": {},
               "comparisons": {}, "protocol": "softmax", "selection": "last",
               "runs": {"coop": [{"seed": 0, "run_dir": "/a/coop-seed0", "headline": head, "val": None,
                                  "oracle": False}]}, "timing": {"total_s": 1.0}}
    d = results_digest(summary)
    moved = copy.deepcopy(summary)
    moved["runs"]["coop"][0]["run_dir"] = "/b/coop-seed0"
    moved["timing"]["total_s"] = 99.0
    assert results_digest(moved) == d
    last_bit = copy.deepcopy(summary)
    last_bit["runs"]["coop"][0]["headline"]["tail"] = float(np.nextafter(0.3, 1.0))
    assert results_digest(last_bit) != d
    other_seed = copy.deepcopy(summary)
    other_seed["runs"]["coop"][0]["seed"] = 1
    assert results_digest(other_seed) != d


def test_safetensors_bytes_are_canonical_and_load_back(tmp_path):
    """safetensors writes metadata in hash order (a file's bytes varied from run to run); ours are canonical."""
    import torch
    from safetensors import safe_open

    from lmpt.io import safetensors_bytes

    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64),
               "h": torch.ones(3, dtype=torch.float16)}
    meta = {f"key{i}": f"value {i} é" for i in range(8)}
    ours = {safetensors_bytes(dict(reversed(list(tensors.items()))) if i % 2 else tensors,
                              dict(reversed(list(meta.items()))) if i % 3 else meta) for i in range(20)}
    assert len(ours) == 1
    data = ours.pop()
    assert int.from_bytes(data[:8], "little") % 8 == 0  # the data section stays 8-byte aligned
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == meta
        assert sorted(f.keys()) == sorted(tensors)
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v) and f.get_tensor(k).dtype == v.dtype
