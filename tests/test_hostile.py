"""Hostile input (issue 24): every case ends in one line naming the input and exit code 2 (or is rightly
accepted), leaves no temporary files, and never gives a silently wrong result."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lmpt.cli import main
from lmpt.engine.config import load_config
from lmpt.engine.train.run import run as train
from lmpt.errors import ConfigError

from engine_helpers import tiny_overrides

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _one_line(capsys, argv: list, needle: str) -> str:
    """Run the CLI: exit code 2, one line on stderr that contains ``needle``, no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2, (argv, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and needle in lines[0], (argv, err)
    return lines[0]


def _no_temp_files(folder: Path) -> None:
    left = [p for p in Path(folder).rglob(".*.tmp")]
    assert not left, left


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}


def _lmpt(args: list, limit_bytes: int = 0, **kw) -> subprocess.Popen:
    def limit():
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "lmpt", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), preexec_fn=limit, **kw)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    result = train(load_config(None, tiny_overrides(tiny_data, tmp, **{"run.name": "vit", "optim.epochs": 2})))
    return {"run": result.run_dir, "tmp": tmp}


@pytest.fixture
def image(tiny_data):
    return tiny_data["root"] / "img" / "test0000.png"


@pytest.fixture(scope="module")
def exported(trained):
    out = trained["tmp"] / "model.pt"
    assert main(["export", str(trained["run"]), "--out", str(out)]) == 0
    return out


# ---- tracebacks and crashes -------------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["[a, b]", "5", "''"])
def test_1_base_that_is_not_one_config(tmp_path, capsys, base):
    path = tmp_path / "c.yaml"
    path.write_text(f"base: {base}\noptim:\n  lr: 0.1\n")
    line = _one_line(capsys, ["train", path], str(path))
    assert "'base:' must name one config" in line


def test_2_device_without_backend(tiny_data, image, tmp_path, capsys):
    if torch.backends.mps.is_available():  # pragma: no cover - Apple machines
        pytest.skip("this machine has MPS")
    _one_line(capsys, ["train", *tiny_overrides(tiny_data, tmp_path, **{"run.device": "mps"})], "run.device=mps")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    if not torch.cuda.is_available():
        _one_line(capsys, ["predict", "--model", "x.pt", image, "--device", "cuda:3"], "cuda:3")
    _one_line(capsys, ["predict", "--model", "x.pt", image, "--device", "tpu"], "'tpu'")


def test_3_empty_backbone(tiny_data, tmp_path, capsys):
    _one_line(capsys, ["train", *tiny_overrides(tiny_data, tmp_path), "model.backbone="], "model.backbone is empty")
    from lmpt.backbone import check_model_name

    with pytest.raises(ConfigError, match="model.backbone is empty"):
        check_model_name("")


