"""Resume anywhere: stop-and-go across epoch ends, and elastic resume on another number of ranks or workers.

Every test compares against the uninterrupted stream: the cell-id sequence (and the epoch each batch belongs to)
must be the same, or, for an elastic resume, every train cell of the interrupted epoch is emitted exactly once."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest
from conftest import make_adata

from data_prep.config import ShardConfig
from data_prep.errors import CorpusError
from data_prep.loader import StatefulCellLoader, StreamingCellDataset
from data_prep.sharder import shard

BATCH = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("epochs")
    make_adata(300, 40, seed=21).write_h5ad(tmp / "a.h5ad")
    manifest = shard(
        ShardConfig(inputs=[tmp / "a.h5ad"], out=tmp / "c", cells_per_shard=100, val_fraction=0.1, cells_per_sample=20),
        progress=False,
    )
    return tmp / "c", manifest["totals"]["n_train"]


def _loader(path, fmt, rank, world, workers, state=None, elastic=None) -> StatefulCellLoader:
    ds = StreamingCellDataset(
        path, fmt=fmt, rank=rank, world_size=world, seed=3, batch_size=BATCH, block_cells=20, window_blocks=2
    )
    loader = StatefulCellLoader(ds, num_workers=workers)
    if state is not None:
        loader.load_state_dict(state)
    if elastic is not None:
        loader.load_elastic_state(elastic)
    return loader


def _take(loader: StatefulCellLoader, n: int) -> list[tuple[int, tuple[str, ...]]]:
    """n batches from the endless stream, each as (epoch, cell ids); the stream is closed afterwards."""
    stream = loader.forever()
    out = [(loader.dataset.epoch, tuple(map(str, b.cell_ids))) for b in itertools.islice(stream, n)]
    stream.close()
    return out


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_stop_and_go_at_every_epoch_end_and_mid_epoch(corpus, fmt, workers, world):
    path, _ = corpus
    for rank in range(world):
        straight = _take(_loader(path, fmt, rank, world, workers), 10_000 // (BATCH * world * 8))
        epochs = [e for e, _ in straight]
        ends = [i + 1 for i in range(len(epochs) - 1) if epochs[i + 1] != epochs[i]]
        assert len(ends) >= 3, f"the stream should cross 3 epochs, crossed {len(ends)}"
        stops = [*ends, ends[0] // 2, ends[1] + 1]  # every epoch end, mid-epoch, and just after an epoch end
        for stop in stops:
            first = _loader(path, fmt, rank, world, workers)
            head = _take(first, stop)
            state = first.state_dict()
            tail = _take(_loader(path, fmt, rank, world, workers, state=state), len(straight) - stop)
            assert head + tail == straight, f"rank {rank}, stopped after batch {stop}"


def test_an_epoch_that_yields_nothing_from_the_start_is_an_error(corpus):
    path, _ = corpus
    ds = StreamingCellDataset(path, rank=63, world_size=64, seed=3, batch_size=BATCH, block_cells=20)
    with pytest.raises(CorpusError, match=r"rank 63 received no train cells in epoch 0.*64 x 1"):
        next(StatefulCellLoader(ds).forever())
    whole = StreamingCellDataset(path, rank=5, world_size=6, seed=3, batch_size=BATCH, whole_shards=True)
    with pytest.raises(CorpusError, match=r"its 3 shard\(s\) are each read whole.*data.whole_shards=false"):
        next(StatefulCellLoader(whole).forever())


def _elastic_run(path, fmt, before: tuple[int, int], after: tuple[int, int], stop: int):
    """Old partition (ranks, workers) streams `stop` batches per rank; the new one resumes from all their states.
    Returns (cells of epoch 0 emitted before, cells of epoch 0 per new rank after, the new loaders)."""
    world, workers = before
    old = [_loader(path, fmt, r, world, workers) for r in range(world)]
    seen = [c for loader in old for _, ids in _take(loader, stop) for c in ids]
    states = [loader.state_dict() for loader in old]
    new_world, new_workers = after
    new = [_loader(path, fmt, r, new_world, new_workers, elastic=states) for r in range(new_world)]
    rest = []
    for loader in new:
        batches = _take(loader, 1000)
        rest.append([c for epoch, ids in batches if epoch == 0 for c in ids])
    return seen, rest, states


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
@pytest.mark.parametrize(("before", "after"), [((2, 0), (1, 0)), ((1, 0), (2, 0)), ((2, 2), (1, 0)), ((1, 2), (2, 2))])
def test_elastic_resume_emits_every_cell_of_the_epoch_exactly_once(corpus, fmt, before, after):
    path, n_train = corpus
    seen, rest, _ = _elastic_run(path, fmt, before, after, stop=3)
    emitted = seen + [c for r in rest for c in r]
    duplicated = [c for c, k in Counter(emitted).items() if k > 1]
    assert not duplicated and len(emitted) == n_train, (len(emitted), n_train, duplicated[:5])
    assert max(map(len, rest)) - min(map(len, rest)) <= 1  # the new ranks share the remnant equally


def test_next_epoch_after_an_elastic_resume_is_the_new_partitions_own(corpus):
    path, _ = corpus
    old = [_loader(path, "zarr", r, 2, 0) for r in range(2)]
    for loader in old:
        _take(loader, 4)
    states = [loader.state_dict() for loader in old]
    resumed = _loader(path, "zarr", 0, 1, 0, elastic=states)
    after = [b for b in _take(resumed, 1000) if b[0] == 1]
    fresh = _loader(path, "zarr", 0, 1, 0)
    fresh.set_epoch(1)
    assert after[: len(after) - 1] == [(1, ids) for _, ids in _take(fresh, len(after) - 1)]


def test_stop_and_go_inside_a_re_partitioned_epoch_and_a_second_elastic_resume(corpus):
    """2 ranks -> 1 rank (state saved in the remnant) -> same 1 rank exact, and -> 2 ranks again: still every
    cell of epoch 0 once."""
    path, n_train = corpus
    old = [_loader(path, "zarr", r, 2, 0) for r in range(2)]
    seen = [c for loader in old for _, ids in _take(loader, 2) for c in ids]
    states = [loader.state_dict() for loader in old]
    straight = _take(_loader(path, "zarr", 0, 1, 0, elastic=states), 6)
    one = _loader(path, "zarr", 0, 1, 0, elastic=states)
    head = _take(one, 3)
    saved = one.state_dict()
    assert saved["remnant"] is not None
    assert head + _take(_loader(path, "zarr", 0, 1, 0, state=saved), 3) == straight
    seen += [c for _, ids in head for c in ids]
    again = [_loader(path, "zarr", r, 2, 0, elastic=[saved]) for r in range(2)]
    seen += [c for loader in again for e, ids in _take(loader, 1000) if e == 0 for c in ids]
    assert len(seen) == len(set(seen)) == n_train


def test_elastic_states_that_do_not_belong_together_are_refused(corpus):
    path, _ = corpus
    a = _loader(path, "zarr", 0, 2, 0)
    _take(a, 2)
    b = _loader(path, "zarr", 1, 2, 0)
    b.set_epoch(1)
    with pytest.raises(CorpusError, match="epoch differs between ranks"):
        _loader(path, "zarr", 0, 1, 0, elastic=[a.state_dict(), b.state_dict()])
    with pytest.raises(CorpusError, match=r"states of ranks \[0\], expected every rank 0..1"):
        _loader(path, "zarr", 0, 1, 0, elastic=[a.state_dict()])


def _worker_pid(batch: dict, generator) -> dict:
    """A batch preparer that records which process prepared the batch."""
    del batch, generator
    return {"pid": os.getpid()}


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_persistent_workers_start_once_and_give_the_batches_of_restarted_ones(corpus, fmt):
    """Over several epochs, workers that persist give the same (epoch, cells) stream as workers re-started every
    epoch, and the same two worker processes prepare every batch."""
    path, n_train = corpus

    def stream(*, persistent: bool) -> list:
        ds = StreamingCellDataset(path, fmt=fmt, seed=3, batch_size=BATCH, block_cells=20, window_blocks=2,
                                  prepare=_worker_pid)  # fmt: skip
        loader = StatefulCellLoader(ds, num_workers=2, persistent_workers=persistent)
        it = loader.forever()
        out = [(ds.epoch, tuple(map(str, b.cell_ids)), b.prepared["pid"]) for b in itertools.islice(it, n_batches)]
        it.close()
        return out

    n_batches = 4 * n_train // BATCH  # about four epochs
    kept, restarted = stream(persistent=True), stream(persistent=False)
    assert [k[:2] for k in kept] == [r[:2] for r in restarted]
    assert len({k[0] for k in kept}) >= 3
    assert len({k[2] for k in kept}) == 2  # two workers for the whole run
    assert len({r[2] for r in restarted}) > 2  # new ones every epoch
