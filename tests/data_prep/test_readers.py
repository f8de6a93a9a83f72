"""Readers return exactly the input rows: every layout of every input kind, any cell range, real files too.

Each reader is fed a small matrix written to tmp_path and compared densely (values, cell ids, gene names,
obs) against the matrix that was written. Ranges are chosen to start and stop inside and across spill buckets
(gene-major inputs are transposed through a disk spill of `spill_cells` cells per bucket).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from conftest import make_counts, require_shared

from data_prep.corpus import Corpus
from data_prep.readers import CellReader, InputSpec, detect_kind, open_reader

N_CELLS, N_GENES = 47, 13
SPILL = 8  # cells per spill bucket: small, so ranges cross buckets
# [start, stop) ranges: whole, first and last cell, inside one bucket, across one and several bucket edges.
RANGES = [(0, N_CELLS), (0, 1), (N_CELLS - 1, N_CELLS), (1, 7), (7, 9), (8, 16), (5, 30), (15, 47), (23, 24)]
CELL_IDS = np.array([f"AAAC{i:04d}-1" for i in range(N_CELLS)], dtype=object)
GENE_IDS = np.array([f"ENSG{i:011d}" for i in range(N_GENES)], dtype=object)
GENE_NAMES = np.array([f"GENE{i}" for i in range(N_GENES)], dtype=object)


def _counts(seed: int = 0) -> sp.csr_matrix:
    """cells x genes int32 counts; a few all-zero cells and genes too (the readers must keep them)."""
    m = make_counts(N_CELLS, N_GENES, density=0.3, seed=seed).tolil()
    m[3, :] = 0
    m[N_CELLS - 1, :] = 0
    m[:, 5] = 0
    out = m.tocsr()
    out.eliminate_zeros()
    return out


def _floats(seed: int = 0) -> np.ndarray:
    """cells x genes dense log-normalized-like floats with many zeros (BEELINE style)."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.gamma(2.0, 1.5, size=(N_CELLS, N_GENES)), 6)
    x[rng.random((N_CELLS, N_GENES)) < 0.5] = 0.0
    x[4, :] = 0.0
    return x


def _check_ranges(
    reader: CellReader, expected: np.ndarray, cell_ids: np.ndarray, obs: dict[str, np.ndarray] | None = None
) -> None:
    """Every range in RANGES reads back exactly `expected[start:stop]` with its cell ids and obs."""
    assert reader.n_cells == expected.shape[0]
    assert len(reader.gene_names) == expected.shape[1]
    for start, stop in RANGES:
        chunk = reader.read(start, stop)
        assert chunk.row_offset == start
        assert chunk.matrix.shape == (stop - start, expected.shape[1]), (start, stop)
        np.testing.assert_array_equal(chunk.matrix.toarray(), expected[start:stop], err_msg=f"rows {start}:{stop}")
        assert [str(c) for c in chunk.cell_ids] == [str(c) for c in cell_ids[start:stop]]
        assert set(chunk.obs) == set(obs or {})
        for name, values in (obs or {}).items():  # categorical / string obs compare as strings
            got = np.asarray(chunk.obs[name]).astype(str).tolist()
            assert got == np.asarray(values[start:stop]).astype(str).tolist(), (name, start, stop)


def _spec(path: Path, tmp_path: Path, **kw) -> InputSpec:
    return InputSpec(path=path, spill_dir=tmp_path / "spill" / path.name, spill_cells=SPILL, **kw)


def _adata(x) -> ad.AnnData:
    rng = np.random.default_rng(1)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], N_CELLS)),
            "n_counts": np.arange(N_CELLS, dtype=np.int64) * 3,
            "batch": [f"b{i % 3}" for i in range(N_CELLS)],
        },
        index=list(CELL_IDS),
    )
    var = pd.DataFrame({"gene_ids": GENE_IDS}, index=list(GENE_NAMES))
    return ad.AnnData(X=x, obs=obs, var=var)