def test_4_outputs_that_cannot_be_written(trained, image, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, needle in ((tmp_path, f"cannot write {tmp_path}: it is a folder"),
                        (afile / "out.json", f"cannot create folder {afile}: a file of that name is in the way"),
                        ("/proc/lmpt-out.json", "cannot write /proc/lmpt-out.json")):
        _one_line(capsys, ["predict", "--run", trained["run"], image, "--out", out, "--quiet"], needle)
    _one_line(capsys, ["export", trained["run"], "--out", tmp_path], f"cannot write {tmp_path}")
    _one_line(capsys, ["export", trained["run"], "--out", afile / "m.pt"], "cannot create folder")
    _no_temp_files(tmp_path)


def test_5_full_disk_export_and_train(trained, tiny_data, tmp_path):
    # export: the TorchScript writer used to abort (exit 134) and leave .model.pt.*.tmp
    p = _lmpt(["export", trained["run"], "--out", tmp_path / "model.pt"], limit_bytes=64 * 1024)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 2 and "Traceback" not in err, err
    assert "no space" in err and str(tmp_path / "model.pt") in err
    assert not (tmp_path / "model.pt").exists()
    _no_temp_files(tmp_path)
    # train, features already cached: the first checkpoint does not fit; nothing half-written is left
    args = ["train", *tiny_overrides(tiny_data, trained["tmp"], **{"run.output_dir": tmp_path / "runs",
                                                                    "run.name": "full", "optim.epochs": 2})]
    p = _lmpt(args, limit_bytes=6 * 1024)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 2 and "Traceback" not in err, err
    assert "no space" in err and "state.pt" in err
    assert not (tmp_path / "runs" / "full").exists()  # a run without a checkpoint leaves no folder
    _no_temp_files(tmp_path)


def test_5_full_disk_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    import errno

    from lmpt.engine.rundir import checkpoint

    real = checkpoint.atomic_write_bytes
    saves = {"n": 0}

    def second_fails(path, data):
        if Path(path).name == "state.pt":
            saves["n"] += 1
            if saves["n"] == 2:
                with real.__globals__["atomic_path"](path) as tmp:
                    tmp.write_bytes(data[:10])
                    raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", second_fails)
    line = _one_line(capsys, ["train", *tiny_overrides(tiny_data, tmp_path, **{"run.name": "r", "optim.epochs": 3})],
                     "no space")
    state = tmp_path / "runs" / "r" / "state.pt"
    assert f"the last good checkpoint {state} is kept" in line
    assert torch.load(state, weights_only=True)["epoch"] == 1
    _no_temp_files(tmp_path)


def test_6_export_metadata_without_a_key(exported, image, tmp_path, capsys):
    import warnings

    from lmpt.deploy.torchscript import META_NAME

    extra = {META_NAME: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(exported), _extra_files=extra)
    meta = json.loads(extra[META_NAME])
    cases = [("class_names", None, "'class_names'"), ("thresholds", [-5.0] * len(meta["class_names"]), "'thresholds'"),
             ("preprocess", {"mode": "clip"}, "'preprocess"), ("export_version", 99, "newer lmpt"),
             ("calibration", {"a": [float("nan")] * len(meta["class_names"])}, "calibration")]
    for key, value, needle in cases:
        bad = dict(meta)
        if value is None:
            del bad[key]
        else:
            bad[key] = value
        path = tmp_path / f"bad-{key}.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(module, str(path), _extra_files={META_NAME: json.dumps(bad)})
        line = _one_line(capsys, ["predict", "--model", path, image], str(path))
        assert needle in line, line


def test_7_predict_with_one_path_string(trained, image):
    from lmpt.engine.use.inference import RunScorer, load_run

    result = RunScorer(load_run(trained["run"])).predict(str(image))
    assert len(result.predictions) == 1 and not result.failed


# ---- silent wrong results ---------------------------------------------------------------------------------

def test_s1_sweep_duplicates(tiny_data, tmp_path, capsys):
    base = tiny_overrides(tiny_data, tmp_path)
    _one_line(capsys, ["sweep", "world", "--seeds", "0,0", "--methods", "lmpt"], "0 given more than once")
    _one_line(capsys, ["sweep", "world", "--methods", "lmpt,lmpt"], "lmpt given more than once")
    _one_line(capsys, ["sweep", base[0], *base[1:], "run.method=coop"], "sets run.method for each of its runs")
    from lmpt.engine.studies.sweep import run_sweep

    with pytest.raises(ConfigError, match="more than once"):
        run_sweep(load_config(None, base), ["coop"], [1, 1], tmp_path / "sw")
    assert not (tmp_path / "sw").exists()


def test_s2_two_runs_of_one_folder_at_once(tiny_data, tmp_path):
    """Two real processes: the second refuses with one line while the first holds the folder's lock."""
    from lmpt.engine.rundir.layout import RunLayout

    args = ["train", *tiny_overrides(tiny_data, tmp_path, **{"run.name": "same", "optim.epochs": 40})]
    first = _lmpt(args + ["--seed", "0"])
    lock = tmp_path / "runs" / "same" / RunLayout.LOCK
    deadline = time.time() + 300
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert lock.exists(), first.communicate()
    second = _lmpt(args + ["--seed", "1"])
    _, err2 = second.communicate(timeout=300)
    _, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and "Traceback" not in err2, err2
    assert f"run folder {tmp_path / 'runs' / 'same'} is in use by another lmpt process (pid {first.pid})" in err2
    assert load_config(tmp_path / "runs" / "same" / RunLayout.CONFIG).run.seed == 0
    assert not lock.exists()  # released at the end
    # a later run of the same folder is refused as before (it holds a finished run)
    third = _lmpt(args)
    _, err3 = third.communicate(timeout=300)
    assert third.returncode == 2 and "already holds a run" in err3


def test_s3_demo_refuses_per_run_overrides(capsys, tmp_path):
    _one_line(capsys, ["demo", "--quick", "--out", tmp_path / "d", "run.method=coop"], "sets run.method")
    _one_line(capsys, ["demo", "--quick", "--out", tmp_path / "d", "--seeds", "1,1"], "more than once")
    _one_line(capsys, ["demo", "--quick", "--out", tmp_path / "d", "--seeds", "x"], "--seeds must be")
    _one_line(capsys, ["demo", "--quick", "--out", tmp_path / "d", "--world-seed", "-1"], "--world-seed -1")
    assert not (tmp_path / "d").exists()


def test_s4_empty_values_for_typed_keys(tiny_data, tmp_path, capsys):
    for key in ("model.class_specific", "optim.lr", "optim.epochs", "run.seed", "loss.db", "run.output_dir"):
        _one_line(capsys, ["train", *tiny_overrides(tiny_data, tmp_path), f"{key}="], f"{key} is empty")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model:\n  class_specific:\n")
    with pytest.raises(ConfigError, match=f"{yaml_file}: model.class_specific is empty"):
        load_config(yaml_file, check_source=False)
    assert load_config(None, ["model.pretrained="], check_source=False).model.pretrained is None  # optional keys may be empty


def test_s5_val_overlap_warns_and_check_says_moved_only_when_carved(tiny_data, tmp_path, caplog, capsys):
    from lmpt.data.sources import load_dataset

    val = tmp_path / "val.jsonl"
    lines = tiny_data["train"].read_text().splitlines()[:20]
    val.write_text("\n".join(json.dumps({**json.loads(x), "image": str(tiny_data["root"] / json.loads(x)["image"])})
                             for x in lines) + "\n")
    with caplog.at_level("WARNING", logger="lmpt"):
        load_dataset("manifest", train=tiny_data["train"], val=val, test=tiny_data["test"])
    assert "20 image(s) appear in both the train and val manifests" in caplog.text
    code = main(["data", "check", "manifest", "--train", str(tiny_data["train"]), "--val", str(val), "--test",
                 str(tiny_data["test"]), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "moved to val" not in out


def _png(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, **kw)
    return path


def test_s6_image_modes_and_exif_orientation(tmp_path):
    from lmpt.data.decode import FileBytesDataset, JPEG_MAGIC
    from lmpt.data.images import load_image

    ramp16 = (np.arange(256 * 4, dtype=np.uint32).reshape(16, 64) * 64).astype(np.uint16)  # 0 .. 65472
    got = np.asarray(load_image(_png(tmp_path / "g16.png", Image.fromarray(ramp16))))
    assert got.shape == (16, 64, 3) and np.all(got[..., 0] == got[..., 2])
    np.testing.assert_array_equal(got[..., 0], np.round(ramp16 / 257.0).astype(np.uint8))
    assert (got[..., 0] == 255).mean() < 0.01  # convert("RGB") made 99% of it white

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :4, 3] = 255  # left half opaque red, right half fully transparent
    got = np.asarray(load_image(_png(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))))
    assert np.all(got[:, :4] == (200, 0, 0)) and np.all(got[:, 4:] == 255)  # transparent -> white, not black
    pal = Image.fromarray(rgba, "RGBA").convert("P")
    pal.info["transparency"] = pal.getpixel((7, 0))
    got = np.asarray(load_image(_png(tmp_path / "p.png", pal, transparency=pal.getpixel((7, 0)))))
    assert np.all(got[:, 4:] == 255) and np.all(got[:, :4] == got[0, 0]) and got[0, 0, 0] > 150
    la = Image.fromarray(np.stack([np.full((8, 8), 50, np.uint8), rgba[..., 3]], -1), "LA")
    got = np.asarray(load_image(_png(tmp_path / "la.png", la)))
    assert np.all(got[:, :4] == 50) and np.all(got[:, 4:] == 255)

    # EXIF orientation 6 (rotate 90° clockwise to display): a 20x10 stored image shows as 10x20
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :5] = 255  # white on the left of the stored pixels -> on top once rotated clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    for name in ("r.jpg", "r.png"):
        path = tmp_path / name
        Image.fromarray(stored).save(path, exif=exif, **({"quality": 100} if name.endswith("jpg") else {}))
        shown = np.asarray(load_image(path)).astype(int)
        assert shown.shape == (20, 10, 3)
        assert shown[:4].mean() > 200 and shown[6:].mean() < 40
    # the tensor decoder (GPU path) gets such JPEGs decoded by PIL, upright; plain JPEGs stay raw bytes
    sig = {"mode": "reference", "image_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "bilinear"}
    plain = tmp_path / "plain.jpg"
    Image.fromarray(stored).save(plain)
    rotated, raw = FileBytesDataset([tmp_path / "r.jpg", plain], sig)[0][1], FileBytesDataset([plain], sig)[0][1]
    assert rotated.dtype == torch.float32 and rotated.shape == (3, 8, 8) and rotated[:, :3].mean() > rotated[:, 5:].mean()
    assert raw.dtype == torch.uint8 and bytes(raw[:3].tolist()) == JPEG_MAGIC


def _tampered(trained, tmp_path, change) -> Path:
    from lmpt.engine.methods import METHOD_KINDS
    from lmpt.engine.rundir.checkpoint import load_weights
    from safetensors.torch import save_file

    tensors, meta = load_weights(trained["run"])
    change(tensors, meta)
    folder = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    save_file(tensors, str(folder / METHOD_KINDS["prompt"].weights_file), metadata={"lmpt": json.dumps(meta)})
    return folder


def test_s7_tampered_classifier_files(trained, image, tmp_path, capsys):

    def nan_ctx(t, m):
        t["ctx"][0, 0, 0] = float("nan")

    def nan_slope(t, m):
        m["calibration"]["a"][1] = float("nan")

    def bad_threshold(t, m):
        m["calibration"]["thresholds"][2] = -5

    def future(t, m):
        m["format_version"] = 99

    def no_names(t, m):
        del m["class_names"]

    for change, needle in ((nan_ctx, "tensor 'ctx' holds NaN"), (nan_slope, "'calibration.a'"),
                           (bad_threshold, "'calibration.thresholds' must be 6 finite numbers in [0, 1]"),
                           (future, "format version 99"), (no_names, "'class_names'")):
        folder = _tampered(trained, tmp_path, change)
        line = _one_line(capsys, ["predict", "--run", folder, image, "--format", "json"], str(folder))
        assert needle in line, line
        _one_line(capsys, ["export", folder, "--out", tmp_path / "x.pt"], str(folder))
    assert not (tmp_path / "x.pt").exists()
    # a missing calibration is fine: the identity map and threshold 0.5 (with a warning)
    folder = _tampered(trained, tmp_path, lambda t, m: m.pop("calibration"))
    assert main(["predict", "--run", str(folder), str(image), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == str(image)


def test_s7_negative_calibration_slope_falls_back_to_the_pooled_map(caplog):
    from lmpt.calibration import fit_calibration, fit_sigmoid_map

    rng = np.random.default_rng(0)
    y = (rng.random((400, 3)) < 0.3).astype(float)
    z = rng.normal(size=(400, 3)) + 3 * (2 * y - 1)
    z[:, 1] = rng.normal(size=400) - 2 * (2 * y[:, 1] - 1)  # class 1 ranks negatives above positives
    with caplog.at_level("WARNING", logger="lmpt"):
        cal = fit_calibration(z, y, "platt")
    assert "1 class(es) (#1)" in caplog.text
    pooled_a, pooled_b = fit_sigmoid_map(z, y > 0, shared_a=True, shared_b=True)
    assert cal.a[1] == pytest.approx(pooled_a[1]) and cal.b[1] == pytest.approx(pooled_b[1]) and cal.a[1] > 0
    assert cal.own_fit == [True, False, True] and cal.thresholds[1] == cal.shared_threshold
    own_a, _ = fit_sigmoid_map(z[:, [0, 2]], y[:, [0, 2]] > 0, shared_a=False, shared_b=False)
    assert cal.a[0] == pytest.approx(own_a[0]) and cal.a[2] == pytest.approx(own_a[1])


def test_s8_corrupted_feature_cache_is_recomputed(tiny_backbone, tiny_data, tmp_path, caplog):
    from lmpt.data.features import FINAL_NAME, extract_features
    from lmpt.data.sources import load_dataset

    split = load_dataset("manifest", train=tiny_data["train"], test=tiny_data["test"]).test.subset(range(12))
    kw = dict(cache_dir=tmp_path, num_workers=0, progress=False)
    first = extract_features(tiny_backbone, split, **kw).clone()  # (the cache file is memory-mapped)
    final = next(tmp_path.rglob(FINAL_NAME))
    data = bytearray(final.read_bytes())
    data[-64:] = b"\x00\x00\xc0\x7f" * 16  # NaN floats where features were, same size
    final.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="lmpt"):
        again = extract_features(tiny_backbone, split, **kw)
    assert f"feature cache {final} is unreadable or damaged" in caplog.text
    torch.testing.assert_close(again, first)
    data = bytearray(final.read_bytes())
    data[-64:] = bytes(64)  # zeros: finite, caught by the checksum
    final.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level("WARNING", logger="lmpt"):
        torch.testing.assert_close(extract_features(tiny_backbone, split, **kw), first)
    assert "checksum" in caplog.text


def test_s9_ctx_init_sets_n_ctx():
    cfg = load_config(None, ["model.ctx_init=a photo of a"], check_source=False)
    assert cfg.model.n_ctx == 4  # what is trained, recorded
    with pytest.raises(ConfigError, match=r"gives 4 context tokens but model.n_ctx=16: ctx_init sets"):
        load_config(None, ["model.ctx_init=a photo of a", "model.n_ctx=16"], check_source=False)
    assert load_config(None, ["model.ctx_init=a photo of a", "model.n_ctx=4"], check_source=False).model.n_ctx == 4


def test_s10_run_name_is_one_folder(tiny_data, tmp_path, capsys):
    for name in ("../../x", "a/b", "..", "."):
        _one_line(capsys, ["train", *tiny_overrides(tiny_data, tmp_path), "--name", name], "run.name=")
    assert not (tmp_path / "runs").exists()


# ---- also found -------------------------------------------------------------------------------------------

def test_yaml_floats_paths_and_keys_named(tiny_data, tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 5e-4\n  min_lr: 1E-7\n")
    cfg = load_config(path, check_source=False)
    assert cfg.optim.lr == 5e-4 and cfg.optim.min_lr == 1e-7
    monkeypatch.chdir(tiny_data["root"])
    cfg = load_config(None, ["data.dataset=manifest", "data.train=train.jsonl", "data.test=test.jsonl"])
    assert cfg.data.train == str(tiny_data["train"]) and cfg.data.test == str(tiny_data["test"])
    monkeypatch.chdir(tmp_path)
    base = tiny_overrides(tiny_data, tmp_path)
    _one_line(capsys, ["train", *base, "data.split_seed=-1"], "data.split_seed=-1")
    _one_line(capsys, ["train", *base, "--seed", "-3"], "run.seed=-3")
    _one_line(capsys, ["sweep", "world", "--seeds", "x"], "--seeds must be comma-separated integers")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    _one_line(capsys, ["train", bad], f"{bad}: not a UTF-8 text file")


def test_failed_run_leaves_no_folder(tiny_data, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["train", *tiny_overrides(tiny_data, tmp_path, **{"data.train": empty})]) == 2
    assert str(empty) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cli_odds_and_ends(trained, image, tmp_path, capsys):
    assert main(["data", "--help"]) == 0
    parser_help = subprocess.run([sys.executable, "-m", "lmpt", "data", "check", "--help"], capture_output=True,
                                 text=True, env=_env())
    assert parser_help.returncode == 0 and "exit code 1" in " ".join(parser_help.stdout.split())
    _one_line(capsys, ["predict", "--run", trained["run"], "--model", "m.pt", "a.png"], "give one classifier, not both")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["predict", "--run", str(trained["run"]), str(image), str(broken), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipped:") == 1, err


# ---- trust: OpenAI's TorchScript archives are read as data --------------------------------------------------

PLANTED = '''
import torch
from typing import Tuple


class Planted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        print("PLANTED-SIDE-EFFECT")
        self.weight = state[0]
        self.training = state[1]


class Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Planted()
        self.proj = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.proj(self.inner(x))
'''


def test_torchscript_archives_are_read_without_running_code(tmp_path, capfd):
    import open_clip

    from conftest import TINY_RN
    from lmpt.weights_file import load_weights_file, read_torchscript_tensors

    torch.manual_seed(0)
    model = open_clip.create_model(TINY_RN).eval()
    path = tmp_path / "RN-tiny.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    ours = read_torchscript_tensors(path)
    theirs = torch.jit.load(str(path)).state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    assert load_weights_file(path).kind == "torchscript"

    (tmp_path / "planted_module.py").write_text(PLANTED)
    sys.path.insert(0, str(tmp_path))
    try:
        from planted_module import Outer
    finally:
        sys.path.remove(str(tmp_path))
    planted = tmp_path / "planted.pt"
    torch.jit.save(torch.jit.script(Outer()), str(planted))
    capfd.readouterr()
    loaded = torch.jit.load(str(planted))
    assert "PLANTED-SIDE-EFFECT" in capfd.readouterr().out  # what jit.load does: runs the file's code
    tensors = read_torchscript_tensors(planted)
    assert "PLANTED-SIDE-EFFECT" not in capfd.readouterr().out  # ours: reads the tensors, runs nothing
    assert torch.equal(tensors["proj.weight"], loaded.proj.weight) and torch.equal(tensors["proj.bias"], loaded.proj.bias)
    assert torch.equal(tensors["inner.0"], torch.ones(2))


def test_torchscript_archive_with_a_foreign_global_is_refused(tmp_path):
    import pickle
    import zipfile

    from lmpt.errors import UserError
    from lmpt.weights_file import load_weights_file

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(os.system))
        zf.writestr("evil/constants.pkl", pickle.dumps(()))
        zf.writestr("evil/code/__torch__/m.py", "")
    with pytest.raises(UserError, match=r"could not read weights file .*evil.pt.*refusing posix.system"):
        load_weights_file(path)


# ---- beyond the list -------------------------------------------------------------------------------

def test_beyond_the_list(trained, tiny_data, image, tmp_path, capsys):
    base = tiny_overrides(tiny_data, tmp_path)
    run = trained["run"]
    _one_line(capsys, ["predict", "--run", run, image, "--batch-size", "0"], "--batch-size 0")
    _one_line(capsys, ["predict", "--run", run, image, "--workers", "-1"], "--workers -1")
    _one_line(capsys, ["predict", "--run", run, ""], "an input is an empty string")  # was: every image under .
    _one_line(capsys, ["data", "check", "manifest", "--train", tiny_data["train"], "--test", tiny_data["test"],
                       "--workers", "-3"], "--workers -3")
    _one_line(capsys, ["train", *base, "optim.epochs=1e30"], "optim.epochs=")
    _one_line(capsys, ["train", *base, "data.num_workers=100000"], "data.num_workers=100000")
    dup = tmp_path / "dup.yaml"
    dup.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    _one_line(capsys, ["train", dup], "key 'lr' is given twice")
    named = tmp_path / "named.yaml"
    named.write_text("run:\n  name: 5\ndata:\n  train: 7\n")
    cfg = load_config(named, base[1:2], check_source=False)  # a later override of a key the file set
    assert cfg.run.name == "5" and cfg.data.train == str(tiny_data["train"])
    named.write_text("run:\n  name: true\n")
    _one_line(capsys, ["train", named], "run.name must be a name or a path, got True")
    _one_line(capsys, ["demo", "--quick", "--classes", "100000", "--out", tmp_path / "demo"], "100000")
    assert not (tmp_path / "demo").exists()
