"""Edge-level metrics for GRN inference on a labelled edge set (BEELINE, Pratapa et al. 2020).

Every metric takes `labels` (1 = true regulatory edge, 0 = not) and `scores` (higher = more confident) over the
same candidate edges, for example one held-out test split. AUROC and AUPRC are scikit-learn's `roc_auc_score` and
`average_precision_score`, as GENELink and scRegNet report them; the ratios divide by the positive rate of the
evaluated set, which is the AUPRC (and precision) of a random scorer on that set:

- AUPRC ratio = AUPRC / (n_positives / n_edges). BEELINE computes it over all TF→gene pairs, so there the
  positive rate is the network density; on a split file it is that file's positive rate.
- EPR (early precision ratio) = precision among the top-k edges, k = n_positives, divided by the same rate.

Shapes: `labels` and `scores` are 1-D arrays of length n_edges.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from finetune.errors import GrnInputError

METRIC_NAMES = ("auroc", "auprc", "auprc_ratio", "epr")


def _validate(labels: np.ndarray, scores: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels as int8, scores as float64) or raise GrnInputError saying what was received."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.ndim != 1:
        msg = (
            f"{metric}: labels and scores must be 1-D arrays over the same edges; received shapes "
            f"{labels.shape} and {scores.shape}"
        )
        raise GrnInputError(msg)
    if labels.shape != scores.shape:
        msg = (
            f"{metric}: labels ({labels.shape[0]} edges) and scores ({scores.shape[0]} edges) differ in length; "
            "score exactly the edges that were labelled"
        )
        raise GrnInputError(msg)
    if labels.size == 0:
        msg = f"{metric}: received 0 edges; the evaluated set is empty"
        raise GrnInputError(msg)
    if labels.dtype.kind not in "biuf":
        msg = f"{metric}: labels must be numeric 0/1, received dtype {labels.dtype}"
        raise GrnInputError(msg)
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        examples = ", ".join(map(str, np.unique(labels[bad])[:5].tolist()))
        msg = f"{metric}: labels must be 0 or 1; received {int(bad.sum())} other values (e.g. {examples})"
        raise GrnInputError(msg)
    labels = labels.astype(np.int8)
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        msg = (
            f"labels hold only one class ({n_pos} positives, {n_neg} negatives): {metric} is undefined; "
            "the evaluated set needs both"
        )
        raise GrnInputError(msg)
    if scores.dtype.kind not in "biuf":
        msg = f"{metric}: scores must be numeric, received dtype {scores.dtype}"
        raise GrnInputError(msg)
    scores = scores.astype(np.float64)
    nonfinite = ~np.isfinite(scores)
    if nonfinite.any():
        first = int(np.flatnonzero(nonfinite)[0])
        msg = (
            f"{metric}: scores must be finite; received {int(nonfinite.sum())} NaN/inf values "
            f"(first at edge {first}: {scores[first]})"
        )
        raise GrnInputError(msg)
    return labels, scores


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (sklearn `roc_auc_score`); ties count one half."""
    labels, scores = _validate(labels, scores, "AUROC")
    return float(roc_auc_score(labels, scores))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (sklearn `average_precision_score`).

    This is the step-wise sum GENELink and scRegNet report; BEELINE's trapezoidal `auc(recall, precision)` can be
    slightly higher on the same scores.
    """
    labels, scores = _validate(labels, scores, "AUPRC")
    return float(average_precision_score(labels, scores))


def auprc_ratio(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUPRC ÷ the positive rate of this set (the AUPRC of a random scorer); 1.0 means no better than chance."""
    labels, scores = _validate(labels, scores, "AUPRC ratio")
    return float(average_precision_score(labels, scores)) / float(labels.mean())


def early_precision_ratio(labels: np.ndarray, scores: np.ndarray) -> float:
    """BEELINE's early precision ratio (Pratapa et al. 2020): precision in the top k ÷ the positive rate.

    k is the number of positives. Ties at rank k follow BEELINE's rule: every edge whose score is
    ≥ max(smallest nonzero score, score of the k-th edge) is counted as predicted. So a tie at rank k takes in all
    tied edges (the set can be larger than k), and when the k-th score is 0 only the nonzero-scored edges count
    (the set can be smaller than k): a zero score means "not predicted". An all-zero scorer predicts no edge and
    gets 0.0 (BEELINE would divide by zero). BEELINE applies the rule to |edge weight|; here scores are used as
    given, so pass |r| or a probability rather than a signed weight.
    """
    labels, scores = _validate(labels, scores, "EPR")
    k = int(labels.sum())
    nonzero = scores[scores != 0]
    if nonzero.size == 0:
        return 0.0
    kth_score = np.sort(scores)[::-1][k - 1]
    threshold = max(float(nonzero.min()), float(kth_score))
    predicted = scores >= threshold
    early_precision = float(labels[predicted].mean())
    return early_precision / float(labels.mean())


def edge_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | int]:
    """All metrics on one labelled edge set, plus its size: auroc, auprc, auprc_ratio, epr, n_edges, n_positives,
    positive_rate."""
    labels, scores = _validate(labels, scores, "edge metrics")
    n_positives = int(labels.sum())
    return {
        "auroc": auroc(labels, scores),
        "auprc": auprc(labels, scores),
        "auprc_ratio": auprc_ratio(labels, scores),
        "epr": early_precision_ratio(labels, scores),
        "n_edges": int(labels.size),
        "n_positives": n_positives,
        "positive_rate": n_positives / labels.size,
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single run) of each metric over runs (seeds, splits).

    Returns {metric: {"mean", "sd", "n"}}, metrics in first-seen order; n counts the runs holding that metric.
    """
    if not runs:
        msg = "summarize: received 0 runs; pass one metrics dict per run (seed or split)"
        raise GrnInputError(msg)
    values: dict[str, list[float]] = {}
    for run_index, run in enumerate(runs):
        for name, value in run.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                msg = (
                    f"summarize: run {run_index} metric {name!r} is {value!r} ({type(value).__name__}); "
                    "only numbers can be averaged"
                )
                raise GrnInputError(msg)
            values.setdefault(name, []).append(float(value))
    summary: dict[str, dict[str, float]] = {}
    for name, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        summary[name] = {"mean": float(arr.mean()), "sd": sd, "n": int(arr.size)}
    return summary
