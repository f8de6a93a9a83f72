"""2-rank pretraining on gloo (real processes): ZeRO 1/2/3 through the deepspeed launcher and torchrun,
stop-and-go resume, and the loss falling on the real cells of ../shared/data/counts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, require_shared

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
DEBUG = REPO / "launch" / "configs" / "pretrain" / "debug.yaml"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def counts_corpus(tmp_path_factory) -> Path:
    counts = require_shared("counts")
    from data_prep.config import ShardConfig
    from data_prep.sharder import shard

    out = tmp_path_factory.mktemp("pretrain") / "counts"
    shard(ShardConfig(inputs=sorted(counts.glob("*.h5ad")), out=out, format="zarr", workers=2), progress=False)
    return out


def deepspeed_command(run_dir: Path, corpus: Path, *overrides: str, config: Path = DEBUG) -> list[str]:
    """2 ranks under the deepspeed launcher (gloo on CPU) on a free port; shared by the kill / NaN tests."""
    args = ["--config", str(config), f"data.corpus={corpus}", f"train.out_dir={run_dir}", *overrides]
    launcher = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(_port())]
    return [*launcher, "--module", "pretrain", *args]


def _launch(kind: str, run_dir: Path, corpus: Path, *overrides: str, timeout: int = 600) -> dict:
    args = ["--config", str(DEBUG), f"data.corpus={corpus}", f"train.out_dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if kind == "deepspeed":
        cmd = deepspeed_command(run_dir, corpus, *overrides)
    elif kind == "torchrun":
        cmd = [
            str(VENV_BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_port()),
            "-m",
            "pretrain",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "pretrain", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:  # every rank's output goes into the failure (PyG's testing/distributed habit)
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
        )
    return json.loads((run_dir / "run_summary.json").read_text())


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _falls(history: list[float]) -> bool:
    head, tail = sum(history[:4]) / 4, sum(history[-4:]) / 4
    return tail < head


@pytest.mark.parametrize(("stage", "launcher"), [(1, "torchrun"), (2, "deepspeed"), (3, "deepspeed")])
def test_two_rank_zero_stages_train_and_loss_falls(tmp_path, counts_corpus, stage, launcher):
    summary = _launch(
        launcher, tmp_path / "run", counts_corpus, f"parallel.zero_stage={stage}", "train.steps=24", "train.lr=3e-3"
    )
    assert summary["world_size"] == 2 and summary["steps"] == 24
    assert _falls(summary["loss_history"]), summary["loss_history"]
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    checkpoints = sorted(p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step"))
    assert [c.name for c in checkpoints] == ["step00000020", "step00000024"]  # keep_last = 2
    assert all((c / "COMPLETE").exists() for c in checkpoints)


def test_stop_and_go_equals_straight_run(tmp_path, counts_corpus):
    """2-rank ZeRO-2 fp32 on real counts: 5 steps + resume to 10 gives the same losses as 10 steps straight."""
    common = ("parallel.zero_stage=2", "train.precision=fp32", "train.save_every=5", "train.eval_every=100")
    straight = _launch("deepspeed", tmp_path / "straight", counts_corpus, *common, "train.steps=10")
    first = _launch("deepspeed", tmp_path / "stopgo", counts_corpus, *common, "train.steps=10", "train.stop_after=5")
    second = _launch("deepspeed", tmp_path / "stopgo", counts_corpus, *common, "train.steps=10", "train.resume=auto")
    resumed = first["loss_history"] + second["loss_history"]
    assert len(resumed) == 10
    assert resumed == pytest.approx(straight["loss_history"], rel=1e-5, abs=1e-6)


def test_elastic_resume_without_every_ranks_cursor_is_refused(tmp_path, counts_corpus):
    """A resume on another world size re-partitions every old rank's data cursor; with one missing it stops with
    the file named (elastic resume itself: tests/pretrain/test_resume_anywhere.py)."""
    _launch("deepspeed", tmp_path / "run", counts_corpus, "train.steps=10", "train.save_every=10")
    checkpoint = tmp_path / "run" / "checkpoints" / "step00000010"
    (checkpoint / "loader_rank1.json").unlink()
    with pytest.raises(AssertionError) as failed:
        _launch("single", tmp_path / "run", counts_corpus, "train.steps=20", "train.resume=auto")
    stderr = str(failed.value).split("stderr:", 1)[1]
    assert f"{checkpoint}: no loader state for rank(s) [1] of the 2 that saved it" in stderr
    assert "Traceback" not in stderr


def test_partial_checkpoint_is_not_resumed_from(tmp_path, counts_corpus):
    run = tmp_path / "run"
    _launch("single", run, counts_corpus, "train.steps=20", "train.save_every=10")
    (run / "checkpoints" / "step00000020" / "COMPLETE").unlink()  # as if a rank died while saving
    summary = _launch("single", run, counts_corpus, "train.steps=20", "train.resume=auto")
    assert summary["steps"] == 20 and len(summary["loss_history"]) == 10  # resumed from step 10, not 20
    shutil.rmtree(run)
