"""A local HTTP server for the download tests: serves files from a dict, with Range support and injected faults."""
from __future__ import annotations

import io
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Optional


@dataclass
class Behaviour:
    files: dict[str, bytes] = field(default_factory=dict)  # "/path" -> body
    fail_every: int = 0  # answer 503 to every n-th request
    truncate_first: set[str] = field(default_factory=set)  # paths whose first transfer breaks off halfway
    requests: list[tuple[str, Optional[str]]] = field(default_factory=list)  # (path, Range header)
    bytes_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(b: Behaviour):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            with b.lock:
                b.requests.append((path, rng))
                n = len(b.requests)
                truncate = path in b.truncate_first
                b.truncate_first.discard(path)
            if b.fail_every and n % b.fail_every == 0:
                return self._send(503, b"busy")
            body = b.files.get(path)
            if body is None:
                return self._send(404, b"not found")
            start = 0
            if rng and rng.startswith("bytes="):
                start = int(rng[len("bytes="):].split("-")[0])
            if start >= len(body) > 0:
                return self._send(416, b"range not satisfiable")
            status = 206 if start else 200
            part = body[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(part)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            if truncate:
                self.send_header("Connection", "close")
            self.end_headers()
            out = part[: len(part) // 2] if truncate else part
            self.wfile.write(out)
            with b.lock:
                b.bytes_sent += len(out)
            if truncate:
                self.wfile.flush()
                self.close_connection = True

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class LocalServer:
    """``with LocalServer() as srv: srv.url``; ``srv.b`` is the :class:`Behaviour` (files, faults, log)."""

    def __init__(self, files: Optional[dict[str, bytes]] = None) -> None:
        self.b = Behaviour(files=dict(files or {}))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.b))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def jpegs(rels: Iterable[str]) -> dict[str, bytes]:
    """A distinct tiny JPEG for every relative path."""
    from data_helpers import tiny_jpeg

    return {rel: tiny_jpeg(8, seed=i) for i, rel in enumerate(rels)}