# ---------------------------------------------------------------------------------------------------------
# h5ad


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_h5ad_layouts_read_exact_rows_over_any_range(tmp_path, layout):
    x = _counts()
    adata = _adata({"csr": x, "csc": sp.csc_matrix(x), "dense": x.toarray()}[layout])
    path = tmp_path / f"{layout}.h5ad"
    adata.write_h5ad(path)
    with h5py.File(path) as f:  # the file really holds the layout under test
        enc = f["X"].attrs.get("encoding-type")
        assert enc == {"csr": "csr_matrix", "csc": "csc_matrix", "dense": "array"}[layout]
    assert detect_kind(path) == "h5ad"
    cols = ("cell_type", "n_counts", "batch")
    with open_reader(_spec(path, tmp_path, obs_columns=cols)) as reader:
        assert reader.kind == "h5ad"
        reader.prepare()
        assert list(reader.gene_names) == list(GENE_NAMES)
        assert list(reader.gene_ids) == list(GENE_IDS)
        assert set(cols) <= set(reader.obs_available)
        _check_ranges(reader, x.toarray(), CELL_IDS, {c: adata.obs[c].to_numpy() for c in cols})
        counts = np.asarray(reader.read(10, 20).obs["n_counts"])
        assert np.issubdtype(counts.dtype, np.integer)  # numeric obs stay numeric
        np.testing.assert_array_equal(counts, adata.obs["n_counts"].to_numpy()[10:20])


def test_h5ad_csc_reads_ranges_without_explicit_prepare(tmp_path):
    """A CSC reader opened in a worker reads ranges directly (prepare is idempotent and implied by read)."""
    x = _counts(seed=4)
    path = tmp_path / "csc.h5ad"
    _adata(sp.csc_matrix(x)).write_h5ad(path)
    spec = _spec(path, tmp_path)
    with open_reader(spec) as first:
        first.prepare()
        first.prepare()
    with open_reader(spec) as second:  # reuses the finished spill
        _check_ranges(second, x.toarray(), CELL_IDS)


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_h5ad_named_layer_is_read_instead_of_x(tmp_path, layout):
    x = _counts(seed=1)
    spliced = _counts(seed=2)
    adata = _adata(x)
    stored = {"csr": spliced, "csc": sp.csc_matrix(spliced), "dense": spliced.toarray()}
    adata.layers["spliced"] = stored[layout]
    adata.layers["other"] = _counts(seed=3)
    path = tmp_path / "layers.h5ad"
    adata.write_h5ad(path)
    with open_reader(_spec(path, tmp_path, layer="spliced")) as reader:
        _check_ranges(reader, spliced.toarray(), CELL_IDS)
    with open_reader(_spec(path, tmp_path / "x")) as reader:
        _check_ranges(reader, x.toarray(), CELL_IDS)


def test_h5ad_float_values_and_no_obs_columns(tmp_path):
    x = _floats(seed=2)
    path = tmp_path / "floats.h5ad"
    _adata(sp.csr_matrix(x)).write_h5ad(path)
    with open_reader(_spec(path, tmp_path)) as reader:
        _check_ranges(reader, x, CELL_IDS, {})


def test_h5ad_real_spill_default_bucket_size(tmp_path):
    """The default spill_cells (8192) with a CSC file: one bucket holds every cell."""
    x = _counts(seed=5)
    path = tmp_path / "csc.h5ad"
    _adata(sp.csc_matrix(x)).write_h5ad(path)
    with open_reader(InputSpec(path=path, spill_dir=tmp_path / "sp")) as reader:
        _check_ranges(reader, x.toarray(), CELL_IDS)


# ---------------------------------------------------------------------------------------------------------
# 10x directory (Matrix Market) and 10x HDF5


def _gzip(src: Path) -> Path:
    dst = src.with_name(src.name + ".gz")
    with open(src, "rb") as f, gzip.open(dst, "wb") as g:
        shutil.copyfileobj(f, g)
    src.unlink()
    return dst


def _write_10x_dir(directory: Path, x: sp.csr_matrix, version: int = 3) -> Path:
    directory.mkdir(parents=True)
    scipy.io.mmwrite(directory / "matrix.mtx", sp.coo_matrix(x.T))  # genes x cells
    if version == 3:
        _gzip(directory / "matrix.mtx")
        pd.DataFrame({"id": GENE_IDS, "name": GENE_NAMES, "type": "Gene Expression"}).to_csv(
            directory / "features.tsv.gz", sep="\t", header=False, index=False
        )
        pd.DataFrame({"bc": CELL_IDS}).to_csv(directory / "barcodes.tsv.gz", sep="\t", header=False, index=False)
    else:
        pd.DataFrame({"id": GENE_IDS, "name": GENE_NAMES}).to_csv(
            directory / "genes.tsv", sep="\t", header=False, index=False
        )
        pd.DataFrame({"bc": CELL_IDS}).to_csv(directory / "barcodes.tsv", sep="\t", header=False, index=False)
    return directory


