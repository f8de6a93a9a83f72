"""Paired comparisons of two GRN methods across the BEELINE benchmark that respect how the runs are correlated.

`scgrn bench grn` scores every method on 25 BEELINE dataset folders (Pratapa et al. 2020), each over several seeds.
A folder is named network/cell/size ("STRING/mESC/TFs+500"), and the four network types of one cell type and size
(STRING, Specific, Non-Specific, Lofgof) all use the same expression matrix ("mESC/TFs+500"): the 25 folders share
only 8 matrices. The paired differences a − b per (dataset, seed) are therefore not independent draws: folders of one
matrix share the cells, and the seeds of one folder share the network. Treating the ~125 differences as independent
(a t-test or a Wilcoxon test over all of them) overstates the evidence, most of all when one matrix carries the effect.

Two intervals, each labelled with what it covers:

- `hierarchical_bootstrap`: the unit is the expression matrix. Level 1 resamples matrices with replacement; level 2
  resamples, within each drawn matrix, its pooled (dataset, seed) rows with replacement. The statistic weights every
  matrix equally (the mean over drawn matrices of the within-matrix mean), so a matrix with more folders or seeds does
  not count more; the point estimate uses the same weighting. The interval is the percentile interval of the bootstrap
  distribution (Efron & Tibshirani 1993). The two-level scheme is the cluster bootstrap of Davison & Hinkley (1997,
  §3.8) as used for nested data by Saravanan, Berman & Sober (2020, "Application of the hierarchical bootstrap to
  multi-level data in neuroscience"); resampling at the top level is what carries the between-matrix variance.
- `seed_interval`: a Student-t interval of the mean over the seeds of one dataset. It covers *split variance only*:
  how much the result moves with the train/validation/test split and the initialisation on one expression matrix,
  not how it would move on other data.

Verdict words, shared by both: "beats" when the interval lies above 0, "loses" when it lies below 0, "ties" otherwise
(`verdict_sentence` prints them as "beats", "LOSES to" and "ties with").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypedDict

import numpy as np
from scipy import stats as scipy_stats

from finetune.errors import GrnInputError

Verdict = Literal["beats", "loses", "ties"]
VERDICTS: tuple[str, ...] = ("beats", "loses", "ties")
_SENTENCE_WORDS = {"beats": "beats", "loses": "LOSES to", "ties": "ties with"}

# Level-2 draws are made in chunks of at most this many row indices, so a matrix with very many rows stays in memory.
_MAX_DRAWS_PER_CHUNK = 4_000_000


class BootstrapStats(TypedDict):
    """`hierarchical_bootstrap`'s result (a plain dict at runtime, JSON-ready)."""

    mean: float  # point estimate: the mean over matrices of the within-matrix mean
    low: float  # percentile interval, lower end
    high: float  # percentile interval, upper end
    n_units: int  # number of expression matrices (level-1 units); 1 means level 1 was degenerate
    n_rows: int  # number of (dataset, seed) differences over all matrices
    level: float  # coverage of the interval, e.g. 0.95
    verdict: Verdict


class SeedStats(TypedDict):
    """`seed_interval`'s result (a plain dict at runtime, JSON-ready). Covers split variance only."""

    mean: float
    low: float
    high: float
    n: int  # number of seeds; with 1 the interval is (mean, mean) and the verdict is "ties"
    level: float
    verdict: Verdict


def matrix_of(dataset_name: str) -> str:
    """The expression matrix a BEELINE dataset folder uses: its last two '/'-separated parts (cell/size).

    "STRING/mESC/TFs+500" -> "mESC/TFs+500"; "Lofgof/mESC/TFs+1000" -> "mESC/TFs+1000". A name with fewer than two
    parts ("planted") is its own unit and is returned unchanged. Empty parts from stray slashes are ignored
    ("STRING/mESC/TFs+500/" -> "mESC/TFs+500").
    """
    if not isinstance(dataset_name, str):
        received = type(dataset_name).__name__
        msg = f"matrix_of: dataset name must be a str like 'STRING/mESC/TFs+500'; received {received}"
        raise GrnInputError(msg)
    parts = [part for part in dataset_name.split("/") if part]
    if len(parts) < 2:
        return dataset_name
    return "/".join(parts[-2:])


