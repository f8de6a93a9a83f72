"""Per-gene statistics over a corpus, accumulated shard by shard in bounded memory.

For each vocab gene: cells expressing it, sum of values, the median of its non-zero values, and (counts corpora)
the median of its non-zero CP10k values, count / cell total x 10,000 (Geneformer normalizes each gene by this
before rank-value encoding). An exact median would need every
value; instead a per-gene histogram: exact unit bins for counts 1..127 (so count medians are exact there, which
is nearly all genes), then 16 bins per doubling (<= 4.4 % relative error). Non-count kinds use bins of width 1/16
on sign(v)·log1p(|v|). The reported median is the value of the ceil(n/2)-th smallest non-zero.
"""

from __future__ import annotations

import numpy as np

from data_prep.values import ValueKind

_EXACT = 128
# CP10k values (count / cell total x 10,000) of counts corpora: 16 bins per doubling from 2^-12 to 2^15
# (<= 4.4 % relative error), for Geneformer's normaliser (the non-zero median of each gene's CP10k values)
CP10K_EDGES = 2.0 ** (np.arange(-16 * 12, 16 * 15 + 1) / 16.0)


def bin_edges(kind: ValueKind) -> np.ndarray:
    """Lower edges of the histogram bins (increasing)."""
    if kind is ValueKind.COUNTS:
        exact = np.arange(1, _EXACT + 1, dtype=np.float64)
        octaves = _EXACT * 2.0 ** (np.arange(1, 16 * 25 + 1) / 16.0)
        return np.concatenate([exact, octaves])
    t = np.arange(-16 * 16, 16 * 16 + 1) / 16.0  # sign(v) log1p|v| in [-16, 16]
    return np.sign(t) * np.expm1(np.abs(t))


def bin_centers(kind: ValueKind, edges: np.ndarray) -> np.ndarray:
    if kind is ValueKind.COUNTS:
        upper = np.r_[edges[1:], edges[-1] * 2 ** (1 / 16)]
        centers = np.sqrt(edges * upper)
        centers[:_EXACT] = edges[:_EXACT]
        return centers
    return np.r_[(edges[:-1] + edges[1:]) / 2, edges[-1]]


class GeneStats:
    def __init__(self, vocab_size: int, kind: ValueKind) -> None:
        self.kind = kind
        self.edges = bin_edges(kind)
        self.n_bins = len(self.edges)
        self.n_cells = np.zeros(vocab_size, dtype=np.int64)
        self.total = np.zeros(vocab_size, dtype=np.float64)
        # (vocab, n_bins) int64, ~200 MB for a 49k vocab: allocated on the first add(), so workers that only
        # compute partial() for their shard never hold it.
        self.hist: np.ndarray | None = None
        self.cp10k_hist: np.ndarray | None = None  # (vocab, len(CP10K_EDGES)), counts corpora
        self.cp10k_complete = True  # False once a part without CP10k histograms (an older run's) was added

    def partial(
        self, gene_ids: np.ndarray, values: np.ndarray, indptr: np.ndarray | None = None,
        library_size: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """A shard's contribution, sparse, so workers send little back to the parent. With the cells' `indptr`
        (counts corpora) also the CP10k histogram, each cell normalised by `library_size` (its raw total over all
        of its input genes) or, without it, by the sum of its values."""
        g = gene_ids.astype(np.int64)
        size = len(self.n_cells)
        if self.kind is ValueKind.COUNTS and values.dtype.kind in "ui":
            # Integer counts: bin = count - 1 below _EXACT, so almost no value needs a search.
            bins = values.astype(np.int64) - 1
            big = bins >= _EXACT
            if big.any():
                bins[big] = np.searchsorted(self.edges, values[big].astype(np.float64), side="right") - 1
        else:
            bins = np.searchsorted(self.edges, values.astype(np.float64), side="right") - 1
        np.clip(bins, 0, self.n_bins - 1, out=bins)
        # A dense count over (gene, bin) is one pass (bincount) where np.unique would sort; only its non-zeros
        # travel back to the parent.
        dense = np.bincount(g * self.n_bins + bins, minlength=size * self.n_bins)
        flat = np.flatnonzero(dense)
        out = {
            "n_cells": np.bincount(g, minlength=size),
            "total": np.bincount(g, weights=values.astype(np.float64), minlength=size),
            "hist_index": flat,
            "hist_count": dense[flat],
        }
        if self.kind is ValueKind.COUNTS and indptr is not None:
            lengths = np.diff(indptr)
            cell = np.repeat(np.arange(len(lengths)), lengths)
            v = values.astype(np.float64)
            totals = library_size if library_size is not None else np.bincount(cell, weights=v, minlength=len(lengths))
            cp10k = v / np.maximum(np.asarray(totals, dtype=np.float64)[cell], 1e-300) * 1e4
            cp_bins = np.clip(np.searchsorted(CP10K_EDGES, cp10k, side="right") - 1, 0, len(CP10K_EDGES) - 1)
            dense = np.bincount(g * len(CP10K_EDGES) + cp_bins, minlength=size * len(CP10K_EDGES))
            flat = np.flatnonzero(dense)
            out["cp10k_hist_index"], out["cp10k_hist_count"] = flat, dense[flat]
        return out

    def add(self, part: dict[str, np.ndarray]) -> None:
        self.n_cells += part["n_cells"]
        self.total += part["total"]
        if self.hist is None:
            self.hist = np.zeros((len(self.n_cells), self.n_bins), dtype=np.int64)
        self.hist.reshape(-1)[part["hist_index"]] += part["hist_count"]
        if "cp10k_hist_index" not in part:
            self.cp10k_complete = False
            return
        if self.cp10k_hist is None:
            self.cp10k_hist = np.zeros((len(self.n_cells), len(CP10K_EDGES)), dtype=np.int64)
        self.cp10k_hist.reshape(-1)[part["cp10k_hist_index"]] += part["cp10k_hist_count"]

    def nonzero_median_cp10k(self) -> np.ndarray | None:
        """Each gene's non-zero median of CP10k values (0 for genes never expressed); None when not every shard
        contributed its histogram (non-count corpora, or parts written by an older scgrn)."""
        if self.kind is not ValueKind.COUNTS or not self.cp10k_complete or self.cp10k_hist is None:
            return None
        centers = CP10K_EDGES * 2 ** (1 / 32)  # geometric bin centres
        return _histogram_median(self.cp10k_hist, centers)

    def nonzero_median(self) -> np.ndarray:
        if self.hist is None:
            return np.zeros(len(self.n_cells), dtype=np.float64)
        return _histogram_median(self.hist, bin_centers(self.kind, self.edges))


def _histogram_median(hist: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Per row of a (genes, bins) histogram, the centre of the bin holding the ceil(n/2)-th value (0 when empty)."""
    out = np.zeros(len(hist), dtype=np.float64)
    for lo in range(0, len(out), 4096):
        h = hist[lo : lo + 4096]
        n = h.sum(axis=1)
        cum = np.cumsum(h, axis=1)
        k = np.argmax(cum >= np.ceil(n / 2)[:, None], axis=1)
        out[lo : lo + 4096] = np.where(n > 0, centers[k], 0.0)
    return out
