"""Tests for finetune.evaluation.cells: the log-normalization by hand, the PCA baseline recovering planted cell types
(and noise failing), reduced folds and dropped singleton classes, the atomic PNG, and errors naming the sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from finetune.evaluation.cells import cell_type_metrics, log_normalize, map_2d, pca_baseline, plot_cell_maps

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def planted_counts(cells_per_type: int = 60, genes_per_block: int = 20, n_types: int = 3, seed: int = 0):
    """Poisson counts where type t over-expresses genes [t*block, (t+1)*block) five-fold, plus 40 shared genes."""
    rng = np.random.default_rng(seed)
    n_genes = genes_per_block * n_types + 40
    labels = np.repeat([f"type{t}" for t in range(n_types)], cells_per_type)
    rates = np.full((len(labels), n_genes), 1.0)
    for t in range(n_types):
        rates[labels == f"type{t}", t * genes_per_block : (t + 1) * genes_per_block] = 5.0
    return sp.csr_matrix(rng.poisson(rates)), labels


def test_log_normalize_by_hand_with_an_empty_cell() -> None:
    counts = sp.csr_matrix(np.array([[1, 3, 0], [0, 0, 0], [2, 0, 2]]))
    # row 0: total 4 -> 1/4*10 = 2.5, 3/4*10 = 7.5; row 1: no counts, stays 0; row 2: total 4 -> 5 and 5
    expected = np.log1p(np.array([[2.5, 7.5, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 5.0]]))
    out = log_normalize(counts, target_sum=10)
    assert sp.issparse(out)
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-6)
    assert np.isfinite(out.toarray()).all()


def test_pca_baseline_recovers_planted_types_and_noise_does_not() -> None:
    counts, labels = planted_counts()
    embedding = pca_baseline(counts, n_top_genes=50, n_components=10, seed=0)
    assert embedding.shape == (len(labels), 10)
    assert embedding.dtype == np.float32
    good = cell_type_metrics(embedding, labels, seed=0)
    assert good["knn_accuracy"] > 0.9
    assert good["ari"] > 0.8
    assert good["n_cells"] == 180 and good["n_labels"] == 3 and good["folds"] == 5 and good["dropped_labels"] == []

    noise = np.random.default_rng(1).normal(size=embedding.shape)
    bad = cell_type_metrics(noise, labels, seed=0)
    assert bad["knn_accuracy"] < 0.6  # chance is 1/3
    assert bad["ari"] < 0.2


def test_pca_baseline_is_deterministic_and_caps_components() -> None:
    counts, _ = planted_counts(cells_per_type=4, genes_per_block=2)
    first = pca_baseline(counts, n_components=50, seed=3)
    assert first.shape == (12, 11)  # min(12 cells, 46 genes) - 1
    np.testing.assert_array_equal(first, pca_baseline(counts, n_components=50, seed=3))


def test_small_class_reduces_folds_and_singleton_is_dropped() -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 3 + ["d"])
    centres = {"a": 0.0, "b": 5.0, "c": 10.0, "d": 20.0}
    embedding = np.stack([rng.normal(centres[name], 0.3, size=4) for name in labels])
    # k=3: each training fold holds 2 of the 3 "c" cells, so their majority still wins the vote
    result = cell_type_metrics(embedding, labels, k=3, folds=5, seed=0)
    assert result["folds"] == 3
    assert result["dropped_labels"] == ["d"]
    assert result["n_labels"] == 4
    assert result["knn_accuracy"] == pytest.approx(1.0)


def test_mismatched_sizes_name_both() -> None:
    with pytest.raises(ValueError, match=r"\(12, 4\).*11 labels"):
        cell_type_metrics(np.zeros((12, 4)), np.array(["a", "b"] * 5 + ["a"]))


def test_too_few_cells_or_labels() -> None:
    with pytest.raises(ValueError, match="2 labels"):
        cell_type_metrics(np.zeros((12, 2)), np.array(["a"] * 12))
    with pytest.raises(ValueError, match="at least 10 cells"):
        cell_type_metrics(np.zeros((4, 2)), np.array(["a", "b", "a", "b"]))


def test_map_2d_pca_and_unknown_method() -> None:
    embedding = np.random.default_rng(0).normal(size=(30, 6))
    coords, used = map_2d(embedding, method="pca")
    assert used == "pca"
    assert coords.shape == (30, 2) and coords.dtype == np.float32
    with pytest.raises(ValueError, match="bogus"):
        map_2d(embedding, method="bogus")


def test_plot_cell_maps_writes_png_atomically(tmp_path) -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["T cell", "B cell", ""] * 10)
    maps = {"pretrained": rng.normal(size=(30, 2)), "PCA baseline": rng.normal(size=(30, 2))}
    path = plot_cell_maps(maps, labels, tmp_path / "cells.png", title="test", method="pca")
    assert path == tmp_path / "cells.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["cells.png"]
