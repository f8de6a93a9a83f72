"""An S3 endpoint that fails: moto's server behind a reverse proxy on 127.0.0.1 (bench.loopback.FaultyProxy) that
answers every 5th request with 503 SlowDown, or flips bytes of one shard's objects. Retries give the exact epoch;
corrupt bytes stop the loader with the shard's URL."""

from __future__ import annotations

import os

import pytest
from conftest import make_adata
from servers import FaultyProxy, corpus_in_a_bucket

from data_prep import remote
from data_prep.config import ShardConfig
from data_prep.corpus import Corpus
from data_prep.errors import CorpusError
from data_prep.loader import StatefulCellLoader, StreamingCellDataset
from data_prep.sharder import shard

pytest.importorskip("s3fs", reason="s3:// needs the s3fs package (pip install 'scgrn[remote]')")
pytest.importorskip("moto", reason="the S3 tests need moto[server] (pip install 'scgrn[dev]')")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """(local corpus, its URL in a moto bucket reached through the faulty proxy, the proxy)."""
    root = tmp_path_factory.mktemp("s3faults")
    make_adata(300, 40, seed=51).write_h5ad(root / "cells.h5ad")
    local = root / "corpus"
    shard(
        ShardConfig(inputs=[root / "cells.h5ad"], out=local, cells_per_shard=100, cells_per_sample=25), progress=False
    )
    with corpus_in_a_bucket(local, "scgrn-faults") as url, FaultyProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url  # restored by corpus_in_a_bucket on exit
        remote._filesystem.cache_clear()
        import fsspec

        fsspec.get_filesystem_class("s3").clear_instance_cache()
        yield local, url, proxy


def _ids(location, fmt) -> list[str]:
    ds = StreamingCellDataset(location, fmt=fmt, seed=5, batch_size=16, block_cells=25, whole_shards=True)
    return [str(c) for b in StatefulCellLoader(ds) for c in b.cell_ids]


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_every_fifth_request_failing_still_gives_the_exact_epoch(proxied, fmt):
    local, url, proxy = proxied
    proxy.faults(fail_every=5)
    try:
        there = _ids(url, fmt)
        assert proxy.failed > 0
    finally:
        proxy.faults()
    assert there == _ids(local, fmt)


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_corrupt_bytes_stop_the_loader_with_the_shards_url(proxied, fmt):
    from data_prep import corpus as corpus_module

    local, url, proxy = proxied
    path = Corpus(local, fmt).shards_meta[1]["files"][fmt]["path"]
    proxy.faults(corrupt=path)
    corpus_module._VERIFIED.clear()  # a fresh process
    try:
        with pytest.raises(CorpusError) as err:
            _ids(url, fmt)
    finally:
        proxy.faults()
    assert f"{url}/{path}" in str(err.value), str(err.value)
