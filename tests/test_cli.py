"""The command line: thin wrappers, clear messages for user mistakes, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys


from lmpt.cli import main
from lmpt.engine.config import builtin_config_names, load_config

from engine_helpers import tiny_overrides


def test_help_is_short_and_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "zeroshot", "predict", "sweep", "data", "demo"):
        assert cmd in out
    assert len(out.splitlines()) < 40


def test_train_eval_predict_from_the_command_line(tiny_data, tmp_path, capsys):
    assert main(["train", "--name", "cli"] + tiny_overrides(tiny_data, tmp_path)) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "cli"
    assert f"run folder: {run}" in out and "| softmax |" in out
    assert main(["eval", str(run)]) == 0
    assert "| sigmoid |" in capsys.readouterr().out
    image = sorted((tiny_data["root"] / "img").glob("test*.png"))[0]
    assert main(["predict", "--run", str(run), str(image), "--format", "json", "--top-k", "3"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert preds[0]["image"] == str(image) and len(preds[0]["labels"]) == 3
    # resume of a finished run is a no-op that ends with the same metrics
    assert main(["train", "--resume", str(run)]) == 0


def test_user_mistakes_get_messages_not_tracebacks(tiny_data, tmp_path, capsys):
    base = tiny_overrides(tiny_data, tmp_path)
    cases = [
        (["train"] + base + ["optim.lrr=1"], "unknown key 'optim.lrr'. Did you mean lr"),
        (["train"] + base + ["model.pretrained=/nope/RN50.pt"], "weights file not found: /nope/RN50.pt"),
        (["train"] + base + ["model.backbone=RN5O"], "unknown backbone 'RN5O'"),
        (["train"] + base + ["optim.epochs=many"], "optim.epochs must be an integer"),
        (["train", "no-such-config.yaml"], "config file not found: no-such-config.yaml"),
        (["train", "voc-lt-rn50"], "data.root is not set"),
        (["train"] + base + ["data.train=/nope/train.jsonl"], "/nope/train.jsonl"),
        (["predict", "--run", str(tmp_path), str(tiny_data["train"])], "no trained classifier in"),
        (["train", "--resume", str(tmp_path / "nothing")], "is not a run folder"),
    ]
    for argv, message in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, argv
        assert message in err, (argv, err)
        assert "Traceback" not in err


def test_data_check_manifest_reports_missing_images(tiny_data, tmp_path, capsys):
    ok = main(["data", "check", "manifest", "--train", str(tiny_data["train"]), "--test", str(tiny_data["test"]),
               "--quiet", "--workers", "0"])
    assert ok == 0
    assert "classes" in capsys.readouterr().out
    lines = tiny_data["test"].read_text().splitlines()
    broken = tmp_path / "test.jsonl"
    row = json.loads(lines[0])
    row["image"] = str(tmp_path / "gone.png")
    broken.write_text("\n".join([json.dumps(row)] + lines[1:]).replace('"img/', f'"{tiny_data["root"]}/img/') + "\n")
    code = main(["data", "check", "manifest", "--train", str(tiny_data["train"]), "--test", str(broken), "--quiet",
                 "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "gone.png" in out


def test_builtin_configs_load_with_overrides():
    assert {"voc-lt-rn50", "voc-lt-vitb16", "coco-lt-rn50", "coco-lt-vitb16", "world"} <= set(builtin_config_names())
    cfg = load_config("coco-lt-vitb16", ["data.root=/data/coco", "optim.lr=1e-3"])
    assert cfg.model.backbone == "ViT-B-16" and cfg.loss.db_preset == "coco-lt" and cfg.optim.lr == 1e-3
    assert cfg.optim.epochs == 50 and cfg.optim.batch_size == 64 and cfg.optim.momentum == 0.9


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "lmpt", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("lmpt ")
