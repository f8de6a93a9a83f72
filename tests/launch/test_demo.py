"""`scgrn demo` end to end (what `make demo` runs): simulate -> shard -> 2 ranks under the deepspeed launcher ->
export -> scgrn grn against the simulator's network, with a shortened pretraining."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_demo_recovers_the_simulated_network_well_above_chance(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", out, "--steps", "40", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--num_gpus 2 --module pretrain" in proc.stdout  # the deepspeed launcher, 2 ranks
    summary = json.loads((out / "runs" / "demo" / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 40
    for name in ("release/model.safetensors", "grn/edges.tsv", "grn/roc.png", "grn/pr.png", "grn/results.md"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "demo_summary.json").read_text())
    auroc = result["auroc"]
    assert auroc[result["joint"]] > 0.7, result  # chance is 0.5
    # degree carries no signal in the simulator's network: the methods that only see nodes cannot rank its edges,
    # the joint model (pair evidence) can
    assert auroc[result["joint"]] > max(auroc["degree"], auroc["genelink-gat"]) + 0.2, result
    assert result["edges_method"] in auroc and set(result["joint_margins"]) >= {"pearson"}
    assert "| joint-gcn |" in proc.stdout and "tensorboard --logdir" in proc.stdout
    assert f"edges.tsv ranked by **{result['edges_method']}**" in proc.stdout
    assert "split variance only" in proc.stdout and "best on held-out" not in proc.stdout
    # a quiet console: the launcher's and DeepSpeed's lines and library warnings are in the logs, complete
    console = proc.stdout + proc.stderr
    noises = ("Setting accelerator", "[INFO]", "[WARNING]", "WORLD INFO", "Processing zero checkpoint", "UserWarning")
    for noise in noises:
        assert noise not in console, noise
    assert "WORLD INFO DICT" in (out / "logs" / "launcher.log").read_text()
    assert "zero_to_fp32" in (out / "logs" / "demo.log").read_text()
