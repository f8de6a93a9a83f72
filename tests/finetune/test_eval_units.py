"""scgrn eval's parts on synthetic cells: data loading, masked-value baselines, pooling, transfer, config errors."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import make_counts

from data_prep.vocab import GeneVocab
from finetune.errors import GrnInputError
from finetune.evaluation import data as eval_data
from finetune.evaluation.config import EvalConfig
from finetune.evaluation.masked import GeneBaselines, masked_value_prediction
from finetune.evaluation.pooling import cell_embedding, embed_cells
from finetune.evaluation.transfer import finetune_classifier, linear_probe, split_cells
from pretrain.models.exceiver import Exceiver, ExceiverConfig
from pretrain.models.scbert import ScBert, ScBertConfig

GENES = [f"GENE{i}" for i in range(40)]


def planted_cells(n_per_type: int = 40, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Three cell types, each over-expressing its own block of genes, with varied sequencing depth."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for t in range(3):
        rate = np.full(len(GENES), 0.5)
        rate[t * 10 : (t + 1) * 10] = 6.0
        depth = rng.uniform(0.5, 2.0, size=(n_per_type, 1))
        rows.append(rng.poisson(rate * depth))
        labels += [f"type{t}"] * n_per_type
    counts = sp.csr_matrix(np.vstack(rows).astype(np.float64))
    empty = np.flatnonzero(np.diff(counts.indptr) == 0)
    counts = counts.tolil()
    for i in empty:
        counts[i, 0] = 1
    return counts.tocsr(), np.array(labels, dtype=object)


def write_h5ad(path, counts, labels=None, genes=GENES):
    adata = ad.AnnData(counts.astype(np.float32))
    adata.var_names = list(genes)
    adata.obs_names = [f"c{i}" for i in range(counts.shape[0])]
    if labels is not None:
        adata.obs["cell_type"] = pd.Categorical(labels)
    adata.write_h5ad(path)
    return path


def tiny_models(vocab_size: int):
    torch.manual_seed(0)
    scbert = ScBert(ScBertConfig(vocab_size=vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32, n_bins=5,
                                 max_genes=24, attention="sdpa"))  # fmt: skip
    exceiver = Exceiver(ExceiverConfig(vocab_size=vocab_size, d_model=16, n_latents=4, n_heads=2, n_self_layers=1,
                                       d_ff=32, max_genes=24, objective="poisson", attention="sdpa"))  # fmt: skip
    return scbert.eval(), exceiver.eval()


def test_from_file_maps_genes_case_insensitively_sums_duplicates_and_keeps_missing_labels(tmp_path):
    vocab = GeneVocab.from_genes([GENES])
    counts = sp.csr_matrix(np.array([[1, 2, 0, 5], [0, 0, 3, 0], [0, 0, 0, 0]], dtype=np.float64))
    genes = ["gene1", "GENE1", "GENE2", "NOT_IN_VOCAB"]  # gene1 and GENE1 land on one token
    path = write_h5ad(tmp_path / "a.h5ad", counts, labels=["B", np.nan, "T"], genes=genes)
    cells = eval_data.from_file(path, vocab, label="cell_type", max_cells=None, seed=0)
    assert cells.n_cells == 2  # the all-zero cell has no vocabulary gene and is dropped
    assert "1 cells without a vocabulary gene dropped" in cells.source
    g1, g2 = vocab.index()["GENE1"], vocab.index()["GENE2"]
    assert cells.vocab_counts[0, g1] == 3 and cells.vocab_counts[1, g2] == 3
    assert cells.counts.shape == (2, 4)  # the PCA baseline keeps every input gene
    assert list(cells.labels) == ["B", ""] and list(cells.labelled) == [True, False]


def test_from_file_refuses_normalized_values_and_foreign_genes(tmp_path):
    vocab = GeneVocab.from_genes([GENES])
    logged = sp.csr_matrix(np.array([[0.5, 1.2], [0.0, 2.7]]))
    path = write_h5ad(tmp_path / "log.h5ad", logged, genes=GENES[:2])
    with pytest.raises(GrnInputError, match=r"log\.h5ad: the matrix is not raw counts"):
        eval_data.from_file(path, vocab, label=None, max_cells=None, seed=0)
    path = write_h5ad(tmp_path / "mouse.h5ad", make_counts(5, 10), genes=[f"Xyz{i}" for i in range(10)])
    with pytest.raises(GrnInputError, match=r"only 0 of its 10 genes .* are in the release's vocabulary"):
        eval_data.from_file(path, vocab, label=None, max_cells=None, seed=0)


def test_library_scaled_baseline_is_a_zero_truncated_poisson_mean_of_the_gene_share():
    ref = sp.csr_matrix(np.array([[2.0, 8.0], [0.0, 10.0]]))  # gene 0 holds 2 of 20 counts
    base = GeneBaselines(ref, n_bins=None)
    assert base.share[0] == pytest.approx(0.1)
    x = np.log1p(2.0 / 10.0 * 1e4)  # the only expressed value of gene 0 (cell total 10)
    assert base.per_gene(np.array([0]))[0] == pytest.approx(x)
    library = np.array([50.0])
    mu = 0.1 * 50.0
    expected = sum(k * np.exp(-mu) * mu**k / math.factorial(k) for k in range(1, 80)) / (1 - np.exp(-mu))
    assert base.library_scaled(np.array([0]), library)[0] == pytest.approx(np.log1p(expected / 50.0 * 1e4))


@pytest.mark.parametrize("family", ["scbert", "exceiver"])
def test_masked_value_report_scores_every_predictor_on_the_same_positions(tmp_path, family):
    counts, labels = planted_cells()
    vocab = GeneVocab.from_genes([GENES])
    path = write_h5ad(tmp_path / "p.h5ad", counts, labels)
    cells = eval_data.from_file(path, vocab, label="cell_type", max_cells=None, seed=0)
    model = tiny_models(vocab.size)[0 if family == "scbert" else 1]
    report, points = masked_value_prediction(model, cells.subset(np.arange(60)), cells.subset(np.arange(60, 120)))
    table = report["predictors"]
    assert set(table) == {"model", "per-gene mean", "library-scaled mean"}
    assert report["n_masked"] == len(points["truth"]) > 0
    assert all(len(points[k]) == report["n_masked"] for k in table)
    # the depth-aware baseline must beat the depth-blind one on cells of varied depth
    assert table["library-scaled mean"]["mse"] < table["per-gene mean"]["mse"]
    if family == "scbert":
        assert 0.0 <= table["model"]["bin_accuracy"] <= 1.0 and table["per-gene mean"]["cross_entropy"] > 0
    else:
        assert report["native_metric"] == "poisson_loss" and table["model"]["poisson_loss"] > 0
    again, _ = masked_value_prediction(model, cells.subset(np.arange(60)), cells.subset(np.arange(60, 120)))
    assert again == report  # seeded: the same masks, the same numbers


@pytest.mark.parametrize("family", ["scbert", "exceiver"])
def test_cell_embedding_is_the_mean_of_its_parts_and_differentiable(family):
    vocab = GeneVocab.from_genes([GENES])
    counts, _ = planted_cells(4)
    cells = eval_data.EvalCells(counts, GENES, eval_data._to_vocab(counts, np.arange(40) + 4, vocab.size),
                                np.full(12, "", dtype=object), np.arange(12).astype(str), "x")  # fmt: skip
    model = tiny_models(vocab.size)[0 if family == "scbert" else 1]
    batch = next(cells.model_batches(12))
    emb = cell_embedding(model, batch, torch.Generator().manual_seed(0))
    assert emb.shape == (12, 16) and emb.requires_grad
    emb.sum().backward()
    pooled, genes = embed_cells(model, cells.model_batches(5), vocab_size=vocab.size)
    assert pooled.shape == (12, 16)
    # each cell's expressed genes were counted once per cell (all cells hold <= max_genes genes? then exactly nnz)
    if family == "exceiver":
        assert genes["count"].sum() == counts.nnz
    assert np.isfinite(genes["sum"]).all()


def test_transfer_split_is_stratified_and_finetuning_learns_planted_types(tmp_path):
    counts, labels = planted_cells(30)
    labels[0] = "lonely"  # a class of one cell cannot be stratified: dropped and listed
    train, test, dropped = split_cells(labels, test_fraction=0.3, seed=0)
    assert dropped == ["lonely"] and 0 not in train and 0 not in test
    assert not set(train) & set(test)
    for t in ("type0", "type1", "type2"):
        assert (labels[test] == t).sum() >= 8
    vocab = GeneVocab.from_genes([GENES])
    path = write_h5ad(tmp_path / "p.h5ad", counts, labels)
    cells = eval_data.from_file(path, vocab, label="cell_type", max_cells=None, seed=0)
    scbert, _ = tiny_models(vocab.size)
    result = finetune_classifier(scbert, cells, train, test, epochs=8, lr=3e-3, head_lr=1e-2, batch_cells=8, seed=0)
    assert result["macro_f1"] > 0.8, result  # 3 balanced classes: chance is ~0.33
    assert result["train_loss"][-1] < result["train_loss"][0]
    noise = np.random.default_rng(0).normal(size=(len(labels), 8))
    assert linear_probe(noise, labels.astype(str), train, test, 0)["macro_f1"] < 0.6  # the probe can fail


def test_config_reports_every_problem_at_once(tmp_path):
    with pytest.raises(GrnInputError) as err:
        EvalConfig(release=tmp_path / "nope", out=tmp_path / "o", sections=("masked", "bogus"), folds=1,
                   test_fraction=1.5, map_method="tsne")  # fmt: skip
    text = str(err.value)
    for needle in ("exactly one of --data", "no config.json", "'bogus'", "--folds = 1", "--test-fraction = 1.5",
                   "'tsne'"):  # fmt: skip
        assert needle in text, text
