"""Learning check: after a short CPU run on the real cells, held-out masked loss beats the per-gene baseline."""

from __future__ import annotations

import pytest
from conftest import require_shared

pytestmark = pytest.mark.slow


def test_short_run_beats_the_per_gene_baseline(tmp_path, cli):
    counts = require_shared("counts")
    corpus = tmp_path / "counts"
    cli(
        "shard",
        *sorted(counts.glob("*.h5ad")),
        "--out",
        corpus,
        "--format",
        "zarr",
        "--quiet",
        "--workers",
        "2",
        check=True,
    )
    run = tmp_path / "run"
    proc = cli(
        "pretrain",
        "--config",
        "launch/configs/pretrain/debug.yaml",
        f"data.corpus={corpus}",
        f"train.out_dir={run}",
        "train.steps=80",
        "train.lr=3e-3",
        "train.eval_every=80",
        "train.save_every=80",
        "train.resume=none",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli("export", run, "--out", tmp_path / "release", check=True)

    from pretrain import load_release
    from pretrain.evaluation import scbert_vs_gene_baseline

    model, _ = load_release(tmp_path / "release")
    result = scbert_vs_gene_baseline(model, corpus)
    assert result["n_masked"] > 1000
    assert result["model"] < result["gene_baseline"], result
