"""`lmpt data download`: against a local HTTP server (fake archives and tiny JPEGs), never the real hosts."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from download_helpers import LocalServer, jpegs, tar_bytes, zip_bytes
from PIL import Image

from lmpt.data import download as dl
from lmpt.errors import DataError

LIMIT = 4


@pytest.fixture(autouse=True)
def no_real_hosts(monkeypatch):
    """The known hosts become a closed local port: a test that would reach them fails fast instead."""
    dead = "http://127.0.0.1:9"
    monkeypatch.setattr(dl, "COCO_IMAGE_HOST", dead)
    monkeypatch.setattr(dl, "VOC_ARCHIVES", tuple(dataclasses.replace(a, urls=(f"{dead}/{a.filename}",))
                                                  for a in dl.VOC_ARCHIVES))
    monkeypatch.setattr(dl, "COCO_ARCHIVES", tuple(dataclasses.replace(a, urls=(f"{dead}/{a.filename}",))
                                                   for a in dl.COCO_ARCHIVES))


def _voc_archives(monkeypatch, limit=LIMIT, corrupt=False):
    """Fake VOC tars holding the first ``limit`` listed images + unlisted ones; VOC_ARCHIVES pointed at them."""
    lists = dl.listed_images("voc-lt", limit)
    files, archives = {}, []
    for arch in dl.VOC_ARCHIVES:
        rels = [r for lst in arch.lists for r in lists[lst]]
        extra = {f"VOCdevkit/VOC20xx/JPEGImages/unlisted_{i}.jpg": b"x" * 1000 for i in range(3)}
        data = tar_bytes({**jpegs(rels), **extra, "VOCdevkit/README.txt": b"devkit"})
        md5 = hashlib.md5(data).hexdigest()
        files["/" + arch.filename] = data[:700] + bytes([data[700] ^ 1]) + data[701:] if corrupt else data
        archives.append(dataclasses.replace(arch, known_hash=f"md5:{md5}"))
    monkeypatch.setattr(dl, "VOC_ARCHIVES", tuple(archives))
    return files, lists


def _only_listed(root: Path, lists) -> None:
    """Every file under root is a listed, decodable image; nothing half-written anywhere."""
    listed = {r for rows in lists.values() for r in rows}
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            assert rel in listed, f"stray file {rel}"
            with Image.open(p) as im:
                im.load()


def test_voc_archives_checked_and_only_listed_images_extracted(tmp_path, monkeypatch):
    files, lists = _voc_archives(monkeypatch)
    with LocalServer(files) as srv:
        rep = dl.download_voc_lt(tmp_path, mirrors=[srv.url], limit=LIMIT, show_progress=False)
        assert rep.fetched == rep.wanted == 2 * LIMIT and not rep.failed
        assert rep.bytes_fetched == sum(len(v) for v in files.values())
        _only_listed(tmp_path, lists)
        assert "3,000 bytes of images no list names" in rep.format() and "disk saved" in rep.format()
        again = dl.download_voc_lt(tmp_path, mirrors=[srv.url], limit=LIMIT, show_progress=False)
        assert again.present == again.wanted and again.fetched == 0 and "not needed" in again.format()
        assert len(srv.b.requests) == 2  # nothing downloaded the second time


def test_voc_wrong_checksum_tries_next_host_and_leaves_nothing(tmp_path, monkeypatch):
    files, lists = _voc_archives(monkeypatch, corrupt=True)
    with LocalServer(files) as bad:
        with pytest.raises(DataError, match=r"could not download VOCtrainval_11-May-2012.tar.*hash"):
            dl.download_voc_lt(tmp_path, mirrors=[bad.url], limit=LIMIT, backoff=0.001, show_progress=False)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # the bad archive was deleted, nothing extracted
    good, _ = _voc_archives(monkeypatch)
    with LocalServer(files) as bad, LocalServer(good) as srv:  # first host bad, second good: falls through
        rep = dl.download_voc_lt(tmp_path, mirrors=[bad.url, srv.url], limit=LIMIT, backoff=0.001, show_progress=False)
    assert rep.fetched == 2 * LIMIT
    _only_listed(tmp_path, lists)


def test_voc_truncated_transfer_resumes_with_range(tmp_path, monkeypatch):
    files, lists = _voc_archives(monkeypatch)
    with LocalServer(files) as srv:
        srv.b.truncate_first = set(files)
        rep = dl.download_voc_lt(tmp_path, mirrors=[srv.url], limit=LIMIT, backoff=0.001, show_progress=False)
    ranges = [r for _, r in srv.b.requests if r]
    assert len(ranges) == 2 and all(r.startswith("bytes=") and r != "bytes=0-" for r in ranges)
    assert rep.bytes_fetched == sum(len(v) for v in files.values())  # each byte once: half, then the rest
    _only_listed(tmp_path, lists)


def test_voc_stale_part_longer_than_the_archive_is_restarted(tmp_path, monkeypatch):
    files, lists = _voc_archives(monkeypatch)
    name = dl.VOC_ARCHIVES[1].filename
    stale = tmp_path / dl.DOWNLOADS / f".{name}.part"
    stale.parent.mkdir(parents=True)
    too_long = len(files["/" + name]) + 10
    stale.write_bytes(b"z" * too_long)
    with LocalServer(files) as srv:
        rep = dl.download_voc_lt(tmp_path, mirrors=[srv.url], limit=LIMIT, backoff=0.001, show_progress=False)
    assert srv.b.requests.count((f"/{name}", f"bytes={too_long}-")) == 1  # answered 416, then from byte 0
    assert rep.fetched == 2 * LIMIT and not stale.exists()
    _only_listed(tmp_path, lists)


def _coco_server_files(limit=LIMIT):
    lists = dl.listed_images("coco-lt", limit)
    rels = [r for rows in lists.values() for r in rows]
    return {"/" + k: v for k, v in jpegs(rels).items()}, lists


def test_coco_images_parallel_with_retries_and_truncation(tmp_path):
    files, lists = _coco_server_files()
    with LocalServer(files) as srv:
        srv.b.fail_every = 3
        first = sorted(files)[0]
        srv.b.truncate_first = {first}
        rep = dl.download_coco_lt(tmp_path, mirrors=[srv.url], workers=4, backoff=0.001, limit=LIMIT,
                                  show_progress=False)
    assert rep.fetched == rep.wanted == 2 * LIMIT and not rep.failed, rep.format()
    assert rep.bytes_fetched == sum(len(v) for v in files.values())
    assert sum(1 for p, _ in srv.b.requests if p == first) >= 2
    _only_listed(tmp_path, lists)


def test_coco_undecodable_image_is_never_written(tmp_path):
    files, lists = _coco_server_files()
    bad = sorted(files)[1]
    files[bad] = files[bad][:40]  # a JPEG cut short, with a matching Content-Length: only decoding catches it
    with LocalServer(files) as srv:
        rep = dl.download_coco_lt(tmp_path, mirrors=[srv.url], workers=2, retries=1, backoff=0.001, limit=LIMIT,
                                  archives=False, show_progress=False)
    assert [r for r, _ in rep.failed] == [bad[1:]] and "does not decode" in rep.failed[0][1]
    assert not (tmp_path / bad[1:]).exists()
    assert sorted(p.name for p in (tmp_path / Path(bad[1:]).parent).iterdir() if p.name.startswith(".")) == []


def test_coco_kill_in_the_middle_then_rerun_resumes(tmp_path):
    files, lists = _coco_server_files()
    with LocalServer(files) as srv:
        with pytest.raises(KeyboardInterrupt):
            dl.download_coco_lt(tmp_path, mirrors=[srv.url], workers=1, limit=LIMIT, show_progress=False,
                                stop_after=3)
        _only_listed(tmp_path, lists)  # whatever is there is complete
        done = sum(1 for p in tmp_path.rglob("*.jpg"))
        assert 3 <= done < 2 * LIMIT
        served = len(srv.b.requests)
        rep = dl.download_coco_lt(tmp_path, mirrors=[srv.url], workers=2, limit=LIMIT, show_progress=False)
    assert rep.present == done and rep.fetched == 2 * LIMIT - done
    assert len(srv.b.requests) - served == 1 + 2 * LIMIT - done  # one probe + the missing files only
    _only_listed(tmp_path, lists)


def test_coco_archive_fallback_for_images_no_host_serves(tmp_path, monkeypatch):
    files, lists = _coco_server_files()
    missing = sorted(k for k in files if k.startswith("/val2017/"))[0]
    archive = zip_bytes({missing[1:]: files.pop(missing), "val2017/unlisted.jpg": b"y" * 500})
    files["/val2017.zip"] = archive
    with LocalServer(files) as srv:
        rep = dl.download_coco_lt(tmp_path, mirrors=[srv.url], workers=2, retries=0, limit=LIMIT,
                                  show_progress=False)
    assert not rep.failed and rep.fetched == 2 * LIMIT, rep.format()
    assert "val2017.zip" in rep.format() and "train2017.zip: not needed" in rep.format()
    _only_listed(tmp_path, lists)
    assert not (tmp_path / dl.DOWNLOADS).exists()
