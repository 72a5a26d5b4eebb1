"""The command line: thin wrappers, clear messages for user mistakes, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmpt.cli import main
from lmpt.engine.config import builtin_config_names, load_config
from lmpt.errors import ConfigError

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
        (["predict", "--run", str(tmp_path), str(tiny_data["train"])], "no classifier in"),
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
    # one entry of a mapping-valued key; the other entries stay (the world config sets kappa, this adds neg_scale)
    world = ["data.train=-", "data.test=-"]
    base = load_config("world", world).loss.db
    cfg = load_config("world", world + ["loss.db.neg_scale=4", "loss.db.kappa=0.05"])
    assert cfg.loss.db == {**base, "neg_scale": 4, "kappa": 0.05}
    with pytest.raises(ConfigError, match="kapa"):
        load_config("world", world + ["loss.db.kapa=0.05"])


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "lmpt", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("lmpt ")


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, (argv, err)
    return lines[0]


def test_bad_input_table_gets_one_line_and_exit_code_2(tiny_data, tmp_path, capsys):
    """Every mistake below ends in one line that names the value, exit code 2, and no traceback."""
    base = tiny_overrides(tiny_data, tmp_path)
    image = str(sorted((tiny_data["root"] / "img").glob("test*.png"))[0])
    cases = [
        (["train", "world", "loss.db_preset=nope"], "loss.db_preset='nope'"),
        (["train", "world", "loss.db={kappaa: 2}"], "'kappaa'. Did you mean kappa"),
        (["train", "world", "data.world_classes=0"], "unknown key 'data.world_classes'"),
        (["train"] + base + ["optim.lrr=1"], "unknown key 'optim.lrr'. Did you mean lr"),
        (["train"] + base + ["optim.lr=-1"], "optim.lr=-1.0"),
        (["train"] + base + ["optim.epochs=0"], "optim.epochs=0"),
        (["train"] + base + ["optim.epochs=many"], "optim.epochs must be an integer, got 'many'"),
        (["train"] + base + ["optim.batch_size=0"], "optim.batch_size=0"),
        (["train"] + base + ["optim.momentum=1.5"], "optim.momentum=1.5"),
        (["train"] + base + ["optim.name=adagrad"], "optim.name='adagrad'"),
        (["train"] + base + ["optim.schedule=step"], "optim.schedule='step'"),
        (["train"] + base + ["loss.lam=2"], "loss.lam=2.0"),
        (["train"] + base + ["run.method=custom", "loss.classification=ce"], "loss.classification='ce'"),
        (["train"] + base + ["loss.cse_form=soft"], "loss.cse_form='soft'"),
        (["train"] + base + ["loss.asl={gama_neg: 3}"], "'gama_neg'. Did you mean gamma_neg"),
        (["train"] + base + ["loss.db={neg_scale: 0}"], "loss.db.neg_scale=0"),
        (["train"] + base + ["loss.db={kappa: [1, 2]}"], "loss.db.kappa=[1, 2]"),
        (["train"] + base + ["loss.db=5"], "loss.db must be a mapping"),
        (["train"] + base + ["model.backbone=RN5O"], "unknown backbone 'RN5O'"),
        (["train"] + base + ["model.pretrained=/nope/RN50.pt"], "weights file not found: /nope/RN50.pt"),
        (["train"] + base + ["model.n_ctx=0"], "model.n_ctx=0"),
        (["train"] + base + ["model.quick_gelu=maybe"], "model.quick_gelu='maybe'"),
        (["train"] + base + ["data.val_fraction=1.5"], "data.val_fraction=1.5"),
        (["train"] + base + ["data.preprocess=squash"], "data.preprocess='squash'"),
        (["train"] + base + ["data.captions=some"], "data.captions='some'"),
        (["train"] + base + ["data.dataset=imagenet"], "data.dataset='imagenet'"),
        (["train"] + base + ["data.feature_chunk_size=0"], "data.feature_chunk_size=0"),
        (["train"] + base + ["data.train=/nope/train.jsonl"], "/nope/train.jsonl"),
        (["train"] + base + ["run.method=clip"], "run.method='clip'"),
        (["train"] + base + ["run.select=best"], "run.select='best'"),
        (["train"] + base + ["run.precision=fp8"], "run.precision='fp8'"),
        (["train"] + base + ["run.device=gpu"], "run.device='gpu'"),
        (["train"] + base + ["run.templates=many"], "run.templates='many'"),
        (["train"] + base + ["run.zeroshot_protocol=paper"], "run.zeroshot_protocol='paper'"),
        (["train"] + base + ["optim.lr=1e-3", "extra"], "unexpected argument 'extra'"),
        (["train"] + base + ["--seed", "x"], "argument --seed: invalid int value: 'x'"),
        (["train"] + base + ["--method", "clip"], "argument --method: invalid choice: 'clip'"),
        (["train", "voc-lt-rn50"], "data.root is not set"),
        (["train", "voc-lt-rn50", "data.root=/nope/VOC"], "/nope/VOC does not exist"),
        (["train", "no-such-config.yaml"], "config file not found: no-such-config.yaml"),
        (["train", "--resume", str(tmp_path / "nothing")], "is not a run folder"),
        (["sweep", "world", "--methods", "zeroshot,clip"], "unknown method(s) clip"),
        (["sweep", "world", "--seeds", "a,b"], "--seeds must be comma-separated integers, got 'a,b'"),
        (["predict", "--run", str(tmp_path), image], "no classifier in"),
        (["predict", "--run", str(tmp_path), str(tmp_path / "gone.png")], "input not found"),
        (["eval", str(tmp_path)], "no classifier in"),
        (["demo", "--classes", "0"], "--classes 0"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["data"], "needs an action"),
        (["data", "check", "voc-lt"], "pass data.root=DIR"),
        (["data", "check", "manifest", "--train", str(tiny_data["train"])], "a test manifest"),
    ]
    assert len(cases) >= 30
    for argv, message in cases:
        line = _one_line_error(capsys, argv)
        assert message in line, (argv, line)


def test_options_and_overrides_in_any_order(tiny_data, tmp_path, capsys):
    """`lmpt train CONFIG --method X KEY=VALUE` works: overrides after options are not 'unrecognized'."""
    base = tiny_overrides(tiny_data, tmp_path, **{"optim.epochs": 1})
    assert main(["train", "--method", "coop", *base[:4], "--name", "mixed", *base[4:]]) == 0
    run_dir = tmp_path / "runs" / "mixed"
    assert json.loads((run_dir / "metrics.json").read_text())["method"] == "coop"
    assert "method: coop" in (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    # an override after the last option, and a --seed between overrides
    assert main(["train", *base[:2], "--seed", "3", *base[2:], "--name", "mixed2", "run.method=coop-db"]) == 0
    metrics = json.loads((tmp_path / "runs" / "mixed2" / "metrics.json").read_text())
    assert metrics["method"] == "coop-db" and metrics["seed"] == 3


def test_resume_refuses_changed_settings(tiny_data, tmp_path, capsys):
    base = tiny_overrides(tiny_data, tmp_path, **{"optim.epochs": 1})
    assert main(["train", "--name", "r"] + base) == 0
    run_dir = str(tmp_path / "runs" / "r")
    capsys.readouterr()
    line = _one_line_error(capsys, ["train", "--resume", run_dir, "model.n_ctx=8"])
    assert "model.n_ctx=8" in line and "model.n_ctx=4" in line
    line = _one_line_error(capsys, ["train", "--resume", run_dir, "--method", "coop"])
    assert "run.method='coop'" in line
    # where things are may change: the finished run resumes as a no-op
    assert main(["train", "--resume", run_dir, "run.progress=false", "data.num_workers=0"]) == 0
    # a new run into a folder that holds one is refused
    line = _one_line_error(capsys, ["train", "--name", "r"] + base)
    assert "already holds a run" in line


def test_demo_passes_overrides_to_every_run(monkeypatch, capsys, tmp_path):
    import lmpt.engine.studies.demo as demo

    started = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kw: started.update(kw))
    assert main(["demo", "loss.db.kappa=0.05", "--out", str(tmp_path / "ref"), "optim.epochs=3"]) == 0
    assert started["out_dir"] == str(tmp_path / "ref")
    assert started["overrides"][:2] == ["loss.db.kappa=0.05", "optim.epochs=3"]
    line = _one_line_error(capsys, ["demo", "kappa"])
    assert "kappa" in line and "section.key=value" in line


def test_only_user_errors_become_one_line(monkeypatch, capsys):
    """A UserError is the user's mistake: one line, exit 2. Anything else is a bug and keeps its traceback."""
    import lmpt.cli as cli

    def bad_input(args):
        raise ConfigError("optim.lr=-1: must be a number > 0")

    def bug(args):
        raise ValueError("shape mismatch inside the loss")

    name, make, _ = cli.COMMANDS["eval"]
    monkeypatch.setitem(cli.COMMANDS, "eval", (name, make, bad_input))
    assert main(["eval", "somewhere"]) == 2
    assert capsys.readouterr().err.strip() == "error: optim.lr=-1: must be a number > 0"
    monkeypatch.setitem(cli.COMMANDS, "eval", (name, make, bug))
    with pytest.raises(ValueError, match="shape mismatch"):
        main(["eval", "somewhere"])


def test_ctrl_c_says_what_the_interrupted_command_keeps(monkeypatch, capsys, tmp_path):
    """Ctrl-C: exit 130 and one line on what is kept, for the command that was running (not training's text)."""
    import lmpt.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    for command, argv, words in (("data download", ["data", "download", "voc-lt", "--root", str(tmp_path)],
                                  "fetches only the missing ones"),
                                 ("train", ["train", "voc-lt-rn50"], "lmpt train --resume RUN_DIR")):
        name, make, _ = cli.COMMANDS[command]
        monkeypatch.setitem(cli.COMMANDS, command, (name, make, interrupted))
        assert main(argv) == 130
        err = capsys.readouterr().err.strip()
        assert err.startswith("interrupted. ") and words in err and len(err.splitlines()) == 1
        assert ("--resume" in err) == (command == "train")

def test_data_group_help(capsys):
    assert main(["data", "--help"]) == 0
    out = capsys.readouterr().out
    assert "check" in out and "features" in out
    assert main(["data"]) == 2
    assert "needs an action" in capsys.readouterr().err
