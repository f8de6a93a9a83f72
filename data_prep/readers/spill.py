"""Transpose a gene-major input (CSC h5ad, Matrix Market, genes x cells CSV) into cell-range buckets.

Such inputs store one gene's values across all cells together, so reading a range of *cells* would mean
reading the whole file. One streaming pass appends (row, col, value) triplets to per-bucket files of
`bucket_cells` cells each; afterwards any cell range is a few bucket reads. Memory is bounded by the chunk
being transposed, never by the input size. A `DONE` marker makes the spill reusable across processes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

_ROW, _COL, _VAL = np.int32, np.int32, np.float64


class TransposeSpill:
    def __init__(self, directory: Path, n_cells: int, n_genes: int, bucket_cells: int) -> None:
        self.directory = Path(directory)
        self.n_cells = n_cells
        self.n_genes = n_genes
        self.bucket_cells = max(1, bucket_cells)

    @property
    def done(self) -> bool:
        marker = self.directory / "DONE"
        if not marker.exists():
            return False
        meta = json.loads(marker.read_text())
        return meta == {"n_cells": self.n_cells, "n_genes": self.n_genes, "bucket_cells": self.bucket_cells}

    def build(self, triplet_chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Consume (cell, gene, value) chunks (0-based) and write the buckets, then the marker."""
        if self.done:
            return
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        for cells, genes, values in triplet_chunks:
            bucket = cells // self.bucket_cells
            order = np.argsort(bucket, kind="stable")
            bucket, cells, genes, values = bucket[order], cells[order], genes[order], values[order]
            bounds = np.flatnonzero(np.diff(bucket)) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(bucket)], strict=True):
                if lo == hi:
                    continue
                b = int(bucket[lo])
                local = (cells[lo:hi] - b * self.bucket_cells).astype(_ROW)
                with open(self.directory / f"{b:06d}.rows", "ab") as f:
                    local.tofile(f)
                with open(self.directory / f"{b:06d}.cols", "ab") as f:
                    genes[lo:hi].astype(_COL).tofile(f)
                with open(self.directory / f"{b:06d}.vals", "ab") as f:
                    values[lo:hi].astype(_VAL).tofile(f)
        meta = {"n_cells": self.n_cells, "n_genes": self.n_genes, "bucket_cells": self.bucket_cells}
        (self.directory / "DONE").write_text(json.dumps(meta))

    def _bucket(self, b: int) -> sp.csr_matrix:
        n_rows = min(self.bucket_cells, self.n_cells - b * self.bucket_cells)
        stem = self.directory / f"{b:06d}"
        if not stem.with_suffix(".rows").exists():
            return sp.csr_matrix((n_rows, self.n_genes), dtype=_VAL)
        rows = np.fromfile(stem.with_suffix(".rows"), dtype=_ROW)
        cols = np.fromfile(stem.with_suffix(".cols"), dtype=_COL)
        vals = np.fromfile(stem.with_suffix(".vals"), dtype=_VAL)
        m = sp.coo_matrix((vals, (rows, cols)), shape=(n_rows, self.n_genes)).tocsr()
        m.sort_indices()
        return m

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        parts = []
        for b in range(start // self.bucket_cells, (stop - 1) // self.bucket_cells + 1):
            lo = max(start, b * self.bucket_cells) - b * self.bucket_cells
            hi = min(stop, (b + 1) * self.bucket_cells) - b * self.bucket_cells
            parts.append(self._bucket(b)[lo:hi])
        return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, self.n_genes))
