"""A non-finite loss stops training with a message and a resumable checkpoint of the last good state."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
from conftest import make_adata
from test_train_distributed import REPO, deepspeed_command

from pretrain import checkpointing as ckpt

# Exceiver: NaN counts give NaN log-values and a NaN loss (scBERT would bin them to 0, never NaN; the sharder refuses
# non-finite values, so only a fault past the corpus can poison a batch)
EXCEIVER = REPO / "launch" / "configs" / "pretrain" / "exceiver-debug.yaml"


def _launch_raw(run, corpus, extra_env: dict, *overrides: str) -> subprocess.CompletedProcess:
    """The 2-rank deepspeed launch of test_train_distributed, with extra environment and no success check."""
    cmd = deepspeed_command(run, corpus, *overrides, config=EXCEIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra_env}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600, check=False)


def _pretrain_one_rank(cli, tmp_path, *overrides: str, env: dict | None = None):
    """`scgrn pretrain` of exceiver-debug on a fresh 300-cell corpus, no success check: (process, run dir)."""
    make_adata(300, 50, seed=1).write_h5ad(tmp_path / "a.h5ad")
    cli("shard", tmp_path / "a.h5ad", "--out", tmp_path / "corpus", "--quiet", check=True)
    run = tmp_path / "run"
    config = ("--config", "launch/configs/pretrain/exceiver-debug.yaml")
    proc = cli("pretrain", *config, f"data.corpus={tmp_path / 'corpus'}", f"train.out_dir={run}", *overrides, env=env)
    return proc, run


def test_nonfinite_loss_stops_with_message_and_checkpoint(tmp_path, cli):
    # Poisson likelihood with a huge step size: exp(predicted log-rate) overflows to inf within a few steps.
    overrides = ("train.lr=1e4", "train.grad_clip=0", "train.warmup_steps=0", "train.steps=30", "train.resume=none")
    proc, run = _pretrain_one_rank(cli, tmp_path, *overrides)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "is not finite on at least one rank" in proc.stderr and "Lower train.lr" in proc.stderr
    assert "Traceback" not in proc.stderr
    saved = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step")]
    assert saved and all((p / "COMPLETE").exists() for p in saved)
    # a quiet console: DeepSpeed's lines are in the run's log, not on the console (pretrain/console.py)
    console = proc.stdout + proc.stderr
    assert "DeepSpeed" not in console and "Setting accelerator" not in console, console[-2000:]
    assert "DeepSpeed info: version=" in (run / "logs" / "rank0.log").read_text()


@pytest.mark.distributed
@pytest.mark.slow
def test_a_poisoned_batch_on_one_rank_stops_both_ranks_with_a_resumable_checkpoint(tmp_path, cli):
    """Rank 1's step-3 loss is made NaN (test-only SCGRN_TEST_POISON_AT): the guard's all-reduce stops both
    ranks before the update is applied, the last good state (step 2) is saved complete, and a plain relaunch
    resumes and ends."""
    make_adata(600, 60, seed=2).write_h5ad(tmp_path / "a.h5ad")
    cli("shard", tmp_path / "a.h5ad", "--out", tmp_path / "corpus", "--quiet", check=True)
    run = tmp_path / "run"
    common = ("train.steps=6", "train.save_every=100", "train.eval_every=100", "train.resume=auto")
    proc = _launch_raw(run, tmp_path / "corpus", {"SCGRN_TEST_POISON_AT": "3:1"}, *common)
    assert proc.returncode != 0, proc.stdout[-2000:]
    output = proc.stdout + proc.stderr
    assert "the loss of step 3 is not finite" in output and "loss: nan" in output, output[-3000:]
    assert "last good state (step 2)" in output and "Lower train.lr" in output
    complete = ckpt.complete_checkpoints(run)
    assert [p.name for p in complete] == ["step00000002"]  # the last good state, saved by both ranks
    assert not (run / "run_summary.json").exists()
    again = _launch_raw(run, tmp_path / "corpus", {}, *common)  # no poison: resumes from step 2 and finishes
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["steps"] == 6 and len(summary["loss_history"]) == 4
    assert all(math.isfinite(x) for x in summary["loss_history"])


@pytest.mark.parametrize("check", ["lagged", "before_update"])
def test_finite_check_modes_on_a_poisoned_step(tmp_path, cli, check):
    """Step 3's loss is poisoned. before_update (the CPU default) stops before applying it and saves step 2 as the
    last good state; lagged (the GPU default, no host wait per step) sees it during step 4, after step 3's update,
    and saves nothing after step 2: the checkpoint the message names is the one to resume from."""
    overrides = (f"train.finite_check={check}", "train.steps=8", "train.save_every=2", "train.eval_every=100",
                 "train.resume=none")  # fmt: skip
    env = {**os.environ, "SCGRN_TEST_POISON_AT": "3", "OMP_NUM_THREADS": "1"}
    proc, run = _pretrain_one_rank(cli, tmp_path, *overrides, env=env)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "the loss of step 3 is not finite" in proc.stderr and "loss: nan" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert [p.name for p in ckpt.complete_checkpoints(run)] == ["step00000002"]
    if check == "lagged":
        assert "step 3's update was applied" in proc.stderr and "step00000002" in proc.stderr
    else:
        assert "last good state (step 2)" in proc.stderr
