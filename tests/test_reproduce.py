"""docs/reproduce.md: its commands run as written, with only the hosts' URLs (a local server, serving fake
archives and tiny JPEGs for every listed image) and the paths swapped; `lmpt data check` passes afterwards.
The sweep is checked to parse and start (training on real CLIP is not done here)."""
from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import time
from pathlib import Path

import pytest
from download_helpers import LocalServer, jpegs, tar_bytes

from lmpt.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reproduce.md"


def page_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)
    return [shlex.split(ln)[1:] for b in blocks for ln in b.splitlines() if ln.startswith("lmpt ")]


def test_the_page_shows_the_three_commands_and_the_readme_links_it():
    assert [c[:2] for c in page_commands()] == [["weights", "fetch"], ["data", "download"], ["sweep", "voc-lt-rn50"]]
    assert "(docs/reproduce.md)" in (PAGE.parents[1] / "README.md").read_text()


@pytest.fixture
def hosts(tmp_path, monkeypatch):
    """The real hosts swapped for one local server: the hub (a stand-in download function writing the hub's
    cache layout), the VOC archive hosts and COCO's image server."""
    from huggingface_hub import constants

    from lmpt import weights as W
    from lmpt.data import download as dl

    lists = dl.listed_images("voc-lt")
    files = {}
    archives = []
    for arch in dl.VOC_ARCHIVES:
        data = tar_bytes(jpegs(r for lst in arch.lists for r in lists[lst]))
        files["/voc/" + arch.filename] = data
        archives.append((arch, hashlib.md5(data).hexdigest()))
    coco = dl.listed_images("coco-lt")
    files.update({"/coco/" + k: v for k, v in jpegs(r for rows in coco.values() for r in rows).items()})
    srv = LocalServer(files).__enter__()
    monkeypatch.setattr(dl, "VOC_ARCHIVES", tuple(dataclasses.replace(a, urls=(f"{srv.url}/voc/{a.filename}",),
                                                                      known_hash=f"md5:{md5}") for a, md5 in archives))
    monkeypatch.setattr(dl, "COCO_IMAGE_HOST", f"{srv.url}/coco")
    monkeypatch.setattr(dl, "COCO_ARCHIVES", ())

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(W, "_reachable", lambda url: True)

    def hub_download(repo: str, filename: str) -> str:
        path = tmp_path / "hub" / repo / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights of " + repo.encode())
        return str(path)

    monkeypatch.setattr(W, "_hub_download", hub_download)
    yield srv
    srv.__exit__()


def test_the_page_commands_run_as_written(hosts, tmp_path, monkeypatch, capsys):
    import lmpt.engine.studies.sweep as sweep

    swaps = {"/data/VOC": str(tmp_path / "VOC"), "runs/voc-lt-rn50": str(tmp_path / "runs")}
    weights, download, run = [[swaps.get(a.split("=")[-1], a) if "=" not in a else
                               a.split("=")[0] + "=" + swaps.get(a.split("=")[1], a.split("=")[1]) for a in c]
                              for c in page_commands()]
    assert main(weights) == 0
    out = capsys.readouterr().out
    assert "RN50 (openai): " in out and "ViT-B-16 (openai): " in out

    start = time.perf_counter()
    assert main(download + ["--quiet"]) == 0
    out = capsys.readouterr().out
    print(f"voc-lt against the local server: {time.perf_counter() - start:.1f} s\n{out.splitlines()[0]}\n{out.splitlines()[1]}\n{out.splitlines()[2]}")
    assert "voc-lt: 6094 images wanted" in out and "6094 fetched" in out and "all 6094 images exist and decode: OK" in out
    assert main(["data", "check", "voc-lt", "--root", swaps["/data/VOC"], "--quiet"]) == 0

    started = {}

    def fake_sweep(cfg, methods, seeds, out_dir, **kw):
        started.update(cfg=cfg, methods=methods, seeds=seeds, out=out_dir)
        raise KeyboardInterrupt  # started: stop here (no real CLIP to train)

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    assert main(run) == 130
    assert started["methods"] == ["zeroshot", "linear-probe", "coop", "coop-db", "lmpt"] and started["seeds"] == [0, 1, 2]
    assert started["cfg"].data.root == swaps["/data/VOC"] and started["cfg"].model.pretrained == "openai"
    assert str(started["out"]) == swaps["runs/voc-lt-rn50"]


def test_the_coco_command_of_the_page_runs(hosts, tmp_path, capsys):
    line = re.search(r"`(lmpt data download coco-lt --root /data/coco)`", PAGE.read_text()).group(1)
    argv = [str(tmp_path / "coco") if a == "/data/coco" else a for a in shlex.split(line)[1:]]
    start = time.perf_counter()
    assert main(argv + ["--quiet"]) == 0
    out = capsys.readouterr().out
    print(f"coco-lt against the local server: {time.perf_counter() - start:.1f} s\n{out.splitlines()[0]}")
    assert "coco-lt: 6909 images wanted" in out and "6909 fetched" in out and "all 6909 images exist and decode: OK" in out
