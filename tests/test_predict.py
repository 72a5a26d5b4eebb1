"""Decisions of a run (calibration in metrics and checkpoint), `lmpt predict` at scale, and `lmpt export`."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmpt.cli import main
from lmpt.engine.rundir.checkpoint import load_weights
from lmpt.engine.config import load_config
from lmpt.engine.prepared import prepare
from lmpt.engine.use.inference import RunScorer, load_run
from lmpt.engine.train.run import run as train
from lmpt.deploy import load_classifier

from conftest import TINY_RN
from engine_helpers import CLASSES, tiny_overrides


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_runs")
    vit = train(load_config(None, tiny_overrides(tiny_data, tmp, **{"run.name": "vit", "optim.epochs": 2})))
    rn = train(load_config(None, tiny_overrides(tiny_data, tmp, **{
        "run.name": "rn", "run.method": "linear-probe", "model.backbone": TINY_RN, "optim.epochs": 3})))
    return {"vit": vit.run_dir, "rn": rn.run_dir, "tmp": tmp}


@pytest.fixture
def folder(tiny_data, tmp_path):
    """A folder (with a subfolder) of 5 test images and one corrupt file."""
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    images = sorted((tiny_data["root"] / "img").glob("test*.png"))[:5]
    for i, p in enumerate(images):
        (tmp_path / "imgs" / ("sub" if i % 2 else "") / p.name).write_bytes(p.read_bytes())
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return tmp_path / "imgs"


def test_runs_store_calibration_and_report_decisions(runs):
    metrics = json.loads((runs["vit"] / "metrics.json").read_text())
    d = metrics["decisions"]
    assert d["calibration"]["fitted_on"] == "val" and d["calibration"]["method"] == "platt"
    assert {"CF1", "OF1", "CP", "CR", "labels_per_image"} <= set(d["calibrated"]) and 0 <= d["ece"] <= 1
    assert d["fixed"]["label"].startswith("fixed threshold 0.5")
    # independent computation of the calibrated test decisions from the stored calibration and test logits
    _, meta = load_weights(runs["vit"])
    cal = meta["calibration"]
    prepared = prepare(load_config(runs["vit"] / "config.yaml"))
    logits = load_run(runs["vit"]).model.feature_logits(prepared.features["test"])
    probs = torch.sigmoid(logits * torch.tensor(cal["a"]) + torch.tensor(cal["b"])).numpy()
    pred = probs >= np.array(cal["thresholds"])
    y = prepared.dataset.test.labels > 0
    assert d["calibrated"]["labels_per_image"] == pytest.approx(pred.sum(1).mean())
    assert d["calibrated"]["OP"] == pytest.approx((pred & y).sum() / pred.sum())
    assert d["calibrated"]["OR"] == pytest.approx((pred & y).sum() / y.sum())
    assert "calibrated thresholds" in (runs["vit"] / "report.md").read_text()


def test_calibration_without_validation_uses_train_and_says_so(tiny_data, tmp_path, caplog):
    cfg = load_config(None, tiny_overrides(tiny_data, tmp_path, **{"data.val_fraction": 0, "run.method": "zeroshot"}))
    result = train(cfg)
    assert result.metrics["decisions"]["calibration"]["fitted_on"] == "train"
    assert "no validation split" in caplog.text
    # zero-shot runs write a classifier too, and predict uses it
    image = sorted((tiny_data["root"] / "img").glob("test*.png"))[0]
    preds = RunScorer(load_run(result.run_dir)).predict([image]).predictions
    assert len(preds) == 1 and set(preds[0].scores) == set(load_run(result.run_dir).model.class_names)


def test_predict_folder_skips_a_corrupt_file(runs, folder, capsys):
    assert main(["predict", "--run", str(runs["vit"]), str(folder), "--format", "json", "--quiet"]) == 0
    captured = capsys.readouterr()
    preds = json.loads(captured.out)
    assert len(preds) == 5 and all(p["image"].endswith(".png") for p in preds)
    assert {"image", "labels", "scores"} <= set(preds[0]) and set(preds[0]["scores"]) == set(CLASSES)
    assert "broken.jpg" in captured.err and "skipped" in captured.err
    # --strict stops at the corrupt file, with one line naming it
    assert main(["predict", "--run", str(runs["vit"]), str(folder), "--strict", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err
    # nothing readable: exit code 2
    assert main(["predict", "--run", str(runs["vit"]), str(folder / "broken.jpg"), "--quiet"]) == 2


def test_predict_formats_globs_and_out_file(runs, folder, tmp_path, capsys):
    args = ["predict", "--run", str(runs["vit"]), str(folder / "**" / "*.png"), "--quiet"]
    assert main(args + ["--format", "jsonl"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5
    assert main(args + ["--format", "csv", "--top-k", "2"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 5 and all(len(r["labels"].split(";")) == 2 for r in rows)
    assert set(rows[0]) == {"image", "labels"} | set(CLASSES)
    out = tmp_path / "preds.json"
    assert main(args + ["--format", "json", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())) == 5 and capsys.readouterr().out == ""


def test_predict_manifest_reports_precision_and_recall(runs, tiny_data, capsys):
    assert main(["predict", "--run", str(runs["vit"]), str(tiny_data["test"]), "--format", "json", "--quiet"]) == 0
    captured = capsys.readouterr()
    preds = json.loads(captured.out)
    rows = [json.loads(x) for x in tiny_data["test"].read_text().splitlines()]
    assert len(preds) == len(rows) and preds[0]["true_labels"] == rows[0]["labels"]
    tp = sum(len({x["label"] for x in p["labels"]} & set(r["labels"])) for p, r in zip(preds, rows))
    n_pred = sum(len(p["labels"]) for p in preds)
    n_true = sum(len(r["labels"]) for r in rows)
    assert f"precision {tp / n_pred:.3f}, recall {tp / n_true:.3f}" in captured.err


@pytest.mark.parametrize("which", ["vit", "rn"])
def test_export_round_trip(runs, folder, tmp_path, which, capsys):
    model = tmp_path / f"{which}.pt"
    assert main(["export", str(runs[which]), "--out", str(model)]) == 0
    exported = load_classifier(model)
    images = sorted(str(p) for p in folder.rglob("*.png"))
    want = RunScorer(load_run(runs[which])).predict(images).predictions
    got = exported.predict(images).predictions
    assert [p.image for p in got] == [p.image for p in want]
    for g, w in zip(got, want):
        assert max(abs(g.scores[n] - w.scores[n]) for n in CLASSES) < 1e-4
        assert [n for n, _ in g.labels] == [n for n, _ in w.labels]
    # the CLI reads it too, and a fresh interpreter needs neither open_clip nor the engine
    assert main(["predict", "--model", str(model), images[0], "--format", "json", "--quiet"]) == 0
    code = (f"import sys, lmpt; c = lmpt.load_classifier({str(model)!r}); r = c.predict([{images[0]!r}]); "
            "print(len(r.predictions), 'open_clip' in sys.modules, any(m.startswith('lmpt.engine') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "False", "False"]


def test_run_scorer_thresholds_are_the_calibrated_ones(runs):
    scorer = RunScorer(load_run(runs["rn"]))
    _, meta = load_weights(runs["rn"])
    assert np.allclose(scorer.thresholds, meta["calibration"]["thresholds"])
    assert meta["kind"] == "probe"


def test_predict_and_export_errors_are_one_line(runs, tmp_path, capsys):
    cases = [
        (["predict", str(tmp_path)], "--run RUN_DIR"),
        (["predict", "--run", str(runs["vit"]), str(tmp_path / "none-*.png")], "no file matches"),
        (["predict", "--model", str(tmp_path / "gone.pt"), str(runs["vit"])], "no exported classifier"),
        (["predict", "--run", str(runs["vit"]), str(runs["vit"] / "config.yaml"), "--threshold", "2"], "[0, 1]"),
        (["export", str(runs["vit"]), "--out", str(tmp_path / "m.onnx"), "--format", "torchscript"], "named *.pt"),
        (["export", str(tmp_path), "--out", str(tmp_path / "m.pt")], "no classifier in"),
    ]
    for argv, text in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and text in err and "Traceback" not in err, (argv, err)


class _FixedScorer:
    """Known probabilities and thresholds, to check which labels predict chooses."""

    class_names = ["a", "b", "c"]
    thresholds = np.array([0.2, 0.6, 0.95])

    @staticmethod
    def transform(image):
        return torch.zeros(3, 4, 4)

    def probabilities(self, images):
        return np.tile([0.3, 0.55, 0.97], (len(images), 1))


def test_predict_uses_each_classs_threshold_unless_told_otherwise(tiny_data):
    from lmpt.predictor import predict_paths

    images = sorted(str(p) for p in (tiny_data["root"] / "img").glob("test000*.png"))[:2]
    labels = lambda **kw: [[n for n, _ in p.labels] for p in predict_paths(_FixedScorer(), images,  # noqa: E731
                                                                            show_progress=False, **kw).predictions]
    assert labels() == [["c", "a"]] * 2  # 0.97 >= 0.95 and 0.3 >= 0.2; 0.55 < 0.6; best first
    assert labels(threshold=0.5) == [["c", "b"]] * 2
    assert labels(top_k=1) == [["c"]] * 2


def test_a_classifier_file_without_calibration_scores_sigmoid_at_one_half(runs, tmp_path, caplog):
    """Files written before calibration existed: sigmoid(logit), threshold 0.5, and a warning."""
    from PIL import Image

    from lmpt.engine.methods import METHOD_KINDS
    from lmpt.engine.rundir.checkpoint import save_weights

    tensors, meta = load_weights(runs["vit"])
    old = tmp_path / "old"
    old.mkdir()
    save_weights(old / METHOD_KINDS["prompt"].weights_file, tensors, {k: v for k, v in meta.items() if k != "calibration"})
    scorer = RunScorer(load_run(old))
    assert "no calibration" in caplog.text and np.all(scorer.thresholds == 0.5)
    images = torch.stack([scorer.transform(Image.new("RGB", (40, 30)))])
    expected = torch.sigmoid(scorer.logits(images)).numpy()
    np.testing.assert_allclose(scorer.probabilities(images), expected, atol=1e-6)
