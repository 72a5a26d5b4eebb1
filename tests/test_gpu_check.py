"""bench/gpu_check.py --smoke: the GPU check's code runs end to end on the CPU (tiny models, ~100 JPEGs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_and_prints_every_figure(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--work", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    figures = {(r["figure"], r.get("backbone")) for r in rows}
    for backbone in ("lmpt-smoke-rn", "lmpt-smoke-vit"):
        for figure in ("extraction_images_per_s", "decode_feature_difference", "full_run_s", "step_ms",
                       "evaluation_s", "reference_style_run_s", "speedup_vs_reference"):
            assert (figure, backbone) in figures, (figure, backbone, proc.stdout[-2000:])
    decoders = {r["decode"] for r in rows if r["figure"] == "extraction_images_per_s"}
    assert decoders == {"cpu", "tensor"}
    assert not [r for r in rows if "error" in r], proc.stdout
    steps = [r for r in rows if r["figure"] == "step_ms"]
    assert {r["eot_only_last_block"] for r in steps} == {True, False}
    assert all(r["min_cosine"] > 0.999 for r in rows if r["figure"] == "decode_feature_difference")
