"""Leak-free TF -> target edge splits: GENELink's protocols, a degree-aware variant, cold-start TFs, split files and
prior hold-outs.

An edge split is three (n, 3) int64 arrays of [tf, target, label] rows (label 1 = known edge, 0 = negative pair), for
training, model selection (validation) and the final score (test). No (tf, target) pair appears in two sets, not even
as a negative, and no pair is a self pair, so nothing seen in training or selection is scored again.

Every protocol here is *directed*: a labelled pair and its labelled reverse are in the same set. BEELINE's STRING
networks list 41-89 % of their edges both ways and the message-passing graph is undirected, so without this a test
pair (t, g) often sat on the training graph as (g, t), and a topology shortcut that reads only the training graph
scored 0.89 AUROC on STRING mESC (tests/finetune/test_directed_splits.py).

Protocols
- `genelink_split(..., negatives="genelink")` re-implements GENELink's `Train_Test_Split.py` (Chen & Liu 2022):
  hard negatives for the cell-type-specific ChIP-seq networks, density-matched random negatives for the others.
- `genelink_split(..., negatives="degree-aware")` keeps those positives but redraws every negative so that node degree
  carries no signal (Stock et al. 2025 showed that degree leakage lets degree heuristics match GNNs on GENELink splits):
  one negative per positive of the same TF and target-degree bin, so the degree heuristic scores 0.50 +- 0.02 test
  AUROC on every BEELINE network. Positives of hub TFs that lack non-targets of matching degree are dropped from the
  split (0-20% of the edges on the sparse networks, about half on the dense cell-type-specific ones).
- `cold_start_split` holds out whole TFs: no edge touching a validation or test TF, in either direction, is in
  training, and the negatives are degree-aware as above, so a model must generalize to TFs it never saw.
- `held_out_genes_split` partitions the genes: a validation or test pair's two genes have no edge at all in training,
  so neither a gene's identity nor the training graph can rank it (the shortcuts score 0.5) and only what is known
  about a gene without the labels (expression, a pretrained representation) can.
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
from finetune.grn.degree_negatives import DROPPED, degree_aware_negatives
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
    _reverse_codes,
    _rows,
    _sorted_rows,
    _warn_short,
    logger,
    repair_reverse,
)
from finetune.grn.split_files import read_split

__all__ = [
    "COLD_START_NEGATIVES",
    "NEGATIVE_MODES",
    "SPLIT_NAMES",
    "_BLOCK_CELLS",
    "EdgeSplit",
    "HeldOutGenesTooSmall",
    "_codes",
    "_draw_per_tf",
    "_per_tf_counts",
    "cold_start_split",
    "genelink_split",
    "held_out_genes_split",
    "logger",
    "read_split",
    "repair_reverse",
]

NEGATIVE_MODES = ("genelink", "degree-aware")
COLD_START_NEGATIVES = ("degree-aware",)
# Set code of a gene in no group (cold-start: a gene that is not a TF with an edge).
FREE = -2
# Held-out genes: shares of the genes (TFs and the others, each) in the validation and test parts; a test pair needs
# both genes in the test part, so about 0.3^2 = 9 % of the edges are test pairs.
HELD_OUT_GENES_FRACTIONS = (0.2, 0.3)
# Held-out genes: a set with fewer test positives than this per seed is too small to report.
MIN_HELD_OUT_POSITIVES = 20
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


def _unify_reciprocal(positives: np.ndarray, assign: np.ndarray, n_genes: int) -> np.ndarray:
    """Put the reverse (b, a) of every positive (a, b) with a < b in the set of (a, b): a reciprocal pair of edges is
    one fact seen from two ends, and the undirected training graph would hand a held-out one to the model (and to
    the topology shortcut) through the other. `positives` are sorted unique rows, so their codes are sorted."""
    codes = _codes(positives, n_genes)
    reverse = _reverse_codes(positives, n_genes)
    position = np.minimum(np.searchsorted(codes, reverse), max(len(codes) - 1, 0))
    reciprocal = (codes[position] == reverse) & (positives[:, 0] > positives[:, 1])
    assign = assign.copy()
    assign[reciprocal] = assign[position[reciprocal]]
    return assign


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

    def barred(code: int) -> np.ndarray:
        """Also never the reverse of a positive of another set or of a negative drawn for another set."""
        reverse = [_reverse_codes(positives[assign != code], n_genes), *(_reverse_codes(d, n_genes) for d in negatives)]
        return np.concatenate([forbidden, *reverse])

    for code, what in ((TRAIN, "the training 1:1 negatives"), (VAL, "the validation 1:1 negatives")):
        tfs, need = _per_tf_counts(positives[assign == code])
        drawn, taken = _draw_per_tf(rng, tfs, need, n_genes, barred(code))
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
    drawn, taken = _draw_per_tf(rng, tfs, need, n_genes, barred(TEST))
    _warn_short("the density-matched test negatives", dataset, need, taken)
    negatives.append(drawn)
    return negatives


def genelink_split(dataset: GrnDataset, seed: int, negatives: str = "genelink", *, directed: bool = True) -> EdgeSplit:
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

    Directed: a positive whose reverse is also a positive joins the set of the (low, high) one of the two, and no
    negative is the reverse of a pair of another set, so no validation or test pair is on the (undirected) training
    graph in either direction. `directed=False` (degree-aware negatives only) reproduces the protocol before this
    rule, whose test pairs often sat on the training graph as their reverse (20-48 % of STRING's test positives);
    it exists to show that leak and is not offered by `scgrn grn`.

    Every pair is in at most one set and no pair is a self pair; the result is a deterministic function of `seed`.
    With "genelink" negatives every positive is in exactly one set; with "degree-aware" at most one.
    """
    if negatives not in NEGATIVE_MODES:
        msg = f"negatives={negatives!r} is not one of {', '.join(NEGATIVE_MODES)}; pick one of them"
        raise GrnInputError(msg)
    if not directed and negatives != "degree-aware":
        msg = "directed=False exists only for the degree-aware negatives (to show the leak they had before)"
        raise GrnInputError(msg)
    if dataset.n_edges == 0:
        msg = f"dataset {dataset.name!r} has no positive edges to split; it needs a ground truth or prior with edges"
        raise GrnInputError(msg)
    rng = np.random.default_rng(seed)
    specific = dataset.network == "Specific"
    assign = _assign_positives(rng, dataset.positives, specific=specific)
    if directed:
        assign = _unify_reciprocal(dataset.positives, assign, dataset.n_genes)
    if negatives == "degree-aware":
        protocol = "degree-aware" if directed else "degree-aware-undirected"
        assign, negative_sets = degree_aware_negatives(rng, dataset, assign, directed=directed)
    elif specific:
        protocol = "genelink-specific"
        negative_sets = _specific_negatives(rng, dataset)
    else:
        protocol = "genelink-density"
        negative_sets = _density_negatives(rng, dataset, assign)
    return _edge_split(dataset, assign, negative_sets, protocol)


