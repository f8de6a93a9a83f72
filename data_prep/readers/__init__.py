"""Input readers, chosen by what a file *is* (its magic bytes), checked against what its name says."""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py

from data_prep.errors import InputError
from data_prep.readers.base import CellChunk, CellReader, InputSpec
from data_prep.readers.csv import CsvReader
from data_prep.readers.h5ad import H5adReader
from data_prep.readers.tenx import TenxH5Reader, TenxMtxReader

__all__ = ["CellChunk", "CellReader", "InputSpec", "detect_kind", "open_reader"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt")


def detect_kind(path: Path) -> str:
    """'h5ad' | '10x-h5' | '10x-mtx' | 'csv'; raises when the content contradicts the extension."""
    path = Path(path)
    if not path.exists():
        msg = f"{path}: no such file or directory."
        raise InputError(msg)
    if path.is_dir():
        return "10x-mtx"
    with open(path, "rb") as f:
        head = f.read(8)
    name = path.name.lower()
    is_hdf5 = head == _HDF5_MAGIC
    if name.endswith((".h5ad", ".h5")):
        if not is_hdf5:
            msg = (
                f"{path}: the name says HDF5 ({path.suffix}) but the content is not HDF5 "
                f"(first bytes {head!r}). Is it truncated, or another format renamed?"
            )
            raise InputError(msg)
        try:
            with h5py.File(path, "r") as f:
                if "matrix" in f or any(isinstance(f[k], h5py.Group) and "barcodes" in f[k] for k in f):
                    return "10x-h5"
                if not {"X", "obs", "var"} <= set(f.keys()) and "layers" not in f:
                    msg = (
                        f"{path}: HDF5 file is neither AnnData (needs X, obs, var) nor a 10x matrix "
                        f"(top-level keys: {sorted(f.keys())[:8]}). Export it with anndata.write_h5ad."
                    )
                    raise InputError(msg)
        except OSError as err:
            msg = f"{path}: cannot be opened as HDF5 ({err}); the file is probably truncated. Copy it again."
            raise InputError(msg) from None
        return "h5ad"
    stripped = name[:-3] if name.endswith(".gz") else name
    if stripped.endswith(_TEXT_SUFFIXES):
        if is_hdf5:
            msg = f"{path}: the name says text ({path.suffix}) but the content is HDF5; rename it .h5ad or .h5."
            raise InputError(msg)
        try:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                sample = f.read(4096)
            sample.decode("utf-8")
        except (gzip.BadGzipFile, UnicodeDecodeError, OSError) as err:
            msg = f"{path}: the name says delimited text but the content is not UTF-8 text ({err})."
            raise InputError(msg) from None
        return "csv"
    msg = (
        f"{path}: unknown input type; allowed: .h5ad, 10x .h5, a 10x directory (matrix.mtx + features + "
        f"barcodes), .csv/.tsv/.txt[.gz]."
    )
    raise InputError(msg)


_READERS = {"h5ad": H5adReader, "10x-h5": TenxH5Reader, "10x-mtx": TenxMtxReader, "csv": CsvReader}


def open_reader(spec: InputSpec) -> CellReader:
    reader = _READERS[detect_kind(spec.path)](spec)
    if reader.n_cells == 0 or len(reader.gene_names) == 0:
        reader.close()
        msg = (
            f"{spec.path}: empty matrix ({reader.n_cells} cells x {len(reader.gene_names)} genes); nothing to shard. "
            "Remove it from the inputs or check that the right file / layer was exported."
        )
        raise InputError(msg)
    return reader
