"""A catalogue of bad inputs across the pipeline: data_prep, pretrain and finetune.

Each case builds one bad input (a file, a directory, an option) in a temp dir, calls the public entry point that
reads it, and asserts that scgrn raises *its own* error whose message names the problem and the place (the file,
field, line, member or flag). More data_prep cases, with CLI and no-data-loss checks, live in
tests/data_prep/test_bad_inputs.py; tar-member and release-checksum cases are also covered end to end in
tests/test_no_unsafe_loading.py.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from data_prep.corpus import Corpus
from data_prep.errors import CorpusError, InputError
from data_prep.manifest import read_manifest
from data_prep.readers import InputSpec, open_reader
from data_prep.wds_shard import WdsShard
from finetune.errors import GrnInputError
from finetune.evaluation.config import EvalConfig
from finetune.grn.beeline import GrnDataset, discover, load_benchmark
from finetune.grn.config import GrnConfig
from finetune.grn.splits import HeldOutGenesTooSmall, cold_start_split, held_out_genes_split
from finetune.grn.user_data import read_prior
from pretrain.config import ConfigError, PretrainConfig, apply_override
from pretrain.release import load_release

MTX_HEAD = "%%MatrixMarket matrix coordinate integer general\n%\n"
FEATURES = "E1\tG1\tGene Expression\nE2\tG2\tGene Expression\n"
BARCODES = "AAAC-1\nAAAG-1\n"
MANIFEST = {
    "magic": "scgrn-corpus",
    "format_version": 1,
    "formats": ["webdataset"],
    "value_kind": "counts",
    "vocab": {"file": "vocab.json", "sha256": "0" * 64, "size": 3},
    "shards": [],
    "totals": {"n_cells": 0, "nnz": 0},
    "inputs": [],
}
CONFIG = "family: scbert\ntrain: {steps: 10}\n"

# A case: tmp_path -> (the call that must fail, the error type, needles its message must hold).
Case = Callable[[Path], tuple[Callable[[], object], type[Exception], list[str]]]
CASES: dict[str, tuple[str, Case]] = {}


def case(stage: str):
    def register(fn: Case) -> Case:
        CASES[fn.__name__] = (stage, fn)
        return fn

    return register


def _read(path: Path, **kw) -> None:
    with open_reader(InputSpec(path, spill_dir=path.parent / "spill", **kw)) as reader:
        reader.read(0, reader.n_cells)


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _tenx(tmp: Path, mtx: str, features: str = FEATURES, barcodes: str = BARCODES) -> Path:
    d = tmp / "tenx"
    _write(d / "matrix.mtx", mtx)
    _write(d / "features.tsv", features)
    _write(d / "barcodes.tsv", barcodes)
    return d


def _manifest(tmp: Path, manifest: object | bytes) -> Path:
    d = tmp / "corpus"
    _write(d / "manifest.json", manifest if isinstance(manifest, bytes) else json.dumps(manifest))
    return d


def _tar(tmp: Path, members: dict[str, bytes]) -> Path:
    path = tmp / "shard-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _config(tmp: Path, text: str | bytes) -> Path:
    return _write(tmp / "run.yaml", text)


def _release(tmp: Path) -> Path:
    import torch

    from data_prep.vocab import GeneVocab
    from pretrain.models.scbert import ScBert, ScBertConfig
    from pretrain.release import write_release

    vocab = GeneVocab.from_genes([[f"G{i}" for i in range(6)]])
    torch.manual_seed(0)
    cfg = ScBertConfig(vocab_size=vocab.size, d_model=8, n_layers=1, n_heads=2, d_ff=16, n_bins=5, attention="sdpa")
    manifest = {"value_kind": "counts", "totals": {"n_cells": 0}, "vocab": {"size": vocab.size, "sha256": vocab.sha256}}
    return write_release(tmp / "release", "scbert", cfg, ScBert(cfg).state_dict(), vocab, manifest, {})


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# ---------------------------------------------------------------------------------------------------------
# data_prep: input readers


@case("data_prep")
def csv_not_utf8(tmp):
    p = _write(tmp / "x.csv", b"gene,c1\n\xff\xfe,1\n")
    return lambda: _read(p), InputError, [str(p), "not UTF-8 text"]


@case("data_prep")
def csv_gz_not_gzip(tmp):
    p = _write(tmp / "x.csv.gz", "gene,c1\nG1,1\n")
    return lambda: _read(p), InputError, [str(p), "gzip"]


@case("data_prep")
def csv_unknown_orientation(tmp):
    p = _write(tmp / "x.csv", "gene,c1\nG1,1\n")
    return lambda: _read(p, csv_orientation="sideways"), InputError, ["--csv-orientation", "'sideways'"]


@case("data_prep")
def csv_header_only_one_field(tmp):
    p = _write(tmp / "x.csv", "gene\nG1\n")
    return lambda: _read(p), InputError, [str(p), "malformed header"]


@case("data_prep")
def input_of_unknown_type(tmp):
    p = _write(tmp / "cells.xlsx", b"PK\x03\x04")
    return lambda: _read(p), InputError, [str(p), "unknown input type"]


@case("data_prep")
def input_missing(tmp):
    p = tmp / "nowhere.h5ad"
    return lambda: _read(p), InputError, [str(p), "no such file"]


@case("data_prep")
def tenx_dir_missing_barcodes(tmp):
    d = _tenx(tmp, MTX_HEAD + "2 2 1\n1 1 3\n")
    (d / "barcodes.tsv").unlink()
    return lambda: _read(d), InputError, [str(d), "missing barcodes.tsv"]


@case("data_prep")
def tenx_mtx_wrong_banner(tmp):
    d = _tenx(tmp, "2 2 1\n1 1 3\n")
    return lambda: _read(d), InputError, [str(d / "matrix.mtx"), "not a Matrix Market coordinate file"]


@case("data_prep")
def tenx_mtx_bad_size_line(tmp):
    d = _tenx(tmp, MTX_HEAD + "two by two\n")
    return lambda: _read(d), InputError, [str(d / "matrix.mtx"), "line 3", "'rows cols entries'"]


@case("data_prep")
def tenx_mtx_size_disagrees_with_features(tmp):
    d = _tenx(tmp, MTX_HEAD + "5 2 1\n1 1 3\n")
    return lambda: _read(d), InputError, [str(d / "matrix.mtx"), "5 x 2", "features.tsv lists 2"]


@case("data_prep")
def tenx_mtx_entry_outside_matrix(tmp):
    d = _tenx(tmp, MTX_HEAD + "2 2 2\n1 1 3\n9 2 1\n")
    return lambda: _read(d), InputError, [str(d / "matrix.mtx"), "entry (9, 2)", "outside the declared 2 x 2"]


@case("data_prep")
def tenx_mtx_entry_not_numeric(tmp):
    d = _tenx(tmp, MTX_HEAD + "2 2 2\n1 1 3\n2 x 1\n")
    return lambda: _read(d), InputError, [str(d / "matrix.mtx"), "Matrix Market entries"]


@case("data_prep")
def tenx_features_empty(tmp):
    d = _tenx(tmp, MTX_HEAD + "2 2 1\n1 1 3\n", features="")
    return lambda: _read(d), InputError, [str(d), "cannot be read as a 10x matrix directory"]


# ---------------------------------------------------------------------------------------------------------
# data_prep: corpus, manifest, shards


@case("data_prep")
def corpus_without_manifest(tmp):
    d = tmp / "corpus"
    d.mkdir()
    return lambda: Corpus(d), CorpusError, [str(d), "no manifest.json"]


@case("data_prep")
def manifest_not_utf8(tmp):
    d = _manifest(tmp, b"\x80\x81{}")
    return lambda: read_manifest(d), CorpusError, [str(d / "manifest.json"), "not valid JSON"]


@case("data_prep")
def manifest_is_a_list(tmp):
    d = _manifest(tmp, [1, 2])
    return lambda: read_manifest(d), CorpusError, [str(d / "manifest.json"), "'list' is not 'scgrn-corpus'"]


@case("data_prep")
def manifest_missing_fields(tmp):
    d = _manifest(tmp, {k: v for k, v in MANIFEST.items() if k not in ("shards", "totals")})
    return lambda: read_manifest(d), CorpusError, [str(d / "manifest.json"), "missing field(s) ['shards', 'totals']"]


@case("data_prep")
def corpus_format_not_written(tmp):
    d = _manifest(tmp, MANIFEST)
    return lambda: Corpus(d, fmt="zarr"), CorpusError, [str(d), "format 'zarr' was not written", "['webdataset']"]


@case("data_prep")
def shard_is_not_a_tar(tmp):
    p = _write(tmp / "shard-000000.tar", b"\x00not a tar" * 100)
    return lambda: WdsShard(p), CorpusError, [str(p), "unreadable or truncated tar"]


@case("data_prep")
def shard_without_header_sample(tmp):
    p = _tar(tmp, {"000000_000000.meta.json": b"{}"})
    return lambda: WdsShard(p), CorpusError, [str(p), "no header sample"]


@case("data_prep")
def shard_header_of_another_format(tmp):
    p = _tar(tmp, {"000000_header.json": json.dumps({"magic": "other", "format_version": 7}).encode()})
    return lambda: WdsShard(p), CorpusError, [str(p), "'other' v7 is not 'scgrn-wds-shard'"]


@case("data_prep")
def shard_member_with_absolute_path(tmp):
    p = _tar(tmp, {"/etc/000000_header.json": b"{}"})
    return lambda: WdsShard(p), CorpusError, [str(p), "'/etc/000000_header.json'", "absolute path"]


@case("data_prep")
def shard_member_with_dotdot(tmp):
    p = _tar(tmp, {"../000000_header.json": b"{}"})
    return lambda: WdsShard(p), CorpusError, [str(p), "'../000000_header.json'", "'..' path part"]


# ---------------------------------------------------------------------------------------------------------
# pretrain: config and release


@case("pretrain")
def config_file_missing(tmp):
    p = tmp / "none.yaml"
    return lambda: PretrainConfig.load(p), ConfigError, [f"--config {p}", "no such file"]


@case("pretrain")
def config_not_yaml(tmp):
    p = _config(tmp, "train: {steps: 10\n")
    return lambda: PretrainConfig.load(p), ConfigError, [str(p), "not valid YAML"]


@case("pretrain")
def config_not_utf8(tmp):
    p = _config(tmp, b"train:\n  steps: \xff\n")
    return lambda: PretrainConfig.load(p), ConfigError, [str(p), "not valid YAML"]


@case("pretrain")
def config_top_level_is_a_list(tmp):
    p = _config(tmp, "- family\n- scbert\n")
    return lambda: PretrainConfig.load(p), ConfigError, [str(p), "top level must be a mapping", "got a list"]


@case("pretrain")
def config_section_is_a_scalar(tmp):
    p = _config(tmp, "train: 5\n")
    return lambda: PretrainConfig.load(p), ConfigError, [str(p), "'train' must be a mapping"]


@case("pretrain")
def config_unknown_top_level_key(tmp):
    p = _config(tmp, CONFIG + "trian: {}\n")
    return lambda: PretrainConfig.load(p), ConfigError, [str(p), "unknown top-level key(s) ['trian']"]


@case("pretrain")
def config_unknown_section_key(tmp):
    p = _config(tmp, "train: {steps: 10, lrr: 0.1}\n")
    return lambda: PretrainConfig.load(p), ConfigError, [str(p), "unknown key(s) ['lrr'] in 'train'"]


@case("pretrain")
def config_field_of_wrong_type(tmp):
    p = _config(tmp, "train: {steps: ten}\n")
    return lambda: PretrainConfig.load(p), ConfigError, [str(p), "train.steps = 'ten': must be int"]


@case("pretrain")
def config_field_out_of_range(tmp):
    p = _config(tmp, "train: {steps: 10, lr: -1}\n")
    return lambda: PretrainConfig.load(p), ConfigError, ["train.lr = -1.0", "must be > 0"]


@case("pretrain")
def config_unknown_family(tmp):
    p = _config(tmp, "family: gpt\n")
    return (
        lambda: PretrainConfig.load(p),
        ConfigError,
        ["family = 'gpt'", "one of ('scbert', 'exceiver', 'geneformer')"],
    )


@case("pretrain")
def override_without_equals(tmp):
    return lambda: apply_override({}, "train.lr"), ConfigError, ["override 'train.lr'", "expected key=value"]


@case("pretrain")
def override_value_not_yaml(tmp):
    return lambda: apply_override({}, "train.lr=\x1f"), ConfigError, ["override 'train.lr=\\x1f'", "not valid YAML"]


@case("pretrain")
def override_through_a_non_section(tmp):
    raw = {"family": "scbert"}
    needles = ["override 'family.x=1'", "'family' is not a section"]
    return lambda: apply_override(raw, "family.x=1"), ConfigError, needles


@case("pretrain")
def compile_with_an_attention_that_loops_on_the_host(tmp):
    import torch

    from pretrain.model_factory import build_model, check_compile, model_config
    from pretrain.models.common import resolve_attention

    cfg = model_config("scbert", {"d_model": 16, "n_heads": 2, "d_ff": 32, "compile": True}, vocab_size=50)
    backends = resolve_attention(build_model("scbert", cfg), "cpu", torch.float32)  # "auto" -> sdpa on CPU
    needles = ["model.compile = true", "model.attention = 'auto'", "'sdpa' on CPU", "model.attention=reference"]
    return lambda: check_compile(cfg, backends, "cpu"), ConfigError, needles


@case("pretrain")
def head_dim_the_fused_kernel_cannot_run(tmp):
    from pretrain.models.attention import check_head_dim

    needles = ["model.d_model / model.n_heads = 36", "'varlen'", "a multiple of 8, at most 256", "model.n_heads"]
    return lambda: check_head_dim("varlen", 36), ValueError, needles


@case("pretrain")
def release_without_config(tmp):
    return lambda: load_release(tmp), ConfigError, [str(tmp), "no config.json", "scgrn export"]


@case("pretrain")
def release_of_another_format(tmp):
    r = _release(tmp)
    _edit_json(r / "config.json", version=99)
    return lambda: load_release(r), ConfigError, [str(r / "config.json"), "v99 is not 'scgrn-release' v1"]


@case("pretrain")
def release_vocab_swapped(tmp):
    r = _release(tmp)
    _edit_json(r / "config.json", vocab_sha256="f" * 64)
    return lambda: load_release(r), ConfigError, [str(r), "vocab.json does not match config.json"]


@case("pretrain")
def release_weights_modified(tmp):
    r = _release(tmp)
    data = bytearray((r / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (r / "model.safetensors").write_bytes(bytes(data))
    return lambda: load_release(r), ConfigError, [str(r / "model.safetensors"), "does not match", "model_sha256"]


@case("pretrain")
def release_weights_missing(tmp):
    r = _release(tmp)
    (r / "model.safetensors").unlink()
    return lambda: load_release(r), ConfigError, [str(r / "model.safetensors"), "missing", "Re-export"]


# ---------------------------------------------------------------------------------------------------------
# finetune: options, priors, benchmark folders


def _grn(tmp: Path, **kw) -> GrnConfig:
    bench = tmp / "bench"
    bench.mkdir(exist_ok=True)
    return GrnConfig(**{"release": tmp, "out": tmp / "out", "benchmark": bench, **kw})


@case("finetune")
def grn_unknown_gnn(tmp):
    return lambda: _grn(tmp, gnn="transformer"), GrnInputError, ["--gnn 'transformer'", "allowed ('gcn'"]


@case("finetune")
def grn_benchmark_and_expression(tmp):
    x = _write(tmp / "x.csv", "g,c\nG,1\n")
    return lambda: _grn(tmp, expression=x, prior=x), GrnInputError, ["--benchmark", "not both"]


@case("finetune")
def grn_release_missing(tmp):
    r = tmp / "no-release"
    return lambda: _grn(tmp, release=r), GrnInputError, [f"--release {r}", "no such file"]


@case("finetune")
def grn_unknown_baseline(tmp):
    return lambda: _grn(tmp, baselines=["magic"]), GrnInputError, ["--baselines ['magic']", "unknown"]


@case("finetune")
def grn_seeds_zero(tmp):
    return lambda: _grn(tmp, seeds=0), GrnInputError, ["--seeds 0", "must be an int >= 1"]


@case("finetune")
def grn_split_repair_without_a_split_file(tmp):
    call = lambda: _grn(tmp, split="cold-start", split_repair=True)  # noqa: E731
    return call, GrnInputError, ["--split-repair applies to a split file", "drop --split-repair"]


def _network(n_tfs: int, targets_per_tf: int) -> GrnDataset:
    n_genes = n_tfs + n_tfs * targets_per_tf
    edges = [(tf, n_tfs + tf * targets_per_tf + k) for tf in range(n_tfs) for k in range(targets_per_tf)]
    genes = [f"G{i}" for i in range(n_genes)]
    return GrnDataset("small", "prior", genes, [[0.0, 1.0]] * n_genes, ["a", "b"], range(n_tfs), edges)


@case("finetune")
def grn_held_out_genes_on_a_small_network(tmp):
    call = lambda: held_out_genes_split(_network(6, 5), 0)  # noqa: E731
    return (
        call,
        HeldOutGenesTooSmall,
        ["--split held-out-genes leaves", "fewer than the 20 needed", "--split cold-start"],
    )


def _cells_h5ad(tmp: Path, counts) -> Path:
    import anndata as ad
    import numpy as np

    adata = ad.AnnData(np.asarray(counts, dtype=np.float32))
    adata.var_names = [f"G{i}" for i in range(adata.n_vars)]
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.write_h5ad(tmp / "cells.h5ad")
    return tmp / "cells.h5ad"


@case("finetune")
def grn_probe_of_tfs_never_expressed(tmp):
    import numpy as np

    from finetune.grn.probe import ProbeConfig, release_probe_evidence
    from finetune.grn.release_inputs import open_release_inputs

    counts = np.random.default_rng(0).poisson(3.0, size=(20, 6))
    counts[:, 0] = 0  # the only TF asked for is never expressed
    cells, release, genes = _cells_h5ad(tmp, counts), _release(tmp), [f"G{i}" for i in range(6)]

    def call():
        with open_release_inputs(release, genes, cells, value_kind="counts") as rel:
            release_probe_evidence(rel, np.array([0]), "pretrained", ProbeConfig(max_cells=10))

    return call, GrnInputError, [str(cells), "none of the 1 TFs", "expressed in any", "leave the probe out"]


@case("finetune")
def grn_adaptation_of_a_count_likelihood_on_log_normalised_values(tmp):
    import numpy as np
    import torch

    from data_prep.vocab import GeneVocab
    from finetune.grn.adaptation import AdaptConfig
    from finetune.grn.release_inputs import open_release_inputs
    from pretrain.models.exceiver import Exceiver, ExceiverConfig
    from pretrain.release import write_release

    genes = [f"G{i}" for i in range(6)]
    vocab = GeneVocab.from_genes([genes])
    torch.manual_seed(0)
    cfg = ExceiverConfig(vocab_size=vocab.size, d_model=8, n_latents=4, n_heads=2, d_ff=16, objective="nb")
    manifest = {"value_kind": "counts", "totals": {"n_cells": 0}, "vocab": {"size": vocab.size, "sha256": vocab.sha256}}
    release = write_release(tmp / "release", "exceiver", cfg, Exceiver(cfg).state_dict(), vocab, manifest, {})
    cells = _cells_h5ad(tmp, np.log1p(np.random.default_rng(0).poisson(3.0, size=(20, 6))))

    def call():
        with open_release_inputs(release, genes, cells, value_kind="log1p", adapt=AdaptConfig(steps=5)):
            pass

    return call, GrnInputError, [f"release {release}", "'nb' count likelihood", "log1p", "--adapt-steps at 0"]


@case("finetune")
def grn_prior_whose_tfs_cannot_fill_three_folds(tmp):
    call = lambda: cold_start_split(_network(2, 10), 0)  # noqa: E731
    return call, GrnInputError, ["has 2 TF(s) with a known edge", "needs at least 3", "--split genelink"]


@case("finetune")
def eval_release_without_config(tmp):
    x = _write(tmp / "x.csv", "g,c\nG,1\n")
    call = lambda: EvalConfig(release=tmp, out=tmp / "o", data=x)  # noqa: E731
    return call, GrnInputError, [f"release {tmp}", "no config.json"]


@case("finetune")
def eval_too_few_folds(tmp):
    r = _release(tmp)
    x = _write(tmp / "x.csv", "g,c\nG,1\n")
    return lambda: EvalConfig(release=r, out=tmp / "o", data=x, folds=1), GrnInputError, ["--folds = 1", ">= 2"]


@case("finetune")
def prior_not_text(tmp):
    p = _write(tmp / "prior.tsv.gz", b"not gzip at all")
    return lambda: read_prior(p), GrnInputError, [f"--prior {p}", "cannot be read as text"]


@case("finetune")
def prior_without_edges(tmp):
    p = _write(tmp / "prior.tsv", "tf\ttarget\n")
    return lambda: read_prior(p), GrnInputError, [f"--prior {p}", "no edges"]


@case("finetune")
def prior_with_one_column(tmp):
    p = _write(tmp / "prior.tsv", "GATA1\nTAL1\n")
    return lambda: read_prior(p), GrnInputError, [f"--prior {p}", "TF and target columns"]


@case("finetune")
def truth_file_empty(tmp):
    p = _write(tmp / "edges.tsv", "")
    return lambda: read_prior(p, "--truth"), GrnInputError, [f"--truth {p}", "cannot be read as a table"]


@case("finetune")
def benchmark_root_is_a_file(tmp):
    p = _write(tmp / "beeline.txt", "x")
    return lambda: discover(p), GrnInputError, [str(p), "not a directory"]


@case("finetune")
def benchmark_root_without_folders(tmp):
    return lambda: discover(tmp), GrnInputError, [str(tmp), "no benchmark folder found"]


@case("finetune")
def benchmark_folder_missing_files(tmp):
    d = tmp / "STRING" / "hESC" / "TFs+500"
    _write(d / "TF.csv", ",TF,index\n0,G1,0\n")
    return lambda: load_benchmark(d), GrnInputError, [str(d), "missing required file(s) Target.csv, Label.csv"]


@case("finetune")
def benchmark_expression_not_numeric(tmp):
    d = tmp / "STRING" / "hESC" / "TFs+500"
    _write(d / "TF.csv", ",TF,index\n0,G1,0\n")
    _write(d / "Target.csv", ",Gene,index\n0,G1,0\n1,G2,1\n")
    _write(d / "Label.csv", ",TF,Target,Label\n0,0,1,1\n")
    e = _write(d / "BL--ExpressionData.csv", ",c1,c2\nG1,1,abc\nG2,0,1\n")
    return lambda: load_benchmark(d), GrnInputError, [str(e), "gene 'G1', cell 'c2' holds 'abc'"]


# ---------------------------------------------------------------------------------------------------------
# issue 14: inputs that used to pass silently


def _h5ad(tmp: Path, x, obs_names=None, var_names=None) -> Path:
    import warnings

    import anndata as ad
    import numpy as np
    import pandas as pd

    x = np.asarray(x)
    obs = pd.DataFrame(index=obs_names or [f"c{i}" for i in range(x.shape[0])])
    var = pd.DataFrame(index=var_names or [f"G{j}" for j in range(x.shape[1])])
    path = tmp / "cells.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata: "obs / var names are not unique"
        ad.AnnData(X=x, obs=obs, var=var).write_h5ad(path)
    return path


def _shard(tmp: Path, *inputs: Path):
    from data_prep.config import ShardConfig
    from data_prep.sharder import shard

    return lambda: shard(ShardConfig(inputs=list(inputs), out=tmp / "corpus", workers=1), progress=False)


@case("data_prep")
def count_above_what_a_shard_stores(tmp):
    p = _h5ad(tmp, [[1.0, 1e20], [2.0, 3.0]])
    return _shard(tmp, p), InputError, [str(p), "cell row 0", "gene 'G1'", "1e+20", "above the largest count"]


@case("data_prep")
def h5ad_duplicated_obs_names(tmp):
    p = _h5ad(tmp, [[1, 2], [3, 4], [5, 6]], obs_names=["c1", "c2", "c1"])
    return lambda: _read(p), InputError, [str(p), "obs names", "duplicated cell id(s) ['c1']", "unique"]


@case("data_prep")
def tenx_identical_barcodes(tmp):
    barcodes = "AAAC-1\n" * 60
    d = _tenx(tmp, MTX_HEAD + "2 60 1\n1 1 5\n", barcodes=barcodes)
    return lambda: _read(d), InputError, [str(d / "barcodes.tsv"), "duplicated cell id(s) ['AAAC-1']", "60 copies"]


@case("data_prep")
def gene_name_empty(tmp):
    p = _h5ad(tmp, [[1, 2, 3]], var_names=["G0", "", "G2"])
    return _shard(tmp, p), InputError, [str(p), "empty gene name", "gene column 1"]


@case("data_prep")
def gene_name_blank(tmp):
    p = _h5ad(tmp, [[1, 2, 3]], var_names=["G0", "G1", " "])
    return _shard(tmp, p), InputError, [str(p), "empty gene name", "gene column 2", "' '"]


@case("data_prep")
def gene_names_nfc_and_nfd_in_one_input(tmp):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "Gé1"), unicodedata.normalize("NFD", "Gé1")
    p = _h5ad(tmp, [[1, 2, 3]], var_names=["G0", nfc, nfd])
    return _shard(tmp, p), InputError, [str(p), "appear more than once", "'Gé1' x2"]


@case("pretrain")
def train_lr_infinite(tmp):
    p = _config(tmp, CONFIG)
    return lambda: PretrainConfig.load(p, ["train.lr=.inf"]), ConfigError, ["train.lr = inf", "finite"]


@case("pretrain")
def train_betas_out_of_range(tmp):
    p = _config(tmp, CONFIG)
    needles = ["train.betas = (0.9, 1.5)", "two numbers in [0, 1)"]
    return lambda: PretrainConfig.load(p, ["train.betas=[0.9,1.5]"]), ConfigError, needles


@case("pretrain")
def release_without_vocab(tmp):
    release = _release(tmp)
    (release / "vocab.json").unlink()
    return lambda: load_release(release), ConfigError, [str(release), "vocab.json missing", "scgrn export"]


@case("finetune")
def grn_out_is_a_symlink_loop(tmp):
    release = _release(tmp)
    (tmp / "a").symlink_to(tmp / "b")
    (tmp / "b").symlink_to(tmp / "a")
    bench = tmp / "STRING" / "hESC" / "TFs+500"
    bench.mkdir(parents=True)

    def call():
        return GrnConfig(release=release, out=tmp / "a", benchmark=bench)

    return call, GrnInputError, [f"--out {tmp / 'a'}", "cannot be resolved", "point it at a real directory"]


@case("pretrain")
def scgrn_test_hook_malformed(tmp):
    import os

    from data_prep.test_hooks import TestHookError, read_step_hook

    def call():
        os.environ["SCGRN_TEST_POISON_AT"] = "abc"
        try:
            return read_step_hook("SCGRN_TEST_POISON_AT")
        finally:
            del os.environ["SCGRN_TEST_POISON_AT"]

    return call, TestHookError, ["SCGRN_TEST_POISON_AT='abc'", "STEP or STEP:RANK"]


# ---------------------------------------------------------------------------------------------------------


def test_catalogue_spans_the_pipeline():
    stages = [stage for stage, _ in CASES.values()]
    assert len(CASES) >= 30, len(CASES)
    assert {s: stages.count(s) >= 8 for s in ("data_prep", "pretrain", "finetune")} == dict.fromkeys(
        ("data_prep", "pretrain", "finetune"), True
    ), stages


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_names_problem_and_place(tmp_path, name):
    _, build = CASES[name]
    call, error, needles = build(tmp_path)
    with pytest.raises(error) as info:
        call()
    msg = str(info.value)
    missing = [n for n in needles if n not in msg]
    assert not missing, f"{name}: message lacks {missing}:\n{msg}"
    assert "Traceback" not in msg