def _edge_split(dataset: GrnDataset, assign: np.ndarray, negative_sets: list[np.ndarray], protocol: str) -> EdgeSplit:
    """EdgeSplit of the positives by `assign` (DROPPED ones left out) and [train, val, test] negative pairs.

    GENELink's negatives are drawn without regard to direction, so a negative whose reverse is labelled in another
    set is moved to the set of its reverse (a positive's, or the later one's; `repair_reverse`); the positives never
    move, and the degree-aware negatives never need it. The result is checked to hold no
    pair whose reverse is in another set."""
    train, val, test = (
        _sorted_rows(_rows(dataset.positives[assign == code], 1), _rows(negative_sets[code], 0))
        for code in (TRAIN, VAL, TEST)
    )
    split = EdgeSplit(train=train, val=val, test=test, protocol=protocol)
    if protocol.endswith("-undirected"):  # the protocol before directed splits: only to show what it leaked
        split.check(dataset.n_genes)
        return split
    if protocol.startswith("genelink"):
        split, _ = repair_reverse(split, dataset.n_genes, keep_positives=True)
        split = EdgeSplit(split.train, split.val, split.test, protocol)
    split.check(dataset.n_genes, directed=True)
    return split


def _tfs_for_three_sets(dataset: GrnDataset, what: str) -> np.ndarray:
    """The TFs with a known edge; GrnInputError when fewer than 3 (one each for training, validation and test)."""
    tfs = np.unique(dataset.positives[:, 0])
    if len(tfs) < 3:
        msg = (
            f"dataset {dataset.name!r} has {len(tfs)} TF(s) with a known edge; {what} needs at least 3 (one each "
            "for training, validation and test); use --split genelink instead"
        )
        raise GrnInputError(msg)
    return tfs


