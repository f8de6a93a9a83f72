"""Degree-aware negatives for TF -> target edge splits (`genelink_split(..., negatives="degree-aware")` and
`cold_start_split`): node degree carries no signal about which pairs are edges.

Why: GENELink's negatives are uniform non-targets (or all non-targets), so node degree differs between positives and
negatives; Stock et al. (2025) showed that this degree leakage lets degree heuristics match GNNs on GENELink splits.
On GENELink's negatives a degree heuristic (train out-degree(tf) x train in-degree(target)) scores 0.65-0.95 AUROC.

Method (`degree_aware_negatives`): the sets are filled training first; each set gets exactly one negative per kept
positive of the same TF, (t, g) -> (t, g'), with g' in the same target-degree bin as g. Degree is the training
in-degree the heuristic (or a GNN on the training graph) sees: of the kept training positives for validation and
test, of the training positives for training itself. Inside a bin the g' are the set's own positive targets in random
order, repaired by degree-preserving target swaps (Maslov & Sneppen 2002; `_rewire_targets`), so each target is
(nearly, see below) as often a negative as a positive; a slot the swaps cannot fill takes another allowed gene of the
bin. No negative is a self pair, a known edge or a pair of another set.

What is dropped, and why: a TF can only have as many negatives in a bin as it has non-targets there (left over by the
other sets; each TF's non-targets are shared out between the sets in proportion to its positives in each). A hub TF
that targets most of a bin's genes keeps a random subset of its positives in that bin of that size and the rest are
dropped from the split (they are in no set; nothing moves between sets). Matching per TF *and* per degree bin is what
takes the degree signal out on dense networks: a hub's non-targets are mostly low-degree genes, so matching only
the TF counts leaves hub-positive pairs with high target degree and hub-negative pairs with low (degree heuristic
0.65-0.75 AUROC on the cell-type-specific ChIP-seq networks). With it the degree heuristic scores 0.50 +- 0.02 test
AUROC on all 25 BEELINE benchmark folders with expression (seeds 0-4). The price is the dropped positives: about
0-3% on Non-Specific and the sparse Specific mDC, 3-12% on STRING, 20% on Lofgof and 49-67% on the dense Specific
networks (hHEP, mESC, mHSC; up to 75% under cold-start), where many TFs target most genes; `logger.info` reports the
counts per set. On those dense networks a hub's negatives are its few non-targets, so targets are no longer as often
negatives as positives (the swaps stay within a few % of the most that the per-TF, per-bin counts allow).
"""

from __future__ import annotations

import numpy as np

from finetune.grn.beeline import GrnDataset
from finetune.grn.edge_sets import TEST, TRAIN, VAL, _codes, _draw_per_tf, _random_ranks, _reverse_codes, logger

# Set code of a positive that no set can match with a negative (degree-aware splits drop it).
DROPPED = -1
# Degree-aware repair stops after this many rounds of target swaps without fewer invalid pairs.
_REWIRE_PATIENCE = 25
# Target-degree bins: each holds at least this many genes (so the TFs that point at a bin's hub targets still have
# non-targets in it), and at most this many bins per set.
_BIN_GENES = 32
_MAX_BINS = 48
# Slots the swaps cannot fill take genes that still lack negatives (weight = that deficit); others get this weight.
_FILL_OTHER_WEIGHT = 1e-3
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


