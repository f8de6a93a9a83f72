"""Leak-free TF -> target edge splits: GENELink's protocols, a degree-aware variant, cold-start TFs, split files and
prior hold-outs.

An edge split is three (n, 3) int64 arrays of [tf, target, label] rows (label 1 = known edge, 0 = negative pair), for
training, model selection (validation) and the final score (test). No (tf, target) pair appears in two sets, not even
as a negative, and no pair is a self pair, so nothing seen in training or selection is scored again.

Protocols
- `genelink_split(..., negatives="genelink")` re-implements GENELink's `Train_Test_Split.py` (Chen & Liu 2022):
  hard negatives for the cell-type-specific ChIP-seq networks, density-matched random negatives for the others.
- `genelink_split(..., negatives="degree-aware")` keeps those positives but redraws every negative so that node degree
  carries no signal (Stock et al. 2025 showed that degree leakage lets degree heuristics match GNNs on GENELink splits):
  one negative per positive of the same TF and target-degree bin, so the degree heuristic scores 0.50 +- 0.02 test
  AUROC on every BEELINE network. Positives of hub TFs that lack non-targets of matching degree are dropped from the
  split (0-20% of the edges on the sparse networks, about half on the dense cell-type-specific ones).
- `cold_start_split` holds out whole TFs: a test TF has no edge in training or validation, and its negatives are
  degree-aware as above, so a model must generalize to TFs it never saw.
- `read_split` reads a published split (GENELink layout, or one table with a `split` column), by index or symbol.
- inference mode (`scgrn grn --prior`) splits the prior with `genelink_split(..., negatives="degree-aware")`, so the
  held-out prior edges it reports are scored against degree-matched negatives.

`EdgeSplit` and the sampling helpers live in `edge_sets.py`, the degree-aware negatives in `degree_negatives.py`,
split-file reading in `split_files.py`; this module holds the protocols and re-exports `EdgeSplit` and `read_split`.
"""

from __future__ import annotations

import numpy as np

from finetune.errors import GrnInputError
from finetune.grn.beeline import GrnDataset
from finetune.grn.degree_negatives import degree_aware_negatives
from finetune.grn.edge_sets import (
    _BLOCK_CELLS,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VAL,
    EdgeSplit,
    _codes,
    _draw_per_tf,
    _per_tf_counts,
    _random_ranks,
    _rows,
    _sorted_rows,
    _warn_short,
    logger,
)
from finetune.grn.split_files import read_split

__all__ = [
    "COLD_START_NEGATIVES",
    "NEGATIVE_MODES",
    "SPLIT_NAMES",
    "_BLOCK_CELLS",
    "EdgeSplit",
    "_codes",
    "_draw_per_tf",
    "_per_tf_counts",
    "cold_start_split",
    "genelink_split",
    "logger",
    "read_split",
]

NEGATIVE_MODES = ("genelink", "degree-aware")
COLD_START_NEGATIVES = ("degree-aware",)
# Cold-start: shares of the TFs (with at least one edge) in the validation and test groups; training takes the rest.
COLD_START_VAL_FRACTION = 0.2
COLD_START_TEST_FRACTION = 0.2

# GENELink's Train_Test_Split.py arguments: --ratio 0.67 (train share, Specific), validation takes the next 0.1,
# --p_val 0.5 (chance that the single edge of a one-target TF goes to train rather than test).
GENELINK_TRAIN_RATIO = 0.67
GENELINK_VAL_RATIO = 0.1
GENELINK_P_SINGLE_TO_TRAIN = 0.5


# ---------------------------------------------------------------------------------------------------------------
# GENELink's per-TF positive split


def _ratio_sets(rank: np.ndarray, size: np.ndarray) -> np.ndarray:
    """GENELink's per-TF cut: first int(n*0.67) train, up to int(n*0.77) validation, the rest test."""
    n_train = np.floor(size * GENELINK_TRAIN_RATIO).astype(np.int64)
    n_train_val = np.floor(size * (GENELINK_TRAIN_RATIO + GENELINK_VAL_RATIO)).astype(np.int64)
    return np.where(rank < n_train, TRAIN, np.where(rank < n_train_val, VAL, TEST))


