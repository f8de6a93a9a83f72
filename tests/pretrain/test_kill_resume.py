"""A rank SIGKILLed after a checkpoint: `train.resume=auto` finishes the run, and after the resumed step every rank
trains on exactly the cells an uninterrupted run trains on (none twice, none skipped), read from `train.log_cell_ids`.

Real processes throughout: the deepspeed launcher, 2 gloo ranks, ZeRO-2, a real SIGKILL. The trainer's test-only
hold (`SCGRN_TEST_HOLD_AFTER_SAVE`) parks the chosen rank at a known point so the kill never races a fast run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, make_adata, run_cli
from test_train_distributed import _launch, deepspeed_command

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
COMMON = (
    "parallel.zero_stage=2",
    "train.precision=fp32",
    "train.steps=8",
    "train.save_every=2",
    "train.eval_every=100",
    "train.log_every=100",
    "train.log_cell_ids=true",
)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """600 synthetic cells: one epoch covers 8 steps x 2 ranks x 8 cells, so no cell may repeat."""
    root = tmp_path_factory.mktemp("kill")
    make_adata(600, 60, seed=3).write_h5ad(root / "cells.h5ad")
    run_cli("shard", root / "cells.h5ad", "--out", root / "corpus", "--quiet", check=True)
    return root / "corpus"


def start_held(run_dir: Path, corpus: Path, hold: dict[str, str], *overrides: str) -> subprocess.Popen:
    """Start a 2-rank deepspeed run in its own process group with a test-only hold set; output goes to files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = deepspeed_command(run_dir, corpus, *overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **hold}
    with (run_dir / "launcher.log").open("w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_hold(proc: subprocess.Popen, run_dir: Path, ranks: list[int], timeout: float = 300) -> dict[int, int]:
    """Pids of `ranks` once each has reached its hold point (it writes RUN/test_hold/rank{r}.pid there)."""
    files = {r: run_dir / "test_hold" / f"rank{r}.pid" for r in ranks}
    deadline = time.monotonic() + timeout
    while not all(f.exists() for f in files.values()):
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            log = (run_dir / "launcher.log").read_text()[-6000:]
            pytest.fail(f"run never reached its hold point (exit {proc.returncode}):\n{log}")
        time.sleep(0.2)
    return {r: int(f.read_text()) for r, f in files.items()}


def kill_group(proc: subprocess.Popen, grace: float = 30) -> bool:
    """Wait up to `grace` s for the launcher to exit by itself, then SIGKILL its whole group. True if it exited."""
    try:
        proc.wait(timeout=grace)
        exited = True
    except subprocess.TimeoutExpired:
        exited = False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # also any rank the launcher left behind
    proc.wait(timeout=30)
    return exited


def read_log(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "cell_ids" / f"rank{rank}.jsonl").read_text().splitlines()]


def test_killed_rank_resumes_on_exactly_the_uninterrupted_cells(tmp_path, small_corpus):
    t0 = time.perf_counter()
    reference = _launch("deepspeed", tmp_path / "reference", small_corpus, *COMMON)

    run = tmp_path / "killed"
    proc = start_held(run, small_corpus, {"SCGRN_TEST_HOLD_AFTER_SAVE": "4:1"}, *COMMON)
    pids = wait_for_hold(proc, run, [1])  # rank 1 sits after its 2nd checkpoint; rank 0 runs on into step 5
    os.kill(pids[1], signal.SIGKILL)
    kill_group(proc)
    assert not (run / "run_summary.json").exists()
    complete = sorted(p.name for p in (run / "checkpoints").iterdir() if (p / "COMPLETE").exists())
    assert complete == ["step00000002", "step00000004"]

    resumed = _launch("deepspeed", run, small_corpus, *COMMON, "train.resume=auto")
    assert resumed["steps"] == 8 and len(resumed["loss_history"]) == 4  # resumed from step 4
    assert resumed["loss_history"] == pytest.approx(reference["loss_history"][4:], rel=1e-5, abs=1e-6)

    seen: list[str] = []
    for rank in (0, 1):
        got, want = read_log(run, rank), read_log(tmp_path / "reference", rank)
        assert [e["step"] for e in got] == list(range(1, 9))  # step 5 of rank 0's killed attempt was dropped
        after = [e["cell_ids"] for e in got if e["step"] > 4]
        assert after == [e["cell_ids"] for e in want if e["step"] > 4]
        assert got == want  # and before the kill too: the whole epoch so far is the uninterrupted one
        seen += [c for e in got for c in e["cell_ids"]]
    assert len(seen) == len(set(seen)) == 8 * 2 * 8  # one epoch: no cell twice, none skipped
    print(f"kill-resume test: {time.perf_counter() - t0:.1f} s")
