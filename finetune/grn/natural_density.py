"""Precision at natural density: what the top of `edges.tsv` is worth.

The balanced test set of a protocol (50 % positives under degree-aware negatives) says how well pairs are ordered;
`edges.tsv` ranks every TF × gene candidate pair, nearly all of them not edges. So `scgrn grn` also scores each
method on the held-out positives against every candidate pair of the same TFs that is neither a known edge nor
labelled in training or validation, and reports the AUPRC ratio and EPR there (issue 20, item 6).
"""

from __future__ import annotations

import numpy as np

from finetune.grn.beeline import GrnDataset
from finetune.grn.metrics import ranking_metrics
from finetune.grn.splits import EdgeSplit


def candidate_index_of(candidates: np.ndarray, n_genes: int) -> np.ndarray:
    """(n_genes * n_genes,) position of each (tf, target) code in `candidates`, -1 for a pair that is none."""
    index = np.full(n_genes * n_genes, -1, dtype=np.int64)
    index[candidates[:, 0] * n_genes + candidates[:, 1]] = np.arange(len(candidates))
    return index


def natural_density_set(dataset: GrnDataset, split: EdgeSplit, candidate_index: np.ndarray) -> dict:
    """The held-out positives against every candidate pair of the same TFs that is not a known edge and was not
    labelled in training or validation: the pairs edges.tsv ranks, at the density they have there.

    Under held-out genes the targets are the test genes only (the pairs the protocol could have held out). Returns
    {"index": (n,) positions in the candidates, "labels": (n,) 0/1}. The balanced test set (50 % positives
    under degree-aware negatives) says how well pairs are ordered; this one says what precision the top of
    edges.tsv has."""
    n = dataset.n_genes
    test_pos = split.test[split.test[:, 2] == 1, :2]
    tfs = np.intersect1d(np.unique(test_pos[:, 0]), dataset.tf_index)
    targets = np.arange(n)
    if split.protocol == "held-out-genes":  # a test pair's genes are test genes: rank the TFs' pairs among them
        targets = np.unique(split.test[:, :2])
    codes = (tfs[:, None] * n + targets[None, :]).ravel()
    codes = codes[candidate_index[codes] >= 0]  # drops self pairs
    seen = np.concatenate([
        dataset.positives[:, 0] * n + dataset.positives[:, 1],
        split.train[:, 0] * n + split.train[:, 1],
        split.val[:, 0] * n + split.val[:, 1],
    ])  # fmt: skip
    test_codes = test_pos[:, 0] * n + test_pos[:, 1]
    negatives = codes[~np.isin(codes, seen)]
    keep = np.concatenate([test_codes[candidate_index[test_codes] >= 0], negatives])
    labels = np.r_[np.ones(len(keep) - len(negatives), np.int8), np.zeros(len(negatives), np.int8)]
    return {"index": candidate_index[keep], "labels": labels}


def natural_density_metrics(natural: dict, candidate_scores: np.ndarray) -> dict:
    """Precision figures of one method's candidate scores on `natural_density_set`'s pairs ({} when one class is
    missing): density_auprc_ratio, density_epr, density_positive_rate."""
    labels = natural["labels"]
    if labels.sum() == 0 or labels.sum() == len(labels):
        return {}
    metrics = ranking_metrics(labels, candidate_scores[natural["index"]])
    return {
        "density_auprc_ratio": metrics["auprc_ratio"],
        "density_epr": metrics["epr"],
        "density_positive_rate": metrics["positive_rate"],
    }
