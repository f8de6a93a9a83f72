"""Tests for grn.baselines and grn.plots: exact parity for correlations, recovery of a simulated linear
network by every method, GRNBoost2 and its scikit-learn fallback, the on-disk cache, degree leakage, plotting.

GRNBoost2 runs once, on a small simulated slice (60 genes × 200 cells, 10 TFs), so the file stays fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from finetune.errors import GrnInputError
from finetune.grn import baselines, trees
from finetune.grn.metrics import auroc
from finetune.grn.plots import plot_curves

N_TFS, N_GENES, N_CELLS = 10, 60, 200


def simulate_linear_network(
    n_tfs: int = N_TFS, n_genes: int = N_GENES, n_cells: int = N_CELLS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """TFs ~ N(0, 1); each non-TF target = 2 TFs · weights + noise. Returns expression (n_genes, n_cells) and the
    true-edge mask (n_genes, n_genes), mask[tf, target]."""
    rng = np.random.default_rng(seed)
    expression = rng.normal(size=(n_genes, n_cells))
    truth = np.zeros((n_genes, n_genes), dtype=bool)
    for target in range(n_tfs, n_genes):
        regulators = rng.choice(n_tfs, size=2, replace=False)
        weights = rng.choice([-1.0, 1.0], size=2) * rng.uniform(0.7, 1.5, size=2)
        expression[target] = weights @ expression[regulators] + 0.5 * rng.normal(size=n_cells)
        truth[regulators, target] = True
    return expression, truth


def tf_candidates(n_genes: int = N_GENES, n_tfs: int = N_TFS) -> np.ndarray:
    """BEELINE's candidate set for scRNA-seq as a (n_genes, n_genes) mask: every TF → gene pair, no self-loops."""
    candidates = ~np.eye(n_genes, dtype=bool)
    candidates[n_tfs:] = False
    return candidates


def tf_candidate_auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    candidates = tf_candidates(truth.shape[0])
    return auroc(truth[candidates].astype(int), scores[candidates])


@pytest.fixture(scope="module")
def network() -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    expression, truth = simulate_linear_network()
    genes = [f"GENE{i}" for i in range(N_GENES)]
    return expression, truth, genes, np.arange(N_TFS)


