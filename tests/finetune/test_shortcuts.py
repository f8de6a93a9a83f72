"""Tests for grn.shortcuts: exact values on a hand-built graph, parity with plain references (networkx Adamic–Adar,
per-pair loops), recovery on planted networks, exactly 0.5 AUROC under a held-out-genes split, input validation.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from finetune.errors import GrnInputError
from finetune.grn.baselines import score_pairs
from finetune.grn.shortcuts import label_knn_matrix, topology_matrix

# A hand-built training graph on 8 genes. Undirected degrees: 0:1 1:1 2:2 3:2 4:3 5:2 6:1 7:0.
# Pair (2, 3) shares neighbours 4 and 5; pair (2, 6) shares only 4; gene 7 appears only in a negative row.
HAND_EDGES = np.array(
    [
        [0, 1, 1],  # its reverse (1, 0) is the reciprocal pair under test
        [2, 4, 1],
        [5, 2, 1],
        [3, 4, 1],
        [3, 5, 1],
        [6, 4, 1],
        [2, 4, 1],  # duplicate: counts once
        [0, 0, 1],  # self pair: dropped
        [7, 3, 0],  # negative: ignored
    ]
)
HAND_GENES = 8


def directed_mask(edges: np.ndarray, n_genes: int) -> np.ndarray:
    """D[tf, target] = True for label-1, non-self rows."""
    mask = np.zeros((n_genes, n_genes), dtype=bool)
    positives = edges[(edges[:, 2] == 1) & (edges[:, 0] != edges[:, 1])]
    mask[positives[:, 0], positives[:, 1]] = True
    return mask


def random_edges(n_genes: int, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Random [tf, target, label] rows with duplicates, self pairs and negatives mixed in."""
    pairs = rng.integers(0, n_genes, size=(n_rows, 2))
    labels = (rng.random(n_rows) < 0.8).astype(np.int64)
    edges = np.column_stack([pairs, labels])
    return np.vstack([edges, edges[:3], [[1, 1, 1]]])


# ---------------------------------------------------------------------------------------------------- topology


def test_topology_hand_graph_ranks_reverse_edge_then_common_neighbours() -> None:
    scores = topology_matrix(HAND_EDGES, HAND_GENES)
    assert scores.dtype == np.float32
    assert scores.shape == (HAND_GENES, HAND_GENES)

    reverse = directed_mask(HAND_EDGES, HAND_GENES).T  # reverse[t, g]: (g, t) is a training positive
    assert reverse[1, 0]
    assert scores[1, 0] == scores.max()
    assert scores[1, 0] > scores[~reverse].max()

    two_common = 1 / np.log(3) + 1 / np.log(2)  # neighbours 4 (degree 3) and 5 (degree 2)
    one_common = 1 / np.log(3)  # neighbour 4
    assert scores[2, 3] == pytest.approx(two_common, rel=1e-6)
    assert scores[2, 6] == pytest.approx(one_common, rel=1e-6)
    assert scores[2, 3] > scores[2, 6] > 0
    assert scores[0, 7] == 0  # gene 7 is only in a negative row
    assert scores[0, 1] == 0  # the training edge itself: no reverse edge, no common neighbour

    # The bonus is max AA + 1; AA's maximum here is pair (4, 5), which shares neighbours 2 and 3 (both degree 2).
    bonus = 2 / np.log(2) + 1
    assert scores[1, 0] == pytest.approx(bonus, rel=1e-6)
    # Only the reverse-edge bonus breaks symmetry; the Adamic–Adar part is symmetric.
    np.testing.assert_allclose(scores - scores.T, bonus * (reverse.astype(np.float64) - reverse.T), atol=1e-5)
    np.testing.assert_array_equal(np.diag(scores), 0)


def test_topology_adamic_adar_matches_networkx() -> None:
    nx = pytest.importorskip("networkx")
    rng = np.random.default_rng(3)
    n_genes = 30
    edges = random_edges(n_genes, 70, rng)
    scores = topology_matrix(edges, n_genes).astype(np.float64)

    directed = directed_mask(edges, n_genes)
    graph = nx.Graph()
    graph.add_nodes_from(range(n_genes))
    graph.add_edges_from(zip(*np.nonzero(directed), strict=True))
    pairs = [(u, v) for u in range(n_genes) for v in range(n_genes) if u != v]
    reference = np.zeros((n_genes, n_genes))
    for u, v, value in nx.adamic_adar_index(graph, pairs):
        reference[u, v] = value
    bonus = reference.max() + 1
    np.testing.assert_allclose(scores, reference + bonus * directed.T, rtol=1e-5, atol=1e-5)


