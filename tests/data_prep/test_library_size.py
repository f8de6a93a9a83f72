"""Corpus format 2: each cell's library size (raw total over all of its input genes, in the vocabulary or not) is
recorded at shard time and reaches the models; format-1 corpora still read, with a warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_adata

from data_prep.config import ShardConfig
from data_prep.corpus import Corpus
from data_prep.loader import StreamingCellDataset
from data_prep.sharder import shard
from data_prep.vocab import GeneVocab

ARCHIVE_V1 = Path(__file__).resolve().parents[1] / "data" / "archives" / "v1" / "corpus"


@pytest.fixture(scope="module")
def half_mapped(tmp_path_factory):
    """60 genes in the input, a given vocabulary holding only the first 30: half of each cell's counts unmapped."""
    tmp = tmp_path_factory.mktemp("library")
    adata = make_adata(120, 60, seed=3, density=0.4)
    adata.write_h5ad(tmp / "a.h5ad")
    GeneVocab.from_genes([list(adata.var_names[:30])]).save(tmp / "vocab.json")
    cfg = ShardConfig(inputs=[tmp / "a.h5ad"], out=tmp / "c", vocab=tmp / "vocab.json", cells_per_shard=50, min_genes=1)
    shard(cfg, progress=False)
    totals = dict(zip(adata.obs_names, np.asarray(adata.X.sum(axis=1)).ravel(), strict=True))
    mapped = dict(zip(adata.obs_names, np.asarray(adata.X[:, :30].sum(axis=1)).ravel(), strict=True))
    return tmp / "c", totals, mapped


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_library_size_is_the_raw_total_over_every_input_gene(half_mapped, fmt):
    path, totals, mapped = half_mapped
    assert Corpus(path).manifest["format_version"] >= 2
    batches = list(StreamingCellDataset(path, fmt=fmt, split="all", batch_size=16, block_cells=20))
    assert sum(b.n_cells for b in batches) > 100
    differs = 0
    for batch in batches:
        t = batch.to_torch()
        assert t["library_size"].tolist() == pytest.approx([totals[c] for c in batch.cell_ids])
        sums = np.add.reduceat(batch.values.astype(np.float64), batch.indptr[:-1])
        assert sums == pytest.approx([mapped[c] for c in batch.cell_ids])  # the stored genes are the mapped ones
        differs += int((np.asarray(t["library_size"]) > sums + 0.5).sum())
    assert differs > 100  # the library size is not the sum of the vocabulary genes


def test_models_normalise_by_the_recorded_library_size(half_mapped):
    """scBERT's bins and the Exceiver's log1p values use the batch's library size when it is there: the same genes
    and counts bin lower when the cell's true total is larger."""
    from pretrain.models.scbert import bin_values

    path, _, _ = half_mapped
    t = next(iter(StreamingCellDataset(path, split="all", batch_size=32, block_cells=20))).to_torch()
    with_total = bin_values(t["values"], t["cu_seqlens"], 51, library_size=t["library_size"])
    vocab_only = bin_values(t["values"], t["cu_seqlens"], 51)
    assert bool((with_total <= vocab_only).all()) and bool((with_total < vocab_only).any())
    from pretrain.models.exceiver import Exceiver, ExceiverConfig

    model = Exceiver(ExceiverConfig(vocab_size=40, d_model=16, n_latents=4, n_heads=2, n_self_layers=1, d_ff=32))
    prepared = model.prepare_batch(t, torch.Generator().manual_seed(0))
    torch.testing.assert_close(prepared["library_size"], t["library_size"])


def test_a_format_1_corpus_reads_with_a_warning_and_without_library_sizes():
    from data_prep import manifest

    manifest._warn_no_library_size.cache_clear()  # once per corpus and process: another test may have read it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = next(iter(StreamingCellDataset(ARCHIVE_V1, split="all", batch_size=8)))
    assert any("corpus format 1 records no per-cell library sizes" in str(w.message) for w in caught)
    assert batch.library_size is None and "library_size" not in batch.to_torch()
