"""bench/few_shot.py: its k-shot sampling and its curve on the tiny data (the script's core, not its numbers)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_helpers import tiny_overrides

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "few_shot.py"


@pytest.fixture(scope="module")
def few_shot():
    spec = importlib.util.spec_from_file_location("bench_few_shot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_few_shot_takes_k_distinct_images_per_class(few_shot):
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 5)) < 0.3).astype(np.uint8)
    for k in (1, 2, 4, 8):
        rows = few_shot.sample_few_shot(labels, k, seed=1)
        assert len(rows) == len(set(rows.tolist())) == 5 * k
        assert (labels[rows].sum(0) >= k).all()
        assert np.array_equal(rows, few_shot.sample_few_shot(labels, k, seed=1))
    assert not np.array_equal(few_shot.sample_few_shot(labels, 4, 1), few_shot.sample_few_shot(labels, 4, 2))
    with pytest.raises(ValueError, match="larger pool"):
        few_shot.sample_few_shot(labels[:10], 8, seed=1)


def test_coop_schedule(few_shot):
    assert few_shot.coop_lr(0, 50, 0.002) == 1e-5
    assert few_shot.coop_lr(1, 50, 0.002) == pytest.approx(0.002)
    assert few_shot.coop_lr(49, 50, 0.002) < 1e-5


def test_few_shot_curve_on_tiny_data(few_shot, tiny_data, tmp_path, capsys):
    from lmpt.engine.config import load_config
    from lmpt.engine.prepared import prepare

    cfg = load_config(None, tiny_overrides(tiny_data, tmp_path, **{"run.method": "coop"}))
    prepared = prepare(cfg)
    pool = prepared.dataset.train  # carved from the manifest's train rows, apart from val
    curve = few_shot.few_shot_curve(cfg, prepared, pool, prepared.features["train"], shots=(1, 2), seeds=(1,),
                                    epochs={1: 2, 2: 2})
    print(json.dumps(curve))
    lines = capsys.readouterr().out.strip().splitlines()
    runs = [json.loads(line) for line in lines[:-1]]
    assert [(r["shots"], r["images"]) for r in runs if r["figure"] == "few_shot_run"] == [(1, 6), (2, 12)]
    last = json.loads(lines[-1])
    assert list(last) == ["figure", "zeroshot_val", "gain", "logit_scale"]
    assert last["figure"] == "few_shot_curve" and set(last["gain"]) == {"1", "2"}
    assert all(np.isfinite(v) for v in last["gain"].values())
    assert 0 < last["zeroshot_val"] <= 100
    assert last["logit_scale"] == pytest.approx(float(prepared.backbone.model.logit_scale.exp()), abs=0.01)
    assert torch.is_tensor(prepared.features["train"])


def test_caption_ambiguity_counts_captions_naming_the_same_classes():
    spec = importlib.util.spec_from_file_location("bench_caption_ambiguity", SCRIPT.with_name("caption_ambiguity.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    singular = {"dog": "dog", "dogs": "dog", "cup": "cup", "cups": "cup"}
    caps = ["two dogs", "a red dog.", "free hd photo - a dog and a cup", "cups and a dog", "a blue thing"]
    keys = [module.named_classes(c, singular) for c in caps]
    assert keys == [{"dog"}, {"dog"}, {"dog", "cup"}, {"dog", "cup"}, set()]
    m = module.same_name_counts(keys, batch=5, batches=3)  # every batch is the whole list
    assert sorted(m.tolist()) == [1] * 3 + [2] * 12
