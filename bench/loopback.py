"""Real servers on 127.0.0.1 for remote corpora: the tests and `scgrn bench loader --remote` start and stop them.

- `FileServer`: the standard library's HTTP server over a directory, plus byte ranges (zarr reads inner chunks by
  range), HEAD, directory listings (fsspec lists them to find a zarr shard's files), and two faults a test can
  switch on: answer every Nth request with 503, or flip bytes of one file.
- `MotoServer`: moto's S3-compatible server as a separate process (what s3fs's own tests use).
- `FaultyProxy`: a reverse proxy in front of it that answers every Nth request with 503 or flips bytes of one object.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def _fault(self) -> bool:
        srv = self.server
        with srv.lock:
            srv.requests += 1
            fail = srv.fail_every and srv.requests % srv.fail_every == 0
        if fail:
            srv.failed += 1
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "injected fault")
        return bool(fail)

    def do_HEAD(self) -> None:
        if not self._fault():
            super().do_HEAD()

    def do_GET(self) -> None:
        if self._fault():
            return
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            super().do_GET()  # an HTML listing (links to children)
            return
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        size = path.stat().st_size
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        status, start, stop = HTTPStatus.OK, 0, size
        if match:
            lo, hi = match.groups()
            if lo:
                start, stop = int(lo), min(size, int(hi) + 1 if hi else size)
            else:  # suffix range: the last N bytes
                start = max(0, size - int(hi))
            status = HTTPStatus.PARTIAL_CONTENT
        with path.open("rb") as f:  # only the requested bytes
            f.seek(start)
            body = f.read(stop - start)
        corrupt = self.server.corrupt
        if corrupt is not None and path.resolve() == corrupt.resolve():
            body = bytes(b ^ 0xFF if (start + i) % 97 == 13 else b for i, b in enumerate(body))
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.requests = self.failed = 0
        self.fail_every = 0
        self.corrupt: Path | None = None
        super().__init__(("127.0.0.1", free_port()), lambda *a: _Handler(*a, directory=str(root)))


class _Running:
    """A loopback server run on a thread: `with X(...) as srv:` serves at `srv.url`; stopped (thread joined) on exit.
    `faults(fail_every=N, corrupt=...)` switches the server's injected faults (and resets its request counters)."""

    def __init__(self, server) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def faults(self, fail_every: int = 0, corrupt=None) -> None:
        with self.server.lock:
            self.server.fail_every, self.server.corrupt = fail_every, corrupt
            self.server.requests = self.server.failed = 0

    @property
    def failed(self) -> int:
        return self.server.failed


class FileServer(_Running):
    """Serves `root` (files, byte ranges, listings); `faults(corrupt=PATH)` flips bytes of that file."""

    def __init__(self, root: Path) -> None:
        super().__init__(_Server(Path(root)))


class _ServerProcess:
    """A storage server in its own process on 127.0.0.1 (bounded start-up wait), plus the environment variables
    that point its client library at it."""

    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self):
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded wait for the server to answer
            if self.proc.poll() is not None:
                msg = f"{self.name} exited with {self.proc.returncode}"
                raise RuntimeError(msg)
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                return self
            except urllib.error.HTTPError:  # it answers (an error page for "/" is an answer)
                return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        msg = f"{self.name} did not start within 60 s"
        raise RuntimeError(msg)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    @contextlib.contextmanager
    def environment(self):
        """`self.env` set (and restored after), with cached filesystem clients dropped on both sides."""
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        _drop_cached_filesystems()
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _drop_cached_filesystems()


class MotoServer(_ServerProcess):
    """moto's S3 server on 127.0.0.1 in its own process; sets the AWS_* environment s3fs reads (dummy keys)."""

    name = "moto server"

    def __init__(self) -> None:
        super().__init__()
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]


class GcsServer(_ServerProcess):
    """gcp-storage-emulator's Google Cloud Storage API on 127.0.0.1 in its own process (in memory); sets
    STORAGE_EMULATOR_HOST, which gcsfs reads (no credentials needed)."""

    name = "GCS emulator"

    def __init__(self) -> None:
        super().__init__()
        self.env = {"STORAGE_EMULATOR_HOST": self.endpoint}

    def command(self) -> list[str]:
        script = "from gcp_storage_emulator.__main__ import main; main()"
        return [sys.executable, "-c", script, "start", "-H", "127.0.0.1", "--port", str(self.port), "--in-memory", "-q"]


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _ProxyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _forward(self) -> None:
        srv = self.server
        with srv.lock:
            srv.requests += 1
            fail = srv.fail_every and srv.requests % srv.fail_every == 0
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if fail:
            srv.failed += 1
            payload = b"<Error><Code>SlowDown</Code><Message>injected fault</Message></Error>"
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(srv.upstream + self.path, data=body, headers=headers, method=self.command)
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                status, reply, data = r.status, r.headers, r.read()
        except urllib.error.HTTPError as err:
            status, reply, data = err.code, err.headers, err.read()
        if srv.corrupt and self.command == "GET" and srv.corrupt in self.path and status in (200, 206):
            data = bytes(b ^ 0xFF if i % 97 == 13 else b for i, b in enumerate(data))
        self.send_response(status)
        for k, v in reply.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.requests = self.failed = 0
        self.fail_every = 0
        self.corrupt = None
        super().__init__(("127.0.0.1", free_port()), _ProxyHandler)


class FaultyProxy(_Running):
    """A reverse proxy on 127.0.0.1 in front of `upstream` (the moto server) that can answer every Nth request
    with 503 or flip bytes of the objects whose path contains `corrupt`."""

    def __init__(self, upstream: str) -> None:
        super().__init__(_ProxyServer(upstream))


def _drop_cached_filesystems() -> None:
    import fsspec

    from data_prep import remote

    remote._filesystem.cache_clear()
    for protocol in ("s3", "gs"):
        with contextlib.suppress(Exception):
            fsspec.get_filesystem_class(protocol).clear_instance_cache()


@contextlib.contextmanager
def corpus_in_a_bucket(local: Path, bucket: str, prefix: str = "corpus"):
    """A moto S3 server holding a copy of the local corpus at s3://BUCKET/PREFIX, with the AWS_* environment
    set while inside; yields the URL."""
    with MotoServer() as server, server.environment():
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir(bucket)
        fs.put(str(local), f"{bucket}/{prefix}", recursive=True)
        yield f"s3://{bucket}/{prefix}"


@contextlib.contextmanager
def corpus_in_a_gcs_bucket(local: Path, bucket: str, prefix: str = "corpus"):
    """A GCS emulator holding a copy of the local corpus at gs://BUCKET/PREFIX, with STORAGE_EMULATOR_HOST set while
    inside; yields the URL."""
    with GcsServer() as server, server.environment():
        import fsspec

        fs = fsspec.filesystem("gs")
        fs.mkdir(bucket)
        fs.put(str(local), f"{bucket}/{prefix}", recursive=True)
        yield f"gs://{bucket}/{prefix}"
