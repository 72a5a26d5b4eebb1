"""Train, resume, eval, predict and sweep end to end on tiny generated data with a tiny CLIP."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from lmpt.engine import ORACLE_LABEL, RunScorer, load_config, load_run, prepare, reevaluate_run, run_sweep
from lmpt.engine import run as train
from lmpt.engine.rundir.checkpoint import load_weights
from lmpt.engine.train.loop import TrainingError
from lmpt.engine.train.prompt import PromptTrainer
from lmpt.errors import CheckpointError, ConfigError

from engine_helpers import CLASSES, die_at_call, tiny_overrides


def _cfg(tiny_data, tmp_path, **extra):
    return load_config(None, tiny_overrides(tiny_data, tmp_path, **extra))


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_train_writes_a_complete_run_folder(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, **{"run.name": "r1"})
    result = train(cfg)
    run = result.run_dir
    for name in ("config.yaml", "metrics.json", "per_class.csv", "prompt.safetensors", "history.csv", "report.md",
                 "per_class_ap.png", "groups.png", "curves.png", "state.pt", "train.log"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"] == "last epoch" and metrics["selected_epoch"] == 4 and not metrics["oracle"]

    # the checkpoint holds the context and enough metadata to rebuild the model
    tensors, meta = load_weights(run)
    ctx = tensors["ctx"]
    assert ctx.shape == (len(CLASSES), 4, 64)
    assert meta["class_names"] == sorted(CLASSES) and meta["backbone"]["model"] == "lmpt-test-vit"

    # the reported numbers equal an independent recomputation: sklearn AP on softmax scores
    prepared = prepare(cfg)
    trainer = PromptTrainer(cfg, prepared, torch.device("cpu"))
    trainer.model.load_prompt_state({"ctx": ctx})
    with torch.no_grad():
        text = torch.nn.functional.normalize(trainer.model.encode_text(), dim=-1).numpy()
    feats = prepared.features["test"][:, 0].numpy()
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    logits = float(trainer.model.logit_scale) * feats @ text.T
    y = prepared.dataset.test.labels
    ap = np.array([average_precision_score(y[:, c], _softmax(logits)[:, c]) for c in range(y.shape[1])])
    np.testing.assert_allclose(metrics["per_class_ap"]["softmax"], ap, rtol=1e-6, atol=1e-6)
    freq = prepared.dataset.class_freq
    assert math.isclose(metrics["headline"]["total"], ap.mean(), rel_tol=1e-6)
    assert math.isclose(metrics["headline"]["tail"], ap[freq < 20].mean(), rel_tol=1e-6)
    assert math.isclose(metrics["headline"]["head"], ap[freq >= 100].mean(), rel_tol=1e-6)
    ap_sig = np.array([average_precision_score(y[:, c], logits[:, c]) for c in range(y.shape[1])])
    assert math.isclose(metrics["test"]["sigmoid"]["total"], ap_sig.mean(), rel_tol=1e-6)

    with open(run / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == sorted(CLASSES)
    assert [int(r["train_images"]) for r in rows] == list(freq)
    with open(run / "history.csv") as f:
        hist = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3, 4]
    assert all(float(r["train_cse"]) > 0 for r in hist)
    report = (run / "report.md").read_text()
    assert "| softmax |" in report and f"{100 * metrics['headline']['total']:.2f}" in report


def test_training_improves_over_initial_prompts(tiny_data, tmp_path):
    base = train(_cfg(tiny_data, tmp_path, **{"optim.epochs": 1, "optim.lr": 1e-9, "run.name": "a"})).metrics
    tuned = train(_cfg(tiny_data, tmp_path, **{"optim.epochs": 8, "run.name": "b"})).metrics
    assert tuned["headline"]["total"] > base["headline"]["total"] + 0.05


def test_same_seed_same_numbers_on_cpu(tiny_data, tmp_path):
    a = train(_cfg(tiny_data, tmp_path, **{"run.name": "a"})).metrics
    b = train(_cfg(tiny_data, tmp_path, **{"run.name": "b"})).metrics
    c = train(_cfg(tiny_data, tmp_path, **{"run.name": "c", "run.seed": 1})).metrics
    assert a["per_class_ap"] == b["per_class_ap"]
    assert a["per_class_ap"] != c["per_class_ap"]


def test_resume_after_a_kill_gives_the_same_result(tiny_data, tmp_path, monkeypatch):
    extra = {"optim.epochs": 5, "optim.schedule": "cosine"}
    full = train(_cfg(tiny_data, tmp_path, **extra, **{"run.name": "full"}))

    original = PromptTrainer.loss
    die_at_call(monkeypatch, PromptTrainer, 9)  # in the middle of epoch 3 (4 steps per epoch)
    cfg = _cfg(tiny_data, tmp_path, **extra, **{"run.name": "killed"})
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    run_dir = tmp_path / "runs" / "killed"
    assert not (run_dir / "metrics.json").exists()
    state = torch.load(run_dir / "state.pt", weights_only=True)
    assert state["epoch"] == 2
    monkeypatch.setattr(PromptTrainer, "loss", original)
    resumed = train(load_config(run_dir / "config.yaml"), run_dir=run_dir, resume=True)
    assert resumed.metrics["per_class_ap"] == full.metrics["per_class_ap"]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = PromptTrainer.loss

    def nan_loss(self, idx, flip):
        calls["n"] += 1
        out = original(self, idx, flip)
        if calls["n"] == 7:  # epoch 2, batch 3
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(PromptTrainer, "loss", nan_loss)
    cfg = _cfg(tiny_data, tmp_path, **{"run.name": "nan"})
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 2, step 7"):
        train(cfg)
    state = torch.load(tmp_path / "runs" / "nan" / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and torch.isfinite(state["weights"]["ctx"]).all()


def test_select_on_test_is_labelled_oracle(tiny_data, tmp_path):
    result = train(_cfg(tiny_data, tmp_path, **{"run.select": "test", "run.name": "oracle"}))
    m = result.metrics
    assert m["oracle"] and m["selection"] == ORACLE_LABEL
    assert "test-selected (oracle)" in (result.run_dir / "report.md").read_text()
    _, meta = load_weights(result.run_dir)
    assert meta["selection"] == ORACLE_LABEL
    best = max(r["oracle_test_total"] for r in result.history)
    assert math.isclose(m["headline"]["total"], best, rel_tol=1e-9)


def test_select_on_val_uses_validation_only(tiny_data, tmp_path):
    result = train(_cfg(tiny_data, tmp_path, **{"run.select": "val", "run.name": "val"}))
    best_epoch = max(result.history, key=lambda r: r["val_total"])["epoch"]
    assert result.metrics["selected_epoch"] == best_epoch
    assert not any("oracle_test_total" in r for r in result.history)


def test_eval_and_predict_use_the_checkpoint(tiny_data, tmp_path):
    result = train(_cfg(tiny_data, tmp_path, **{"run.name": "ep"}))
    metrics = reevaluate_run(result.run_dir)
    assert metrics["per_class_ap"] == result.metrics["per_class_ap"]
    assert (result.run_dir / "eval.json").is_file()

    run = load_run(result.run_dir)
    images = sorted((tiny_data["root"] / "img").glob("test000*.png"))[:4]
    preds = RunScorer(run).predict(images, top_k=2).predictions
    assert [len(p.labels) for p in preds] == [2] * 4
    assert all(p.labels[0][1] >= p.labels[1][1] for p in preds)
    # the scores are the calibrated probabilities sigmoid(a * logit + b) of the cached test features, with the
    # (a, b) stored in the classifier file, and the default labels are those at each class's own threshold
    prepared = prepare(load_config(result.run_dir / "config.yaml"))
    idx = [prepared.dataset.test.ids.index(f"img/{p.name}") for p in images]
    logits = run.model.feature_logits(prepared.features["test"][idx, 0])
    cal = run.meta["calibration"]
    expected = torch.sigmoid(logits * torch.tensor(cal["a"]) + torch.tensor(cal["b"])).numpy()
    got = np.array([[p.scores[n] for n in run.meta["class_names"]] for p in preds])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    names = run.meta["class_names"]
    default = RunScorer(run).predict(images).predictions
    for p, e in zip(default, expected):
        assert {n for n, _ in p.labels} == {names[c] for c in range(len(names)) if e[c] >= cal["thresholds"][c]}
    thresholded = RunScorer(run).predict(images, threshold=0.5).predictions
    assert all(all(s >= 0.5 for _, s in p.labels) for p in thresholded)
    assert metrics["decisions"]["calibrated"] == result.metrics["decisions"]["calibrated"]


def test_checkpoint_mismatch_is_refused(tiny_data, tmp_path):
    result = train(_cfg(tiny_data, tmp_path, **{"run.name": "mm"}))
    with pytest.raises(CheckpointError, match="backbone"):
        reevaluate_run(result.run_dir, ["run.seed=5"])  # random-init backbone with another seed: other weights
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(sorted(CLASSES)[::-1]) + "\n")
    with pytest.raises(CheckpointError, match="class names differ"):
        reevaluate_run(result.run_dir, [f"data.classes={classes}"])


def test_sweep_table_is_mean_and_std_of_the_runs(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, **{"optim.epochs": 2})
    out = tmp_path / "sweep"
    methods = ["zeroshot", "linear-probe", "coop", "coop-db", "lmpt", "lmpt-asl"]  # every method of the paper's table
    summary = run_sweep(cfg, methods, [0, 1], out)
    assert set(summary["methods"]) == set(methods)
    totals = [json.loads((out / f"lmpt-seed{s}" / "metrics.json").read_text())["headline"]["total"] for s in (0, 1)]
    assert math.isclose(summary["methods"]["lmpt"]["total"]["mean"], np.mean(totals), rel_tol=1e-9)
    assert math.isclose(summary["methods"]["lmpt"]["total"]["std"], np.std(totals, ddof=1), rel_tol=1e-9)
    assert summary["methods"]["zeroshot"]["total"]["n"] == 1
    saved = json.loads((out / "summary.json").read_text())
    assert saved["methods"]["coop"]["tail"]["n"] == 2
    assert "| lmpt |" in (out / "summary.md").read_text()
    # rerunning reuses the finished runs
    mtime = (out / "coop-seed0" / "metrics.json").stat().st_mtime_ns
    run_sweep(cfg, ["coop"], [0], out)
    assert (out / "coop-seed0" / "metrics.json").stat().st_mtime_ns == mtime


def test_zeroshot_run(tiny_data, tmp_path):
    result = train(_cfg(tiny_data, tmp_path, **{"run.method": "zeroshot", "run.name": "zs"}))
    assert result.history == [] and "zero-shot" in result.metrics["selection"]
    assert (result.run_dir / "metrics.json").is_file() and not (result.run_dir / "prompt.safetensors").exists()
    assert not (result.run_dir / "probe.safetensors").exists() and (result.run_dir / "zeroshot.safetensors").exists()


def test_optimizer_choice():
    from lmpt.engine.train.builders import build_optimizer
    from lmpt.engine.config import Config
    from lmpt.errors import ConfigError

    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer("adam", p, lr=1e-3, weight_decay=0.0, momentum=0.8)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.8, 0.999)
    assert opt.defaults["lr"] == 1e-3
    o = Config().optim
    assert isinstance(build_optimizer(o.name, p, o.lr, o.weight_decay, o.momentum), torch.optim.SGD)  # the reference
    assert type(build_optimizer("adamw", p, 1e-3, 0.0)) is torch.optim.AdamW
    with pytest.raises(ConfigError, match="optim.name"):
        load_config(None, ["optim.name=adagrad", "data.dataset=manifest", "data.train=a.csv", "data.test=b.csv"])


def test_db_overrides_merge_into_the_preset(tiny_data, tmp_path):
    """`loss.db` keys override the preset's one by one (`lmpt demo loss.db.kappa=20` sets only kappa)."""
    from lmpt.engine.train.loss import resolve_loss

    cfg = _cfg(tiny_data, tmp_path, **{"loss.db_preset": "voc-lt", "loss.db": "{kappa: 7.0}",
                                       "run.method": "coop-db"})
    prepared = prepare(cfg)
    cls = resolve_loss(cfg, prepared.dataset).build(prepared.dataset).cls_loss
    assert (cls.kappa, cls.mu, cls.neg_scale) == (7.0, 0.3, 5.0)
    counts = prepared.dataset.train.class_counts.astype(np.float64)
    n = len(prepared.dataset.train)
    expected = -np.log(n / counts - 1.0) * 7.0 / 5.0
    np.testing.assert_allclose(cls.init_bias.numpy(), expected, rtol=1e-5)
    from lmpt.engine.config import _read_yaml

    assert "db" not in _read_yaml("world")[0]["loss"]  # the world runs the reference's DB settings (issue 14)


