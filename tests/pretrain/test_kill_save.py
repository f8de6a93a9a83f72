"""A run killed while saving a checkpoint: the previous checkpoint stays loadable and is what `resume=auto` picks,
the partial one is refused, and DeepSpeed's `latest` never names the partial tag.

Both ranks are parked by the trainer's test-only hold (`SCGRN_TEST_HOLD_IN_SAVE`) after writing their checkpoint
files and before the COMPLETE marker, i.e. inside the window a real kill would have to hit.
"""

from __future__ import annotations

import os
import signal

import pytest
from test_kill_resume import COMMON, kill_group, small_corpus, start_held, wait_for_hold  # noqa: F401 (fixture)
from test_train_distributed import _launch

from pretrain import checkpointing as ckpt
from pretrain.config import ConfigError

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, small_corpus):  # noqa: F811
    run = tmp_path / "run"
    root = ckpt.checkpoint_root(run)
    proc = start_held(run, small_corpus, {"SCGRN_TEST_HOLD_IN_SAVE": "4"}, *COMMON)
    pids = wait_for_hold(proc, run, [0, 1])
    partial = root / "step00000004"
    assert any(partial.glob("*model_states*")) and (partial / "loader_rank1.json").exists()
    assert not (partial / ckpt.COMPLETE).exists()
    assert (root / ckpt.LATEST).read_text() == "step00000002"  # DeepSpeed's own save would name step 4 here
    os.kill(pids[0], signal.SIGKILL)
    kill_group(proc)

    assert (root / ckpt.LATEST).read_text() == "step00000002"
    assert ckpt.resolve_resume("auto", run) == root / "step00000002"
    with pytest.raises(ConfigError, match="partial"):
        ckpt.resolve_resume(str(partial), run)

    summary = _launch("deepspeed", run, small_corpus, *COMMON, "train.resume=auto")
    assert summary["steps"] == 8 and len(summary["loss_history"]) == 6  # resumed from step 2, not the partial 4
    assert [p.name for p in ckpt.complete_checkpoints(run)] == ["step00000006", "step00000008"]  # keep_last=2
    assert (root / ckpt.LATEST).read_text() == "step00000008"
