"""`scgrn launch`'s vocabulary: the request, the machine, the plan and its commands (shared by launcher.py,
launch_checks.py and launch_commands.py)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from launch.memory import (
    ActivationEstimate,
    ModelStates,
    ParameterStats,
)
from launch.zero_config import REPO, ZeroSettings

if TYPE_CHECKING:
    from pretrain.config import PretrainConfig


LAUNCHERS = ("deepspeed", "torchrun", "slurm", "accelerate")
ACCELERATE_DIR = REPO / "launch" / "configs" / "accelerate"
DEFAULT_PORT = 29500
ASSUMED_VOCAB_SIZE = 60_000  # human + mouse genes, about scGPT's 60,697-token vocabulary
LOCAL_HOSTS = ("localhost", "127.0.0.1", socket.gethostname())


class LaunchError(ValueError):
    """Every problem with a launch request, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        n = len(problems)
        super().__init__(f"{n} problem{'s' * (n > 1)}:\n  - " + "\n  - ".join(problems))


@dataclass
class LaunchRequest:
    """What `scgrn launch` was asked for (its flags, one field each)."""

    config: Path  # pretrain YAML
    nodes: int = 1
    gpus_per_node: int = 1  # on a machine without CUDA: processes
    launcher: str = "deepspeed"  # one of LAUNCHERS
    overrides: list[str] = field(default_factory=list)  # pretrain key=value overrides
    dry_run: bool = False
    hostfile: Path | None = None  # deepspeed: `host slots=N` lines
    master_addr: str | None = None  # node 0's address (default: 127.0.0.1 on one node, else $MASTER_ADDR)
    master_port: int | None = None  # default: a free port on one node, else 29500
    accelerate_config: Path | None = None  # default: launch/configs/accelerate/{cpu-2proc,zero2-1node,...}.yaml
    gpu_memory_gb: float | None = None  # refuse a per-GPU estimate above this many GiB
    vocab_size: int | None = None  # default: the corpus manifest's, else ASSUMED_VOCAB_SIZE
    job_name: str | None = None  # slurm
    time: str = "24:00:00"  # slurm
    partition: str | None = None  # slurm
    account: str | None = None  # slurm
    sbatch_out: Path | None = None  # slurm: where the script is written (default RUN_DIR/launch.sbatch)


@dataclass(frozen=True)
class Machine:
    """The machine `scgrn launch` runs on (detected; tests pass their own)."""

    cuda_devices: int  # 0: no CUDA, --gpus-per-node counts processes
    cpu_count: int
    has_sbatch: bool


def detect_machine() -> Machine:
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Machine(cuda_devices=cuda, cpu_count=os.cpu_count() or 1, has_sbatch=shutil.which("sbatch") is not None)


@dataclass
class Command:
    where: str  # "this machine", "node 0 (starts the others over ssh)", "every node", "node 2", ...
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set for the command (printed as a prefix)

    def text(self) -> str:
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in self.env.items())
        return prefix + shell_join(self.argv)


@dataclass
class LaunchPlan:
    request: LaunchRequest
    machine: Machine
    cfg: PretrainConfig
    world_size: int
    global_batch: int
    zero: ZeroSettings
    params: ParameterStats
    vocab_size: int
    vocab_source: str
    states: ModelStates
    zero3_gathered: float  # bytes: the largest tensor, gathered whole while its module runs
    zero3_persistent: float  # bytes: tensors under stage3_param_persistence_threshold, never partitioned
    activations: ActivationEstimate
    commands: list[Command] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)  # (name, content) to write before running
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_total(self) -> float:
        return self.states.gpu + self.zero3_gathered + self.zero3_persistent + self.activations.bytes

    @property
    def local(self) -> bool:
        """Runs on this machine: one node, and not a job handed to SLURM."""
        return self.request.nodes == 1 and self.request.launcher != "slurm"


def shell_join(argv: list[str]) -> str:
    """shlex.join, except that `$VAR` references (e.g. "$MASTER_ADDR:29500") stay expandable."""
    return " ".join(f'"{a}"' if "$" in a and re.fullmatch(r"[\w.:/${}-]+", a) else shlex.quote(a) for a in argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_executable(name: str) -> str | None:
    venv_bin = Path(sys.executable).parent / name
    return str(venv_bin) if venv_bin.exists() else shutil.which(name)


# -- commands --------------------------------------------------------------------------------------------------------


def display_path(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
