"""`data.cache_dir`: a local, size-bounded copy of the remote shards a process reads (least recently used first out).

A remote shard (a tar, or a zarr shard directory) is downloaded whole, under a temporary name, then renamed into
CACHE/<sha256 of its URL>/<name>; later epochs and other workers / ranks on the node read that copy as a local
shard (the manifest's sha256 is checked on the copy, once per process). After each download the cache is trimmed
to `max_bytes`, evicting entries not used for `min_age_s` seconds, least recently used first (an entry another
process may still be reading is never removed). Without a cache, remote shards are streamed (see remote.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from data_prep import remote

MIN_AGE_S = 120.0  # an entry used this recently is never evicted


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


class ShardCache:
    def __init__(self, directory: Path | str, max_bytes: int, min_age_s: float = MIN_AGE_S) -> None:
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.min_age_s = min_age_s
        self.directory.mkdir(parents=True, exist_ok=True)

    def entry(self, url: str) -> Path:
        return self.directory / hashlib.sha256(url.encode()).hexdigest()[:24]

    def cached(self, url: str) -> Path | None:
        """The cached copy of `url` if there is one (marked as just used), else None."""
        entry = self.entry(url)
        path = entry / url.rstrip("/").rsplit("/", 1)[-1]
        if not path.exists():
            return None
        os.utime(entry)  # least recently used goes first
        return path

    def local_copy(self, url: str, *, directory: bool) -> Path:
        """The cached copy of `url` (a file, or a directory tree when `directory`), downloaded if absent."""
        found = self.cached(url)
        if found is not None:
            return found
        entry = self.entry(url)
        path = entry / url.rstrip("/").rsplit("/", 1)[-1]
        tmp = self.directory / f".{entry.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fs = remote.fs_of(url)
        try:
            if directory:
                for name in remote.file_names(url):
                    target = tmp / path.name / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    remote.with_retries(url, lambda n=name, t=target: fs.get_file(remote.join(url, n), str(t)))
            else:
                remote.with_retries(url, lambda: fs.get_file(url, str(tmp / path.name)))
        except Exception as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise remote.remote_error(url, err, "copy it into data.cache_dir") from err
        try:
            tmp.rename(entry)  # atomic; another process may have won the race, then use its copy
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        self.trim(keep=entry)
        return path

    def entries(self) -> list[Path]:
        return [p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def size(self) -> int:
        return sum(_size(p) for p in self.entries())

    def trim(self, keep: Path | None = None) -> None:
        """Evict least recently used entries (not `keep`, not used in the last `min_age_s`) down to max_bytes."""
        entries = sorted(self.entries(), key=lambda p: p.stat().st_mtime)
        sizes = {p: _size(p) for p in entries}
        total = sum(sizes.values())
        now = time.time()
        for p in entries:
            if total <= self.max_bytes:
                break
            if p == keep or now - p.stat().st_mtime < self.min_age_s:
                continue
            shutil.rmtree(p, ignore_errors=True)
            total -= sizes[p]