def _assign_positives(rng: np.random.Generator, positives: np.ndarray, *, specific: bool) -> np.ndarray:
    """Set code (TRAIN/VAL/TEST) of every positive, split per TF as GENELink does. Shape (n_edges,)."""
    rank, size = _random_ranks(rng, positives[:, 0])
    to_train = rng.random(len(positives)) <= GENELINK_P_SINGLE_TO_TRAIN  # read for one-target TFs only
    if specific:
        sets = _ratio_sets(rank, size)
    else:
        # 2/3 of a TF's edges for training, then the first fifth of those moved to validation.
        n_train_val = size * 2 // 3
        sets = np.where(rank < n_train_val // 5, VAL, np.where(rank < n_train_val, TRAIN, TEST))
    sets = np.where(size == 2, np.where(rank == 0, TRAIN, TEST), sets)
    return np.where(size == 1, np.where(to_train, TRAIN, TEST), sets)


# ---------------------------------------------------------------------------------------------------------------
# GENELink protocols


def _specific_negatives(rng: np.random.Generator, dataset: GrnDataset) -> list[np.ndarray]:
    """Hard negatives: every non-target of every TF with an edge, split per TF 67/10/23 (GENELink, Specific)."""
    positives = dataset.positives
    tfs = np.unique(positives[:, 0])
    candidate = np.ones((len(tfs), dataset.n_genes), dtype=bool)  # (TFs with an edge, genes)
    candidate[np.searchsorted(tfs, positives[:, 0]), positives[:, 1]] = False
    candidate[np.arange(len(tfs)), tfs] = False
    rows, genes = np.nonzero(candidate)  # grouped by TF row
    pairs = np.column_stack([tfs[rows], genes])
    sets = _ratio_sets(*_random_ranks(rng, rows))
    return [pairs[sets == code] for code in (TRAIN, VAL, TEST)]


def _density_negatives(rng: np.random.Generator, dataset: GrnDataset, assign: np.ndarray) -> list[np.ndarray]:
    """GENELink's negatives for Non-Specific / STRING / Lofgof (and priors).

    Train and validation: for each TF, as many random non-targets as it has positives in that set (1:1). Test:
    floor(n_test_pos / density) - n_test_pos random (TF, gene) non-edges — GENELink's `int(count // density - count)`
    — with the TF drawn uniformly from TF.csv, so the test positive rate equals the network density.
    """
    n_genes = dataset.n_genes
    positives = dataset.positives
    forbidden = _codes(positives, n_genes)
    negatives = []
    for code, what in ((TRAIN, "the training 1:1 negatives"), (VAL, "the validation 1:1 negatives")):
        tfs, need = _per_tf_counts(positives[assign == code])
        drawn, taken = _draw_per_tf(rng, tfs, need, n_genes, forbidden)
        _warn_short(what, dataset, need, taken)
        negatives.append(drawn)
        forbidden = np.concatenate([forbidden, _codes(drawn, n_genes)])
    n_test_pos = int((assign == TEST).sum())
    if dataset.density <= 0:
        msg = (
            f"dataset {dataset.name!r} ({dataset.source}): its network density {dataset.density_exact:.2e} rounds to "
            "0.000 at GENELink's 3 decimals (a folder named like a BEELINE network gets GENELink's rounding), so "
            "GENELink's test set would need infinitely many negatives. Use --negatives degree-aware or --split "
            "cold-start (neither uses the density), or give the network more edges."
        )
        raise GrnInputError(msg)
    n_test_neg = int(n_test_pos // dataset.density - n_test_pos)
    tf_pool = dataset.tf_index if dataset.n_tfs else np.unique(positives[:, 0])
    tfs, need = np.unique(rng.choice(tf_pool, size=n_test_neg), return_counts=True)
    drawn, taken = _draw_per_tf(rng, tfs, need, n_genes, forbidden)
    _warn_short("the density-matched test negatives", dataset, need, taken)
    negatives.append(drawn)
    return negatives


def genelink_split(dataset: GrnDataset, seed: int, negatives: str = "genelink") -> EdgeSplit:
    """Split `dataset.positives` per TF as GENELink's `Train_Test_Split.py` does (Chen & Liu 2022) and add negatives.

    Positives (per TF, random order from `seed`):
    - Specific network: first int(0.67 n) train, up to int(0.77 n) validation, the rest test; a TF with one target
      sends it to train or test with probability 0.5, a TF with two targets puts one in each.
    - Other networks (Non-Specific, STRING, Lofgof, prior): n * 2 // 3 train, the rest test, then the first fifth of
      the training part moved to validation; the same one- and two-target rules.

    Negatives, `negatives="genelink"`:
    - Specific ("genelink-specific", hard negatives): every gene that is not a known target of a TF (nor the TF
      itself) is a negative of that TF, split per TF like the positives (67/10/23), so every set has about the
      network's positive rate.
    - Others ("genelink-density"): 1:1 random per-TF non-targets for train and validation; for test
      floor(n_test_pos / density) - n_test_pos random (TF, gene) non-edges, so the test positive rate is the network
      density (`GrnDataset.density`; GENELink's `Network_Statistic`).

    Negatives, `negatives="degree-aware"` ("degree-aware"; `degree_negatives.py`): the same per-TF assignment of
    positives, and every set gets exactly one negative per positive, (t, g) -> (t, g'), with g' in the same bin of
    training in-degree as g (mostly another positive target of the set, so each target is about as often a negative
    as a positive), never a known edge, a self pair or a pair of another set. Each TF has as many negatives as
    positives in every set and degree bin, so a degree heuristic (train out-degree(tf) x train in-degree(target))
    scores 0.50 +- 0.02 test AUROC on every BEELINE network, against 0.65-0.95 on GENELink's negatives, where degree
    alone ranks edges well (Stock et al. 2025). A TF that targets most of a bin's genes has too few non-targets there
    to match all its positives: the excess positives of that TF in that set are dropped (they are in no set; nothing
    moves between sets), about half the edges of the dense Specific networks (hHEP, mESC, mHSC), 0-20% elsewhere.

    Every pair is in at most one set and no pair is a self pair; the result is a deterministic function of `seed`.
    With "genelink" negatives every positive is in exactly one set; with "degree-aware" at most one.
    """
    if negatives not in NEGATIVE_MODES:
        msg = f"negatives={negatives!r} is not one of {', '.join(NEGATIVE_MODES)}; pick one of them"
        raise GrnInputError(msg)
    if dataset.n_edges == 0:
        msg = f"dataset {dataset.name!r} has no positive edges to split; it needs a ground truth or prior with edges"
        raise GrnInputError(msg)
    rng = np.random.default_rng(seed)
    specific = dataset.network == "Specific"
    assign = _assign_positives(rng, dataset.positives, specific=specific)
    if negatives == "degree-aware":
        protocol = "degree-aware"
        assign, negative_sets = degree_aware_negatives(rng, dataset, assign)
    elif specific:
        protocol = "genelink-specific"
        negative_sets = _specific_negatives(rng, dataset)
    else:
        protocol = "genelink-density"
        negative_sets = _density_negatives(rng, dataset, assign)
    return _edge_split(dataset, assign, negative_sets, protocol)


def _edge_split(dataset: GrnDataset, assign: np.ndarray, negative_sets: list[np.ndarray], protocol: str) -> EdgeSplit:
    """EdgeSplit of the positives by `assign` (DROPPED ones left out) and [train, val, test] negative pairs."""
    train, val, test = (
        _sorted_rows(_rows(dataset.positives[assign == code], 1), _rows(negative_sets[code], 0))
        for code in (TRAIN, VAL, TEST)
    )
    split = EdgeSplit(train=train, val=val, test=test, protocol=protocol)
    split.check(dataset.n_genes)
    return split


def cold_start_split(dataset: GrnDataset, seed: int, negatives: str = "degree-aware") -> EdgeSplit:
    """Held-out TFs: no edge of a validation or test TF is seen in training (protocol "cold-start").

    The TFs with at least one known edge are shuffled (from `seed`) into a training, a validation and a test group
    (20% of them each for validation and test, rounded, at least one TF each; training takes the rest), and every
    positive goes to its TF's set. Negatives are degree-aware (`degree_negatives.py`): one per positive of the same
    TF, with a target of the same training in-degree bin, never a known edge, a self pair or a pair of another set;
    positives of hub TFs that lack non-targets of matching degree are dropped. A degree heuristic scores exactly 0.5
    test AUROC (test TFs have training out-degree 0), and the target in-degree alone carries no signal either.

    Raises GrnInputError with fewer than 3 TFs that have an edge, or when dropping leaves a set without positives
    (a training TF's negatives must be other training TFs' targets, so a single training TF gets none).
    The result is a deterministic function of `seed`.
    """
    if negatives not in COLD_START_NEGATIVES:
        msg = f"cold-start negatives={negatives!r} is not one of {', '.join(COLD_START_NEGATIVES)}; pick one of them"
        raise GrnInputError(msg)
    tfs = np.unique(dataset.positives[:, 0])
    if len(tfs) < 3:
        msg = (
            f"dataset {dataset.name!r} has {len(tfs)} TF(s) with a known edge; a cold-start split needs at least 3 "
            "(one each for training, validation and test); use the genelink split instead"
        )
        raise GrnInputError(msg)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(np.floor(len(tfs) * COLD_START_VAL_FRACTION + 0.5)))
    n_test = max(1, int(np.floor(len(tfs) * COLD_START_TEST_FRACTION + 0.5)))
    group = np.full(dataset.n_genes, TRAIN, dtype=np.int64)  # (n_genes,) set code of each TF
    shuffled = rng.permutation(tfs)
    group[shuffled[:n_val]] = VAL
    group[shuffled[n_val : n_val + n_test]] = TEST
    assign, negative_sets = degree_aware_negatives(rng, dataset, group[dataset.positives[:, 0]])
    for code, name in ((TRAIN, "training"), (VAL, "validation"), (TEST, "test")):
        if not (assign == code).any():
            msg = (
                f"dataset {dataset.name!r}: no positive of the {int((group[tfs] == code).sum())} cold-start {name} "
                "TF(s) has a negative of the same TF and target degree, so that set would be empty (too few TFs that "
                "share targets, or TFs that target nearly every gene); use more TFs or the genelink split"
            )
            raise GrnInputError(msg)
    return _edge_split(dataset, assign, negative_sets, "cold-start")
