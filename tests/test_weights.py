"""Pretrained weights by tag (lmpt.weights): the hub is stood in for by a function that writes a local file."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
from conftest import TINY_RN

from lmpt import weights as W
from lmpt.errors import ConfigError, UserError


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache in tmp_path, downloads allowed, and a fake ``_hub_download`` writing the hub's layout
    (blobs/<sha256> linked from snapshots/<rev>/<file>). ``hub.files`` maps file names to the bytes served."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    class Hub:
        files: dict[str, bytes] = {}
        calls: list[tuple[str, str]] = []
        corrupt = False
        root = tmp_path / "hub"

    def fake(repo: str, filename: str) -> str:
        Hub.calls.append((repo, filename))
        if filename not in Hub.files:
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"404 {repo}/{filename}")
        data = Hub.files[filename]
        folder = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data + (b"!" if Hub.corrupt else b""))
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text("abc")
        link = folder / "snapshots" / "abc" / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(blob, link)
        return str(link)

    monkeypatch.setattr(W, "_hub_download", fake)
    monkeypatch.setattr(W, "_reachable", lambda url: True)
    monkeypatch.setattr(W, "_url_download", lambda url: (_ for _ in ()).throw(OSError(f"blocked: {url}")))
    return Hub


def _tiny_safetensors() -> bytes:
    from safetensors.torch import save

    from lmpt.backbone import create_clip

    sd = create_clip(TINY_RN, None, seed=3).model.state_dict()
    return save({k: v.contiguous() for k, v in sd.items()})


def test_openai_tags_resolve_to_the_hub_safetensors_first():
    rn = W.weights_source("RN50", "openai")
    assert rn.repo == "timm/resnet50_clip.openai" and rn.filenames[0] == "open_clip_model.safetensors"
    assert rn.url and rn.url.endswith("/RN50.pt")
    assert W.weights_source("ViT-B-16", "openai").repo == "timm/vit_base_patch16_clip_224.openai"
    with pytest.raises(ConfigError, match="neither a weights file nor a pretrained tag"):
        W.weights_source("RN50", "laion9000")


def test_offline_is_one_line_naming_the_file_and_where_it_goes(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as err:
        W.fetch_weights("RN50", "openai")
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE=1" in msg
    assert "https://huggingface.co/timm/resnet50_clip.openai/resolve/main/open_clip_model.safetensors" in msg
    assert "model.pretrained=" in msg and str(tmp_path / "hub") in msg and "lmpt weights fetch RN50" in msg


def test_download_prefers_safetensors_checks_sha256_and_is_cached(hub):
    hub.files = {"open_clip_model.safetensors": b"S" * 100, "open_clip_pytorch_model.bin": b"B" * 100}
    path = W.fetch_weights("RN50", "openai")
    assert path.name == "open_clip_model.safetensors" and path.read_bytes() == b"S" * 100
    assert W.fetch_weights("RN50", "openai") == path and len(hub.calls) == 1  # the second time: from the cache
    assert W.fetch_weights("RN50", "openai", download=False) == path


def test_falls_back_to_the_pickled_copy_when_there_is_no_safetensors(hub):
    hub.files = {"open_clip_pytorch_model.bin": b"B" * 10}
    assert W.fetch_weights("RN50", "openai").name == "open_clip_pytorch_model.bin"
    assert [f for _, f in hub.calls] == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


def test_corrupt_download_is_refused_and_removed(hub):
    hub.files = {"open_clip_model.safetensors": b"S" * 100}
    hub.corrupt = True
    with pytest.raises(UserError, match="SHA-256 .* does not match"):
        W.fetch_weights("RN50", "openai")
    assert not [p for p in hub.root.rglob("blobs/*")]  # the bad copy is gone: a rerun downloads it anew


def test_no_network_is_one_line_with_both_sources(hub, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def down(repo, filename):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub\nand more")

    monkeypatch.setattr(W, "_hub_download", down)
    with pytest.raises(UserError) as err:
        W.fetch_weights("ViT-B-16", "openai")
    msg = str(err.value)
    assert "\n" not in msg and "LocalEntryNotFoundError" in msg and "blocked: https://openaipublic" in msg
    assert "timm/vit_base_patch16_clip_224.openai" in msg and "ViT-B-16.pt" in msg


def test_unreachable_host_fails_at_once_without_the_hubs_retries(hub, monkeypatch):
    monkeypatch.setattr(W, "_reachable", lambda url: False)
    with pytest.raises(UserError, match=r"cannot connect to https://huggingface.co; cannot connect to "
                                        r"openaipublic.azureedge.net\). Download https://huggingface.co/timm/"):
        W.fetch_weights("RN50", "openai")
    assert hub.calls == []


def test_create_clip_loads_a_downloaded_tag(hub, monkeypatch):
    """model.pretrained=openai downloads by default and loads the file with OpenAI's QuickGELU."""
    from lmpt.backbone import create_clip

    hub.files = {"open_clip_model.safetensors": _tiny_safetensors()}
    monkeypatch.setattr(W, "weights_source", lambda m, t: W.WeightsSource(m, t, "org/tiny", W.HUB_FILENAMES, None))
    bb = create_clip(TINY_RN, "openai", seed=0)
    ref = create_clip(TINY_RN, None, seed=3).model.state_dict()
    assert bb.quick_gelu and bb.pretrained.endswith("open_clip_model.safetensors")
    assert all(torch.equal(v, ref[k]) for k, v in bb.model.state_dict().items())


def test_weights_fetch_command_prints_where_the_files_are(hub, capsys):
    from lmpt.cli import main

    hub.files = {"open_clip_model.safetensors": b"S" * 7}
    assert main(["weights", "fetch", "RN50", "ViT-B-16"]) == 0
    out = capsys.readouterr().out
    assert "RN50 (openai): " in out and "ViT-B-16 (openai): " in out and "(7 bytes)" in out
    assert sorted(r for r, _ in hub.calls) == ["timm/resnet50_clip.openai", "timm/vit_base_patch16_clip_224.openai"]
