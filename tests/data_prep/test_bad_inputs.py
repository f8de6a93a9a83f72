"""Bad input: each gets ONE clear error naming the file (row / gene / field) and saying what to do.

And nothing already written is lost or corrupted: an output directory that held something keeps every byte,
and a failed fresh run leaves no `manifest.json` (the manifest is written last). Through the CLI an error is
`scgrn <cmd>: error: <message>` on stderr with exit code 2 and no traceback; `scgrn validate` exits 1.

Several tests here pinned bugs found while writing them (fixed since); they stay as regression tests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import make_adata

from data_prep.config import ShardConfig
from data_prep.corpus import Corpus
from data_prep.errors import CorpusError, InputError
from data_prep.gene_mapping import MappingOptions
from data_prep.manifest import MANIFEST_NAME
from data_prep.readers import InputSpec, detect_kind, open_reader
from data_prep.sharder import shard
from data_prep.wds_shard import WdsShard

N_CELLS, N_GENES = 120, 30


# ---------------------------------------------------------------------------------------------------------
# helpers


def _shard(inputs, out: Path, **kw) -> dict:
    kw.setdefault("cells_per_shard", 50)
    mapping = kw.pop("mapping", None)
    if mapping is not None:
        kw["mapping"] = MappingOptions(**mapping)
    return shard(ShardConfig(inputs=[Path(p) for p in inputs], out=out, **kw), progress=False)


def _tree(directory: Path) -> dict[str, str | None]:
    """Every file's sha256 and every directory (None) under `directory`: equal trees = byte-identical."""
    if not directory.exists():
        return {}
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in sorted(directory.rglob("*"))
    }


