"""Unsupervised GRN baselines: co-expression and node degree (tree ensembles: `trees.py`).

Each returns a dense score matrix S of shape (n_genes, n_genes), float32, with S[regulator, target]; higher means
more confident. Score a split with `score_pairs(S, split[:, :2])` and evaluate with `finetune.grn.metrics`.

- `correlation_matrix`: |Pearson| or |Spearman| co-expression, the simplest baselines in BEELINE
  (Pratapa et al. 2020).
- tree-ensemble importance (GRNBoost2, GENIE3): `trees.tree_importance_matrix`.
- `degree_matrix`: preferential attachment on the training positives, which uses no expression at all. A supervised
  model that does not beat it is likely learning node degree, not regulation (Stock et al. 2025).

Shapes: `expression` is (n_genes, n_cells), rows in the order of the benchmark's Target.csv `index`.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.stats import rankdata

from finetune.errors import GrnInputError

CORRELATION_METHODS = ("pearson", "spearman")

logger = logging.getLogger(__name__)


def check_expression(expression: np.ndarray) -> np.ndarray:
    expression = np.asarray(expression)
    if expression.ndim != 2 or expression.dtype.kind not in "biuf":
        msg = (
            f"expression must be a numeric (n_genes, n_cells) matrix; received shape {expression.shape}, "
            f"dtype {expression.dtype}"
        )
        raise GrnInputError(msg)
    if expression.shape[1] < 2:
        msg = f"expression has {expression.shape[1]} cells (shape {expression.shape}); need at least 2 per gene"
        raise GrnInputError(msg)
    expression = expression.astype(np.float64)
    nonfinite = ~np.isfinite(expression)
    if nonfinite.any():
        gene, cell = np.argwhere(nonfinite)[0]
        msg = f"expression holds {int(nonfinite.sum())} NaN/inf values (first at gene row {gene}, cell column {cell})"
        raise GrnInputError(msg)
    return expression


def correlation_matrix(expression: np.ndarray, method: str = "pearson") -> np.ndarray:
    """|correlation| between every pair of genes over cells (BEELINE's co-expression baselines).

    "spearman" ranks each gene's expression across cells first (average ranks for ties), then takes Pearson.
    A constant gene has no defined correlation: its row and column are 0. The diagonal is 0.

    Shapes: expression (n_genes, n_cells) -> (n_genes, n_genes) float32, symmetric.
    """
    if method not in CORRELATION_METHODS:
        msg = f"correlation method {method!r} is unknown; allowed: {', '.join(CORRELATION_METHODS)}"
        raise GrnInputError(msg)
    expression = check_expression(expression)
    if method == "spearman":
        expression = rankdata(expression, axis=1)
    constant = np.ptp(expression, axis=1) == 0  # (n_genes,)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.corrcoef(expression)  # (n_genes, n_genes); NaN rows/columns for constant genes
    scores = np.abs(np.nan_to_num(corr, nan=0.0))
    scores[constant, :] = 0.0
    scores[:, constant] = 0.0
    np.fill_diagonal(scores, 0.0)
    return np.clip(scores, 0.0, 1.0).astype(np.float32)


def degree_matrix(train_edges: np.ndarray, n_genes: int) -> np.ndarray:
    """Preferential attachment from training positives: S[t, g] = out_degree(t) × in_degree(g).

    Degrees count only label == 1 rows of `train_edges`. This uses no expression: it is the node-degree-only
    baseline of Stock et al. 2025, which scores well wherever test edges share hub TFs and targets with the
    training edges (degree leakage). The diagonal is not zeroed.

    Shapes: train_edges (n_edges, 3) integer [tf, target, label] -> (n_genes, n_genes) float32.
    """
    edges = check_train_edges(train_edges, n_genes)
    positives = edges[edges[:, 2] == 1]
    out_degree = np.bincount(positives[:, 0], minlength=n_genes).astype(np.float32)  # (n_genes,)
    in_degree = np.bincount(positives[:, 1], minlength=n_genes).astype(np.float32)  # (n_genes,)
    return np.outer(out_degree, in_degree)


def check_train_edges(train_edges: np.ndarray, n_genes: int) -> np.ndarray:
    """(n_edges, 3) int64 [tf, target, label] rows, or GrnInputError naming the shape, dtype, label or row at fault
    (shared by the baselines and shortcuts that read a split's training pairs)."""
    edges = np.asarray(train_edges)
    if edges.ndim != 2 or edges.shape[1] != 3:
        msg = f"train_edges must be (n_edges, 3) rows of [tf, target, label]; received shape {edges.shape}"
        raise GrnInputError(msg)
    edges = _as_integers(edges, "train_edges")
    bad_label = ~np.isin(edges[:, 2], (0, 1))
    if bad_label.any():
        msg = f"train_edges labels must be 0 or 1; received {np.unique(edges[bad_label, 2])[:5].tolist()}"
        raise GrnInputError(msg)
    _check_gene_rows(edges[:, :2], n_genes, "train_edges")
    return edges


def _as_integers(values: np.ndarray, what: str) -> np.ndarray:
    """int64 copy of an index array; floats are accepted when whole (pandas reads CSV columns with NaN as float)."""
    whole_floats = (
        values.dtype.kind == "f" and bool(np.all(np.isfinite(values))) and np.array_equal(values, np.round(values))
    )
    if values.dtype.kind not in "biu" and not whole_floats:
        msg = f"{what} must hold integer gene indices (and 0/1 labels); received dtype {values.dtype}"
        raise GrnInputError(msg)
    return values.astype(np.int64)


def _check_gene_rows(pairs: np.ndarray, n_genes: int, what: str) -> None:
    out_of_range = (pairs < 0) | (pairs >= n_genes)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range.any(axis=1))[0])
        msg = (
            f"{what} row {row} is {pairs[row].tolist()}: gene indices must lie in 0..{n_genes - 1} "
            f"({int(out_of_range.any(axis=1).sum())} rows out of range)"
        )
        raise GrnInputError(msg)


def score_pairs(matrix: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Look up S[tf, target] for each pair; a split's (m, 3) [tf, target, label] rows work as they are.

    Shapes: matrix (n_genes, n_genes), pairs (m, 2) or (m, 3) -> (m,).
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        msg = f"matrix must be a square (n_genes, n_genes) score matrix; received shape {matrix.shape}"
        raise GrnInputError(msg)
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] not in (2, 3):
        msg = f"pairs must be (m, 2) [tf, target] or (m, 3) [tf, target, label]; received shape {pairs.shape}"
        raise GrnInputError(msg)
    index = _as_integers(pairs[:, :2], "pairs")
    _check_gene_rows(index, matrix.shape[0], "pairs")
    return matrix[index[:, 0], index[:, 1]]
