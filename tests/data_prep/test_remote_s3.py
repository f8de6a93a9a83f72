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
from conftest import make_adata, run_cli
from servers import corpus_in_a_bucket

from data_prep.config import ShardConfig
from data_prep.corpus import Corpus
from data_prep.errors import CorpusError
from data_prep.loader import StatefulCellLoader, StreamingCellDataset
from data_prep.sharder import shard

pytest.importorskip("s3fs", reason="s3:// needs the s3fs package (pip install 'scgrn[remote]')")
pytest.importorskip("moto", reason="the S3 tests need moto[server] (pip install 'scgrn[dev]')")

BUCKET = "scgrn-corpora"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A local corpus (both formats) uploaded to s3://scgrn-corpora/corpus on a moto server: (local dir, URL)."""
    root = tmp_path_factory.mktemp("s3")
    make_adata(400, 40, seed=41).write_h5ad(root / "cells.h5ad")
    local = root / "corpus"
    shard(
        ShardConfig(
            inputs=[root / "cells.h5ad"], out=local, cells_per_shard=100, cells_per_sample=25, val_fraction=0.1
        ),
        progress=False,
    )
    with corpus_in_a_bucket(local, BUCKET) as url:
        yield local, url


def _ids(location, fmt, rank=0, world=1, workers=0) -> list[str]:
    ds = StreamingCellDataset(
        location, fmt=fmt, rank=rank, world_size=world, seed=3, batch_size=16, block_cells=25, verify_shards=True,
        stream_tars=True,
    )  # fmt: skip
    return [str(c) for b in StatefulCellLoader(ds, num_workers=workers) for c in b.cell_ids]


def test_inspect_and_validate_an_s3_corpus(bucket):
    local, url = bucket
    here = json.loads(run_cli("inspect", local, "--json", check=True).stdout)
    there = json.loads(run_cli("inspect", url, "--json", check=True).stdout)
    here.pop("directory"), there.pop("directory")
    assert there == here
    proc = run_cli("validate", url)
    assert proc.returncode == 0 and f"{url}: valid" in proc.stdout, proc.stderr


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
