"""Split files made elsewhere: `read_split` reads a GENELink split folder or one table with a `split` column.

TF and Target are 0-based indices into the dataset's genes or gene symbols; the result is an `EdgeSplit` checked
against the dataset's ground truth (a mismatch usually means a split made for another folder or network).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from finetune.errors import GrnInputError
from finetune.grn.beeline import GrnDataset, describe_value
from finetune.grn.edge_sets import SPLIT_NAMES, EdgeSplit, _codes

_SPLIT_FILE_STEMS = {"train": "Train_set", "val": "Validation_set", "test": "Test_set"}
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def _read_frame(path: Path) -> pd.DataFrame:
    """A CSV or TSV (gzip allowed) with the unnamed row-index column of GENELink's files dropped if present."""
    tab = any(suffix in (".tsv", ".tab", ".txt") for suffix in path.suffixes)
    try:
        frame = pd.read_csv(path, sep="\t" if tab else ",")
        if not tab and frame.shape[1] == 1 and "\t" in str(frame.columns[0]):
            frame = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as err:
        msg = f"{path}: cannot be read as CSV/TSV ({type(err).__name__}: {err}); expected columns TF, Target, Label"
        raise GrnInputError(msg) from err
    if len(frame.columns) and (str(frame.columns[0]).startswith("Unnamed: 0") or frame.columns[0] == ""):
        frame = frame.drop(columns=frame.columns[0])
    return frame


def _columns(frame: pd.DataFrame, path: Path, wanted: tuple[str, ...]) -> dict[str, str]:
    """Canonical column name -> the file's column name, matched case-insensitively."""
    by_lower = {str(column).strip().lower(): str(column) for column in frame.columns}
    missing = [name for name in wanted if name.lower() not in by_lower]
    if missing:
        msg = (
            f"{path}: missing column(s) {', '.join(missing)}; found {list(map(str, frame.columns))}. A split file "
            f"needs columns {', '.join(wanted)} (GENELink layout: ',TF,Target,Label')"
        )
        raise GrnInputError(msg)
    return {name: by_lower[name.lower()] for name in wanted}


def _gene_indices(values: pd.Series, path: Path, column: str, dataset: GrnDataset) -> np.ndarray:
    """Integer indices into dataset.genes (range-checked) or gene symbols (mapped case-insensitively)."""
    numbers = pd.to_numeric(values, errors="coerce")
    as_float = numbers.to_numpy(dtype=float, na_value=np.nan)
    if numbers.notna().all() and bool(np.all(as_float % 1 == 0)):
        indices = as_float.astype(np.int64)
        bad = (indices < 0) | (indices >= dataset.n_genes)
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            msg = (
                f"{path} line {position + 2}: column {column} is {indices[position]} but dataset {dataset.name!r} has "
                f"{dataset.n_genes} genes (allowed 0..{dataset.n_genes - 1}); {int(bad.sum())} row(s) are out of "
                "range — was the split made for another folder or network (row order differs between them)?"
            )
            raise GrnInputError(msg)
        return indices
    lookup = {gene.upper(): index for index, gene in enumerate(dataset.genes)}
    symbols = values.astype(str).str.strip().str.upper()
    mapped = symbols.map(lookup)
    unknown = mapped.isna().to_numpy()
    if unknown.any():
        names = list(dict.fromkeys(values[unknown].astype(str)))
        msg = (
            f"{path}: column {column} names {len(names)} gene(s) not in dataset {dataset.name!r} ({dataset.n_genes} "
            f"genes), e.g. {', '.join(names[:5])}; use symbols of that gene list (matched case-insensitively) or "
            "0-based indices into it"
        )
        raise GrnInputError(msg)
    return mapped.to_numpy(dtype=np.int64)


def _edge_rows(frame: pd.DataFrame, path: Path, dataset: GrnDataset, columns: dict[str, str]) -> np.ndarray:
    """(n, 3) int64 [tf, target, label] from a frame with TF, Target, Label columns."""
    tf = _gene_indices(frame[columns["TF"]], path, columns["TF"], dataset)
    target = _gene_indices(frame[columns["Target"]], path, columns["Target"], dataset)
    raw = frame[columns["Label"]]
    label = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isin(label, (0.0, 1.0))
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        msg = (
            f"{path} line {position + 2}: column {columns['Label']} is {describe_value(raw.iloc[position])}; "
            "allowed are 0 (negative pair) and 1 (known edge)"
        )
        raise GrnInputError(msg)
    return np.column_stack([tf, target, label.astype(np.int64)])


