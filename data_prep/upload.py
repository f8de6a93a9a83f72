"""`scgrn shard ... --out s3://bucket/corpus`: shard into a local staging directory, then upload, manifest last.

A reader opens a corpus through its manifest.json, so a bucket holding shards but no manifest is not (yet) a
corpus, and the manifest goes up only after every other file is there: nobody ever sees a partial corpus. The
staging directory is the ordinary resumable sharding output; `--resume` finishes it and then uploads only what the
bucket does not already hold with the same size. Limitation: the resume state is the staging directory, so a
resume must run where the interrupted run staged (default `$TMPDIR/scgrn-staging/<hash of the URL>`, or
`--staging DIR` on shared storage).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from data_prep import remote
from data_prep.errors import CorpusError
from data_prep.io_utils import pause_point
from data_prep.manifest import MANIFEST_NAME

log = logging.getLogger("scgrn.shard")
CORPUS_FILES = ("vocab.json", "mapping_report.json", "unmapped_genes.tsv")  # besides shards and the manifest


def staging_dir(url: str, staging: Path | None = None) -> Path:
    if staging is not None:
        return Path(staging)
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "scgrn-staging" / key


def check_destination(url: str) -> None:
    """Fail before any sharding work when the bucket is missing or the credentials cannot reach it."""
    problem = remote.missing_root(url)
    if problem is not None:
        raise CorpusError(problem)
    if remote.exists(remote.join(url, MANIFEST_NAME)):
        log.info("%s already holds a manifest.json: it is replaced when the upload finishes", url)


def corpus_files(local: Path, manifest: dict) -> list[str]:
    """Relative names of every file a reader needs, except the manifest (shard trees walked file by file)."""
    names = [n for n in CORPUS_FILES if (local / n).exists()]
    for shard in manifest["shards"]:
        for info in shard["files"].values():
            path = local / info["path"]
            if path.is_dir():
                names += [str(p.relative_to(local)) for p in sorted(path.rglob("*")) if p.is_file()]
            else:
                names.append(info["path"])
    return names


def upload_corpus(local: Path, url: str, manifest: dict) -> int:
    """Upload the finished staging corpus to `url`, skipping files already there with the same size; manifest.json
    last. Returns the number of files sent."""
    fs = remote.fs_of(url)
    sent = 0
    for i, name in enumerate(corpus_files(local, manifest)):
        src, dst = local / name, remote.join(url, name)
        size = src.stat().st_size
        try:
            there = remote.with_retries(dst, lambda dst=dst: fs.size(dst) if fs.exists(dst) else None)
            if there != size:
                remote.with_retries(dst, lambda src=src, dst=dst: fs.put_file(str(src), dst))
                sent += 1
        except CorpusError:
            raise
        except Exception as err:
            raise remote.remote_error(dst, err, "upload it") from err
        pause_point(f"upload:{i}")
    manifest_url = remote.join(url, MANIFEST_NAME)
    try:
        remote.with_retries(manifest_url, lambda: fs.put_file(str(local / MANIFEST_NAME), manifest_url))
    except Exception as err:
        raise remote.remote_error(manifest_url, err, "upload it") from err
    return sent + 1
