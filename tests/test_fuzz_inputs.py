"""Fuzzing the input boundary: random and mutated CSV, 10x, manifest and config files.

Every outcome must be a success or one of scgrn's own errors (DataPrepError, ConfigError, GrnInputError), whose
message names the file; never a bare traceback from deep inside pandas, json, yaml or numpy. A success is checked
too: what was read must be what an independent parser (pandas, scipy, json, yaml) reads from the same bytes.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep.errors import DataPrepError
from data_prep.manifest import read_manifest
from data_prep.readers import InputSpec, open_reader
from finetune.errors import GrnInputError
from pretrain.config import ConfigError, PretrainConfig, apply_override

OWN_ERRORS = (DataPrepError, ConfigError, GrnInputError)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID_CSV = "gene,c1,c2,c3\nG1,0,3,1\nG2,5,0,0\nG3,1,1,2\n"
VALID_MTX = "%%MatrixMarket matrix coordinate integer general\n%\n3 2 4\n1 1 5\n2 1 1\n3 2 7\n1 2 2\n"
VALID_FEATURES = "ENSG1\tG1\tGene Expression\nENSG2\tG2\tGene Expression\nENSG3\tG3\tGene Expression\n"
VALID_BARCODES = "AAAC-1\nAAAG-1\n"
VALID_YAML = (
    "family: scbert\nmodel: {n_layers: 2}\ndata: {corpus: x, micro_batch_cells: 8}\ntrain: {steps: 10, lr: 1e-3}\n"
)


@st.composite
def mutated(draw, text: str) -> bytes:
    """`text` with a few random byte edits: deletions, insertions, replacements, truncation."""
    data = bytearray(text.encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "delete" and data:
            del data[i : i + draw(st.integers(1, 6))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=6) | st.sampled_from([b",", b"\t", b"\n", b"-1", b"nan"]))
        elif op == "replace" and data:
            data[i] = draw(st.integers(0, 255))
        else:
            data = data[:i]
    return bytes(data)


def _read_all(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(gene names, dense cells x genes matrix, cell ids) as scgrn's reader gives them."""
    spill = Path(tempfile.mkdtemp(dir=path.parent))
    with open_reader(InputSpec(path, spill_dir=spill)) as reader:
        chunk = reader.read(0, reader.n_cells)
        return [str(g) for g in reader.gene_names], chunk.matrix.toarray(), [str(c) for c in chunk.cell_ids]


def _outcome_is_ours(fn, where: Path):
    """The call's result, or None when it raised one of scgrn's errors naming `where`."""
    try:
        return fn()
    except OWN_ERRORS as err:
        assert str(where) in str(err) or where.name in str(err), f"message does not name {where}: {err}"
        return None


def _check_read(result, genes: list[str], matrix: np.ndarray, cells: list[str]) -> None:
    """An accepted input reads as the independent parser read it (values unchecked here: NaN, negatives and
    fractions are the sharder's to refuse, tests/data_prep/test_bad_inputs.py), with unique non-empty cell ids."""
    got_genes, got, got_cells = result
    assert got.shape == (len(got_cells), len(got_genes))
    assert len(set(got_cells)) == len(got_cells) and all(c.strip() for c in got_cells), got_cells
    assert (got_genes, got_cells) == (genes, cells)
    np.testing.assert_array_equal(got, matrix)


