"""Do known regulator -> target pairs sit closer in a gene-embedding space than random pairs of the same genes?

Exceiver (Connell et al. 2022) checks its learned gene embeddings against curated regulation (TRRUST, DoRothEA):
the cosine similarity of a known regulator -> target pair should exceed that of a random pair. We report the AUROC
of that separation (positives vs negatives, scored by cosine; and by |cosine|, since repression may sit opposite)
for each embedding matrix, next to the same measure on expression correlation: the cosine of gene-centred
log-expression profiles across cells, which is the Pearson r. An embedding that beats 0.5 but not expression
correlation has learned no more about regulation than co-expression already shows.

Negatives are degree-preserving: the positives' regulator and target columns are permuted independently, so every
gene is as often in a negative as in a positive. Uniform random pairs would over-sample rare genes, and then a
model that merely places hub genes close to everything would "separate" known pairs. Invalid draws (a self pair, a
known prior pair in either direction, a repeat) are re-permuted among themselves, then repaired by swapping targets
with an accepted negative (Maslov & Sneppen 2002); a pair that cannot be placed is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from finetune.errors import GrnInputError

MIN_POSITIVES = 10
# Re-permutation rounds among invalid negatives, then random swap partners tried per leftover negative.
_REPERMUTE_ROUNDS = 50
_SWAP_TRIES = 200


@dataclass
class PairSet:
    positives: np.ndarray  # (P, 2) int64 row indices into `genes`: (regulator, target)
    negatives: np.ndarray  # (N, 2) int64, N <= negatives_per_positive * P
    n_prior_edges: int  # edges in the prior file
    n_edges_in_genes: int  # prior edges with both genes present (before dropping self-loops / duplicates)


def _pair_keys(pairs: np.ndarray, n_genes: int) -> np.ndarray:
    """Order-free key per pair, so A->B and B->A collide (cosine is symmetric)."""
    return pairs.min(axis=1) * n_genes + pairs.max(axis=1)


def pair_set(
    prior: pd.DataFrame,
    genes: list[str],
    *,
    negatives_per_positive: int = 1,
    seed: int = 0,
    max_positives: int | None = 20000,
) -> PairSet:
    """Prior edges among `genes` (case-insensitive, first occurrence wins) and degree-preserving negatives."""
    index: dict[str, int] = {}
    for i, gene in enumerate(genes):
        index.setdefault(str(gene).upper(), i)
    tf = prior["tf"].astype(str).str.upper().map(index)
    target = prior["target"].astype(str).str.upper().map(index)
    present = tf.notna() & target.notna()
    matched = np.stack([tf[present].to_numpy(np.int64), target[present].to_numpy(np.int64)], axis=1).reshape(-1, 2)
    n_genes = len(genes)
    known = np.unique(_pair_keys(matched, n_genes))

    pairs = matched[matched[:, 0] != matched[:, 1]]
    _, first = np.unique(_pair_keys(pairs, n_genes), return_index=True)
    positives = pairs[np.sort(first)]  # one pair per unordered gene pair, in prior order
    rng = np.random.default_rng(seed)
    if max_positives is not None and len(positives) > max_positives:
        positives = positives[np.sort(rng.choice(len(positives), max_positives, replace=False))]
    if len(positives) < MIN_POSITIVES:
        symbols = pd.concat([prior["tf"], prior["target"]]).astype(str)
        unmatched = symbols[~symbols.str.upper().isin(index)].unique()[:5].tolist()
        msg = (
            f"prior has {len(prior)} edges; {int(present.sum())} have both genes among the {n_genes} genes given, "
            f"leaving {len(positives)} distinct non-self pairs (need at least {MIN_POSITIVES}). Unmatched symbols "
            f"include {unmatched}. Check that the prior and the genes use the same identifiers (HGNC symbols vs "
            "Ensembl IDs) and species, or keep more genes."
        )
        raise GrnInputError(msg)
    negatives = _degree_preserving_negatives(positives, known, n_genes, negatives_per_positive, rng)
    return PairSet(positives, negatives, n_prior_edges=len(prior), n_edges_in_genes=int(present.sum()))


def _degree_preserving_negatives(
    positives: np.ndarray, known: np.ndarray, n_genes: int, repeats: int, rng: np.random.Generator
) -> np.ndarray:
    regulators = np.tile(positives[:, 0], repeats)
    targets = rng.permutation(np.tile(positives[:, 1], repeats))
    accepted = np.empty((0, 2), np.int64)
    for _ in range(_REPERMUTE_ROUNDS):
        keys = _pair_keys(np.stack([regulators, targets], axis=1), n_genes)
        _, first = np.unique(keys, return_index=True)
        unique_in_batch = np.zeros(len(keys), bool)
        unique_in_batch[first] = True
        ok = (regulators != targets) & ~np.isin(keys, known) & unique_in_batch
        ok &= ~np.isin(keys, _pair_keys(accepted, n_genes))
        accepted = np.concatenate([accepted, np.stack([regulators[ok], targets[ok]], axis=1)])
        regulators, targets = regulators[~ok], rng.permutation(targets[~ok])
        if len(regulators) == 0:
            return accepted
    # Stuck leftovers: swap targets with a random accepted negative when both new pairs are valid.
    known_set, used = set(known.tolist()), set(_pair_keys(accepted, n_genes).tolist())

    def key(a: int, b: int) -> int:
        return min(a, b) * n_genes + max(a, b)

    for reg, tgt in zip(regulators.tolist(), targets.tolist(), strict=True):
        for j in rng.integers(0, len(accepted), _SWAP_TRIES) if len(accepted) else []:
            reg_j, tgt_j = accepted[j].tolist()
            new_a, new_b = key(reg, tgt_j), key(reg_j, tgt)
            taken = new_a in known_set or new_b in known_set or new_a in used or new_b in used
            if reg == tgt_j or reg_j == tgt or new_a == new_b or taken:
                continue
            used -= {key(reg_j, tgt_j)}
            used |= {new_a, new_b}
            accepted[j] = (reg_j, tgt)
            accepted = np.concatenate([accepted, [[reg, tgt_j]]])
            break
    return accepted


def cosine_pairs(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(n,) cosine of rows pairs[:, 0] and pairs[:, 1] of `vectors` (genes, dim); 0 where either row is zero."""
    vectors = np.asarray(vectors, dtype=np.float64)
    left, right = vectors[pairs[:, 0]], vectors[pairs[:, 1]]  # (n, dim) each
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    dots = np.einsum("nd,nd->n", left, right)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def expression_profiles(log_expression: sp.spmatrix | np.ndarray) -> np.ndarray:
    """(cells, genes) log-expression -> (genes, cells) float32 gene-centred profiles: their cosine is Pearson r."""
    dense = log_expression.toarray() if sp.issparse(log_expression) else np.asarray(log_expression)
    dense = dense.astype(np.float64)
    return (dense - dense.mean(axis=0)).T.astype(np.float32)