def _assert_cli_error(proc, command: str, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr
    assert "Traceback" not in err, err
    assert err.startswith(f"scgrn {command}: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


def _assert_no_manifest(out: Path) -> None:
    assert not (out / MANIFEST_NAME).exists(), sorted(_tree(out))


def _write(adata: ad.AnnData, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # non-unique names are the point of some tests
        adata.write_h5ad(path)
    return path


def _with_value(tmp_path: Path, row: int, gene: int, value: float, name: str) -> Path:
    """A valid count matrix whose (row, gene) entry is replaced by `value` (stored explicitly)."""
    adata = make_adata(N_CELLS, N_GENES)
    x = adata.X.astype(np.float64).tolil()
    x[row, gene] = value
    adata.X = x.tocsr()
    return _write(adata, tmp_path / name)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(input h5ad, finished corpus dir) built once; tests copy it before changing anything."""
    base = tmp_path_factory.mktemp("finished")
    src = _write(make_adata(N_CELLS, N_GENES), base / "a.h5ad")
    _shard([src], base / "corpus", cells_per_sample=16)
    return src, base / "corpus"


def _copy_corpus(finished, tmp_path: Path) -> Path:
    out = tmp_path / "corpus"
    shutil.copytree(finished[1], out)
    return out


# ---------------------------------------------------------------------------------------------------------
# 1-4: values that are not counts


def test_non_integer_count_names_file_row_gene_and_suggests_values(tmp_path, cli):
    src = _with_value(tmp_path, 7, 3, 1.5, "frac.h5ad")
    out = tmp_path / "out"
    proc = cli("shard", src, "--out", out, "--cells-per-shard", "50", "--quiet")
    err = _assert_cli_error(proc, "shard", str(src), "cell row 7", "'GENE3'", "1.5", "--values log1p")
    assert err.count("error:") == 1
    _assert_no_manifest(out)


@pytest.mark.parametrize(
    ("row", "gene", "value", "problem"),
    [(12, 5, -3.0, "not a non-negative integer"), (55, 8, np.nan, "NaN"), (99, 29, np.inf, "infinite")],
    ids=["negative", "nan", "inf"],
)
def test_negative_nan_inf_name_file_row_and_gene(tmp_path, row, gene, value, problem):
    src = _with_value(tmp_path, row, gene, value, "bad.h5ad")
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        _shard([src], out)
    msg = str(info.value)
    assert str(src) in msg
    assert f"cell row {row}," in msg
    assert f"'GENE{gene}'" in msg
    assert problem in msg
    assert "--values" in msg
    _assert_no_manifest(out)
    # earlier shards may exist, but nothing claims to be a finished corpus
    with pytest.raises(CorpusError, match="--resume"):
        Corpus(out)


def test_negative_value_in_float_csv_with_log1p_names_line_and_gene(tmp_path):
    path = tmp_path / "expr.csv"
    path.write_text(",c1,c2,c3\nG1,0.5,0,1.25\nG2,0,-0.75,2\n")
    with pytest.raises(InputError) as info:
        _shard([path], tmp_path / "out", values="log1p")
    msg = str(info.value)
    assert str(path) in msg
    assert "cell row 1," in msg  # cell c2 is row 1 of the cells x genes matrix
    assert "'G2'" in msg
    assert "--values normalized" in msg


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_value_hint_does_not_suggest_another_value_kind(tmp_path, value):
    src = _with_value(tmp_path, 55, 8, value, "bad.h5ad")
    with pytest.raises(InputError) as info:
        _shard([src], tmp_path / "out")
    msg = str(info.value)
    assert "--values log1p" not in msg
    assert "impute" in msg.lower() or "remove" in msg.lower()


# ---------------------------------------------------------------------------------------------------------
# 5: content contradicts the extension


def test_text_file_named_h5ad_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "x.h5ad"
    path.write_text("gene,cell1\nA,1\n")
    with pytest.raises(InputError) as info:
        detect_kind(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "not HDF5" in msg
    assert "renamed" in msg or "rename" in msg
    out = tmp_path / "out"
    with pytest.raises(InputError, match="not HDF5"):
        _shard([path], out)
    assert not out.exists()


def test_hdf5_file_named_csv_is_refused_through_cli(tmp_path, cli):
    path = tmp_path / "x.csv"
    _write(make_adata(20, 10), path)
    out = tmp_path / "out"
    proc = cli("shard", path, "--out", out, "--quiet")
    _assert_cli_error(proc, "shard", str(path), "content is HDF5", "rename it .h5ad or .h5")
    assert not out.exists()


def test_truncated_h5ad_is_an_input_error(tmp_path):
    good = _write(make_adata(N_CELLS, N_GENES), tmp_path / "good.h5ad")
    path = tmp_path / "cut.h5ad"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        _shard([path], tmp_path / "out")
    assert str(path) in str(info.value)


def test_hdf5_that_is_not_anndata_is_an_input_error(tmp_path):
    path = tmp_path / "plain.h5ad"
    with h5py.File(path, "w") as f:
        f["X"] = np.ones((4, 3))
    with pytest.raises(InputError) as info:
        _shard([path], tmp_path / "out")
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# 6: empty matrices


def _empty_inputs(tmp_path: Path) -> list[Path]:
    h5ad = _write(make_adata(N_CELLS, N_GENES)[:0].copy(), tmp_path / "empty.h5ad")
    csv = tmp_path / "header_only.csv"
    csv.write_text(",c1,c2,c3\n")
    return [h5ad, csv]


@pytest.mark.parametrize("which", [0, 1], ids=["h5ad-0-cells", "csv-header-only"])
def test_empty_matrix_is_refused_naming_the_file(tmp_path, which):
    path = _empty_inputs(tmp_path)[which]
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        _shard([path], out)
    msg = str(info.value)
    assert str(path) in msg
    assert "empty matrix" in msg
    assert not out.exists()
    with pytest.raises(InputError, match="empty"):
        open_reader(InputSpec(path=path, spill_dir=tmp_path / "sp"))


@pytest.mark.parametrize("which", [0, 1], ids=["h5ad-0-cells", "csv-header-only"])
def test_empty_matrix_message_says_what_to_do(tmp_path, which):
    path = _empty_inputs(tmp_path)[which]
    with pytest.raises(InputError) as info:
        _shard([path], tmp_path / "out")
    msg = str(info.value).lower()
    assert any(w in msg for w in ("remove", "check", "re-export", "drop", "pass ", "use ", "choose")), msg


# ---------------------------------------------------------------------------------------------------------
# 7: cells with zero counts


def _zero_cells(tmp_path: Path) -> Path:
    adata = make_adata(N_CELLS, N_GENES)
    x = adata.X.tolil()
    x[10, :] = 0
    x[70, :] = 0
    adata.X = x.tocsr()
    adata.X.eliminate_zeros()
    return _write(adata, tmp_path / "zeros.h5ad")


def test_zero_count_cells_are_dropped_and_counted_by_default(tmp_path):
    src = _zero_cells(tmp_path)
    manifest = _shard([src], tmp_path / "out")
    assert manifest["totals"]["cells_dropped"]["zero_counts"] == 2
    assert manifest["totals"]["n_cells"] == N_CELLS - 2
    assert manifest["totals"]["n_input_cells"] == N_CELLS
    on_disk = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert on_disk["totals"]["cells_dropped"]["zero_counts"] == 2
    ids = set(Corpus(tmp_path / "out").read_cells(0, N_CELLS - 2).cell_ids.tolist())
    assert "cell00010" not in ids
    assert "cell00070" not in ids
    assert len(ids) == N_CELLS - 2


def test_zero_count_cells_refused_names_row_through_cli(tmp_path, cli):
    src = _zero_cells(tmp_path)
    out = tmp_path / "out"
    proc = cli("shard", src, "--out", out, "--cells-per-shard", "50", "--zero-cells", "refuse", "--quiet")
    _assert_cli_error(proc, "shard", str(src), "cell row 10", "cell00010", "--zero-cells drop")
    _assert_no_manifest(out)


# ---------------------------------------------------------------------------------------------------------
# 8: duplicate gene names


def _duplicate_genes(tmp_path: Path) -> tuple[Path, ad.AnnData]:
    adata = make_adata(N_CELLS, N_GENES, density=0.5)
    names = list(adata.var_names)
    names[4] = "GENE3"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        adata.var_names = names
    return _write(adata, tmp_path / "dups.h5ad"), adata


def test_duplicate_gene_names_refused_then_summed_on_request(tmp_path):
    src, adata = _duplicate_genes(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        _shard([src], out)
    msg = str(info.value)
    assert str(src) in msg
    assert "'GENE3'" in msg
    assert "--duplicate-genes sum" in msg
    assert not out.exists()

    _shard([src], out, mapping={"duplicate_genes": "sum"}, val_fraction=0.0)
    corpus = Corpus(out)
    tokens = corpus.vocab().tokens
    assert tokens.count("GENE3") == 1
    block = corpus.read_cells(0, corpus.n_cells)
    x = sp.csr_matrix(adata.X).toarray()
    by_id = {f"cell{i:05d}": i for i in range(N_CELLS)}
    both = 0
    for k, cid in enumerate(block.cell_ids):
        row = x[by_id[str(cid)]]
        g, v = block.cell(k)
        got = dict(zip((tokens[int(a)] for a in g), v.tolist(), strict=True))
        want = row[3] + row[4]
        assert got.get("GENE3", 0) == want, cid
        assert got.get("GENE5", 0) == row[5]
        both += bool(row[3] and row[4])
    assert both > 0  # some cells really had both duplicates non-zero


def test_cells_by_genes_csv_duplicate_genes_can_be_summed(tmp_path):
    path = tmp_path / "cbg.csv"
    path.write_text(",G1,G2,G1\nc1,1,2,3\nc2,0,4,5\n")
    manifest = _shard(
        [path], tmp_path / "out", csv_orientation="cells-by-genes", mapping={"duplicate_genes": "sum"}, val_fraction=0.0
    )
    assert manifest["totals"]["nnz"] == 4


def test_cells_by_genes_csv_duplicate_cell_ids_refused(tmp_path):
    path = tmp_path / "cbg.csv"
    path.write_text(",G1,G2\nc1,1,2\nc1,3,4\nc3,5,6\n")
    with pytest.raises(InputError) as info:
        _shard([path], tmp_path / "out", csv_orientation="cells-by-genes", val_fraction=0.0)
    assert str(path) in str(info.value)
    assert "'c1'" in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# 9: genes not in a given vocab


def _vocab_tsv(path: Path, genes: list[str]) -> Path:
    pd.DataFrame({"token": genes, "token_id": range(len(genes))}).to_csv(path, sep="\t", index=False)
    return path


def test_genes_missing_from_given_vocab_are_listed_or_refused(tmp_path):
    src = _write(make_adata(N_CELLS, N_GENES), tmp_path / "a.h5ad")
    vocab = _vocab_tsv(tmp_path / "vocab.tsv", [f"GENE{i}" for i in range(25)])
    out = tmp_path / "out"
    manifest = _shard([src], out, vocab=vocab)
    listed = pd.read_csv(out / "unmapped_genes.tsv", sep="\t")
    assert listed["gene"].tolist() == [f"GENE{i}" for i in range(25, 30)]
    assert set(listed["input"]) == {str(src)}
    assert manifest["inputs"][0]["mapping"]["n_mapped"] == 25
    assert manifest["inputs"][0]["mapping"]["n_unmapped"] == 5

    out2 = tmp_path / "out2"
    with pytest.raises(InputError) as info:
        _shard([src], out2, vocab=vocab, unmapped="refuse")
    msg = str(info.value)
    assert str(src) in msg
    assert "5 gene(s)" in msg
    assert "GENE25" in msg
    assert "--unmapped drop" in msg
    assert not out2.exists()


def test_vocab_mapping_under_half_of_genes_errors_with_hints(tmp_path):
    src = _write(make_adata(N_CELLS, N_GENES), tmp_path / "a.h5ad")
    vocab = _vocab_tsv(tmp_path / "vocab.tsv", [f"GENE{i}" for i in range(10)] + ["OTHER1", "OTHER2"])
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        _shard([src], out, vocab=vocab)
    msg = str(info.value)
    assert str(src) in msg
    assert "only 10 of 30 genes" in msg
    for hint in ("--match-on id", "--gene-map", "--case-insensitive"):
        assert hint in msg
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# 10-12: damaged corpora


def test_unknown_manifest_version_fails_inspect_and_validate(tmp_path, cli, finished):
    out = _copy_corpus(finished, tmp_path)
    path = out / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    before = _tree(out)
    proc = cli("inspect", out)
    _assert_cli_error(proc, "inspect", str(path), "version 99", "Upgrade scgrn")
    proc = cli("validate", out)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr
    assert "99" in proc.stderr
    with pytest.raises(CorpusError, match="version 99"):
        Corpus(out)
    assert _tree(out) == before


@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_checksum_mismatch_is_reported_naming_the_shard(tmp_path, cli, finished, fmt):
    out = _copy_corpus(finished, tmp_path)
    if fmt == "zarr":
        shard_path = out / "zarr" / "shard-000001.zarr"
        target = shard_path / "values" / "c" / "0"
    else:
        shard_path = target = out / "webdataset" / "shard-000001.tar"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    proc = cli("validate", out)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert str(shard_path) in proc.stderr
    assert "sha256 does not match" in proc.stderr
    assert "--resume" in proc.stderr
    assert "1 problem(s)" in proc.stderr  # only the damaged shard
    assert "shard-000000" not in proc.stderr


def test_truncated_tar_fails_validate_and_opening_it(tmp_path, cli, finished):
    out = _copy_corpus(finished, tmp_path)
    tar = out / "webdataset" / "shard-000000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    proc = cli("validate", out)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert str(tar) in proc.stderr
    with pytest.raises(CorpusError) as info:
        w = WdsShard(tar)
        for i in range(len(w.sample_keys)):  # a lazily detected truncation still has to surface here
            w.read_sample(i)
    assert str(tar) in str(info.value)
    assert "--resume" in str(info.value) or "re-shard" in str(info.value).lower()
    # --no-checksums still finds it by reading
    proc = cli("validate", out, "--no-checksums")
    assert proc.returncode == 1
    assert str(tar) in proc.stderr


def test_tar_cut_at_sample_boundary_is_refused_on_open(tmp_path, finished):
    out = _copy_corpus(finished, tmp_path)
    tar = out / "webdataset" / "shard-000000.tar"
    with tarfile.open(tar) as t:
        members = t.getmembers()
    last = next(m for m in members if m.name == "000000_000001.values.npy")  # end of the 2nd sample
    cut = last.offset_data + -(-last.size // 512) * 512
    tar.write_bytes(tar.read_bytes()[:cut])
    with pytest.raises(CorpusError) as info:
        WdsShard(tar)
    assert str(tar) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# 13: output directories that hold something else


def test_out_dir_with_a_different_corpus_is_left_untouched(tmp_path, cli, finished):
    d = _copy_corpus(finished, tmp_path)
    # the copy keeps manifest paths to finished[0]; shard B (another input) into it
    b = _write(make_adata(N_CELLS, N_GENES, seed=1), tmp_path / "b.h5ad")
    before = _tree(d)
    for resume in (False, True):
        with pytest.raises(CorpusError) as info:
            _shard([b], d, resume=resume)
        msg = str(info.value)
        assert str(d) in msg
        assert "different corpus" in msg
        assert "inputs" in msg
        assert "Choose another --out" in msg
        assert _tree(d) == before
    proc = cli("shard", b, "--out", d, "--cells-per-shard", "50", "--resume", "--quiet")
    _assert_cli_error(proc, "shard", str(d), "different corpus", "Choose another --out")
    assert _tree(d) == before
    # same input, other options: also a different corpus
    with pytest.raises(CorpusError, match="cells_per_shard"):
        _shard([finished[0]], d, cells_per_shard=40, resume=True)
    assert _tree(d) == before


def test_unfinished_run_of_another_corpus_is_left_untouched(tmp_path):
    bad = _with_value(tmp_path, 70, 3, np.nan, "bad.h5ad")
    d = tmp_path / "d"
    with pytest.raises(InputError):
        _shard([bad], d)
    before = _tree(d)
    assert before  # the failed run left its progress behind
    other = _write(make_adata(N_CELLS, N_GENES, seed=2), tmp_path / "other.h5ad")
    for resume in (False, True):
        with pytest.raises(CorpusError, match="different corpus"):
            _shard([other], d, resume=resume)
        assert _tree(d) == before


def test_non_empty_dir_that_is_not_a_corpus_is_refused(tmp_path, finished):
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("keep me\n")
    (d / "sub" / "data.bin").write_bytes(b"\x00\x01\x02")
    before = _tree(d)
    for resume in (False, True):
        with pytest.raises(CorpusError) as info:
            _shard([finished[0]], d, resume=resume)
        msg = str(info.value)
        assert str(d) in msg
        assert "not empty" in msg
        assert "Choose an empty or new directory" in msg
        assert _tree(d) == before


def test_rerun_into_finished_corpus_without_resume_suggests_resume(tmp_path, finished):
    d = _copy_corpus(finished, tmp_path)
    before = _tree(d)
    with pytest.raises(CorpusError) as info:
        _shard([finished[0]], d, cells_per_sample=16)
    msg = str(info.value)
    assert str(d) in msg
    assert "finished" in msg
    assert "--resume" in msg
    assert _tree(d) == before


def test_resume_into_finished_corpus_after_input_changed_is_refused(tmp_path):
    src = _write(make_adata(N_CELLS, N_GENES), tmp_path / "a.h5ad")
    d = tmp_path / "d"
    _shard([src], d)
    before = _tree(d)
    adata = make_adata(N_CELLS, N_GENES)
    x = adata.X.astype(np.float64).tolil()
    x[10, 3] = 99  # changes shard 0
    x[70, 3] = np.nan  # then fails in shard 1
    adata.X = x.tocsr()
    _write(adata, src)
    with pytest.raises(CorpusError) as info:
        _shard([src], d, resume=True)
    assert str(d) in str(info.value)
    assert _tree(d) == before


def test_out_path_that_is_a_file_is_refused(tmp_path, finished):
    out = tmp_path / "taken"
    out.write_text("not a directory\n")
    with pytest.raises(CorpusError) as info:
        _shard([finished[0]], out)
    assert str(out) in str(info.value)
    assert out.read_text() == "not a directory\n"


# ---------------------------------------------------------------------------------------------------------
# 14: malformed delimited text


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (",c1,c2,c1\nG1,1,2,3\n", ["duplicated cell id(s) ['c1']", "unique"]),
        (",c1,c2\nG1,1,2\nG2,1,2\nG3,1\n", ["line 4 has 2 fields", "header has 3", "every row must"]),
        (",c1,c2\nG1,1,2\nG2,1,abc\n", ["line 3", "column 'c2'", "'abc'", "is not a number", "Fix or remove"]),
        (",c1,\nG1,1,2\n", ["have no name", "every column needs an id"]),
    ],
    ids=["duplicate-cell-ids", "ragged-row", "non-numeric", "blank-column-id"],
)
def test_malformed_csv_names_file_and_line_or_column(tmp_path, text, needles):
    path = tmp_path / "expr.csv"
    path.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        _shard([path], out, values="log1p")
    msg = str(info.value)
    assert str(path) in msg
    for n in needles:
        assert n in msg, (n, msg)
    _assert_no_manifest(out)


def test_non_numeric_csv_value_later_in_a_big_file_names_its_line(tmp_path, cli):
    rows = [f"G{i}," + ",".join(str((i + j) % 3) for j in range(4)) for i in range(2500)]
    rows[2300] = "G2300,1,2,x7,0"  # past pandas' first 2000-row chunk
    path = tmp_path / "big.csv"
    path.write_text(",c0,c1,c2,c3\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    proc = cli("shard", path, "--out", out, "--values", "log1p", "--quiet")
    _assert_cli_error(proc, "shard", str(path), "line 2302", "column 'c2'", "'x7'")
    _assert_no_manifest(out)


def test_csv_with_trailing_blank_line_is_accepted(tmp_path):
    path = tmp_path / "expr.csv"
    path.write_text(",c1,c2\nG1,1,2\nG2,3,0\n\n")
    manifest = _shard([path], tmp_path / "out", val_fraction=0.0)
    assert manifest["totals"]["n_cells"] == 2


# ---------------------------------------------------------------------------------------------------------
# 15-16: options


def test_invalid_options_are_reported_together(tmp_path, cli, finished):
    with pytest.raises(InputError) as info:
        ShardConfig(inputs=[finished[0]], out=tmp_path / "out", cells_per_shard=0, val_fraction=2.0, workers=0)
    msg = str(info.value)
    assert "--cells-per-shard 0" in msg
    assert "--val-fraction 2" in msg
    assert "--workers 0" in msg
    out = tmp_path / "out"
    proc = cli("shard", finished[0], "--out", out, "--cells-per-shard", "0", "--val-fraction", "2")
    err = _assert_cli_error(proc, "shard", "--cells-per-shard 0 must be >= 1", "--val-fraction 2")
    assert err.count("error:") == 1
    assert not out.exists()


def test_missing_layer_lists_the_layers_present(tmp_path):
    adata = make_adata(N_CELLS, N_GENES)
    adata.layers["spliced"] = adata.X.copy()
    adata.layers["unspliced"] = adata.X.copy()
    src = _write(adata, tmp_path / "layers.h5ad")
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        _shard([src], out, layer="counts")
    msg = str(info.value)
    assert str(src) in msg
    assert "--layer 'counts' not found" in msg
    assert "'spliced'" in msg
    assert "'unspliced'" in msg
    assert "Omit --layer" in msg
    assert not out.exists()


def test_missing_obs_column_lists_the_columns_present(tmp_path, finished):
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        _shard([finished[0]], out, obs_columns=["cell_type", "tissue"])
    msg = str(info.value)
    assert str(finished[0]) in msg
    assert "['tissue']" in msg
    assert "cell_type, n_counts" in msg
    assert "--obs-columns" in msg
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# issue 14: inputs that used to change the data silently


def _with(tmp_path: Path, name: str, *, x=None, obs_names=None, var_names=None) -> Path:
    adata = make_adata(N_CELLS, N_GENES, density=0.5)
    if x is not None:
        adata.X = x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if obs_names is not None:
            adata.obs_names = obs_names
        if var_names is not None:
            adata.var_names = var_names
    return _write(adata, tmp_path / name)


def test_count_too_large_for_any_shard_dtype_is_refused_through_cli(tmp_path, cli):
    x = make_adata(N_CELLS, N_GENES, density=0.5).X.astype(np.float64).toarray()
    x[7, 3] = 1e20  # was cast to uint64 and stored as 0
    src = _with(tmp_path, "big.h5ad", x=sp.csr_matrix(x))
    out = tmp_path / "out"
    proc = cli("shard", src, "--out", out, "--quiet")
    _assert_cli_error(proc, "shard", str(src), "cell row 7", "gene 'GENE3'", "1e+20", "above the largest count")
    _assert_no_manifest(out)


def test_duplicated_obs_names_are_refused_through_cli(tmp_path, cli):
    names = [f"cell{i:05d}" for i in range(N_CELLS)]
    names[50] = names[3]
    src = _with(tmp_path, "dup_obs.h5ad", obs_names=names)
    out = tmp_path / "out"
    proc = cli("shard", src, "--out", out, "--quiet")
    _assert_cli_error(proc, "shard", str(src), "obs names", "duplicated cell id(s) ['cell00003']")
    _assert_no_manifest(out)


def test_blank_gene_name_is_refused_through_cli(tmp_path, cli):
    names = [f"GENE{j}" for j in range(N_GENES)]
    names[5] = "  "
    src = _with(tmp_path, "blank.h5ad", var_names=names)
    out = tmp_path / "out"
    proc = cli("shard", src, "--out", out, "--quiet")
    _assert_cli_error(proc, "shard", str(src), "empty gene name", "gene column 5")
    _assert_no_manifest(out)


def test_gene_names_are_nfc_normalised_and_stripped_across_inputs(tmp_path):
    """'Gé1' spelled composed in one file and decomposed (plus a trailing space) in another is one token."""
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "Gé1"), unicodedata.normalize("NFD", "Gé1") + " "
    assert nfc != nfd.strip()
    a = [f"GENE{j}" for j in range(N_GENES)]
    b = list(a)
    a[2], b[2] = nfc, nfd
    src_a = _with(tmp_path, "a.h5ad", var_names=a)
    src_b = _with(tmp_path, "b.h5ad", var_names=b, obs_names=[f"b{i}" for i in range(N_CELLS)])
    _shard([src_a, src_b], tmp_path / "out")
    tokens = json.loads((tmp_path / "out" / "vocab.json").read_text())["tokens"]
    assert tokens.count(nfc) == 1 and nfd not in tokens and nfd.strip() not in tokens
    assert len(tokens) == len(set(tokens))


def test_unmapped_gene_names_with_tabs_and_newlines_read_back_intact(tmp_path):
    names = [f"GENE{j}" for j in range(N_GENES)]
    names[1], names[2] = "odd\tname", "two\nlines"
    src = _with(tmp_path, "odd.h5ad", var_names=names)
    vocab = tmp_path / "scgpt_vocab.json"  # scGPT's {gene: id}
    vocab.write_text(json.dumps({n: i for i, n in enumerate(n for n in names if n.startswith("GENE"))}))
    _shard([src], tmp_path / "out", vocab=vocab)
    table = pd.read_csv(tmp_path / "out" / "unmapped_genes.tsv", sep="\t", dtype=str)
    assert sorted(table["gene"]) == sorted(["odd\tname", "two\nlines"])
