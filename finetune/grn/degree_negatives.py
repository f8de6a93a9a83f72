"""Degree-aware negative sampling for TF -> target edge splits (`genelink_split(..., negatives="degree-aware")`).

Why: GENELink's negatives are uniform non-targets (or all non-targets), so node degree differs between positives and
negatives; Stock et al. (2025) showed that this degree leakage lets degree heuristics match GNNs on GENELink splits.
On GENELink's negatives a degree heuristic (train out-degree(tf) x train in-degree(target)) scores 0.65-0.95 AUROC.

Method: GENELink's positive split is kept and every set (train, validation, test) gets one negative per positive,
(t, g) -> (t, g'), where the g' are that set's own positive targets in random order (a draw without replacement from
the multiset of targets, i.e. in proportion to in-degree). Invalid pairs (a self pair, a known edge, a repeat or a
pair already used by another set) are repaired by degree-preserving target swaps (Maslov & Sneppen 2002). Each TF then
has as many negatives as positives and each target is as often a negative as a positive, so node degree carries no
signal and the degree heuristic scores about 0.5 AUROC. Hub TFs that cannot be matched inside a set are topped up by
drawing from all genes in proportion to global in-degree; only a TF with no allowed target left ends up short.
"""

from __future__ import annotations

import numpy as np

from finetune.grn.beeline import GrnDataset
from finetune.grn.edge_sets import TEST, TRAIN, VAL, _codes, _draw_per_tf, _per_tf_counts, _warn_short, logger

# Degree-aware repair stops after this many rounds of target swaps without fewer invalid pairs.
_REWIRE_PATIENCE = 25
# Pair membership uses a dense bitmap up to this many (tf, target) cells (64 MB), a sorted array above.
_BITMAP_CELLS = 1 << 26


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


def degree_aware_negatives(rng: np.random.Generator, dataset: GrnDataset, assign: np.ndarray) -> list[np.ndarray]:
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
