"""Shortcut baselines: scores that read the training graph, never the data about the pair being scored.

A GRN benchmark (BEELINE; Pratapa et al. 2020) splits the known TF → target edges into train/validation/test. When
test pairs share genes with training edges, a test pair can be ranked from the training graph alone: its reverse may
be a training edge (reciprocal regulation is common in curated networks), its two genes may share training neighbours,
its TF and target may be training hubs, or its target may look like the TF's training targets. A shortcut baseline
measures how far a split lets that go. It exists to show that the benchmark cannot be passed without the data; a
method that does not beat every shortcut on a split has not shown that it reads regulation.

- `degree_matrix` (in `baselines.py`): preferential attachment, out_degree(tf) × in_degree(target); degree leakage
  lets it match GNNs on GENELink splits (Stock et al. 2025).
- `topology_matrix`: the reverse training edge first, then Adamic–Adar over common training neighbours
  (Adamic & Adar 2003, "Friends and neighbors on the Web", Social Networks 25(3):211-230).
- `label_knn_matrix`: how similar the target's expression is to the TF's training targets, plus how similar the
  TF's expression is to the target's training regulators. It reads expression, but only to compare a gene with the
  training partners of the other gene, never the two genes with each other.

Under a held-out-genes split (no gene of any test pair appears in a training edge) every shortcut reads nothing:
all test pairs score exactly 0, so test AUROC is exactly 0.5. A shortcut scoring above 0.5 on such a split means
the split leaks.

Every function returns a dense (n_genes, n_genes) float32 score matrix S[tf, target], higher = more confident, as the
baselines in `baselines.py` do; score a split with `baselines.score_pairs(S, split[:, :2])`.

Shapes: `train_edges` is (n_edges, 3) integer [tf, target, label] rows (label 1 = known edge); `expression` is
(n_genes, n_cells), rows in the order of the benchmark's Target.csv `index`.
"""

from __future__ import annotations

import numbers

import numpy as np

from finetune.errors import GrnInputError
from finetune.grn.baselines import check_expression, check_train_edges, degree_matrix


def _check_n_genes(n_genes: int) -> int:
    if isinstance(n_genes, bool) or not isinstance(n_genes, numbers.Integral) or n_genes < 1:
        msg = f"n_genes must be a positive integer (the number of gene rows); received {n_genes!r}"
        raise GrnInputError(msg)
    return int(n_genes)


def _training_positives(train_edges: np.ndarray, n_genes: int) -> np.ndarray:
    """Directed 0/1 matrix of the training positives, D[tf, target] = 1 for label == 1 rows.

    Validates `train_edges` as `degree_matrix` does. Self pairs are dropped (a gene is not its own neighbour,
    regulator or target here); duplicate rows count once.

    Shapes: train_edges (n_edges, 3) -> (n_genes, n_genes) float64.
    """
    edges = check_train_edges(train_edges, n_genes)
    positives = edges[(edges[:, 2] == 1) & (edges[:, 0] != edges[:, 1])]
    directed = np.zeros((n_genes, n_genes), dtype=np.float64)
    directed[positives[:, 0], positives[:, 1]] = 1.0  # fancy assignment: duplicates count once
    return directed


def topology_matrix(train_edges: np.ndarray, n_genes: int) -> np.ndarray:
    """Reverse training edge first, then Adamic–Adar in the undirected training graph (Adamic & Adar 2003).

    With D[t, g] = 1 for training positives and A = D ∨ Dᵀ the undirected training graph (self pairs dropped,
    duplicates once), deg(w) = Σ_v A[w, v] and

        AA(t, g) = Σ_w A[t, w] A[w, g] / log(deg(w)),    S[t, g] = D[g, t] · (max AA + 1) + AA(t, g).

    A common neighbour w of two genes has deg(w) >= 2, so log(deg(w)) > 0; weights of genes with deg < 2 are set to 0.
    So every pair whose reverse is a training edge outranks every pair that is not, and within each group more
    (and rarer) common neighbours rank higher. A pair with no common neighbour and no reverse edge scores 0.
    The AA part is symmetric; the diagonal is 0. Uses no expression. Training positives themselves are scored too.

    Shapes: train_edges (n_edges, 3) integer [tf, target, label] -> (n_genes, n_genes) float32, S[tf, target].
    """
    n_genes = _check_n_genes(n_genes)
    directed = _training_positives(train_edges, n_genes)  # (G, G), D[tf, target]
    adjacency = np.maximum(directed, directed.T)  # (G, G), symmetric 0/1
    degree = adjacency.sum(axis=1)  # (G,)
    weight = np.zeros(n_genes, dtype=np.float64)
    hubs = degree >= 2
    weight[hubs] = 1.0 / np.log(degree[hubs])
    adamic_adar = (adjacency * weight) @ adjacency  # (G, G): A diag(w) A
    np.fill_diagonal(adamic_adar, 0.0)
    reverse_bonus = float(adamic_adar.max()) + 1.0
    scores = directed.T * reverse_bonus + adamic_adar  # directed.T[t, g] = D[g, t]
    return scores.astype(np.float32)


