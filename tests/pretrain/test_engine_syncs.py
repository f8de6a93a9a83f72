"""DeepSpeed adds no host read of a device value to a training step (issue 22, item 1).

`test_host_sync.py` runs pure torch; the engine's own path is checked here. On a GPU, DeepSpeed's throughput timer
calls `synchronize()` at the start of forward and the end of step, and bf16's gradient-overflow check reads a flag
with `.item()` and `bool()`. On CPU a synchronize is a no-op, but the call is still made, so counting the calls that
come from DeepSpeed's own files tells the same story as on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from test_step_semantics import DEBUG, _corpus

COUNT_SCRIPT = """
import json, sys
import torch
from deepspeed.accelerator import get_accelerator
from pretrain.config import PretrainConfig
from pretrain.trainer import Trainer

counts = {}

def count(kind):
    frame = sys._getframe(2)
    if "/deepspeed/" in frame.f_code.co_filename:
        counts[kind] = counts.get(kind, 0) + 1

accelerator_type = type(get_accelerator())
synchronize, item, to_bool = accelerator_type.synchronize, torch.Tensor.item, torch.Tensor.__bool__
def counted_synchronize(self, *args, **kwargs):
    count("synchronize")
    return synchronize(self, *args, **kwargs)
def counted_item(self):
    count("item")
    return item(self)
def counted_bool(self):
    count("bool")
    return to_bool(self)

results = []
for case in json.loads(sys.argv[2]):
    trainer = Trainer(PretrainConfig.load(sys.argv[1], case))
    batches = trainer._batches()
    for _ in range(2):  # first steps: one-off set-up
        trainer.train_step(batches)
    counts.clear()
    accelerator_type.synchronize = counted_synchronize
    torch.Tensor.item, torch.Tensor.__bool__ = counted_item, counted_bool
    for _ in range(STEPS):
        trainer.train_step(batches)
    torch.Tensor.item, torch.Tensor.__bool__ = item, to_bool
    accelerator_type.synchronize = synchronize
    results.append({"counts": dict(counts), "ds_config": trainer.ds_config})
print(json.dumps(results))
"""
STEPS = 3
# (stage, grad_clip) -> host reads per step that DeepSpeed 0.19.8 makes and no config turns off: ZeRO 1/2 check the
# clip norm of each parameter group (weights with and without decay) with bool(); ZeRO-3 checks the global norm once.
RESIDUAL = {(1, 0.0): 0, (2, 0.0): 0, (2, 1.0): 2, (3, 1.0): 1}


@pytest.mark.distributed
def test_bf16_zero_steps_make_no_host_read_on_deepspeeds_path_beyond_its_clip_check(tmp_path):
    corpus = _corpus(tmp_path, 24, val_fraction=0.2)
    cases = [
        [
            f"data.corpus={corpus}",
            f"train.out_dir={tmp_path / f'run-{stage}-{clip}'}",
            "train.resume=none",
            "train.precision=bf16",
            "train.finite_check=lagged",  # the trainer's own check reads last step's flag, never this step's
            f"train.grad_clip={clip}",
            f"parallel.zero_stage={stage}",
            "data.micro_batch_cells=4",
            "data.block_cells=8",
        ]
        for stage, clip in RESIDUAL
    ]
    proc = subprocess.run(
        [sys.executable, "-c", COUNT_SCRIPT.replace("STEPS", str(STEPS)), str(DEBUG), json.dumps(cases)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (stage, clip), got in zip(RESIDUAL, results, strict=True):
        expected = {"bool": RESIDUAL[stage, clip] * STEPS} if RESIDUAL[stage, clip] else {}
        assert got["counts"] == expected, (stage, clip, got["counts"])  # no synchronize, no .item()
        assert got["ds_config"]["timers"]["throughput"]["enabled"] is False
        assert got["ds_config"]["bf16"]["check_grad_overflow"] is False
