"""Corpora in an S3 bucket: moto's S3-compatible server in its own process on 127.0.0.1, started and stopped here.

inspect / validate / a loader epoch from `s3://` equal to the local corpus; a bucket that does not exist, missing
credentials and a manifest naming shards that are not there each get one clear error. Two ranks training from a
bucket: tests/pretrain/test_train_from_s3.py.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest
from conftest import check_inspect_and_validate, run_cli, small_corpus
from servers import corpus_in_a_bucket

from data_prep.corpus import Corpus
from data_prep.errors import CorpusError
from data_prep.loader import StatefulCellLoader, StreamingCellDataset

pytest.importorskip("s3fs", reason="s3:// needs the s3fs package (pip install 'scgrn[remote]')")
pytest.importorskip("moto", reason="the S3 tests need moto[server] (pip install 'scgrn[dev]')")

BUCKET = "scgrn-corpora"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A local corpus (both formats) uploaded to s3://scgrn-corpora/corpus on a moto server: (local dir, URL)."""
    local = small_corpus(tmp_path_factory.mktemp("s3"), 400, seed=41, val_fraction=0.1)
    with corpus_in_a_bucket(local, BUCKET) as url:
        yield local, url


def _ids(location, fmt, rank=0, world=1, workers=0) -> list[str]:
    ds = StreamingCellDataset(
        location, fmt=fmt, rank=rank, world_size=world, seed=3, batch_size=16, block_cells=25, verify_shards=True,
        whole_shards=True,
    )  # fmt: skip
    return [str(c) for b in StatefulCellLoader(ds, num_workers=workers) for c in b.cell_ids]


def test_inspect_and_validate_an_s3_corpus(bucket):
    local, url = bucket
    check_inspect_and_validate(local, url)


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_an_epoch_from_s3_equals_the_local_epoch(bucket, fmt):
    local, url = bucket
    for rank in range(2):
        assert _ids(url, fmt, rank, 2, workers=2) == _ids(local, fmt, rank, 2, workers=2)


def test_a_bucket_that_does_not_exist(bucket):
    with pytest.raises(CorpusError, match="the bucket 'no-such-bucket' does not exist") as err:
        Corpus("s3://no-such-bucket/corpus")
    assert "s3://no-such-bucket/corpus" in str(err.value)
    proc = run_cli("inspect", "s3://no-such-bucket/corpus")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_credentials_are_named(bucket):
    _, url = bucket
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    proc = run_cli("inspect", url, env=env)
    assert proc.returncode == 2, proc.stdout
    assert url in proc.stderr and "credentials" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_manifest_naming_shards_that_are_not_in_the_bucket(bucket):
    import s3fs

    local, _ = bucket
    fs = s3fs.S3FileSystem()
    fs.put(str(local), f"{BUCKET}/partial", recursive=True)
    missing = Corpus(local, "zarr").shards_meta[3]["files"]["zarr"]["path"]
    fs.rm(f"{BUCKET}/partial/{missing}", recursive=True)
    with pytest.raises(CorpusError, match="shard file missing") as err:
        list(itertools.islice(StatefulCellLoader(StreamingCellDataset(f"s3://{BUCKET}/partial", batch_size=8)), 1000))
    assert f"s3://{BUCKET}/partial/{missing}" in str(err.value)


