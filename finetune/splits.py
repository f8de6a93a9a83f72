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

This module holds `EdgeSplit`, the GENELink protocols and `split_prior`; the degree-aware negatives live in
`finetune.degree_negatives` and split-file reading in `finetune.split_files` (`read_split` is re-exported here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.beeline import GrnDataset
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
    (so in proportion to in-degree), never a known edge, a self pair or a pair of another set (`degree_negatives.py`).
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
        from finetune.degree_negatives import _degree_aware_negatives  # see the note above read_split

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
# split files (finetune/split_files.py) and degree-aware negatives (finetune/degree_negatives.py)

# Both modules import helpers from this one, so this one imports them only inside functions (here and in
# genelink_split): a bottom-of-module import would fail whenever one of them is imported before finetune.splits.


def read_split(path: Path, dataset: GrnDataset) -> EdgeSplit:
    """Read a split made elsewhere for `dataset`: a GENELink split folder or a TF,Target,Label,split table.

    See `finetune.split_files.read_split` for the accepted layouts and the checks.
    """
    from finetune.split_files import read_split as read_split_file

    return read_split_file(path, dataset)
