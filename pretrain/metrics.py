"""One way to log: TensorBoard scalars + tqdm on rank 0; nothing on the other ranks."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from tqdm import tqdm


class MetricsLogger:
    def __init__(self, run_dir: Path, rank: int, total_steps: int, initial_step: int = 0) -> None:
        self.enabled = rank == 0
        self.writer = None
        self.bar = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            self.bar = tqdm(total=total_steps, initial=initial_step, desc="pretrain", unit="step")
        self._t0 = time.perf_counter()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.bar.set_postfix(
            {k.split("/")[-1]: f"{v:.4g}" for k, v in values.items() if k.startswith(("train/loss", "val"))}
        )

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.enabled:
            self.writer.flush()
            self.writer.close()
            self.bar.close()


def memory_gb(device: torch.device) -> float:
    """Peak memory of this rank: accelerator memory on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
