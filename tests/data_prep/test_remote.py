"""Corpora at URLs, read through fsspec from real servers on 127.0.0.1 that the tests start and stop themselves.

HTTP (the standard library's server, plus byte ranges): inspect, validate, a loader epoch equal to the local epoch
cell for cell, stop-and-go equal to uninterrupted, retries through a server that fails every 5th request, and a
corrupt shard stopping the loader with its URL.
"""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
from conftest import make_adata, run_cli
from servers import FileServer

from data_prep import corpus as corpus_module
from data_prep import remote
from data_prep.config import ShardConfig
from data_prep.corpus import Corpus
from data_prep.errors import CorpusError
from data_prep.loader import StatefulCellLoader, StreamingCellDataset
from data_prep.sharder import shard

FORMATS = ["zarr", "webdataset"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A 600-cell corpus in both formats (4 shards), served over HTTP: (local dir, URL, server)."""
    root = tmp_path_factory.mktemp("remote")
    make_adata(600, 40, seed=31).write_h5ad(root / "cells.h5ad")
    shard(
        ShardConfig(
            inputs=[root / "cells.h5ad"], out=root / "www" / "corpus", cells_per_shard=150, cells_per_sample=25
        ),
        progress=False,
    )
    with FileServer(root / "www") as server:
        yield root / "www" / "corpus", f"{server.url}/corpus", server


def _epoch(location, fmt, *, rank=0, world=1, workers=0, n=None, state=None, verify=True):
    ds = StreamingCellDataset(
        location, fmt=fmt, rank=rank, world_size=world, seed=7, batch_size=32, block_cells=25, verify_shards=verify,
        whole_shards=True,
    )  # fmt: skip
    loader = StatefulCellLoader(ds, num_workers=workers)
    if state is not None:
        loader.load_state_dict(state)
    batches = list(itertools.islice(loader, n)) if n is not None else list(loader)
    return [str(c) for b in batches for c in b.cell_ids], loader


def test_a_url_is_told_apart_from_a_path():
    assert remote.as_location("corpus") == remote.as_location("file://corpus")
    assert remote.as_location("https://h/x/") == "https://h/x" and remote.is_url("s3://b/c")
    with pytest.raises(CorpusError, match=r"ftp://h/c: unknown URL scheme 'ftp'.*s3://, gs://"):
        remote.as_location("ftp://h/c")


def test_inspect_and_validate_read_a_url(served):
    local, url, _ = served
    here = json.loads(run_cli("inspect", local, "--json", check=True).stdout)
    there = json.loads(run_cli("inspect", url, "--json", check=True).stdout)
    assert there.pop("directory") == url and here.pop("directory") == str(local)
    assert there == here
    proc = run_cli("validate", url)
    assert proc.returncode == 0 and f"{url}: valid" in proc.stdout, proc.stderr


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_epoch_from_a_url_equals_the_local_epoch_cell_for_cell(served, fmt):
    local, url, _ = served
    for rank in range(2):
        here, _ = _epoch(local, fmt, rank=rank, world=2, workers=2)
        there, _ = _epoch(url, fmt, rank=rank, world=2, workers=2)
        assert there == here and len(here) > 200


@pytest.mark.parametrize("fmt", FORMATS)
def test_stop_and_go_from_a_url_equals_uninterrupted(served, fmt):
    _, url, _ = served
    straight, _ = _epoch(url, fmt)
    head, first = _epoch(url, fmt, n=5)
    tail, _ = _epoch(url, fmt, state=first.state_dict())
    assert head + tail == straight


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_server_failing_every_fifth_request_still_gives_the_exact_epoch(served, fmt):
    local, url, server = served
    here, _ = _epoch(local, fmt)
    server.faults(fail_every=5)
    try:
        there, _ = _epoch(url, fmt)
        assert server.failed > 0
    finally:
        server.faults()
    assert there == here


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_corrupt_shard_stops_the_loader_with_its_url(served, fmt):
    local, url, server = served
    info = Corpus(local, fmt).shards_meta[1]["files"][fmt]
    target = local / info["path"]
    if target.is_dir():  # zarr: the largest chunk file of the shard
        target = max((p for p in target.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    server.faults(corrupt=target)
    corpus_module._VERIFIED.clear()  # a fresh process: earlier tests here hashed (and passed) these URLs
    try:
        # a flipped byte in a tar header fails the tar's own checksum first; elsewhere, the shard's sha256
        with pytest.raises(CorpusError, match=r"sha256 does not match|unreadable or truncated tar") as err:
            _epoch(url, fmt)
        validate = run_cli("validate", url)
    finally:
        server.faults()
    assert f"{url}/{info['path']}" in str(err.value)
    assert validate.returncode == 1 and f"{url}/{info['path']}" in validate.stderr, validate.stderr


def test_a_manifest_naming_a_missing_shard_is_one_clear_error(served, tmp_path):
    local, _, _ = served
    copy = tmp_path / "www" / "corpus"
    shutil.copytree(local, copy)
    info = Corpus(copy, "webdataset").shards_meta[2]["files"]["webdataset"]
    (copy / info["path"]).unlink()
    with FileServer(tmp_path / "www") as server:
        url = f"{server.url}/corpus"
        with pytest.raises(CorpusError, match="shard file missing") as err:
            _epoch(url, "webdataset")
        assert f"{url}/{info['path']}" in str(err.value)
        proc = run_cli("validate", url)
        assert proc.returncode == 1 and f"{url}/{info['path']}: missing" in proc.stderr
        with pytest.raises(CorpusError, match=r"no manifest\.json") as err:
            Corpus(f"{server.url}/nothing-here")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_cache_dir_serves_later_epochs_from_local_copies(served, tmp_path, fmt):
    """data.cache_dir: the first epoch copies the shards it reads (same cells as streaming); the next epoch reads
    them from the cache: only the manifest is fetched again."""
    local, url, server = served
    here, _ = _epoch(local, fmt)

    def epoch(n_epoch):
        ds = StreamingCellDataset(
            url, fmt=fmt, seed=7, batch_size=32, block_cells=25, verify_shards=True, whole_shards=True,
            cache_dir=tmp_path / "cache", cache_bytes=10**9, epoch=n_epoch,
        )  # fmt: skip
        return [str(c) for b in ds for c in b.cell_ids]

    server.faults()  # resets the request counter
    assert epoch(0) == here
    first = server.server.requests
    second_epoch = epoch(1)
    assert server.server.requests - first <= 3, (first, server.server.requests)  # manifest only
    assert sorted(second_epoch) == sorted(here) and second_epoch != here  # reshuffled, same cells
    assert len(list((tmp_path / "cache").iterdir())) == 4  # the four shards


def test_the_cache_stays_within_its_bound(served, tmp_path):
    from data_prep.shard_cache import ShardCache

    local, url, _ = served
    corpus = Corpus(local, "webdataset")
    sizes = [(local / s["files"]["webdataset"]["path"]).stat().st_size for s in corpus.shards_meta]
    cache = ShardCache(tmp_path / "cache", max_bytes=2 * max(sizes), min_age_s=0)
    for s in corpus.shards_meta:
        cache.local_copy(f"{url}/{s['files']['webdataset']['path']}", directory=False)
        assert cache.size() <= 2 * max(sizes)
    assert len(cache.entries()) == 2  # the two most recent