def _check_level(level: float, where: str) -> float:
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < float(level) < 1.0:
        msg = f"{where}: level must be a coverage strictly between 0 and 1 (e.g. 0.95); received {level!r}"
        raise GrnInputError(msg)
    return float(level)


def _verdict(low: float, high: float) -> Verdict:
    if low > 0:
        return "beats"
    if high < 0:
        return "loses"
    return "ties"


def _finite_values(values: Any, where: str) -> np.ndarray:
    """`values` as a 1-D float64 array, or a GrnInputError naming `where` and the first bad seed index."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"{where}: values must be numbers (one per seed); received {values!r} ({err})"
        raise GrnInputError(msg) from err
    if array.ndim != 1:
        msg = f"{where}: values must be a flat list with one number per seed; received shape {array.shape}"
        raise GrnInputError(msg)
    if array.size == 0:
        msg = f"{where}: received no values; give at least one per-seed value or leave the dataset out"
        raise GrnInputError(msg)
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        msg = (
            f"{where}: values must be finite; received {int(bad.sum())} NaN/inf of {array.size} "
            f"(first at seed index {first}: {array[first]}); rerun or drop that seed"
        )
        raise GrnInputError(msg)
    return array


def _rows_per_matrix(diffs: Mapping[str, Mapping[str, Sequence[float]]]) -> tuple[list[str], list[np.ndarray]]:
    """Validate `diffs`; return the matrices (sorted) and each one's pooled rows (datasets sorted, seeds in order)."""
    if not isinstance(diffs, Mapping) or not diffs:
        msg = (
            "hierarchical_bootstrap: received no differences; expected {matrix: {dataset: [per-seed a − b, ...]}} "
            f"with at least one matrix (received {diffs!r}). Did the two methods run on any common dataset?"
        )
        raise GrnInputError(msg)
    units = sorted(diffs)
    rows = []
    for unit in units:
        datasets = diffs[unit]
        if not isinstance(datasets, Mapping) or not datasets:
            msg = (
                f"hierarchical_bootstrap: matrix {unit!r} has no datasets (received {datasets!r}); "
                "expected {dataset name: [per-seed differences]}; drop the matrix or add its datasets"
            )
            raise GrnInputError(msg)
        rows.append(
            np.concatenate(
                [_finite_values(datasets[name], f"matrix {unit!r}, dataset {name!r}") for name in sorted(datasets)]
            )
        )
    return units, rows


