"""The cells an evaluation runs on: counts in the input's genes and in the release's vocabulary, plus labels.

Two sources, one shape:

- a user's file (`from_file`: .h5ad, 10x, CSV through data_prep's readers): every gene of the file is kept for the PCA
  baseline, and the genes are mapped to the release's vocabulary with data_prep's rule (case-insensitive symbols;
  several input genes on one token are summed) for the model;
- a corpus split (`from_corpus`: e.g. the validation split of the corpus a release was trained on), whose genes are
  the vocabulary itself.

Labels are strings; missing ones (NaN, None, "", "nan") become "" and count as unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from data_prep.errors import DataPrepError
from data_prep.gene_mapping import MappingOptions, map_genes
from data_prep.loader import StreamingCellDataset
from data_prep.readers import InputSpec, open_reader
from data_prep.vocab import GeneVocab
from finetune.errors import GrnInputError

MISSING_LABELS = {"", "nan", "none", "na", "<na>"}


@dataclass
class EvalCells:
    """Cells × genes counts of one source, and the same cells in vocabulary space for the model."""

    counts: sp.csr_matrix  # (n_cells, n_genes) raw counts, the input's own genes
    genes: list[str]  # (n_genes,)
    vocab_counts: sp.csr_matrix  # (n_cells, vocab_size) counts on the release's tokens (duplicates summed)
    labels: np.ndarray  # (n_cells,) str, "" = unlabelled
    cell_ids: np.ndarray  # (n_cells,) str
    source: str

    @property
    def n_cells(self) -> int:
        return int(self.counts.shape[0])

    @property
    def labelled(self) -> np.ndarray:
        """(n_cells,) bool: the cell has a label."""
        return self.labels != ""

    def subset(self, rows: np.ndarray) -> EvalCells:
        rows = np.asarray(rows)
        return EvalCells(
            self.counts[rows], self.genes, self.vocab_counts[rows], self.labels[rows], self.cell_ids[rows], self.source
        )

    def model_batches(self, batch_cells: int, rows: np.ndarray | None = None):
        """Packed torch batches (`cu_seqlens`, `gene_ids`, `values`) of the cells in `rows` (default: all), in order.

        Cells without any counted vocabulary gene cannot be encoded; `from_file` drops them up front."""
        rows = np.arange(self.n_cells) if rows is None else np.asarray(rows)
        for start in range(0, len(rows), batch_cells):
            block = self.vocab_counts[rows[start : start + batch_cells]]
            yield {
                "cu_seqlens": torch.from_numpy(block.indptr.astype(np.int32)),
                "gene_ids": torch.from_numpy(block.indices.astype(np.int64)),
                "values": torch.from_numpy(block.data.astype(np.float32)),
            }


def _clean_labels(values, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, "", dtype=object)
    out = np.array(["" if v is None else str(v) for v in values], dtype=object)
    out[np.isin(np.char.lower(out.astype(str)), list(MISSING_LABELS))] = ""
    return out


def _to_vocab(counts: sp.csr_matrix, ids: np.ndarray, vocab_size: int) -> sp.csr_matrix:
    """(cells × genes) -> (cells × vocab) by a sparse one-hot projection: unmapped genes vanish, duplicates add."""
    mapped = np.flatnonzero(ids >= 0)
    projection = sp.csr_matrix(
        (np.ones(len(mapped), dtype=np.float64), (mapped, ids[mapped])), shape=(len(ids), vocab_size)
    )
    out = (counts @ projection).tocsr()
    out.sort_indices()
    out.eliminate_zeros()
    return out


def _sample_rows(n: int, max_cells: int | None, seed: int) -> np.ndarray:
    if max_cells is None or n <= max_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))


def from_file(
    path: Path, vocab: GeneVocab, *, label: str | None, max_cells: int | None, seed: int, min_coverage: float = 0.2
) -> EvalCells:
    """Read a user's cells (any data_prep input) and map them onto `vocab`.

    Cells are subsampled to `max_cells` (seeded, order kept). The file must hold raw counts (the models normalise per
    cell themselves); a matrix with negative or non-integer values is refused. Cells with no vocabulary gene are
    dropped (reported in `source`)."""
    path = Path(path)
    obs = (label,) if label else ()
    try:
        with open_reader(InputSpec(path, obs_columns=obs)) as reader:
            genes = [str(g) for g in reader.gene_names]
            chunk = reader.read(0, reader.n_cells)
    except DataPrepError as err:
        msg = f"--data {path}: {err}"
        raise GrnInputError(msg) from None
    counts = chunk.matrix.tocsr().astype(np.float64)
    data = counts.data
    if data.size and (not np.isfinite(data).all() or (data < 0).any() or not np.allclose(data, np.round(data))):
        msg = (
            f"--data {path}: the matrix is not raw counts (found negative, non-integer or non-finite values, e.g. "
            f"{data[~np.isclose(data, np.round(data))][:3].tolist() or data[data < 0][:3].tolist()}). scgrn eval "
            "needs raw UMI/read counts; point it at the counts layer (e.g. adata.layers['counts'] saved as X)."
        )
        raise GrnInputError(msg)
    options = MappingOptions(case_insensitive=True, duplicate_genes="sum", min_mapped_fraction=0.0)
    ids = map_genes(genes, vocab, options, str(path)).column_to_id
    coverage = float((ids >= 0).mean())
    if coverage < min_coverage:
        missing = [g for g, i in zip(genes, ids, strict=True) if i < 0][:5]
        msg = (
            f"--data {path}: only {int((ids >= 0).sum())} of its {len(genes)} genes ({coverage:.1%}) are in the "
            f"release's vocabulary (at least {min_coverage:.0%} needed); unmapped e.g. {missing}. Use a release "
            "trained on the same species and gene naming (symbols vs Ensembl ids)."
        )
        raise GrnInputError(msg)
    labels = _clean_labels(chunk.obs.get(label) if label else None, counts.shape[0])
    vocab_counts = _to_vocab(counts, ids, vocab.size)
    keep = np.flatnonzero(np.diff(vocab_counts.indptr) > 0)
    rows = keep[_sample_rows(len(keep), max_cells, seed)]
    dropped = counts.shape[0] - len(keep)
    source = f"{path}" + (f" ({dropped} cells without a vocabulary gene dropped)" if dropped else "")
    return EvalCells(
        counts[rows], genes, vocab_counts[rows], labels[rows], np.asarray(chunk.cell_ids, dtype=object)[rows], source
    )


def from_corpus(
    corpus: Path, split: str, *, label: str | None, max_cells: int | None, seed: int, vocab_size: int
) -> EvalCells:
    """Cells of one split of a corpus ("train" / "val" / "all"), in storage order, up to `max_cells` (seeded)."""
    corpus = Path(corpus)
    columns = [label] if label else []
    data = StreamingCellDataset(corpus, split=split, shuffle=False, batch_size=512, obs_columns=columns)
    indptr, indices, values, ids, labels = [0], [], [], [], []
    for batch in data:
        offsets = batch.indptr[1:].astype(np.int64) + indptr[-1]
        indptr.extend(offsets.tolist())
        indices.append(batch.gene_ids.astype(np.int64))
        values.append(batch.values.astype(np.float64))
        ids.extend(str(c) for c in batch.cell_ids)
        labels.extend(batch.obs[label].tolist() if label else [None] * batch.n_cells)
    if not ids:
        msg = f"{corpus}: its {split!r} split holds no cells; nothing to evaluate."
        raise GrnInputError(msg)
    n = len(ids)
    matrix = sp.csr_matrix((np.concatenate(values), np.concatenate(indices), np.asarray(indptr)), shape=(n, vocab_size))
    matrix.sort_indices()
    rows = _sample_rows(n, max_cells, seed)
    matrix = matrix[rows]
    tokens = GeneVocab.load(corpus / "vocab.json").tokens
    return EvalCells(
        matrix,
        list(tokens),
        matrix,
        _clean_labels(labels, n)[rows],
        np.asarray(ids, dtype=object)[rows],
        f"{corpus} ({split} split)",
    )
