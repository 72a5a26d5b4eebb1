"""Behaviour the paper's protocol depends on, each against an independent computation on tiny data:
how the engine builds the loss, where gradients flow, the schedule, selection after a resume, zero-shot
protocols, the linear probe, fp16 loss scaling, preprocessing, splits and sweeps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score

from lmpt.engine.train.builders import build_scheduler
from lmpt.engine.train.loss import resolve_loss
from lmpt.engine.config import Config, load_config
from lmpt.engine.prepared import dataset_from_config, prepare
from lmpt.engine.train.prompt import PromptTrainer
from lmpt.engine.rundir.layout import RunLayout
from lmpt.engine.train.run import run
from lmpt.losses import ClassSpecificEmbeddingLoss, DistributionBalancedLoss, db_preset

from engine_helpers import tiny_overrides


def _cfg(tiny_data, tmp_path, **extra):
    return load_config(None, tiny_overrides(tiny_data, tmp_path, **extra))


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("focal", ["batch", "elementwise"])
def test_engine_loss_is_lam_db_plus_one_minus_lam_cse(tiny_data, tmp_path, focal):
    """resolve_loss: the configured lam, focal mode, preset and counts, checked on a batch against the parts."""
    cfg = _cfg(tiny_data, tmp_path, **{"loss.lam": 0.3, "loss.db_focal": focal,
                                                       "loss.db_preset": "voc-lt"})
    prepared = prepare(cfg)
    loss = resolve_loss(cfg, prepared.dataset).build(prepared.dataset)
    counts = prepared.dataset.train.class_counts
    db = DistributionBalancedLoss(counts, len(prepared.dataset.train), **db_preset("voc-lt"), focal=focal)
    cse = ClassSpecificEmbeddingLoss(counts)
    g = torch.Generator().manual_seed(0)
    c = len(counts)
    logits, y = torch.randn(8, c, generator=g) * 5, (torch.rand(8, c, generator=g) < 0.3).float()
    cap, prm = torch.randn(8, 12, 16, generator=g), torch.randn(c, 12, 16, generator=g)
    out = loss(logits, y, caption_emb=cap, prompt_emb=prm)
    expected = 0.3 * db(logits, y) + 0.7 * cse(cap, prm, y)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.cls_loss.focal == focal


def test_cse_gradient_reaches_the_prompts(tiny_data, tmp_path):
    """With lam = 0 the context's gradient is exactly the CSE term's (nothing detached on the way)."""
    cfg = _cfg(tiny_data, tmp_path, **{"loss.lam": 0.0})
    prepared = prepare(cfg)
    trainer = PromptTrainer(cfg, prepared, torch.device("cpu"))
    idx, flip = torch.arange(8), torch.zeros(8, dtype=torch.long)
    trainer.loss(idx, flip)["loss"].backward()
    got = trainer.model.prompt_learner.ctx.grad.clone()
    assert got.abs().sum() > 0
    # independent: the CSE loss of the caption embeddings and the prompt token embeddings, differentiated
    ctx = trainer.model.prompt_learner.ctx
    ctx.grad = None
    prompts = trainer.model.prompt_learner(trainer.cse_len)
    cap, mask = trainer.captions
    cse = ClassSpecificEmbeddingLoss(prepared.dataset.train.class_counts)
    cse(cap[idx], prompts, trainer.train_labels[idx], mask[idx]).backward()
    torch.testing.assert_close(got, ctx.grad)


def test_plateau_schedule_follows_validation_up_and_training_loss_down():
    for has_val, improving in ((True, [0.5, 0.6, 0.7, 0.8]), (False, [1.0, 0.9, 0.8, 0.7])):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        o = Config().optim
        o.patience, o.factor = 0, 0.1
        sched = build_scheduler(o, opt, has_val)
        for value in improving:  # always improving: the rate never drops
            sched.step(value)
        assert opt.param_groups[0]["lr"] == 1.0, has_val
        sched.step(improving[0])  # a step back: it drops
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1), has_val


def test_resume_keeps_the_best_epoch_under_select_val(tiny_data, tmp_path, monkeypatch):
    """A killed run resumed under run.select=val still returns the best validation epoch (here epoch 2)."""
    import lmpt.engine.train.loop as loop

    scripted = iter([])

    def fake_eval(dataset, logits_of, splits, quiet=False):
        out = real_eval(dataset, logits_of, splits, quiet)
        if tuple(splits) == ("val",):
            out["val"]["softmax"]["total"] = next(scripted)
        return out

    real_eval = loop.score_splits
    monkeypatch.setattr(loop, "score_splits", fake_eval)
    extra = {"optim.epochs": 5, "run.select": "val", "optim.schedule": "constant"}
    scores = [0.5, 0.9, 0.6, 0.7, 0.8]
    scripted = iter(scores)
    full = run(_cfg(tiny_data, tmp_path, **extra, **{"run.name": "full"}))
    assert full.metrics["selected_epoch"] == 2

    calls = {"n": 0}
    original = PromptTrainer.loss

    def dying(self, *args):
        calls["n"] += 1
        if calls["n"] == 13:  # epoch 4 (4 steps per epoch)
            raise KeyboardInterrupt
        return original(self, *args)

    scripted = iter(scores)
    monkeypatch.setattr(PromptTrainer, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_data, tmp_path, **extra, **{"run.name": "killed"}))
    monkeypatch.setattr(PromptTrainer, "loss", original)
    scripted = iter(scores[3:])
    run_dir = tmp_path / "runs" / "killed"
    resumed = run(load_config(run_dir / "config.yaml"), run_dir=run_dir, resume=True)
    assert resumed.metrics["selected_epoch"] == 2
    assert resumed.metrics["per_class_ap"] == full.metrics["per_class_ap"]


def test_zeroshot_template_mode_is_used(tiny_data, tmp_path):
    """Zero-shot AP equals sklearn's AP of softmax(scale * cos) with the simple template's text features."""
    cfg = _cfg(tiny_data, tmp_path, **{"run.method": "zeroshot", "run.templates": "simple", "run.name": "zs"})
    metrics = run(cfg).metrics
    prepared = prepare(cfg)
    model = prepared.backbone.model
    with torch.no_grad():
        tokens = prepared.backbone.tokenizer([f"a photo of a {n}." for n in prepared.class_names])
        text = F.normalize(model.encode_text(tokens), dim=-1).numpy()
    x = F.normalize(prepared.features["test"][:, 0], dim=-1).numpy()
    logits = float(model.logit_scale.exp()) * x @ text.T
    y = prepared.dataset.test.labels
    ap = [average_precision_score(y[:, c], _softmax(logits)[:, c]) for c in range(y.shape[1])]
    np.testing.assert_allclose(metrics["per_class_ap"]["softmax"], ap, rtol=1e-5, atol=1e-6)
    other = run(_cfg(tiny_data, tmp_path, **{"run.method": "zeroshot", "run.name": "zs2"})).metrics
    assert other["per_class_ap"] != metrics["per_class_ap"]  # the ensemble gives other scores


def test_zeroshot_reference_protocol(tiny_data, tmp_path):
    """CLIP preprocessing (whatever data.preprocess says), first-word names, reference text, labelled images only."""
    from dataclasses import replace

    from lmpt.data.features import extract_features
    from lmpt.engine.train.zeroshot import run_zeroshot
    from lmpt.zeroshot import class_texts

    cfg = _cfg(tiny_data, tmp_path, **{"run.method": "zeroshot", "run.zeroshot_protocol": "reference",
                                                      "data.preprocess": "reference"})
    prepared = prepare(cfg)
    test = prepared.dataset.test
    labels = test.labels.copy()
    labels[:5] = 0  # five images without any label: the reference skips them
    ds = replace(prepared.dataset, test=replace(test, labels=labels))
    prepared = replace(prepared, dataset=ds)
    run_dir = tmp_path / "zsref"
    run_dir.mkdir()
    metrics = run_zeroshot(cfg, prepared, RunLayout(run_dir), torch.device("cpu"), {}).metrics
    assert metrics["dataset"]["test_images"] == len(test) - 5
    assert "5 unlabelled test images skipped" in metrics["selection"]
    model = prepared.backbone.model
    names = [n.split()[0] for n in ds.class_names]
    with torch.no_grad():
        text = F.normalize(model.encode_text(prepared.backbone.tokenizer(
            [class_texts(n, "reference")[0] for n in names])), dim=-1)
    feats = extract_features(prepared.backbone, test, preprocess="clip", cache_dir=tmp_path / "c2", num_workers=0,
                             progress=False)[5:, 0]
    logits = (float(model.logit_scale.exp()) * F.normalize(feats, dim=-1) @ text.T).numpy()
    y = labels[5:]
    ap = [average_precision_score(y[:, c], _softmax(logits)[:, c]) for c in range(y.shape[1])]
    np.testing.assert_allclose(metrics["per_class_ap"]["softmax"], ap, rtol=1e-5, atol=1e-6)


def test_linear_probe_trains_with_the_db_loss_and_zero_shot_init(tiny_data, tmp_path):
    from lmpt.engine.train.probe import ProbeTrainer
    from lmpt.zeroshot import zeroshot_text_features

    cfg = _cfg(tiny_data, tmp_path, **{"run.method": "linear-probe", "probe.init": "zeroshot"})
    decision = resolve_loss(cfg, dataset_from_config(cfg), uses_captions=False)
    assert decision.classification == "db" and decision.cse is None
    prepared = prepare(cfg)
    trainer = ProbeTrainer(cfg, prepared, torch.device("cpu"))
    # zero-shot initialisation: the probe's test logits are zero-shot CLIP's
    text = zeroshot_text_features(prepared.backbone, prepared.class_names, cfg.run.templates)
    x = F.normalize(prepared.features["test"][:, 0], dim=-1)
    torch.testing.assert_close(trainer.logits("test"), float(prepared.backbone.model.logit_scale.exp()) * x @ text.T,
                               rtol=1e-5, atol=1e-4)
    # the loss of a batch is the DB loss of W x + b, and AdamW with the probe's learning rate trains it
    idx, flip = torch.arange(8), torch.ones(8, dtype=torch.long)
    feats = F.normalize(prepared.features["train"][idx, 1].float(), dim=-1)
    logits = trainer.model.linear(trainer.model.scale * feats)
    expected = resolve_loss(cfg, prepared.dataset).build(prepared.dataset).cls_loss(logits, trainer.train_labels[idx])
    assert trainer.loss(idx, flip)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    result = run(load_config(None, tiny_overrides(tiny_data, tmp_path, **{"run.method": "linear-probe",
                                                                          "run.name": "probe"})))
    assert (result.run_dir / "probe.safetensors").is_file() and result.metrics["method"] == "linear-probe"
    assert result.history[-1]["lr"] == pytest.approx(1e-4)


def test_fp16_training_scales_the_loss(tiny_data, tmp_path, monkeypatch):
    """Tiny DB-like gradients underflow in fp16; with the loss scaler the update equals the fp32 one."""
    from lmpt.engine.train.step import EagerStep, grad_scaler

    updates = {}
    for precision in ("fp32", "fp16"):
        cfg = _cfg(tiny_data, tmp_path, **{"run.precision": precision, "run.method": "coop"})
        trainer = PromptTrainer(cfg, prepare(cfg), torch.device("cpu"))
        original = trainer.loss

        def tiny(idx, flip, original=original):
            out = original(idx, flip)
            return {k: (None if v is None else v * 1e-7) for k, v in out.items()}

        trainer.loss = tiny
        scaler = grad_scaler(torch.device("cpu"), precision)
        assert (scaler is not None) == (precision == "fp16")
        opt = torch.optim.SGD(trainer.params, lr=1e4)
        before = trainer.model.prompt_learner.ctx.detach().clone()
        EagerStep(trainer, opt, scaler)(torch.arange(16), torch.zeros(16, dtype=torch.long))
        updates[precision] = trainer.model.prompt_learner.ctx.detach() - before
    assert updates["fp32"].abs().sum() > 0
    torch.testing.assert_close(updates["fp16"], updates["fp32"], rtol=0.1, atol=1e-5)


def test_clip_preprocessing_resizes_the_short_side_and_crops():
    from lmpt.data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, build_transform

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 80, 3), dtype=np.uint8))  # 80 wide, 40 high
    got = build_transform("clip", 32)(img)
    small = img.resize((64, 32), Image.BICUBIC).crop((16, 0, 48, 32))  # short side 32, centre 32 x 32
    expected = (np.asarray(small, dtype=np.float32) / 255.0 - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_split_seed_changes_the_validation_split_of_manifests(tiny_data, tmp_path):
    a = dataset_from_config(_cfg(tiny_data, tmp_path, **{"data.split_seed": 0}))
    b = dataset_from_config(_cfg(tiny_data, tmp_path, **{"data.split_seed": 1}))
    again = dataset_from_config(_cfg(tiny_data, tmp_path, **{"data.split_seed": 0}))
    assert a.val.ids == again.val.ids and a.val.ids != b.val.ids


def test_metrics_count_the_classes_validation_cannot_see(tiny_data, tmp_path):
    result = run(_cfg(tiny_data, tmp_path, **{"optim.epochs": 1, "run.name": "unseen"}))
    ds = prepare(_cfg(tiny_data, tmp_path)).dataset
    unseen = [n for n, k in zip(ds.class_names, ds.val.labels.sum(axis=0)) if k == 0]
    info = result.metrics["dataset"]
    assert info["val_unseen_classes"] == unseen and info["val_classes_without_positives"] == len(unseen)
    assert result.metrics["val"]["softmax"]["excluded"] == len(unseen)
    no_val = run(_cfg(tiny_data, tmp_path, **{"optim.epochs": 1, "run.name": "noval", "data.val_fraction": 0}))
    assert no_val.metrics["dataset"]["val_classes_without_positives"] is None and no_val.metrics["val"] is None
    assert "val_total" not in no_val.history[0]


def test_sweep_redoes_a_run_whose_settings_changed(tiny_data, tmp_path):
    from lmpt.engine.studies.sweep import run_sweep

    out = tmp_path / "sweep"
    run_sweep(_cfg(tiny_data, tmp_path, **{"optim.epochs": 1}), ["coop"], [0], out)
    first = json.loads((out / "coop-seed0" / "metrics.json").read_text())
    mtime = (out / "coop-seed0" / "metrics.json").stat().st_mtime_ns
    run_sweep(_cfg(tiny_data, tmp_path, **{"optim.epochs": 1, "run.progress": True}), ["coop"], [0], out)
    assert (out / "coop-seed0" / "metrics.json").stat().st_mtime_ns == mtime  # same run: reused
    run_sweep(_cfg(tiny_data, tmp_path, **{"optim.epochs": 2}), ["coop"], [0], out)
    second = json.loads((out / "coop-seed0" / "metrics.json").read_text())
    assert second["selected_epoch"] == 2 and first["selected_epoch"] == 1  # redone with the new settings
    assert json.loads((out / "coop-seed0.stale-1" / "metrics.json").read_text()) == first  # kept, not deleted
