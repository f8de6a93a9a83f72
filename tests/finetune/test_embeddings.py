"""Gene embeddings from a release: pooling parity, unmapped genes kept (never dropped), coverage threshold."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from conftest import make_counts

from data_prep.vocab import GeneVocab
from finetune.errors import GrnInputError
from finetune.grn.embeddings import GeneEmbeddings, _pool, extract_gene_embeddings
from finetune.grn.release_inputs import open_release_inputs
from pretrain.models.scbert import ScBert, ScBertConfig
from pretrain.release import write_release


def tiny_release(tmp_path, genes):
    vocab = GeneVocab.from_genes([genes])
    torch.manual_seed(0)
    cfg = ScBertConfig(vocab_size=vocab.size, d_model=16, n_layers=1, n_heads=2, d_ff=32, n_bins=5, attention="sdpa")
    model = ScBert(cfg)
    manifest = {"value_kind": "counts", "totals": {"n_cells": 0}, "vocab": {"size": vocab.size, "sha256": vocab.sha256}}
    return write_release(tmp_path / "release", "scbert", cfg, model.state_dict(), vocab, manifest, {"steps": 0}), model


def test_mean_pooling_equals_states_averaged_by_hand_and_unmapped_genes_are_kept(tmp_path):
    known = [f"GENE{i}" for i in range(12)]
    release, model = tiny_release(tmp_path, known)
    genes = [*known[:10], "UNKNOWN1", "UNKNOWN2"]  # two genes the vocab lacks
    counts = make_counts(40, len(genes), density=0.5, seed=3)
    adata = ad.AnnData(counts.astype(np.float32))
    adata.var_names = genes
    adata.obs_names = [f"c{i}" for i in range(40)]
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    emb = extract_gene_embeddings(release, genes, path, value_kind="counts", work_dir=tmp_path, min_coverage=0.5)
    report = emb.report()
    assert report["n_genes"] == 12 and report["n_unmapped"] == 2 and report["unmapped"] == ["UNKNOWN1", "UNKNOWN2"]
    assert emb.mean.shape == emb.attention.shape == emb.static.shape == (12, 16)
    assert not emb.mapped[10:].any() and (emb.static[10:] == 0).all() and (emb.mean[10:] == 0).all()

    # by hand: each cell alone through gene_states, mapped genes only (the corpus drops the unmapped ones)
    vocab = GeneVocab.from_genes([known])
    ids = np.array([vocab.index()[g] for g in known[:10]])
    dense = counts.toarray()[:, :10]
    sums, seen = np.zeros((10, 16)), np.zeros(10)
    model.eval()
    for row in dense:
        expressed = np.flatnonzero(row)
        if len(expressed) == 0:
            continue
        with torch.no_grad():
            states = model.gene_states(
                torch.from_numpy(ids[expressed]),
                torch.from_numpy(row[expressed].astype(np.float32)),
                torch.tensor([0, len(expressed)], dtype=torch.int32),
            ).numpy()
        sums[expressed] += states
        seen[expressed] += 1
    np.testing.assert_allclose(emb.mean[:10], sums / seen[:, None], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(emb.cells_expressing[:10], seen)
    # attention pooling is a convex combination of the same states: close to the mean, not equal to it
    assert np.abs(emb.attention[:10] - emb.mean[:10]).max() < np.abs(emb.mean[:10]).max()

    again = tmp_path / "emb.safetensors"
    emb.save(again)
    loaded = GeneEmbeddings.load(again)
    assert loaded.genes == genes and np.array_equal(loaded.attention, emb.attention)

    # the attention pass reads the first pass's states back; with no memory for them it runs the model again, alike
    opened = open_release_inputs(release, genes, path, value_kind="counts", work_dir=tmp_path, min_coverage=0.5)
    with opened as rel, torch.no_grad():
        kept = _pool(rel.model("pretrained"), rel, 8, 0, progress=False)
        recomputed = _pool(rel.model("pretrained"), rel, 8, 0, progress=False, keep_bytes=0)
    for a, b in zip(kept, recomputed, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(kept[1], emb.attention, rtol=1e-5, atol=1e-6)  # batch size does not matter


def test_a_release_covering_too_few_genes_is_refused(tmp_path):
    release, _ = tiny_release(tmp_path, ["A", "B"])
    genes = ["A", "X1", "X2", "X3"]
    adata = ad.AnnData(make_counts(10, 4, density=0.6).astype(np.float32))
    adata.var_names = genes
    adata.write_h5ad(tmp_path / "c.h5ad")
    with pytest.raises(GrnInputError, match=r"covers only 1 of the 4 genes .*25\.0%.*--min-vocab-coverage"):
        extract_gene_embeddings(release, genes, tmp_path / "c.h5ad", value_kind="counts", min_coverage=0.5)