def planted_modular_network(
    n_genes: int = 200, n_modules: int = 10, n_reciprocal: int = 240, n_one_way: int = 320, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A random directed network whose edges fall inside gene modules (regulatory networks are modular).

    n_reciprocal pairs carry both directions and n_one_way pairs one, so 2·240 / (2·240 + 320) = 60% of the edges
    are reciprocal. Returns the reciprocal pairs (n_reciprocal, 2) and the one-way edges (n_one_way, 2).
    """
    rng = np.random.default_rng(seed)
    modules = rng.permutation(n_genes).reshape(n_modules, -1)  # (n_modules, genes per module)
    candidates = np.array([(m[i], m[j]) for m in modules for i in range(len(m)) for j in range(i + 1, len(m))])
    chosen = candidates[rng.choice(len(candidates), size=n_reciprocal + n_one_way, replace=False)]
    reciprocal, one_way = chosen[:n_reciprocal], chosen[n_reciprocal:]
    flip = rng.random(n_one_way) < 0.5
    one_way[flip] = one_way[flip, ::-1]
    return reciprocal, one_way


def labelled(pairs: np.ndarray, label: int) -> np.ndarray:
    return np.column_stack([pairs, np.full(len(pairs), label)]).astype(np.int64)


def sample_non_edges(
    edge_set: set[tuple[int, int]], genes: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> np.ndarray:
    """n_pairs distinct (tf, target) pairs of `genes`, no self pair, none a directed edge of the network."""
    found: set[tuple[int, int]] = set()
    while len(found) < n_pairs:
        tf, target = (int(g) for g in rng.choice(genes, size=2, replace=False))
        if (tf, target) not in edge_set:
            found.add((tf, target))
    return np.array(sorted(found))


def test_topology_recovers_held_out_reciprocal_edges_on_planted_network() -> None:
    rng = np.random.default_rng(1)
    n_genes = 200
    reciprocal, one_way = planted_modular_network(n_genes)
    # Each reciprocal pair is split across the sets: one direction trains, the held-out one has its reverse in train.
    forward = rng.random(len(reciprocal)) < 0.5
    recip_train = np.where(forward[:, None], reciprocal, reciprocal[:, ::-1])
    recip_test = recip_train[:, ::-1]
    one_way_in_train = rng.random(len(one_way)) < 0.5
    train = np.vstack([recip_train, one_way[one_way_in_train]])
    test_positives = np.vstack([recip_test, one_way[~one_way_in_train]])
    edge_set = {(int(a), int(b)) for a, b in np.vstack([train, test_positives])}
    negatives = sample_non_edges(edge_set, np.arange(n_genes), len(test_positives), rng)

    scores = topology_matrix(labelled(train, 1), n_genes)
    test = np.vstack([labelled(test_positives, 1), labelled(negatives, 0)])
    auroc = roc_auc_score(test[:, 2], score_pairs(scores, test))
    assert auroc > 0.8, f"topology AUROC {auroc:.3f} on held-out edges of a planted network with reciprocal pairs"


def test_held_out_genes_split_scores_exactly_half() -> None:
    """Test pairs touch only genes with no training edge: every shortcut reads nothing and ties at 0.5."""
    rng = np.random.default_rng(2)
    n_genes = 200
    reciprocal, one_way = planted_modular_network(n_genes, seed=4)
    all_edges = np.vstack([reciprocal, reciprocal[:, ::-1], one_way])
    in_half_a = np.zeros(n_genes, dtype=bool)
    in_half_a[rng.permutation(n_genes)[: n_genes // 2]] = True
    half_b = np.flatnonzero(~in_half_a)

    train = all_edges[in_half_a[all_edges].all(axis=1)]
    test_positives = all_edges[(~in_half_a[all_edges]).all(axis=1)]
    assert len(train) > 0
    assert len(test_positives) > 0
    edge_set = {(int(a), int(b)) for a, b in all_edges}
    negatives = sample_non_edges(edge_set, half_b, len(test_positives), rng)
    test = np.vstack([labelled(test_positives, 1), labelled(negatives, 0)])
    expression = rng.normal(size=(n_genes, 40))

    for name, scores in [
        ("topology", topology_matrix(labelled(train, 1), n_genes)),
        ("label_knn", label_knn_matrix(expression, labelled(train, 1), n_genes)),
    ]:
        test_scores = score_pairs(scores, test)
        np.testing.assert_array_equal(test_scores, 0, err_msg=f"{name} scored a pair of genes absent from training")
        assert roc_auc_score(test[:, 2], test_scores) == 0.5, name
        assert np.abs(scores[np.ix_(in_half_a, in_half_a)]).sum() > 0, f"{name} read nothing from training at all"


# ---------------------------------------------------------------------------------------------------- label_knn


def reference_label_knn(expression: np.ndarray, edges: np.ndarray, n_genes: int) -> np.ndarray:
    """Per-pair loops over np.corrcoef, the definition as written in the docstring."""
    with np.errstate(divide="ignore", invalid="ignore"):
        similarity = np.nan_to_num(np.corrcoef(expression), nan=0.0)
    np.fill_diagonal(similarity, 0.0)
    directed = directed_mask(edges, n_genes)
    scores = np.zeros((n_genes, n_genes))
    for tf in range(n_genes):
        for gene in range(n_genes):
            targets = np.flatnonzero(directed[tf])
            regulators = np.flatnonzero(directed[:, gene])
            if len(targets):
                scores[tf, gene] += similarity[targets, gene].mean()
            if len(regulators):
                scores[tf, gene] += similarity[tf, regulators].mean()
    return scores


def test_label_knn_matches_loop_reference_with_constant_gene() -> None:
    rng = np.random.default_rng(5)
    n_genes = 12
    expression = rng.normal(size=(n_genes, 20))
    expression[4] = 3.7  # constant: similarity 0 to every gene
    edges = random_edges(n_genes, 25, rng)
    edges = np.vstack([edges, [[0, 4, 1]]])
    scores = label_knn_matrix(expression, edges, n_genes)
    assert scores.dtype == np.float32
    assert scores.shape == (n_genes, n_genes)
    np.testing.assert_allclose(scores, reference_label_knn(expression, edges, n_genes), atol=1e-5)


def test_label_knn_constant_target_carries_no_signal() -> None:
    rng = np.random.default_rng(6)
    expression = rng.normal(size=(6, 30))
    expression[2] = 0.1  # constant, and TF 0's only training target
    scores = label_knn_matrix(expression, np.array([[0, 2, 1]]), 6)
    np.testing.assert_array_equal(scores[0], 0)  # no other gene has training regulators; the target is constant


def test_label_knn_recovers_held_out_targets_sharing_a_program() -> None:
    """Each TF drives its targets (target = TF signal + noise); a held-out target looks like the training ones."""
    rng = np.random.default_rng(7)
    n_tfs, targets_per_tf, n_background, n_cells = 10, 15, 40, 150
    n_genes = n_tfs + n_tfs * targets_per_tf + n_background
    signal = rng.normal(size=(n_tfs, n_cells))
    expression = rng.normal(size=(n_genes, n_cells))
    expression[:n_tfs] = signal + 0.3 * rng.normal(size=(n_tfs, n_cells))
    train_rows, test_rows = [], []
    for tf in range(n_tfs):
        targets = n_tfs + tf * targets_per_tf + np.arange(targets_per_tf)
        expression[targets] = signal[tf] + rng.normal(size=(targets_per_tf, n_cells))
        train_rows += [[tf, g, 1] for g in targets[:10]]
        test_rows += [[tf, g, 1] for g in targets[10:]]
        others = np.setdiff1d(np.arange(n_genes), np.append(targets, tf))
        test_rows += [[tf, g, 0] for g in rng.choice(others, size=5, replace=False)]
    train, test = np.array(train_rows), np.array(test_rows)

    scores = label_knn_matrix(expression, train, n_genes)
    auroc = roc_auc_score(test[:, 2], score_pairs(scores, test))
    assert auroc > 0.8, f"label_knn AUROC {auroc:.3f} on held-out targets that share their TF's program"


# ---------------------------------------------------------------------------------------------------- validation


def test_whole_float_edges_are_accepted() -> None:
    np.testing.assert_array_equal(
        topology_matrix(HAND_EDGES.astype(np.float64), HAND_GENES), topology_matrix(HAND_EDGES, HAND_GENES)
    )


@pytest.mark.parametrize(
    ("edges", "n_genes", "match"),
    [
        (HAND_EDGES[:, :2], HAND_GENES, r"\(n_edges, 3\).*received shape \(9, 2\)"),
        (HAND_EDGES[:, 0], HAND_GENES, r"received shape \(9,\)"),
        (HAND_EDGES + 0.5, HAND_GENES, "integer gene indices.*float64"),
        (np.array([[0, 1, 2]]), HAND_GENES, r"labels must be 0 or 1; received \[2\]"),
        (np.array([[0, 1, 1], [0, 8, 1]]), HAND_GENES, r"row 1 is \[0, 8\].*0\.\.7"),
        (np.array([[0, -1, 1]]), HAND_GENES, r"row 0 is \[0, -1\]"),
        (HAND_EDGES, 0, r"n_genes must be a positive integer.*; received 0"),
        (HAND_EDGES, 8.0, r"n_genes must be a positive integer.*; received 8\.0"),
    ],
)
def test_bad_train_edges_are_rejected_by_both(edges: np.ndarray, n_genes: int, match: str) -> None:
    with pytest.raises(GrnInputError, match=match):
        topology_matrix(edges, n_genes)
    with pytest.raises(GrnInputError, match=match):
        label_knn_matrix(np.random.default_rng(0).normal(size=(HAND_GENES, 5)), edges, n_genes)


@pytest.mark.parametrize(
    ("expression", "match"),
    [
        (np.zeros((HAND_GENES - 1, 5)), r"expression has 7 gene rows \(shape \(7, 5\)\) but n_genes is 8"),
        (np.zeros(HAND_GENES), r"numeric \(n_genes, n_cells\) matrix; received shape \(8,\)"),
        (np.zeros((HAND_GENES, 1)), "has 1 cells"),
        (np.full((HAND_GENES, 5), np.nan), "NaN/inf"),
    ],
)
def test_bad_expression_is_rejected(expression: np.ndarray, match: str) -> None:
    with pytest.raises(GrnInputError, match=match):
        label_knn_matrix(expression, HAND_EDGES, HAND_GENES)
