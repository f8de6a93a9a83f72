"""Streaming loader: every train cell exactly once per epoch across ranks x workers, shuffled, resumable.

Single-device code: rank and world size come in as arguments; no process-group calls happen here.

How an epoch is laid out (deterministic from seed + epoch):
1. The corpus is cut into *units*: cell ranges of `block_cells` in zarr shards, or tar samples in webdataset
   shards. Units are permuted with rng(seed, epoch).
2. Consumer c of n = world_size x num_workers (c = rank x num_workers + worker_id) takes units perm[c::n], so
   every unit, hence every cell, goes to exactly one consumer.
3. A consumer reads its units in *windows* of `window_blocks` units, keeps the requested split, permutes the
   window's cells with rng(seed, epoch, c, window) and emits them (block shuffle + buffer, as scDataset does).
A consumer's position is a cursor (window, cells emitted in it); restoring it reproduces the remaining sequence
exactly, because everything before it is recomputed from the seed. Batches are cut from each consumer's cell
stream; `StatefulCellLoader` tracks the cursors of batches the training loop has consumed.
4. Optionally (`prepare`, the model's batch preparer: gene sampling, binning, masking) each batch is turned into
   model inputs where it is cut, in the worker, with a torch generator seeded by (seed, epoch, consumer, cursor):
   the same batch always gets the same draws, so the draws need no state of their own and resume exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep import remote
from data_prep.cell_block import SPLIT_TRAIN, SPLIT_VAL, BlockList, CellBlock
from data_prep.corpus import Corpus
from data_prep.errors import CorpusError
from data_prep.shard_cache import ShardCache

SPLITS = {"train": SPLIT_TRAIN, "val": SPLIT_VAL, "all": None}


@dataclass
class CellBatch(CellBlock):
    """A packed batch (CSR over cells) plus where it came from, for exact resume."""

    consumer: int = 0
    cursor: tuple[int, int] = (0, 0)  # (window, cells emitted in it) *after* this batch
    prepared: dict | None = None  # the model's inputs, when the dataset has a `prepare` (tensors and host ints)

    def to_torch(self) -> dict[str, torch.Tensor]:
        """Packed tensors for a varlen transformer: `cu_seqlens` (B+1,) int32, `gene_ids` (T,), `values` (T,), and
        `library_size` (B,) float32, each cell's raw total over all of its genes, when the corpus records it, and
        `panel` (B,) int64, each cell's measured-gene panel (an index into `Corpus.panels`), when it records them."""
        out = {
            "cu_seqlens": torch.from_numpy(self.indptr.astype(np.int32)),
            "gene_ids": torch.from_numpy(self.gene_ids.astype(np.int64)),
            "values": torch.from_numpy(self.values.astype(np.float32)),
        }
        if self.library_size is not None:
            out["library_size"] = torch.from_numpy(self.library_size.astype(np.float32))
        if self.panel is not None:
            out["panel"] = torch.from_numpy(self.panel.astype(np.int64))
        return out

    def pin_memory(self) -> CellBatch:
        """Pin the prepared tensors (DataLoader's `pin_memory=True` calls this on its pinning thread), so the
        trainer's host-to-GPU copies run asynchronously."""
        if self.prepared is not None:
            self.prepared = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in self.prepared.items()}
        return self


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


PREPARE_STREAM = 0x70726570  # "prep": keeps the preparation draws apart from the shuffling streams of the same seed