@FUZZ
@given(data=mutated(VALID_CSV) | st.binary(max_size=200))
def test_csv_reader_on_mutated_text(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("csv") / "expr.csv"
    path.write_bytes(data)
    result = _outcome_is_ours(lambda: _read_all(path), path)
    if result is not None:  # accepted: pandas must read the same genes x cells table from these bytes
        # engine="python": the C engine stops at a NUL byte; keep_default_na=False: a gene called "" or "NA" stays so
        frame = pd.read_csv(io.BytesIO(data), index_col=0, engine="python", keep_default_na=False)
        genes, cells = [str(g) for g in frame.index], [str(c) for c in frame.columns]
        # an entry that is no number (a NUL byte inside it, say) reads as NaN, which the sharder then refuses
        values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        _check_read(result, genes, values.T, cells)


@FUZZ
@given(which=st.sampled_from(["matrix.mtx", "features.tsv", "barcodes.tsv"]), data=st.data())
def test_10x_reader_on_mutated_files(tmp_path_factory, which, data):
    folder = tmp_path_factory.mktemp("tenx")
    files = {"matrix.mtx": VALID_MTX, "features.tsv": VALID_FEATURES, "barcodes.tsv": VALID_BARCODES}
    for name, text in files.items():
        (folder / name).write_text(text)
    (folder / which).write_bytes(data.draw(mutated(files[which]) | st.binary(max_size=120)))
    result = _outcome_is_ours(lambda: _read_all(folder), folder)
    if result is not None:  # accepted: scipy's Matrix Market reader and pandas must agree with it
        matrix = scipy.io.mmread(folder / "matrix.mtx").toarray().T  # genes x cells in the file
        features = pd.read_csv(folder / "features.tsv", sep="\t", header=None, dtype=str, keep_default_na=False)
        keep = (features[2] == "Gene Expression").to_numpy() if features.shape[1] > 2 else np.ones(len(features), bool)
        names = features[1] if features.shape[1] > 1 else features[0]
        barcodes = pd.read_csv(folder / "barcodes.tsv", sep="\t", header=None, dtype=str, keep_default_na=False)
        _check_read(result, list(names[keep]), matrix[:, keep], list(barcodes[0]))


VALID_MANIFEST = json.dumps(
    {
        "magic": "scgrn-corpus",
        "format_version": 1,
        "formats": ["webdataset"],
        "shards": [],
        "totals": {"n_cells": 0},
        "vocab": {"file": "vocab.json", "sha256": "0" * 64, "size": 3},
        "value_kind": "counts",
    }
)


@FUZZ
@given(data=mutated(VALID_MANIFEST) | st.binary(max_size=200))
def test_manifest_reader_on_mutated_json(tmp_path_factory, data):
    corpus = tmp_path_factory.mktemp("corpus")
    (corpus / "manifest.json").write_bytes(data)
    manifest = _outcome_is_ours(lambda: read_manifest(corpus), corpus)
    if manifest is not None:  # accepted: it is the JSON in the file, with every field a corpus needs
        assert manifest == json.loads(data)
        assert manifest["magic"] == "scgrn-corpus" and isinstance(manifest["shards"], list)
        assert {"formats", "totals", "vocab", "value_kind", "format_version"} <= set(manifest)


@FUZZ
@given(data=mutated(VALID_YAML) | st.binary(max_size=200))
def test_pretrain_config_loader_on_mutated_yaml(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_bytes(data)
    try:
        cfg = PretrainConfig.load(path)
    except ConfigError as err:
        # Field-level problems name the field; file-level ones (YAML syntax, encoding, shape) name the file.
        assert str(path) in str(err) or "invalid pretrain config" in str(err), err
        return
    raw = yaml.safe_load(data) or {}  # accepted: every value the file sets is the value the config holds
    for section in ("data", "train", "parallel"):
        for key, value in (raw.get(section) or {}).items():
            held = getattr(getattr(cfg, section), key)  # coerced to the field's type ("1e-3" is a YAML 1.1 string)
            expected = tuple(float(v) for v in value) if isinstance(held, tuple) else type(held)(value)
            assert held == expected, (section, key, value, held)
    assert cfg.model == (raw.get("model") or {}) and cfg.family == raw.get("family", "scbert")
    assert math.isfinite(cfg.train.lr) and cfg.train.lr > 0 and cfg.train.steps >= 1


@FUZZ
@given(item=st.text(max_size=40))
def test_pretrain_config_overrides_on_random_text(item):
    raw = {"train": {"steps": 10}}
    try:
        apply_override(raw, item)
        cfg = PretrainConfig.from_dict(raw, "overrides")
    except ConfigError as err:
        assert "override" in str(err) or "invalid pretrain config" in str(err), err
        return
    assert cfg.train.steps == raw["train"]["steps"] and math.isfinite(cfg.train.lr)


def test_fuzz_harness_can_fail():
    """The harness itself rejects a foreign exception: a bug in a reader would fail the fuzz tests."""
    with pytest.raises(KeyError):
        _outcome_is_ours(lambda: {}["x"], Path("x"))
