"""AnnData `.h5ad` reader: X or a layer, stored CSR, CSC or dense, read by row range with h5py.

CSR rows and dense rows are sliced straight from the HDF5 datasets (no whole-matrix load). CSC stores genes
contiguously, so it is transposed once into cell buckets (`TransposeSpill`) in gene-column chunks.
obs columns are read once per column (O(n_cells) small arrays), never the matrix.
"""

from __future__ import annotations

import h5py
import numpy as np
import scipy.sparse as sp

from data_prep.errors import InputError
from data_prep.readers.base import CellChunk, CellReader, InputSpec, check_cell_ids
from data_prep.readers.spill import TransposeSpill

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem


def _as_str(values: np.ndarray) -> np.ndarray:
    return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


class H5adReader(CellReader):
    kind = "h5ad"

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        self._file = h5py.File(self.path, "r")
        f = self._file
        missing = [k for k in ("obs", "var") if k not in f]
        if missing:
            msg = (
                f"{self.path}: not an AnnData file (no {' or '.join(missing)} group). "
                "Export it with anndata.write_h5ad."
            )
            raise InputError(msg)
        if "X" not in f and not spec.layer:
            msg = f"{self.path}: this .h5ad has no X matrix; pick a layer with --layer NAME."
            raise InputError(msg)
        if spec.layer:
            layers = list(f["layers"].keys()) if "layers" in f else []
            if spec.layer not in layers:
                msg = (
                    f"{self.path}: --layer {spec.layer!r} not found; layers present: {layers or '(none)'}. "
                    "Omit --layer to read X."
                )
                raise InputError(msg)
            self._matrix = f["layers"][spec.layer]
        else:
            self._matrix = f["X"]
        var = f["var"]
        self.gene_names = _as_str(np.asarray(read_elem(var[var.attrs.get("_index", "_index")])))
        self.gene_ids = None
        for key in ("gene_ids", "ensembl_id", "gene_id", "feature_id"):
            if key in var:
                self.gene_ids = _as_str(np.asarray(read_elem(var[key])))
                break
        obs_index_key = f["obs"].attrs.get("_index", "_index") if "obs" in f else "_index"
        self._cell_ids = _as_str(np.asarray(read_elem(f["obs"][obs_index_key]))) if "obs" in f else None
        if self._cell_ids is not None:
            check_cell_ids(self._cell_ids, self.path, "obs names")
        self.obs_available = tuple(k for k in (f["obs"].keys() if "obs" in f else []) if k != obs_index_key)
        m = self._matrix
        if isinstance(m, h5py.Group):
            enc = m.attrs.get("encoding-type", "")
            if enc not in ("csr_matrix", "csc_matrix"):
                msg = f"{self.path}: matrix encoding {enc!r} is not supported; allowed: csr_matrix, csc_matrix, dense."
                raise InputError(msg)
            self._encoding = enc
            shape = tuple(int(s) for s in m.attrs["shape"])
        else:
            self._encoding = "dense"
            shape = tuple(m.shape)
        self.n_cells, n_genes = shape
        if n_genes != len(self.gene_names):
            msg = f"{self.path}: matrix has {n_genes} columns but var has {len(self.gene_names)} genes."
            raise InputError(msg)
        self._obs_cache: dict[str, np.ndarray] = {}
        self._spill: TransposeSpill | None = None
        self.check_obs_columns()

    # -- CSC: transpose once -------------------------------------------------------------------------
    def prepare(self) -> None:
        if self._encoding != "csc_matrix":
            return
        if self.spec.spill_dir is None:
            msg = f"{self.path}: a CSC matrix needs a spill directory to be read by cells (internal error)."
            raise InputError(msg)
        self._spill = TransposeSpill(self.spec.spill_dir, self.n_cells, len(self.gene_names), self.spec.spill_cells)
        self._spill.build(self._csc_triplets())

    def _csc_triplets(self):
        m = self._matrix
        indptr = m["indptr"][:]
        n_genes = len(indptr) - 1
        target = 4_000_000  # stored values per read: bounds memory of the transpose
        g = 0
        while g < n_genes:
            g_end = int(np.searchsorted(indptr, indptr[g] + target, side="right")) - 1
            g_end = min(max(g_end, g + 1), n_genes)
            lo, hi = int(indptr[g]), int(indptr[g_end])
            cells = m["indices"][lo:hi].astype(np.int64)
            values = m["data"][lo:hi].astype(np.float64)
            genes = np.repeat(np.arange(g, g_end, dtype=np.int64), np.diff(indptr[g : g_end + 1]))
            yield cells, genes, values
            g = g_end

    # -- reading -------------------------------------------------------------------------------------
    def _rows(self, start: int, stop: int) -> sp.csr_matrix:
        m = self._matrix
        if self._encoding == "csr_matrix":
            indptr = m["indptr"][start : stop + 1].astype(np.int64)
            lo, hi = int(indptr[0]), int(indptr[-1])
            return sp.csr_matrix(
                (m["data"][lo:hi], m["indices"][lo:hi], indptr - lo),
                shape=(stop - start, len(self.gene_names)),
            )
        if self._encoding == "dense":
            return sp.csr_matrix(np.asarray(m[start:stop]))
        if self._spill is None:
            self.prepare()
        return self._spill.read(start, stop)

    def _obs(self, column: str) -> np.ndarray:
        if column not in self._obs_cache:
            self._obs_cache[column] = np.asarray(read_elem(self._file["obs"][column]))
        return self._obs_cache[column]

    def read(self, start: int, stop: int) -> CellChunk:
        cell_ids = (
            self._cell_ids[start:stop]
            if self._cell_ids is not None
            else np.asarray([str(i) for i in range(start, stop)], dtype=object)
        )
        obs = {c: self._obs(c)[start:stop] for c in self.spec.obs_columns}
        return CellChunk(self._rows(start, stop), cell_ids, obs, start)

    def close(self) -> None:
        self._file.close()
