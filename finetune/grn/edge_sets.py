"""Edge sets: `EdgeSplit` (train / validation / test rows of [tf, target, label]) and the sampling helpers that every
split protocol uses (`splits.py`, `degree_negatives.py`, `split_files.py` import from here; nothing here imports them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from finetune.errors import GrnInputError
from finetune.grn.beeline import GrnDataset

# the records keep the "finetune.grn.splits" name: one logger for everything about splits
logger = logging.getLogger("finetune.grn.splits")

SPLIT_NAMES = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2  # set codes used while assigning edges

# Negative sampling builds (TFs x genes) candidate matrices; cap one block at this many cells (~32 MB of float64).
_BLOCK_CELLS = 1 << 22


@dataclass(frozen=True, eq=False)
class EdgeSplit:
    """Train / validation / test edge sets.

    Shapes: train, val, test (n_set, 3) int64 with columns [tf, target, label], label in {0, 1}.
    `protocol` names where the split came from: "genelink-specific", "genelink-density", "degree-aware",
    "cold-start", "held-out-genes" or "file:<path>".

    Directed pairs: (a, b) and its reverse (b, a) are different pairs, but they are not independent (BEELINE's STRING
    networks list 41-89 % of their edges both ways, and the message-passing graph is undirected), so every built-in
    protocol puts a labelled pair and its labelled reverse in the same set (`reverse_leaks` counts the exceptions;
    `check(..., directed=True)` refuses them; `repair_reverse` moves them).
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

    def reverse_leaks(self, n_genes: int) -> dict[str, int]:
        """How many pairs of each set have their reverse pair labelled in another set.

        Keys: "val" and "test" count validation / test pairs whose reverse is a *training* pair (the leak a model or
        the topology shortcut reads through the undirected training graph), "other" the remaining cross-set reverses
        (validation <-> test, or a training pair whose reverse is held out is counted once, on the held-out side).
        """
        codes = {name: _codes(rows[:, :2], n_genes) for name, rows in self.sets().items()}
        reverse = {name: _reverse_codes(rows, n_genes) for name, rows in self.sets().items()}
        return {
            "val": int(np.isin(reverse["val"], codes["train"]).sum()),
            "test": int(np.isin(reverse["test"], codes["train"]).sum()),
            "other": int(np.isin(reverse["test"], codes["val"]).sum()),
        }

    def check(self, n_genes: int, *, directed: bool = False) -> None:
        """Raise GrnInputError on a label other than 0/1, an index outside 0..n_genes-1, a pair with two labels in one
        set, or a (tf, target) pair in two sets (a leak between training, selection and test). With `directed`, also
        on a pair whose reverse pair is in another set (every built-in protocol keeps the two together)."""
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
        if directed:
            leaks = self.reverse_leaks(n_genes)
            if any(leaks.values()):
                msg = (
                    f"{where}: {leaks['test']} test and {leaks['val']} validation pair(s) have their reverse pair in "
                    f"training and {leaks['other']} test pair(s) in validation; a pair and its reverse must be in the "
                    "same set (repair_reverse / --split-repair moves them)"
                )
                raise GrnInputError(msg)


def repair_reverse(split: EdgeSplit, n_genes: int, *, keep_positives: bool = False) -> tuple[EdgeSplit, int]:
    """Move every pair whose reverse pair is labelled in a later set (train < validation < test) into that set, so a
    pair and its reverse end in the same set and the held-out sets keep all their pairs. Returns (split, moved).

    `keep_positives` (for a protocol whose positives are already grouped with their reverse): positives stay; a
    negative joins the set of its reverse when that is a positive, and two reverse negatives go to the set of the
    (low, high) one, so no set grows at another's expense on average."""
    sets = split.sets()
    rows = np.concatenate([sets[name] for name in SPLIT_NAMES])
    where = np.concatenate([np.full(len(sets[name]), code) for code, name in enumerate(SPLIT_NAMES)])
    codes = _codes(rows[:, :2], n_genes)
    order = np.argsort(codes)
    reverse = _reverse_codes(rows, n_genes)
    position = np.minimum(np.searchsorted(codes[order], reverse), len(codes) - 1) if len(codes) else reverse
    has_reverse = codes[order][position] == reverse if len(codes) else np.zeros(0, dtype=bool)
    reverse_set = np.where(has_reverse, where[order][position], -1)
    target = np.maximum(where, reverse_set)
    if keep_positives:
        reverse_label = np.where(has_reverse, rows[order][position, 2], -1)
        canonical = np.where(rows[:, 0] < rows[:, 1], where, reverse_set)  # the set of the (low, high) member
        negative_pair = np.where(has_reverse, canonical, where)
        target = np.where(rows[:, 2] == 1, where, np.where(reverse_label == 1, reverse_set, negative_pair))
    moved = int((target != where).sum())
    parts = {name: _sorted_rows(rows[target == code]) for code, name in enumerate(SPLIT_NAMES)}
    repaired = EdgeSplit(**parts, protocol=split.protocol + (" (repaired)" if moved else ""))
    return repaired, moved


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


def _codes(pairs: np.ndarray, n_genes: int) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0] * n_genes + pairs[:, 1]


def _reverse_codes(pairs: np.ndarray, n_genes: int) -> np.ndarray:
    """Codes of the reversed pairs (target, tf) of (n, >= 2) rows [tf, target, ...]."""
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.size == 0:
        return np.zeros(0, dtype=np.int64)
    return pairs[:, 1] * n_genes + pairs[:, 0]


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
