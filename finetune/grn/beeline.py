"""Read GENELink-processed BEELINE benchmark folders into a `GrnDataset`.

BEELINE (Pratapa et al., Nat. Methods 2020) ships processed scRNA-seq matrices and ground-truth networks for seven
cell types; GENELink (Chen & Liu, Brief. Bioinform. 2022) re-packed them as one folder per
(network, cell type, size)::

    <network>/<cell>/TFs+<N>/
        TF.csv                       ,TF,index       every TF in the gene set (index = expression row)
        Target.csv                   ,Gene,index     every gene (index = expression row)
        Label.csv                    ,TF,Target      ground-truth edges as index pairs (the positives)
        BL--ExpressionData.csv[.gz]  genes x cells, BEELINE's log-normalized values, gene symbol in column 0
        BL--network.csv              the same edges by symbol (not needed here)

The indices refer to the row order of the expression file *in the same folder*; that order differs between network
types, so a split or label file never travels from one network's folder to another's. The shared snapshot lacks 20
expression matrices (see `beeline/PROVENANCE.md`); `discover` reports those folders as skipped instead of failing.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from finetune.errors import GrnInputError

logger = logging.getLogger(__name__)

NETWORKS = ("Specific", "Non-Specific", "STRING", "Lofgof")
PRIOR_NETWORK = "prior"
TABLE_FILES = ("TF.csv", "Target.csv", "Label.csv")
EXPRESSION_FILES = ("BL--ExpressionData.csv", "BL--ExpressionData.csv.gz")
# GENELink's Network_Statistic table holds the densities rounded to 3 decimals; see `network_density`.
GENELINK_DENSITY_DECIMALS = 3


def network_density(positives: np.ndarray, *, genelink_rounding: bool = True) -> float:
    """Ground-truth network density as BEELINE defines it and GENELink uses it for test negatives.

    density = |edges| / (|TFs| x |nodes| - |TFs|)

    where TFs are the genes with at least one outgoing edge and nodes are all genes that appear in an edge (TF or
    target); the `- |TFs|` removes the self-loops from the candidate pairs. This is BEELINE's random-predictor
    precision for a ground truth (Pratapa et al. 2020). GENELink (Chen & Liu 2022, `utils.Network_Statistic`) keeps a
    hard-coded table of these values rounded to 3 decimals; with `genelink_rounding` the value is rounded the same way,
    which reproduces all 44 entries of that table and, through `floor(n_test_pos / density) - n_test_pos` test
    negatives, the exact test-set sizes of the published bridge-grn splits (`tests/finetune/test_beeline.py`).

    Shapes: positives (n_edges, 2) int [tf, target], without self-loops.
    """
    pairs = np.asarray(positives).reshape(-1, 2)
    n_edges = len(pairs)
    n_tfs = len(np.unique(pairs[:, 0]))
    n_nodes = len(np.unique(pairs))
    candidates = n_tfs * n_nodes - n_tfs
    if n_edges == 0 or candidates <= 0:
        msg = (
            f"network density is undefined for {n_edges} edges over {n_tfs} TFs and {n_nodes} genes "
            "(it needs at least one edge between two different genes); give a ground truth or prior with edges"
        )
        raise GrnInputError(msg)
    density = n_edges / candidates
    if genelink_rounding:
        density = round(density, GENELINK_DENSITY_DECIMALS)
    return density


@dataclass
class GrnDataset:
    """One GRN task: expression of a gene set, the TFs among them and the known edges.

    Every edge array indexes `genes` (position i = expression row i). `__post_init__` checks the shapes and ranges and
    normalises `tf_index` (sorted unique int64) and `positives` (unique rows, sorted, int64, self-loops dropped:
    BEELINE scores exclude them and GENELink removes them from a TF's positives).

    Shapes: expression (n_genes, n_cells) float32; tf_index (n_tfs,) int64; positives (n_edges, 2) int64 [tf, target].
    """

    name: str  # "Specific/hHEP/TFs+500" (network/cell/size) or a user-given name
    network: str  # one of NETWORKS, or "prior" for user data
    genes: list[str]  # gene symbols; position i is the index every edge array uses
    expression: np.ndarray  # (n_genes, n_cells) float32, BEELINE's log-normalized values, row i = genes[i]
    cell_ids: list[str]
    tf_index: np.ndarray  # (n_tfs,) int64 sorted unique indices into genes (TF.csv)
    positives: np.ndarray  # (n_edges, 2) int64 [tf, target], unique rows, sorted (Label.csv)
    source: Path | None = None

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}" + (f" ({self.source})" if self.source else "")
        allowed = (*NETWORKS, PRIOR_NETWORK)
        if self.network not in allowed:
            msg = f"{where}: network {self.network!r} is not one of {', '.join(allowed)}; set network to one of them"
            raise GrnInputError(msg)
        self.genes = [str(g) for g in self.genes]
        self.cell_ids = [str(c) for c in self.cell_ids]
        self.expression = np.asarray(self.expression, dtype=np.float32)
        expected = (len(self.genes), len(self.cell_ids))
        if self.expression.shape != expected:
            msg = (
                f"{where}: expression has shape {self.expression.shape} but there are {expected[0]} genes and "
                f"{expected[1]} cells; the matrix must be genes x cells with row i = genes[i]"
            )
            raise GrnInputError(msg)
        n_genes = len(self.genes)
        tf_index = np.unique(np.asarray(self.tf_index, dtype=np.int64).ravel())
        if len(tf_index) and (tf_index[0] < 0 or tf_index[-1] >= n_genes):
            bad = tf_index[(tf_index < 0) | (tf_index >= n_genes)]
            msg = f"{where}: TF indices {bad[:5].tolist()} fall outside the gene list (0..{n_genes - 1})"
            raise GrnInputError(msg)
        self.tf_index = tf_index
        positives = np.asarray(self.positives, dtype=np.int64)
        if positives.size == 0:
            positives = positives.reshape(0, 2)
        if positives.ndim != 2 or positives.shape[1] != 2:
            msg = f"{where}: positives must have shape (n_edges, 2) [tf, target], got {positives.shape}"
            raise GrnInputError(msg)
        out_of_range = (positives < 0) | (positives >= n_genes)
        if out_of_range.any():
            row = int(np.flatnonzero(out_of_range.any(axis=1))[0])
            msg = (
                f"{where}: positive edge {positives[row].tolist()} indexes past the gene list "
                f"(0..{n_genes - 1}); every edge must index genes"
            )
            raise GrnInputError(msg)
        positives = np.unique(positives, axis=0)  # sorts rows lexicographically
        self_loop = positives[:, 0] == positives[:, 1]
        if self_loop.any():
            logger.warning("%s: dropped %d self-loop edge(s) from the positives", where, int(self_loop.sum()))
            positives = positives[~self_loop]
        self.positives = positives

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_cells(self) -> int:
        return len(self.cell_ids)

    @property
    def n_tfs(self) -> int:
        return len(self.tf_index)

    @property
    def n_edges(self) -> int:
        return len(self.positives)

    @property
    def density(self) -> float:
        """Density GENELink uses for test negatives (`network_density`).

        For the benchmark networks this is the 3-decimal value of GENELink's `Network_Statistic` table; for a user
        prior the exact value (rounding a sparse prior to 3 decimals could give 0).
        """
        return network_density(self.positives, genelink_rounding=self.network in NETWORKS)

    @property
    def density_exact(self) -> float:
        """`network_density` without GENELink's 3-decimal rounding."""
        return network_density(self.positives, genelink_rounding=False)


# ---------------------------------------------------------------------------------------------------------------
# discovery


def _expression_file(folder: Path) -> Path | None:
    for name in EXPRESSION_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _provenance_hint(folder: Path) -> str:
    for parent in folder.parents:
        if (parent / "PROVENANCE.md").is_file():
            return f"not in this snapshot; see {parent / 'PROVENANCE.md'}"
    return "not in this snapshot; see PROVENANCE.md"


def discover(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Benchmark folders under `root`: (complete folders, sorted), [(incomplete folder, why it is skipped)].

    `root` may be the `beeline` directory, its `benchmark/` subdirectory, one network directory or a single
    `<network>/<cell>/TFs+N` folder. A folder counts when it holds any of TF.csv, Target.csv, Label.csv or
    BL--ExpressionData.csv[.gz]; it is complete when it holds all of them.
    """
    root = Path(root)
    if not root.is_dir():
        msg = f"{root}: not a directory; pass the beeline directory, its benchmark/ folder or a <network>/<cell>/TFs+N"
        raise GrnInputError(msg)
    base = root / "benchmark" if (root / "benchmark").is_dir() else root
    folders = sorted({path.parent for name in (*TABLE_FILES, *EXPRESSION_FILES) for path in base.rglob(name)})
    if not folders:
        msg = (
            f"{root}: no benchmark folder found (looked for folders holding {', '.join(TABLE_FILES)} and "
            f"{EXPRESSION_FILES[0]}[.gz], laid out as <network>/<cell>/TFs+N as in GENELink's 'Benchmark Dataset'); "
            "pass the beeline directory, its benchmark/ folder, a network folder or one TFs+N folder"
        )
        raise GrnInputError(msg)
    available: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for folder in folders:
        missing = [name for name in TABLE_FILES if not (folder / name).is_file()]
        reasons = [f"no {', '.join(missing)}"] if missing else []
        if _expression_file(folder) is None:
            reasons.append(f"no {EXPRESSION_FILES[1]} ({_provenance_hint(folder)})")
        if reasons:
            skipped.append((folder, "; ".join(reasons)))
        else:
            available.append(folder)
    return available, skipped


# ---------------------------------------------------------------------------------------------------------------
# loading


def describe_value(value: object) -> str:
    """repr() of a cell value as a person wrote it: 'abc', 5, 1.5, nan (not np.int64(5))."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _line(position: int) -> str:
    """Human line number of data row `position` (0-based) in a CSV with one header line."""
    return f"line {position + 2}"


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A GENELink CSV (`,A,B`: an optional unnamed row-index column, then `columns` in that order)."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        msg = f"{path}: cannot be read as CSV ({err}); expected a header ',{','.join(columns)}' then one row per entry"
        raise GrnInputError(msg) from err
    if len(frame.columns) and (str(frame.columns[0]).startswith("Unnamed: 0") or frame.columns[0] == ""):
        frame = frame.drop(columns=frame.columns[0])
    if list(frame.columns[: len(columns)]) != list(columns):
        msg = (
            f"{path}: malformed columns {list(map(str, frame.columns))}; expected ',{','.join(columns)}' "
            "(an optional unnamed row-index column, then those columns in that order), as in GENELink's benchmark files"
        )
        raise GrnInputError(msg)
    return frame


def _integer_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna().to_numpy() | (values.to_numpy(dtype=float, na_value=np.nan) % 1 != 0)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        msg = (
            f"{path} {_line(position)}: column {column} holds {describe_value(frame[column].iloc[position])}; "
            "allowed are whole-number indices into the expression rows (0-based)"
        )
        raise GrnInputError(msg)
    return values.to_numpy(dtype=np.int64)


def _check_range(indices: np.ndarray, n_genes: int, path: Path, column: str, what: str) -> None:
    bad = (indices < 0) | (indices >= n_genes)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        msg = (
            f"{path} {_line(position)}: {what} — column {column} is {int(indices[position])} but the expression "
            f"matrix has {n_genes} genes (allowed 0..{n_genes - 1}); {int(bad.sum())} row(s) are out of range. "
            "The file probably belongs to another folder or network (row order differs between them)"
        )
        raise GrnInputError(msg)


def _read_expression(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError, zlib.error) as err:
        msg = (
            f"{path}: cannot be read as a genes x cells CSV ({type(err).__name__}: {err}); expected a header of cell "
            "ids, then one row per gene with its symbol in column 0 (gzip allowed)"
        )
        raise GrnInputError(msg) from err
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        msg = f"{path}: expression matrix is empty ({frame.shape[0]} genes x {frame.shape[1]} cells); it needs both"
        raise GrnInputError(msg)
    non_numeric = [column for column, dtype in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if non_numeric:
        column = non_numeric[0]
        parsed = pd.to_numeric(frame[column], errors="coerce")
        unparsed = np.flatnonzero(parsed.isna().to_numpy() & frame[column].notna().to_numpy())
        position = int(unparsed[0]) if len(unparsed) else 0
        value = describe_value(frame[column].iloc[position])
        msg = (
            f"{path}: gene {frame.index[position]!r}, cell {column!r} holds {value}; "
            f"expression values must be numbers ({len(non_numeric)} cell column(s) are not numeric)"
        )
        raise GrnInputError(msg)
    return frame


def _infer_network(folder: Path) -> tuple[str | None, str]:
    """(network, name) from a <network>/<cell>/TFs+N path; GENELink's '<network> Dataset' spelling is accepted."""
    parts = folder.resolve().parts
    if len(parts) >= 3:
        network = parts[-3].removesuffix(" Dataset")
        if network in NETWORKS:
            return network, f"{network}/{parts[-2]}/{parts[-1]}"
    return None, folder.name


def load_benchmark(folder: Path, *, network: str | None = None, name: str | None = None) -> GrnDataset:
    """Load one GENELink/BEELINE folder, checking every file against the others.

    `network` defaults to the folder's place in the layout (`<network>/<cell>/TFs+N`); pass it for a folder kept
    elsewhere. Every problem raises `GrnInputError` naming the file, the row or gene and what to do.
    """
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"{folder}: not a directory; pass a <network>/<cell>/TFs+N folder holding {', '.join(TABLE_FILES)}"
        raise GrnInputError(msg)
    expression_path = _expression_file(folder)
    missing = [name for name in TABLE_FILES if not (folder / name).is_file()]
    if expression_path is None:
        missing.append(f"{EXPRESSION_FILES[0]}[.gz] ({_provenance_hint(folder)})")
    if missing:
        found = sorted(p.name for p in folder.iterdir())
        msg = (
            f"{folder}: missing required file(s) {', '.join(missing)}; found {found or 'nothing'}. A benchmark folder "
            f"needs {', '.join(TABLE_FILES)} and {EXPRESSION_FILES[0]}[.gz]; use discover() to list complete folders"
        )
        raise GrnInputError(msg)
    inferred, default_name = _infer_network(folder)
    network = network or inferred
    if network is None:
        msg = (
            f"{folder}: cannot tell the network type from the path (expected .../<network>/<cell>/TFs+N with network "
            f"one of {', '.join(NETWORKS)}); pass network= ({', '.join(NETWORKS)} or {PRIOR_NETWORK!r})"
        )
        raise GrnInputError(msg)

    # Expression: genes x cells; the gene symbol in column 0 defines row order for every index below.
    frame = _read_expression(expression_path)
    genes = [str(g) for g in frame.index]
    upper = pd.Index([g.upper() for g in genes])
    duplicated = upper.duplicated(keep=False)
    if duplicated.any():
        first = int(np.flatnonzero(duplicated)[0])
        rows = np.flatnonzero(upper == upper[first]) + 2
        msg = (
            f"{expression_path}: gene {genes[first]!r} appears more than once (lines {rows.tolist()}, compared "
            f"case-insensitively; {int(duplicated.sum())} rows are duplicates); every gene needs exactly one row"
        )
        raise GrnInputError(msg)
    expression = frame.to_numpy(dtype=np.float32)  # (n_genes, n_cells)
    finite = np.isfinite(expression)
    if not finite.all():
        gene_row, cell_column = (int(i[0]) for i in np.nonzero(~finite))
        msg = (
            f"{expression_path}: gene {genes[gene_row]!r}, cell {frame.columns[cell_column]!r} is "
            f"{expression[gene_row, cell_column]} ({int((~finite).sum())} non-finite values in all); expression "
            "must be finite — impute or drop those genes/cells before building the benchmark folder"
        )
        raise GrnInputError(msg)
    n_genes = len(genes)

    # Target.csv: every gene with its expression row; its `index` must be a permutation of 0..n_genes-1.
    target_path = folder / "Target.csv"
    targets = _read_table(target_path, ("Gene", "index"))
    target_index = _integer_column(targets, "index", target_path)
    if len(targets) != n_genes or not np.array_equal(np.sort(target_index), np.arange(n_genes)):
        msg = (
            f"{target_path}: column index must be a permutation of 0..{n_genes - 1} (one row per expression row of "
            f"{expression_path.name}); got {len(targets)} rows with indices {np.unique(target_index)[:5].tolist()}... "
            "Rebuild Target.csv from the expression file of this folder"
        )
        raise GrnInputError(msg)
    target_genes = targets["Gene"].astype(str).str.upper().to_numpy()
    mismatch = target_genes != upper.to_numpy()[target_index]
    if mismatch.any():
        position = int(np.flatnonzero(mismatch)[0])
        row = int(target_index[position])
        msg = (
            f"{target_path} {_line(position)}: gene {targets['Gene'].iloc[position]!r} has index {row} but expression "
            f"row {row} of {expression_path.name} is {genes[row]!r} ({int(mismatch.sum())} rows disagree, compared "
            "case-insensitively); Target.csv and the expression file must come from the same folder"
        )
        raise GrnInputError(msg)

    # TF.csv: the TFs of the gene set (indices checked for range and name).
    tf_path = folder / "TF.csv"
    tfs = _read_table(tf_path, ("TF", "index"))
    tf_index = _integer_column(tfs, "index", tf_path)
    _check_range(tf_index, n_genes, tf_path, "index", "TF index past the gene list")
    tf_mismatch = tfs["TF"].astype(str).str.upper().to_numpy() != upper.to_numpy()[tf_index]
    if tf_mismatch.any():
        position = int(np.flatnonzero(tf_mismatch)[0])
        row = int(tf_index[position])
        msg = (
            f"{tf_path} {_line(position)}: TF {tfs['TF'].iloc[position]!r} has index {row} but expression row {row} "
            f"is {genes[row]!r}; TF.csv must index the expression rows of this folder"
        )
        raise GrnInputError(msg)

    # Label.csv: the ground-truth edges.
    label_path = folder / "Label.csv"
    labels = _read_table(label_path, ("TF", "Target"))
    if labels.empty:
        msg = f"{label_path}: no edges (empty label set); the ground truth needs at least one TF -> target row"
        raise GrnInputError(msg)
    label_tf = _integer_column(labels, "TF", label_path)
    label_target = _integer_column(labels, "Target", label_path)
    _check_range(label_tf, n_genes, label_path, "TF", "labels indexing past the gene list")
    _check_range(label_target, n_genes, label_path, "Target", "labels indexing past the gene list")
    positives = np.stack([label_tf, label_target], axis=1)  # (n_edges, 2)
    n_duplicates = len(positives) - len(np.unique(positives, axis=0))
    if n_duplicates:
        logger.warning("%s: %d duplicate edge row(s) counted once", label_path, n_duplicates)

    return GrnDataset(
        name=name or default_name,
        network=network,
        genes=genes,
        expression=expression,
        cell_ids=[str(c) for c in frame.columns],
        tf_index=tf_index,
        positives=positives,
        source=folder,
    )