def batch_generator(*key: int) -> torch.Generator:
    """A torch CPU generator seeded from the integers `key` (through numpy's SeedSequence, so nearby keys give
    unrelated streams)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]) & (2**63 - 1)
    return torch.Generator().manual_seed(seed)


SAME_ON_EVERY_RANK = ("seed", "split", "epoch", "world_size", "num_workers", "remnant")


class StreamingCellDataset(IterableDataset):
    """Iterable over a corpus split. `batch_size=None` yields one cell at a time as
    `{'gene_ids', 'values', 'cell_id', 'obs', ...}`; `batch_size=N` yields `CellBatch`es of N cells (the last
    one of a consumer may be smaller unless `drop_last`).

    `batch_tokens=K` (with `batch_size`, which then only names the mode) packs a consumer's cells, in the same order,
    into batches of at most K tokens instead, a cell costing min(its genes, `token_cap`) (the model's `max_genes`):
    every micro batch holds about the same work, whatever the cell lengths. K >= token_cap, so every cell fits.
    Cursors and exact resume are the same as for N-cell batches (a batch is a run of the consumer's cell stream)."""

    def __init__(
        self,
        corpus_dir: Path,
        *,
        split: str = "train",
        fmt: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        block_cells: int = 8192,
        window_blocks: int = 2,
        batch_size: int | None = None,
        drop_last: bool = False,
        prefetch: bool | None = None,
        obs_columns: list[str] | None = None,
        verify_shards: bool = False,
        batch_tokens: int | None = None,
        token_cap: int | None = None,
        whole_shards: bool | None = None,
        cache_dir: Path | str | None = None,
        cache_bytes: int = 0,
        prepare: Callable[[dict, torch.Generator], dict] | None = None,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            msg = f"split {split!r} not allowed; use one of {list(SPLITS)}."
            raise ValueError(msg)
        if not 0 <= rank < world_size:
            msg = f"rank {rank} must be in [0, world_size={world_size})."
            raise ValueError(msg)
        for name, v in (("block_cells", block_cells), ("window_blocks", window_blocks)):
            if v < 1:
                msg = f"{name} = {v} must be >= 1."
                raise ValueError(msg)
        if batch_size is not None and batch_size < 1:
            msg = f"batch_size = {batch_size} must be >= 1 or None (one cell at a time)."
            raise ValueError(msg)
        if batch_tokens is not None:
            if batch_size is None:
                msg = "batch_tokens needs batch mode (batch_size=N); per-cell iteration has no batches to pack."
                raise ValueError(msg)
            if token_cap is None or token_cap < 1 or batch_tokens < token_cap:
                msg = (
                    f"batch_tokens = {batch_tokens} with token_cap = {token_cap}: the budget must be >= the cap "
                    "(the model's max_genes, >= 1) so that every cell fits in a batch; raise "
                    "data.micro_batch_tokens or lower model.max_genes."
                )
                raise ValueError(msg)
        self.corpus_dir = remote.as_location(corpus_dir)  # a Path or a URL
        self.fmt, self.split, self.rank, self.world_size = fmt, split, rank, world_size
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.block_cells, self.window_blocks = block_cells, window_blocks
        self.batch_size, self.drop_last = batch_size, drop_last
        self.batch_tokens, self.token_cap = batch_tokens, token_cap
        self.obs_columns = obs_columns
        self.verify_shards = verify_shards  # hash each shard on first open (see Corpus); training turns it on
        # read each shard whole, start to end, as the read unit (webdataset: one GET per tar, no seeks; zarr: one GET
        # per file); default on for URLs, where a seek or a byte range is a request, off for local shards (read by
        # sample / block: finer shuffling, a rank reads only its units)
        self.whole_shards = whole_shards
        self.cache_dir, self.cache_bytes = cache_dir, cache_bytes  # a remote corpus's shards copied here (bounded)
        # (raw packed tensors, generator) -> model inputs, run on every batch where it is cut (step 4 above); must be
        # picklable (it travels to the DataLoader workers), e.g. `functools.partial(fn, model_config)`
        self.prepare = prepare
        # Read the next window on a thread while this one is emitted. Default: on for zarr (zarrs decodes outside
        # the GIL: 1.3x measured), off for webdataset (.npy parsing holds the GIL: 0.7x measured).
        self.prefetch = prefetch
        self._corpus: Corpus | None = None
        self._corpus_pid = os.getpid()
        self._num_workers = 1
        self.cursors: dict[int, tuple[int, int]] = {}  # consumer -> cursor to start from (after a restore)
        # After a resume on another number of ranks or workers: what the interrupted epoch had left, one plan per
        # new consumer, each a list of pieces (old consumer, old consumers, window, first, stop) of the old
        # partition's windows (see `plan` and `load_elastic_state`).
        self.remnant: list[list[tuple]] | None = None
        self.last_consumer: int | None = None  # consumer of the last batch handed out
        # The epoch as the parent process last set it, in shared memory: persistent DataLoader workers hold a copy of
        # this dataset from when they started and learn of a new epoch here (see `__iter__`).
        self._shared_epoch = torch.full((), epoch, dtype=torch.int64).share_memory_()
        # DataLoader asks its workers round-robin starting from worker 0; after a restore, worker 0 must play
        # the consumer whose turn was next, so worker ids are rotated by this much.
        self.worker_shift = 0
        _ = self.corpus  # open now: bad corpora fail at construction, not inside a worker

    # -- structure -----------------------------------------------------------------------------------
    @property
    def corpus(self) -> Corpus:
        # A forked DataLoader worker inherits the parent's open shard files, whose read offsets the processes
        # would then share: each process opens its own.
        if self._corpus is None or self._corpus_pid != os.getpid():
            cache = ShardCache(self.cache_dir, self.cache_bytes) if self.cache_dir else None
            self._corpus = Corpus(
                self.corpus_dir,
                self.fmt,
                verify=self.verify_shards,
                cache=cache,
                whole_shards=self.whole_shards is not False,
            )
            self._corpus_pid = os.getpid()
        return self._corpus

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_corpus"] = None  # each worker opens its own file handles
        return state

    def units(self) -> list[tuple[int, int, int]]:
        """(shard, first cell, stop cell) of every read unit, in storage order."""
        out = []
        for k, meta in enumerate(self.corpus.shards_meta):
            n = meta["n_cells"]
            if self._whole():
                step = n  # the shard is read whole (no seeks or ranges): it is the read unit
            elif self.corpus.format == "webdataset":
                step = meta["files"]["webdataset"].get("cells_per_sample") or self._wds_step(k)
            else:
                step = self.block_cells
            out.extend((k, lo, min(lo + step, n)) for lo in range(0, n, step))
        return out

    def _whole(self) -> bool:
        return self.corpus.remote if self.whole_shards is None else self.whole_shards

    def _wds_step(self, k: int) -> int:
        return self.corpus.shard(k).cells_per_sample

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._shared_epoch.fill_(epoch)
        self.cursors = {}
        self.remnant = None
        self.worker_shift = 0
        self.last_consumer: int | None = None

    def consumer_units(self, consumer: int, n_consumers: int) -> list[tuple[int, int, int]]:
        units = self.units()
        order = _rng(self.seed, self.epoch).permutation(len(units)) if self.shuffle else np.arange(len(units))
        return [units[i] for i in order[consumer::n_consumers]]

    def plan(self, consumer: int, n_consumers: int) -> list[tuple]:
        """The consumer's epoch as pieces (consumer, consumers, window, first, stop) of a partition: positions
        first..stop (None: the end) of that window's emission order.

        Normally its own windows, whole; after an elastic resume, its share of the old partition's remnant.
        A cursor (i, pos) is the i-th piece of this plan and the position in that window's emission order."""
        if self.remnant is not None:
            if len(self.remnant) != n_consumers:
                msg = (
                    f"the resumed epoch was re-partitioned for {len(self.remnant)} consumers (ranks x workers), "
                    f"this loader has {n_consumers}; resume with the ranks and workers it was re-partitioned for."
                )
                raise CorpusError(msg)
            return self.remnant[consumer]
        n_windows = -(-len(self.consumer_units(consumer, n_consumers)) // self.window_blocks)
        return [(consumer, n_consumers, w, 0, None) for w in range(n_windows)]

    def _window_units(self, consumer: int, n_consumers: int, w: int) -> list:
        units = self.consumer_units(consumer, n_consumers)
        return units[w * self.window_blocks : (w + 1) * self.window_blocks]

    def _window_size(self, consumer: int, n_consumers: int, w: int) -> int:
        """Cells of this split in a window, from the per-cell split flags only (zarr: one small cached array)."""
        wanted = SPLITS[self.split]
        n = 0
        for k, lo, hi in self._window_units(consumer, n_consumers, w):
            if wanted is None:
                n += hi - lo
                continue
            shard = self.corpus.shard(k)
            if self.corpus.format == "webdataset":
                flags = shard.read_sample(lo // shard.cells_per_sample).split
            else:
                flags = shard.per_cell("split")[lo:hi]
            n += int(np.count_nonzero(flags == wanted))
        return n

    def _read_unit(self, unit: tuple[int, int, int]) -> CellBlock:
        k, lo, hi = unit
        shard = self.corpus.shard(k)
        if self.corpus.format == "webdataset" and self._whole():
            block = shard.read_all()
        elif self.corpus.format == "webdataset":
            block = shard.read_sample(lo // shard.cells_per_sample)
        else:
            block = shard.read_block(lo, hi, with_obs=True)
        if self._whole() and self.corpus.remote:
            self.corpus.release(k)  # held in memory once; this process will not read it again this epoch
        if self.obs_columns is not None:
            block.obs = {c: block.obs[c] for c in self.obs_columns}
        block.panel = self.corpus.panel_column(k, block.n_cells)
        return block

    def _window(self, consumer: int, w: int, units: list) -> tuple[BlockList, np.ndarray]:
        """The window's cells (storage order) and the order to emit them in (split kept, shuffled).

        The window is not permuted as a whole: each batch gathers its own rows, so every non-zero is copied
        once, in cache-sized pieces.
        """
        mine = units[w * self.window_blocks : (w + 1) * self.window_blocks]
        if self._whole() and self.corpus.remote and len(mine) > 1:  # network-bound: fetch the window's shards at once
            with ThreadPoolExecutor(max_workers=len(mine), thread_name_prefix="scgrn-unit") as pool:
                block = BlockList(list(pool.map(self._read_unit, mine)))
        else:
            block = BlockList([self._read_unit(u) for u in mine])
        wanted = SPLITS[self.split]
        rows = np.arange(block.n_cells) if wanted is None else np.flatnonzero(block.split == wanted)
        if self.shuffle:
            rows = rows[_rng(self.seed, self.epoch, consumer, w).permutation(len(rows))]
        return block, rows

    # -- iteration -----------------------------------------------------------------------------------
    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker_id = (1, 0) if info is None else (info.num_workers, info.id)
        worker_id = (worker_id + self.worker_shift) % workers
        return self.rank * workers + worker_id, self.world_size * workers

    def cell_stream(self, consumer: int, n_consumers: int, start: tuple[int, int] = (0, 0)):
        """Yield (plan index, first position to emit, window block, emission order) for one consumer."""
        plan = self.plan(consumer, n_consumers)
        units: dict[tuple[int, int], list] = {}

        def read(i: int):
            c, n, w, _, stop = plan[i]
            if (c, n) not in units:
                units[c, n] = self.consumer_units(c, n)
            block, rows = self._window(c, w, units[c, n])
            return block, rows if stop is None else rows[:stop]

        i0, offset = start
        # Read window i+1 on a thread while window i is being emitted: decoding (zarrs / zlib-free npy reads)
        # runs outside the GIL, so reading and gathering overlap. The order of cells does not change.
        prefetch = self.prefetch if self.prefetch is not None else self.corpus.format == "zarr"
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scgrn-prefetch") if prefetch else None
        try:
            ahead = pool.submit(read, i0) if pool and i0 < len(plan) else None
            for i in range(i0, len(plan)):
                if pool:
                    block, rows = ahead.result()
                    ahead = pool.submit(read, i + 1) if i + 1 < len(plan) else None
                else:
                    block, rows = read(i)
                first = max(offset, plan[i][3]) if i == i0 else plan[i][3]
                if first < len(rows):
                    yield i, first, block, rows
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator:
        if get_worker_info() is not None and int(self._shared_epoch) != self.epoch:
            # a persistent worker, started in an earlier epoch: the parent has moved on to a fresh epoch
            self.set_epoch(int(self._shared_epoch))
        consumer, n_consumers = self._consumer()
        start = self.cursors.get(consumer, (0, 0))
        if self.batch_size is None:
            yield from self._iter_cells(consumer, n_consumers, start)
        elif self.batch_tokens is not None:
            yield from self._iter_token_batches(consumer, n_consumers, start)
        else:
            yield from self._iter_batches(consumer, n_consumers, start)

    def _iter_cells(self, consumer, n_consumers, start):
        for w, first, block, rows in self.cell_stream(consumer, n_consumers, start):
            for pos in range(first, len(rows)):
                unit, i = block.cell(int(rows[pos]))
                lo, hi = unit.indptr[i], unit.indptr[i + 1]
                yield {
                    "gene_ids": unit.gene_ids[lo:hi],
                    "values": unit.values[lo:hi],
                    "cell_id": unit.cell_ids[i],
                    "split": int(unit.split[i]),
                    "obs": {k: v[i] for k, v in unit.obs.items()},
                    "consumer": consumer,
                    "cursor": (w, pos + 1),
                }

    def _iter_batches(self, consumer, n_consumers, start):
        size = self.batch_size
        pending: list[CellBlock] = []  # the start of a batch whose cells continue in the next window
        n_pending = 0
        cursor = start
        for w, first, block, rows in self.cell_stream(consumer, n_consumers, start):
            pos = first
            while pos < len(rows):
                take = min(size - n_pending, len(rows) - pos)
                pending.append(block.take(rows[pos : pos + take]))
                n_pending += take
                pos += take
                cursor = (w, pos)
                if n_pending == size:
                    yield self._batch(pending, consumer, cursor)
                    pending, n_pending = [], 0
        if pending and not self.drop_last:
            yield self._batch(pending, consumer, cursor)

    def _iter_token_batches(self, consumer, n_consumers, start):
        """Cut the consumer's cell stream into runs of at most `batch_tokens` tokens (cost min(L, token_cap))."""
        budget = self.batch_tokens
        pending: list[CellBlock] = []
        tokens = 0
        cursor = start
        for w, first, block, rows in self.cell_stream(consumer, n_consumers, start):
            costs = np.minimum(block.lengths(rows[first:]), self.token_cap)  # (n,) rows first.. of this window
            cumulative = np.cumsum(costs)
            pos = first
            while pos < len(rows):
                done = int(cumulative[pos - first - 1]) if pos > first else 0  # cost of rows first..pos-1
                take = int(np.searchsorted(cumulative[pos - first :] - done, budget - tokens, side="right"))
                if take == 0:  # the next cell does not fit: this batch is full (budget >= cap, so pending is not [])
                    yield self._batch(pending, consumer, cursor)
                    pending, tokens = [], 0
                    continue
                pending.append(block.take(rows[pos : pos + take]))
                tokens += int(cumulative[pos - first + take - 1]) - done
                pos += take
                cursor = (w, pos)
                if pos < len(rows):  # stopped because the next cell would overflow
                    yield self._batch(pending, consumer, cursor)
                    pending, tokens = [], 0
        if pending and not self.drop_last:
            yield self._batch(pending, consumer, cursor)

    def _batch(self, parts: list[CellBlock], consumer: int, cursor: tuple[int, int]) -> CellBatch:
        b = CellBlock.concat(parts)
        batch = CellBatch(
            b.indptr, b.gene_ids, b.values, b.cell_ids, b.split, b.obs, b.library_size, b.panel, consumer, cursor
        )
        if self.prepare is not None:
            # (consumer, cursor) names the batch within the epoch: a resumed run draws for it what the first did
            generator = batch_generator(self.seed, PREPARE_STREAM, self.epoch, consumer, *cursor)
            batch.prepared = self.prepare(batch.to_torch(), generator)
        return batch

    # -- exact resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "split": self.split,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self._num_workers,
            "last_consumer": self.last_consumer,
            "cursors": {str(c): list(v) for c, v in self.cursors.items()},
            "remnant": None if self.remnant is None else [[list(p) for p in plan] for plan in self.remnant],
        }

    def load_state_dict(self, state: dict) -> None:
        mismatch = [
            f"{k}: saved {state[k]!r}, now {getattr(self, k)!r}"
            for k in ("seed", "split", "rank", "world_size")
            if state[k] != getattr(self, k)
        ]
        if mismatch:
            msg = (
                "loader state does not match this loader (" + "; ".join(mismatch) + "). Resume with the "
                "same seed, split, rank and world size, or start the epoch afresh."
            )
            raise CorpusError(msg)
        self.epoch = state["epoch"]
        self._shared_epoch.fill_(self.epoch)
        self._num_workers = state["num_workers"]
        saved = state.get("remnant")
        self.remnant = None if saved is None else [[tuple(p) for p in plan] for plan in saved]
        self.cursors = {int(c): tuple(v) for c, v in state["cursors"].items()}
        self.last_consumer = state.get("last_consumer")
        if self.last_consumer is not None:
            local = self.last_consumer - self.rank * self._num_workers
            self.worker_shift = (local + 1) % self._num_workers

    def load_elastic_state(self, states: list[dict]) -> None:
        """Resume an epoch saved by another number of ranks or workers (`states`: every old rank's state_dict).

        The old consumers' cursors say exactly which cells the interrupted epoch already emitted. What is left of
        every old consumer's plan, taken window by window round-robin over the old consumers, is one sequence;
        it is cut into this run's ranks x workers contiguous runs of (nearly) equal cell counts. No cell is
        emitted twice or skipped, every new consumer gets the same share, and each window keeps its shuffled
        order; the next epoch is partitioned afresh."""
        old_world = states[0]["world_size"]
        ranks = sorted(int(s["rank"]) for s in states)
        fixed = {k: {json.dumps(s.get(k)) for s in states} for k in SAME_ON_EVERY_RANK}
        problems = [f"{k} differs between ranks: {sorted(v)}" for k, v in fixed.items() if len(v) > 1]
        if ranks != list(range(old_world)):
            problems.append(f"states of ranks {ranks}, expected every rank 0..{old_world - 1}")
        for k in ("seed", "split"):
            if states[0][k] != getattr(self, k):
                problems.append(f"{k}: saved {states[0][k]!r}, now {getattr(self, k)!r}")
        if problems:
            msg = "cannot re-partition the saved loader states: " + "; ".join(problems) + ". Resume from a checkpoint "
            msg += "written by one run with this seed and split (every rank's loader_rank*.json present)."
            raise CorpusError(msg)
        n_old = old_world * states[0]["num_workers"]
        self.epoch = states[0]["epoch"]
        self._shared_epoch.fill_(self.epoch)
        saved = states[0].get("remnant")
        self.remnant = None if saved is None else [[tuple(p) for p in plan] for plan in saved]
        cursors = {int(c): tuple(v) for s in states for c, v in s["cursors"].items()}
        rest = []
        for c in range(n_old):
            plan = self.plan(c, n_old)
            i, pos = cursors.get(c, (0, 0))
            rest.append([(*plan[i][:3], max(pos, plan[i][3]), plan[i][4]), *plan[i + 1 :]] if i < len(plan) else [])
        depth = max((len(r) for r in rest), default=0)
        pieces = [r[j] for j in range(depth) for r in rest if j < len(r)]
        sized = []
        for c, n, w, first, stop in pieces:
            end = self._window_size(c, n, w) if stop is None else stop
            if end > first:
                sized.append((c, n, w, first, end))
        n_new = self.world_size * self._num_workers
        total = sum(end - first for *_, first, end in sized)
        bounds = [total * j // n_new for j in range(n_new + 1)]  # consumer j takes cells bounds[j]..bounds[j+1]
        self.remnant = [[] for _ in range(n_new)]
        at = 0  # cells before the current piece
        for c, n, w, first, end in sized:
            size = end - first
            for j in range(n_new):
                lo, hi = max(bounds[j], at), min(bounds[j + 1], at + size)
                if lo < hi:
                    self.remnant[j].append((c, n, w, first + lo - at, first + hi - at))
            at += size
        self.cursors, self.last_consumer, self.worker_shift = {}, None, 0


class StatefulCellLoader:
    """A torch DataLoader over a `StreamingCellDataset` (batch mode) whose position can be saved and restored.

    Workers run copies of the dataset, so the loader records the cursor carried by every batch it hands out;
    `state_dict()` is then exact whatever the number of workers (which must stay the same on resume).

    Workers persist across epochs (`persistent_workers`, default on): they start once, so each opens and verifies
    its shards once per run instead of once per epoch, and learn of a new epoch through the dataset's shared epoch
    counter. The batches are the same as with workers re-started every epoch (a test compares them). Workers hold
    the cursors they started from, so a restored state, or an epoch left before its end, starts new ones.
    """

    def __init__(
        self, dataset: StreamingCellDataset, num_workers: int = 0, *, persistent_workers: bool = True, **kwargs
    ) -> None:
        if dataset.batch_size is None:
            msg = "StatefulCellLoader needs a dataset built with batch_size=N."
            raise ValueError(msg)
        self.dataset = dataset
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers and num_workers > 0
        self.kwargs = kwargs
        dataset._num_workers = max(1, num_workers)
        self._loader: DataLoader | None = None

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = DataLoader(
                self.dataset,
                batch_size=None,
                num_workers=self.num_workers,
                persistent_workers=self.persistent_workers,
                **self.kwargs,
            )
        return self._loader

    def close(self) -> None:
        """Stop the workers (the next iteration starts new ones from the dataset's current state)."""
        self._loader = None  # the DataLoader's iterator shuts its workers down when it is collected

    def __iter__(self) -> Iterator[CellBatch]:
        finished = False
        try:
            for batch in self._data_loader():
                self.dataset.cursors[batch.consumer] = tuple(batch.cursor)
                self.dataset.last_consumer = batch.consumer
                yield batch
            finished = True
        finally:
            if not finished or not self.persistent_workers:
                self.close()  # left mid-epoch: the workers' cursors are behind the parent's

    def forever(self) -> Iterator[CellBatch]:
        """Batches epoch after epoch (reshuffled each time), from wherever the loader's state says it stands.

        A state saved after the last batch of an epoch has every consumer at its end: that epoch then yields
        nothing and the stream goes on with the next epoch, as the uninterrupted run did. A fresh epoch that
        yields nothing is an error (fewer cells than ranks x workers)."""
        while True:
            d = self.dataset
            fresh = not d.cursors and d.remnant is None
            yielded = False
            for batch in self:
                yielded = True
                yield batch
            if not yielded and fresh:
                fix = (
                    f"more, smaller shards: its {len(d.corpus.shards_meta)} shard(s) are each read whole (the default "
                    "for a URL; data.whole_shards=false reads them by block)."
                    if d._whole()
                    else "a smaller data.block_cells."
                )
                msg = (
                    f"{d.corpus_dir}: rank {d.rank} received no {d.split} cells in epoch {d.epoch}; the corpus has "
                    f"fewer {d.split} cells (or read units) than ranks x workers ({d.world_size} x "
                    f"{max(1, self.num_workers)}) need. Use fewer ranks or workers, or {fix}"
                )
                raise CorpusError(msg)
            self.set_epoch(d.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_elastic_state(self, states: list[dict]) -> None:
        self.close()
        self.dataset._num_workers = max(1, self.num_workers)
        self.dataset.load_elastic_state(states)

    def load_state_dict(self, state: dict) -> None:
        if state["num_workers"] != max(1, self.num_workers):
            msg = (
                f"loader state was saved with {state['num_workers']} worker(s) per rank, this loader has "
                f"{max(1, self.num_workers)}; resume with the same num_workers."
            )
            raise CorpusError(msg)
        self.close()
        self.dataset.load_state_dict(state)
