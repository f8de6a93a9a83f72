"""Gene-embedding evaluation: prior pairs, degree-preserving negatives, cosine/Pearson parity, planted separation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import require_shared

from finetune.errors import GrnInputError
from finetune.evaluation.genes import (
    PairSet,
    cosine_pairs,
    expression_profiles,
    gene_embedding_report,
    pair_set,
    separation,
)
from finetune.grn.user_data import read_prior


def random_prior(n_genes: int = 200, n_edges: int = 300, n_regulators: int = 30, seed: int = 0) -> pd.DataFrame:
    """Hub-heavy prior over G0..G{n-1}: few regulators with skewed out-degree, as in TRRUST."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_regulators + 1)
    tf = rng.choice(n_regulators, n_edges, p=weights / weights.sum())
    target = rng.integers(0, n_genes, n_edges)
    return pd.DataFrame({"tf": [f"G{i}" for i in tf], "target": [f"G{i}" for i in target]})


def unordered(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in pairs.tolist()}


def test_pair_set_matches_case_insensitively_and_drops_self_loops_and_reverse_duplicates():
    genes = ["Tp53", "MDM2", "cdkn1a", "tp53"] + [f"X{i}" for i in range(40)]
    rows = [("TP53", "mdm2"), ("MDM2", "TP53"), ("TP53", "TP53"), ("TP53", "MDM2"), ("TP53", "CDKN1A"), ("A", "B")]
    rows += [(f"x{i}", f"X{i + 1}") for i in range(20)]
    pairs = pair_set(pd.DataFrame(rows, columns=["tf", "target"]), genes)
    assert pairs.n_prior_edges == len(rows)
    assert pairs.n_edges_in_genes == len(rows) - 1  # only (A, B) is missing
    assert pairs.positives.dtype == np.int64
    assert pairs.positives[:2].tolist() == [[0, 1], [0, 2]]  # first occurrence "Tp53" wins; one TP53-MDM2 pair
    assert len(pairs.positives) == 22
    assert not (pairs.positives[:, 0] == pairs.positives[:, 1]).any()


@pytest.mark.parametrize("per_positive", [1, 2])
def test_negatives_are_unknown_distinct_and_keep_the_degree_multisets(per_positive: int):
    # 1000 genes leave the hub regulator (~25% of edges) enough unknown targets for two negatives per positive.
    prior = random_prior(n_genes=1000)
    genes = [f"G{i}" for i in range(1000)]
    pairs = pair_set(prior, genes, negatives_per_positive=per_positive, seed=3)
    index = {g: i for i, g in enumerate(genes)}
    known = unordered(np.array([[index[a], index[b]] for a, b in prior.itertuples(index=False)]))
    neg = pairs.negatives
    assert len(neg) == per_positive * len(pairs.positives)
    assert not (neg[:, 0] == neg[:, 1]).any()
    assert not unordered(neg) & known
    assert len(unordered(neg)) == len(neg)
    np.testing.assert_array_equal(np.sort(neg[:, 0]), np.sort(np.tile(pairs.positives[:, 0], per_positive)))
    np.testing.assert_array_equal(np.sort(neg[:, 1]), np.sort(np.tile(pairs.positives[:, 1], per_positive)))


def test_pair_set_is_deterministic_under_seed_and_subsamples():
    prior, genes = random_prior(), [f"G{i}" for i in range(200)]
    a, b = pair_set(prior, genes, seed=1), pair_set(prior, genes, seed=1)
    np.testing.assert_array_equal(a.positives, b.positives)
    np.testing.assert_array_equal(a.negatives, b.negatives)
    assert not np.array_equal(a.negatives, pair_set(prior, genes, seed=2).negatives)
    small = pair_set(prior, genes, seed=1, max_positives=50)
    assert len(small.positives) == 50
    assert unordered(small.positives) <= unordered(a.positives)


def test_too_few_pairs_error_names_the_counts():
    prior = pd.DataFrame({"tf": ["TP53"] * 4 + ["MYC"] * 6, "target": ["MDM2", "BAX", "TP53", "X", *"ABCDEF"]})
    with pytest.raises(GrnInputError, match=r"10 edges; 3 have both genes among the 3 genes.*2 distinct") as err:
        pair_set(prior, ["tp53", "MDM2", "bax"])
    assert "MYC" in str(err.value)


