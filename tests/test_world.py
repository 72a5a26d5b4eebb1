"""The generated world: determinism, long-tail profile, captions, cache, small CLIP."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmpt.data.manifest import load_manifest_dataset

from lmpt.world import (
    WORLD_MODEL_NAME,
    build_world,
    generate_world,
    get_world_tokenizer,
    is_complete_world,
    register_world_models,
    world_key,
)
from lmpt.world.captions import MAX_CAPTION_CHARS
from lmpt.world.labels import (
    COCO_LT_PROFILE,
    VOC_LT_PROFILE,
    label_matrix,
    lt_profile,
    make_spec,
    sample_balanced,
    sample_split,
)
from lmpt.world.vocab import plural, pool_words, select_classes

SMALL = {"val": 40, "test": 60, "pretrain": 96}
SCALE = 0.05


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(out, num_classes=20, seed=3, scale=SCALE, sizes=SMALL, workers=1, progress=False)
    return out


def _groups(counts) -> tuple[int, int, int]:
    c = np.asarray(counts)
    return int((c >= 100).sum()), int(((c >= 20) & (c < 100)).sum()), int((c < 20).sum())


# --- vocabulary ------------------------------------------------------------------------------------


def test_class_words_are_single_common_tokens():
    tok = get_world_tokenizer()
    words = pool_words()
    assert len(words) >= 80 and len(set(words)) == len(words)
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    for w in words:
        assert w.isalpha() and w.islower(), w
        assert 1 <= len(bpe.encode(w)) <= 2, w
        assert 1 <= len(bpe.encode(plural(w))) <= 3, w
    ids = tok(["a photo of a dog."])
    assert ids.shape == (1, 32)
    assert select_classes(20)[0] == "person" and len(set(select_classes(80))) == 80


def test_caption_phrases_name_no_class():
    from lmpt.world import captions

    vocab = set(pool_words()) | {plural(w) for w in pool_words()}
    texts = list(captions._SOLO + captions._DUO + captions._MANY + captions._GENERIC + captions._WEB_WORDS)
    for scene in captions.SCENES:
        texts += [scene.name, *captions._clean(scene.places), *captions._clean(scene.surfaces)]
    for t in texts:
        assert not set(t.replace("{", " ").replace("}", " ").split()) & vocab, t


# --- label sampling (full size: no images drawn) ----------------------------------------------------


@pytest.mark.parametrize("num_classes,profile", [(20, VOC_LT_PROFILE), (80, COCO_LT_PROFILE)])
def test_long_tail_profile_at_full_size(num_classes, profile):
    spec = make_spec(num_classes)
    target = np.empty(num_classes, np.int64)
    rng = np.random.default_rng(0)
    target[rng.permutation(num_classes)] = lt_profile(num_classes)
    assert sorted(target.tolist(), reverse=True) == list(profile)
    sets = sample_split(spec, target, rng, pool_factor=10.0)
    y = label_matrix(sets, num_classes)
    counts = y.sum(0)
    assert np.all(np.abs(counts - target) <= np.maximum(1, 0.15 * target)), (counts, target)
    assert _groups(counts) == _groups(profile)
    assert y.sum(1).min() >= 1 and all(1 <= len(s.objects) <= 4 for s in sets)


def test_profile_interpolates_between_voc_and_coco():
    for n in (10, 40, 60, 120):
        p = lt_profile(n)
        assert len(p) == n and p[0] >= 100 and p[-1] < 20
        assert np.all(np.diff(p) <= 0)


def test_head_and_tail_depend_on_seed():
    from lmpt.world.generate import train_targets

    targets = [train_targets(20, seed) for seed in (0, 1, 2)]
    assert all(sorted(t.tolist(), reverse=True) == list(VOC_LT_PROFILE) for t in targets)
    assert len({int(np.argmax(t)) for t in targets}) > 1


def test_balanced_splits_cover_every_class():
    spec = make_spec(20)
    y = label_matrix(sample_balanced(spec, 1500, np.random.default_rng(5)), 20)
    counts = y.sum(0)
    assert counts.min() >= 40
    assert counts.max() <= 4 * counts.min()


def test_pairs_co_occur():
    spec = make_spec(20)
    y = label_matrix(sample_balanced(spec, 3000, np.random.default_rng(1)), 20).astype(bool)
    horse, person = spec.classes.index("horse"), spec.classes.index("person")
    p_person_given_horse = y[y[:, horse], person].mean()
    assert p_person_given_horse > 2 * y[:, person].mean()


# --- generated files ---------------------------------------------------------------------------------


def test_files_and_objects(small_world):
    meta = json.loads((small_world / "world.json").read_text())
    assert is_complete_world(small_world)
    classes = (small_world / "classes.txt").read_text().split()
    assert classes == meta["classes"] and len(classes) == 20
    from PIL import Image

    for split in ("train", "val", "test"):
        recs = _read_jsonl(small_world / f"{split}.jsonl")
        assert len(recs) == meta["sizes"][split] > 0
        for r in recs[:20]:
            assert 1 <= len(r["labels"]) <= 4 and set(r["labels"]) <= set(classes)
            assert ("caption" in r) == (split == "train")
            with Image.open(small_world / r["image"]) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
    pre = np.load(small_world / "pretrain_images.npy")
    caps = json.loads((small_world / "pretrain_captions.json").read_text())
    assert pre.shape == (SMALL["pretrain"], 64, 64, 3) and pre.dtype == np.uint8 and len(caps) == len(pre)
    assert pre.std() > 10  # not blank
    # alt-text clutter before the description on part of the pretraining captions, never on the train split's
    from lmpt.world.captions import _WEB_WORDS

    def web_start(text: str) -> bool:
        return text.split()[0].strip(",:-|") in _WEB_WORDS and text.split()[1].strip(",:-|") in _WEB_WORDS

    share = np.mean([web_start(c) for c in caps])
    assert 0.3 < share < 0.9, share
    train_share = np.mean([web_start(r["caption"]) for r in _read_jsonl(small_world / "train.jsonl")])
    assert train_share < 0.1, train_share  # only "close up ..." descriptions look like that


def test_captions_name_only_present_classes(small_world):
    recs = _read_jsonl(small_world / "train.jsonl")
    classes = (small_world / "classes.txt").read_text().split()
    forms = {c: {c, plural(c)} for c in classes}
    some_missing = 0
    lengths = []
    for r in recs:
        words = set(r["caption"].rstrip(".").replace(",", " ").split())
        named = {c for c in classes if forms[c] & words}
        assert named, r
        assert named <= set(r["labels"]), r
        some_missing += named != set(r["labels"])
        lengths.append(len(r["caption"]))
    assert some_missing > 0
    assert np.mean(np.asarray(lengths) <= MAX_CAPTION_CHARS) > 0.95
    assert len({r["caption"] for r in recs}) > 0.5 * len(recs)


def test_generation_is_deterministic(small_world, tmp_path):
    again = tmp_path / "again"
    generate_world(again, num_classes=20, seed=3, scale=SCALE, sizes=SMALL, workers=2, progress=False)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "classes.txt", "pretrain_captions.json"):
        assert (again / name).read_bytes() == (small_world / name).read_bytes(), name
    assert (again / "images/train/000000.png").read_bytes() == (small_world / "images/train/000000.png").read_bytes()
    assert np.array_equal(np.load(again / "pretrain_images.npy"), np.load(small_world / "pretrain_images.npy"))

    other = tmp_path / "other"
    generate_world(other, num_classes=20, seed=4, scale=SCALE, sizes=SMALL, workers=1, progress=False)
    assert (other / "train.jsonl").read_bytes() != (small_world / "train.jsonl").read_bytes()
    assert not np.array_equal(np.load(other / "pretrain_images.npy"), np.load(small_world / "pretrain_images.npy"))


def _pixels(paths) -> set[bytes]:
    from PIL import Image

    out = set()
    for p in paths:
        with Image.open(p) as im:
            out.add(np.asarray(im.convert("RGB")).tobytes())
    return out


def test_extra_images_are_fresh_draws_of_the_balanced_distribution(small_world, tmp_path):
    from lmpt.world.generate import draw_extra_images

    manifest = draw_extra_images(tmp_path / "a", 60, num_classes=20, seed=3, draw_seed=1)
    recs = _read_jsonl(manifest)
    assert len(recs) == 60 and all(r["labels"] and "caption" not in r for r in recs)
    classes = (small_world / "classes.txt").read_text().split()
    assert {c for r in recs for c in r["labels"]} <= set(classes)
    extra = _pixels(manifest.parent / r["image"] for r in recs)
    assert len(extra) == 60
    world = set()
    for split in ("train", "val", "test"):
        world |= _pixels(small_world / r["image"] for r in _read_jsonl(small_world / f"{split}.jsonl"))
    world |= {a.tobytes() for a in np.load(small_world / "pretrain_images.npy")}
    assert not extra & world  # never an image of the world's splits or of its CLIP's corpus

    same = draw_extra_images(tmp_path / "b", 60, num_classes=20, seed=3, draw_seed=1, workers=2)
    assert same.read_bytes() == manifest.read_bytes()
    assert _pixels(same.parent / r["image"] for r in recs) == extra
    other = draw_extra_images(tmp_path / "c", 60, num_classes=20, seed=3, draw_seed=2)
    assert not _pixels(other.parent / r["image"] for r in _read_jsonl(other)) & extra


# --- cache and CLIP -------------------------------------------------------------------------------


def test_build_world_caches_and_pretrains(tmp_path):
    import open_clip
    import torch
    from safetensors.torch import load_file

    kw = dict(cache_dir=tmp_path, num_classes=20, seed=1, progress=False, scale=SCALE, sizes=SMALL,
              pretrain_steps=2, pretrain_recipe={"batch_size": 16, "warmup_steps": 1}, workers=1)
    info = build_world(**kw)
    assert info.generated and info.pretrained
    assert info.root == tmp_path / "world" / world_key(20, 1, SCALE, SMALL)
    assert info.clip_weights.is_file() and info.metadata["clip"]["steps"] == 2
    mtime = (info.root / "world.json").stat().st_mtime_ns
    wtime = info.clip_weights.stat().st_mtime_ns

    again = build_world(**kw)
    assert not again.generated and not again.pretrained
    assert (again.root / "world.json").stat().st_mtime_ns == mtime
    assert again.clip_weights.stat().st_mtime_ns == wtime

    ds = load_manifest_dataset(again.train_manifest, again.test_manifest, val=again.val_manifest,
                               classes=again.classes_file)
    assert ds.num_classes == 20 and ds.train.captions is not None and ds.test.captions is None
    assert len(ds.val) == SMALL["val"] and Path(ds.test.paths[0]).is_file()
    assert np.array_equal(ds.class_freq, np.asarray(again.metadata["counts"]["train"]))

    register_world_models()
    model = open_clip.create_model(WORLD_MODEL_NAME)
    model.load_state_dict(load_file(str(again.clip_weights)))
    with torch.no_grad():
        tok = get_world_tokenizer()(["a photo of a dog.", "a photo of a cup."])
        img = torch.zeros(2, 3, 64, 64)
        f_img, f_txt = model.encode_image(img), model.encode_text(tok)
    assert f_img.shape == f_txt.shape == (2, model.text_projection.shape[1])
    assert model.context_length == 32

    # the documented preprocessing equals the one pretraining used
    from PIL import Image

    from lmpt.backbone import create_clip
    from lmpt.data.images import PreprocessConfig, transform_from_signature
    from lmpt.world.pretrain import _to_input

    backbone = create_clip(again.clip_model_name, str(again.clip_weights))
    transform = transform_from_signature(PreprocessConfig("clip").resolve(backbone))  # the world config's mode
    with Image.open(ds.test.paths[0]) as im:
        a = transform(im)
        b = _to_input(torch.from_numpy(np.array(im.convert("RGB")))[None])[0]
    assert torch.allclose(a, b, atol=1e-6)


def test_model_config_and_deterministic_pretraining(small_world, tmp_path):
    import open_clip
    from safetensors.torch import load_file

    from lmpt.world import WORLD_CONTEXT_LENGTH, get_world_tokenizer
    from lmpt.world.pretrain import pretrain_world_clip

    register_world_models()
    register_world_models()  # idempotent
    assert WORLD_MODEL_NAME in open_clip.list_models()
    model = open_clip.create_model(WORLD_MODEL_NAME, pretrained=None)
    assert model.context_length == WORLD_CONTEXT_LENGTH == get_world_tokenizer()(["a"]).shape[1]
    assert model.visual.image_size == (64, 64) or model.visual.image_size == 64
    kw = dict(steps=2, seed=5, recipe={"batch_size": 16, "warmup_steps": 1}, progress=False, eval_split=None)
    m1 = pretrain_world_clip(small_world, tmp_path / "a.safetensors", **kw)
    pretrain_world_clip(small_world, tmp_path / "b.safetensors", **kw)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert m1["steps"] == 2 and np.isfinite(m1["final_loss"])
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert (tmp_path / "a.json").is_file()


def test_incomplete_world_is_regenerated(tmp_path):
    kw = dict(cache_dir=tmp_path, num_classes=20, seed=2, progress=False, scale=SCALE, sizes=SMALL,
              pretrain_steps=1, pretrain_recipe={"batch_size": 8, "warmup_steps": 1}, workers=1)
    root = tmp_path / "world" / world_key(20, 2, SCALE, SMALL)
    (root / "images").mkdir(parents=True)
    (root / "train.jsonl").write_text("half written\n")
    assert not is_complete_world(root)
    info = build_world(**kw)
    assert info.generated and is_complete_world(root)
    assert _read_jsonl(root / "train.jsonl")[0]["image"].startswith("images/train/")



def test_damaged_cached_clip_is_pretrained_again(tmp_path, caplog):
    """A truncated or overwritten cached CLIP (or its metrics file) is rebuilt, bitwise as before, never used."""
    kw = dict(cache_dir=tmp_path, num_classes=20, seed=3, progress=False, scale=SCALE, sizes=SMALL,
              pretrain_steps=1, pretrain_recipe={"batch_size": 8, "warmup_steps": 1}, workers=1)
    info = build_world(**kw)
    good = info.clip_weights.read_bytes()
    metrics = info.clip_weights.with_suffix(".json")
    for damage in (lambda: info.clip_weights.write_bytes(good[:len(good) // 2]),
                   lambda: info.clip_weights.write_bytes(b"not a safetensors file"),
                   lambda: metrics.write_text("{half")):
        damage()
        again = build_world(**kw)
        assert again.pretrained and not again.generated
        assert again.clip_weights.read_bytes() == good and json.loads(metrics.read_text())["steps"] == 1
    assert "unreadable or damaged" in caplog.text
    assert not build_world(**kw).pretrained  # intact again: reused

def test_demo_writes_summary(tmp_path):
    """``lmpt demo`` end to end on a tiny world: summary.json in the documented shape, report files."""
    from lmpt.engine.studies.demo import DEMO_METHODS, run_demo

    out = tmp_path / "demo"
    summary = run_demo(out, quick=True, cache_dir=str(tmp_path / "cache"), device="cpu", seeds="0,1",
                       overrides=["optim.epochs=2", "run.progress=false"],
                       world_options={"scale": 0.1, "sizes": {"val": 40, "test": 60, "pretrain": 128},
                                      "pretrain_steps": 2})
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk["methods"]) == set(DEMO_METHODS) == {"zeroshot", "linear-probe", "coop", "coop-db", "lmpt"}
    for name, groups in on_disk["methods"].items():
        for g in ("total", "head", "medium", "tail"):
            mean, std = groups[g]["mean"], groups[g]["std"]
            assert mean is None or 0.0 <= mean <= 1.0, (name, g, mean)  # None: no class in the group
            assert std is None or std >= 0.0
        assert groups["total"]["mean"] is not None
    assert on_disk["methods"]["zeroshot"]["total"]["std"] == 0.0  # one run: nothing to vary
    assert "NaN" not in (out / "summary.json").read_text()  # strict JSON
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == sorted(["zeroshot"] + [f"{m}-seed{s}" for m in ("linear-probe", "coop", "coop-db", "lmpt")
                                          for s in (0, 1)])
    text = (out / "summary.md").read_text()
    assert "| lmpt |" in text and "selection: last" in text
    assert "every run with optim.epochs=2 run.progress=false" in text and summary["overrides"][0] == "optim.epochs=2"
    # paired differences: every method against zero-shot, lmpt against coop-db, with intervals around them
    comparisons = on_disk["comparisons"]
    assert set(comparisons) == {"linear-probe - zeroshot", "coop - zeroshot", "coop-db - zeroshot",
                                "lmpt - zeroshot", "lmpt - coop-db"}
    for entry in comparisons.values():
        assert entry["total"]["low"] <= entry["total"]["diff"] <= entry["total"]["high"]
    lmpt, coop_db = on_disk["methods"]["lmpt"]["total"]["mean"], on_disk["methods"]["coop-db"]["total"]["mean"]
    assert abs(comparisons["lmpt - coop-db"]["total"]["diff"] - (lmpt - coop_db)) < 1e-6
    assert "| lmpt - coop-db |" in text and (out / "world.yaml").is_file()
    assert (out / "README.md").is_file() and (out / "summary.png").is_file()
    assert summary["timing"]["total_s"] > 0


def test_logit_scale_schedule_and_pretraining_follow_the_recipe(small_world, tmp_path):
    from safetensors.torch import load_file

    from lmpt.world.pretrain import logit_scale_at, pretrain_world_clip

    assert logit_scale_at(0, 10, {}) is None and logit_scale_at(3, 10, {"logit_scale": 50}) == 50.0
    ramp = {"logit_scale": 100.0, "logit_scale_start": 10.0, "logit_scale_ramp": 4}
    # geometric: the log-scale moves by the same amount each step, log10(100 / 10) / 4 = 0.25
    got = [logit_scale_at(s, 8, ramp) for s in range(8)]
    want = [10 ** (1 + 0.25 * min(4, s + 1)) for s in range(8)]
    assert np.allclose(got, want, rtol=1e-9)
    full = [logit_scale_at(s, 5, {"logit_scale": 64.0, "logit_scale_start": 4.0}) for s in range(5)]
    assert np.allclose(full, [4.0 * 16 ** ((s + 1) / 5) for s in range(5)]) and full[-1] == pytest.approx(64.0)

    recipe = {"batch_size": 16, "warmup_steps": 1, "logit_scale": 80.0, "logit_scale_start": 20.0}
    m = pretrain_world_clip(small_world, tmp_path / "r.safetensors", steps=3, seed=2, recipe=recipe, progress=False,
                            eval_split=None)
    state = load_file(str(tmp_path / "r.safetensors"))
    assert float(state["logit_scale"].exp()) == pytest.approx(80.0, rel=1e-5)
    assert m["logit_scale"] == pytest.approx(80.0, rel=1e-5)
    learned = pretrain_world_clip(small_world, tmp_path / "l.safetensors", steps=3, seed=2, progress=False,
                                  recipe={"batch_size": 16, "warmup_steps": 1, "logit_scale": None},
                                  eval_split=None)
    assert learned["logit_scale"] != pytest.approx(80.0, rel=1e-3) and learned["logit_scale"] > 1
