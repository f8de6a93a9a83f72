"""Small file helpers: atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from data_prep.test_hooks import read_hook


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers see old or new, never half."""
    atomic_write_bytes(path, text.encode())


def published_mode() -> int:
    """The mode a plain open() gives a new file: 0666 less the process umask (0644 under the usual 022).

    mkstemp's 0600 is for the temporary name only; finished files are shared like any other file the user writes."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def publish(tmp: Path | str, path: Path | str) -> None:
    """Give a finished temporary file its final mode (see `published_mode`) and rename it over `path` (atomic)."""
    Path(tmp).chmod(published_mode())
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def out_dir_problem(path: Path | str) -> str | None:
    """Why `path` cannot be an output directory (a symlink loop, a file, an unwritable parent), or None."""
    path = Path(path)
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError) as err:  # RuntimeError: "Symlink loop" (Python 3.11)
        return f"cannot be resolved ({err}); point it at a real directory"
    if resolved.exists() and not resolved.is_dir():
        return "exists and is not a directory; choose a directory path"
    parent = next((p for p in [resolved, *resolved.parents] if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created or written ({parent} is not writable); choose a writable location"
    return None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: Path) -> str:
    """Hash of a file, or of a directory's files (relative names + contents, sorted): a zarr store is a tree."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


# Test-only: `tests/data_prep/test_kill_shard.py` sets these to stop a real `scgrn shard` at a named point and
# SIGKILL it there. Unset in normal runs, where a pause point costs one environment lookup.
PAUSE_AT_ENV = "SCGRN_TEST_PAUSE_AT"
PAUSE_MARKER_ENV = "SCGRN_TEST_PAUSE_MARKER"


def pause_point(name: str) -> None:
    """Test-only hook: if `$SCGRN_TEST_PAUSE_AT == name`, create `$SCGRN_TEST_PAUSE_MARKER` and sleep until killed.

    Points: `zarr-tmp:K` (shard K's zarr is complete under its temporary name, not yet renamed), `shard-done:K`
    (shard K's files are in place, its `.progress` record not yet written), `before-manifest` (every shard is
    done, manifest.json not yet written). Never set these outside tests.
    """
    if read_hook(PAUSE_AT_ENV) != name:
        return
    marker = os.environ.get(PAUSE_MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{os.getpid()}\n")
    while True:
        time.sleep(3600)
