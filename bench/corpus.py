"""Benchmark corpus: real PBMC cells replicated with seeded binomial thinning.

Loader benchmarks need many more cells than the 2,700 of the shared PBMC 3k file, but synthetic
random matrices misrepresent what a loader sees: real rows have a heavy-tailed nnz distribution
(212 to 3,422 genes per PBMC cell) and real gene-index patterns. So the corpus is made of *replicas*
of the real cells: replica ``r`` of source cell ``i`` is row ``r * n_source + i`` and has counts
``Binomial(count, p)`` for every stored count of cell ``i``. Thinning keeps each replica a plausible
cell at a lower depth (it is the standard down-sampling model for UMI counts) and makes replicas
differ, so no reader can win by caching repeated rows. ``p`` is solved exactly from the source so
that the expected mean nnz per cell is ``target_nnz_per_cell``.

On-disk layout (what the anndata baselines read):

* ``X`` is written with :func:`anndata.io.write_elem` and grown with
  :meth:`anndata.abc.CSRDataset.append`, i.e. exactly anndata's own incremental writer, so the file
  is a standard h5ad: uncompressed, resizable (``maxshape=(None,)``) chunked datasets, with the
  chunk length that ``h5py`` would have guessed for the *final* array had the whole matrix been
  written at once by ``AnnData.write_h5ad`` (anndata itself always writes sparse arrays resizable).
  Only ``cells_per_write`` cells are in memory at a time.
* ``data`` is int32 counts.
* ``indptr`` and ``indices`` always have the **same width**: int32 whenever the total nnz fits
  (up to ~2.5M PBMC cells at 800 nnz/cell; checked against an upper bound before writing), else
  both int64. Why: ``anndata``'s ``to_memory()`` assigns the arrays to the scipy matrix without
  scipy's dtype canonicalisation, and scipy's fancy row indexing (``_major_index_fancy``) then
  calls ``indices.astype(int64)`` on the *whole* matrix on every lookup when ``indptr`` is int64
  and ``indices`` int32 -- a full-matrix copy per batch. (For h5ad files made elsewhere,
  :func:`bench.baselines.anndata_in_memory` unifies the widths once before timing.)
* ``obs`` has ``cell_type`` (from the source, NaN kept), ``n_counts``/``n_genes`` of the thinned
  cell, ``replica`` and ``source_cell``; obs_names are ``<source barcode>-r<replica>``.
* ``var`` is the source's ``var`` (all genes kept, same order).

Randomness is keyed per replica (``SeedSequence([seed, replica])``), so the corpus is deterministic
given the seed, does not depend on ``cells_per_write``, and a smaller corpus is a prefix of a
larger one with the same seed.

Reference: binomial thinning of UMI counts as a down-sampling model, e.g. DropletUtils'
``downsampleMatrix`` and scanpy's ``pp.downsample_counts`` (which does it without replacement).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import sparse_dataset, write_elem
from h5py._hl.filters import guess_chunk  # the heuristic h5py applies to chunks=True

logger = logging.getLogger(__name__)

CORPUS_FORMAT = "scgrn-bench-pbmc-replicas"
CORPUS_FORMAT_VERSION = 1
DEFAULT_CELLS_PER_WRITE = 20_000
_INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class CorpusKey:
    """What identifies a built corpus; the sidecar JSON must match it for the cache to be reused."""

    source_sha256: str
    n_cells: int
    seed: int
    target_nnz_per_cell: float
    format: str = CORPUS_FORMAT
    format_version: int = CORPUS_FORMAT_VERSION


def sidecar_path(out_h5ad: Path) -> Path:
    """``<out>.json``: the cache key plus build facts (p, nnz, dtypes, timings) of ``out_h5ad``."""
    return out_h5ad.with_name(out_h5ad.name + ".json")


def file_sha256(path: Path, block_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in blocks so large files need no memory."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def thinning_probability(counts: np.ndarray, n_source_cells: int, target_nnz_per_cell: float) -> float:
    """Solve for p such that the expected mean nnz per cell after ``Binomial(count, p)`` is the target.

    A stored count ``c`` survives thinning with probability ``1 - (1 - p)**c``, so the expected nnz
    per cell is ``sum(1 - (1 - p)**c) / n_source_cells`` over all stored counts: monotone in p, solved
    by bisection on the distinct count values (a few hundred), exact rather than sampled.

    Args:
        counts: every stored (non-zero) count of the source matrix, shape (nnz,).
        n_source_cells: number of source cells.
        target_nnz_per_cell: the wanted mean number of non-zero genes per cell.

    Returns:
        p in (0, 1]; 1.0 when the target equals the source's own mean nnz.

    Raises:
        ValueError: if the target is not positive or above the source's mean nnz (thinning can only
            remove entries).
    """
    source_mean = counts.size / n_source_cells
    if not target_nnz_per_cell > 0:
        msg = f"target_nnz_per_cell must be > 0, got {target_nnz_per_cell}."
        raise ValueError(msg)
    if target_nnz_per_cell > source_mean * (1 + 1e-9):
        msg = (
            f"target_nnz_per_cell={target_nnz_per_cell} is above the source's mean nnz per cell "
            f"({source_mean:.1f}); binomial thinning can only remove entries. "
            f"Use a target <= {source_mean:.1f}."
        )
        raise ValueError(msg)
    values, multiplicity = np.unique(counts, return_counts=True)
    values = values.astype(np.float64)

    def expected_nnz_per_cell(p: float) -> float:
        if p >= 1:
            return source_mean
        survival = -np.expm1(values * np.log1p(-p))  # 1 - (1 - p)**c, accurate for small p
        return float(np.dot(multiplicity, survival)) / n_source_cells

    low, high = 0.0, 1.0
    for _ in range(64):
        mid = 0.5 * (low + high)
        if expected_nnz_per_cell(mid) < target_nnz_per_cell:
            low = mid
        else:
            high = mid
    return high


@dataclass(frozen=True)
class _Source:
    """The source cells in the form the thinning loop needs."""

    counts: sp.csr_matrix  # (n_source, n_genes), int counts
    obs_names: np.ndarray  # (n_source,)
    cell_type: pd.Categorical  # (n_source,)
    var: pd.DataFrame

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]


def _read_source(source_h5ad: Path) -> _Source:
    source = ad.read_h5ad(source_h5ad)
    if "cell_type" not in source.obs:
        msg = (
            f"{source_h5ad}: obs has no 'cell_type' column (columns: {list(source.obs.columns)}); the corpus copies it."
        )
        raise ValueError(msg)
    counts = source.X
    if not sp.issparse(counts):
        counts = sp.csr_matrix(counts)
    counts = sp.csr_matrix(counts)  # CSR whatever the stored format, canonical index dtype
    counts.sum_duplicates()
    if not np.issubdtype(counts.dtype, np.integer):
        if not np.array_equal(counts.data, np.round(counts.data)):
            msg = f"{source_h5ad}: X must hold integer counts; found non-integer values ({counts.dtype})."
            raise ValueError(msg)
        counts.data = counts.data.astype(np.int64)
    counts.eliminate_zeros()
    if counts.nnz and counts.data.min() < 0:
        msg = f"{source_h5ad}: X has negative counts (min {counts.data.min()}); expected raw UMI counts."
        raise ValueError(msg)
    cell_type = source.obs["cell_type"]
    is_categorical = isinstance(cell_type.dtype, pd.CategoricalDtype)
    categorical = cell_type.array if is_categorical else pd.Categorical(cell_type)
    return _Source(
        counts=counts,
        obs_names=source.obs_names.to_numpy(dtype=object),
        cell_type=categorical,
        var=source.var.copy(),
    )


@dataclass(frozen=True)
class _ThinnedRows:
    """A block of consecutive corpus rows, as CSR arrays plus per-row summaries for obs."""

    data: np.ndarray  # (nnz,) int32
    indices: np.ndarray  # (nnz,) int32
    row_nnz: np.ndarray  # (rows,) int64
    row_counts: np.ndarray  # (rows,) int64


def _thin_replica(source: _Source, p: float, seed: int, replica: int, n_rows: int) -> _ThinnedRows:
    """Rows ``0..n_rows-1`` of replica ``replica``; draws the whole replica so a prefix is stable."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, replica]))
    thinned = rng.binomial(source.counts.data, p)  # (nnz_source,)
    kept = thinned > 0
    kept_before = np.concatenate(([0], np.cumsum(kept)))  # (nnz_source + 1,)
    counts_before = np.concatenate(([0], np.cumsum(thinned)))
    indptr = source.counts.indptr[: n_rows + 1]
    stop = indptr[-1]
    kept_rows = kept[:stop]
    return _ThinnedRows(
        data=thinned[:stop][kept_rows].astype(np.int32),
        indices=source.counts.indices[:stop][kept_rows].astype(np.int32),
        row_nnz=np.diff(kept_before[indptr]),
        row_counts=np.diff(counts_before[indptr]),
    )