def _shard_until(args: list[str], point: str, marker) -> None:
    """`scgrn shard ARGS` stopped with SIGKILL at test-only pause point `point`."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    from data_prep.io_utils import PAUSE_AT_ENV, PAUSE_MARKER_ENV

    env = {**os.environ, PAUSE_AT_ENV: point, PAUSE_MARKER_ENV: str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "shard", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    reached = marker.exists()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate()
    assert reached, f"never reached {point!r} (exit {proc.returncode}):\n{stderr.decode()}"


def test_shard_to_a_bucket_killed_twice_then_resumed(bucket, tmp_path):
    """Killed while sharding, then killed mid-upload: no manifest.json in the bucket either time (no reader sees a
    partial corpus); --resume finishes; the corpus validates and its shards equal a local run's byte for byte."""
    local, _ = bucket
    url = f"s3://{BUCKET}/sharded"
    h5ad = local.parent / "cells.h5ad"
    args = [str(h5ad), "--out", url, "--staging", str(tmp_path / "stage"), "--cells-per-shard", "100",
            "--cells-per-sample", "25", "--val-fraction", "0.1", "--quiet"]  # fmt: skip
    _shard_until(args, "shard-done:2", tmp_path / "paused-1")
    with pytest.raises(CorpusError, match=r"no manifest\.json"):
        Corpus(url)
    _shard_until([*args, "--resume"], "upload:5", tmp_path / "paused-2")
    with pytest.raises(CorpusError, match=r"no manifest\.json"):
        Corpus(url)
    run_cli("shard", *args, "--resume", check=True)
    proc = run_cli("validate", url)
    assert proc.returncode == 0, proc.stderr
    ours = Corpus(url).manifest
    ref = json.loads((local / "manifest.json").read_text())
    assert [s["files"] for s in ours["shards"]] == [s["files"] for s in ref["shards"]]


def test_shard_to_a_bucket_resumes_from_the_bucket_alone_on_another_machine(bucket, tmp_path):
    """Killed after two shards, the run's state is in the bucket: a plain re-run is refused (it would mix two runs),
    and --resume with a new, empty staging directory (another machine) fetches the bucket's progress records, keeps
    the shards recorded there without writing them again, finishes, and removes the bucket's .progress/."""
    import s3fs

    local, _ = bucket
    url = f"s3://{BUCKET}/elsewhere"
    h5ad = local.parent / "cells.h5ad"
    common = [str(h5ad), "--out", url, "--cells-per-shard", "100", "--cells-per-sample", "25", "--val-fraction",
              "0.1", "--workers", "1", "--quiet"]  # fmt: skip
    _shard_until([*common, "--staging", str(tmp_path / "first")], "shard-done:2", tmp_path / "paused")
    fs = s3fs.S3FileSystem()
    recorded = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{BUCKET}/elsewhere/.progress") if p.endswith("0.json")
                      or p.endswith("1.json"))  # fmt: skip
    assert recorded == ["shard-000000.json", "shard-000001.json"]
    with pytest.raises(CorpusError, match=r"no manifest\.json"):
        Corpus(url)
    again = run_cli("shard", *common, "--staging", tmp_path / "second")
    assert again.returncode != 0 and "holds an unfinished sharding run" in again.stderr and "--resume" in again.stderr
    run_cli("shard", *common, "--staging", tmp_path / "second", "--resume", check=True)
    second = tmp_path / "second"
    assert not list(second.glob("zarr/shard-000000*")) and not list(second.glob("webdataset/shard-000000*"))
    assert list(second.glob("zarr/shard-000002*"))  # written here
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/elsewhere/.progress")
    proc = run_cli("validate", url)
    assert proc.returncode == 0, proc.stderr
    ours = Corpus(url).manifest
    ref = json.loads((local / "manifest.json").read_text())
    assert [s["files"] for s in ours["shards"]] == [s["files"] for s in ref["shards"]]
    assert ours["gene_stats"] == ref["gene_stats"] and ours["totals"] == ref["totals"]


def test_shard_to_a_missing_bucket_or_unknown_scheme_stops_before_any_work(bucket, tmp_path):
    local, _ = bucket
    h5ad = str(local.parent / "cells.h5ad")
    proc = run_cli("shard", h5ad, "--out", "s3://no-such-bucket/c", "--staging", tmp_path / "stage")
    assert proc.returncode == 2 and "the bucket 'no-such-bucket' does not exist" in proc.stderr, proc.stderr
    assert not (tmp_path / "stage").exists()
    proc = run_cli("shard", h5ad, "--out", "ftp://host/c")
    assert proc.returncode == 2 and "unknown URL scheme 'ftp'" in proc.stderr, proc.stderr
