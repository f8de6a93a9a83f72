"""Outputs a user shares (a release, GRN edges / metrics / plots, simulated data, a corpus's reports) get the mode
a plain open() would give them: 0666 less the umask (0644 under 022, 0640 under 027), never mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_adata

from data_prep.config import ShardConfig
from data_prep.sharder import shard
from data_prep.simulate import SimulationConfig, write_simulation
from data_prep.vocab import GeneVocab
from finetune.grn.plots import plot_curves
from finetune.grn.report import write_edges, write_metrics
from pretrain.models.scbert import ScBert, ScBertConfig
from pretrain.release import write_release


def _write_everything(tmp: Path) -> list[Path]:
    vocab = GeneVocab.from_genes([[f"G{i}" for i in range(6)]])
    torch.manual_seed(0)
    cfg = ScBertConfig(vocab_size=vocab.size, d_model=8, n_layers=1, n_heads=2, d_ff=16, n_bins=5, attention="sdpa")
    manifest = {"value_kind": "counts", "totals": {"n_cells": 0}, "vocab": {"size": vocab.size, "sha256": vocab.sha256}}
    release = write_release(tmp / "release", "scbert", cfg, ScBert(cfg).state_dict(), vocab, manifest, {})
    grn = tmp / "grn"
    grn.mkdir()
    write_edges(grn / "edges.tsv", ["A", "B"], np.array([[0, 1]]), np.array([0.5]))
    write_metrics(grn / "metrics.json", {"auroc": 0.5})
    curve = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    plots = plot_curves({"joint": curve}, grn, "t")
    h5ad, edges = write_simulation(SimulationConfig(n_cells=20, n_genes=12, n_tfs=3), tmp / "sim" / "cells.h5ad")
    adata = make_adata(40, 10, seed=1)
    adata.write_h5ad(tmp / "a.h5ad")
    corpus = tmp / "corpus"
    shard(ShardConfig(inputs=[tmp / "a.h5ad"], out=corpus, workers=1), progress=False)
    files = [p for p in release.iterdir() if p.is_file()]
    files += [grn / "edges.tsv", grn / "metrics.json", *plots, h5ad, edges]
    files += [corpus / "manifest.json", corpus / "vocab.json", corpus / "unmapped_genes.tsv"]
    return files


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_shared_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        files = _write_everything(tmp_path)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert len(modes) >= 12
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