@pytest.mark.parametrize("version", [3, 2])
def test_10x_directory_reads_exact_rows(tmp_path, version):
    x = _counts(seed=6)
    d = _write_10x_dir(tmp_path / f"filtered_v{version}", x, version)
    names = sorted(p.name for p in d.iterdir())
    assert names == (
        ["barcodes.tsv.gz", "features.tsv.gz", "matrix.mtx.gz"]
        if version == 3
        else ["barcodes.tsv", "genes.tsv", "matrix.mtx"]
    )
    assert detect_kind(d) == "10x-mtx"
    with open_reader(_spec(d, tmp_path)) as reader:
        assert reader.kind == "10x-mtx"
        assert list(reader.gene_names) == list(GENE_NAMES)
        assert list(reader.gene_ids) == list(GENE_IDS)
        reader.prepare()
        _check_ranges(reader, x.toarray(), CELL_IDS)


def _write_10x_h5(path: Path, x: sp.csr_matrix) -> Path:
    """Cell Ranger v3 layout: CSC over cells (indptr per cell), shape = [n_genes, n_cells], bytes strings."""
    x = sp.csr_matrix(x)
    x.sort_indices()
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("data", data=x.data.astype(np.int32))
        g.create_dataset("indices", data=x.indices.astype(np.int64))
        g.create_dataset("indptr", data=x.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([x.shape[1], x.shape[0]], dtype=np.int32))
        g.create_dataset("barcodes", data=np.array([c.encode() for c in CELL_IDS]))
        feats = g.create_group("features")
        feats.create_dataset("id", data=np.array([s.encode() for s in GENE_IDS]))
        feats.create_dataset("name", data=np.array([s.encode() for s in GENE_NAMES]))
        feats.create_dataset("feature_type", data=np.array([b"Gene Expression"] * N_GENES))
        feats.create_dataset("genome", data=np.array([b"GRCh38"] * N_GENES))
    return path


def test_10x_h5_reads_exact_rows(tmp_path):
    x = _counts(seed=7)
    path = _write_10x_h5(tmp_path / "filtered_feature_bc_matrix.h5", x)
    assert detect_kind(path) == "10x-h5"
    with open_reader(_spec(path, tmp_path)) as reader:
        assert reader.kind == "10x-h5"
        assert list(reader.gene_names) == list(GENE_NAMES)
        assert list(reader.gene_ids) == list(GENE_IDS)
        reader.prepare()
        _check_ranges(reader, x.toarray(), CELL_IDS)


# ---------------------------------------------------------------------------------------------------------
# delimited text


def _write_text(path: Path, x: np.ndarray, orientation: str) -> Path:
    """BEELINE layout for genes-by-cells: first header field empty, then cell ids; first column gene names."""
    if orientation == "genes-by-cells":
        df = pd.DataFrame(x.T, index=list(GENE_NAMES), columns=list(CELL_IDS))
    else:
        df = pd.DataFrame(x, index=list(CELL_IDS), columns=list(GENE_NAMES))
    name = path.name.lower().removesuffix(".gz")
    sep = "," if name.endswith(".csv") else "\t"
    df.to_csv(path, sep=sep, float_format="%.6f", compression="infer")
    return path


