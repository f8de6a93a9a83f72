"""DeepSpeed settings that keep the host from waiting on the device during a training step.

The trainer's own step reads no device value (`tests/pretrain/test_host_sync.py`). DeepSpeed's defaults add reads:
- its throughput timer (`timers.throughput`, on by default) calls `synchronize()` at the start of every forward
  and the end of every step, even when nothing prints its figures;
- in bf16, `bf16.check_grad_overflow` (true by default) reads an overflow flag with `.item()` and the gradient
  norm with `bool()` every step. The trainer's finite-loss check (`train.finite_check`) already stops a run whose
  loss is not finite, before the update or one step later.
Both are turned off here where the DeepSpeed JSON leaves them out; a value the JSON sets is kept.
`tests/pretrain/test_engine_syncs.py` counts the calls.
"""

from __future__ import annotations


def fill_step_settings(ds: dict, precision: str) -> None:
    """Set the throughput timer off and, in bf16, the gradient-overflow check off, unless `ds` sets them."""
    ds.setdefault("timers", {}).setdefault("throughput", {}).setdefault("enabled", False)
    if precision == "bf16":
        ds.setdefault("bf16", {}).setdefault("check_grad_overflow", False)
