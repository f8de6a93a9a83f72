"""Tests for bench.corpus: the replicated, binomially thinned PBMC benchmark corpus.

The loader benchmark trusts that the corpus is deterministic, made of real cells (each row a thinned
copy of its source cell), near the requested depth, and a standard h5ad that anndata can read back
in backed mode without the int64-indptr/int32-indices scipy pitfall.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import require_shared

from bench.corpus import build_pbmc_replicas, sidecar_path, thinning_probability

N_SOURCE, N_GENES = 40, 60


@pytest.fixture(scope="module")
def source_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    dense = rng.poisson(rng.gamma(0.6, 2.0, size=(N_SOURCE, N_GENES))).astype(np.int32)
    counts = sp.csr_matrix(dense)
    labels = rng.choice(["T", "B", "NK"], N_SOURCE).astype(object)
    labels[3] = np.nan  # unlabeled cells (PBMC has 62) must stay unlabeled
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"BC{i:03d}-1" for i in range(N_SOURCE)])
    var = pd.DataFrame(index=[f"G{j}" for j in range(N_GENES)])
    path = tmp_path_factory.mktemp("source") / "source.h5ad"
    ad.AnnData(X=counts, obs=obs, var=var).write_h5ad(path, compression="gzip")
    return path


def _mean_nnz(path: Path) -> float:
    with h5py.File(path, "r") as f:
        indptr = f["X/indptr"][:]
    return indptr[-1] / (indptr.size - 1)


def test_rows_are_thinned_replicas_of_source_cells(source_h5ad: Path, tmp_path: Path) -> None:
    n_cells = 3 * N_SOURCE + 13  # a partial last replica
    out = build_pbmc_replicas(source_h5ad, n_cells, tmp_path / "c.h5ad", seed=1, target_nnz_per_cell=20)
    corpus, source = ad.read_h5ad(out), ad.read_h5ad(source_h5ad)
    assert corpus.shape == (n_cells, N_GENES)
    assert corpus.var_names.equals(source.var_names)
    assert corpus.obs_names.is_unique
    rows = np.arange(n_cells)
    replica_source = source.X[rows % N_SOURCE]
    assert (corpus.X - replica_source).max() <= 0, "thinning never adds counts"
    assert (corpus.X.astype(bool) > replica_source.astype(bool)).count_nonzero() == 0, "nor genes"
    assert np.array_equal(corpus.obs["replica"], rows // N_SOURCE)
    assert np.array_equal(corpus.obs["source_cell"], rows % N_SOURCE)
    expected_types = source.obs["cell_type"].to_numpy()[rows % N_SOURCE]
    assert pd.Series(corpus.obs["cell_type"].to_numpy()).equals(pd.Series(expected_types))
    assert np.array_equal(corpus.obs["n_genes"], np.diff(corpus.X.indptr))
    assert np.array_equal(corpus.obs["n_counts"], np.asarray(corpus.X.sum(axis=1)).ravel())
    assert (corpus.X[:N_SOURCE] != corpus.X[N_SOURCE : 2 * N_SOURCE]).nnz > 0, "replicas differ"


def test_layout_avoids_the_mixed_index_width_pitfall(source_h5ad: Path, tmp_path: Path) -> None:
    out = build_pbmc_replicas(source_h5ad, 200, tmp_path / "c.h5ad", target_nnz_per_cell=20, cells_per_write=50)
    with h5py.File(out, "r") as f:
        x = f["X"]
        assert x.attrs["encoding-type"] == "csr_matrix"
        assert (x["data"].dtype, x["indices"].dtype, x["indptr"].dtype) == (np.int32, np.int32, np.int32)
        assert x["data"].compression is None
        assert x["data"].maxshape == (None,), "resizable, as anndata writes sparse arrays"
    backed = ad.read_h5ad(out, backed="r")
    try:
        in_memory = backed.X[np.array([3, 77, 150])]
        assert in_memory.indptr.dtype == in_memory.indices.dtype
    finally:
        backed.file.close()


def test_deterministic_and_independent_of_write_blocks(source_h5ad: Path, tmp_path: Path) -> None:
    kwargs = {"n_cells": 170, "seed": 4, "target_nnz_per_cell": 18.0}
    one = build_pbmc_replicas(source_h5ad, out_h5ad=tmp_path / "one.h5ad", cells_per_write=1, **kwargs)
    big = build_pbmc_replicas(source_h5ad, out_h5ad=tmp_path / "big.h5ad", cells_per_write=10_000, **kwargs)
    a, b = ad.read_h5ad(one), ad.read_h5ad(big)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)
    prefix = ad.read_h5ad(
        build_pbmc_replicas(source_h5ad, 90, tmp_path / "prefix.h5ad", seed=4, target_nnz_per_cell=18)
    )
    assert (a.X[:90] != prefix.X).count_nonzero() == 0, "a smaller corpus is a prefix of a larger one"
    other = ad.read_h5ad(build_pbmc_replicas(source_h5ad, 170, tmp_path / "other.h5ad", seed=5, target_nnz_per_cell=18))
    assert (other.X != a.X).nnz > 0


def test_mean_nnz_per_cell_is_near_target(source_h5ad: Path, tmp_path: Path) -> None:
    source_mean = ad.read_h5ad(source_h5ad).X.nnz / N_SOURCE
    target = 0.7 * source_mean
    out = build_pbmc_replicas(source_h5ad, 100 * N_SOURCE, tmp_path / "c.h5ad", target_nnz_per_cell=target)
    assert _mean_nnz(out) == pytest.approx(target, rel=0.02)
    record = json.loads(sidecar_path(out).read_text())
    assert record["mean_nnz_per_cell"] == pytest.approx(target, rel=0.02)


def test_cache_reuses_matching_corpus_only(source_h5ad: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5ad"
    build_pbmc_replicas(source_h5ad, 80, out, target_nnz_per_cell=20)
    built = out.stat().st_mtime_ns
    build_pbmc_replicas(source_h5ad, 80, out, target_nnz_per_cell=20)
    assert out.stat().st_mtime_ns == built
    build_pbmc_replicas(source_h5ad, 80, out, seed=9, target_nnz_per_cell=20)
    assert out.stat().st_mtime_ns != built
    assert json.loads(sidecar_path(out).read_text())["seed"] == 9
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_thinning_probability() -> None:
    # All counts 1: a count survives with probability p, so p = target / mean exactly.
    assert thinning_probability(np.ones(1000, dtype=np.int32), 10, 25.0) == pytest.approx(0.25)
    assert thinning_probability(np.array([1, 5, 9]), 1, 3.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="can only remove entries"):
        thinning_probability(np.array([1, 5, 9]), 1, 3.5)
    with pytest.raises(ValueError, match="must be > 0"):
        thinning_probability(np.array([1, 5, 9]), 1, 0.0)


def test_bad_arguments(source_h5ad: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_cells must be a positive"):
        build_pbmc_replicas(source_h5ad, 0, tmp_path / "c.h5ad")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_pbmc_replicas(tmp_path / "absent.h5ad", 10, tmp_path / "c.h5ad")


@pytest.mark.real_data
def test_real_pbmc_corpus(tmp_path: Path) -> None:
    pbmc = require_shared("counts", "human_pbmc3k_10x.h5ad")  # skips, or fails when CI=true
    out = build_pbmc_replicas(pbmc, 2 * 2700 + 100, tmp_path / "pbmc.h5ad", seed=0, target_nnz_per_cell=800.0)
    corpus, source = ad.read_h5ad(out, backed="r"), ad.read_h5ad(pbmc)
    try:
        assert corpus.shape == (5500, 32738)
        assert corpus.var_names.equals(source.var_names)
        assert _mean_nnz(out) == pytest.approx(800.0, rel=0.01)
        labelled = corpus.obs["cell_type"].iloc[:5400].value_counts()
        assert labelled.equals(2 * source.obs["cell_type"].value_counts())
        rows = np.array([0, 2699, 2700, 5499])
        assert (corpus.X[rows] - source.X[rows % 2700]).max() <= 0
    finally:
        corpus.file.close()
