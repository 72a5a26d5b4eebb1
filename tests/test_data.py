"""Tests of the data layer: benchmarks, manifests, splits, images, checks."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import make_coco, make_voc, write_image
from lmpt.data.benchmarks import BENCHMARKS, benchmark_class_names, load_benchmark, readable_class_name, resolve_root
from lmpt.data.check import check_dataset, check_images, summarize
from lmpt.data.dataset import MultiLabelSplit
from lmpt.data.images import ImageListDataset, build_transform, load_image, transform_signature
from lmpt.data.manifest import load_manifest_dataset, write_manifest
from lmpt.data.splits import split_train_val
from lmpt.errors import ConfigError, DataError, UserError

VOC_FREQ = [6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5, 82, 7, 64]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_coco(root / "images")
    return root / "images"


# ---------------------------------------------------------------- benchmarks

def test_voc_lt_counts_and_groups(voc_root):
    ds = load_benchmark("voc-lt", voc_root)
    assert ds.class_freq.tolist() == VOC_FREQ
    assert ds.train.class_counts.tolist() == VOC_FREQ
    g = ds.groups()
    assert g["head"].tolist() == [4, 6, 8, 10, 14, 15]
    assert g["medium"].tolist() == [1, 7, 11, 13, 17, 19]
    assert g["tail"].tolist() == [0, 2, 3, 5, 9, 12, 16, 18]
    assert len(ds.train) == 1142 and len(ds.test) == 4952 and ds.val is None
    assert ds.train.ids[0] == "VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg"
    assert ds.train.paths[0] == str(voc_root / ds.train.ids[0])
    assert ds.test.ids[0].startswith("VOCdevkit/VOC2007/JPEGImages/")
    assert ds.train.labels[0].nonzero()[0].tolist() == [4, 14, 19]
    assert ds.train.captions is not None and len(ds.train.captions) == 1142
    assert ds.train.captions[0].startswith("a bottle of beer")
    assert ds.test.captions is None
    assert ds.meta["unlabelled_test_images"] == 0
    assert ds.root == voc_root.absolute()


def test_voc_class_names(voc_root):
    ds = load_benchmark("voc-lt", voc_root)
    assert ds.class_names[10] == "dining table"
    assert ds.class_names[15] == "potted plant"
    assert ds.class_names[19] == "tv monitor"
    assert ds.class_names[0] == "aeroplane" and ds.class_names[13] == "motorbike"
    raw = load_benchmark("voc-lt", voc_root, class_names="raw")
    assert raw.class_names[10] == "diningtable" and raw.class_names[19] == "tvmonitor"
    assert readable_class_name("traffic_light") == "traffic light"
    assert readable_class_name("sports ball") == "sports ball"
    with pytest.raises(ValueError):
        load_benchmark("voc-lt", voc_root, class_names="pretty")
    assert benchmark_class_names("voc-lt") == ds.class_names
    assert benchmark_class_names("voc-lt", "raw") == raw.class_names
    coco = benchmark_class_names("coco-lt")
    assert len(coco) == 80 and len(set(coco)) == 80
    with pytest.raises(DataError, match="voc-lt"):
        benchmark_class_names("imagenet")


def test_coco_lt_counts(coco_root):
    ds = load_benchmark("coco-lt", coco_root)
    g = ds.groups()
    assert [len(g[k]) for k in ("head", "medium", "tail")] == [22, 33, 25]
    assert len(ds.train) == 1909 and len(ds.test) == 5000
    assert ds.meta["unlabelled_test_images"] == 48
    assert int((ds.test.labels.sum(axis=1) == 0).sum()) == 48
    assert ds.class_freq[0] == 1128 and ds.class_names[9] == "traffic light"
    assert ds.train.captions is not None and ds.train.ids[0] == "train2017/000000554625.jpg"
    assert BENCHMARKS == ("voc-lt", "coco-lt")


def test_root_one_level_off(voc_root, coco_root, caplog):
    with caplog.at_level(logging.INFO, logger="lmpt.data.benchmarks"):
        assert resolve_root("voc-lt", voc_root / "VOCdevkit") == voc_root.absolute()
    assert "resolved to" in caplog.text
    assert resolve_root("voc-lt", voc_root / "VOCdevkit" / "VOC2012") == voc_root.absolute()
    assert resolve_root("voc-lt", voc_root) == voc_root.absolute()
    # COCO: the parent of images/, and train2017 itself
    assert resolve_root("coco-lt", coco_root.parent) == coco_root.absolute()
    assert resolve_root("coco-lt", coco_root / "train2017") == coco_root.absolute()
    ds = load_benchmark("coco-lt", coco_root / "val2017")
    assert ds.test.paths[0] == str(coco_root / "val2017" / "000000397133.jpg")


def test_wrong_root(tmp_path, voc_root):
    with pytest.raises(DataError, match="pass the folder that contains VOCdevkit") as e:
        load_benchmark("voc-lt", tmp_path)
    assert "VOCdevkit/VOC2012/JPEGImages" in str(e.value) and isinstance(e.value, UserError)
    with pytest.raises(DataError, match="does not exist"):
        load_benchmark("coco-lt", tmp_path / "nowhere")
    with pytest.raises(DataError, match="train2017"):
        load_benchmark("coco-lt", voc_root)
    # VOC2012 present but VOC2007 missing: say which
    (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DataError, match="VOC2007"):
        resolve_root("voc-lt", tmp_path)
    with pytest.raises(DataError, match="unknown benchmark"):
        load_benchmark("imagenet-lt", voc_root)


def test_benchmark_val_split(voc_root):
    ds = load_benchmark("voc-lt", voc_root, val_fraction=0.2, seed=3)
    assert ds.class_freq.tolist() == VOC_FREQ
    assert len(ds.train) + len(ds.val) == 1142 and len(ds.val) > 100
    assert (ds.train.class_counts >= 1).all()
    assert (ds.train.class_counts <= np.array(VOC_FREQ)).all()
    assert ds.val.captions is not None and len(ds.val.captions) == len(ds.val)
    assert not set(ds.train.ids) & set(ds.val.ids)


# ---------------------------------------------------------------- checks

def test_check_dataset_reports_missing_and_corrupt(tmp_path_factory):
    root = make_voc(tmp_path_factory.mktemp("voc_bad"))
    ds = load_benchmark("voc-lt", root)
    assert check_dataset(ds).ok
    missing = [ds.train.paths[3], ds.test.paths[10], ds.test.paths[20]]
    for p in missing:
        Path(p).unlink()
    Path(ds.test.paths[30]).write_bytes(b"not a jpeg at all")
    full = Path(ds.train.paths[5]).read_bytes()
    Path(ds.train.paths[5]).write_bytes(full[: len(full) // 2])  # truncated
    report = check_dataset(ds, num_workers=2)
    assert not report.ok and len(report.problems) == 5
    text = report.format(max_listed=3)
    assert "5 problem(s)" in text and "and 2 more" in text
    ids = [i for i, _ in report.problems]
    assert f"[train] {ds.train.ids[3]}" in ids and f"[test] {ds.test.ids[30]}" in ids
    reasons = dict(report.problems)
    assert "missing" in reasons[f"[train] {ds.train.ids[3]}"]
    assert "decode" in reasons[f"[train] {ds.train.ids[5]}"]
    serial = check_images(ds.test.paths, ds.test.ids)
    assert [i for i, _ in serial] == [ds.test.ids[10], ds.test.ids[20], ds.test.ids[30]]
    s = summarize(ds)
    assert "tail" in s and "tv monitor 64" in s
    assert "1142" in s and "4952" in s
    with pytest.raises(DataError, match=ds.test.ids[30].split("/")[-1]):
        load_image(ds.test.paths[30])
    with pytest.raises(DataError, match="not found"):
        load_image(ds.test.paths[10])


# ---------------------------------------------------------------- manifests

def _images(folder: Path, names) -> None:
    for i, n in enumerate(names):
        write_image(folder / n, seed=i)


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_manifest_jsonl_and_csv(tmp_path):
    _images(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    train = _jsonl(tmp_path / "train.jsonl", [
        {"image": "img/a.jpg", "labels": ["cat", "dog"], "caption": "a cat and a dog"},
        {"image": "img/b.jpg", "labels": "dog|bird"},
        "",
        {"image": str(tmp_path / "img" / "c.jpg"), "labels": "cat; bird"},
    ])
    (tmp_path / "test.csv").write_text(
        "id,image,labels,caption\n1,img/d.jpg,cat;dog,a test caption\n2,img/e.jpg,bird,\n")
    ds = load_manifest_dataset(train, tmp_path / "test.csv", name="pets")
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.class_freq.tolist() == [2, 2, 2]
    assert ds.train.labels.tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    assert ds.train.captions == ["a cat and a dog", "", ""]
    assert ds.test.captions == ["a test caption", ""]
    assert ds.train.paths[0] == str(tmp_path / "img" / "a.jpg") and ds.train.ids[0] == "img/a.jpg"
    assert ds.name == "pets" and ds.test.labels.tolist() == [[0, 1, 1], [1, 0, 0]]

    # class list file, image_root, no captions
    (tmp_path / "classes.txt").write_text("# my classes\ndog\n\ncat  # pets\nbird\n")
    (tmp_path / "m").mkdir()
    tr = _jsonl(tmp_path / "m" / "train.json-lines", [{"image": "img/a.jpg", "labels": ["cat", "dog", "bird"]}])
    te = _jsonl(tmp_path / "m" / "test.jsonl", [{"image": "img/b.jpg", "labels": ["dog"]}])
    ds2 = load_manifest_dataset(tr, te, classes=tmp_path / "classes.txt", image_root=tmp_path)
    assert ds2.class_names == ["dog", "cat", "bird"] and ds2.train.captions is None

    # round trip through write_manifest
    out = write_manifest(tmp_path / "out" / "train.jsonl", ds.train, ds.class_names)
    out_test = write_manifest(tmp_path / "out" / "test.csv", ds.test, ds.class_names)
    ds3 = load_manifest_dataset(out, out_test)
    assert ds3.train.paths == ds.train.paths and (ds3.train.labels == ds.train.labels).all()
    assert ds3.train.captions == ds.train.captions and ds3.test.captions == ds.test.captions


def _err(tmp_path, train_rows, test_rows=None, **kw) -> str:
    train = train_rows if isinstance(train_rows, Path) else _jsonl(tmp_path / "train.jsonl", train_rows)
    test = test_rows if isinstance(test_rows, Path) else _jsonl(
        tmp_path / "test.jsonl", test_rows or [{"image": "x.jpg", "labels": ["cat"]}])
    with pytest.raises(DataError) as e:
        load_manifest_dataset(train, test, **kw)
    return str(e.value)


def test_manifest_row_errors(tmp_path):
    _images(tmp_path, ["x.jpg", "y.jpg", "z.jpg"])
    msg = _err(tmp_path, [
        {"image": "x.jpg", "labels": ["cat"]},
        '{"image": "y.jpg", "labels": ["cat"',  # malformed JSON, line 2
        {"image": "y.jpg", "labels": []},  # empty, line 3
        {"image": "x.jpg", "labels": ["dog"]},  # duplicate of line 1, line 4
        {"labels": ["dog"]},  # missing field, line 5
    ])
    train = tmp_path / "train.jsonl"
    assert f"{train}, line 2: malformed JSON" in msg
    assert f"{train}, line 3" in msg and "no labels" in msg
    assert f"{train}, line 4" in msg and "also line 1" in msg
    assert f"{train}, line 5: missing field(s) 'image'" in msg
    assert msg.startswith("4 problem(s)")

    # unknown label in test, with suggestion; errors from several files together
    msg = _err(tmp_path, [{"image": "x.jpg", "labels": ["cat", "dog"]}],
               [{"image": "y.jpg", "labels": ["dgo"]}, {"image": "z.jpg", "labels": ["cat", "horse"]}])
    test = tmp_path / "test.jsonl"
    assert f"{test}, line 1: unknown label 'dgo'" in msg and "did you mean 'dog'" in msg
    assert f"{test}, line 2: unknown label 'horse'" in msg

    # many errors: first 20 listed plus a count
    rows = [{"image": "x.jpg", "labels": ["cat"]}] + [{"image": f"{i}.jpg", "labels": ["kat"]} for i in range(30)]
    msg = _err(tmp_path, [{"image": "x.jpg", "labels": ["cat"]}], rows)
    assert msg.startswith("30 problem(s)") and "and 10 more" in msg


def test_manifest_csv_errors_and_files(tmp_path):
    _images(tmp_path, ["x.jpg", "y.jpg"])
    bad_header = tmp_path / "train.csv"
    bad_header.write_text("image,classes\nx.jpg,cat\n")
    msg = _err(tmp_path, bad_header)
    assert f"{bad_header}, line 1: missing column(s) labels" in msg

    csv_train = tmp_path / "train2.csv"
    csv_train.write_text("image,labels\nx.jpg,cat\n\ny.jpg,\nx.jpg,cat|dog\n")
    msg = _err(tmp_path, csv_train)
    assert f"{csv_train}, line 4" in msg and "no labels" in msg
    assert f"{csv_train}, line 5" in msg and "also line 2" in msg

    with pytest.raises(DataError, match="unknown manifest format"):
        load_manifest_dataset(tmp_path / "train.txt", tmp_path / "test.jsonl")

    # class in the class list without a training image
    (tmp_path / "classes.txt").write_text("cat\ndog\n# comment\nbird\n")
    msg = _err(tmp_path, [{"image": "x.jpg", "labels": ["cat", "dog"]}], classes=tmp_path / "classes.txt")
    assert "'bird'" in msg and "line 4" in msg and "at least one training image" in msg

    # missing files: first few plus the total
    rows = [{"image": "x.jpg", "labels": ["cat"]}] + [{"image": f"gone{i}.jpg", "labels": ["cat"]} for i in range(8)]
    msg = _err(tmp_path, rows)
    assert msg.startswith("8 image file(s)") and "gone0.jpg" in msg and "line 2" in msg and "and 3 more" in msg
    ds = load_manifest_dataset(_jsonl(tmp_path / "t.jsonl", rows), tmp_path / "test.jsonl", check_files=False)
    assert len(ds.train) == 9


# ---------------------------------------------------------------- splits

def _tail_split(n: int = 300, c: int = 12, seed: int = 0) -> MultiLabelSplit:
    rng = np.random.default_rng(seed)
    p = np.geomspace(0.5, 0.01, c)  # long tail
    labels = (rng.random((n, c)) < p).astype(np.uint8)
    labels[np.arange(c), np.arange(c)] = 1  # every class at least once
    labels[labels.sum(1) == 0, 0] = 1
    paths = [f"/x/{i}.jpg" for i in range(n)]
    return MultiLabelSplit("train", paths, list(paths), labels, captions=[str(i) for i in range(n)])


def test_split_train_val():
    split = _tail_split()
    assert split_train_val(split, 0.0, seed=1) == (split, None)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError):
            split_train_val(split, bad, seed=0)
    for frac in (0.1, 0.3, 0.5, 0.9):
        for seed in range(4):
            train, val = split_train_val(split, frac, seed)
            assert (train.class_counts >= 1).all()
            assert (train.class_counts >= np.maximum(1, split.class_counts - np.floor(frac * split.class_counts + .5))).all()
            assert len(train) + len(val) == len(split)
            assert len(val) <= round(frac * len(split))
            order = [int(p.split("/")[-1][:-4]) for p in train.paths]
            assert order == sorted(order)
            assert train.captions == [p.split("/")[-1][:-4] for p in train.paths]
    a = split_train_val(split, 0.2, 7)[1]
    b = split_train_val(split, 0.2, 7)[1]
    c = split_train_val(split, 0.2, 8)[1]
    assert a.ids == b.ids and a.ids != c.ids
    assert abs(len(a) - 60) <= 6


# ---------------------------------------------------------------- images

def test_transforms(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8))
    for mode in ("reference", "clip"):
        t = build_transform(mode, 32)
        f = build_transform(mode, 32, flip=True)
        x, y = t(img), f(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(y, torch.flip(x, dims=[-1]))
        sig = transform_signature(mode, 32)
        json.dumps(sig)
        assert sig != transform_signature(mode, 48)
    ref = build_transform("reference", 32)(img)
    expected = np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
    expected = (expected - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(ref.permute(1, 2, 0).numpy(), expected, atol=1e-4)
    assert transform_signature("clip", 224)["mean"][0] == pytest.approx(0.48145466)
    assert transform_signature("reference", 224)["interpolation"] == "bilinear"
    with pytest.raises(ConfigError):
        build_transform("random", 32)

    paths = [write_image(tmp_path / f"{i}.jpg", size=20, seed=i) for i in range(3)]
    gray = tmp_path / "gray.png"
    Image.new("L", (10, 30), 128).save(gray)
    paths.append(gray)
    assert load_image(gray).mode == "RGB"
    ds = ImageListDataset(paths, [build_transform("reference", 16), build_transform("reference", 16, flip=True)])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0)
    idx, batch = next(iter(loader))
    assert idx.tolist() == [0, 1] and batch.shape == (2, 2, 3, 16, 16)
    single = ImageListDataset(paths, build_transform("clip", 16))
    assert single[3][1].shape == (3, 16, 16)
    shutil.copy(paths[0], tmp_path / "copy.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(DataError, match="broken.jpg"):
        ImageListDataset([tmp_path / "broken.jpg"], build_transform("clip", 16))[0]


def test_reproduce_configs_train_on_the_whole_list_with_the_references_names(voc_root, coco_root):
    """voc-lt-*/coco-lt-*: all 1,142 / 1,909 train images, no validation split, the reference's prompt names."""
    from lmpt.engine.config import load_config
    from lmpt.engine.prepared import dataset_from_config

    for name, root, n_train in (("voc-lt-rn50", voc_root, 1142), ("coco-lt-vitb16", coco_root, 1909)):
        cfg = load_config(name, [f"data.root={root}"])
        assert cfg.data.val_fraction == 0 and cfg.run.select == "last" and cfg.data.class_names == "raw"
        assert cfg.run.zeroshot_protocol == "reference" and cfg.run.templates == "reference"
        ds = dataset_from_config(cfg)
        assert len(ds.train) == n_train and ds.val is None
    voc = dataset_from_config(load_config("voc-lt-rn50", [f"data.root={voc_root}"]))
    assert voc.class_names[10] == "diningtable" and voc.class_names[19] == "tvmonitor"
    # validation stays available as an opt-in
    opt_in = dataset_from_config(load_config("voc-lt-rn50", [f"data.root={voc_root}", "data.val_fraction=0.1"]))
    assert opt_in.val is not None and len(opt_in.train) + len(opt_in.val) == 1142
    # the reference's zero-shot script keeps the first word of each label-file line
    coco_zs = benchmark_class_names("coco-lt", "first-word")
    assert coco_zs[9] == "traffic" and coco_zs[34] == coco_zs[35] == "baseball"
    assert benchmark_class_names("voc-lt", "first-word")[10] == "diningtable"
