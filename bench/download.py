"""`lmpt data download` and `lmpt weights fetch` against a local HTTP server: files, bytes and seconds per path.

The real hosts (host.robots.ox.ac.uk, images.cocodataset.org, huggingface.co) are not reachable from the
project's machines, so this measures the download code itself: a local server (127.0.0.1, a thread of this
process) serves fake VOC archives and COCO images, one small random JPEG (``--size`` px) for every image the
packaged lists name. Paths: VOC-LT archives (checked, listed images extracted), COCO-LT images one by one
(parallel), the same with a server that fails every third request, and COCO-LT's archive fallback (every
image missing from the image server). One JSON line per path.

    python bench/download.py [--size 64] [--workers 16]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import tarfile
import tempfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from lmpt.data import download as dl


def _jpeg(size: int, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _server(files: dict[str, bytes], fail_every: int = 0):
    count = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            with lock:
                count[0] += 1
                fail = fail_every and count[0] % fail_every == 0
            body = None if fail else files.get(self.path)
            code = 503 if fail else (404 if body is None else 200)
            body = body if body is not None else b"no"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}", count


def _archive(members: dict[str, bytes], kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for k, v in members.items():
                zf.writestr(k, v)
    else:
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for k, v in members.items():
                info = tarfile.TarInfo(k)
                info.size = len(v)
                tf.addfile(info, io.BytesIO(v))
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="side of the fake JPEGs in pixels")
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args()
    voc = dl.listed_images("voc-lt")
    coco = dl.listed_images("coco-lt")
    coco_imgs = {r: _jpeg(args.size, i) for i, r in enumerate(sorted({r for v in coco.values() for r in v}))}
    with tempfile.TemporaryDirectory() as tmp:
        files, archives = {}, []
        for a in dl.VOC_ARCHIVES:
            data = _archive({r: _jpeg(args.size, i) for i, r in enumerate(r for lst in a.lists for r in voc[lst])}, "tar")
            files["/" + a.filename] = data
            archives.append(dataclasses.replace(a, urls=(), known_hash="md5:" + hashlib.md5(data).hexdigest()))
        dl.VOC_ARCHIVES = tuple(archives)
        dl.COCO_IMAGE_HOST = "http://127.0.0.1:9"  # closed port: the official host is never tried
        httpd, url, count = _server(files)
        rep = dl.download_voc_lt(Path(tmp) / "voc", mirrors=[url], show_progress=False)
        _print("voc-lt archives", rep, count[0], args.size)
        httpd.shutdown()

        for label, fail in (("coco-lt images", 0), ("coco-lt images, every 3rd request fails", 3)):
            httpd, url, count = _server({"/" + k: v for k, v in coco_imgs.items()}, fail_every=fail)
            rep = dl.download_coco_lt(Path(tmp) / label.replace(" ", "_"), mirrors=[url], workers=args.workers,
                                      backoff=0.05, archives=False, show_progress=False)
            _print(label, rep, count[0], args.size)
            httpd.shutdown()

        zips = {}
        for a in dl.COCO_ARCHIVES:
            zips["/" + a.filename] = _archive({r: coco_imgs[r] for lst in a.lists for r in coco[lst]}, "zip")
        dl.COCO_ARCHIVES = tuple(dataclasses.replace(a, urls=()) for a in dl.COCO_ARCHIVES)
        httpd, url, count = _server(zips)
        rep = dl.download_coco_lt(Path(tmp) / "coco_zip", mirrors=[url], workers=args.workers, retries=0,
                                  backoff=0.01, show_progress=False)
        _print("coco-lt archive fallback", rep, count[0], args.size)
        httpd.shutdown()


def _print(path: str, rep: dl.DownloadReport, requests: int, size: int) -> None:
    print(json.dumps({"path": path, "jpeg_px": size, "files": rep.fetched, "failed": len(rep.failed),
                      "bytes": rep.bytes_fetched, "seconds": round(rep.seconds, 2), "requests": requests}))


if __name__ == "__main__":
    main()
