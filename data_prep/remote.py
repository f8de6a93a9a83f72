"""Where a corpus lives: a local directory or an fsspec URL, read with bounded retries.

Every place that takes a corpus directory also takes `s3://bucket/prefix`, `gs://bucket/prefix`,
`https://host/path` or `file:///path`. Local paths keep their `Path` and the code paths they always had; URLs go
through fsspec (s3fs and gcsfs are the optional `remote` extra; http(s) needs only aiohttp). Credentials come from
each library's usual environment variables and config files (AWS_*, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS, ...);
scgrn never reads, stores or logs them.

Transient failures (connection reset, timeouts, HTTP 429 / 5xx) are retried with exponential backoff a bounded
number of times; what still fails is a CorpusError naming the URL.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TypeVar

from data_prep.errors import CorpusError
from data_prep.io_utils import sha256_tree

T = TypeVar("T")

# scheme -> the package fsspec needs for it (None: fsspec's own, or aiohttp for http)
SCHEMES = {"file": None, "http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
RETRIES = 5  # attempts after the first
BACKOFF_S = 0.1  # first wait; doubles per attempt, capped at MAX_WAIT_S
MAX_WAIT_S = 2.0
_TRANSIENT_ERRNO = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT, errno.EAGAIN, errno.EIO}


def scheme_of(location: str | Path) -> str:
    text = str(location)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_url(location: str | Path) -> bool:
    """True for a remote URL (not a local path, not file://)."""
    return scheme_of(location) not in ("", "file")


def as_location(location: str | Path) -> str | Path:
    """A local path (file:// URLs included) as a Path; a remote URL as its string, checked for a known scheme."""
    text = str(location)
    scheme = scheme_of(text)
    if scheme == "":
        return Path(location)
    if scheme not in SCHEMES:
        allowed = ", ".join(f"{s}://" for s in SCHEMES)
        msg = f"{text}: unknown URL scheme {scheme!r}; a corpus location is a local path or a URL with {allowed}."
        raise CorpusError(msg)
    if scheme == "file":
        return Path(text[len("file://") :])
    return text.rstrip("/")


def join(location: str | Path, *parts: str) -> str | Path:
    """`location / part / ...` for a Path or a URL."""
    if isinstance(location, Path):
        return location.joinpath(*parts)
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(scheme: str):
    """The fsspec filesystem for a URL scheme; a missing optional package is an error that says what to install.

    One instance per process: an async filesystem made before a DataLoader forked its workers is not fork-safe."""
    return _filesystem(scheme, os.getpid())


@functools.cache
def _filesystem(scheme: str, pid: int):
    import fsspec

    try:
        return fsspec.filesystem(scheme)
    except ImportError as err:
        package = SCHEMES.get(scheme) or str(err)
        msg = (
            f"reading {scheme}:// locations needs the {package!r} package, which is not installed: "
            f"pip install 'scgrn[remote]' (or pip install {package})."
        )
        raise CorpusError(msg) from None


def fs_of(url: str):
    return filesystem(scheme_of(url))


def _status(err: BaseException) -> int | None:
    status = getattr(err, "status", None) or getattr(err, "code", None)  # aiohttp / urllib HTTPError
    if status is None:
        response = getattr(err, "response", None)  # botocore.exceptions.ClientError
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def is_transient(err: BaseException) -> bool:
    """Worth another try: a dropped connection, a timeout, HTTP 429 or 5xx. Not: missing, forbidden, bad data."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, CorpusError)):
        return False
    if type(err).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return False
    status = _status(err)
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(err, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    name = type(err).__name__
    if name in ("ClientConnectionError", "ClientOSError", "ServerDisconnectedError", "ClientPayloadError"):
        return True  # aiohttp, without importing it
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError"):
        return True  # botocore
    if isinstance(err, OSError):
        return err.errno in _TRANSIENT_ERRNO or err.errno is None
    return False


def with_retries(what: str, call: Callable[[], T], *, retries: int = RETRIES) -> T:
    """`call()`, retried on transient errors with exponential backoff; the last failure is raised as it is."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as err:
            if attempt >= retries or not is_transient(err):
                raise
            time.sleep(min(MAX_WAIT_S, BACKOFF_S * 2**attempt))
            attempt += 1


def remote_error(url: str, err: BaseException, doing: str) -> CorpusError:
    """One message for a remote read that failed for good, naming the URL and what to check."""
    if type(err).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        hint = (
            "no credentials were found (set them the way the storage library reads them: AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or a profile in ~/.aws for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://)"
        )
    elif isinstance(err, FileNotFoundError):
        hint = "it does not exist (check the bucket / prefix, or that the corpus was uploaded completely)"
    elif isinstance(err, PermissionError):
        hint = "access was refused (check the credentials in the environment or the library's config files)"
    elif is_transient(err):
        hint = f"it kept failing after {RETRIES} retries ({type(err).__name__}: {str(err)[:200]})"
    else:
        hint = f"{type(err).__name__}: {str(err)[:200]}"
    return CorpusError(f"{url}: cannot {doing}: {hint}.")


def read_bytes(location: str | Path) -> bytes:
    """The whole file (retried when remote)."""
    if isinstance(location, Path):
        return location.read_bytes()
    try:
        return with_retries(location, lambda: fs_of(location).cat_file(location))
    except CorpusError:
        raise
    except Exception as err:
        raise remote_error(location, err, "read it") from err


def _http_exists(url: str) -> bool:
    """HEAD `url`: 404 / 410 is False, a success True, anything else raised (fsspec's http `exists` says False
    for a 503, which would make a busy server look like a missing shard)."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=60).close()
    except urllib.error.HTTPError as err:
        if err.code in (404, 410):
            return False
        raise
    return True


def exists(location: str | Path) -> bool:
    """Does the file exist? For a URL, one request (retried on transient errors); a directory of an object
    store has no object of its own, so ask for a file inside it (a zarr shard's zarr.json)."""
    if isinstance(location, Path):
        return location.exists()
    if scheme_of(location) in ("http", "https"):
        check = functools.partial(_http_exists, location)
    else:
        check = functools.partial(fs_of(location).exists, location)
    try:
        return bool(with_retries(location, check))
    except Exception as err:
        raise remote_error(location, err, "check whether it exists") from err


def open_stream(url: str):
    """A read-once stream of a remote file. http(s): a plain GET (fsspec's random-access file would first ask
    for the size, and it reports a 503 there as a missing file)."""
    fs = fs_of(url)
    if scheme_of(url) in ("http", "https"):
        return fs.open(url, "rb", block_size=0)
    return fs.open(url, "rb", block_size=STREAM_BLOCK)


def missing_root(url: str) -> str | None:
    """For a URL without a manifest: a message when its bucket (s3 / gs) does not exist, else None."""
    scheme = scheme_of(url)
    if scheme not in ("s3", "gs", "gcs"):
        return None
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    root = f"{scheme}://{bucket}"
    if exists(root):
        return None
    return (
        f"{url}: the bucket {bucket!r} does not exist (or these credentials cannot see it). Check the URL, the "
        "endpoint (AWS_ENDPOINT_URL for S3-compatible stores) and the credentials in the environment."
    )


def file_names(location: str | Path) -> list[str]:
    """Every file under a directory, as paths relative to it (sorted); a file gives [""]."""
    if isinstance(location, Path):
        if location.is_file():
            return [""]
        return sorted(str(p.relative_to(location)) for p in location.rglob("*") if p.is_file())
    fs = fs_of(location)
    try:
        found = with_retries(location, lambda: fs.find(location, detail=False))
    except Exception as err:
        raise remote_error(location, err, "list its files") from err
    if not found:
        return []
    stem = fs._strip_protocol(location).rstrip("/")
    names = []
    for path in found:
        rel = fs._strip_protocol(path)[len(stem) :].lstrip("/")
        names.append(rel)
    return sorted(names)


STREAM_BLOCK = 8 << 20  # bytes per remote read when streaming a whole file


def _stream_sha256(url: str) -> str:
    def once() -> str:
        h = hashlib.sha256()
        with open_stream(url) as f:
            while chunk := f.read(STREAM_BLOCK):
                h.update(chunk)
        return h.hexdigest()

    return with_retries(url, once)


def tree_sha256(files: dict[str, bytes]) -> str:
    """`io_utils.sha256_tree` of a directory given as {relative name: contents}."""
    h = hashlib.sha256()
    for name in sorted(files, key=lambda n: PurePosixPath(n).parts):  # sha256_tree's order
        h.update(name.encode())
        h.update(hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def _walk(location: str) -> list[str]:
    """Relative names of every file under a remote directory, one listing request per directory, each retried on
    its own (one `find` is many requests, and a flaky server would fail some of them on every try)."""
    fs = fs_of(location)
    stem = fs._strip_protocol(location).rstrip("/")
    names, todo = [], [location]
    while todo:
        directory = todo.pop()
        try:
            entries = with_retries(directory, lambda d=directory: fs.ls(d, detail=True))
        except CorpusError:
            raise
        except Exception as err:
            raise remote_error(directory, err, "list its files") from err
        for entry in entries:
            name = fs._strip_protocol(entry["name"]).rstrip("/")
            if name == fs._strip_protocol(directory).rstrip("/"):
                continue
            if entry.get("type") == "directory":
                todo.append(join(location, name[len(stem) :].lstrip("/")))
            else:
                names.append(name[len(stem) :].lstrip("/"))
    return sorted(names)


READ_THREADS = 8  # files of a shard fetched at once


def read_tree(location: str) -> dict[str, bytes]:
    """Every file of a remote directory (a zarr shard), each fetched whole (one GET per file, each retried on its own,
    READ_THREADS at a time) instead of one byte-range request per inner chunk. Returns {relative name: contents}."""
    names = _walk(location)
    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="scgrn-fetch") as pool:
        contents = list(pool.map(lambda n: read_bytes(join(location, n)), names))
    return dict(zip(names, contents, strict=True))


def sha256_location(location: str | Path, *, directory: bool) -> str:
    """`io_utils.sha256_tree` of a local path, or the same hash of a remote file or `directory` (streamed; an HTTP
    server cannot say which a URL is, so the caller does: a zarr shard is a directory, a tar a file)."""
    if isinstance(location, Path):
        return sha256_tree(location)
    try:
        if not directory:
            return _stream_sha256(location)
        h = hashlib.sha256()
        for name in sorted(file_names(location), key=lambda n: PurePosixPath(n).parts):  # sha256_tree's order
            h.update(name.encode())
            h.update(bytes.fromhex(_stream_sha256(join(location, name))))
        return h.hexdigest()
    except CorpusError:
        raise
    except Exception as err:
        raise remote_error(location, err, "read it to check its sha256") from err