def _hold_out(rng: np.random.Generator, group: np.ndarray, members: np.ndarray, val: float, test: float) -> None:
    """Shuffle `members` and set the group of the first round(val * n) (at least 1) to VAL and of the next
    round(test * n) (at least 1) to TEST, in place; the others keep theirs."""
    shuffled = rng.permutation(members)
    n_val = max(1, int(np.floor(len(members) * val + 0.5)))
    n_test = max(1, int(np.floor(len(members) * test + 0.5)))
    group[shuffled[:n_val]] = VAL
    group[shuffled[n_val : n_val + n_test]] = TEST


def _gene_group_assign(dataset: GrnDataset, group: np.ndarray, *, same_group_only: bool) -> np.ndarray:
    """Set code of every positive from its genes' groups (FREE = a gene in no group).

    A positive (a, b) goes to group[a]'s set. With `same_group_only` (held-out genes) b must be in that group too;
    otherwise (cold-start) b may be any gene except a TF held out in *another* group. Everything else is DROPPED: no
    held-out gene has an edge outside its own set, in either direction."""
    tf_group, target_group = group[dataset.positives[:, 0]], group[dataset.positives[:, 1]]
    if same_group_only:
        fits = target_group == tf_group
    else:
        fits = (target_group == tf_group) | (target_group == FREE) | (target_group == TRAIN)
        fits &= tf_group != FREE
    return np.where(fits, tf_group, DROPPED)


def _outside_group_codes(dataset: GrnDataset, group: np.ndarray, *, same_group_only: bool) -> dict[int, np.ndarray]:
    """Per set code, the (tf, target) codes its negatives may not use: pairs whose target is outside the set's genes
    (held-out genes) or a TF held out in another group (cold-start)."""
    genes = np.arange(dataset.n_genes)
    out = {}
    for code in (TRAIN, VAL, TEST):
        tfs = np.unique(dataset.positives[group[dataset.positives[:, 0]] == code, 0])
        if same_group_only:
            barred = genes[group != code]
        else:
            barred = genes[(group != code) & (group != FREE) & (group != TRAIN)]
        out[code] = (tfs[:, None] * dataset.n_genes + barred[None, :]).ravel()
    return out


def _check_sets_filled(dataset: GrnDataset, assign: np.ndarray, group: np.ndarray, tfs: np.ndarray, what: str) -> None:
    for code, name in ((TRAIN, "training"), (VAL, "validation"), (TEST, "test")):
        if not (assign == code).any():
            msg = (
                f"dataset {dataset.name!r}: no positive of the {int((group[tfs] == code).sum())} {what} {name} "
                "TF(s) is left with a negative of the same TF and target degree inside its own genes, so that set "
                "would be empty (too few TFs that share targets, or TFs that target nearly every gene); use a "
                "network with more TFs and edges, or --split genelink"
            )
            raise GrnInputError(msg)


