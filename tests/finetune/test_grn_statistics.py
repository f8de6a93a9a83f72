"""Tests for finetune.grn.statistics: planted effects, ties, correlated units, determinism, seed intervals, sentences,
pairing and validation.

The intervals decide which method "beats" which in the benchmark report, so each test plants a known difference and
checks the verdict; the correlated-units test shows that one matrix with many folders and seeds cannot pass for many
independent results.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from finetune.errors import GrnInputError
from finetune.grn import statistics

CELLS = ("hESC", "hHep", "mDC", "mESC", "mHSC-E", "mHSC-GM", "mHSC-L")
NETWORKS = ("STRING", "Specific", "Non-Specific", "Lofgof")


def planted_diffs(
    effects: list[float], noise: float, seeds: int = 5, datasets_per_matrix: int = 3, seed: int = 0
) -> dict[str, dict[str, list[float]]]:
    """{matrix: {dataset: per-seed differences}} with matrix i's differences drawn around effects[i]."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, effect in enumerate(effects):
        matrix = f"cell{i}/TFs+500"
        out[matrix] = {
            f"{NETWORKS[j % 4]}{j}/{matrix}": (effect + noise * rng.standard_normal(seeds)).tolist()
            for j in range(datasets_per_matrix)
        }
    return out


def naive_pooled_t(diffs: dict[str, dict[str, list[float]]], level: float = 0.95) -> tuple[float, float]:
    """The interval that treats every (dataset, seed) difference as independent: a t interval over all of them."""
    values = np.concatenate([v for datasets in diffs.values() for v in datasets.values()])
    half = scipy_stats.t.ppf((1 + level) / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return values.mean() - half, values.mean() + half


def test_matrix_of_strips_the_network_type() -> None:
    assert statistics.matrix_of("STRING/mESC/TFs+500") == "mESC/TFs+500"
    assert statistics.matrix_of("Lofgof/mESC/TFs+1000") == "mESC/TFs+1000"
    assert statistics.matrix_of("Non-Specific/hESC/TFs+500") == statistics.matrix_of("Specific/hESC/TFs+500")
    assert statistics.matrix_of("a/b/STRING/mESC/TFs+500") == "mESC/TFs+500"
    assert statistics.matrix_of("planted") == "planted"  # fewer than two parts: its own unit
    assert statistics.matrix_of("mESC/TFs+500") == "mESC/TFs+500"


def test_planted_positive_difference_beats() -> None:
    diffs = planted_diffs([0.05] * 8, noise=0.01)
    result = statistics.hierarchical_bootstrap(diffs, n_boot=2000, seed=0)
    assert result["verdict"] == "beats"
    assert 0 < result["low"] < 0.05 < result["high"]
    assert result["mean"] == pytest.approx(0.05, abs=0.005)
    assert result["n_units"] == 8 and result["n_rows"] == 8 * 3 * 5 and result["level"] == 0.95


def test_planted_negative_difference_loses() -> None:
    result = statistics.hierarchical_bootstrap(planted_diffs([-0.05] * 8, noise=0.01), seed=0)
    assert result["verdict"] == "loses" and result["high"] < 0


def test_differences_centred_at_zero_tie() -> None:
    # Each matrix's rows are centred exactly, then shifted by a matrix effect that averages to 0 over matrices.
    diffs = planted_diffs([0.0] * 8, noise=0.02)
    offsets = [-0.03, -0.02, -0.01, 0.0, 0.0, 0.01, 0.02, 0.03]
    for offset, datasets in zip(offsets, diffs.values(), strict=True):
        centre = np.mean([x for v in datasets.values() for x in v])
        for name, values in datasets.items():
            datasets[name] = [x - centre + offset for x in values]
    result = statistics.hierarchical_bootstrap(diffs, seed=0)
    assert result["mean"] == pytest.approx(0.0, abs=1e-12)
    assert result["low"] < 0 < result["high"]
    assert result["verdict"] == "ties"


def test_one_matrix_with_many_rows_is_not_many_independent_results() -> None:
    # One matrix (4 folders × 25 seeds = 100 rows) carries a large effect; 7 matrices (3 rows each) have none.
    rng = np.random.default_rng(1)
    diffs = {
        "mESC/TFs+500": {f"{net}/mESC/TFs+500": (0.3 + 0.02 * rng.standard_normal(25)).tolist() for net in NETWORKS}
    }
    for cell in CELLS[:3] + CELLS[4:] + ("mHSC-X",):
        diffs[f"{cell}/TFs+500"] = {f"STRING/{cell}/TFs+500": [-0.01, 0.0, 0.01]}
    assert len(diffs) == 8
    naive_low, naive_high = naive_pooled_t(diffs)
    assert naive_low > 0  # treating the 121 rows as independent: a confident "win"
    result = statistics.hierarchical_bootstrap(diffs, seed=0)
    assert result["high"] - result["low"] > naive_high - naive_low
    assert result["mean"] == pytest.approx(0.3 / 8, abs=0.005)  # equal weight per matrix, not per row
    assert result["verdict"] == "ties"  # ~34% of replicates never draw the one matrix with an effect


def test_bootstrap_is_deterministic_for_a_seed_and_ignores_dict_order() -> None:
    diffs = planted_diffs([0.02, -0.01, 0.03, 0.0, 0.01], noise=0.03)
    first = statistics.hierarchical_bootstrap(diffs, n_boot=500, seed=7)
    assert statistics.hierarchical_bootstrap(diffs, n_boot=500, seed=7) == first
    reversed_diffs = {m: dict(reversed(list(d.items()))) for m, d in reversed(list(diffs.items()))}
    assert statistics.hierarchical_bootstrap(reversed_diffs, n_boot=500, seed=7) == first
    other = statistics.hierarchical_bootstrap(diffs, n_boot=500, seed=8)
    assert (other["low"], other["high"]) != (first["low"], first["high"])
    assert other["mean"] == first["mean"]  # the point estimate does not depend on the seed


def test_a_single_matrix_resamples_only_its_rows_and_never_wins() -> None:
    result = statistics.hierarchical_bootstrap({"planted": {"planted": [0.10, 0.12, 0.11, 0.13, 0.09]}}, seed=0)
    assert result["n_units"] == 1 and result["n_rows"] == 5
    assert 0.09 <= result["low"] < result["high"] <= 0.13  # the rows' interval excludes 0 ...
    assert result["verdict"] == "ties"  # ... but seeds and folders of one matrix are not independent units


def test_seed_interval_one_seed_ties() -> None:
    result = statistics.seed_interval([0.2])
    assert result == {"mean": 0.2, "low": 0.2, "high": 0.2, "n": 1, "level": 0.95, "verdict": "ties"}


def test_seed_interval_five_seeds_matches_the_t_formula() -> None:
    values = [0.10, 0.12, 0.08, 0.11, 0.09]
    result = statistics.seed_interval(values)
    assert result["verdict"] == "beats" and result["n"] == 5
    # mean 0.1, s = sqrt(0.001 / 4) = 0.0158114, t_{0.975, 4} = 2.776445 -> half width 0.019632
    assert result["mean"] == pytest.approx(0.1)
    assert result["low"] == pytest.approx(0.1 - 0.019632, abs=1e-6)
    assert result["high"] == pytest.approx(0.1 + 0.019632, abs=1e-6)
    assert statistics.seed_interval([0.05, -0.04, 0.01, -0.02, 0.0])["verdict"] == "ties"
    assert statistics.seed_interval([-0.10, -0.12, -0.08])["verdict"] == "loses"


def test_verdict_sentences() -> None:
    stats = {"mean": 0.159, "low": 0.12, "high": 0.19, "n_units": 8, "n_rows": 120, "level": 0.95, "verdict": "beats"}
    assert statistics.verdict_sentence("joint", "pearson", stats) == (
        "joint beats pearson: ΔAUROC +0.159 [95% CI +0.120, +0.190] over 8 expression matrices (hierarchical bootstrap)"
    )
    loss = {**stats, "mean": -0.05, "low": -0.08, "high": -0.02, "verdict": "loses"}
    assert statistics.verdict_sentence("joint", "degree", loss, metric="AUPRC ratio").startswith(
        "joint LOSES to degree: ΔAUPRC ratio -0.050 [95% CI -0.080, -0.020]"
    )
    seeds = statistics.seed_interval([0.01, -0.02, 0.0, 0.02, -0.01])
    sentence = statistics.verdict_sentence("joint", "pearson", seeds)
    assert sentence.startswith("joint ties with pearson: ΔAUROC +0.000 [95% CI ")
    assert sentence.endswith("over 5 seeds (split variance only)")
    assert statistics.verdict_sentence("a", "b", seeds, scope="on mESC").endswith("] on mESC")
    with pytest.raises(GrnInputError, match="verdict must be one of"):
        statistics.verdict_sentence("a", "b", {**stats, "verdict": "wins"})


def test_paired_diffs_groups_by_matrix_and_skips_missing() -> None:
    runs = [
        {"name": "STRING/mESC/TFs+500", "methods": {"joint": [0.8, 0.9, None], "pearson": [0.7, 0.6, 0.5]}},
        {"name": "Specific/mESC/TFs+500", "methods": {"joint": [0.6], "pearson": [0.65]}},
        {"name": "STRING/hESC/TFs+500", "methods": {"pearson": [0.5]}},  # no joint: left out
        {"name": "STRING/hHep/TFs+500", "methods": {"joint": [None], "pearson": [0.5]}},  # no pair: left out
    ]

    def values_of(run, key):
        return run["methods"].get(key)

    diffs = statistics.paired_diffs(runs, "joint", "pearson", values_of)
    assert diffs.keys() == {"mESC/TFs+500"}
    assert diffs["mESC/TFs+500"]["STRING/mESC/TFs+500"] == pytest.approx([0.1, 0.3])
    assert diffs["mESC/TFs+500"]["Specific/mESC/TFs+500"] == pytest.approx([-0.05])
    runs[1]["methods"]["joint"] = [0.6, 0.7]
    with pytest.raises(GrnInputError, match=r"'Specific/mESC/TFs\+500' has 2 seeds of 'joint' but 1 of 'pearson'"):
        statistics.paired_diffs(runs, "joint", "pearson", values_of)


def test_errors_name_the_offending_matrix_and_dataset() -> None:
    with pytest.raises(GrnInputError, match="received no differences"):
        statistics.hierarchical_bootstrap({})
    with pytest.raises(GrnInputError, match=r"matrix 'mESC/TFs\+500' has no datasets"):
        statistics.hierarchical_bootstrap({"mESC/TFs+500": {}})
    with pytest.raises(GrnInputError, match=r"dataset 'Lofgof/mESC/TFs\+500': received no values"):
        statistics.hierarchical_bootstrap({"mESC/TFs+500": {"STRING/mESC/TFs+500": [0.1], "Lofgof/mESC/TFs+500": []}})
    with pytest.raises(GrnInputError, match=r"dataset 'STRING/hESC/TFs\+500'.*first at seed index 2: nan"):
        statistics.hierarchical_bootstrap({"hESC/TFs+500": {"STRING/hESC/TFs+500": [0.1, 0.2, float("nan")]}})
    with pytest.raises(GrnInputError, match="level must be a coverage strictly between 0 and 1"):
        statistics.hierarchical_bootstrap({"m": {"d": [0.1]}}, level=95)
    with pytest.raises(GrnInputError, match="n_boot must be a positive int"):
        statistics.hierarchical_bootstrap({"m": {"d": [0.1]}}, n_boot=0)
    with pytest.raises(GrnInputError, match=r"STRING/mESC/TFs\+500: values must be finite.*seed index 0: inf"):
        statistics.seed_interval([float("inf"), 0.1], name="STRING/mESC/TFs+500")
    with pytest.raises(GrnInputError, match="received no values"):
        statistics.seed_interval([])
