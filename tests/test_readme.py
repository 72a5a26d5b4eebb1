"""Every `lmpt ...` command line the README shows parses and starts: paths are swapped for fixtures (tiny data,
a tiny world config) or for paths that do not exist, and a command may only fail on that missing data."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from lmpt.cli import main

from engine_helpers import tiny_overrides

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    """The `lmpt` commands in the README's shell blocks (the set-up line's `&& lmpt demo` included)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    out = []
    for block in blocks:
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.split(" #")[0].strip()
                if part.startswith("lmpt "):
                    out.append(shlex.split(part)[1:])
    return out


def test_the_readme_shows_commands():
    commands = readme_commands()
    assert ["demo"] in commands and len(commands) >= 8
    assert len((README.read_text()).splitlines()) <= 150
    text = README.read_text()
    assert "DEMO_TABLE" not in text and "PREDICT_SECTION" not in text and "_MINUTES" not in text


@pytest.fixture(scope="module")
def swaps(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    missing = tmp / "missing"
    config = tmp / "world.yaml"  # stands in for the world.yaml `lmpt demo` writes: a config with paths in it
    lines = {"data": {}, "model": {}, "optim": {}, "run": {}}
    for o in tiny_overrides(tiny_data, tmp, **{"optim.epochs": 1}):
        key, value = o.split("=", 1)
        section, name = key.split(".")
        lines[section][name] = yaml.safe_load(value)

    config.write_text(yaml.safe_dump(lines))
    # a trained run, its export and a folder of images stand in for the demo's run and the user's photos
    from lmpt.engine.config import load_config
    from lmpt.engine.use.export import export_run
    from lmpt.engine.train.run import run

    trained = run(load_config(None, tiny_overrides(tiny_data, tmp, **{"optim.epochs": 1, "run.name": "trained"})))
    export_run(trained.run_dir, tmp / "model.pt")
    export_run(trained.run_dir, tmp / "model.onnx")
    photos = tmp / "photos"
    photos.mkdir()
    for p in sorted((tiny_data["root"] / "img").glob("test*.png"))[:3]:
        (photos / p.name).write_bytes(p.read_bytes())
    return {
        "lmpt-demo/lmpt-seed0": str(trained.run_dir), "photos/": str(photos), "model.pt": str(tmp / "model.pt"), "model.onnx": str(tmp / "model.onnx"),
        "predictions.csv": str(tmp / "predictions.csv"),
        "/data/VOC": str(missing / "VOC"), "/data/coco": str(missing / "coco"),
        "/weights/RN50.pt": str(missing / "RN50.pt"), "/weights/ViT-B-16.pt": str(missing / "ViT-B-16.pt"),
        "ViT-B-16.pt": str(missing / "ViT-B-16.pt"), "train.jsonl": str(tiny_data["train"]),
        "test.jsonl": str(tiny_data["test"]), "lmpt-demo/world.yaml": str(config), "_tmp": str(tmp),
        "runs/sweep-voc-lt-rn50": str(missing / "sweep"),
        "_missing": str(missing),
    }


def _swap(argv: list[str], swaps: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        target = value if sep else key
        for old in sorted((k for k in swaps if not k.startswith("_")), key=len, reverse=True):
            if target == old or target.endswith("/" + old) and old.startswith("/"):
                target = swaps[old]
                break
        out.append(f"{key}={target}" if sep else target)
    return out


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses_and_starts(argv, swaps, monkeypatch, capsys, tmp_path):
    import lmpt.engine.studies.demo as demo

    started = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kw: started.update(kw))  # the demo itself runs in CI
    monkeypatch.chdir(tmp_path)
    args = _swap(argv, swaps)
    if args[0] in ("train", "zeroshot", "sweep") and not any(a.startswith("run.output_dir") for a in args):
        args += [f"run.output_dir={tmp_path / 'runs'}", "run.progress=false", "data.num_workers=0"]
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "see `lmpt" not in err, (args, err)  # no parse error
    if args[0] == "demo":
        assert code == 0 and started
    else:
        assert code == 0 or (code == 2 and swaps["_missing"] in err), (args, code, err)