def cold_start_split(dataset: GrnDataset, seed: int, negatives: str = "degree-aware") -> EdgeSplit:
    """Held-out TFs: no edge that touches a validation or test TF, in either direction, is seen in training
    (protocol "cold-start").

    The TFs with at least one known edge are shuffled (from `seed`) into a training, a validation and a test group
    (20% of them each for validation and test, rounded, at least one TF each; training takes the rest). A positive
    goes to its TF's set, unless its target is a TF held out in another group: such an edge touches two held-out
    groups (or, from a training TF, a held-out one) and is dropped, so training holds no edge into a held-out TF
    either (a test TF's incoming edges are as informative as its outgoing ones in an undirected graph). Negatives are
    degree-aware (`degree_negatives.py`): one per positive of the same TF, with a target of the same training
    in-degree bin and never a held-out TF of another group, a known edge, a self pair or the reverse of a pair of
    another set; positives of hub TFs that lack non-targets of matching degree are dropped. A degree heuristic scores
    exactly 0.5 test AUROC (test TFs have training out-degree 0), and the target in-degree alone carries no signal.

    Raises GrnInputError with fewer than 3 TFs that have an edge, or when dropping leaves a set without positives
    (a training TF's negatives must be other training TFs' targets, so a single training TF gets none).
    The result is a deterministic function of `seed`.
    """
    if negatives not in COLD_START_NEGATIVES:
        msg = f"cold-start negatives={negatives!r} is not one of {', '.join(COLD_START_NEGATIVES)}; pick one of them"
        raise GrnInputError(msg)
    tfs = _tfs_for_three_sets(dataset, "a cold-start split")
    rng = np.random.default_rng(seed)
    group = np.full(dataset.n_genes, FREE, dtype=np.int64)  # (n_genes,) set code of each TF with an edge
    group[tfs] = TRAIN
    _hold_out(rng, group, tfs, COLD_START_VAL_FRACTION, COLD_START_TEST_FRACTION)
    assign = _gene_group_assign(dataset, group, same_group_only=False)
    forbidden = _outside_group_codes(dataset, group, same_group_only=False)
    assign, negative_sets = degree_aware_negatives(rng, dataset, assign, forbidden)
    _check_sets_filled(dataset, assign, group, tfs, "cold-start")
    return _edge_split(dataset, assign, negative_sets, "cold-start")


class HeldOutGenesTooSmall(GrnInputError):
    """A held-out-genes split that leaves too few test positives to score (the benchmark lists such sets)."""

    def __init__(self, msg: str, test_positives: int) -> None:
        super().__init__(msg)
        self.test_positives = test_positives


def held_out_genes_split(dataset: GrnDataset, seed: int, min_test_positives: int = MIN_HELD_OUT_POSITIVES) -> EdgeSplit:
    """Held-out genes: the genes (TFs and targets) are partitioned, and a pair belongs to a set only when both of its
    genes are in that set's part (protocol "held-out-genes").

    The TFs with an edge and the other genes are each shuffled (from `seed`) into training, validation and test parts
    (HELD_OUT_GENES_FRACTIONS, so every part has TFs); a positive whose genes fall into two parts is dropped. So a
    validation or test gene has no edge at all in the training graph or the training supervision: a model cannot
    recognise it (a random gene vector is no better than none), and the shortcuts (degree, topology, label-knn)
    have nothing to read and score 0.5. Only what is known about a gene *without* the labels (its expression, a
    pretrained representation) can rank its pairs. Negatives are degree-aware inside each part (one per positive of
    the same TF, targets inside the part, rewired so each target is about as often a negative as a positive).

    Only about (test fraction)^2 of the edges are test pairs: raises `HeldOutGenesTooSmall` (a GrnInputError) when
    fewer than `min_test_positives` remain, naming the count, and GrnInputError when a set is empty or the network
    has fewer than 3 TFs with an edge. The result is a deterministic function of `seed`.
    """
    tfs = _tfs_for_three_sets(dataset, "a held-out-genes split")
    rng = np.random.default_rng(seed)
    group = np.full(dataset.n_genes, TRAIN, dtype=np.int64)
    val_fraction, test_fraction = HELD_OUT_GENES_FRACTIONS
    for members in (tfs, np.setdiff1d(np.arange(dataset.n_genes), tfs)):
        _hold_out(rng, group, members, val_fraction, test_fraction)
    assign = _gene_group_assign(dataset, group, same_group_only=True)
    forbidden = _outside_group_codes(dataset, group, same_group_only=True)
    assign, negative_sets = degree_aware_negatives(rng, dataset, assign, forbidden)
    n_test = int((assign == TEST).sum())
    if n_test < min_test_positives:
        msg = (
            f"dataset {dataset.name!r} ({dataset.n_edges} edges): --split held-out-genes leaves {n_test} test "
            f"positive(s) for seed {seed}, fewer than the {min_test_positives} needed for a test AUROC worth "
            "reporting (a test pair needs both genes held out, about "
            f"{test_fraction**2:.0%} of the edges); use a larger network, or --split cold-start / genelink"
        )
        raise HeldOutGenesTooSmall(msg, n_test)
    _check_sets_filled(dataset, assign, group, tfs, "held-out-genes")
    return _edge_split(dataset, assign, negative_sets, "held-out-genes")
