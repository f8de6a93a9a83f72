"""Page-cache control for benchmarks: read files through (warm) or drop their cached pages (cold).

Cold runs use ``posix_fadvise(POSIX_FADV_DONTNEED)`` per file rather than ``drop_caches``: it
needs no root, touches only the benchmark's own files, and leaves other processes' caches alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

READ_BLOCK_BYTES = 1 << 24


def files_under(paths: Iterable[Path]) -> list[Path]:
    """The files named, and every file below the directories named (sorted); missing paths are ignored."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
    return files


def evict_page_cache(paths: Iterable[Path]) -> None:
    """Drop the page-cache pages of these files (directories: recursively) for a cold-cache run.

    ``fdatasync`` first because ``POSIX_FADV_DONTNEED`` only drops clean pages; pages mapped by a
    live ``mmap`` that has touched them are not dropped either, so call this before reading through
    any mapping.
    """
    for path in files_under(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            # Some filesystems refuse fdatasync on a read-only fd; dropping clean pages still works.
            with contextlib.suppress(OSError):
                os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_page_cache(paths: Iterable[Path]) -> None:
    """Read the files (directories: recursively) through once so a warm run starts from RAM."""
    buffer = bytearray(READ_BLOCK_BYTES)
    for path in files_under(paths):
        with path.open("rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass
