"""torchrun with 2 CPU processes (gloo): sharded feature cache and class-sharded training."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from engine_helpers import tiny_overrides

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, tmp_path, script=None, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", LMPT_DIST_TIMEOUT="120")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd += [str(script)] if script else ["-m", "lmpt"]
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


def _features(cache):
    return {p.parent.name: load_file(str(p))["features"] for p in cache.glob("features/*/features.safetensors")}


def test_two_processes_match_one(tiny_data, tmp_path):
    from lmpt.cli import main

    single = tiny_overrides(tiny_data, tmp_path, **{"data.cache_dir": tmp_path / "cache1"})
    assert main(["train", "--name", "single"] + single) == 0
    # small chunks so that both ranks encode a share of every split
    multi = tiny_overrides(tiny_data, tmp_path, **{"data.cache_dir": tmp_path / "cache2",
                                                   "data.feature_chunk_size": 16})
    proc = _torchrun(["train", "--name", "multi"] + multi, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # rank 0 reports once

    one, two = _features(tmp_path / "cache1"), _features(tmp_path / "cache2")
    assert one.keys() == two.keys() and len(one) == 3
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-5, rtol=1e-5)
    a = json.loads((tmp_path / "runs" / "single" / "metrics.json").read_text())
    b = json.loads((tmp_path / "runs" / "multi" / "metrics.json").read_text())
    for x, y in zip(a["per_class_ap"]["softmax"], b["per_class_ap"]["softmax"]):
        assert abs(x - y) < 1e-4
    assert abs(a["headline"]["total"] - b["headline"]["total"]) < 1e-4


def test_sharded_extraction_uses_both_ranks(tiny_data, tmp_path):
    """Each rank encodes its own chunks; a killed job keeps finished chunks for the restart."""
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        import lmpt.data.features as f
        original = f._save_tensor
        def save(path, tensor, meta):
            original(path, tensor, meta)
            if path.name.startswith("chunk-") and os.environ["RANK"] == "1":
                os._exit(3)  # rank 1 dies right after writing its first chunk
        f._save_tensor = save
        from lmpt.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    cache = tmp_path / "cache"
    args = ["data", "features"] + tiny_overrides(tiny_data, tmp_path, **{"data.cache_dir": cache,
                                                                        "data.feature_chunk_size": 16})
    proc = _torchrun(args, tmp_path, script=script)
    assert proc.returncode != 0
    assert "exitcode" in proc.stderr and "3" in proc.stderr  # torchrun names the failed rank and its exit code
    folders = list((cache / "features").iterdir())
    chunks = sorted(p.name for d in folders for p in d.glob("chunks-16/chunk-*"))
    assert chunks and not list(cache.glob("features/*/features.safetensors"))
    proc = _torchrun(args, tmp_path)  # restart: finishes, reusing the shards
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(cache.glob("features/*/features.safetensors"))) == 3
    shutil.rmtree(cache)
