"""Round-trip exactness: input rows == what the loader and random access give back, in both formats."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import make_adata, require_shared

from data_prep.cell_block import SPLIT_TRAIN
from data_prep.config import ShardConfig
from data_prep.corpus import Corpus
from data_prep.loader import StreamingCellDataset
from data_prep.sharder import shard


def _shard(inputs, out, **kw):
    kw.setdefault("cells_per_shard", 70)
    kw.setdefault("obs_columns", ["cell_type"])
    return shard(ShardConfig(inputs=inputs, out=out, **kw), progress=False)


def _rows_by_cell_id(corpus: Corpus) -> dict[str, dict[str, float]]:
    tokens = corpus.vocab().tokens
    block = corpus.read_cells(0, corpus.n_cells)
    out = {}
    for i, cid in enumerate(block.cell_ids):
        g, v = block.cell(i)
        out[str(cid)] = {tokens[int(a)]: float(b) for a, b in zip(g, v, strict=True)}
    return out


def _expected(adata: ad.AnnData) -> dict[str, dict[str, float]]:
    x = sp.csr_matrix(adata.X)
    out = {}
    for i, cid in enumerate(adata.obs_names):
        row = x[i]
        out[cid] = {adata.var_names[j]: float(v) for j, v in zip(row.indices, row.data, strict=True) if v != 0}
    return out


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_h5ad_layouts_round_trip_exactly(tmp_path, layout):
    adata = make_adata(230, 50, seed=3)
    if layout == "csc":
        adata.X = sp.csc_matrix(adata.X)
    elif layout == "dense":
        adata.X = np.asarray(adata.X.todense())
    path = tmp_path / f"{layout}.h5ad"
    adata.write_h5ad(path)
    _shard([path], tmp_path / "c")
    for fmt in ("zarr", "webdataset"):
        corpus = Corpus(tmp_path / "c", fmt)
        assert corpus.n_cells == 230
        assert _rows_by_cell_id(corpus) == _expected(adata)


def test_loader_streams_every_cell_of_each_split_once_with_identical_content(tmp_path):
    adata = make_adata(400, 40, seed=5)
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    manifest = _shard([path], tmp_path / "c", val_fraction=0.2)
    expected = _expected(adata)
    tokens = Corpus(tmp_path / "c").vocab().tokens
    seen_train = set()
    for fmt in ("zarr", "webdataset"):
        for split in ("train", "val"):
            cells = list(StreamingCellDataset(tmp_path / "c", fmt=fmt, split=split, block_cells=32, seed=7))
            ids = [str(c["cell_id"]) for c in cells]
            assert len(ids) == len(set(ids)) == manifest["totals"][f"n_{split}"]
            for c in cells:
                got = {tokens[int(g)]: float(v) for g, v in zip(c["gene_ids"], c["values"], strict=True)}
                assert got == expected[str(c["cell_id"])]
                assert c["obs"]["cell_type"] == adata.obs.loc[str(c["cell_id"]), "cell_type"]
            if split == "train":
                seen_train |= set(ids) if fmt == "zarr" else set()
    assert 0 < len(seen_train) < 400


def test_zarr_and_webdataset_stream_the_same_sequence(tmp_path):
    adata = make_adata(300, 30, seed=9)
    adata.write_h5ad(tmp_path / "a.h5ad")
    _shard([tmp_path / "a.h5ad"], tmp_path / "c", cells_per_sample=25)
    kw = {"split": "all", "block_cells": 25, "seed": 3, "batch_size": 16}
    z = list(StreamingCellDataset(tmp_path / "c", fmt="zarr", **kw))
    w = list(StreamingCellDataset(tmp_path / "c", fmt="webdataset", **kw))
    assert len(z) == len(w)
    for a, b in zip(z, w, strict=True):
        np.testing.assert_array_equal(a.cell_ids, b.cell_ids)
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.gene_ids, b.gene_ids)
        np.testing.assert_array_equal(a.values, b.values)


def test_random_access_by_global_index(tmp_path):
    adata = make_adata(150, 30, seed=2)
    adata.write_h5ad(tmp_path / "a.h5ad")
    _shard([tmp_path / "a.h5ad"], tmp_path / "c", cells_per_shard=40)
    corpus = Corpus(tmp_path / "c", "zarr")
    expected = _expected(adata)
    tokens = corpus.vocab().tokens
    for i in [0, 39, 40, 41, 149, 77]:
        cell = corpus.cell(i)
        got = {tokens[int(g)]: float(v) for g, v in zip(cell["gene_ids"], cell["values"], strict=True)}
        assert got == expected[cell["cell_id"]]
    with pytest.raises(IndexError, match="out of range"):
        corpus.cell(150)


def test_values_use_the_smallest_dtype_and_split_is_deterministic(tmp_path):
    adata = make_adata(200, 20, seed=1)
    adata.write_h5ad(tmp_path / "a.h5ad")
    m1 = _shard([tmp_path / "a.h5ad"], tmp_path / "c1", val_fraction=0.3, cells_per_shard=200)
    _shard([tmp_path / "a.h5ad"], tmp_path / "c2", val_fraction=0.3, cells_per_shard=33, workers=2)
    assert m1["shards"][0]["value_dtype"] == "uint8"  # counts < 50
    assert m1["shards"][0]["gene_id_dtype"] == "uint16"
    b1 = Corpus(tmp_path / "c1").read_cells(0, 200)
    b2 = Corpus(tmp_path / "c2").read_cells(0, 200)
    np.testing.assert_array_equal(b1.cell_ids, b2.cell_ids)
    np.testing.assert_array_equal(b1.split, b2.split)  # split by cell hash, not by shard layout
    assert 0.15 < (b1.split != SPLIT_TRAIN).mean() < 0.45


def test_manifest_gene_stats_match_numpy(tmp_path):
    adata = make_adata(250, 30, seed=4)
    adata.write_h5ad(tmp_path / "a.h5ad")
    m = _shard([tmp_path / "a.h5ad"], tmp_path / "c")
    tokens = Corpus(tmp_path / "c").vocab().tokens
    x = sp.csc_matrix(adata.X)
    for j, gene in enumerate(adata.var_names):
        col = x[:, j].data
        k = tokens.index(gene)
        assert m["gene_stats"]["n_cells_expressing"][k] == len(col)
        assert m["gene_stats"]["sum"][k] == pytest.approx(col.sum())
        if len(col):
            assert m["gene_stats"]["nonzero_median"][k] == np.sort(col)[(len(col) + 1) // 2 - 1]
    # Geneformer's normaliser: the non-zero median of CP10k values (count / the cell's whole total x 10,000),
    # within the histogram's 4.4 % bins
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    cp10k = sp.csc_matrix(sp.diags(1e4 / totals) @ sp.csr_matrix(adata.X, dtype=np.float64))
    for j, gene in enumerate(adata.var_names):
        col = cp10k[:, j].data
        expected = np.sort(col)[(len(col) + 1) // 2 - 1] if len(col) else 0.0
        assert m["gene_stats"]["nonzero_median_cp10k"][tokens.index(gene)] == pytest.approx(expected, rel=0.045)


@pytest.mark.real_data
def test_real_counts_shard_inspect_validate_through_cli(tmp_path, cli):
    counts = require_shared("counts")
    inputs = sorted(counts.glob("*.h5ad"))
    assert len(inputs) == 3
    out = tmp_path / "C"
    cli("shard", *inputs, "--out", out, "--format", "both", "--obs-columns", "cell_type", "--quiet", check=True)
    proc = cli("inspect", out, "--json", check=True)
    import json

    summary = json.loads(proc.stdout)
    assert summary["n_cells"] == 4439
    assert summary["n_shards"] == 3 and summary["format_version"] == 3
    assert summary["nnz"] > 6_000_000 and summary["n_genes"] > 40_000
    assert cli("validate", out).returncode == 0
    # Row-level check against the source for the PBMC file (the first input, shard 0).
    pbmc = ad.read_h5ad(inputs[0])
    corpus = Corpus(out, "zarr")
    tokens = corpus.vocab().tokens
    block = corpus.read_cells(0, 20)
    for i in range(20):
        g, v = block.cell(i)
        row = pbmc.X[i]
        assert {tokens[int(a)]: float(b) for a, b in zip(g, v, strict=True)} == {
            pbmc.var_names[j]: float(x) for j, x in zip(row.indices, row.data, strict=True)
        }


@pytest.mark.real_data
def test_beeline_expression_csv_shards_and_validates(tmp_path, cli):
    path = require_shared("beeline", "benchmark", "Specific", "mDC", "TFs+500", "BL--ExpressionData.csv.gz")
    out = tmp_path / "B"
    refused = cli("shard", path, "--out", tmp_path / "refused", "--quiet")
    assert refused.returncode == 2 and "--values" in refused.stderr  # log-normalized, not counts
    cli("shard", path, "--out", out, "--values", "log1p", "--quiet", check=True)
    assert cli("validate", out).returncode == 0
    corpus = Corpus(out)
    assert corpus.n_cells == 383 and corpus.value_kind.value == "log1p"


def test_take_random_cells_in_requested_order(tmp_path):
    adata = make_adata(180, 25, seed=8)
    adata.write_h5ad(tmp_path / "a.h5ad")
    _shard([tmp_path / "a.h5ad"], tmp_path / "c", cells_per_shard=50)
    corpus = Corpus(tmp_path / "c", "zarr")
    idx = np.random.default_rng(0).permutation(180)[:77]
    block = corpus.take(idx)
    expected = corpus.read_cells(0, 180)
    np.testing.assert_array_equal(block.cell_ids, expected.cell_ids[idx])
    for i, j in enumerate(idx):
        for a, b in zip(block.cell(i), expected.cell(int(j)), strict=True):
            np.testing.assert_array_equal(a, b)