def _no_validation(path: Path) -> GrnInputError:
    msg = (
        f"{path}: no validation set. Model selection (early stopping, hyper-parameters) needs a validation set and "
        "must never look at the test set; scRegNet's shipped splits have only Train/Test and select on test. "
        "Use `--split genelink` to draw a GENELink split with a validation set, or add Validation_set.csv "
        "(or rows with split=val)"
    )
    return GrnInputError(msg)


def _check_against_ground_truth(split: dict[str, np.ndarray], dataset: GrnDataset, path: Path) -> None:
    """Label-1 rows must be known edges and label-0 rows must not be: a mismatch means another folder's row order."""
    known = np.unique(_codes(dataset.positives, dataset.n_genes))
    for name, rows in split.items():
        is_known = np.isin(_codes(rows[:, :2], dataset.n_genes), known)
        for label, wrong, what in ((1, ~is_known, "positives that are not edges"), (0, is_known, "negatives that are")):
            bad = (rows[:, 2] == label) & wrong
            if bad.any():
                tf, target = rows[np.flatnonzero(bad)[0], :2]
                msg = (
                    f"{path}: the {name} set has {int(bad.sum())} {what} in the ground truth of dataset "
                    f"{dataset.name!r}, "
                    f"e.g. [{tf}, {target}] = {dataset.genes[tf]} -> {dataset.genes[target]} with label {label}. The "
                    "split was probably made for another folder or network (the row order differs between Specific, "
                    "Non-Specific and STRING); use the split made for this folder or `--split genelink`"
                )
                raise GrnInputError(msg)


def read_split(path: Path, dataset: GrnDataset) -> EdgeSplit:
    """Read a split made elsewhere for `dataset`.

    `path` is either a directory in GENELink layout (Train_set.csv, Validation_set.csv, Test_set.csv, optionally
    gzipped, columns ',TF,Target,Label'), or one CSV/TSV with columns TF, Target, Label, split (split in
    train/val/test; 'validation' is accepted for val; a file without test rows gives an empty test set). TF and
    Target are 0-based indices into dataset.genes or gene symbols (case-insensitive). The split must have a validation
    set, its positives must be known edges of the dataset and its negatives must not be, and `EdgeSplit.check` must
    pass.
    """
    path = Path(path)
    if not path.exists():
        msg = f"{path}: no such split file or directory; pass a GENELink split folder or a TF,Target,Label,split table"
        raise GrnInputError(msg)
    sets: dict[str, np.ndarray] = {}
    if path.is_dir():
        files: dict[str, Path] = {}
        for name, stem in _SPLIT_FILE_STEMS.items():
            found = [path / f"{stem}{ext}" for ext in (".csv", ".csv.gz") if (path / f"{stem}{ext}").is_file()]
            if found:
                files[name] = found[0]
        if "val" not in files:
            raise _no_validation(path)
        missing = [f"{_SPLIT_FILE_STEMS[name]}.csv[.gz]" for name in SPLIT_NAMES if name not in files]
        if missing:
            msg = (
                f"{path}: missing {', '.join(missing)}; found {sorted(p.name for p in path.iterdir())}. A GENELink "
                "split folder holds Train_set.csv, Validation_set.csv and Test_set.csv (gzip allowed)"
            )
            raise GrnInputError(msg)
        for name, file in files.items():
            frame = _read_frame(file)
            sets[name] = _edge_rows(frame, file, dataset, _columns(frame, file, ("TF", "Target", "Label")))
    else:
        frame = _read_frame(path)
        columns = _columns(frame, path, ("TF", "Target", "Label", "split"))
        labels = frame[columns["split"]].astype(str).str.strip().str.lower()
        canonical = labels.map(_SPLIT_ALIASES)
        unknown = canonical.isna().to_numpy()
        if unknown.any():
            position = int(np.flatnonzero(unknown)[0])
            value = describe_value(frame[columns["split"]].iloc[position])
            msg = (
                f"{path} line {position + 2}: column {columns['split']} is {value}; "
                "allowed are train, val (or validation) and test"
            )
            raise GrnInputError(msg)
        rows = _edge_rows(frame, path, dataset, columns)
        for name in SPLIT_NAMES:
            sets[name] = rows[(canonical == name).to_numpy()]
        if len(sets["val"]) == 0:
            raise _no_validation(path)
        if len(sets["train"]) == 0:
            msg = f"{path}: no rows with split=train; a split needs training edges"
            raise GrnInputError(msg)
    _check_against_ground_truth(sets, dataset, path)
    split = EdgeSplit(train=sets["train"], val=sets["val"], test=sets["test"], protocol=f"file:{path}")
    split.check(dataset.n_genes)
    return split
