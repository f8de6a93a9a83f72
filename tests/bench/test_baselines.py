"""Tests for bench.baselines: every baseline reads the cells it claims, in checked CSR batches.

A baseline that returned wrong rows, or counted cells it never materialized, would make the loader
benchmark compare against a fake figure; so each test compares the batches with the source matrix.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata.io import write_elem

from bench import baselines as bl
from bench import page_cache

N_CELLS, N_GENES = 500, 300


@pytest.fixture(scope="module")
def corpus_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(11)
    counts = sp.random(N_CELLS, N_GENES, density=0.08, format="csr", random_state=rng, dtype=np.float64)
    counts.data = rng.integers(1, 40, size=counts.nnz).astype(np.float64)
    counts = sp.csr_matrix(counts.astype(np.int32))
    counts.data[counts.indptr[7] : counts.indptr[8]] = 0  # an empty cell must survive every reader
    counts.eliminate_zeros()
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["T", "B"], N_CELLS))})
    obs.index = [f"cell{i}" for i in range(N_CELLS)]
    var = pd.DataFrame(index=[f"gene{j}" for j in range(N_GENES)])
    path = tmp_path_factory.mktemp("corpus") / "tiny.h5ad"
    ad.AnnData(X=counts, obs=obs, var=var).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def source_rows(corpus_h5ad: Path) -> sp.csr_matrix:
    return ad.read_h5ad(corpus_h5ad).X


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-work")


class Recorder:
    """``on_batch`` that keeps every batch's rows and checks its contents against the source."""

    def __init__(self, source: sp.csr_matrix) -> None:
        self.source, self.batches = source, []

    def __call__(self, rows: np.ndarray, csr: sp.csr_matrix) -> None:
        expected = self.source[np.asarray(rows)]
        assert csr.shape == expected.shape
        assert (sp.csr_matrix(csr, dtype=np.float64) != expected.astype(np.float64)).nnz == 0
        self.batches.append(np.asarray(rows).copy())


@pytest.mark.parametrize("name", list(bl.BASELINES))
def test_baseline_batches_equal_source_rows(
    name: str, corpus_h5ad: Path, source_rows: sp.csr_matrix, workdir: Path
) -> None:
    recorder = Recorder(source_rows)
    result = bl.BASELINES[name](corpus_h5ad, batch_size=64, max_cells=200, seed=3, workdir=workdir, on_batch=recorder)
    assert isinstance(result, bl.Throughput)
    assert result.name == name
    assert not result.skipped
    assert result.seconds > 0
    assert result.cells_per_s > 0
    rows = np.concatenate(recorder.batches)
    # Counted cells are exactly the rows handed to on_batch, at least the 200 asked for.
    assert result.cells == rows.size >= 200
    # Only the corpus's last (short) batch may be short; raw-memmap-limit may visit it mid-way.
    assert sum(len(b) != 64 for b in recorder.batches) <= 1
    assert np.unique(rows).size == rows.size, "a shuffled epoch never repeats a cell"
    assert not np.array_equal(rows, np.arange(rows.size)), "batches must not be in file order"


@pytest.mark.parametrize("name", ["anndata-backed", "anndata-in-memory", "bionemo-scdl"])
def test_full_shuffle_baselines_cover_an_epoch(
    name: str, corpus_h5ad: Path, source_rows: sp.csr_matrix, workdir: Path
) -> None:
    recorder = Recorder(source_rows)
    result = bl.BASELINES[name](corpus_h5ad, batch_size=128, max_cells=N_CELLS, workdir=workdir, on_batch=recorder)
    assert result.cells == N_CELLS
    assert np.array_equal(np.sort(np.concatenate(recorder.batches)), np.arange(N_CELLS))


def test_same_seed_same_order_and_cold_runs(corpus_h5ad: Path, source_rows: sp.csr_matrix, workdir: Path) -> None:
    first, second = Recorder(source_rows), Recorder(source_rows)
    bl.raw_memmap_limit(corpus_h5ad, batch_size=50, seed=5, workdir=workdir, on_batch=first)
    cold = bl.raw_memmap_limit(corpus_h5ad, batch_size=50, seed=5, workdir=workdir, cold=True, on_batch=second)
    assert cold.note.startswith("cold page cache")
    assert cold.cells == N_CELLS
    assert all(np.array_equal(a, b) for a, b in zip(first.batches, second.batches, strict=True))


def test_in_memory_unifies_mixed_index_widths(tmp_path: Path, source_rows: sp.csr_matrix) -> None:
    # anndata keeps the stored widths on read; int64 indptr + int32 indices would make scipy copy
    # the whole indices array on every batch, so the baseline unifies them before timing.
    path = tmp_path / "mixed.h5ad"
    with h5py.File(path, "w") as f:
        write_elem(f, "X", source_rows, dataset_kwargs={"indptr_dtype": np.int64})
        assert (f["X/indptr"].dtype, f["X/indices"].dtype) == (np.int64, np.int32)
    recorder = Recorder(source_rows)
    result = bl.anndata_in_memory(path, batch_size=100, on_batch=recorder)
    assert "unified to int32" in result.note
    assert result.cells == N_CELLS


def test_derived_copies_are_built_once(corpus_h5ad: Path, workdir: Path) -> None:
    bl.bionemo_scdl(corpus_h5ad, max_cells=10, workdir=workdir)
    bl.raw_memmap_limit(corpus_h5ad, max_cells=10, workdir=workdir)
    stamps = {p: p.stat().st_mtime_ns for p in workdir.glob("*.json")}
    bl.bionemo_scdl(corpus_h5ad, max_cells=10, workdir=workdir)
    bl.raw_memmap_limit(corpus_h5ad, max_cells=10, workdir=workdir)
    assert {p: p.stat().st_mtime_ns for p in workdir.glob("*.json")} == stamps
    assert len(stamps) == 2


def test_missing_library_is_reported_as_skipped(corpus_h5ad: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bionemo.scdl.io.single_cell_memmap_dataset", None)
    monkeypatch.setitem(sys.modules, "scdataset", None)
    for baseline in (bl.bionemo_scdl, bl.scdataset_block_shuffle):
        result = baseline(corpus_h5ad)
        assert result.skipped
        assert result.cells == 0
        assert np.isnan(result.cells_per_s)


def test_malformed_batch_is_an_error() -> None:
    checker = bl._BatchChecker("broken", n_vars=10, on_batch=None)
    with pytest.raises(bl.BaselineError, match="expected \\(3, 10\\)"):
        checker(np.arange(3), sp.csr_matrix((2, 10)))
    with pytest.raises(bl.BaselineError, match="expected a scipy CSR"):
        checker(np.arange(2), np.zeros((2, 10)))
    assert checker.cells == 0


def test_bad_arguments_are_rejected(corpus_h5ad: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be positive"):
        bl.anndata_in_memory(corpus_h5ad, batch_size=0)
    with pytest.raises(ValueError, match="max_cells must be positive"):
        bl.anndata_in_memory(corpus_h5ad, max_cells=0)
    with pytest.raises(FileNotFoundError, match="build_pbmc_replicas"):
        bl.anndata_backed_random(tmp_path / "missing.h5ad")


def test_page_cache_helpers_walk_directories(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    for path in (tmp_path / "top.bin", nested / "deep.bin"):
        path.write_bytes(b"x" * 10_000)
    assert page_cache.files_under([tmp_path]) == sorted([nested / "deep.bin", tmp_path / "top.bin"])
    page_cache.warm_page_cache([tmp_path])
    page_cache.evict_page_cache([tmp_path, tmp_path / "top.bin", tmp_path / "absent"])
