"""`scgrn shard ... --out s3://bucket/corpus`: shard into a local staging directory, copy each shard to the bucket
as soon as it is written, manifest last.

A reader opens a corpus through its manifest.json, so a bucket holding shards but no manifest is not (yet) a
corpus, and the manifest goes up only after every other file is there: nobody ever sees a partial corpus.

Resume state lives in the bucket too. Each finished shard goes up as its files, then its gene statistics, then its
`.progress/shard-N.json` record, so a record in the bucket means its shard is complete there (an object store
PUT is all or nothing). `--resume` on any machine, even with an empty staging directory, first downloads the
bucket's `.progress/` (the plan, each finished shard's record and statistics: small files), keeps every shard
recorded there without reading it back, writes the rest, and uploads what the bucket does not yet hold with the
same size. After the manifest, the bucket's `.progress/` is removed. The staging directory defaults to
`$TMPDIR/scgrn-staging/<hash of the URL>` (`--staging DIR` elsewhere).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from data_prep import remote
from data_prep.errors import CorpusError
from data_prep.io_utils import pause_point
from data_prep.manifest import MANIFEST_NAME
from data_prep.shard_task import PROGRESS_DIR

log = logging.getLogger("scgrn.shard")
CORPUS_FILES = ("vocab.json", "mapping_report.json", "unmapped_genes.tsv")  # besides shards and the manifest


def staging_dir(url: str, staging: Path | None = None) -> Path:
    if staging is not None:
        return Path(staging)
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "scgrn-staging" / key


def check_destination(url: str, *, resume: bool = False) -> None:
    """Fail before any sharding work when the bucket is missing or the credentials cannot reach it, or when it
    holds an unfinished run and this is not a resume."""
    problem = remote.missing_root(url)
    if problem is not None:
        raise CorpusError(problem)
    if not resume and remote.exists(remote.join(url, PROGRESS_DIR, "plan.json")):
        msg = (
            f"{url} holds an unfinished sharding run ({PROGRESS_DIR}/plan.json). Pass --resume to finish it (from "
            f"any machine), or delete {remote.join(url, PROGRESS_DIR)} to start over."
        )
        raise CorpusError(msg)
    if remote.exists(remote.join(url, MANIFEST_NAME)):
        log.info("%s already holds a manifest.json: it is replaced when the upload finishes", url)


def _tree(local: Path, relative: str) -> list[str]:
    """`relative` (a file, or a zarr directory walked file by file) as relative file names under `local`."""
    path = local / relative
    if path.is_dir():
        return [str(p.relative_to(local)) for p in sorted(path.rglob("*")) if p.is_file()]
    return [relative]


def _put(src: Path, dst: str, *, only_if_different: bool = True) -> bool:
    """Upload one file with retries, skipping it when the bucket holds one of the same size. True if sent."""
    fs = remote.fs_of(dst)
    try:
        if only_if_different:
            there = remote.with_retries(dst, lambda: fs.size(dst) if fs.exists(dst) else None)
            if there == src.stat().st_size:
                return False
        remote.with_retries(dst, lambda: fs.put_file(str(src), dst))
    except CorpusError:
        raise
    except Exception as err:
        raise remote.remote_error(dst, err, "upload it") from err
    return True


def _record_name(record: dict) -> str:
    return f"shard-{record['index']:06d}"


def mirror_shard(local: Path, url: str, record: dict) -> None:
    """Copy a shard just written to the staging directory to the bucket: its files, the plan, its gene statistics,
    and its `.progress` record last (the record in the bucket is the promise that the rest is there)."""
    name = _record_name(record)
    files = [f for info in record["files"].values() for f in _tree(local, info["path"])]
    files += [f"{PROGRESS_DIR}/plan.json", f"{PROGRESS_DIR}/{name}.stats.npz", f"{PROGRESS_DIR}/{name}.json"]
    for f in files:
        _put(local / f, remote.join(url, f))


def restore_progress(url: str, local: Path) -> int:
    """Download the bucket's `.progress/` files the staging directory lacks (a resume on another machine, or after
    the staging directory was lost). Returns how many were fetched."""
    progress = remote.join(url, PROGRESS_DIR)
    fs = remote.fs_of(url)
    try:
        names = remote.with_retries(progress, lambda: fs.find(progress)) if fs.exists(progress) else []
    except Exception as err:
        raise remote.remote_error(progress, err, "list it") from err
    fetched = 0
    for there in names:
        target = local / PROGRESS_DIR / Path(there).name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".download")
        try:
            remote.with_retries(there, lambda there=there, partial=partial: fs.get_file(there, str(partial)))
        except Exception as err:
            raise remote.remote_error(there, err, "download it") from err
        partial.replace(target)
        fetched += 1
    if fetched:
        log.info("resume: fetched %d progress file(s) from %s", fetched, progress)
    return fetched


def recorded_in_bucket(url: str) -> Callable[[dict], bool]:
    """For `shard(kept_elsewhere=...)`: is this shard's record in the bucket (so its files are all there)?"""

    def check(record: dict) -> bool:
        return remote.exists(remote.join(url, PROGRESS_DIR, f"{_record_name(record)}.json"))

    return check


def corpus_files(local: Path, manifest: dict) -> list[str]:
    """Relative names of every file a reader needs, except the manifest, of the shards present in `local`
    (a shard kept in the bucket by a resume has no local copy)."""
    names = [n for n in CORPUS_FILES if (local / n).exists()]
    for shard in manifest["shards"]:
        for info in shard["files"].values():
            if (local / info["path"]).exists():
                names += _tree(local, info["path"])
    return names


def upload_corpus(local: Path, url: str, manifest: dict) -> int:
    """Upload the finished staging corpus to `url`, skipping files already there with the same size; manifest.json
    last, then the bucket's `.progress/` is removed. Returns the number of files sent."""
    missing = [
        info["path"]
        for shard in manifest["shards"]
        for info in shard["files"].values()
        if not (local / info["path"]).exists() and not recorded_in_bucket(url)(shard)
    ]
    if missing:
        msg = (
            f"{url}: shard(s) {missing[:5]} are neither in the staging directory {local} nor recorded as uploaded in "
            f"the bucket; run the same command with --resume to write them again."
        )
        raise CorpusError(msg)
    sent = 0
    for i, name in enumerate(corpus_files(local, manifest)):
        sent += _put(local / name, remote.join(url, name))
        pause_point(f"upload:{i}")
    _put(local / MANIFEST_NAME, remote.join(url, MANIFEST_NAME), only_if_different=False)
    progress = remote.join(url, PROGRESS_DIR)
    fs = remote.fs_of(url)
    try:
        if fs.exists(progress):
            remote.with_retries(progress, lambda: fs.rm(progress, recursive=True))
    except Exception as err:  # the corpus is complete; a leftover .progress/ is harmless, so say so and go on
        log.warning("%s: could not remove %s (%s); the corpus is complete, delete it by hand", url, progress, err)
    return sent + 1
