"""Edge-level metrics for GRN inference on a labelled edge set (BEELINE, Pratapa et al. 2020).

Every metric takes `labels` (1 = true regulatory edge, 0 = not) and `scores` (higher = more confident) over the
same candidate edges, for example one held-out test split. AUROC and AUPRC are scikit-learn's `roc_auc_score` and
`average_precision_score`, as GENELink and scRegNet report them; the ratios divide by the positive rate of the
evaluated set, which is the AUPRC (and precision) of a random scorer on that set:

- AUPRC ratio = AUPRC / (n_positives / n_edges). BEELINE computes it over all TF→gene pairs, so there the
  positive rate is the network density; on a split file it is that file's positive rate.
- EPR (early precision ratio) = precision among the top-k edges, k = n_positives, divided by the same rate.
- Per-TF macro AUROC (`per_tf_auroc`, `edge_metrics_per_tf`) = the mean over TFs of the AUROC among that TF's edges
  alone (TFs with both a positive and a negative), so a TF's degree cannot help: only the ranking of each TF's own
  candidate targets counts.

Shapes: `labels` and `scores` are 1-D arrays of length n_edges (and `tfs`, for the per-TF metrics).
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from finetune.errors import GrnInputError

METRIC_NAMES = ("auroc", "auprc", "auprc_ratio", "epr")


def _validate(
    labels: np.ndarray, scores: np.ndarray, metric: str, *, both_classes: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels as int8, scores as float64) or raise GrnInputError saying what was received.

    `both_classes=False` accepts labels of a single class (the per-TF metrics then score no TF).
    """
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
    if both_classes and (n_pos == 0 or n_neg == 0):
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
    return _early_precision_ratio(*_validate(labels, scores, "EPR"))


def _early_precision_ratio(labels: np.ndarray, scores: np.ndarray) -> float:
    k = int(labels.sum())
    nonzero = scores[scores != 0]
    if nonzero.size == 0:
        return 0.0
    kth_score = np.partition(scores, scores.size - k)[scores.size - k]  # the k-th largest, without a full sort
    threshold = max(float(nonzero.min()), float(kth_score))
    predicted = scores >= threshold
    early_precision = float(labels[predicted].mean())
    return early_precision / float(labels.mean())


def edge_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | int]:
    """All metrics on one labelled edge set, plus its size: auroc, auprc, auprc_ratio, epr, n_edges, n_positives,
    positive_rate."""
    labels, scores = _validate(labels, scores, "edge metrics")
    return {"auroc": float(roc_auc_score(labels, scores)), **ranking_metrics(labels, scores, validated=True)}


def ranking_metrics(labels: np.ndarray, scores: np.ndarray, *, validated: bool = False) -> dict[str, float | int]:
    """`edge_metrics` without the AUROC (the natural-density figures of every method: ~7 × 10⁵ candidate pairs on a
    TFs+500 set, where the AUROC is not reported); each figure computed once, same values as the single functions."""
    if not validated:
        labels, scores = _validate(labels, scores, "ranking metrics")
    n_positives = int(labels.sum())
    ap = float(average_precision_score(labels, scores))
    return {
        "auprc": ap,
        "auprc_ratio": ap / float(labels.mean()),
        "epr": _early_precision_ratio(labels, scores),
        "n_edges": int(labels.size),
        "n_positives": n_positives,
        "positive_rate": n_positives / labels.size,
    }


def per_tf_auroc(tfs: np.ndarray, labels: np.ndarray | None, scores: np.ndarray) -> tuple[float | None, int]:
    """Macro AUROC over TFs: the mean of each TF's AUROC among its own edges, and the number of TFs it averages.

    `tfs` is the TF of every edge: a 1-D array, or the (n, 2) [tf, target] / (n, 3) [tf, target, label] rows of a
    split (column 0 is the TF); with (n, 3) rows `labels` may be None to take column 2. Only TFs with at least one
    positive and one negative are scored (AUROC is undefined otherwise); with none, returns (None, 0). Each TF's
    AUROC equals sklearn's `roc_auc_score` on its edges (ties count one half).
    Shapes: tfs (n,) or (n, 2 | 3), labels (n,), scores (n,) -> (float | None, int).
    """
    tfs = np.asarray(tfs)
    if tfs.ndim == 2 and tfs.shape[1] in (2, 3):
        if labels is None and tfs.shape[1] == 3:
            labels = tfs[:, 2]
        tfs = tfs[:, 0]
    if labels is None:
        msg = "per-TF AUROC: labels is None; pass labels, or (n, 3) [tf, target, label] rows as tfs"
        raise GrnInputError(msg)
    if tfs.ndim != 1:
        msg = f"per-TF AUROC: tfs must be 1-D or (n, 2 | 3) [tf, target(, label)] rows; received shape {tfs.shape}"
        raise GrnInputError(msg)
    labels, scores = _validate(labels, scores, "per-TF AUROC", both_classes=False)
    if len(tfs) != len(labels):
        msg = f"per-TF AUROC: tfs ({len(tfs)} edges) and labels ({len(labels)} edges) differ in length"
        raise GrnInputError(msg)
    _, group = np.unique(tfs, return_inverse=True)
    group = group.ravel()
    n_groups = int(group.max()) + 1
    # Rank scores inside each TF (1-based, ties averaged) in one pass: sort by TF, then score.
    order = np.lexsort((scores, group))
    sorted_group, sorted_score = group[order], scores[order]
    n = len(order)
    group_start = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    position = np.arange(n) - np.repeat(group_start, np.diff(np.r_[group_start, n]))  # 0-based rank in its TF
    run_start = np.flatnonzero(
        np.r_[True, (sorted_group[1:] != sorted_group[:-1]) | (sorted_score[1:] != sorted_score[:-1])]
    )
    run_length = np.diff(np.r_[run_start, n])
    run_rank = position[run_start] + (run_length + 1) / 2.0  # average 1-based rank of each tie run
    rank = np.empty(n)
    rank[order] = np.repeat(run_rank, run_length)
    n_pos = np.bincount(group, weights=labels, minlength=n_groups)
    n_neg = np.bincount(group, minlength=n_groups) - n_pos
    rank_sum = np.bincount(group, weights=rank * labels, minlength=n_groups)
    scored = (n_pos > 0) & (n_neg > 0)
    if not scored.any():
        return None, 0
    auc = (rank_sum[scored] - n_pos[scored] * (n_pos[scored] + 1) / 2) / (n_pos[scored] * n_neg[scored])
    return float(auc.mean()), int(scored.sum())


def edge_metrics_per_tf(tfs: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, float | int | None]:
    """Per-TF metrics on one labelled edge set: {"tf_macro_auroc": mean per-TF AUROC or None, "n_tfs_scored": int}.

    See `per_tf_auroc`; `tfs` is each edge's TF (1-D) or the set's [tf, target(, label)] rows.
    """
    value, n_tfs = per_tf_auroc(tfs, labels, scores)
    return {"tf_macro_auroc": value, "n_tfs_scored": n_tfs}


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