def _index_dtype(source: _Source, n_cells: int) -> np.dtype:
    """int32 when the corpus nnz is sure to fit (thinning never adds entries), else int64."""
    full_replicas, rest = divmod(n_cells, source.n_cells)
    nnz_upper_bound = full_replicas * source.counts.nnz + int(source.counts.indptr[rest])
    return np.dtype(np.int32) if nnz_upper_bound <= _INT32_MAX else np.dtype(np.int64)


def _write_corpus(tmp_h5ad: Path, source: _Source, p: float, key: CorpusKey, cells_per_write: int) -> dict[str, object]:
    """Write the corpus to ``tmp_h5ad`` in blocks of whole replicas; return build facts for the sidecar."""
    n_cells, n_source, n_genes = key.n_cells, source.n_cells, source.counts.shape[1]
    index_dtype = _index_dtype(source, n_cells)
    expected_nnz = max(1, round(n_cells * key.target_nnz_per_cell))
    # The chunk length h5py picks for a 1-D array of the final size, as write_h5ad would produce.
    chunk_elems = guess_chunk((expected_nnz,), None, 4)
    n_counts = np.empty(n_cells, dtype=np.int64)
    n_genes_per_cell = np.empty(n_cells, dtype=np.int64)
    replicas_per_write = max(1, cells_per_write // n_source)
    n_replicas = -(-n_cells // n_source)
    x_group = None
    with h5py.File(tmp_h5ad, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        for first_replica in range(0, n_replicas, replicas_per_write):
            blocks = []
            for replica in range(first_replica, min(first_replica + replicas_per_write, n_replicas)):
                row0 = replica * n_source
                rows = min(n_source, n_cells - row0)
                block = _thin_replica(source, p, key.seed, replica, rows)
                n_counts[row0 : row0 + rows] = block.row_counts
                n_genes_per_cell[row0 : row0 + rows] = block.row_nnz
                blocks.append(block)
            row_nnz = np.concatenate([b.row_nnz for b in blocks])
            indptr = np.zeros(row_nnz.size + 1, dtype=index_dtype)
            np.cumsum(row_nnz, out=indptr[1:])
            written = sp.csr_matrix((row_nnz.size, n_genes), dtype=np.int32)
            # Assigned directly so scipy keeps our dtypes (its constructor may re-pick index widths).
            written.data = np.concatenate([b.data for b in blocks])
            written.indices = np.concatenate([b.indices for b in blocks]).astype(index_dtype, copy=False)
            written.indptr = indptr
            if x_group is None:
                write_elem(f, "X", written, dataset_kwargs={"chunks": chunk_elems, "indptr_dtype": index_dtype})
                x_group = sparse_dataset(f["X"])
            else:
                x_group.append(written)
            cells_done = min(n_cells, (first_replica + len(blocks)) * n_source)
            logger.info("corpus: wrote %d / %d cells", cells_done, n_cells)
        nnz = int(f["X/indptr"][-1])

        source_cell = np.arange(n_cells) % n_source
        replica_of_row = np.arange(n_cells) // n_source
        obs_names = [f"{source.obs_names[i]}-r{r}" for i, r in zip(source_cell, replica_of_row, strict=True)]
        obs = pd.DataFrame(
            {
                "cell_type": pd.Categorical.from_codes(
                    source.cell_type.codes[source_cell], categories=source.cell_type.categories
                ),
                "n_counts": n_counts.astype(np.int32),
                "n_genes": n_genes_per_cell.astype(np.int32),
                "replica": replica_of_row.astype(np.int32),
                "source_cell": source_cell.astype(np.int32),
            },
            index=pd.Index(obs_names, name="cell_id"),
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", source.var)
        facts: dict[str, object] = {
            "thinning_p": p,
            "nnz": nnz,
            "mean_nnz_per_cell": nnz / n_cells,
            "n_genes": n_genes,
            "n_source_cells": n_source,
            "index_dtype": index_dtype.name,
            "h5_chunk_elems": int(chunk_elems[0]),
        }
        write_elem(f, "uns", {"scgrn_corpus": {**asdict(key), **facts}})
        for empty in ("layers", "obsm", "obsp", "varm", "varp"):
            write_elem(f, empty, {})
    return facts


def _cached(out_h5ad: Path, key: CorpusKey) -> bool:
    sidecar = sidecar_path(out_h5ad)
    if not (out_h5ad.is_file() and sidecar.is_file()):
        return False
    try:
        recorded = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    same_key = all(recorded.get(name) == value for name, value in asdict(key).items())
    return same_key and recorded.get("file_bytes") == out_h5ad.stat().st_size


def build_pbmc_replicas(
    source_h5ad: Path,
    n_cells: int,
    out_h5ad: Path,
    seed: int = 0,
    target_nnz_per_cell: float = 800.0,
    *,
    cells_per_write: int = DEFAULT_CELLS_PER_WRITE,
) -> Path:
    """Build (or reuse) an h5ad of ``n_cells`` thinned replicas of the source cells.

    Row ``r * n_source + i`` is replica ``r`` of source cell ``i``; rows are not shuffled, so a
    loader's own shuffling is what a benchmark measures. See the module docstring for the layout.

    Args:
        source_h5ad: h5ad with integer counts in ``X`` and ``obs["cell_type"]``
            (e.g. ``shared/data/counts/human_pbmc3k_10x.h5ad``).
        n_cells: number of corpus cells (rows).
        out_h5ad: where to write; written atomically (temp file + ``os.replace``).
        seed: seeds the thinning; the corpus is a pure function of (source, n_cells, seed, target).
        target_nnz_per_cell: wanted mean nnz per cell; must not exceed the source's.
        cells_per_write: cells generated and appended per write (memory bound); does not change
            the output.

    Returns:
        ``out_h5ad``. Reused without rebuilding when it exists and ``<out>.json`` records the same
        source sha256, n_cells, seed and target.
    """
    source_h5ad, out_h5ad = Path(source_h5ad), Path(out_h5ad)
    if n_cells <= 0:
        msg = f"n_cells must be a positive number of cells, got {n_cells}."
        raise ValueError(msg)
    if cells_per_write <= 0:
        msg = f"cells_per_write must be positive, got {cells_per_write}."
        raise ValueError(msg)
    if not source_h5ad.is_file():
        msg = f"Source h5ad {source_h5ad} does not exist; pass the PBMC file from shared/data/counts/."
        raise FileNotFoundError(msg)
    key = CorpusKey(
        source_sha256=file_sha256(source_h5ad),
        n_cells=int(n_cells),
        seed=int(seed),
        target_nnz_per_cell=float(target_nnz_per_cell),
    )
    if _cached(out_h5ad, key):
        logger.info("corpus: reusing %s", out_h5ad)
        return out_h5ad

    started = time.perf_counter()
    source = _read_source(source_h5ad)
    p = thinning_probability(source.counts.data, source.n_cells, key.target_nnz_per_cell)
    out_h5ad.parent.mkdir(parents=True, exist_ok=True)
    sidecar = sidecar_path(out_h5ad)
    sidecar.unlink(missing_ok=True)  # never leave an old key beside a new file
    tmp_h5ad = out_h5ad.with_name(f".{out_h5ad.name}.tmp-{os.getpid()}")
    try:
        facts = _write_corpus(tmp_h5ad, source, p, key, cells_per_write)
        tmp_h5ad.replace(out_h5ad)
    finally:
        tmp_h5ad.unlink(missing_ok=True)
    record = {
        **asdict(key),
        **facts,
        "source": str(source_h5ad),
        "file_bytes": out_h5ad.stat().st_size,
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    tmp_sidecar = sidecar.with_name(f".{sidecar.name}.tmp-{os.getpid()}")
    tmp_sidecar.write_text(json.dumps(record, indent=2) + "\n")
    tmp_sidecar.replace(sidecar)
    return out_h5ad
