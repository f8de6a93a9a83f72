"""Public baselines for ``scgrn bench loader``: how fast can existing tools hand out the same cells?

Every baseline reads cells of one h5ad corpus (see :mod:`bench.corpus`) in batches of
``batch_size`` cells, in a seeded shuffled order, and **materializes each batch as a scipy CSR
matrix** (``indptr``, ``indices`` and ``data`` as in-memory numpy arrays, shape
``(rows, n_genes)``). That is the unit of work our streaming loader does too, so cells/s are
comparable. Nothing is densified or moved to torch beyond what the library's own documented path
does. Each batch is checked (CSR, right number of rows, right number of genes, consistent
pointers) and only checked rows are counted, so a broken baseline fails instead of reporting a
fake figure. An optional ``on_batch(cell_indices, csr)`` callback receives the corpus row of every
batch row and the batch, so tests can compare contents with the source.

Timing: ``time.perf_counter`` around the read loop only; opening files, format conversion and the
permutation are untimed. Warm runs first read every file the baseline touches through once
(page cache); ``cold=True`` instead evicts those files' pages (``posix_fadvise DONTNEED``) right
before the timer starts.

``max_cells=None`` means one full epoch (every cell once), except for
:func:`anndata_backed_random`, which reads :data:`DEFAULT_BACKED_MAX_CELLS` cells because it is
~10x slower than the others.

A baseline whose library is not importable returns a :class:`Throughput` with ``cells=0``,
``seconds=0.0`` and ``note="skipped: <why>"`` (not ``None``), so a results table keeps one row per
baseline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp
from anndata.io import read_elem

from bench.corpus import file_sha256
from bench.page_cache import evict_page_cache, warm_page_cache

BatchCallback = Callable[[np.ndarray, sp.csr_matrix], None]
"""``on_batch(cell_indices, csr)``: corpus rows of the batch (shape (rows,)) and the batch itself."""

DEFAULT_BATCH_SIZE = 256
DEFAULT_BACKED_MAX_CELLS = 20_000
# scDataset: its default fetch_factor, and block_size == fetch_factor, the setting its
# suggest_parameters() calls "balanced ... (recommended)".
SCDATASET_FETCH_FACTOR = 16
SCDATASET_BLOCK_SIZE = 16
_COPY_BLOCK_BYTES = 1 << 24
_CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Throughput:
    """One baseline's measurement.

    ``cells`` counts rows that were materialized and passed the batch checks; ``note`` says what
    was measured (cache state, settings) or ``"skipped: <why>"``.
    """

    name: str
    cells: int
    seconds: float
    note: str = ""

    @property
    def cells_per_s(self) -> float:
        """Materialized cells per second; NaN for a skipped (or empty) run."""
        return self.cells / self.seconds if self.cells and self.seconds > 0 else float("nan")

    @property
    def skipped(self) -> bool:
        return self.note.startswith("skipped")


class BaselineError(RuntimeError):
    """A baseline produced a batch that is not what it was asked for."""


def _prepare_cache(paths: list[Path], *, cold: bool) -> str:
    if cold:
        evict_page_cache(paths)
        return "cold page cache"
    warm_page_cache(paths)
    return "warm page cache"


# --------------------------------------------------------------------------- helpers


class _BatchChecker:
    """Validates every batch, counts its rows and forwards it to ``on_batch``."""

    def __init__(self, name: str, n_vars: int, on_batch: BatchCallback | None) -> None:
        self.name, self.n_vars, self.on_batch, self.cells = name, n_vars, on_batch, 0

    def __call__(self, rows: np.ndarray, csr: sp.csr_matrix) -> None:
        if not (sp.issparse(csr) and csr.format == "csr"):
            msg = f"{self.name}: batch is {type(csr).__name__}, expected a scipy CSR matrix."
            raise BaselineError(msg)
        if csr.shape != (len(rows), self.n_vars):
            msg = f"{self.name}: batch has shape {csr.shape}, expected ({len(rows)}, {self.n_vars})."
            raise BaselineError(msg)
        if csr.indptr.shape != (len(rows) + 1,) or not csr.indptr[-1] == csr.indices.size == csr.data.size:
            msg = (
                f"{self.name}: batch pointers are inconsistent "
                f"(indptr[-1]={csr.indptr[-1]}, nnz={csr.data.size}, len(indices)={csr.indices.size})."
            )
            raise BaselineError(msg)
        self.cells += csr.shape[0]
        if self.on_batch is not None:
            self.on_batch(rows, csr)


def _n_cells(n_obs: int, max_cells: int | None, default: int | None) -> int:
    limit = default if max_cells is None else max_cells
    if limit is not None and limit <= 0:
        msg = f"max_cells must be positive or None, got {max_cells}."
        raise ValueError(msg)
    return n_obs if limit is None else min(limit, n_obs)


def _shuffled_batches(n_obs: int, n_cells: int, batch_size: int, seed: int, *, sort: bool) -> list[np.ndarray]:
    """``n_cells`` distinct random rows in batches of ``batch_size`` (last one may be short)."""
    if batch_size <= 0:
        msg = f"batch_size must be positive, got {batch_size}."
        raise ValueError(msg)
    order = np.random.default_rng(seed).permutation(n_obs)[:n_cells]
    batches = [order[i : i + batch_size] for i in range(0, n_cells, batch_size)]
    return [np.sort(b) for b in batches] if sort else batches


def _obs_vars(h5ad_path: Path) -> tuple[int, int]:
    if not h5ad_path.is_file():
        msg = f"Corpus {h5ad_path} does not exist; build it with bench.corpus.build_pbmc_replicas."
        raise FileNotFoundError(msg)
    with h5py.File(h5ad_path, "r") as f:
        shape = f["X"].attrs["shape"]
    return int(shape[0]), int(shape[1])


def _workdir(h5ad_path: Path, workdir: Path | None) -> Path:
    """Where derived copies of the corpus live; default: ``<corpus>.bench-cache/`` beside it."""
    path = Path(workdir) if workdir is not None else h5ad_path.with_name(h5ad_path.name + ".bench-cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _source_stamp(h5ad_path: Path, kind: str) -> dict[str, object]:
    """Identity of the corpus a derived copy was made from.

    A content hash, not the mtime: bionemo-scdl's converter opens the h5ad in ``r+`` mode, which
    leaves the bytes unchanged but bumps the mtime (~1 s per GB to hash).
    """
    return {
        "kind": kind,
        "version": _CACHE_FORMAT_VERSION,
        "h5ad": str(h5ad_path.resolve()),
        "bytes": h5ad_path.stat().st_size,
        "sha256": file_sha256(h5ad_path),
    }


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _cached_derivative(target: Path, stamp: dict[str, object], build: Callable[[Path], None]) -> Path:
    """Build ``target`` (file or dir) once per corpus version; temp name + ``os.replace``."""
    stamp_path = target.with_name(target.name + ".json")
    if target.exists() and stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return target
        except json.JSONDecodeError:
            pass
    stamp_path.unlink(missing_ok=True)
    _remove(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        build(tmp)
        tmp.replace(target)
    finally:
        _remove(tmp)
    stamp_path.write_text(json.dumps(stamp))
    return target


@contextlib.contextmanager
def _torch_threads(n_threads: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _skipped(name: str, why: str) -> Throughput:
    return Throughput(name=name, cells=0, seconds=0.0, note=f"skipped: {why}")


def _timed(name: str, loop: Callable[[], None], checker: _BatchChecker, note: str) -> Throughput:
    started = time.perf_counter()
    loop()
    return Throughput(name=name, cells=checker.cells, seconds=time.perf_counter() - started, note=note)


# --------------------------------------------------------------------------- baselines


def anndata_backed_random(
    h5ad_path: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_cells: int | None = None,
    seed: int = 0,
    workdir: Path | None = None,
    *,
    cold: bool = False,
    on_batch: BatchCallback | None = None,
) -> Throughput:
    """AnnData backed mode (``'r'``): each batch is ``adata.X[sorted random indices]``.

    The common "random sorted batches" pattern: ``batch_size`` random rows, sorted (h5py wants
    increasing indices), read through anndata's backed CSR dataset, which issues one HDF5 read of
    ``data`` and one of ``indices`` per row and builds a CSR matrix. ``adata.X`` is evaluated per
    batch as users write it; in backed mode that re-creates the sparse dataset and so re-reads
    ``indptr`` (n_obs + 1 values) on every batch -- part of what this pattern costs.
    ``workdir`` is unused (no derived files).
    """
    name = "anndata-backed"
    h5ad_path = Path(h5ad_path)
    n_obs, n_vars = _obs_vars(h5ad_path)
    n_cells = _n_cells(n_obs, max_cells, DEFAULT_BACKED_MAX_CELLS)
    batches = _shuffled_batches(n_obs, n_cells, batch_size, seed, sort=True)
    checker = _BatchChecker(name, n_vars, on_batch)
    adata = ad.read_h5ad(h5ad_path, backed="r")
    try:
        cache = _prepare_cache([h5ad_path], cold=cold)

        def loop() -> None:
            for rows in batches:
                checker(rows, adata.X[rows])

        return _timed(name, loop, checker, f"{cache}; random sorted batches, adata.X[idx]")
    finally:
        adata.file.close()


def anndata_in_memory(
    h5ad_path: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_cells: int | None = None,
    seed: int = 0,
    workdir: Path | None = None,
    *,
    cold: bool = False,
    on_batch: BatchCallback | None = None,
) -> Throughput:
    """Whole ``X`` read into memory as scipy CSR (untimed), then shuffled batches by fancy row indexing.

    If the file's ``indptr`` and ``indices`` widths differ (anndata's ``to_memory`` keeps them as
    stored), both are set to one width once before timing -- int32 when the nnz fits, else int64:
    otherwise scipy's row indexing copies the entire ``indices`` array to the wider type on every
    batch. The note says when this happened. ``cold`` has no effect on the timed part: nothing is
    read from disk while timing. ``workdir`` is unused.
    """
    name = "anndata-in-memory"
    h5ad_path = Path(h5ad_path)
    n_obs, n_vars = _obs_vars(h5ad_path)
    batches = _shuffled_batches(n_obs, _n_cells(n_obs, max_cells, None), batch_size, seed, sort=False)
    checker = _BatchChecker(name, n_vars, on_batch)
    with h5py.File(h5ad_path, "r") as f:
        matrix = read_elem(f["X"])
    notes = ["in RAM (cold has no effect)" if cold else "in RAM", "shuffled batches, X[idx]"]
    if matrix.indptr.dtype != matrix.indices.dtype:
        width = np.dtype(np.int32 if max(matrix.nnz, n_vars) <= np.iinfo(np.int32).max else np.int64)
        notes.append(f"indptr/indices unified to {width.name} before timing")
        matrix.indptr, matrix.indices = matrix.indptr.astype(width), matrix.indices.astype(width)
    matrix = sp.csr_matrix(matrix) if not isinstance(matrix, sp.csr_matrix) else matrix

    def loop() -> None:
        for rows in batches:
            checker(rows, matrix[rows])

    return _timed(name, loop, checker, "; ".join(notes))


def _convert_to_scdl(h5ad_path: Path, scdl_dir: Path) -> None:
    from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset

    # Paginated conversion (block of 100k rows) keeps memory bounded for large corpora; X holds
    # the counts (there is no .raw). data stays SCDL's default float32, as in its README.
    SingleCellMemMapDataset(
        str(scdl_dir),
        h5ad_path=str(h5ad_path),
        use_X_not_raw=True,
        paginated_load_cutoff=0,
        load_block_row_size=100_000,
    )


def bionemo_scdl(
    h5ad_path: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_cells: int | None = None,
    seed: int = 0,
    workdir: Path | None = None,
    *,
    cold: bool = False,
    on_batch: BatchCallback | None = None,
) -> Throughput:
    """bionemo-scdl: ``SingleCellMemMapDataset`` read through a torch ``DataLoader`` as its README shows.

    The corpus is converted once into ``workdir`` (cached, untimed). Reading follows the README:
    ``DataLoader(dataset, batch_size=..., collate_fn=collate_sparse_matrix_batch)``, num_workers=0;
    each item is one ``__getitem__`` (two memmap slices stacked into a tensor) and the collate
    builds a torch sparse CSR tensor, whose three arrays become the scipy CSR batch. Instead of
    ``shuffle=True`` the sampler is the seeded permutation itself -- the same thing
    ``RandomSampler`` yields -- so it can be truncated to ``max_cells`` and verified. Values are
    float32 (SCDL's default data dtype) and column indices uint16 on disk.

    torch runs single-threaded while timing, as it does inside DataLoader worker processes: the
    collate's ``.to()``/``.max()`` over ~200k values gain nothing from a second thread, and on a
    2-vCPU VM the intra-op thread handoff made whole epochs swing 13k-69k cells/s.
    """
    name = "bionemo-scdl"
    try:
        from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset
        from bionemo.scdl.util.torch_dataloader_utils import collate_sparse_matrix_batch
        from torch.utils.data import DataLoader
    except ImportError as exc:
        return _skipped(name, f"bionemo-scdl is not importable ({exc})")
    h5ad_path = Path(h5ad_path)
    n_obs, n_vars = _obs_vars(h5ad_path)
    batches = _shuffled_batches(n_obs, _n_cells(n_obs, max_cells, None), batch_size, seed, sort=False)
    checker = _BatchChecker(name, n_vars, on_batch)
    stamp = {**_source_stamp(h5ad_path, "bionemo-scdl"), "bionemo-scdl": version("bionemo-scdl")}
    scdl_dir = _cached_derivative(
        _workdir(h5ad_path, workdir) / "bionemo-scdl", stamp, lambda tmp: _convert_to_scdl(h5ad_path, tmp)
    )
    dataset = SingleCellMemMapDataset(str(scdl_dir))
    if len(dataset) != n_obs:
        msg = (
            f"{name}: the converted dataset at {scdl_dir} has {len(dataset)} rows but the corpus has "
            f"{n_obs}; delete {scdl_dir} to rebuild it."
        )
        raise BaselineError(msg)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=np.concatenate(batches).tolist(),
        collate_fn=collate_sparse_matrix_batch,
        num_workers=0,
    )
    cache = _prepare_cache([scdl_dir], cold=cold)

    def loop() -> None:
        for rows, batch in zip(batches, loader, strict=True):
            csr = sp.csr_matrix(
                (batch.values().numpy(), batch.col_indices().numpy(), batch.crow_indices().numpy()),
                shape=(batch.shape[0], n_vars),
            )
            checker(rows, csr)

    note = f"{cache}; DataLoader + collate_sparse_matrix_batch, num_workers=0, 1 torch thread"
    with _torch_threads(1):
        return _timed(name, loop, checker, note)


@dataclass(frozen=True)
class _FetchedRows:
    """What scDataset holds per fetch: the CSR rows and which corpus rows they are.

    scDataset's default batch step is ``fetched[batch_indices]``; this supports exactly that.
    """

    rows: np.ndarray  # (n,) corpus rows
    csr: sp.csr_matrix  # (n, n_genes)

    def __getitem__(self, positions: np.ndarray) -> _FetchedRows:
        return _FetchedRows(self.rows[positions], self.csr[positions])


def _fetch_backed_rows(adata: ad.AnnData, rows: np.ndarray) -> _FetchedRows:
    # scDataset's default fetch is ``collection[rows]`` (an AnnData view); ``.X`` reads the rows.
    return _FetchedRows(rows, adata[rows].X)


def scdataset_block_shuffle(
    h5ad_path: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_cells: int | None = None,
    seed: int = 0,
    workdir: Path | None = None,
    *,
    cold: bool = False,
    on_batch: BatchCallback | None = None,
    block_size: int = SCDATASET_BLOCK_SIZE,
    fetch_factor: int = SCDATASET_FETCH_FACTOR,
) -> Throughput:
    """scDataset over the backed AnnData with ``BlockShuffling``: quasi-random, not a full shuffle.

    scDataset permutes blocks of ``block_size`` consecutive cells, fetches ``batch_size *
    fetch_factor`` cells at a time with sorted indices (one backed read of the AnnData view), and
    cuts each fetch into shuffled batches by scipy row indexing. Iterated through
    ``DataLoader(dataset, batch_size=None, num_workers=0)`` as its README shows. ``max_cells``
    stops the epoch after that many cells. ``workdir`` is unused.
    """
    name = "scdataset-block-shuffle"
    try:
        from scdataset import BlockShuffling, scDataset
        from torch.utils.data import DataLoader
    except ImportError as exc:
        return _skipped(name, f"scDataset is not importable ({exc})")
    h5ad_path = Path(h5ad_path)
    n_obs, n_vars = _obs_vars(h5ad_path)
    n_cells = _n_cells(n_obs, max_cells, None)
    checker = _BatchChecker(name, n_vars, on_batch)
    adata = ad.read_h5ad(h5ad_path, backed="r")
    try:
        dataset = scDataset(
            adata,
            BlockShuffling(block_size=block_size),
            batch_size=batch_size,
            fetch_factor=fetch_factor,
            fetch_callback=_fetch_backed_rows,
            seed=seed,
        )
        loader = DataLoader(dataset, batch_size=None, num_workers=0)
        cache = _prepare_cache([h5ad_path], cold=cold)

        def loop() -> None:
            for batch in loader:
                checker(batch.rows, batch.csr)
                if checker.cells >= n_cells:
                    break

        note = f"{cache}; BlockShuffling(block_size={block_size}), fetch_factor={fetch_factor}"
        return _timed(name, loop, checker, note)
    finally:
        adata.file.close()


def _write_raw_csr(h5ad_path: Path, out_dir: Path) -> None:
    """Copy X's three arrays to uncompressed .npy files (indptr as int64), streaming in blocks."""
    out_dir.mkdir(parents=True)
    with h5py.File(h5ad_path, "r") as f:
        for key in ("indptr", "indices", "data"):
            source = f["X"][key]
            dtype = np.dtype(np.int64) if key == "indptr" else source.dtype
            target = np.lib.format.open_memmap(out_dir / f"{key}.npy", mode="w+", dtype=dtype, shape=source.shape)
            step = max(1, _COPY_BLOCK_BYTES // dtype.itemsize)
            for start in range(0, source.shape[0], step):
                target[start : start + step] = source[start : start + step]
            target.flush()
            del target


def raw_memmap_limit(
    h5ad_path: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_cells: int | None = None,
    seed: int = 0,
    workdir: Path | None = None,
    *,
    cold: bool = False,
    on_batch: BatchCallback | None = None,
) -> Throughput:
    """Upper bound: the corpus's CSR arrays as plain ``.npy`` memmaps, read one contiguous batch at a time.

    ``indptr`` (int64), ``indices`` and ``data`` (the corpus's dtypes) are written once into
    ``workdir/raw-csr`` (cached, untimed) and opened with ``np.load(mmap_mode="r")``. A batch is
    ``batch_size`` consecutive cells: slice ``indptr``, copy the ``indices``/``data`` slices with
    ``np.array`` and wrap them as CSR. Batches are visited in a seeded shuffled order, so only the
    within-batch order is sequential. No loader of this data can do less work per cell.
    """
    name = "raw-memmap-limit"
    h5ad_path = Path(h5ad_path)
    n_obs, n_vars = _obs_vars(h5ad_path)
    n_cells = _n_cells(n_obs, max_cells, None)
    if batch_size <= 0:
        msg = f"batch_size must be positive, got {batch_size}."
        raise ValueError(msg)
    checker = _BatchChecker(name, n_vars, on_batch)
    raw_dir = _cached_derivative(
        _workdir(h5ad_path, workdir) / "raw-csr",
        _source_stamp(h5ad_path, "raw-csr"),
        lambda tmp: _write_raw_csr(h5ad_path, tmp),
    )
    indptr, indices, data = (np.load(raw_dir / f"{key}.npy", mmap_mode="r") for key in ("indptr", "indices", "data"))
    starts = np.random.default_rng(seed).permutation(np.arange(0, n_obs, batch_size))
    cache = _prepare_cache([raw_dir], cold=cold)

    def loop() -> None:
        for start in starts:
            if checker.cells >= n_cells:
                break
            stop = min(start + batch_size, n_obs)
            pointers = np.array(indptr[start : stop + 1])
            first, last = pointers[0], pointers[-1]
            pointers -= first
            csr = sp.csr_matrix(
                (np.array(data[first:last]), np.array(indices[first:last]), pointers),
                shape=(stop - start, n_vars),
            )
            checker(np.arange(start, stop), csr)

    return _timed(name, loop, checker, f"{cache}; contiguous batches in shuffled order")


BASELINES: dict[str, Callable[..., Throughput]] = {
    "anndata-backed": anndata_backed_random,
    "anndata-in-memory": anndata_in_memory,
    "bionemo-scdl": bionemo_scdl,
    "scdataset-block-shuffle": scdataset_block_shuffle,
    "raw-memmap-limit": raw_memmap_limit,
}
"""Every baseline by its ``Throughput.name``, in the order a report lists them."""


def library_versions() -> dict[str, str]:
    """Versions of the measured libraries, for the report beside the figures."""
    found = {}
    for package in ("anndata", "h5py", "scipy", "numpy", "torch", "bionemo-scdl", "scDataset"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
