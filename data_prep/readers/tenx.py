"""10x Genomics inputs: a Cell Ranger output directory (Matrix Market) and a `filtered_feature_bc_matrix.h5`.

Directory: `matrix.mtx[.gz]` (genes x cells coordinates), `features.tsv[.gz]` (v3: id, name, type) or
`genes.tsv[.gz]` (v2: id, name), `barcodes.tsv[.gz]`. The coordinates are streamed in chunks into cell buckets
(`TransposeSpill`), since Matrix Market has no cell-major index.
HDF5: the `matrix` group (v3) or a `<genome>` group (v2) is CSC over cells, i.e. each cell's genes are
contiguous, so cell ranges are read directly.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from data_prep.errors import InputError
from data_prep.readers.base import CellChunk, CellReader, InputSpec, check_cell_ids, input_errors
from data_prep.readers.spill import TransposeSpill

GENE_EXPRESSION = "Gene Expression"


def _first_existing(directory: Path, names: list[str]) -> Path | None:
    for name in names:
        if (directory / name).exists():
            return directory / name
    return None


def _read_tsv(path: Path) -> pd.DataFrame:
    # keep_default_na=False: a gene called "NA" or an empty barcode stays what it is (not NaN, not "nan")
    return pd.read_csv(path, sep="\t", header=None, dtype=str, compression="infer", keep_default_na=False)


class TenxMtxReader(CellReader):
    kind = "10x-mtx"

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        d = self.path
        self._mtx = _first_existing(d, ["matrix.mtx.gz", "matrix.mtx"])
        features = _first_existing(d, ["features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"])
        barcodes = _first_existing(d, ["barcodes.tsv.gz", "barcodes.tsv"])
        missing = [
            n
            for n, p in [
                ("matrix.mtx[.gz]", self._mtx),
                ("features.tsv[.gz] or genes.tsv", features),
                ("barcodes.tsv[.gz]", barcodes),
            ]
            if p is None
        ]
        if missing:
            msg = f"{d}: not a 10x matrix directory, missing {', '.join(missing)}."
            raise InputError(msg)
        with input_errors(d, "a 10x matrix directory (matrix.mtx + features.tsv + barcodes.tsv)"):
            feat = _read_tsv(features)
            self._n_features = len(feat)
            # v3 feature tables also list antibody / CRISPR features; only gene expression is kept.
            self._keep = (feat[2] == GENE_EXPRESSION).to_numpy() if feat.shape[1] > 2 else np.ones(len(feat), bool)
            feat = feat[self._keep]
            self.gene_ids = feat[0].to_numpy(dtype=object)
            self.gene_names = (feat[1] if feat.shape[1] > 1 else feat[0]).to_numpy(dtype=object)
            self._cell_ids = _read_tsv(barcodes)[0].to_numpy(dtype=object)
            check_cell_ids(self._cell_ids, barcodes, "barcodes")
            self._header_lines, n_rows, n_cols, self._nnz = self._read_header()
        if n_rows != self._n_features or n_cols != len(self._cell_ids):
            msg = (
                f"{self._mtx}: matrix is {n_rows} x {n_cols} but {features.name} lists {self._n_features} "
                f"genes and {barcodes.name} {len(self._cell_ids)} barcodes; the three files must match."
            )
            raise InputError(msg)
        self.n_cells = n_cols
        self.obs_available = ()
        self.check_obs_columns()
        self._spill: TransposeSpill | None = None

    def _read_header(self) -> tuple[int, int, int, int]:
        opener = gzip.open if self._mtx.suffix == ".gz" else open
        with opener(self._mtx, "rt") as f:
            first = f.readline()
            words = first.split()
            if words[:3] != ["%%MatrixMarket", "matrix", "coordinate"]:
                msg = f"{self._mtx}: not a Matrix Market coordinate file (first line {first.strip()[:60]!r})."
                raise InputError(msg)
            if len(words) != 5 or words[3].lower() not in ("integer", "real") or words[4].lower() != "general":
                msg = (
                    f"{self._mtx}: Matrix Market header {first.strip()[:80]!r} is not supported; a 10x matrix is "
                    "'%%MatrixMarket matrix coordinate integer general' (or 'real general'). Re-export it."
                )
                raise InputError(msg)
            n = 1
            line = f.readline()
            while line.startswith("%"):
                n += 1
                line = f.readline()
            try:
                rows, cols, nnz = (int(x) for x in line.split())
            except ValueError:
                msg = f"{self._mtx}: line {n + 1} should be 'rows cols entries', got {line.strip()[:60]!r}."
                raise InputError(msg) from None
        return n + 1, rows, cols, nnz

    def _triplets(self):
        reader = pd.read_csv(
            self._mtx,
            sep=r"\s+",
            header=None,
            skiprows=self._header_lines,
            chunksize=2_000_000,
            compression="infer",
            dtype={0: np.int64, 1: np.int64, 2: np.float64},
        )
        seen = 0
        for chunk in reader:
            arr = chunk.to_numpy()
            if arr.ndim != 2 or arr.shape[1] != 3:
                msg = f"{self._mtx}: entries must be 'row col value' (3 fields per line), got {arr.shape[1]} fields."
                raise InputError(msg)
            short = np.flatnonzero(np.isnan(arr).any(axis=1))  # a line with fewer than 3 fields (pandas fills NaN)
            if short.size:
                line = self._header_lines + seen + int(short[0]) + 1
                msg = f"{self._mtx}: line {line} has fewer than 3 fields ('row col value'); the file is cut or damaged."
                raise InputError(msg)
            seen += len(arr)
            genes, cells = arr[:, 0].astype(np.int64) - 1, arr[:, 1].astype(np.int64) - 1
            bad = (genes < 0) | (genes >= self._n_features) | (cells < 0) | (cells >= self.n_cells)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                msg = (
                    f"{self._mtx}: entry ({genes[k] + 1}, {cells[k] + 1}) is outside the declared "
                    f"{self._n_features} x {self.n_cells} matrix (1-based); the file is damaged. Copy it again."
                )
                raise InputError(msg)
            yield cells, genes, arr[:, 2]
        if seen != self._nnz:
            msg = (
                f"{self._mtx}: the header declares {self._nnz} entries but the file holds {seen}; it is truncated or "
                "damaged. Copy it again."
            )
            raise InputError(msg)

    def prepare(self) -> None:
        if self.spec.spill_dir is None:
            msg = f"{self.path}: a Matrix Market input needs a spill directory (internal error)."
            raise InputError(msg)
        self._spill = TransposeSpill(self.spec.spill_dir, self.n_cells, self._n_features, self.spec.spill_cells)
        with input_errors(self._mtx, "Matrix Market entries ('row col value' per line)"):
            self._spill.build(self._triplets())

    def read(self, start: int, stop: int) -> CellChunk:
        if self._spill is None:
            self.prepare()
        return CellChunk(self._spill.read(start, stop)[:, self._keep], self._cell_ids[start:stop], {}, start)


class TenxH5Reader(CellReader):
    kind = "10x-h5"

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        self._file = h5py.File(self.path, "r")
        self._keep: np.ndarray | None = None
        if "matrix" in self._file:
            g = self._file["matrix"]
            feats = g["features"]
            self.gene_ids = np.asarray([x.decode() for x in feats["id"][:]], dtype=object)
            self.gene_names = np.asarray([x.decode() for x in feats["name"][:]], dtype=object)
            if "feature_type" in feats:
                self._keep = np.asarray([x.decode() == GENE_EXPRESSION for x in feats["feature_type"][:]])
        else:
            genomes = [k for k in self._file if isinstance(self._file[k], h5py.Group) and "barcodes" in self._file[k]]
            if not genomes:
                msg = f"{self.path}: HDF5 file is neither an .h5ad nor a 10x matrix (no 'matrix' or genome group)."
                raise InputError(msg)
            g = self._file[genomes[0]]
            self.gene_ids = np.asarray([x.decode() for x in g["genes"][:]], dtype=object)
            self.gene_names = np.asarray([x.decode() for x in g["gene_names"][:]], dtype=object)
        self._group = g
        self._cell_ids = np.asarray([x.decode() for x in g["barcodes"][:]], dtype=object)
        check_cell_ids(self._cell_ids, self.path, "barcodes")
        n_genes, self.n_cells = (int(x) for x in g["shape"][:])
        if n_genes != len(self.gene_names):
            msg = f"{self.path}: shape says {n_genes} genes but the feature table has {len(self.gene_names)}."
            raise InputError(msg)
        self._n_features = n_genes
        if self._keep is None:
            self._keep = np.ones(n_genes, dtype=bool)
        self.gene_ids, self.gene_names = self.gene_ids[self._keep], self.gene_names[self._keep]
        self.obs_available = ()
        self.check_obs_columns()

    def read(self, start: int, stop: int) -> CellChunk:
        g = self._group
        indptr = g["indptr"][start : stop + 1].astype(np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        m = sp.csr_matrix((g["data"][lo:hi], g["indices"][lo:hi], indptr - lo), shape=(stop - start, self._n_features))
        return CellChunk(m[:, self._keep] if not self._keep.all() else m, self._cell_ids[start:stop], {}, start)

    def close(self) -> None:
        self._file.close()
