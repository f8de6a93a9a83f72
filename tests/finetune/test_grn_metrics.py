"""Tests for finetune.grn.metrics: hand-worked cases, parity with scikit-learn, BEELINE's EPR tie rule, the per-TF
macro AUROC, validation.

A wrong metric would silently misrank every method in the benchmark tables, so the small cases are worked out by
hand in the comments and the large ones are checked against scikit-learn directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from finetune.errors import GrnInputError
from finetune.grn import metrics

# Six edges, three positives (positive rate 0.5), with a tie at rank k = 3 between a positive and a negative.
HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.7, 0.3, 0.1])
HAND_LABELS = np.array([1, 1, 0, 1, 0, 0])


def test_hand_auroc() -> None:
    # Positive/negative pairs: 0.9 and 0.8 beat all three negatives (3 + 3); 0.7 ties the 0.7 negative (0.5) and
    # beats 0.3 and 0.1 (2) -> 8.5 of 9 pairs.
    assert metrics.auroc(HAND_LABELS, HAND_SCORES) == pytest.approx(8.5 / 9)


def test_hand_auprc() -> None:
    # Thresholds 0.9 (P=1, R=1/3), 0.8 (P=1, R=2/3), 0.7 (3 TP + 1 FP: P=3/4, R=1):
    # AP = 1/3·1 + 1/3·1 + 1/3·3/4 = 2.75/3.
    assert metrics.auprc(HAND_LABELS, HAND_SCORES) == pytest.approx(2.75 / 3)
    assert metrics.auprc_ratio(HAND_LABELS, HAND_SCORES) == pytest.approx((2.75 / 3) / 0.5)


def test_hand_epr_includes_every_edge_tied_at_rank_k() -> None:
    # k = 3, the 3rd score is 0.7 and the 4th ties it, so the top set is the 4 edges scored >= 0.7:
    # labels 1, 1, 0, 1 -> precision 3/4, over positive rate 1/2 -> 1.5 (not 4/3 or 2, as either tie order gives).
    assert metrics.early_precision_ratio(HAND_LABELS, HAND_SCORES) == pytest.approx(1.5)


def test_hand_epr_zero_scores_are_not_predictions() -> None:
    # k = 3 but the 3rd score is 0: the threshold rises to the smallest nonzero score (0.5), so only the two
    # nonzero edges count -> precision 2/2 over rate 1/2 = 2.0. Counting zeros would take in all six (EPR 1.0).
    scores = np.array([0.9, 0.5, 0.0, 0.0, 0.0, 0.0])
    assert metrics.early_precision_ratio(HAND_LABELS, scores) == pytest.approx(2.0)


def test_epr_all_zero_scorer_predicts_nothing() -> None:
    assert metrics.early_precision_ratio(HAND_LABELS, np.zeros(6)) == 0.0


def test_perfect_scorer_epr_is_inverse_positive_rate() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.12).astype(int)
    scores = labels + rng.random(500) * 0.5  # every positive above every negative
    assert metrics.early_precision_ratio(labels, scores) == pytest.approx(1 / labels.mean())
    assert metrics.auroc(labels, scores) == 1.0
    assert metrics.auprc(labels, scores) == 1.0


def test_parity_with_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        labels = (rng.random(300) < rng.uniform(0.05, 0.6)).astype(int)
        labels[:2] = [0, 1]
        scores = rng.normal(size=300) + labels * rng.uniform(0, 2)
        scores[::7] = np.round(scores[::7], 1)  # some ties
        assert metrics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert metrics.auprc(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_random_scorer_auprc_ratio_is_about_one() -> None:
    rng = np.random.default_rng(2)
    labels = (rng.random(40_000) < 0.1).astype(int)
    scores = rng.random(40_000)
    assert metrics.auprc_ratio(labels, scores) == pytest.approx(1.0, abs=0.08)
    assert metrics.early_precision_ratio(labels, scores) == pytest.approx(1.0, abs=0.1)


def test_edge_metrics_keys_and_counts() -> None:
    row = metrics.edge_metrics(HAND_LABELS.astype(bool), HAND_SCORES)
    assert set(row) == {"auroc", "auprc", "auprc_ratio", "epr", "n_edges", "n_positives", "positive_rate"}
    assert (row["n_edges"], row["n_positives"], row["positive_rate"]) == (6, 3, 0.5)
    assert row["epr"] == pytest.approx(1.5)
    assert row["auroc"] == pytest.approx(8.5 / 9)


def test_summarize_mean_and_sample_sd() -> None:
    out = metrics.summarize([{"auroc": 0.8, "auprc": 0.4}, {"auroc": 0.6, "auprc": 0.2}, {"auroc": 0.7}])
    assert out["auroc"]["mean"] == pytest.approx(0.7)
    assert out["auroc"]["sd"] == pytest.approx(0.1)  # deviations ±0.1, 0: sqrt(0.02 / 2)
    assert out["auroc"]["n"] == 3
    assert out["auprc"]["sd"] == pytest.approx(math.sqrt(0.02))  # ±0.1 over ddof=1
    assert out["auprc"]["n"] == 2
    single = metrics.summarize([{"epr": 1.7}])
    assert single["epr"] == {"mean": 1.7, "sd": 0.0, "n": 1}


def test_summarize_rejects_empty_and_non_numbers() -> None:
    with pytest.raises(GrnInputError, match="0 runs"):
        metrics.summarize([])
    with pytest.raises(GrnInputError, match="only numbers"):
        metrics.summarize([{"auroc": 0.7, "method": "pearson"}])


@pytest.mark.parametrize("metric", [metrics.auroc, metrics.auprc, metrics.auprc_ratio, metrics.early_precision_ratio])
def test_validation_errors(metric) -> None:
    labels, scores = HAND_LABELS, HAND_SCORES
    with pytest.raises(GrnInputError, match=r"labels \(6 edges\) and scores \(5 edges\) differ"):
        metric(labels, scores[:5])
    with pytest.raises(GrnInputError, match=r"must be 0 or 1; received 1 other values \(e.g. 2\)"):
        metric(np.array([1, 1, 0, 2, 0, 0]), scores)
    with pytest.raises(GrnInputError, match=r"only one class \(6 positives, 0 negatives\)"):
        metric(np.ones(6, dtype=int), scores)
    with pytest.raises(GrnInputError, match=r"only one class \(0 positives, 6 negatives\)"):
        metric(np.zeros(6, dtype=int), scores)
    with pytest.raises(GrnInputError, match=r"2 NaN/inf values \(first at edge 1"):
        metric(labels, np.array([0.9, np.nan, 0.7, np.inf, 0.3, 0.1]))
    with pytest.raises(GrnInputError, match="0 edges"):
        metric(np.array([], dtype=int), np.array([]))
    with pytest.raises(GrnInputError, match="1-D"):
        metric(labels.reshape(2, 3), scores.reshape(2, 3))
    with pytest.raises(GrnInputError, match="labels must be numeric"):
        metric(np.array(["1", "1", "0", "1", "0", "0"]), scores)
    with pytest.raises(ValueError, match="one class"):  # GrnInputError is a ValueError for standard-library callers
        metric(np.ones(6, dtype=int), scores)


# ---------------------------------------------------------------------------------------------------------------
# per-TF macro AUROC


def _sklearn_per_tf(tfs: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, int]:
    values = [
        roc_auc_score(labels[tfs == tf], scores[tfs == tf])
        for tf in np.unique(tfs)
        if 0 < labels[tfs == tf].sum() < (tfs == tf).sum()
    ]
    return (float(np.mean(values)) if values else None), len(values)


def test_per_tf_auroc_hand_case() -> None:
    # TF 7: positives 0.9, 0.2 vs negative 0.5 -> 1 of 2 pairs = 0.5. TF 3: positive 0.4 vs negatives 0.4, 0.1 ->
    # 0.5 (tie) + 1 = 1.5 of 2 = 0.75. TF 9 has no negative and is not scored. Mean (0.5 + 0.75) / 2.
    tfs = np.array([7, 7, 7, 3, 3, 3, 9])
    labels = np.array([1, 1, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.2, 0.5, 0.4, 0.4, 0.1, 0.8])
    assert metrics.per_tf_auroc(tfs, labels, scores) == (pytest.approx(0.625), 2)
    assert metrics.edge_metrics_per_tf(tfs, labels, scores) == {
        "tf_macro_auroc": pytest.approx(0.625),
        "n_tfs_scored": 2,
    }


def test_per_tf_auroc_matches_sklearn_per_tf() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(5, 400))
        tfs = rng.integers(0, int(rng.integers(1, 25)), n)
        labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
        scores = np.round(rng.normal(size=n) + labels, int(rng.integers(0, 3)))  # ties at coarse rounding
        value, n_tfs = metrics.per_tf_auroc(tfs, labels, scores)
        expected, expected_n = _sklearn_per_tf(tfs, labels, scores)
        assert n_tfs == expected_n
        if expected is None:
            assert value is None
        else:
            assert value == pytest.approx(expected, abs=1e-12)


def test_per_tf_auroc_takes_split_rows() -> None:
    rng = np.random.default_rng(4)
    rows = np.column_stack([rng.integers(0, 6, 200), rng.integers(0, 50, 200), rng.integers(0, 2, 200)])
    scores = rng.random(200)
    expected = _sklearn_per_tf(rows[:, 0], rows[:, 2], scores)
    assert metrics.per_tf_auroc(rows, None, scores) == (pytest.approx(expected[0]), expected[1])  # labels: column 2
    assert metrics.per_tf_auroc(rows[:, :2], rows[:, 2], scores) == (pytest.approx(expected[0]), expected[1])
    # Degree cannot help: adding a per-TF constant (a TF's out-degree) to every score leaves it unchanged.
    shifted = scores + 10.0 * rows[:, 0]
    assert metrics.per_tf_auroc(rows, None, shifted)[0] == pytest.approx(expected[0])
    assert metrics.auroc(rows[:, 2], shifted) != pytest.approx(metrics.auroc(rows[:, 2], scores))


def test_per_tf_auroc_without_a_scorable_tf() -> None:
    # Every TF has one class only (and the whole set too): nothing to score, no error.
    assert metrics.per_tf_auroc(np.array([1, 1, 2]), np.array([1, 1, 0]), np.array([0.3, 0.2, 0.1])) == (None, 0)
    assert metrics.edge_metrics_per_tf(np.array([1, 2]), np.array([1, 1]), np.array([0.3, 0.2])) == {
        "tf_macro_auroc": None,
        "n_tfs_scored": 0,
    }


def test_per_tf_auroc_validation() -> None:
    with pytest.raises(GrnInputError, match=r"tfs \(5 edges\) and labels \(6 edges\) differ"):
        metrics.per_tf_auroc(np.arange(5), HAND_LABELS, HAND_SCORES)
    with pytest.raises(GrnInputError, match="labels is None"):
        metrics.per_tf_auroc(np.arange(6), None, HAND_SCORES)
    with pytest.raises(GrnInputError, match=r"labels \(6 edges\) and scores \(5 edges\) differ"):
        metrics.per_tf_auroc(np.arange(6), HAND_LABELS, HAND_SCORES[:5])
    with pytest.raises(GrnInputError, match="must be 0 or 1"):
        metrics.per_tf_auroc(np.arange(6), HAND_LABELS * 2, HAND_SCORES)
    with pytest.raises(GrnInputError, match="NaN/inf"):
        metrics.per_tf_auroc(np.arange(6), HAND_LABELS, np.r_[HAND_SCORES[:5], np.nan])
    with pytest.raises(GrnInputError, match="tfs must be 1-D"):
        metrics.per_tf_auroc(np.zeros((6, 4)), HAND_LABELS, HAND_SCORES)


def test_ranking_metrics_equal_the_single_metric_functions() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(5000) < 0.05).astype(int)
    scores = np.round(rng.random(5000) + labels * 0.3, 2)  # ties
    got = metrics.ranking_metrics(labels, scores)
    assert got["auprc"] == metrics.auprc(labels, scores)
    assert got["auprc_ratio"] == metrics.auprc_ratio(labels, scores)
    assert got["epr"] == metrics.early_precision_ratio(labels, scores)
    assert {**got, "auroc": metrics.auroc(labels, scores)} == metrics.edge_metrics(labels, scores)
