"""Fuzzing the input boundary: random and mutated CSV, 10x, manifest and config files.

Every outcome must be a success or one of scgrn's own errors (DataPrepError, ConfigError, GrnInputError), whose
message names the file; never a bare traceback from deep inside pandas, json, yaml or numpy.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
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


def _read_all(path: Path) -> None:
    spill = Path(tempfile.mkdtemp(dir=path.parent))
    with open_reader(InputSpec(path, spill_dir=spill)) as reader:
        reader.read(0, reader.n_cells)


def _outcome_is_ours(fn, where: Path) -> None:
    try:
        fn()
    except OWN_ERRORS as err:
        assert str(where) in str(err) or where.name in str(err), f"message does not name {where}: {err}"


@FUZZ
@given(data=mutated(VALID_CSV) | st.binary(max_size=200))
def test_csv_reader_on_mutated_text(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("csv") / "expr.csv"
    path.write_bytes(data)
    _outcome_is_ours(lambda: _read_all(path), path)


@FUZZ
@given(which=st.sampled_from(["matrix.mtx", "features.tsv", "barcodes.tsv"]), data=st.data())
def test_10x_reader_on_mutated_files(tmp_path_factory, which, data):
    folder = tmp_path_factory.mktemp("tenx")
    files = {"matrix.mtx": VALID_MTX, "features.tsv": VALID_FEATURES, "barcodes.tsv": VALID_BARCODES}
    for name, text in files.items():
        (folder / name).write_text(text)
    (folder / which).write_bytes(data.draw(mutated(files[which]) | st.binary(max_size=120)))
    _outcome_is_ours(lambda: _read_all(folder), folder)


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
    _outcome_is_ours(lambda: read_manifest(corpus), corpus)


@FUZZ
@given(data=mutated(VALID_YAML) | st.binary(max_size=200))
def test_pretrain_config_loader_on_mutated_yaml(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_bytes(data)
    try:
        PretrainConfig.load(path)
    except ConfigError as err:
        # Field-level problems name the field; file-level ones (YAML syntax, encoding, shape) name the file.
        assert str(path) in str(err) or "invalid pretrain config" in str(err), err


@FUZZ
@given(item=st.text(max_size=40))
def test_pretrain_config_overrides_on_random_text(item):
    raw = {"train": {"steps": 10}}
    try:
        apply_override(raw, item)
        PretrainConfig.from_dict(raw, "overrides")
    except ConfigError as err:
        assert "override" in str(err) or "invalid pretrain config" in str(err), err


def test_fuzz_harness_can_fail():
    """The harness itself rejects a foreign exception: a bug in a reader would fail the fuzz tests."""
    with pytest.raises(KeyError):
        _outcome_is_ours(lambda: {}["x"], Path("x"))
