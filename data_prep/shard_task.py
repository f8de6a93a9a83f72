"""One unit of sharding work: input rows [row_start, row_stop) -> one shard in each requested format.

Runs in a worker process. Memory per task is bounded by its rows: `cells_per_shard` x non-zeros per cell
(the input chunk, its remapped CSR and the encoded arrays), never by the input size. A task records its result
under `.progress/` only after its shard files are renamed into place, so an interrupted run resumes from there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from data_prep.cell_block import SPLIT_TRAIN, SPLIT_VAL, CellBlock
from data_prep.errors import InputError
from data_prep.gene_stats import GeneStats
from data_prep.io_utils import atomic_write_text, pause_point, sha256_tree
from data_prep.readers import CellReader, InputSpec, open_reader
from data_prep.values import ValueKind, smallest_index_dtype, smallest_value_dtype, validate_values
from data_prep.wds_shard import write_wds_shard
from data_prep.zarr_shard import write_zarr_shard

PROGRESS_DIR = ".progress"


@dataclass(frozen=True)
class ShardTask:
    shard_index: int
    input_index: int
    row_start: int
    row_stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.shard_index:06d}"


@dataclass(frozen=True)
class TaskContext:
    out: Path
    specs: tuple[InputSpec, ...]
    column_to_id: tuple[np.ndarray, ...]  # per input: input column -> vocab id or -1
    vocab_size: int
    vocab_sha256: str
    value_kind: ValueKind
    formats: tuple[str, ...]
    min_genes: int
    zero_cells: str
    val_fraction: float
    cells_per_sample: int
    codec: str
    codec_level: int


def shard_paths(out: Path, name: str, formats: tuple[str, ...]) -> dict[str, Path]:
    paths = {}
    if "zarr" in formats:
        paths["zarr"] = out / "zarr" / f"{name}.zarr"
    if "webdataset" in formats:
        paths["webdataset"] = out / "webdataset" / f"{name}.tar"
    return paths


def validation_mask(source_name: str, cell_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic split by cell hash: blake2b(source file name, cell id) as a uniform number in [0, 1).

    Independent of shard size, worker count and input order, so re-sharding keeps every cell's split.
    """
    if fraction <= 0:
        return np.zeros(len(cell_ids), dtype=bool)
    prefix = source_name.encode() + b"\x00"
    u = np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + str(c).encode(), digest_size=8).digest(), "little") for c in cell_ids),
        dtype=np.uint64,
        count=len(cell_ids),
    )
    return u < np.uint64(int(fraction * 2.0**64))


_READERS: dict[InputSpec, CellReader] = {}  # per process: a worker reads many shards of the same inputs


def _reader(ctx: TaskContext, i: int) -> CellReader:
    spec = ctx.specs[i]
    if spec not in _READERS:
        _READERS[spec] = open_reader(spec)
    return _READERS[spec]


def close_readers() -> None:
    """Drop cached readers (end of a run: the same path may hold another file next time)."""
    for reader in _READERS.values():
        reader.close()
    _READERS.clear()


def remap_columns(m: sp.csr_matrix, column_to_id: np.ndarray, vocab_size: int) -> sp.csr_matrix:
    """Input columns -> vocab ids (dropping unmapped genes and stored zeros), sorted within each cell.

    Fast path (the common case: canonical CSR and a mapping that keeps column order, e.g. a vocab built from
    this input): relabel `indices`, no sort. Otherwise through COO, which also sums genes that map onto one id
    (reached only with --duplicate-genes sum; refused earlier otherwise).
    """
    ids = column_to_id[m.indices]
    keep = (ids >= 0) & (m.data != 0)
    mapped = column_to_id[column_to_id >= 0]
    order_kept = len(mapped) < 2 or bool(np.all(np.diff(mapped) > 0))
    if order_kept and m.has_canonical_format:
        dropped = np.flatnonzero(~keep)
        if len(dropped) == 0:
            return sp.csr_matrix((m.data, ids, m.indptr), shape=(m.shape[0], vocab_size))
        row_of_dropped = np.searchsorted(m.indptr, dropped, side="right") - 1
        indptr = m.indptr.astype(np.int64)
        indptr[1:] -= np.cumsum(np.bincount(row_of_dropped, minlength=m.shape[0]))
        return sp.csr_matrix((m.data[keep], ids[keep], indptr), shape=(m.shape[0], vocab_size))
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    csr = sp.csr_matrix((m.data[keep], (rows[keep], ids[keep])), shape=(m.shape[0], vocab_size))
    csr.sum_duplicates()
    csr.sort_indices()
    return csr