@pytest.mark.parametrize(
    ("name", "orientation"),
    [
        ("expr.csv", "genes-by-cells"),
        ("expr.tsv", "genes-by-cells"),
        ("expr.csv.gz", "genes-by-cells"),
        ("expr.txt", "genes-by-cells"),
        ("expr.tsv.gz", "genes-by-cells"),
        ("expr.csv", "cells-by-genes"),
        ("expr.tsv.gz", "cells-by-genes"),
    ],
)
def test_text_matrices_read_exact_rows(tmp_path, name, orientation):
    x = _floats(seed=8)
    path = _write_text(tmp_path / name, x, orientation)
    if name.endswith(".gz"):
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"  # really gzipped
    with gzip.open(path, "rt") if name.endswith(".gz") else path.open() as f:
        first = f.readline()
    sep = "," if ".csv" in name else "\t"
    assert first.split(sep)[0] == ""  # BEELINE: empty first header field
    assert detect_kind(path) == "csv"
    with open_reader(_spec(path, tmp_path, csv_orientation=orientation)) as reader:
        assert reader.kind == "csv"
        assert list(reader.gene_names) == list(GENE_NAMES)
        reader.prepare()
        got_ids = reader.read(0, N_CELLS).cell_ids
        assert [str(c) for c in got_ids] == list(CELL_IDS)
        _check_ranges(reader, x, CELL_IDS)


def test_csv_integer_counts_read_exactly(tmp_path):
    x = _counts(seed=9).toarray()
    path = tmp_path / "counts.csv"
    pd.DataFrame(x.T, index=list(GENE_NAMES), columns=list(CELL_IDS)).to_csv(path)
    with open_reader(_spec(path, tmp_path)) as reader:
        _check_ranges(reader, x, CELL_IDS)


# ---------------------------------------------------------------------------------------------------------
# detect_kind


def test_detect_kind_for_each_input_kind(tmp_path):
    x = _counts()
    h5ad = tmp_path / "a.h5ad"
    _adata(x).write_h5ad(h5ad)
    assert detect_kind(h5ad) == "h5ad"
    assert detect_kind(_write_10x_h5(tmp_path / "m.h5", x)) == "10x-h5"
    assert detect_kind(_write_10x_dir(tmp_path / "tenx", x)) == "10x-mtx"
    for name in ("a.csv", "a.tsv", "a.txt", "a.csv.gz", "a.TSV"):
        assert detect_kind(_write_text(tmp_path / name, _floats(), "genes-by-cells")) == "csv", name
    # an .h5 that is an AnnData (not 10x) is read as h5ad
    h5 = tmp_path / "anndata.h5"
    shutil.copy(h5ad, h5)
    assert detect_kind(h5) == "h5ad"


# ---------------------------------------------------------------------------------------------------------
# real data (../shared/data)


@pytest.mark.real_data
def test_real_beeline_expression_csv(tmp_path):
    path = require_shared("beeline", "benchmark", "Specific", "mDC", "TFs+500", "BL--ExpressionData.csv.gz")
    assert detect_kind(path) == "csv"
    expected = pd.read_csv(path, index_col=0).T  # cells x genes
    with open_reader(InputSpec(path=path, spill_dir=tmp_path / "spill", spill_cells=100)) as reader:
        assert reader.n_cells == 383
        assert len(reader.gene_names) == 821
        assert list(reader.gene_names) == list(expected.columns)
        reader.prepare()
        chunk = reader.read(0, reader.n_cells)
        assert list(chunk.cell_ids) == list(expected.index)
        assert np.allclose(chunk.matrix.toarray(), expected.to_numpy())
        # a range across spill buckets
        part = reader.read(90, 310)
        assert np.allclose(part.matrix.toarray(), expected.to_numpy()[90:310])


REAL_COUNTS = ["human_pbmc3k_10x.h5ad", "human_retina_cellxgene_1k.h5ad", "mouse_pancreas_endocrinogenesis_739.h5ad"]