@pytest.mark.parametrize("to_matrix", [np.asarray, sp.csr_matrix])
def test_cosine_of_expression_profiles_is_pearson(to_matrix):
    rng = np.random.default_rng(0)
    logged = np.log1p(rng.poisson(2.0, (80, 12)) * (rng.random((80, 12)) < 0.5))
    logged[:, 5] = 0.0  # a gene never expressed: cosine 0 by convention, not NaN
    profiles = expression_profiles(to_matrix(logged))
    assert profiles.shape == (12, 80)
    assert profiles.dtype == np.float32
    pairs = np.array([[0, 1], [2, 3], [4, 11], [7, 7], [3, 5]])
    expected = [np.corrcoef(logged[:, a], logged[:, b])[0, 1] for a, b in pairs[:-1]]
    np.testing.assert_allclose(cosine_pairs(profiles, pairs)[:-1], expected, atol=1e-5)
    assert cosine_pairs(profiles, pairs)[-1] == 0.0


def planted(n_pairs: int, signal: float, seed: int) -> tuple[np.ndarray, PairSet]:
    """Gene i regulates gene n_pairs + i; with signal > 0 the target's vector is its regulator's plus noise."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((2 * n_pairs, 32))
    vectors[n_pairs:] = signal * vectors[:n_pairs] + rng.standard_normal((n_pairs, 32))
    prior = pd.DataFrame(
        {"tf": [f"G{i}" for i in range(n_pairs)], "target": [f"G{n_pairs + i}" for i in range(n_pairs)]}
    )
    return vectors, pair_set(prior, [f"G{i}" for i in range(2 * n_pairs)], seed=seed)


def test_separation_finds_planted_pairs_and_not_random_ones():
    vectors, pairs = planted(300, signal=1.0, seed=0)
    found = separation(vectors, pairs)
    assert found["auroc"] > 0.9
    assert found["auroc_abs"] > 0.9
    assert found["mean_cosine_pos"] > found["mean_cosine_neg"] + 0.3
    assert found["n_pos"] == found["n_neg"] == 300
    vectors, pairs = planted(300, signal=0.0, seed=1)
    assert 0.4 < separation(vectors, pairs)["auroc"] < 0.6


def test_report_runs_every_method_and_skips_a_prior_that_does_not_match():
    vectors, pairs = planted(100, signal=1.0, seed=0)
    genes = [f"G{i}" for i in range(200)]
    good = pd.DataFrame(
        {"tf": [genes[a] for a in pairs.positives[:, 0]], "target": [genes[b] for b in pairs.positives[:, 1]]}
    )
    bad = pd.DataFrame({"tf": ["ENSG1", "ENSG2"], "target": ["ENSG3", "ENSG4"]})
    report = gene_embedding_report({"model": vectors}, vectors[:, :16], genes, {"good": good, "bad": bad})
    assert report["good"]["pairs"] == {"n_prior_edges": 100, "n_edges_in_genes": 100, "n_pos": 100, "n_neg": 100}
    assert set(report["good"]["methods"]) == {"model", "expression-correlation"}
    assert report["good"]["methods"]["model"]["auroc"] > 0.9
    assert "0 have both genes" in report["bad"]["skipped"]
    with pytest.raises(GrnInputError, match="one row per gene"):
        gene_embedding_report({"model": vectors[:10]}, vectors, genes, {"good": good})


@pytest.mark.real_data
def test_trrust_random_embeddings_score_chance():
    prior = read_prior(require_shared("priors", "trrust_v2_human.tsv"))
    degree = pd.concat([prior["tf"], prior["target"]]).str.upper().value_counts()
    genes = list(degree.index[:300]) + [f"NOT_A_GENE_{i}" for i in range(50)]
    rng = np.random.default_rng(0)
    report = gene_embedding_report(
        {"random": rng.standard_normal((len(genes), 64))},
        rng.standard_normal((len(genes), 100)),
        genes,
        {"trrust": prior},
    )["trrust"]
    counts = report["pairs"]
    assert counts["n_prior_edges"] == len(prior) > 8000
    assert 200 < counts["n_pos"] <= counts["n_edges_in_genes"] < counts["n_prior_edges"]
    assert counts["n_neg"] >= 0.95 * counts["n_pos"]
    for method in report["methods"].values():
        assert 0.35 < method["auroc"] < 0.65
