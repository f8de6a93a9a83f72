"""Inference mode's inputs: the user's cells (any data_prep input) and a prior network of known TF → target edges.

The graph nodes are the prior's genes that the data expresses, topped up with the most variable other genes up to
`max_genes` (candidate new targets). Node features use log1p of counts per 10k (or the given log1p values).
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from data_prep.readers import InputSpec, open_reader
from finetune.errors import GrnInputError
from finetune.grn.beeline import GrnDataset

HEADER_WORDS = {"tf", "source", "regulator", "gene1", "from"}


def read_prior(path: Path, flag: str = "--prior") -> pd.DataFrame:
    """Known edges as a (tf, target) frame from a TSV/CSV (gz ok): the first two columns, header optional."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError) as err:
        msg = f"{flag} {path}: cannot be read as text ({err}); give a TSV of TF and target columns."
        raise GrnInputError(msg) from None
    sep = "\t" if "\t" in first else ","
    has_header = first.split(sep)[0].strip().lower() in HEADER_WORDS
    try:
        table = pd.read_csv(path, sep=sep, header=0 if has_header else None, dtype=str, usecols=[0, 1], comment=None)
    except (ValueError, pd.errors.ParserError) as err:  # EmptyDataError is a ValueError; so is "Usecols do not match"
        msg = (
            f"{flag} {path}: cannot be read as a table of TF and target columns ({err}); give a TSV/CSV with at "
            "least two columns, one edge per row (e.g. TRRUST or DoRothEA)."
        )
        raise GrnInputError(msg) from None
    table.columns = ["tf", "target"]
    table = table.dropna()
    if table.empty:
        msg = f"{flag} {path}: no edges (expected rows of TF<TAB>target, e.g. TRRUST or DoRothEA)."
        raise GrnInputError(msg)
    return table


def read_cells(path: Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """(cells × genes) CSR, gene names, cell ids, through data_prep's readers (h5ad, 10x, CSV)."""
    with open_reader(InputSpec(Path(path))) as reader:
        chunk = reader.read(0, reader.n_cells)
        genes = [str(g) for g in reader.gene_names]
    return chunk.matrix.tocsr(), genes, [str(c) for c in chunk.cell_ids]


def load_user_dataset(
    expression: Path, prior: Path, *, values: str, max_genes: int, flag: str = "--prior"
) -> GrnDataset:
    matrix, genes, cells = read_cells(expression)
    data = matrix.data
    if not np.isfinite(data).all():
        msg = f"--expression {expression}: holds NaN or infinite values; remove or impute them first."
        raise GrnInputError(msg)
    if values == "counts":
        totals = np.asarray(matrix.sum(axis=1)).ravel()
        scale = sp.diags(1e4 / np.where(totals > 0, totals, 1.0))
        logged = (scale @ matrix).tocsr()
        logged.data = np.log1p(logged.data)
    else:
        logged = matrix
    upper = _symbol_index(genes, expression)
    edges = read_prior(prior, flag)
    self_loops = edges["tf"].str.upper() == edges["target"].str.upper()
    if self_loops.all():
        msg = (
            f"{flag} {prior}: all {len(edges)} edges are self-loops (TF == target, e.g. {edges['tf'].iloc[0]!r}); "
            "a GRN prior needs TF -> other-gene edges. Check the column order (TF first, target second)."
        )
        raise GrnInputError(msg)
    tf_col = _map_symbols(edges["tf"], upper)
    target_col = _map_symbols(edges["target"], upper)
    known = edges[tf_col.notna() & target_col.notna()]
    if known.empty:
        msg = (
            f"{flag} {prior}: none of its {len(edges)} edges has both genes among the {len(genes)} genes of "
            f"{expression} (compared case-insensitively; prior genes e.g. {list(edges['tf'].head(3))}, data genes "
            f"e.g. {genes[:3]}). Use a prior for the same species and gene naming (symbols)."
        )
        raise GrnInputError(msg)
    expressed = np.asarray((logged > 0).sum(axis=0)).ravel() >= max(3, 0.01 * logged.shape[0])
    prior_idx = np.unique(np.concatenate([tf_col[known.index].to_numpy(), target_col[known.index].to_numpy()]))
    prior_idx = prior_idx.astype(np.int64)
    prior_idx = prior_idx[expressed[prior_idx]]
    if len(prior_idx) > max_genes:  # keep the most variable prior genes
        prior_idx = np.sort(prior_idx[np.argsort(-_variance(logged, prior_idx))[:max_genes]])
    rest = np.setdiff1d(np.flatnonzero(expressed), prior_idx)
    extra = rest[np.argsort(-_variance(logged, rest))[: max(0, max_genes - len(prior_idx))]]
    keep = np.sort(np.concatenate([prior_idx, extra]))
    node_of = {int(g): i for i, g in enumerate(keep)}
    pos = {
        (node_of[int(t)], node_of[int(g)])
        for t, g in zip(tf_col[known.index], target_col[known.index], strict=True)
        if int(t) in node_of and int(g) in node_of and t != g
    }
    if not pos:
        msg = (
            f"{flag} {prior}: after keeping genes expressed in >= 1% of the cells of {expression}, no prior edge "
            "is left among them. Use a prior that covers the expressed genes, or more cells."
        )
        raise GrnInputError(msg)
    positives = np.array(sorted(pos), dtype=np.int64)
    node_genes = [genes[int(g)] for g in keep]
    return GrnDataset(
        name=Path(expression).name,
        network="prior",
        genes=node_genes,
        expression=np.asarray(logged[:, keep].T.todense(), dtype=np.float32),  # (G, C)
        cell_ids=cells,
        tf_index=np.unique(positives[:, 0]),
        positives=positives,
        source=Path(expression),
    )


def _symbol_index(genes: list[str], expression: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Upper-cased symbol -> column. An exact duplicate is refused (as load_benchmark does); symbols that differ only
    in case (PBMC 3k has a few) map by their exact spelling only, so a prior edge never picks one of two at random."""
    first: dict[str, int] = {}
    for i, g in enumerate(genes):
        if g in first:
            msg = (
                f"--expression {expression}: gene symbol {g!r} appears more than once (columns {first[g]} and {i}); "
                "a prior edge would be ambiguous. Sum or drop the duplicates first (e.g. aggregate the columns by "
                "symbol, or anndata's var_names_make_unique)."
            )
            raise GrnInputError(msg)
        first[g] = i
    counts = Counter(g.upper() for g in genes)
    return {g.upper(): i for i, g in enumerate(genes) if counts[g.upper()] == 1}, first


def _map_symbols(names: pd.Series, index: tuple[dict[str, int], dict[str, int]]) -> pd.Series:
    """Exact spelling first, then case-insensitive where that is unambiguous; NaN where neither matches."""
    unique_upper, exact = index
    return names.map(exact).fillna(names.str.upper().map(unique_upper))


def _variance(logged: sp.csr_matrix, columns: np.ndarray) -> np.ndarray:
    sub = logged[:, columns]
    mean = np.asarray(sub.mean(axis=0)).ravel()
    return np.asarray(sub.multiply(sub).mean(axis=0)).ravel() - mean**2
