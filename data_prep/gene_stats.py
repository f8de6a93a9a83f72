"""Per-gene statistics over a corpus, accumulated shard by shard in bounded memory.

For each vocab gene: cells expressing it, sum of values, and the median of its non-zero values (Geneformer
normalizes each gene by this non-zero median before rank-value encoding). An exact median would need every
value; instead a per-gene histogram: exact unit bins for counts 1..127 (so count medians are exact there, which
is nearly all genes), then 16 bins per doubling (<= 4.4 % relative error). Non-count kinds use bins of width 1/16
on sign(v)·log1p(|v|). The reported median is the value of the ceil(n/2)-th smallest non-zero.
"""

from __future__ import annotations

import numpy as np

from data_prep.values import ValueKind

_EXACT = 128


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

    def partial(self, gene_ids: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
        """A shard's contribution, sparse, so workers send little back to the parent."""
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
        return {
            "n_cells": np.bincount(g, minlength=size),
            "total": np.bincount(g, weights=values.astype(np.float64), minlength=size),
            "hist_index": flat,
            "hist_count": dense[flat],
        }

    def add(self, part: dict[str, np.ndarray]) -> None:
        self.n_cells += part["n_cells"]
        self.total += part["total"]
        if self.hist is None:
            self.hist = np.zeros((len(self.n_cells), self.n_bins), dtype=np.int64)
        self.hist.reshape(-1)[part["hist_index"]] += part["hist_count"]

    def nonzero_median(self) -> np.ndarray:
        centers = bin_centers(self.kind, self.edges)
        out = np.zeros(len(self.n_cells), dtype=np.float64)
        if self.hist is None:
            return out
        for lo in range(0, len(out), 4096):
            h = self.hist[lo : lo + 4096]
            n = h.sum(axis=1)
            cum = np.cumsum(h, axis=1)
            k = np.argmax(cum >= np.ceil(n / 2)[:, None], axis=1)
            out[lo : lo + 4096] = np.where(n > 0, centers[k], 0.0)
        return out
