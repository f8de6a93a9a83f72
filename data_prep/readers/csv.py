"""Delimited text matrices: BEELINE's `BL--ExpressionData.csv` (genes x cells, first column = gene) by default,
or cells x genes with `--csv-orientation cells-by-genes`. `.csv`, `.tsv`, `.txt`, optionally gzipped.

Text has no random access, so one streaming pass (row chunks) spills the non-zeros into cell buckets; cell
ranges are then read from the buckets. The header is checked first so a malformed file fails before any work.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import InputError
from data_prep.readers.base import CellChunk, CellReader, InputSpec, check_cell_ids, input_errors
from data_prep.readers.spill import TransposeSpill

ORIENTATIONS = ("genes-by-cells", "cells-by-genes")


def _delimiter(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return "," if suffixes and suffixes[-1] == ".csv" else "\t"


def _open_text(path: Path):
    return gzip.open(path, "rt", newline="") if path.suffix.lower() == ".gz" else open(path, newline="")


class CsvReader(CellReader):
    kind = "csv"

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        if spec.csv_orientation not in ORIENTATIONS:
            msg = f"--csv-orientation {spec.csv_orientation!r} is not allowed; use one of {ORIENTATIONS}."
            raise InputError(msg)
        self._sep = _delimiter(self.path)
        with input_errors(self.path, "delimited text (a header of ids, then a name and numbers per row)"):
            header, self._row_names = self._scan()
        columns = np.asarray(header[1:], dtype=object)
        rows = np.asarray(self._row_names, dtype=object)
        if spec.csv_orientation == "genes-by-cells":
            self.gene_names, self._cell_ids = rows, columns
        else:
            self.gene_names, self._cell_ids = columns, rows
        self.n_cells = len(self._cell_ids)
        self.obs_available = ()
        self.check_obs_columns()
        self._spill: TransposeSpill | None = None

    def _scan(self) -> tuple[list[str], list[str]]:
        """Read the header and the row names (first column) only; check the header is well formed."""
        try:
            with _open_text(self.path) as f:
                reader = csv.reader(f, delimiter=self._sep)
                header = next(reader, None)
                if header is None:
                    msg = f"{self.path}: the file is empty; expected a header row of cell ids."
                    raise InputError(msg)
                names = []
                for line_no, row in enumerate(reader, start=2):
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue  # blank line (e.g. a trailing newline); the data pass skips it too
                    if len(row) != len(header):
                        msg = (
                            f"{self.path}: line {line_no} has {len(row)} fields but the header has {len(header)}; "
                            "every row must hold a name plus one value per header column."
                        )
                        raise InputError(msg)
                    names.append(row[0])
        except (UnicodeDecodeError, gzip.BadGzipFile, csv.Error) as err:
            msg = f"{self.path}: not a readable delimited text file ({err}). Check the file type and encoding."
            raise InputError(msg) from None
        if len(header) < 2:
            msg = (
                f"{self.path}: malformed header {header!r}: expected an empty or name first field, then one "
                f"column id per field, separated by {self._sep!r}."
            )
            raise InputError(msg)
        labels = header[1:]
        blank = [i + 2 for i, h in enumerate(labels) if not h.strip()]
        if blank:
            msg = f"{self.path}: malformed header: column(s) {blank[:5]} have no name; every column needs an id."
            raise InputError(msg)
        # Cell ids must be unique (they key the split and the corpus); duplicate *genes* are left to
        # --duplicate-genes, as for every other input kind.
        if self.spec.csv_orientation == "genes-by-cells":
            where, cell_ids = "header (cell ids)", labels
        else:
            where, cell_ids = "first column (cell ids)", names
        check_cell_ids(cell_ids, self.path, f"malformed {where}")
        if not names:
            msg = f"{self.path}: empty matrix: a header but no data rows. Remove it from the inputs or re-export it."
            raise InputError(msg)
        return header, names

    def _triplets(self):
        genes_by_cells = self.spec.csv_orientation == "genes-by-cells"
        row0 = 0
        reader = pd.read_csv(self.path, sep=self._sep, index_col=0, chunksize=2000, compression="infer")
        for chunk in reader:
            values = chunk.to_numpy()
            if values.dtype == object or not np.issubdtype(values.dtype, np.number):
                numeric = chunk.apply(pd.to_numeric, errors="coerce")
                bad = numeric.isna().to_numpy() & chunk.notna().to_numpy()
                r, c = np.argwhere(bad)[0]
                msg = (
                    f"{self.path}: line {row0 + r + 2}, column {chunk.columns[c]!r}: value {chunk.iat[r, c]!r} "
                    "is not a number. Fix or remove that entry."
                )
                raise InputError(msg)
            values = values.astype(np.float64)
            r, c = np.nonzero(values)
            # NaN is non-zero, so it reaches validation with its row and gene named there.
            rows = (r + row0).astype(np.int64)
            if genes_by_cells:
                yield c.astype(np.int64), rows, values[r, c]
            else:
                yield rows, c.astype(np.int64), values[r, c]
            row0 += len(chunk)

    def prepare(self) -> None:
        if self.spec.spill_dir is None:
            msg = f"{self.path}: a text input needs a spill directory (internal error)."
            raise InputError(msg)
        self._spill = TransposeSpill(self.spec.spill_dir, self.n_cells, len(self.gene_names), self.spec.spill_cells)
        with input_errors(self.path, "a delimited matrix (a header of ids, then a name and numbers per row)"):
            self._spill.build(self._triplets())

    def read(self, start: int, stop: int) -> CellChunk:
        if self._spill is None:
            self.prepare()
        return CellChunk(self._spill.read(start, stop), self._cell_ids[start:stop], {}, start)