def test_resolve_loss_decides_once_and_says_why(tiny_data, tmp_path):
    """The method fixes the losses (custom reads the loss section), loss.params reaches the loss, no captions
    turns CSE off, and the decision is in metrics.json."""
    from lmpt.engine.train.loss import resolve_loss

    ds = prepare(_cfg(tiny_data, tmp_path)).dataset
    coop = resolve_loss(_cfg(tiny_data, tmp_path, **{"run.method": "coop", "loss.classification": "asl"}), ds)
    assert coop.classification == "bce" and coop.cse is None and coop.lam == 1.0
    assert "set by run.method=coop" in coop.notes[0]
    custom = resolve_loss(_cfg(tiny_data, tmp_path, **{"run.method": "custom", "loss.classification": "focal",
                                                        "loss.params.gamma": 3, "loss.cse": False}), ds)
    assert custom.classification == "focal" and custom.params == {"gamma": 3}
    assert custom.build(ds).cls_loss.gamma == 3.0
    lmpt = resolve_loss(_cfg(tiny_data, tmp_path, **{"loss.lam": 0.3}), ds)
    assert lmpt.cse is not None and lmpt.lam == 0.3 and lmpt.params["focal"] == "batch"
    no_caps = resolve_loss(_cfg(tiny_data, tmp_path, **{"data.captions": "off"}), ds)
    assert no_caps.cse is None and no_caps.lam == 1.0 and any("no captions" in n for n in no_caps.notes)
    with pytest.raises(ConfigError, match="loss.params: unknown 'db' loss parameter 'kapa'.*kappa"):
        _cfg(tiny_data, tmp_path, **{"loss.params.kapa": 1})

    result = train(_cfg(tiny_data, tmp_path, **{"run.name": "nocaps", "data.captions": "off", "optim.epochs": 1}))
    recorded = json.loads((result.run_dir / "metrics.json").read_text())["loss"]
    assert recorded["cse"] is None and any("no captions" in n for n in recorded["notes"])