@pytest.fixture(scope="module")
def grnboost2_run(network, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("arboreto")
    expression, _, genes, tf_index = network
    cache_dir = tmp_path_factory.mktemp("grnboost2_cache")
    start = time.perf_counter()
    matrix, label = trees.tree_importance_matrix(expression, genes, tf_index, seed=0, cache_dir=cache_dir)
    return matrix, label, time.perf_counter() - start, cache_dir


# ---- correlation ----


def test_pearson_equals_numpy_corrcoef_with_constant_gene() -> None:
    rng = np.random.default_rng(3)
    expression = rng.normal(size=(7, 40))
    expression[4] = 2.5  # constant gene
    got = baselines.correlation_matrix(expression)
    assert got.dtype == np.float32 and got.shape == (7, 7)
    varying = [0, 1, 2, 3, 5, 6]
    want = np.abs(np.corrcoef(expression[varying]))
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(got[np.ix_(varying, varying)], want, atol=1e-6)
    assert not got[4].any() and not got[:, 4].any()
    assert not np.diag(got).any()


def test_spearman_equals_scipy() -> None:
    rng = np.random.default_rng(4)
    expression = np.round(rng.exponential(size=(6, 50)), 1)  # ties, like sparse counts
    got = baselines.correlation_matrix(expression, method="spearman")
    want = np.abs(spearmanr(expression.T).statistic)  # spearmanr takes variables as columns
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_correlation_rejects_bad_inputs() -> None:
    with pytest.raises(GrnInputError, match="allowed: pearson, spearman"):
        baselines.correlation_matrix(np.ones((3, 4)), method="kendall")
    with pytest.raises(GrnInputError, match="NaN/inf"):
        baselines.correlation_matrix(np.array([[1.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(GrnInputError, match=r"\(n_genes, n_cells\)"):
        baselines.correlation_matrix(np.ones(5))


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlation_recovers_simulated_network(network, method: str) -> None:
    expression, truth, _, _ = network
    assert tf_candidate_auroc(baselines.correlation_matrix(expression, method), truth) > 0.8


# ---- tree ensembles ----


def test_grnboost2_small_slice(grnboost2_run, network) -> None:
    matrix, label, seconds, _ = grnboost2_run
    _, truth, _, _ = network
    assert label == "grnboost2"
    assert matrix.dtype == np.float32 and matrix.shape == (N_GENES, N_GENES)
    assert not matrix[N_TFS:].any(), "only TF rows may hold scores"
    assert not np.diag(matrix).any()
    assert matrix[:N_TFS].any()
    assert tf_candidate_auroc(matrix, truth) > 0.8
    print(f"grnboost2 on {N_GENES} genes × {N_CELLS} cells, {N_TFS} TFs: {seconds:.2f} s")


def test_grnboost2_cache_hit_skips_the_run(grnboost2_run, network, monkeypatch: pytest.MonkeyPatch) -> None:
    matrix, _, _, cache_dir = grnboost2_run
    expression, _, genes, tf_index = network
    assert len(list(cache_dir.glob("grnboost2-*.npy"))) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("cache hit expected, GRNBoost2 ran again")

    monkeypatch.setattr(trees, "_grnboost2", must_not_run)
    again, label = trees.tree_importance_matrix(expression, genes, tf_index, seed=0, cache_dir=cache_dir)
    assert label == "grnboost2"
    np.testing.assert_array_equal(again, matrix)


def test_genie3_sklearn_recovers_simulated_network() -> None:
    # Half the GRNBoost2 slice: the scikit-learn ensemble fits one forest per gene, ~50-90 ms each on two cores.
    n_tfs, n_genes = 5, 30
    expression, truth = simulate_linear_network(n_tfs=n_tfs, n_genes=n_genes, n_cells=150, seed=1)
    genes = [f"GENE{i}" for i in range(n_genes)]
    start = time.perf_counter()
    matrix, label = trees.tree_importance_matrix(expression, genes, np.arange(n_tfs), method="genie3", seed=0)
    seconds = time.perf_counter() - start
    assert label == "genie3-sklearn"
    assert matrix.dtype == np.float32 and not matrix[n_tfs:].any() and not np.diag(matrix).any()
    candidates = tf_candidates(n_genes, n_tfs)
    assert auroc(truth[candidates].astype(int), matrix[candidates]) > 0.8
    print(f"genie3-sklearn on {n_genes} genes × 150 cells, {n_tfs} TFs: {seconds:.2f} s")


def small_network() -> tuple[np.ndarray, list[str], np.ndarray]:
    expression, _ = simulate_linear_network(n_tfs=4, n_genes=12, n_cells=80, seed=5)
    return expression, [f"G{i}" for i in range(12)], np.arange(4)


def test_fallback_when_arboreto_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import arboreto.algo` raise ImportError, as on a box without it.
    monkeypatch.setitem(sys.modules, "arboreto", None)
    monkeypatch.setitem(sys.modules, "arboreto.algo", None)
    expression, genes, tf_index = small_network()
    matrix, label = trees.tree_importance_matrix(expression, genes, tf_index, seed=0)
    assert label.startswith("genie3-sklearn (arboreto unavailable: ")
    forced, forced_label = trees.tree_importance_matrix(expression, genes, tf_index, method="genie3", seed=0)
    assert forced_label == "genie3-sklearn"
    np.testing.assert_array_equal(matrix, forced)  # same ensemble, and the seed makes it deterministic


def test_cache_hit_returns_same_matrix_without_rerunning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expression, genes, tf_index = small_network()
    calls = []

    def counting(expression, tf_index, *, seed, workers):  # stands in for the forest: only the cache is under test
        calls.append(seed)
        return np.random.default_rng(len(calls)).random((expression.shape[0],) * 2, dtype=np.float32)

    monkeypatch.setattr(trees, "_genie3_sklearn", counting)
    kwargs = {"method": "genie3", "seed": 1, "cache_dir": tmp_path}
    first, _ = trees.tree_importance_matrix(expression, genes, tf_index, **kwargs)
    start = time.perf_counter()
    second, label = trees.tree_importance_matrix(expression, genes, tf_index, **kwargs)
    assert time.perf_counter() - start < 0.5
    assert len(calls) == 1 and label == "genie3-sklearn"
    np.testing.assert_array_equal(first, second)
    assert [p.name.startswith("genie3-") for p in tmp_path.iterdir()] == [True]

    # Any change to the inputs is a different key.
    trees.tree_importance_matrix(expression, genes, tf_index, method="genie3", seed=2, cache_dir=tmp_path)
    trees.tree_importance_matrix(expression[:, :-1], genes, tf_index, **kwargs)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.npy"))) == 3


def test_killed_cache_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expression, genes, tf_index = small_network()
    monkeypatch.setattr(trees, "_genie3_sklearn", lambda expression, *a, **k: np.ones((12, 12), np.float32))

    def dies_midway(file, array, allow_pickle):
        file.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(baselines.np, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        trees.tree_importance_matrix(expression, genes, tf_index, method="genie3", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tree_inputs_are_checked() -> None:
    expression, genes, tf_index = small_network()
    with pytest.raises(GrnInputError, match="allowed: grnboost2, genie3"):
        trees.tree_importance_matrix(expression, genes, tf_index, method="xgboost")
    with pytest.raises(GrnInputError, match="genes lists 11 names but expression has 12"):
        trees.tree_importance_matrix(expression, genes[:-1], tf_index, method="genie3")
    with pytest.raises(GrnInputError, match="duplicated: G1"):
        trees.tree_importance_matrix(expression, ["G1", *genes[1:]], tf_index, method="genie3")
    with pytest.raises(GrnInputError, match=r"outside 0..11: \[12\]"):
        trees.tree_importance_matrix(expression, genes, np.array([0, 12]), method="genie3")
    with pytest.raises(GrnInputError, match="repeats rows"):
        trees.tree_importance_matrix(expression, genes, np.array([1, 1]), method="genie3")


# ---- degree and lookup ----


def test_degree_matrix_hand_case() -> None:
    # Positives 0→1, 0→2, 1→2 (the 2→0 negative is ignored): out-degree [2, 1, 0], in-degree [0, 1, 2].
    edges = np.array([[0, 1, 1], [0, 2, 1], [1, 2, 1], [2, 0, 0]])
    want = np.array([[0, 2, 4], [0, 1, 2], [0, 0, 0]], dtype=np.float32)
    got = baselines.degree_matrix(edges, n_genes=3)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(baselines.degree_matrix(edges.astype(float), 3), want)
    with pytest.raises(GrnInputError, match=r"must lie in 0\.\.2"):
        baselines.degree_matrix(np.array([[0, 3, 1]]), n_genes=3)
    with pytest.raises(GrnInputError, match="labels must be 0 or 1"):
        baselines.degree_matrix(np.array([[0, 1, 2]]), n_genes=3)
    with pytest.raises(GrnInputError, match=r"\(n_edges, 3\)"):
        baselines.degree_matrix(np.array([[0, 1]]), n_genes=3)


def test_score_pairs() -> None:
    matrix = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(baselines.score_pairs(matrix, np.array([[0, 1], [3, 2]])), [1.0, 14.0])
    np.testing.assert_array_equal(baselines.score_pairs(matrix, np.array([[2, 0, 1], [1, 3, 0]])), [8.0, 7.0])
    with pytest.raises(GrnInputError, match=r"row 1 is \[4, 0\]"):
        baselines.score_pairs(matrix, np.array([[0, 1], [4, 0]]))
    with pytest.raises(GrnInputError, match=r"\(m, 2\)"):
        baselines.score_pairs(matrix, np.array([0, 1]))
    with pytest.raises(GrnInputError, match="integer gene indices"):
        baselines.score_pairs(matrix, np.array([[0.5, 1.0]]))
    with pytest.raises(GrnInputError, match="square"):
        baselines.score_pairs(matrix[:3], np.array([[0, 1]]))


# ---- plots ----


def test_plot_curves_writes_two_pngs(tmp_path: Path, network) -> None:
    expression, truth, _, _ = network
    candidates = tf_candidates()
    labels = truth[candidates].astype(int)
    rng = np.random.default_rng(0)
    curves = {
        "pearson": (labels, baselines.correlation_matrix(expression)[candidates]),
        "random": (labels, rng.random(labels.size)),
    }
    paths = plot_curves(curves, tmp_path / "figs", title="simulated network")
    assert [p.name for p in paths] == ["roc.png", "pr.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["pr.png", "roc.png"]  # no temp files left
    with pytest.raises(GrnInputError, match="same edge set"):
        plot_curves({"a": (labels, labels), "b": (labels[::-1], labels)}, tmp_path, title="x")
    with pytest.raises(GrnInputError, match="no curves"):
        plot_curves({}, tmp_path, title="x")