def _centred_cosine(expression: np.ndarray) -> np.ndarray:
    """Cosine similarity of gene profiles centred over cells (Pearson correlation), with constant genes at 0.

    Shapes: expression (n_genes, n_cells) float64 -> (n_genes, n_genes) float64, symmetric, diagonal 0.
    """
    centred = expression - expression.mean(axis=1, keepdims=True)  # (G, n_cells)
    norms = np.linalg.norm(centred, axis=1)  # (G,)
    # ptp, not the norm: a constant gene's centred row can hold rounding residue instead of exact zeros.
    varies = np.ptp(expression, axis=1) > 0
    unit = np.zeros_like(centred)
    unit[varies] = centred[varies] / norms[varies, None]
    similarity = unit @ unit.T  # (G, G)
    np.fill_diagonal(similarity, 0.0)  # a training pair must not score itself through C[g, g] = 1
    return np.clip(similarity, -1.0, 1.0)


def label_knn_matrix(expression: np.ndarray, train_edges: np.ndarray, n_genes: int) -> np.ndarray:
    """Similarity of the target to the TF's training targets, plus of the TF to the target's training regulators.

    With C the centred cosine similarity between genes' expression profiles (Pearson over cells; a constant gene has
    similarity 0 to every gene; diagonal set to 0) and T[t, h] = 1 for training positives (self pairs dropped,
    duplicates once):

        S[t, g] = mean_{h : T[t, h] = 1} C[h, g]  +  mean_{r : T[r, g] = 1} C[t, r]
                = (T C)[t, g] / out_degree(t)  +  (C T)[t, g] / in_degree(g),

    a term whose mean is over no genes (t has no training targets, or g no training regulators) contributing 0.
    This is nearest-neighbour label transfer: a gene that looks like t's known targets is guessed to be one, and
    g is guessed to be regulated by t if t looks like g's known regulators. Scores lie in [-2, 2]; the diagonal is
    not zeroed. It never compares t with g directly, so it is a shortcut, not co-expression.

    Shapes: expression (n_genes, n_cells), train_edges (n_edges, 3) integer [tf, target, label] ->
    (n_genes, n_genes) float32, S[tf, target].
    """
    n_genes = _check_n_genes(n_genes)
    expression = check_expression(expression)
    if expression.shape[0] != n_genes:
        msg = (
            f"expression has {expression.shape[0]} gene rows (shape {expression.shape}) but n_genes is {n_genes}; "
            "pass expression as (n_genes, n_cells), rows in the order of the gene indices in train_edges"
        )
        raise GrnInputError(msg)
    targets = _training_positives(train_edges, n_genes)  # (G, G), T[tf, target]
    similarity = _centred_cosine(expression)  # (G, G)
    out_degree = targets.sum(axis=1)  # (G,) training targets per TF
    in_degree = targets.sum(axis=0)  # (G,) training regulators per target
    like_targets = targets @ similarity  # (G, G): [t, g] = Σ_h T[t, h] C[h, g]
    like_regulators = similarity @ targets  # (G, G): [t, g] = Σ_r C[t, r] T[r, g]
    like_targets /= np.maximum(out_degree, 1.0)[:, None]  # rows of t without targets are already 0
    like_regulators /= np.maximum(in_degree, 1.0)[None, :]  # columns of g without regulators are already 0
    return (like_targets + like_regulators).astype(np.float32)


SHORTCUT_DESCRIPTIONS = {
    "degree": "train out-degree × in-degree (shortcut: no expression)",
    "topology": "reverse training edge, then Adamic–Adar in the training graph (shortcut: no expression)",
    "label-knn": "similarity of the target to the TF's training targets and of the TF to the target's training "
    "regulators (shortcut: reads the training labels)",
}


def shortcut_matrix(name: str, train_edges: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """(n_genes, n_genes) scores of the shortcut `name` (a key of SHORTCUT_DESCRIPTIONS) on a split's training pairs;
    `expression` (n_genes, n_cells) gives n_genes and is read by label-knn only."""
    n_genes = int(np.shape(expression)[0])
    if name == "degree":
        return degree_matrix(train_edges, n_genes)
    if name == "topology":
        return topology_matrix(train_edges, n_genes)
    if name == "label-knn":
        return label_knn_matrix(expression, train_edges, n_genes)
    msg = f"shortcut {name!r} is unknown; allowed {sorted(SHORTCUT_DESCRIPTIONS)}"
    raise GrnInputError(msg)
