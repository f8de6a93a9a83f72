"""The `scgrn` entry point, through a real subprocess: simulate -> shard -> inspect -> validate."""

from __future__ import annotations

import json

import pandas as pd


def test_simulate_shard_inspect_validate(tmp_path, cli):
    h5ad = tmp_path / "sim.h5ad"
    cli("simulate", "--cells", 600, "--genes", 80, "--tfs", 10, "--seed", 3, "--out", h5ad, check=True)
    edges = pd.read_csv(tmp_path / "sim.edges.tsv", sep="\t")
    assert set(edges.columns) >= {"tf", "target", "weight"} and len(edges) > 0
    out = tmp_path / "corpus"
    proc = cli(
        "shard", h5ad, "--out", out, "--cells-per-shard", 200, "--workers", 2, "--obs-columns", "cell_type", check=True
    )
    assert "cells        600" in proc.stdout  # human summary after sharding
    summary = json.loads(cli("inspect", out, "--json", check=True).stdout)
    assert summary["n_cells"] == 600 and summary["n_shards"] == 3 and summary["format_version"] == 3
    assert {"n_cells", "n_genes", "nnz", "n_shards", "format_version"} <= set(summary)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"].startswith("scgrn shard")
    assert cli("validate", out).returncode == 0


def test_errors_are_one_line_without_traceback(tmp_path, cli):
    proc = cli("shard", tmp_path / "missing.h5ad", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert proc.stderr.startswith("scgrn shard: error:") and "Traceback" not in proc.stderr
    assert "missing.h5ad" in proc.stderr


def test_validate_reports_problems_and_exits_1(tmp_path, cli):
    proc = cli("validate", tmp_path)
    assert proc.returncode == 1 and "manifest.json" in proc.stderr
