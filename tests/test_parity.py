"""Reference parity (issue 21), each against an independent computation on tiny data: RN50's BatchNorm regimes
(frozen, adapt, train), the linear probe's raw input, the plateau schedule on test mAP under the oracle
protocol, and the comparison with the paper."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from lmpt.batchnorm import adapt_batchnorm, batchnorm_layers
from lmpt.data.images import PreprocessConfig, load_image, transform_from_signature
from lmpt.engine import load_config, prepare
from lmpt.engine import run as train
from lmpt.engine.methods import METHOD_KINDS
from lmpt.engine.train.loss import LossDecision
from lmpt.errors import ConfigError

from engine_helpers import die_at_call, tiny_overrides

RN = {"model.backbone": "lmpt-test-rn", "data.feature_batch_size": 16}


def _cfg(tiny_data, tmp_path, **extra):
    return load_config(None, tiny_overrides(tiny_data, tmp_path, **extra))


def _batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance of a ``[N, C, H, W]`` activation."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return flat.mean(dim=1), flat.var(dim=1, unbiased=True)


def test_adapt_is_the_cumulative_average_of_batch_statistics():
    from lmpt.backbone import create_clip

    visual = create_clip("lmpt-test-rn", seed=0).model.visual
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, 3, 64, 64, generator=g) for _ in range(3)]
    reference = copy.deepcopy(visual)
    # independent: the first BatchNorm normalises conv1's output, which no BatchNorm precedes
    with torch.no_grad():
        stats = [_batch_stats(reference.conv1(b)) for b in batches]
    # and every layer: its input during a train-mode pass over the same batches (hooks on a copy)
    seen: dict[str, list] = {}
    hooks = [layer.register_forward_hook(lambda m, inp, out, name=name: seen.setdefault(name, []).append(
        _batch_stats(inp[0].detach()))) for name, layer in batchnorm_layers(reference)]
    reference.train()
    with torch.no_grad():
        for b in batches:
            reference(b)
    for h in hooks:
        h.remove()

    assert adapt_batchnorm(visual, batches) == 3
    assert not visual.training and not any(layer.training for _, layer in batchnorm_layers(visual))
    mean = torch.stack([m for m, _ in stats]).mean(0)
    var = torch.stack([v for _, v in stats]).mean(0)
    torch.testing.assert_close(visual.bn1.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(visual.bn1.running_var.double(), var, rtol=1e-5, atol=1e-6)
    for name, layer in batchnorm_layers(visual):
        want_mean = torch.stack([m for m, _ in seen[name]]).mean(0)
        want_var = torch.stack([v for _, v in seen[name]]).mean(0)
        torch.testing.assert_close(layer.running_mean.double(), want_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), want_var, rtol=1e-4, atol=1e-5)
        assert layer.momentum == 0.1  # restored


def test_adapt_in_prepare_changes_the_backbone_and_its_features(tiny_data, tmp_path, caplog):
    caplog.set_level("INFO", logger="lmpt")
    frozen = prepare(_cfg(tiny_data, tmp_path, **RN))
    adapted = prepare(_cfg(tiny_data, tmp_path, **RN, **{"model.batchnorm": "adapt"}))
    assert adapted.backbone.fingerprint != frozen.backbone.fingerprint
    assert adapted.backbone.weights_fingerprint == frozen.backbone.fingerprint
    assert not torch.allclose(adapted.features["test"], frozen.features["test"])
    # the cached test features are the adapted tower's eval-mode features
    split = adapted.dataset.test
    sig = PreprocessConfig().resolve(adapted.backbone)
    x = torch.stack([transform_from_signature(sig)(load_image(p)) for p in split.paths[:5]])
    with torch.no_grad():
        want = adapted.backbone.model.encode_image(x)
    torch.testing.assert_close(adapted.features["test"][:5, 0], want, rtol=1e-4, atol=1e-5)
    # a backbone without BatchNorm computes what frozen does, and says so
    vit = prepare(_cfg(tiny_data, tmp_path, **{"model.batchnorm": "adapt"}))
    assert vit.backbone.fingerprint == vit.backbone.weights_fingerprint
    assert "has no BatchNorm layer" in caplog.text


def test_train_mode_features_are_a_plain_train_forward_and_stats_follow_momentum(tiny_data, tmp_path):
    from lmpt.engine.train.image_features import LiveImageFeatures

    cfg = _cfg(tiny_data, tmp_path, **RN, **{"model.batchnorm": "train"})
    prepared = prepare(cfg)
    live = LiveImageFeatures(cfg, prepared, torch.device("cpu"), normalize=False)
    reference = copy.deepcopy(prepared.backbone.model.visual).train()
    sig = PreprocessConfig().resolve(prepared.backbone)
    plain, mirrored = transform_from_signature(sig), transform_from_signature(sig, flip=True)
    paths = prepared.dataset.train.paths
    running_mean = reference.bn1.running_mean.clone().double()
    running_var = reference.bn1.running_var.clone().double()
    live.train()
    for step in range(3):
        idx = torch.arange(step * 8, step * 8 + 8)
        flip = torch.tensor([0, 1] * 4)
        got = live.train_batch(idx, flip)
        x = torch.stack([(mirrored if f else plain)(load_image(paths[i])) for i, f in zip(idx.tolist(), flip.tolist())])
        with torch.no_grad():
            mean, var = _batch_stats(reference.conv1(x))
            want = reference(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        running_mean = 0.9 * running_mean + 0.1 * mean
        running_var = 0.9 * running_var + 0.1 * var
    torch.testing.assert_close(live.visual.bn1.running_mean.double(), running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(live.visual.bn1.running_var.double(), running_var, rtol=1e-5, atol=1e-6)
    # evaluation uses the drifted statistics, and leaves the training mode as it was
    test = live.split("test")[:4, 0]
    with torch.no_grad():
        want = copy.deepcopy(live.visual).eval()(torch.stack([plain(load_image(p)) for p in prepared.dataset.test.paths[:4]]))
    torch.testing.assert_close(test, want, rtol=1e-4, atol=1e-5)
    assert live.visual.bn1.training
    assert prepared.backbone.model.visual.bn1.running_mean.abs().sum() == 0  # the shared backbone is untouched


def test_train_mode_resume_equals_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    from lmpt.engine.train.prompt import PromptTrainer

    extra = {**RN, "model.batchnorm": "train", "optim.epochs": 3, "optim.schedule": "cosine"}
    full = train(_cfg(tiny_data, tmp_path, **extra, **{"run.name": "full"}))
    original = PromptTrainer.loss
    die_at_call(monkeypatch, PromptTrainer, 6)  # in the middle of epoch 2 (4 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_data, tmp_path, **extra, **{"run.name": "killed"}))
    monkeypatch.setattr(PromptTrainer, "loss", original)
    run_dir = tmp_path / "runs" / "killed"
    resumed = train(load_config(run_dir / "config.yaml"), run_dir=run_dir, resume=True)
    assert resumed.metrics["per_class_ap"] == full.metrics["per_class_ap"]
    from lmpt.engine.rundir.checkpoint import load_weights

    a, _ = load_weights(full.run_dir)
    b, _ = load_weights(run_dir)
    assert any(k.startswith("batchnorm.") for k in a) and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the run's classifier carries the drifted statistics: eval reproduces the run's test metrics
    from lmpt.engine import reevaluate_run

    assert reevaluate_run(full.run_dir, write=False)["per_class_ap"] == full.metrics["per_class_ap"]


def test_probe_raw_input_is_w_times_the_raw_feature_plus_b(tiny_data, tmp_path):
    from lmpt.engine.train.probe import ProbeTrainer
    from lmpt.model import LinearProbe

    probe = LinearProbe(8, 3, 100.0, input="raw")
    x = torch.randn(5, 8)
    torch.testing.assert_close(probe(x), x @ probe.linear.weight.T + probe.linear.bias)
    cfg = _cfg(tiny_data, tmp_path, **{"run.method": "linear-probe", "probe.input": "raw", "run.name": "raw"})
    prepared = prepare(cfg)
    trainer = ProbeTrainer(cfg, prepared, torch.device("cpu"))
    raw = prepared.features["test"][:, 0]
    w, b = trainer.model.linear.weight.detach(), trainer.model.linear.bias.detach()
    torch.testing.assert_close(trainer.logits("test"), raw @ w.T + b, rtol=1e-5, atol=1e-5)
    result = train(cfg, prepared=prepared)
    from lmpt.engine import load_run

    run = load_run(result.run_dir)
    assert not run.model.normalize_features
    logits = run.model.feature_logits(raw)
    np.testing.assert_allclose(json.loads((result.run_dir / "metrics.json").read_text())["per_class_ap"]["sigmoid"],
                               result.metrics["per_class_ap"]["sigmoid"])
    assert logits.shape == (len(raw), prepared.dataset.num_classes)


class _FakeTrainer:
    """The Trainer protocol with prescribed test logits per epoch and a steadily falling training loss."""

    kind = METHOD_KINDS["prompt"]
    device = torch.device("cpu")
    distributed = False
    capturable = True
    uses_cse = False

    def __init__(self, prepared, stalled: bool) -> None:
        self.prepared = prepared
        self.param = torch.nn.Parameter(torch.zeros(1))
        self.params = [self.param]
        self.loss_decision = LossDecision("bce", {}, None, 1.0, ["fake"])
        self.calls = 0
        self.test_calls = 0
        self.stalled = stalled
        y = torch.as_tensor(prepared.dataset.test.labels, dtype=torch.float32)
        self.noise, self.y = torch.randn(y.shape, generator=torch.Generator().manual_seed(0)), y

    def train(self) -> None:
        pass

    def loss(self, idx, flip):
        self.calls += 1
        value = self.param.sum() * 0 + 100.0 / self.calls
        return {"loss": value, "cls": value, "cse": None}

    def all_reduce_grads(self) -> None:
        pass

    def logits(self, split):
        if split == "test":
            self.test_calls += 1
            return self.noise + (0.0 if self.stalled else 0.05 * self.test_calls) * self.y
        data = getattr(self.prepared.dataset, split)
        return None if data is None else torch.zeros(len(data), self.prepared.dataset.num_classes)

    def state(self):
        return {"ctx": self.param.detach().clone()}

    def load_state(self, state) -> None:
        pass


@pytest.mark.parametrize("plateau_on,stalled,drops", [("test", True, True), ("test", False, False),
                                                      ("auto", True, False)])
def test_plateau_on_test_drops_the_lr_when_test_map_stalls_for_six_epochs(tiny_data, tmp_path, plateau_on, stalled,
                                                                          drops):
    from lmpt.engine.rundir.layout import RunLayout
    from lmpt.engine.train.loop import fit

    cfg = _cfg(tiny_data, tmp_path, **{"data.val_fraction": 0, "run.select": "test", "optim.plateau_on": plateau_on,
                                      "optim.epochs": 10, "optim.lr": 0.1, "run.name": f"p{plateau_on}{stalled}"})
    prepared = prepare(cfg)
    layout = RunLayout(tmp_path / "runs" / f"p{plateau_on}{stalled}")
    layout.root.mkdir(parents=True)
    result = fit(cfg, _FakeTrainer(prepared, stalled), prepared, layout, False, {})
    lrs = [row["lr"] for row in result.history]
    if drops:
        assert lrs[:7] == [0.1] * 7 and lrs[7] == pytest.approx(0.01)
        assert "oracle" in result.metrics["schedule"]["plateau_on"]
    else:
        assert lrs == [0.1] * 10
    assert result.metrics["oracle"]


def test_plateau_on_test_needs_the_oracle_flag(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="plateau_on=test.*--select-on test"):
        _cfg(tiny_data, tmp_path, **{"optim.plateau_on": "test"})
    with pytest.raises(ConfigError, match="model.batchnorm"):
        _cfg(tiny_data, tmp_path, **{"model.batchnorm": "drift"})


def _fake_sweep(root, methods: dict[str, dict]) -> None:
    """A sweep folder as `lmpt sweep` leaves it: summary.json and one run folder per method (config, metrics)."""
    import yaml

    from lmpt.engine.rundir.layout import RunLayout, SweepLayout

    layout = SweepLayout(root)
    layout.root.mkdir(parents=True)
    summary = {"methods": {}, "runs": {}}
    for method, spec in methods.items():
        run = RunLayout(root / method)
        run.root.mkdir()
        run.config.write_text(yaml.safe_dump(spec["config"]))
        run.metrics.write_text(json.dumps({"dataset": {"name": "voc-lt"}, "batchnorm": {"has_batchnorm": True}}))
        summary["runs"][method] = [{"run_dir": str(run.root)}]
        summary["methods"][method] = {g: {"mean": spec["total"] - i / 100, "std": 0.0, "n": 1}
                                      for i, g in enumerate(("total", "head", "medium", "tail"))}
    layout.summary_json.write_text(json.dumps(summary))


def test_compare_lays_the_sweep_beside_the_paper(tmp_path, capsys):
    from lmpt.cli import main
    from lmpt.engine.studies.paper import compare_with_paper, run_protocol

    base = {"model": {"backbone": "RN50", "batchnorm": "train"}, "optim": {"plateau_on": "test"},
            "probe": {"input": "raw"}}
    exact = {**base, "run": {"method": "lmpt", "select": "test"}}
    oracle = {**base, "optim": {"plateau_on": "auto"}, "run": {"method": "coop", "select": "test"}}
    honest = {**base, "run": {"method": "coop-db", "select": "last"}}
    assert run_protocol(exact, True) == "reference-exact" and run_protocol(oracle, True) == "oracle"
    assert run_protocol(honest, True) == "honest"
    assert run_protocol({**exact, "model": {"batchnorm": "frozen"}}, True) == "oracle"
    assert run_protocol({**exact, "model": {"batchnorm": "frozen"}}, False) == "reference-exact"  # ViT: no BN
    _fake_sweep(tmp_path / "sweep", {"lmpt": {"config": exact, "total": 0.8123}, "coop": {"config": oracle,
                                                                                          "total": 0.75}})
    rows = {r["method"]: r for r in compare_with_paper(tmp_path / "sweep")["rows"]}
    assert rows["lmpt"]["paper_total"] == 85.44
    assert rows["lmpt"]["diff_total"] == pytest.approx(81.23 - 85.44)
    assert rows["coop"]["paper_total"] is None and rows["coop"]["protocol"] == "oracle"
    assert main(["compare", str(tmp_path / "sweep"), "--out", str(tmp_path / "cmp.md")]) == 0
    out = capsys.readouterr().out
    assert "| lmpt | 81.23 ± 0.00" in out and "85.44 | -4.21 | reference-exact |" in out
    assert (tmp_path / "cmp.md").read_text().strip() == out.strip()
    assert main(["compare", str(tmp_path)]) == 2
