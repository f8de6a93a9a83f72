"""What every input reader gives the sharder: row (cell) ranges of a cells x genes matrix, plus cell ids and obs.

Readers are opened from a picklable `InputSpec` inside each worker process, and read any `[start, stop)`
range of cells, so shards can be written in parallel and redone one by one on `--resume`.
"""

from __future__ import annotations

import csv
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from data_prep.errors import DataPrepError, InputError

# What a damaged or mis-typed text input makes the parsing libraries raise (pandas' ParserError / EmptyDataError and
# UnicodeDecodeError are ValueErrors; BadGzipFile is an OSError).
_PARSE_ERRORS = (ValueError, IndexError, KeyError, TypeError, OSError, EOFError, csv.Error, zlib.error)


def check_cell_ids(cell_ids, source: object, where: str) -> None:
    """Cell ids key the split and the corpus: a blank one, or one repeated inside an input, is refused."""
    ids = np.asarray(cell_ids, dtype=object)
    blank = [i for i, c in enumerate(ids) if not str(c).strip()]
    if blank:
        msg = (
            f"{source}: {where}: {len(blank)} blank cell id(s), first at cell {blank[0]} (0-based); every cell needs "
            "an id. Fill them in or remove those cells."
        )
        raise InputError(msg)
    counts = pd.Series(ids).value_counts()
    dups = sorted(map(str, counts[counts > 1].index))
    if dups:
        msg = (
            f"{source}: {where}: {len(dups)} duplicated cell id(s) {dups[:5]} ({int(counts.max())} copies of the "
            "most repeated); cell ids must be unique within an input. Rename or remove the repeated cells (e.g. "
            "AnnData.obs_names_make_unique, or a per-sample suffix on 10x barcodes)."
        )
        raise InputError(msg)


@contextmanager
def input_errors(path: Path, what: str) -> Iterator[None]:
    """Turn a library exception raised while parsing `path` into one InputError naming the file.

    Found by fuzzing (tests/test_fuzz_inputs.py): a mutated mtx/tsv/csv otherwise surfaced as a bare traceback
    from deep inside pandas or codecs. scgrn's own errors pass through unchanged.
    """
    try:
        yield
    except DataPrepError:
        raise
    except _PARSE_ERRORS as err:
        msg = (
            f"{path}: cannot be read as {what} ({type(err).__name__}: {str(err)[:200]}). "
            "Check that the file is complete and in the expected format, then export or copy it again."
        )
        raise InputError(msg) from None


@dataclass(frozen=True)
class InputSpec:
    """How to open one input. Everything here is recorded in the manifest."""

    path: Path
    layer: str | None = None  # h5ad: read counts from layers[NAME] instead of X
    obs_columns: tuple[str, ...] = ()  # obs columns to keep (must exist, or the run stops)
    csv_orientation: str = "genes-by-cells"  # BEELINE's BL--ExpressionData.csv layout
    spill_dir: Path | None = None  # where gene-major inputs are transposed to cell-major buckets
    spill_cells: int = 8192  # cells per spill bucket (bounds memory while reading such inputs)


@dataclass
class CellChunk:
    """Cells `[row_offset, row_offset + n)` of one input, columns in the reader's `gene_names` order."""

    matrix: sp.csr_matrix  # (n_cells, n_input_genes), float64 or integer values
    cell_ids: np.ndarray  # (n_cells,) str
    obs: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (n_cells,)
    row_offset: int = 0


class CellReader(ABC):
    """A cells x genes matrix readable by row range in bounded memory."""

    kind: str = "?"

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.path = Path(spec.path)

    n_cells: int
    gene_names: np.ndarray  # (n_genes,) str, symbols (or whatever names the input carries)
    gene_ids: np.ndarray | None = None  # (n_genes,) str, e.g. Ensembl ids when the input has them
    obs_available: tuple[str, ...] = ()

    def prepare(self) -> None:  # noqa: B027 - optional hook, most readers need nothing
        """One-time work before parallel reads (e.g. transposing a gene-major input). Idempotent."""

    @abstractmethod
    def read(self, start: int, stop: int) -> CellChunk:
        """Cells `[start, stop)` with the requested obs columns."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __enter__(self) -> CellReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_obs_columns(self) -> None:
        from data_prep.errors import InputError

        missing = [c for c in self.spec.obs_columns if c not in self.obs_available]
        if missing:
            allowed = ", ".join(self.obs_available) or "(none)"
            msg = (
                f"{self.path}: obs column(s) {missing} not found; this input has: {allowed}. "
                "Drop them from --obs-columns or pick existing ones."
            )
            raise InputError(msg)