def hierarchical_bootstrap(
    diffs: Mapping[str, Mapping[str, Sequence[float]]], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> BootstrapStats:
    """Two-level bootstrap interval of the mean paired difference, with the expression matrix as the unit.

    Scheme, per bootstrap replicate b = 1..n_boot:

    1. draw M matrices with replacement from the M matrices of `diffs` (level 1);
    2. for each drawn matrix, draw n_m of its n_m rows with replacement, where its rows are all (dataset, seed)
       differences of that matrix pooled (level 2), and take their mean;
    3. the replicate is the mean of those M within-matrix means (every matrix weighs the same, whatever its row count).

    The point estimate is the same statistic on the data: the mean over matrices of each matrix's mean row. The
    interval is the percentile interval ((1 − level)/2 and (1 + level)/2 quantiles of the n_boot replicates). With a
    single matrix level 1 is degenerate (it always draws that matrix), so only its rows are resampled and the
    interval says nothing about other matrices: the result then has "n_units": 1 and the verdict "ties", whatever
    the interval (rows of one matrix are not independent units; a win needs at least two).

    Results depend only on the values and `seed`, not on the order of the dicts (matrices and datasets are sorted).

    Args:
        diffs: matrix -> {dataset name -> per-seed differences a − b}, e.g. from `paired_diffs`.
        n_boot: number of bootstrap replicates (2000 is plenty for a 95% percentile interval).
        seed: seed of the random generator (numpy's default_rng).
        level: coverage of the interval, strictly between 0 and 1.

    Returns:
        {"mean", "low", "high", "n_units", "n_rows", "level", "verdict"}; verdict is "beats" when low > 0, "loses"
        when high < 0, "ties" otherwise and always with a single matrix.

    Shapes:
        matrix picks (n_boot, M) ints in [0, M); within-matrix means (n_boot, M); replicates (n_boot,).
        Level-2 draws for matrix m: (k_m, n_m) row indices, k_m = how often m was picked over all replicates.
    """
    level = _check_level(level, "hierarchical_bootstrap")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        msg = f"hierarchical_bootstrap: n_boot must be a positive int (2000 is usual); received {n_boot!r}"
        raise GrnInputError(msg)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        msg = f"hierarchical_bootstrap: seed must be an int; received {seed!r}"
        raise GrnInputError(msg)
    units, rows = _rows_per_matrix(diffs)
    n_units = len(units)
    point = float(np.mean([values.mean() for values in rows]))

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_units, size=(n_boot, n_units))  # (n_boot, M): which matrix fills each slot
    within = np.empty((n_boot, n_units))  # (n_boot, M): mean of the rows redrawn for that slot
    for unit_index, values in enumerate(rows):
        slots = np.flatnonzero(picks == unit_index)  # flat indices into (n_boot, M)
        n_rows = values.size
        chunk = max(1, _MAX_DRAWS_PER_CHUNK // n_rows)
        for start in range(0, slots.size, chunk):
            part = slots[start : start + chunk]
            draws = rng.integers(0, n_rows, size=(part.size, n_rows))  # (k, n_m) row indices
            within.flat[part] = values[draws].mean(axis=1)
    replicates = within.mean(axis=1)  # (n_boot,)
    alpha = 1.0 - level
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return {
        "mean": point,
        "low": float(low),
        "high": float(high),
        "n_units": n_units,
        "n_rows": int(sum(values.size for values in rows)),
        "level": level,
        "verdict": _verdict(float(low), float(high)) if n_units >= 2 else "ties",
    }


def seed_interval(values: Sequence[float], level: float = 0.95, *, name: str = "seed_interval") -> SeedStats:
    """Student-t interval of the mean over the seeds of one dataset: split variance only.

    The seeds of one dataset differ in the train/validation/test split of the edges and in the initialisation, but
    all use the same expression matrix and network; the interval covers that variation and nothing else (not how the
    result would change on other cells or another network). Label it "split variance only" wherever it is shown.

    With n ≥ 2 seeds: mean ± t_{(1+level)/2, n−1} · s / √n, s the sample standard deviation (ddof=1); seeds that
    agree exactly give a zero-width interval. With n = 1 there is no spread to estimate: the interval is (mean, mean)
    and the verdict is "ties", whatever the sign.

    Args:
        values: per-seed differences a − b (or per-seed metric values) of one dataset.
        level: coverage of the interval, strictly between 0 and 1.
        name: what the values are (e.g. the dataset), used in error messages.

    Returns:
        {"mean", "low", "high", "n", "level", "verdict"} with the verdict words of `hierarchical_bootstrap`.

    Shapes:
        values (n_seeds,).
    """
    level = _check_level(level, name)
    array = _finite_values(values, name)
    n_seeds = int(array.size)
    mean = float(array.mean())
    if n_seeds == 1:
        return {"mean": mean, "low": mean, "high": mean, "n": 1, "level": level, "verdict": "ties"}
    half_width = float(scipy_stats.t.ppf((1 + level) / 2, df=n_seeds - 1) * array.std(ddof=1) / math.sqrt(n_seeds))
    low, high = mean - half_width, mean + half_width
    return {"mean": mean, "low": low, "high": high, "n": n_seeds, "level": level, "verdict": _verdict(low, high)}


def _plural(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def default_scope(stats: Mapping[str, Any]) -> str:
    """What an interval covers, read from its keys: "over 8 expression matrices (hierarchical bootstrap)" for
    `hierarchical_bootstrap`, "over 5 seeds (split variance only)" for `seed_interval`."""
    if "n_units" in stats:
        n_units = int(stats["n_units"])
        scope = f"over {_plural(n_units, 'expression matrix', 'expression matrices')} (hierarchical bootstrap"
        return scope + (": one matrix, only its rows resampled)" if n_units == 1 else ")")
    if "n" in stats:
        n_seeds = int(stats["n"])
        note = "; one seed, no interval" if n_seeds == 1 else ""
        return f"over {_plural(n_seeds, 'seed', 'seeds')} (split variance only{note})"
    msg = (
        "verdict_sentence: stats must come from hierarchical_bootstrap (has 'n_units') or seed_interval (has 'n'); "
        f"received keys {sorted(stats)}; or pass scope= yourself"
    )
    raise GrnInputError(msg)


def verdict_sentence(a: str, b: str, stats: Mapping[str, Any], metric: str = "AUROC", scope: str | None = None) -> str:
    """One plain sentence for a comparison of method `a` against method `b`.

    e.g. "joint beats pearson: ΔAUROC +0.159 [95% CI +0.120, +0.190] over 8 expression matrices (hierarchical
    bootstrap)"; the verb is "beats", "ties with" or "LOSES to" (from stats["verdict"]). `scope` defaults to what
    `stats` covers (`default_scope`): matrices for `hierarchical_bootstrap`, "over 5 seeds (split variance only)" for
    `seed_interval`.
    """
    missing = [key for key in ("mean", "low", "high", "level", "verdict") if key not in stats]
    if missing:
        msg = (
            f"verdict_sentence: stats lack {missing}; pass the dict returned by hierarchical_bootstrap or "
            f"seed_interval (received keys {sorted(stats)})"
        )
        raise GrnInputError(msg)
    verdict = stats["verdict"]
    if verdict not in _SENTENCE_WORDS:
        msg = f"verdict_sentence: verdict must be one of {list(VERDICTS)}; received {verdict!r}"
        raise GrnInputError(msg)
    if scope is None:
        scope = default_scope(stats)
    percent = f"{round(float(stats['level']) * 100, 6):g}%"
    return (
        f"{a} {_SENTENCE_WORDS[verdict]} {b}: Δ{metric} {float(stats['mean']):+.3f} "
        f"[{percent} CI {float(stats['low']):+.3f}, {float(stats['high']):+.3f}] {scope}"
    )


def paired_diffs(
    runs: Sequence[Mapping[str, Any]],
    a: str,
    b: str,
    values_of: Callable[[Mapping[str, Any], str], Sequence[float | None] | None],
) -> dict[str, dict[str, list[float]]]:
    """Per-seed differences a − b grouped by expression matrix: {matrix: {dataset name: [a_i − b_i, ...]}}.

    `runs` are {"name": dataset folder name, "methods": {...}} (one per dataset; merge runs of the same dataset
    first). `values_of(run, key)` returns the per-seed values of method `key` in seed order, or None when the run
    lacks that method. A run counts when both methods have values; their lists must have one entry per seed (same
    length), pairs where either entry is None are skipped, and a dataset left with no pair is left out. The result
    is empty when no dataset has both methods.

    Shapes:
        each dataset's list has length ≤ n_seeds of that run.
    """
    out: dict[str, dict[str, list[float]]] = {}
    seen: set[str] = set()
    for index, run in enumerate(runs):
        name = run.get("name") if isinstance(run, Mapping) else None
        if not isinstance(name, str):
            msg = f"paired_diffs: run {index} needs a str 'name' like 'STRING/mESC/TFs+500'; received {run!r}"
            raise GrnInputError(msg)
        if name in seen:
            msg = (
                f"paired_diffs: dataset {name!r} appears in more than one run; merge its runs first so each "
                "dataset has one list of seeds (bench.grn_bench.merge_runs does this)"
            )
            raise GrnInputError(msg)
        seen.add(name)
        values_a, values_b = values_of(run, a), values_of(run, b)
        if values_a is None or values_b is None:
            continue
        if len(values_a) != len(values_b):
            msg = (
                f"paired_diffs: dataset {name!r} has {len(values_a)} seeds of {a!r} but {len(values_b)} of {b!r}; "
                "pairs are matched by seed order, so both methods must list the same seeds"
            )
            raise GrnInputError(msg)
        pairs = [x - y for x, y in zip(values_a, values_b, strict=True) if x is not None and y is not None]
        if pairs:
            out.setdefault(matrix_of(name), {})[name] = pairs
    return out
