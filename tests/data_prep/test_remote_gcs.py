"""Corpora in a Google Cloud Storage bucket: gcp-storage-emulator's GCS API in its own process on 127.0.0.1,
started and stopped here, read through gcsfs as any gs:// URL is.

inspect / validate from gs:// agree with the local corpus, a loader epoch from gs:// equals the local epoch cell for
cell (both formats, shards read whole), and `scgrn shard --out gs://...` writes a corpus that validates.
"""

from __future__ import annotations

import json

import pytest
from conftest import check_inspect_and_validate, run_cli, small_corpus
from servers import corpus_in_a_gcs_bucket

from data_prep.corpus import Corpus
from data_prep.loader import StatefulCellLoader, StreamingCellDataset

pytest.importorskip("gcsfs", reason="gs:// needs the gcsfs package (pip install 'scgrn[remote]')")
pytest.importorskip("gcp_storage_emulator", reason="the GCS tests need gcp-storage-emulator (pip install 'scgrn[dev]')")

BUCKET = "scgrn-gcs"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A local corpus (both formats) copied to gs://scgrn-gcs/corpus on the emulator: (local dir, URL)."""
    local = small_corpus(tmp_path_factory.mktemp("gcs"), 300, seed=43)
    with corpus_in_a_gcs_bucket(local, BUCKET) as url:
        yield local, url


def _ids(location, fmt: str) -> list[str]:
    ds = StreamingCellDataset(location, fmt=fmt, seed=11, batch_size=16, verify_shards=True, whole_shards=True)
    return [str(c) for b in StatefulCellLoader(ds, num_workers=2) for c in b.cell_ids]


def test_inspect_and_validate_a_gcs_corpus(bucket):
    local, url = bucket
    check_inspect_and_validate(local, url)


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_an_epoch_from_gcs_equals_the_local_epoch(bucket, fmt):
    local, url = bucket
    ids = _ids(url, fmt)
    assert ids == _ids(local, fmt) and len(ids) == Corpus(local).manifest["totals"]["n_train"]


def test_shard_to_a_gcs_bucket(bucket, tmp_path):
    local, _ = bucket
    url = f"gs://{BUCKET}/sharded"
    proc = run_cli("shard", local.parent / "cells.h5ad", "--out", url, "--staging", tmp_path / "stage",
                   "--cells-per-shard", "100", "--cells-per-sample", "25", "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert run_cli("validate", url).returncode == 0
    ours, ref = Corpus(url).manifest, json.loads((local / "manifest.json").read_text())
    assert [s["files"] for s in ours["shards"]] == [s["files"] for s in ref["shards"]]