def separation(vectors: np.ndarray, pairs: PairSet) -> dict:
    """AUROC of known pairs (1) vs negatives (0) scored by cosine and by |cosine|, with the mean cosines."""
    pos, neg = cosine_pairs(vectors, pairs.positives), cosine_pairs(vectors, pairs.negatives)
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    scores = np.concatenate([pos, neg])
    both = len(pos) > 0 and len(neg) > 0
    return {
        "auroc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "auroc_abs": float(roc_auc_score(labels, np.abs(scores))) if both else float("nan"),
        "mean_cosine_pos": float(pos.mean()) if len(pos) else float("nan"),
        "mean_cosine_neg": float(neg.mean()) if len(neg) else float("nan"),
        "n_pos": len(pos),
        "n_neg": len(neg),
    }


def gene_embedding_report(
    embeddings: dict[str, np.ndarray],
    profiles: np.ndarray,
    genes: list[str],
    priors: dict[str, pd.DataFrame],
    *,
    seed: int = 0,
) -> dict:
    """Per prior: pair counts and the separation of every embedding and of expression correlation."""
    methods = {**embeddings, "expression-correlation": profiles}
    wrong = {name: np.shape(m)[0] for name, m in methods.items() if np.shape(m)[0] != len(genes)}
    if wrong:
        msg = f"every matrix needs one row per gene ({len(genes)} genes); got rows {wrong}. Restrict them alike."
        raise GrnInputError(msg)
    report: dict = {}
    for prior_name, prior in priors.items():
        try:
            pairs = pair_set(prior, genes, seed=seed)
        except GrnInputError as err:
            report[prior_name] = {"skipped": str(err)}
            continue
        counts = {"n_prior_edges": pairs.n_prior_edges, "n_edges_in_genes": pairs.n_edges_in_genes}
        counts |= {"n_pos": len(pairs.positives), "n_neg": len(pairs.negatives)}
        report[prior_name] = {
            "pairs": counts,
            "methods": {name: separation(matrix, pairs) for name, matrix in methods.items()},
        }
    return report