def build_block(ctx: TaskContext, task: ShardTask) -> tuple[CellBlock, dict]:
    reader = _reader(ctx, task.input_index)
    chunk = reader.read(task.row_start, task.row_stop)
    source = str(ctx.specs[task.input_index].path)
    m = sp.csr_matrix(chunk.matrix)
    validate_values(
        ctx.value_kind,
        m.data,
        source=source,
        row_of=np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)),
        col_of=m.indices,
        row_offset=task.row_start,
        gene_names=reader.gene_names,
    )
    # Library size: every gene of the input row, mapped to the vocab or not, so a model's normalisation does not
    # change with a dataset's mapping rate (counts only; log1p / normalized values have no library size).
    totals = np.asarray(m.sum(axis=1), dtype=np.float64).ravel() if ctx.value_kind.value == "counts" else None
    csr = remap_columns(m, ctx.column_to_id[task.input_index], ctx.vocab_size)
    genes_per_cell = np.diff(csr.indptr)
    zero = genes_per_cell == 0
    if zero.any() and ctx.zero_cells == "refuse":
        row = task.row_start + int(np.flatnonzero(zero)[0])
        msg = (
            f"{source}: cell row {row} ({chunk.cell_ids[row - task.row_start]!r}) has no counts in mapped genes "
            f"({int(zero.sum())} such cells in rows {task.row_start}-{task.row_stop}). Pass --zero-cells drop "
            "to drop them (they are counted in the report)."
        )
        raise InputError(msg)
    few = ~zero & (genes_per_cell < ctx.min_genes)
    keep_rows = np.flatnonzero(~zero & ~few)
    csr = csr[keep_rows]
    max_value = float(csr.data.max()) if csr.nnz else 0.0
    values = csr.data.astype(smallest_value_dtype(ctx.value_kind, max_value))
    cell_ids = np.asarray(chunk.cell_ids, dtype=object)[keep_rows]
    val = validation_mask(ctx.specs[task.input_index].path.name, cell_ids, ctx.val_fraction)
    block = CellBlock(
        csr.indptr.astype(np.int64),
        csr.indices.astype(smallest_index_dtype(ctx.vocab_size)),
        values,
        cell_ids,
        np.where(val, SPLIT_VAL, SPLIT_TRAIN).astype(np.uint8),
        {k: np.asarray(v)[keep_rows] for k, v in chunk.obs.items()},
        None if totals is None else totals[keep_rows],
    )
    drops = {"zero_counts": int(zero.sum()), "min_genes": int(few.sum())}
    return block, drops


def run_task(ctx: TaskContext, task: ShardTask) -> dict:
    block, drops = build_block(ctx, task)
    attrs = {"shard_index": task.shard_index, "vocab_sha256": ctx.vocab_sha256, "value_kind": ctx.value_kind.value}
    paths = shard_paths(ctx.out, task.name, ctx.formats)
    files = {}
    if "zarr" in paths:
        write_zarr_shard(paths["zarr"], block, attrs, ctx.codec, ctx.codec_level)
        files["zarr"] = {"path": str(paths["zarr"].relative_to(ctx.out)), "sha256": sha256_tree(paths["zarr"])}
    if "webdataset" in paths:
        n_samples = write_wds_shard(paths["webdataset"], block, task.shard_index, ctx.cells_per_sample, attrs)
        files["webdataset"] = {
            "path": str(paths["webdataset"].relative_to(ctx.out)),
            "sha256": sha256_tree(paths["webdataset"]),
            "n_samples": n_samples,
            "cells_per_sample": ctx.cells_per_sample,
        }
    pause_point(f"shard-done:{task.shard_index}")
    stats = GeneStats(ctx.vocab_size, ctx.value_kind).partial(
        block.gene_ids, block.values, block.indptr, block.library_size
    )
    progress = ctx.out / PROGRESS_DIR
    np.savez(progress / f"{task.name}.stats.npz", **stats)
    n_val = int((block.split == SPLIT_VAL).sum())
    record = {
        "index": task.shard_index,
        "input": task.input_index,
        "rows": [task.row_start, task.row_stop],
        "n_cells": block.n_cells,
        "n_train": block.n_cells - n_val,
        "n_val": n_val,
        "nnz": block.nnz,
        "value_dtype": str(block.values.dtype),
        "gene_id_dtype": str(block.gene_ids.dtype),
        "dropped": drops,
        "files": files,
    }
    atomic_write_text(progress / f"{task.name}.json", json.dumps(record))
    return record