@pytest.mark.real_data
@pytest.mark.parametrize("name", REAL_COUNTS)
def test_real_counts_files(tmp_path, name):
    path = require_shared("counts", name)
    adata = ad.read_h5ad(path, backed="r")
    shape = adata.shape
    first = sp.csr_matrix(adata[:50].X).toarray()
    mid = sp.csr_matrix(adata[shape[0] // 2 : shape[0] // 2 + 7].X).toarray()
    obs_names = list(adata.obs_names)
    var_names = list(adata.var_names)
    cell_types = adata.obs["cell_type"].astype(str).to_numpy()
    adata.file.close()
    with open_reader(InputSpec(path=path, obs_columns=("cell_type",), spill_dir=tmp_path / "sp")) as reader:
        assert (reader.n_cells, len(reader.gene_names)) == shape
        assert list(reader.gene_names) == var_names
        chunk = reader.read(0, 50)
        np.testing.assert_array_equal(chunk.matrix.toarray(), first)
        assert list(chunk.cell_ids) == obs_names[:50]
        assert np.asarray(chunk.obs["cell_type"]).astype(str).tolist() == cell_types[:50].tolist()
        m = shape[0] // 2
        np.testing.assert_array_equal(reader.read(m, m + 7).matrix.toarray(), mid)


@pytest.mark.real_data
def test_real_mouse_pancreas_unspliced_layer(tmp_path):
    path = require_shared("counts", "mouse_pancreas_endocrinogenesis_739.h5ad")
    adata = ad.read_h5ad(path)
    expected = sp.csr_matrix(adata.layers["unspliced"]).toarray()
    spec = InputSpec(path=path, layer="unspliced", spill_dir=tmp_path / "sp", spill_cells=100)
    with open_reader(spec) as reader:
        assert (reader.n_cells, len(reader.gene_names)) == adata.shape
        np.testing.assert_array_equal(reader.read(0, adata.n_obs).matrix.toarray(), expected)
        np.testing.assert_array_equal(reader.read(95, 230).matrix.toarray(), expected[95:230])
        assert not np.array_equal(expected, sp.csr_matrix(adata.X).toarray())  # really another matrix


# ---------------------------------------------------------------------------------------------------------
# end to end through the CLI


def _corpus_rows(out: Path) -> dict[str, dict[str, float]]:
    corpus = Corpus(out)
    tokens = corpus.vocab().tokens
    block = corpus.read_cells(0, corpus.n_cells)
    rows = {}
    for i, cid in enumerate(block.cell_ids):
        g, v = block.cell(i)
        rows[str(cid)] = {tokens[int(a)]: float(b) for a, b in zip(g, v, strict=True)}
    return rows


def _input_rows(x: np.ndarray) -> dict[str, dict[str, float]]:
    return {
        str(CELL_IDS[i]): {str(GENE_NAMES[j]): float(x[i, j]) for j in np.flatnonzero(x[i])}
        for i in range(x.shape[0])
        if x[i].any()
    }


def _assert_same_rows(got: dict, want: dict, exact: bool) -> None:
    assert list(got) == list(want)  # same cells, same order (all-zero cells dropped)
    for cid, row in want.items():
        assert set(got[cid]) == set(row), cid
        if exact:
            assert got[cid] == row, cid
        else:
            np.testing.assert_allclose([got[cid][g] for g in row], list(row.values()), rtol=1e-6, err_msg=cid)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["10x-dir", "10x-h5", "csv"])
def test_cli_shard_then_validate_round_trip(tmp_path, cli, kind):
    if kind == "csv":
        x = _floats(seed=10)
        src = _write_text(tmp_path / "BL--ExpressionData.csv", x, "genes-by-cells")
        extra = ["--values", "log1p"]
    else:
        x = _counts(seed=11).toarray()
        src = (
            _write_10x_dir(tmp_path / "tenx", sp.csr_matrix(x))
            if kind == "10x-dir"
            else _write_10x_h5(tmp_path / "m.h5", sp.csr_matrix(x))
        )
        extra = []
    out = tmp_path / "corpus"
    proc = cli("shard", src, "--out", out, "--cells-per-shard", "20", "--cells-per-sample", "7", "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr
    check = cli("validate", out)
    assert check.returncode == 0, check.stderr
    assert "valid" in check.stdout
    assert not (out / ".spill").exists()
    assert not (out / ".progress").exists()
    want = _input_rows(x)
    corpus = Corpus(out)
    assert corpus.n_cells == len(want) == N_CELLS - int((~x.any(axis=1)).sum())
    assert corpus.manifest["totals"]["cells_dropped"]["zero_counts"] == N_CELLS - len(want)
    assert corpus.manifest["value_kind"] == ("log1p" if kind == "csv" else "counts")
    _assert_same_rows(_corpus_rows(out), want, exact=kind != "csv")
    wds = Corpus(out, "webdataset")
    block = wds.read_cells(0, wds.n_cells)
    zblock = corpus.read_cells(0, corpus.n_cells)
    np.testing.assert_array_equal(block.indptr, zblock.indptr)
    np.testing.assert_array_equal(block.gene_ids, zblock.gene_ids)
    np.testing.assert_array_equal(block.values, zblock.values)
