"""Streaming loader: partition over ranks x workers, stop-and-go, epochs, state validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import make_adata

from data_prep.config import ShardConfig
from data_prep.errors import CorpusError
from data_prep.loader import StatefulCellLoader, StreamingCellDataset
from data_prep.sharder import shard


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    make_adata(700, 40, seed=11).write_h5ad(tmp / "a.h5ad")
    b = make_adata(260, 30, seed=12)
    b.obs_names = [f"cell{10_000 + i:05d}" for i in range(b.n_obs)]  # ids unique across inputs
    b.write_h5ad(tmp / "b.h5ad")
    manifest = shard(
        ShardConfig(
            inputs=[tmp / "a.h5ad", tmp / "b.h5ad"],
            out=tmp / "c",
            cells_per_shard=150,
            val_fraction=0.1,
            cells_per_sample=20,
        ),
        progress=False,
    )
    return tmp / "c", manifest


def _ids(batches) -> list[str]:
    return [str(c) for b in batches for c in b.cell_ids]


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_two_ranks_two_workers_cover_train_split_exactly_once(corpus_dir, fmt):
    path, manifest = corpus_dir
    seen: list[str] = []
    for rank in range(2):
        ds = StreamingCellDataset(path, fmt=fmt, rank=rank, world_size=2, seed=5, batch_size=32, block_cells=20)
        loader = StatefulCellLoader(ds, num_workers=2)
        seen += _ids(loader)
    assert len(seen) == len(set(seen)) == manifest["totals"]["n_train"]


def test_epochs_reshuffle_and_are_reproducible(corpus_dir):
    path, _ = corpus_dir
    ds = StreamingCellDataset(path, seed=1, batch_size=64, block_cells=25)
    e0 = _ids(ds)
    ds.set_epoch(1)
    e1 = _ids(ds)
    assert sorted(e0) == sorted(e1) and e0 != e1
    ds.set_epoch(0)
    assert _ids(ds) == e0


def test_shuffle_mixes_shards_and_inputs(corpus_dir):
    path, _ = corpus_dir
    first = _ids(StreamingCellDataset(path, seed=0, batch_size=128, block_cells=25, window_blocks=8))[:128]
    from_b = [c for c in first if int(c[4:]) >= 10_000]
    assert 0 < len(from_b) < 128  # both inputs in the first batch
    positions = sorted(int(c[4:]) for c in first if int(c[4:]) < 10_000)
    assert positions[-1] - positions[0] > 300  # and cells from far apart in the first input


@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_stop_and_go_resumes_exactly(corpus_dir, num_workers):
    """BioNeMo-style stop-and-go: N batches, save, new loader, load, rest == uninterrupted run."""
    path, _ = corpus_dir

    def make():
        return StatefulCellLoader(
            StreamingCellDataset(path, seed=9, batch_size=24, block_cells=20, window_blocks=3), num_workers=num_workers
        )

    full = list(make())
    # Stop early, mid-way, and near the end (after some workers have run out of cells).
    for stop in (1, 7, len(full) // 2, len(full) - 2):
        loader = make()
        it = iter(loader)
        head = [next(it) for _ in range(stop)]
        state = loader.state_dict()
        del it
        resumed = make()
        resumed.load_state_dict(state)
        got = head + list(resumed)
        assert len(got) == len(full), stop
        for a, b in zip(got, full, strict=True):
            np.testing.assert_array_equal(a.cell_ids, b.cell_ids)
            np.testing.assert_array_equal(a.gene_ids, b.gene_ids)
            np.testing.assert_array_equal(a.values, b.values)


def test_per_cell_stop_and_go(corpus_dir):
    path, _ = corpus_dir
    full = [c["cell_id"] for c in StreamingCellDataset(path, seed=4, block_cells=30)]
    ds = StreamingCellDataset(path, seed=4, block_cells=30)
    it = iter(ds)
    head = [next(it) for _ in range(101)]
    ds.cursors[head[-1]["consumer"]] = head[-1]["cursor"]
    rest = StreamingCellDataset(path, seed=4, block_cells=30)
    rest.load_state_dict(ds.state_dict())
    assert [c["cell_id"] for c in head] + [c["cell_id"] for c in rest] == full


def test_state_mismatch_is_refused(corpus_dir):
    path, _ = corpus_dir
    a = StatefulCellLoader(StreamingCellDataset(path, seed=1, batch_size=8), num_workers=0)
    state = a.state_dict()
    with pytest.raises(CorpusError, match="seed"):
        StatefulCellLoader(StreamingCellDataset(path, seed=2, batch_size=8)).load_state_dict(state)
    with pytest.raises(CorpusError, match="worker"):
        StatefulCellLoader(StreamingCellDataset(path, seed=1, batch_size=8), num_workers=2).load_state_dict(state)


def test_batches_pack_without_padding(corpus_dir):
    path, _ = corpus_dir
    batch = next(iter(StreamingCellDataset(path, batch_size=16)))
    t = batch.to_torch()
    assert t["cu_seqlens"].shape == (17,) and int(t["cu_seqlens"][-1]) == t["gene_ids"].shape[0]
    assert t["values"].dtype.is_floating_point


def test_bad_arguments(corpus_dir):
    path, _ = corpus_dir
    with pytest.raises(ValueError, match="split"):
        StreamingCellDataset(path, split="test")
    with pytest.raises(ValueError, match="rank"):
        StreamingCellDataset(path, rank=2, world_size=2)


# ---------------------------------------------------------------------------------------------------------------------
# token-budget batches (data.micro_batch_tokens): equal work per micro batch whatever the cell lengths


def _token_loader(path, rank=0, world_size=1, num_workers=0, fmt=None, seed=9):
    ds = StreamingCellDataset(
        path,
        fmt=fmt,
        rank=rank,
        world_size=world_size,
        seed=seed,
        batch_size=1,
        block_cells=20,
        window_blocks=3,
        batch_tokens=60,
        token_cap=12,
    )
    return StatefulCellLoader(ds, num_workers=num_workers)


def test_token_batches_fill_the_budget_and_keep_the_cell_order(corpus_dir):
    """Each batch's capped tokens (min(L, 12) per cell) are <= 60, and adding the next cell of the stream would
    have gone over: batches are full. The concatenated cells equal the consumer's N-cell-batch stream."""
    path, _ = corpus_dir
    batches = list(_token_loader(path))
    by_cells = _ids(StreamingCellDataset(path, seed=9, batch_size=7, block_cells=20, window_blocks=3))
    assert _ids(batches) == by_cells
    costs = [np.minimum(np.diff(b.indptr), 12) for b in batches]
    assert all(c.sum() <= 60 for c in costs)
    for current, following in itertools.pairwise(costs):
        assert current.sum() + following[0] > 60
    assert len({len(c) for c in costs}) > 1  # the cell count varies; the token count is what is held level


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_token_batches_two_ranks_two_workers_cover_train_split_exactly_once(corpus_dir, fmt):
    path, manifest = corpus_dir
    seen = [c for rank in range(2) for c in _ids(_token_loader(path, rank, 2, num_workers=2, fmt=fmt))]
    assert len(seen) == len(set(seen)) == manifest["totals"]["n_train"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_token_batches_stop_and_go_resume_exactly(corpus_dir, num_workers):
    path, _ = corpus_dir
    full = list(_token_loader(path, num_workers=num_workers))
    for stop in (1, 9, len(full) // 2, len(full) - 2):
        loader = _token_loader(path, num_workers=num_workers)
        it = iter(loader)
        head = [next(it) for _ in range(stop)]
        state = loader.state_dict()
        del it
        resumed = _token_loader(path, num_workers=num_workers)
        resumed.load_state_dict(state)
        got = head + list(resumed)
        assert len(got) == len(full), stop
        for a, b in zip(got, full, strict=True):
            np.testing.assert_array_equal(a.cell_ids, b.cell_ids)
            np.testing.assert_array_equal(a.values, b.values)


def test_token_budget_below_the_cap_is_refused(corpus_dir):
    path, _ = corpus_dir
    with pytest.raises(ValueError, match="budget must be >= the cap"):
        StreamingCellDataset(path, batch_size=1, batch_tokens=10, token_cap=12)


def test_a_shard_is_hashed_once_per_process_and_again_after_it_changes(corpus_dir, tmp_path, monkeypatch):
    """Loaders re-create their Corpus every epoch (workers) and evaluation; verification hashes a shard once per
    process, and again when its files change (size or mtime), which then fails as before."""
    import shutil

    from data_prep import remote
    from data_prep.corpus import Corpus

    path = tmp_path / "c"
    shutil.copytree(corpus_dir[0], path)
    calls = []
    real = remote.sha256_tree  # what Corpus's verification calls for a local shard
    monkeypatch.setattr(remote, "sha256_tree", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        Corpus(path, "zarr", verify=True).shard(0)
    assert len(calls) == 1
    chunk = max(
        (q for q in (path / Corpus(path, "zarr").shards_meta[0]["files"]["zarr"]["path"]).rglob("*") if q.is_file()),
        key=lambda q: q.stat().st_size,
    )
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match="sha256 does not match"):
        Corpus(path, "zarr", verify=True).shard(0)
    assert len(calls) == 2
