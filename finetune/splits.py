"""Leak-free TF -> target edge splits: GENELink's protocols, a degree-aware variant, split files and prior hold-outs.

An edge split is three (n, 3) int64 arrays of [tf, target, label] rows (label 1 = known edge, 0 = negative pair), for
training, model selection (validation) and the final score (test). No (tf, target) pair appears in two sets, not even
as a negative, and no pair is a self pair, so nothing seen in training or selection is scored again.

Protocols
- `genelink_split(..., negatives="genelink")` re-implements GENELink's `Train_Test_Split.py` (Chen & Liu 2022):
  hard negatives for the cell-type-specific ChIP-seq networks, density-matched random negatives for the others.
- `genelink_split(..., negatives="degree-aware")` keeps those positives but redraws every negative so that node degree
  carries no signal (Stock et al. 2025 showed that degree leakage lets degree heuristics match GNNs on GENELink splits).
- `read_split` reads a published split (GENELink layout, or one table with a `split` column), by index or symbol.
- `split_prior` holds out part of a user prior for early stopping before ranking new edges (no test set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from finetune.beeline import GrnDataset, describe_value
from finetune.errors import GrnInputError

logger = logging.getLogger(__name__)

NEGATIVE_MODES = ("genelink", "degree-aware")
SPLIT_NAMES = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2  # set codes used while assigning edges

# GENELink's Train_Test_Split.py arguments: --ratio 0.67 (train share, Specific), validation takes the next 0.1,
# --p_val 0.5 (chance that the single edge of a one-target TF goes to train rather than test).
GENELINK_TRAIN_RATIO = 0.67
GENELINK_VAL_RATIO = 0.1
GENELINK_P_SINGLE_TO_TRAIN = 0.5

# Negative sampling builds (TFs x genes) candidate matrices; cap one block at this many cells (~32 MB of float64).
_BLOCK_CELLS = 1 << 22
# Degree-aware repair stops after this many rounds of target swaps without fewer invalid pairs.
_REWIRE_PATIENCE = 25
# Pair membership uses a dense bitmap up to this many (tf, target) cells (64 MB), a sorted array above.
_BITMAP_CELLS = 1 << 26

_SPLIT_FILE_STEMS = {"train": "Train_set", "val": "Validation_set", "test": "Test_set"}
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


@dataclass(frozen=True, eq=False)
class EdgeSplit:
    """Train / validation / test edge sets.

    Shapes: train, val, test (n_set, 3) int64 with columns [tf, target, label], label in {0, 1}.
    `protocol` names where the split came from: "genelink-specific", "genelink-density", "degree-aware",
    "prior-holdout" or "file:<path>".
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    protocol: str

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            rows = np.asarray(getattr(self, name))
            if rows.size == 0:
                rows = rows.reshape(0, 3)
            if rows.ndim != 2 or rows.shape[1] != 3:
                msg = (
                    f"EdgeSplit ({self.protocol}): {name} must have shape (n, 3) [tf, target, label], got {rows.shape}"
                )
                raise GrnInputError(msg)
            object.__setattr__(self, name, rows.astype(np.int64, copy=False))

    def sets(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in SPLIT_NAMES}

    def summary(self) -> dict[str, dict[str, int | float | None]]:
        """Per set: edges, positives and positive_rate (None for an empty set)."""
        out: dict[str, dict[str, int | float | None]] = {}
        for name, rows in self.sets().items():
            positives = int(rows[:, 2].sum()) if len(rows) else 0
            out[name] = {
                "edges": len(rows),
                "positives": positives,
                "positive_rate": positives / len(rows) if len(rows) else None,
            }
        return out

    def check(self, n_genes: int) -> None:
        """Raise GrnInputError on a label other than 0/1, an index outside 0..n_genes-1, a pair with two labels in one
        set, or a (tf, target) pair in two sets (a leak between training, selection and test)."""
        where = f"edge split ({self.protocol})"
        unique_codes = []
        for name, rows in self.sets().items():
            bad_label = (rows[:, 2] != 0) & (rows[:, 2] != 1)
            if bad_label.any():
                row = int(np.flatnonzero(bad_label)[0])
                msg = (
                    f"{where}: {name} row {row} has label {int(rows[row, 2])}; labels must be 0 (negative) or 1 (edge)"
                )
                raise GrnInputError(msg)
            out_of_range = (rows[:, :2] < 0) | (rows[:, :2] >= n_genes)
            if out_of_range.any():
                row = int(np.flatnonzero(out_of_range.any(axis=1))[0])
                msg = (
                    f"{where}: {name} row {row} is edge {rows[row, :2].tolist()} but there are {n_genes} genes "
                    f"(allowed 0..{n_genes - 1}); {int(out_of_range.any(axis=1).sum())} rows are out of range — was "
                    "the split made for another folder or network (row order differs between them)?"
                )
                raise GrnInputError(msg)
            codes = rows[:, 0] * n_genes + rows[:, 1]
            pair_codes = np.unique(codes)
            labelled = np.unique(codes * 2 + rows[:, 2])
            if len(labelled) != len(pair_codes):
                conflicted = labelled[np.flatnonzero(np.diff(labelled // 2) == 0)[0]] // 2
                tf, target = divmod(int(conflicted), n_genes)
                msg = (
                    f"{where}: {name} holds edge [{tf}, {target}] with both label 0 and label 1; keep one row per pair"
                )
                raise GrnInputError(msg)
            unique_codes.append(pair_codes)
        all_codes = np.concatenate(unique_codes)
        values, counts = np.unique(all_codes, return_counts=True)
        shared = values[counts > 1]
        if len(shared):
            tf, target = divmod(int(shared[0]), n_genes)
            holders = [name for name, codes in zip(SPLIT_NAMES, unique_codes, strict=True) if shared[0] in codes]
            msg = (
                f"{where}: edge [{tf}, {target}] is in more than one set ({', '.join(holders)}; {len(shared)} pairs "
                "are shared between sets); a pair may be in one set only, or training and selection leak into the "
                "test score"
            )
            raise GrnInputError(msg)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _rows(pairs: np.ndarray, label: int) -> np.ndarray:
    """(n, 2) pairs -> (n, 3) [tf, target, label]."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return np.column_stack([pairs, np.full(len(pairs), label, dtype=np.int64)])


def _sorted_rows(*parts: np.ndarray) -> np.ndarray:
    rows = np.concatenate(parts, axis=0) if parts else np.zeros((0, 3), np.int64)
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def _random_ranks(rng: np.random.Generator, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A random order inside each group: (rank of each element within its group, size of its group). Shapes (n,)."""
    n = len(groups)
    order = np.lexsort((rng.random(n), groups))  # by group, then by a random key
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.empty(n, dtype=np.int64)
    size = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, sizes)
    size[order] = np.repeat(sizes, sizes)
    return rank, size


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


def _codes(pairs: np.ndarray, n_genes: int) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0] * n_genes + pairs[:, 1]


def _draw_per_tf(
    rng: np.random.Generator,
    tfs: np.ndarray,
    need: np.ndarray,
    n_genes: int,
    forbidden: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each TF tfs[i], need[i] distinct targets g (g != tf, tf * n_genes + g not in `forbidden`).

    Uniform without replacement (the law of GENELink's draw-and-reject loop): each TF's allowed genes get random keys
    and the `need` smallest win. With `weights` (n_genes,), keys are Exp(1) / weights[g], which is successive
    sampling in proportion to the weights (Efraimidis & Spirakis 2006); genes of weight 0 are never drawn. A TF with
    fewer allowed targets than it needs gets all of them. Returns (pairs (m, 2) grouped by TF, taken (n_tfs,)).
    """
    tfs = np.asarray(tfs, dtype=np.int64)
    need = np.asarray(need, dtype=np.int64)
    taken = np.zeros(len(tfs), dtype=np.int64)
    forbidden_tf, forbidden_gene = np.divmod(np.asarray(forbidden, dtype=np.int64), n_genes)
    row_of = np.full(n_genes, -1, dtype=np.int64)
    out_tf, out_gene = [], []
    rows_per_block = max(1, _BLOCK_CELLS // n_genes)
    for start in range(0, len(tfs), rows_per_block):
        block = slice(start, start + rows_per_block)
        block_tfs, block_need = tfs[block], need[block]
        n_rows = len(block_tfs)
        allowed = np.ones((n_rows, n_genes), dtype=bool)  # (block TFs, genes)
        if weights is not None:
            allowed &= weights[None, :] > 0
        allowed[np.arange(n_rows), block_tfs] = False
        row_of[block_tfs] = np.arange(n_rows)
        rows = row_of[forbidden_tf]
        hit = rows >= 0
        allowed[rows[hit], forbidden_gene[hit]] = False
        row_of[block_tfs] = -1
        keys = rng.random((n_rows, n_genes))  # (block TFs, genes); smallest keys win
        if weights is not None:
            keys = -np.log1p(-keys) / np.where(weights > 0, weights, 1.0)[None, :]
        keys = np.where(allowed, keys, np.inf)
        take = np.minimum(block_need, allowed.sum(axis=1))
        taken[block] = take
        k_max = int(take.max(initial=0))
        if k_max == 0:
            continue
        # The k_max smallest keys of each row, smallest first.
        top = np.argpartition(keys, k_max - 1, axis=1)[:, :k_max] if k_max < n_genes else np.argsort(keys, axis=1)
        top = np.take_along_axis(top, np.argsort(np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
        picked = np.arange(top.shape[1])[None, :] < take[:, None]
        out_gene.append(top[picked])
        out_tf.append(np.repeat(block_tfs, take))
    if not out_tf:
        return np.zeros((0, 2), dtype=np.int64), taken
    return np.column_stack([np.concatenate(out_tf), np.concatenate(out_gene)]), taken


def _per_tf_counts(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tfs, counts = np.unique(pairs[:, 0], return_counts=True)
    return tfs, counts


def _warn_short(what: str, dataset: GrnDataset, need: np.ndarray, taken: np.ndarray) -> None:
    short = need - taken
    if short.any():
        logger.warning(
            "%s: %d TF(s) have too few allowed non-targets for %s; %d negative(s) missing (those TFs target most "
            "genes)",
            dataset.name,
            int((short > 0).sum()),
            what,
            int(short.sum()),
        )


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
    n_test_neg = int(n_test_pos // dataset.density - n_test_pos)
    tf_pool = dataset.tf_index if dataset.n_tfs else np.unique(positives[:, 0])
    tfs, need = np.unique(rng.choice(tf_pool, size=n_test_neg), return_counts=True)
    drawn, taken = _draw_per_tf(rng, tfs, need, n_genes, forbidden)
    _warn_short("the density-matched test negatives", dataset, need, taken)
    negatives.append(drawn)
    return negatives


class _PairSet:
    """Membership of (tf, target) codes: a dense bitmap when n_genes**2 is small, else a sorted array."""

    def __init__(self, codes: np.ndarray, n_genes: int) -> None:
        if n_genes * n_genes <= _BITMAP_CELLS:
            self.bitmap: np.ndarray | None = np.zeros(n_genes * n_genes, dtype=bool)
            self.bitmap[codes] = True
            self.sorted_codes = None
        else:
            self.bitmap = None
            self.sorted_codes = np.unique(codes)

    def contains(self, codes: np.ndarray) -> np.ndarray:
        """Boolean array of codes.shape: whether each code is in the set."""
        if self.bitmap is not None:
            return self.bitmap[codes]
        if len(self.sorted_codes) == 0:
            return np.zeros(np.shape(codes), dtype=bool)
        position = np.minimum(np.searchsorted(self.sorted_codes, codes), len(self.sorted_codes) - 1)
        return self.sorted_codes[position] == codes


def _rewire_targets(rng: np.random.Generator, pairs: np.ndarray, n_genes: int, forbidden: _PairSet) -> np.ndarray:
    """Negatives with exactly the TF and target counts of `pairs`: pair each TF with a permutation of the targets.

    Invalid new pairs (a self pair, a forbidden code, a repeat) are repaired by swapping targets with random other
    positions when both swapped pairs become valid (degree-preserving rewiring, as in Maslov & Sneppen 2002). Repair
    stops when it makes no progress for `_REWIRE_PATIENCE` rounds; what is still invalid is dropped.
    Shapes: pairs (n, 2) -> (m <= n, 2).
    """
    tf = pairs[:, 0]
    target = pairs[rng.permutation(len(pairs)), 1]

    def valid(tfs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return (tfs != targets) & ~forbidden.contains(tfs * n_genes + targets)

    def first_valid(tfs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        keep = np.zeros(len(tfs), dtype=bool)
        keep[np.unique(tfs * n_genes + targets, return_index=True)[1]] = True
        return keep & valid(tfs, targets)

    best, stale = len(pairs) + 1, 0
    while stale < _REWIRE_PATIENCE:
        bad = np.flatnonzero(~first_valid(tf, target))
        if len(bad) == 0:
            break
        best, stale = (len(bad), 0) if len(bad) < best else (best, stale + 1)
        # Propose several partners per invalid position (more when few are left) and take the first valid one.
        n_proposals = int(np.clip(len(pairs) // len(bad), 1, 64))
        partners = rng.integers(len(pairs), size=(len(bad), n_proposals))  # (n_bad, n_proposals)
        accept = valid(tf[bad][:, None], target[partners]) & valid(tf[partners], target[bad][:, None])
        chosen = accept.argmax(axis=1)
        found = accept[np.arange(len(bad)), chosen]
        bad, partner = bad[found], partners[found, chosen[found]]
        # One swap per position per round: drop swaps that touch a position twice.
        touched = np.concatenate([bad, partner])
        _, first_touch, n_touch = np.unique(touched, return_index=True, return_counts=True)
        once = np.zeros(len(touched), dtype=bool)
        once[first_touch[n_touch == 1]] = True
        keep = once[: len(bad)] & once[len(bad) :]
        bad, partner = bad[keep], partner[keep]
        target[bad], target[partner] = target[partner], target[bad].copy()
    keep = first_valid(tf, target)
    return np.column_stack([tf[keep], target[keep]])


def _degree_aware_negatives(rng: np.random.Generator, dataset: GrnDataset, assign: np.ndarray) -> list[np.ndarray]:
    """For every set, negatives with the same TF counts and (where possible) target counts as its positives.

    Each positive (t, g) gets a negative (t, g') where the g' are the set's positive targets in random order (draws
    without replacement from the multiset of targets, i.e. in proportion to in-degree), repaired by degree-preserving
    swaps so that no negative is a self pair, a known edge or a pair used by another set (`_rewire_targets`). TF
    out-degree and target in-degree are then identical between a set's positives and negatives.

    Matching each set to itself, not to all positives, matters: a held-out edge is missing from the training graph,
    so its target's training in-degree is one lower than the degree it was drawn by; drawing test negatives by total
    in-degree made low training in-degree predict held-out positives (degree-heuristic AUROC 0.36 on Specific mDC).

    A hub TF whose positives cover most of a set's targets cannot be matched inside the set; its missing negatives are
    drawn from all genes in proportion to their in-degree over all positives, which keeps its TF count exact and its
    targets' degrees close. Only a TF with no allowed target left at all ends up short (logged); sets are filled test
    first, so on dense networks (Specific) the shortfall lands in training.
    """
    n_genes = dataset.n_genes
    positives = dataset.positives
    global_in_degree = np.bincount(positives[:, 1], minlength=n_genes).astype(np.float64)  # (n_genes,)
    used = _codes(positives, n_genes)
    negatives: dict[int, np.ndarray] = {}
    # Test first, then validation: when hub TFs run out of non-targets, the sets that score models stay balanced.
    for code, name in ((TEST, "test"), (VAL, "validation"), (TRAIN, "training")):
        set_positives = positives[assign == code]
        matched = _rewire_targets(rng, set_positives, n_genes, _PairSet(used, n_genes))
        used = np.concatenate([used, _codes(matched, n_genes)])
        tfs, need = _per_tf_counts(set_positives)
        have = dict(zip(*_per_tf_counts(matched), strict=True))
        short = need - np.array([have.get(tf, 0) for tf in tfs.tolist()], dtype=np.int64)
        topped, taken = _draw_per_tf(rng, tfs, short, n_genes, used, weights=global_in_degree)
        used = np.concatenate([used, _codes(topped, n_genes)])
        if len(topped):
            logger.info(
                "%s: %d degree-aware %s negatives of %d hub TF(s) drawn by global in-degree (not matchable in the set)",
                dataset.name,
                len(topped),
                name,
                int((short > 0).sum()),
            )
        _warn_short(f"the degree-aware {name} negatives", dataset, short, taken)
        negatives[code] = np.concatenate([matched, topped])
    return [negatives[code] for code in (TRAIN, VAL, TEST)]


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

    Negatives, `negatives="degree-aware"` ("degree-aware"): the same positives, but every set gets one negative per
    positive, (t, g) -> (t, g') with g' drawn without replacement from the multiset of that set's positive targets
    (so in proportion to in-degree), never a known edge, a self pair or a pair of another set (`_rewire_targets`).
    Each TF then has as many negatives as positives and each target is as often a negative as a positive, so node
    degree carries no signal: a degree heuristic (train out-degree(tf) x train in-degree(target)) scores about 0.5
    AUROC, against 0.65-0.95 on GENELink's negatives, where degree alone ranks edges well (Stock et al. 2025).
    Dense networks (Specific; TFs that target most genes) cannot be matched fully: unmatched negatives are dropped
    with a warning, and those sets keep more positives than negatives.

    Every pair is in at most one set and no pair is a self pair; the result is a deterministic function of `seed`.
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
        negative_sets = _degree_aware_negatives(rng, dataset, assign)
    elif specific:
        protocol = "genelink-specific"
        negative_sets = _specific_negatives(rng, dataset)
    else:
        protocol = "genelink-density"
        negative_sets = _density_negatives(rng, dataset, assign)
    train, val, test = (
        _sorted_rows(_rows(dataset.positives[assign == code], 1), _rows(negative_sets[code], 0))
        for code in (TRAIN, VAL, TEST)
    )
    split = EdgeSplit(train=train, val=val, test=test, protocol=protocol)
    split.check(dataset.n_genes)
    return split


def split_prior(dataset: GrnDataset, seed: int, val_fraction: float = 0.2) -> EdgeSplit:
    """Inference mode: hold out part of a prior's known edges for early stopping; the test set is empty.

    Per TF, round(n * val_fraction) of its edges (rounded at random, so the overall fraction is unbiased; a TF with two
    or more edges keeps at least one for training) go to validation, the rest to training; each set gets 1:1 random
    per-TF non-targets, as GENELink does for training and validation. Protocol "prior-holdout".
    """
    if not 0.0 < val_fraction < 1.0:
        msg = f"val_fraction={val_fraction} is outside (0, 1); use for example 0.2 to hold out a fifth of the prior"
        raise GrnInputError(msg)
    positives = dataset.positives
    if len(positives) < 2:
        msg = (
            f"dataset {dataset.name!r} has {len(positives)} prior edge(s); holding out a validation set needs at "
            "least 2 (one to train on, one to select on)"
        )
        raise GrnInputError(msg)
    rng = np.random.default_rng(seed)
    _, tf_row, sizes = np.unique(positives[:, 0], return_inverse=True, return_counts=True)
    n_val = np.floor(sizes * val_fraction + rng.random(len(sizes))).astype(np.int64)
    n_val = np.where(sizes >= 2, np.minimum(n_val, sizes - 1), n_val)
    rank, _ = _random_ranks(rng, positives[:, 0])
    assign = np.where(rank < n_val[tf_row], VAL, TRAIN)
    if not (assign == VAL).any():
        assign[rng.integers(len(assign))] = VAL
    if not (assign == TRAIN).any():
        assign[rng.integers(len(assign))] = TRAIN
    forbidden = _codes(positives, dataset.n_genes)
    sets = []
    for code, what in ((TRAIN, "the training 1:1 negatives"), (VAL, "the validation 1:1 negatives")):
        set_positives = positives[assign == code]
        tfs, need = _per_tf_counts(set_positives)
        drawn, taken = _draw_per_tf(rng, tfs, need, dataset.n_genes, forbidden)
        _warn_short(what, dataset, need, taken)
        forbidden = np.concatenate([forbidden, _codes(drawn, dataset.n_genes)])
        sets.append(_sorted_rows(_rows(set_positives, 1), _rows(drawn, 0)))
    split = EdgeSplit(train=sets[0], val=sets[1], test=np.zeros((0, 3), np.int64), protocol="prior-holdout")
    split.check(dataset.n_genes)
    return split


# ---------------------------------------------------------------------------------------------------------------
# split files


def _read_frame(path: Path) -> pd.DataFrame:
    """A CSV or TSV (gzip allowed) with the unnamed row-index column of GENELink's files dropped if present."""
    tab = any(suffix in (".tsv", ".tab", ".txt") for suffix in path.suffixes)
    try:
        frame = pd.read_csv(path, sep="\t" if tab else ",")
        if not tab and frame.shape[1] == 1 and "\t" in str(frame.columns[0]):
            frame = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as err:
        msg = f"{path}: cannot be read as CSV/TSV ({type(err).__name__}: {err}); expected columns TF, Target, Label"
        raise GrnInputError(msg) from err
    if len(frame.columns) and (str(frame.columns[0]).startswith("Unnamed: 0") or frame.columns[0] == ""):
        frame = frame.drop(columns=frame.columns[0])
    return frame


def _columns(frame: pd.DataFrame, path: Path, wanted: tuple[str, ...]) -> dict[str, str]:
    """Canonical column name -> the file's column name, matched case-insensitively."""
    by_lower = {str(column).strip().lower(): str(column) for column in frame.columns}
    missing = [name for name in wanted if name.lower() not in by_lower]
    if missing:
        msg = (
            f"{path}: missing column(s) {', '.join(missing)}; found {list(map(str, frame.columns))}. A split file "
            f"needs columns {', '.join(wanted)} (GENELink layout: ',TF,Target,Label')"
        )
        raise GrnInputError(msg)
    return {name: by_lower[name.lower()] for name in wanted}


def _gene_indices(values: pd.Series, path: Path, column: str, dataset: GrnDataset) -> np.ndarray:
    """Integer indices into dataset.genes (range-checked) or gene symbols (mapped case-insensitively)."""
    numbers = pd.to_numeric(values, errors="coerce")
    as_float = numbers.to_numpy(dtype=float, na_value=np.nan)
    if numbers.notna().all() and bool(np.all(as_float % 1 == 0)):
        indices = as_float.astype(np.int64)
        bad = (indices < 0) | (indices >= dataset.n_genes)
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            msg = (
                f"{path} line {position + 2}: column {column} is {indices[position]} but dataset {dataset.name!r} has "
                f"{dataset.n_genes} genes (allowed 0..{dataset.n_genes - 1}); {int(bad.sum())} row(s) are out of "
                "range — was the split made for another folder or network (row order differs between them)?"
            )
            raise GrnInputError(msg)
        return indices
    lookup = {gene.upper(): index for index, gene in enumerate(dataset.genes)}
    symbols = values.astype(str).str.strip().str.upper()
    mapped = symbols.map(lookup)
    unknown = mapped.isna().to_numpy()
    if unknown.any():
        names = list(dict.fromkeys(values[unknown].astype(str)))
        msg = (
            f"{path}: column {column} names {len(names)} gene(s) not in dataset {dataset.name!r} ({dataset.n_genes} "
            f"genes), e.g. {', '.join(names[:5])}; use symbols of that gene list (matched case-insensitively) or "
            "0-based indices into it"
        )
        raise GrnInputError(msg)
    return mapped.to_numpy(dtype=np.int64)


def _edge_rows(frame: pd.DataFrame, path: Path, dataset: GrnDataset, columns: dict[str, str]) -> np.ndarray:
    """(n, 3) int64 [tf, target, label] from a frame with TF, Target, Label columns."""
    tf = _gene_indices(frame[columns["TF"]], path, columns["TF"], dataset)
    target = _gene_indices(frame[columns["Target"]], path, columns["Target"], dataset)
    raw = frame[columns["Label"]]
    label = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isin(label, (0.0, 1.0))
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        msg = (
            f"{path} line {position + 2}: column {columns['Label']} is {describe_value(raw.iloc[position])}; "
            "allowed are 0 (negative pair) and 1 (known edge)"
        )
        raise GrnInputError(msg)
    return np.column_stack([tf, target, label.astype(np.int64)])


def _no_validation(path: Path) -> GrnInputError:
    msg = (
        f"{path}: no validation set. Model selection (early stopping, hyper-parameters) needs a validation set and "
        "must never look at the test set; scRegNet's shipped splits have only Train/Test and select on test. "
        "Use `--split genelink` to draw a GENELink split with a validation set, or add Validation_set.csv "
        "(or rows with split=val)"
    )
    return GrnInputError(msg)


def _check_against_ground_truth(split: dict[str, np.ndarray], dataset: GrnDataset, path: Path) -> None:
    """Label-1 rows must be known edges and label-0 rows must not be: a mismatch means another folder's row order."""
    known = np.unique(_codes(dataset.positives, dataset.n_genes))
    for name, rows in split.items():
        is_known = np.isin(_codes(rows[:, :2], dataset.n_genes), known)
        for label, wrong, what in ((1, ~is_known, "positives that are not edges"), (0, is_known, "negatives that are")):
            bad = (rows[:, 2] == label) & wrong
            if bad.any():
                tf, target = rows[np.flatnonzero(bad)[0], :2]
                msg = (
                    f"{path}: the {name} set has {int(bad.sum())} {what} in the ground truth of dataset "
                    f"{dataset.name!r}, "
                    f"e.g. [{tf}, {target}] = {dataset.genes[tf]} -> {dataset.genes[target]} with label {label}. The "
                    "split was probably made for another folder or network (the row order differs between Specific, "
                    "Non-Specific and STRING); use the split made for this folder or `--split genelink`"
                )
                raise GrnInputError(msg)


def read_split(path: Path, dataset: GrnDataset) -> EdgeSplit:
    """Read a split made elsewhere for `dataset`.

    `path` is either a directory in GENELink layout (Train_set.csv, Validation_set.csv, Test_set.csv, optionally
    gzipped, columns ',TF,Target,Label'), or one CSV/TSV with columns TF, Target, Label, split (split in
    train/val/test; 'validation' is accepted for val; a file without test rows gives an empty test set). TF and
    Target are 0-based indices into dataset.genes or gene symbols (case-insensitive). The split must have a validation
    set, its positives must be known edges of the dataset and its negatives must not be, and `EdgeSplit.check` must
    pass.
    """
    path = Path(path)
    if not path.exists():
        msg = f"{path}: no such split file or directory; pass a GENELink split folder or a TF,Target,Label,split table"
        raise GrnInputError(msg)
    sets: dict[str, np.ndarray] = {}
    if path.is_dir():
        files: dict[str, Path] = {}
        for name, stem in _SPLIT_FILE_STEMS.items():
            found = [path / f"{stem}{ext}" for ext in (".csv", ".csv.gz") if (path / f"{stem}{ext}").is_file()]
            if found:
                files[name] = found[0]
        if "val" not in files:
            raise _no_validation(path)
        missing = [f"{_SPLIT_FILE_STEMS[name]}.csv[.gz]" for name in SPLIT_NAMES if name not in files]
        if missing:
            msg = (
                f"{path}: missing {', '.join(missing)}; found {sorted(p.name for p in path.iterdir())}. A GENELink "
                "split folder holds Train_set.csv, Validation_set.csv and Test_set.csv (gzip allowed)"
            )
            raise GrnInputError(msg)
        for name, file in files.items():
            frame = _read_frame(file)
            sets[name] = _edge_rows(frame, file, dataset, _columns(frame, file, ("TF", "Target", "Label")))
    else:
        frame = _read_frame(path)
        columns = _columns(frame, path, ("TF", "Target", "Label", "split"))
        labels = frame[columns["split"]].astype(str).str.strip().str.lower()
        canonical = labels.map(_SPLIT_ALIASES)
        unknown = canonical.isna().to_numpy()
        if unknown.any():
            position = int(np.flatnonzero(unknown)[0])
            value = describe_value(frame[columns["split"]].iloc[position])
            msg = (
                f"{path} line {position + 2}: column {columns['split']} is {value}; "
                "allowed are train, val (or validation) and test"
            )
            raise GrnInputError(msg)
        rows = _edge_rows(frame, path, dataset, columns)
        for name in SPLIT_NAMES:
            sets[name] = rows[(canonical == name).to_numpy()]
        if len(sets["val"]) == 0:
            raise _no_validation(path)
        if len(sets["train"]) == 0:
            msg = f"{path}: no rows with split=train; a split needs training edges"
            raise GrnInputError(msg)
    _check_against_ground_truth(sets, dataset, path)
    split = EdgeSplit(train=sets["train"], val=sets["val"], test=sets["test"], protocol=f"file:{path}")
    split.check(dataset.n_genes)
    return split