def _degree_bins(key: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Bin of every gene by `key` (an in-degree, >= 0), as ranges of key values; never splits a value.

    Key 0 (a gene with no training edge, which a degree heuristic scores 0) is a bin of its own. Positive keys are
    binned from the highest down, a bin closing once it holds `_BIN_GENES` genes and at least a `_MAX_BINS`-th of
    `targets`, so a bin of hub targets also holds non-targets of the TFs that point at them; the lowest, unfinished
    bin joins the one above it.
    Shapes: key (n_genes,), targets (n,) -> (n_genes,) int64 bin ids 0..n_bins-1, ordered by key.
    """
    values, genes = np.unique(key, return_counts=True)
    slots = np.bincount(np.searchsorted(values, key[targets]), minlength=len(values))
    min_slots = max(1, -(-len(targets) // _MAX_BINS))
    lowest = 1 if values[0] == 0 else 0  # position of the lowest positive key
    cuts: list[int] = []  # lowest key of each bin of positive keys, from the top down
    n_slots = n_genes = 0
    for position in range(len(values) - 1, lowest - 1, -1):
        n_slots += int(slots[position])
        n_genes += int(genes[position])
        if n_slots >= min_slots and n_genes >= _BIN_GENES:
            cuts.append(int(values[position]))
            n_slots = n_genes = 0
    if n_genes and cuts:
        cuts.pop()  # the lowest bin is unfinished: merge it into the one above
    if lowest == 1 and len(values) > 1:
        cuts.append(int(values[1]))  # keep key 0 apart (a no-op when that cut is already there)
    return np.searchsorted(np.unique(np.array(cuts, dtype=np.int64)), key, side="right").astype(np.int64)


def _matched_set(
    rng: np.random.Generator,
    pairs: np.ndarray,
    key: np.ndarray,
    n_genes: int,
    forbidden: np.ndarray,
    cap: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One set's negatives, matched to its positives per TF and per target-degree bin; returns (keep, negatives).

    `pairs` (n, 2) are the set's positives, `key` (n_genes,) the target degree to match, `forbidden` the codes no
    negative may use (known edges, other sets' pairs) and `cap` (n_genes,) the most negatives each TF may take.

    Genes are binned by `key` (`_degree_bins`). TF t keeps min(its positives in bin b, its allowed non-targets in bin
    b) positives of bin b, and at most cap[t] in all (a random subset of those); its other positives are dropped
    (`keep` False), chosen at random inside each bin. The kept positives get their negatives by rewiring targets
    inside each bin (`_rewire_targets`); a slot that rewiring cannot fill takes another of the TF's allowed genes
    of the bin, preferring genes that still have fewer negatives than positives. As a TF never keeps more positives
    in a bin than it has allowed genes there, every TF ends with exactly as many negatives as kept positives in
    every bin. Shapes: keep (n,) bool, negatives (keep.sum(), 2).
    """
    if len(pairs) == 0:
        return np.zeros(0, dtype=bool), np.zeros((0, 2), dtype=np.int64)
    bins = _degree_bins(key, pairs[:, 1])  # (n_genes,)
    n_bins = int(bins.max()) + 1
    tfs, tf_row = np.unique(pairs[:, 0], return_inverse=True)
    slot_bin = bins[pairs[:, 1]]
    positives = np.zeros((len(tfs), n_bins), dtype=np.int64)  # (set TFs, bins)
    np.add.at(positives, (tf_row, slot_bin), 1)
    # Allowed genes per TF and bin: the bin's genes minus the TF itself and the TF's forbidden pairs.
    allowed = np.broadcast_to(np.bincount(bins, minlength=n_bins), positives.shape).copy()
    allowed[np.arange(len(tfs)), bins[tfs]] -= 1
    row_of = np.full(n_genes, -1, dtype=np.int64)
    row_of[tfs] = np.arange(len(tfs))
    forbidden_tf, forbidden_gene = np.divmod(np.unique(forbidden), n_genes)
    hit = (row_of[forbidden_tf] >= 0) & (forbidden_tf != forbidden_gene)
    np.add.at(allowed, (row_of[forbidden_tf[hit]], bins[forbidden_gene[hit]]), -1)
    keep_count = np.minimum(positives, allowed)
    for row in np.flatnonzero(keep_count.sum(axis=1) > cap[tfs]).tolist():
        units = np.repeat(np.arange(n_bins), keep_count[row])  # one entry per keepable positive: its bin
        chosen = rng.choice(len(units), size=int(max(cap[tfs[row]], 0)), replace=False)
        keep_count[row] = np.bincount(units[chosen], minlength=n_bins)
    rank, _ = _random_ranks(rng, tf_row * n_bins + slot_bin)
    keep = rank < keep_count[tf_row, slot_bin]
    # Rewire targets inside each bin (bins hold different targets, so two bins never make the same pair).
    excluded = _PairSet(forbidden, n_genes)
    matched = np.concatenate(
        [_rewire_targets(rng, pairs[keep & (slot_bin == b)], n_genes, excluded) for b in range(n_bins)]
    )
    have = np.zeros_like(positives)
    np.add.at(have, (row_of[matched[:, 0]], bins[matched[:, 1]]), 1)
    short = keep_count - have
    deficit = np.bincount(pairs[keep, 1], minlength=n_genes) - np.bincount(matched[:, 1], minlength=n_genes)
    weights = np.maximum(deficit, 0).astype(np.float64) + _FILL_OTHER_WEIGHT  # (n_genes,)
    used = np.concatenate([forbidden, _codes(matched, n_genes)])
    filled = [matched]
    for b in np.flatnonzero(short.sum(axis=0)).tolist():
        rows = np.flatnonzero(short[:, b])
        drawn, taken = _draw_per_tf(rng, tfs[rows], short[rows, b], n_genes, used, np.where(bins == b, weights, 0))
        if (taken != short[rows, b]).any():  # cannot happen: keep_count <= allowed genes per TF and bin
            msg = "degree-aware negatives: a degree bin ran out of allowed genes; please report this as a bug"
            raise RuntimeError(msg)
        filled.append(drawn)
    return keep, np.concatenate(filled)


def degree_aware_negatives(
    rng: np.random.Generator,
    dataset: GrnDataset,
    assign: np.ndarray,
    set_forbidden: dict[int, np.ndarray] | None = None,
    *,
    directed: bool = True,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Degree-matched negatives for every set; returns (assign with the dropped positives set to DROPPED, negatives).

    `assign` (n_edges,) holds the set code (TRAIN, VAL, TEST) of every positive of `dataset`; negatives are
    [training, validation, test] arrays of (tf, target) pairs, one per kept positive of the same TF and target-degree
    bin (`_matched_set`). Training is filled first and matched on its positives' in-degree; validation and test are
    matched on the in-degree of the kept training positives, which is what the degree heuristic sees (matching on
    total in-degree made held-out targets look low-degree: their own held-out edges are missing from training).
    Each TF's non-targets are shared out between the sets in proportion to its positives in each (its cap), so a
    hub TF keeps edges in every set rather than training using up all of its non-targets. Positives without a
    matching negative are dropped (module docstring); the counts per set go to logger.info.

    Directed pairs: a set's negative is never the reverse of a pair labelled in another set (a positive assigned
    there or a negative drawn there), so a labelled pair and its reverse stay in one set. `set_forbidden` maps a set
    code to further (tf, target) codes its negatives may not use (cold-start and held-out-genes keep each set's
    negatives inside its own genes). `directed=False` drops the reverse rule (the protocol before directed splits,
    kept to show what it leaked).
    """
    n_genes = dataset.n_genes
    positives = dataset.positives
    assign = np.array(assign, dtype=np.int64)
    out_degree = np.bincount(positives[:, 0], minlength=n_genes)
    non_targets = n_genes - 1 - out_degree  # (n_genes,): what each TF can have as negatives over all sets
    used = _codes(positives, n_genes)
    spent = np.zeros(n_genes, dtype=np.int64)  # negatives each TF has taken in the sets filled so far
    seen = np.zeros(n_genes, dtype=np.int64)  # positives of each TF in the sets filled so far
    key = np.bincount(positives[assign == TRAIN, 1], minlength=n_genes)
    negatives: dict[int, np.ndarray] = {}
    counts = []
    for code, name in ((TRAIN, "training"), (VAL, "validation"), (TEST, "test")):
        index = np.flatnonzero(assign == code)
        set_positives = positives[index]
        seen += np.bincount(set_positives[:, 0], minlength=n_genes)
        share = non_targets if code == TEST else non_targets * seen // np.maximum(out_degree, 1)
        elsewhere = positives[(assign != code) & (assign != DROPPED)]
        drawn = [negatives[c] for c in negatives]
        forbidden = [used]
        if directed:
            forbidden += [_reverse_codes(elsewhere, n_genes), *(_reverse_codes(d, n_genes) for d in drawn)]
        if set_forbidden and code in set_forbidden:
            forbidden.append(np.asarray(set_forbidden[code], dtype=np.int64))
        keep, matched = _matched_set(rng, set_positives, key, n_genes, np.concatenate(forbidden), share - spent)
        assign[index[~keep]] = DROPPED
        used = np.concatenate([used, _codes(matched, n_genes)])
        spent += np.bincount(matched[:, 0], minlength=n_genes)
        negatives[code] = matched
        counts.append(f"{int((~keep).sum())} of {len(keep)} {name}")
        if code == TRAIN:
            key = np.bincount(set_positives[keep, 1], minlength=n_genes)
    logger.info(
        "%s: degree-aware negatives dropped %s positives (%d of %d in all: TFs with too few non-targets of matching "
        "target degree)",
        dataset.name,
        ", ".join(counts),
        int((assign == DROPPED).sum()),
        len(assign),
    )
    return assign, [negatives[code] for code in (TRAIN, VAL, TEST)]
