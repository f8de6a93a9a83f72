"""`scgrn launch`: turn (nodes, GPUs per node, pretrain YAML, launcher) into the exact commands, the batch and memory
arithmetic, and a list of every problem, before any rank starts.

    plan = plan_launch(LaunchRequest(config=Path("launch/configs/pretrain/scbert-base.yaml"), nodes=4,
                                     gpus_per_node=8, launcher="slurm", dry_run=True))
    print(format_plan(plan))          # arithmetic + the sbatch script it would submit
    run_plan(plan)                    # one machine only: runs the command, returns its exit code

Every launcher ends in the same `python -m pretrain --config CFG key=value ...` on every rank (`pretrain/__main__.py`);
they differ only in how the ranks are started and find each other (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT). No DeepSpeed import here: the `deepspeed` launcher is run as an executable.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from launch.memory import (
    STATE_BYTES,
    ActivationEstimate,
    ModelStates,
    ParameterStats,
    activation_estimate,
    count_parameters,
    gib,
    model_states,
)
from launch.zero_config import REPO, ZeroSettings, read_zero_settings

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


# -- planning --------------------------------------------------------------------------------------------------------
def plan_launch(request: LaunchRequest, machine: Machine | None = None) -> LaunchPlan:
    """Resolve and check a launch request; raises LaunchError listing every problem found."""
    from pretrain.config import ConfigError, PretrainConfig

    machine = machine or detect_machine()
    r = request
    problems = _flag_problems(r)
    world = max(r.nodes, 0) * max(r.gpus_per_node, 0)
    try:
        cfg = PretrainConfig.load(r.config, r.overrides)
    except ConfigError as err:  # nothing below can be checked without the config
        raise LaunchError([*problems, *_problem_lines(str(err))]) from None
    zero, zero_problems = read_zero_settings(cfg, max(world, 1))
    problems += zero_problems
    vocab_size, vocab_source, manifest = _vocab(cfg, r.vocab_size)
    params = None
    try:
        params = count_parameters(cfg.family, cfg.model, vocab_size)
    except (ConfigError, ValueError) as err:
        problems += _problem_lines(str(err))
    if params is not None:
        problems += _partition_problems(params, zero)
    if manifest is not None and world >= 1:
        problems += _corpus_fits(cfg, manifest, world)
    if r.launcher == "deepspeed" and r.hostfile is not None:
        problems += _hostfile_fits(r.hostfile, r.nodes, r.gpus_per_node)
    elif r.hostfile is not None:
        problems.append(f"--hostfile is read by the deepspeed launcher only, not by --launcher {r.launcher}")
    accelerate_yaml = None
    if r.launcher == "accelerate":
        accelerate_yaml = r.accelerate_config or _default_accelerate_config(r.nodes, machine)
        if zero is not None:
            problems += _accelerate_fits(accelerate_yaml, cfg, zero, r.nodes, world)
    elif r.accelerate_config is not None:
        problems.append(f"--accelerate-config is read by --launcher accelerate only, not by {r.launcher}")
    if not r.dry_run and r.nodes == 1 and r.launcher != "slurm":
        problems += _fits_this_machine(r, cfg, zero, machine)
    if not r.dry_run and r.launcher == "slurm" and not machine.has_sbatch:
        problems.append("--launcher slurm: sbatch is not on PATH here; use --dry-run to print the script")
    if params is None or zero is None or world < 1:
        raise LaunchError(problems)

    plan = _estimate(r, machine, cfg, world, zero, params, vocab_size, vocab_source)
    if r.gpu_memory_gb is not None and r.gpu_memory_gb > 0 and plan.gpu_total > r.gpu_memory_gb * 2**30:
        problems.append(
            f"--gpu-memory-gb = {r.gpu_memory_gb}: the estimate per GPU is {gib(plan.gpu_total)} "
            f"(model states {gib(plan.states.gpu)} + activations {gib(plan.activations.bytes)}"
            + (f" + ZeRO-3 working set {gib(plan.zero3_gathered + plan.zero3_persistent)}" if zero.stage == 3 else "")
            + "); lower data.micro_batch_cells (raise train.grad_accum to keep the global batch), set "
            "model.activation_checkpointing=true, use a higher ZeRO stage or an offload JSON, or add GPUs"
        )
    if problems:
        raise LaunchError(problems)
    _add_commands(plan, accelerate_yaml)
    _add_notes(plan)
    return plan


def _flag_problems(r: LaunchRequest) -> list[str]:
    problems = []
    if r.nodes < 1:
        problems.append(f"--nodes = {r.nodes}: must be >= 1")
    if r.gpus_per_node < 1:
        problems.append(f"--gpus-per-node = {r.gpus_per_node}: must be >= 1 (GPUs per node; processes on CPU)")
    if r.launcher not in LAUNCHERS:
        problems.append(f"--launcher = {r.launcher!r}: must be one of {LAUNCHERS}")
    if r.gpu_memory_gb is not None and r.gpu_memory_gb <= 0:
        problems.append(f"--gpu-memory-gb = {r.gpu_memory_gb}: must be > 0 (GiB per GPU)")
    if r.vocab_size is not None and r.vocab_size < 5:
        problems.append(f"--vocab-size = {r.vocab_size}: must be >= 5 (4 special tokens + genes)")
    return problems


def _partition_problems(params: ParameterStats, zero: ZeroSettings | None) -> list[str]:
    """Parameters DeepSpeed cannot handle, and ZeRO-3 on a model it would not partition at all."""
    problems = []
    if params.zero_dim:
        problems.append(
            f"model: parameter(s) {list(params.zero_dim)} are 0-dim; DeepSpeed can neither broadcast nor partition "
            "them: give them shape (1,)"
        )
    if zero is not None and zero.stage == 3 and params.largest_numel <= zero.persistence_threshold:
        problems.append(
            f"ZeRO-3 cannot partition this model: its largest parameter ({params.largest_name}, "
            f"{params.largest_numel:,} elements) is within {zero.path.name}'s stage3_param_persistence_threshold "
            f"({zero.persistence_threshold:,}), so every tensor stays whole on every rank; use parallel.zero_stage=2 "
            "or lower the threshold"
        )
    return problems


def _estimate(
    r: LaunchRequest,
    machine: Machine,
    cfg: PretrainConfig,
    world: int,
    zero: ZeroSettings,
    params: ParameterStats,
    vocab_size: int,
    vocab_source: str,
) -> LaunchPlan:
    """The plan with its arithmetic: global batch, ZeRO model states, ZeRO-3 working set, activations."""
    from pretrain.model_factory import model_config

    param_bytes = STATE_BYTES[cfg.train.precision][0]
    states = model_states(
        params.total,
        zero.stage,
        world,
        cfg.train.precision,
        offload_optimizer=zero.offload_optimizer != "none",
        offload_params=zero.offload_params != "none",
    )
    gathered = persistent = 0.0
    if zero.stage == 3:
        gathered = param_bytes * params.largest_numel
        persistent = param_bytes * params.persistent_numel(zero.persistence_threshold)
    model = model_config(cfg.family, cfg.model, vocab_size)
    return LaunchPlan(
        request=r,
        machine=machine,
        cfg=cfg,
        world_size=world,
        global_batch=world * cfg.data.micro_batch_cells * cfg.train.grad_accum,
        zero=zero,
        params=params,
        vocab_size=vocab_size,
        vocab_source=vocab_source,
        states=states,
        zero3_gathered=gathered,
        zero3_persistent=persistent,
        activations=activation_estimate(cfg.family, model, cfg.data.micro_batch_cells, cfg.train.precision),
    )


def _problem_lines(message: str) -> list[str]:
    """A ConfigError's items ('  - x' or indented lines under a heading) as separate problems."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) == 1:
        return lines
    prefix = "model: " if lines[0].startswith("model") else ""
    return [prefix + line.strip().removeprefix("- ") for line in lines[1:]]


def _vocab(cfg, given: int | None) -> tuple[int, str, dict | None]:
    manifest = None
    path = Path(cfg.data.corpus) / "manifest.json" if cfg.data.corpus else None
    if path is not None and path.exists():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            manifest = None
    if given is not None:
        return given, "from --vocab-size", manifest
    if manifest is not None:
        return int(manifest["vocab"]["size"]), f"from {path}", manifest
    return ASSUMED_VOCAB_SIZE, f"ASSUMED: no corpus at data.corpus={cfg.data.corpus!r} here; pass --vocab-size", None


def _corpus_fits(cfg, manifest: dict, world: int) -> list[str]:
    """Every rank must get read units: the loader deals corpus units round-robin to ranks x loader workers
    (data_prep/loader.py), so a rank whose consumers all come after the last unit gets no cells and stops the run."""
    d = cfg.data
    fmt = "zarr" if "zarr" in manifest.get("formats", []) else (manifest.get("formats") or ["zarr"])[0]
    if fmt == "zarr":
        units = sum(math.ceil(s["n_cells"] / d.block_cells) for s in manifest["shards"])
    else:
        units = sum(int(s["files"]["webdataset"].get("n_samples", 1)) for s in manifest["shards"])
    workers = max(1, d.num_workers)
    ranks_with_data = math.ceil(units / workers)
    if ranks_with_data >= world:
        return []
    n_cells = int(manifest["totals"]["n_cells"])
    fix = f"lower data.block_cells to <= {max(1, n_cells // (world * workers))}" if fmt == "zarr" else "reshard"
    return [
        f"data.corpus = {d.corpus!r}: {len(manifest['shards'])} shard(s) of {n_cells:,} cells give {units} read "
        f"unit(s) "
        f"(data.block_cells = {d.block_cells}, {fmt}), dealt to world_size({world}) x max(1, data.num_workers"
        f"({d.num_workers})) = {world * workers} loader consumers; ranks {ranks_with_data}..{world - 1} would get no "
        f"cells. Fix: {fix}, lower data.num_workers, or use fewer ranks"
    ]


def _hostfile_fits(hostfile: Path, nodes: int, gpus: int) -> list[str]:
    if not hostfile.exists():
        return [f"--hostfile {hostfile}: no such file"]
    hosts, problems = parse_hostfile(hostfile)
    if len(hosts) < nodes:
        problems.append(f"--hostfile {hostfile} lists {len(hosts)} host(s); --nodes = {nodes} needs {nodes}")
    for host, slots in list(hosts.items())[:nodes]:
        if slots < gpus:
            problems.append(f"--hostfile {hostfile}: {host} has slots={slots} < --gpus-per-node = {gpus}")
    return problems


def parse_hostfile(hostfile: Path) -> tuple[dict[str, int], list[str]]:
    """DeepSpeed's hostfile rules (deepspeed/launcher/runner.py): `hostname slots=N` lines, `#` comment lines."""
    hosts: dict[str, int] = {}
    problems = []
    for number, line in enumerate(hostfile.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = re.match(r"(\S+)\s+slots=(\d+)", text)
        if not match:
            problems.append(f"--hostfile {hostfile}:{number}: {line!r} is not 'hostname slots=N'")
        elif match.group(1) in hosts:
            problems.append(f"--hostfile {hostfile}:{number}: {match.group(1)} is listed twice")
        else:
            hosts[match.group(1)] = int(match.group(2))
    return hosts, problems


def _default_accelerate_config(nodes: int, machine: Machine) -> Path:
    if nodes > 1:
        return ACCELERATE_DIR / "zero2-multinode.yaml"
    return ACCELERATE_DIR / ("zero2-1node.yaml" if machine.cuda_devices else "cpu-2proc.yaml")


def _accelerate_fits(path: Path, cfg, zero: ZeroSettings, nodes: int, world: int) -> list[str]:
    """The accelerate YAML must describe the same run: our pretrain reads only the env vars accelerate sets, so a
    YAML that says another world size, ZeRO stage, offload or precision would be silently wrong."""
    name = f"--accelerate-config {_display_path(path)}"
    if not path.exists():
        return [f"{name}: no such file (shipped ones: launch/configs/accelerate/*.yaml)"]
    try:
        acc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        return [f"{name}: not valid YAML ({err})"]
    problems = []
    if acc.get("distributed_type") != "DEEPSPEED":
        problems.append(f"{name}: distributed_type = {acc.get('distributed_type')!r}; must be DEEPSPEED")
    machines, processes = acc.get("num_machines", 1), acc.get("num_processes")
    if machines != nodes:
        problems.append(f"{name}: num_machines = {machines} but --nodes = {nodes}; copy it and set num_machines")
    if processes != world:
        problems.append(
            f"{name}: num_processes = {processes} but --nodes({nodes}) x --gpus-per-node = {world}; accelerate "
            f"counts processes over all machines: set num_processes: {world}"
        )
    ds = acc.get("deepspeed_config") or {}
    stage = ds.get("zero_stage")
    offload_opt, offload_par = ds.get("offload_optimizer_device"), ds.get("offload_param_device")
    if ds.get("deepspeed_config_file"):
        ds_file = Path(ds["deepspeed_config_file"])
        ds_file = ds_file if ds_file.exists() or ds_file.is_absolute() else REPO / ds_file
        try:
            zero_section = json.loads(ds_file.read_text()).get("zero_optimization", {})
        except (OSError, json.JSONDecodeError) as err:
            return [*problems, f"{name}: deepspeed_config_file {ds_file}: cannot read ({err})"]
        stage = zero_section.get("stage")
        offload_opt = (zero_section.get("offload_optimizer") or {}).get("device", "none")
        offload_par = (zero_section.get("offload_param") or {}).get("device", "none")
    if stage is not None and stage != zero.stage:
        problems.append(
            f"{name}: ZeRO stage {stage} but the pretrain config runs stage {zero.stage} ({zero.path.name}); use a "
            "YAML whose deepspeed_config matches"
        )
    for what, theirs, ours in (
        ("offload_optimizer", offload_opt, zero.offload_optimizer),
        ("offload_param", offload_par, zero.offload_params),
    ):
        if theirs is not None and str(theirs).lower() != ours:
            problems.append(f"{name}: {what} device {theirs!r} but {zero.path.name} says {ours!r}")
    mixed = str(acc.get("mixed_precision", "no")).lower()
    want = "bf16" if cfg.train.precision == "bf16" else "no"
    if mixed != want:
        problems.append(
            f"{name}: mixed_precision = {mixed!r} but train.precision = {cfg.train.precision!r}; set "
            f"mixed_precision: {want!r}"
        )
    if nodes > 1 and ds.get("deepspeed_multinode_launcher", "pdsh") != "standard":
        problems.append(
            f"{name}: multi-node runs are printed as one `accelerate launch` per node, which needs "
            "deepspeed_config.deepspeed_multinode_launcher: standard (as zero2-multinode.yaml)"
        )
    return problems


def _fits_this_machine(r: LaunchRequest, cfg, zero: ZeroSettings | None, machine: Machine) -> list[str]:
    """Checks for a real run on this machine (nodes == 1, no --dry-run)."""
    problems = []
    if machine.cuda_devices and r.gpus_per_node > machine.cuda_devices:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        problems.append(
            f"--gpus-per-node = {r.gpus_per_node}: only {machine.cuda_devices} CUDA GPU(s) visible here"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + f"; use --gpus-per-node <= {machine.cuda_devices}, or --dry-run to print the commands for elsewhere"
        )
    if not machine.cuda_devices:
        if zero is not None and "cpu" in (zero.offload_optimizer, zero.offload_params):
            problems.append(
                f"{zero.path.name} offloads to CPU, which needs a CUDA GPU to offload from (this machine has none); "
                f"use zero{zero.stage}.json on CPU, or --dry-run"
            )
        if cfg.train.optimizer == "fused_adam":
            problems.append("train.optimizer = 'fused_adam' needs a CUDA GPU (none here); use train.optimizer=adamw")
    launcher_exe = {"deepspeed": "deepspeed", "torchrun": "torchrun", "accelerate": "accelerate"}.get(r.launcher)
    if launcher_exe and not _find_executable(launcher_exe):
        problems.append(f"--launcher {r.launcher}: `{launcher_exe}` is not installed in this environment")
    return problems


def _find_executable(name: str) -> str | None:
    venv_bin = Path(sys.executable).parent / name
    return str(venv_bin) if venv_bin.exists() else shutil.which(name)


# -- commands --------------------------------------------------------------------------------------------------------
def _pretrain_args(r: LaunchRequest) -> list[str]:
    return ["--config", str(r.config), *r.overrides]


def _add_commands(plan: LaunchPlan, accelerate_yaml: Path | None) -> None:
    r = plan.request
    n, g = r.nodes, r.gpus_per_node
    local = plan.local
    port = r.master_port or (free_port() if local else DEFAULT_PORT)
    addr = r.master_addr or ("127.0.0.1" if n == 1 else "$MASTER_ADDR")
    env = {}
    if local and not plan.machine.cuda_devices and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, plan.machine.cpu_count // g))  # g CPU ranks share the cores
    tail = _pretrain_args(r)
    if r.launcher == "deepspeed":
        _deepspeed_commands(plan, addr, port, env, tail)
    elif r.launcher == "torchrun":
        if n == 1:
            argv = ["torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", str(g), "-m", "pretrain", *tail]
            plan.commands.append(Command("this machine", argv, env))
        else:
            argv = [
                "torchrun",
                "--nnodes",
                str(n),
                "--nproc_per_node",
                str(g),
                "--rdzv_id",
                _job_name(r),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"{addr}:{port}",
                "-m",
                "pretrain",
                *tail,
            ]
            plan.commands.append(Command(f"every node (all {n}, the same command)", argv))
    elif r.launcher == "accelerate":
        base = ["accelerate", "launch", "--config_file", _display_path(accelerate_yaml)]
        if n == 1:
            argv = [*base, "--main_process_port", str(port), "-m", "pretrain", *tail]
            plan.commands.append(Command("this machine", argv, env))
        for rank in range(n if n > 1 else 0):
            argv = [
                *base,
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                addr,
                "--main_process_port",
                str(port),
                "-m",
                "pretrain",
                *tail,
            ]
            plan.commands.append(Command(f"node {rank}", argv))
    else:
        script = render_sbatch(plan, port)
        out = r.sbatch_out or Path(plan.cfg.train.out_dir) / "launch.sbatch"
        plan.files.append((str(out), script))
        plan.commands.append(Command("a SLURM login node", ["sbatch", str(out)]))


def _deepspeed_commands(plan: LaunchPlan, addr: str, port: int, env: dict, tail: list[str]) -> None:
    r = plan.request
    n, g = r.nodes, r.gpus_per_node
    module = ["--module", "pretrain", *tail]
    if r.hostfile is None and n == 1:
        # --num_gpus is required on CPU (DeepSpeed's CPU accelerator reports no devices to count)
        plan.commands.append(
            Command("this machine", ["deepspeed", "--num_gpus", str(g), "--master_port", str(port), *module], env)
        )
        return
    hostfile = r.hostfile
    if hostfile is None:
        hostfile = Path("hostfile")
        plan.files.append(("hostfile", "".join(f"node-{i} slots={g}\n" for i in range(n))))
        plan.notes.append("hostfile: write it with your node names (one `host slots=N` line per node)")
        hosts = {f"node-{i}": g for i in range(n)}
    else:
        hosts, _ = parse_hostfile(hostfile)
    used = list(hosts)[:n]
    argv = ["deepspeed", "--hostfile", str(hostfile), "--num_nodes", str(n), "--num_gpus", str(g)]
    if used and all(h in LOCAL_HOSTS for h in used):
        # One local host: DeepSpeed would still ssh to it to check and to ask its address; skip both.
        argv += ["--no_ssh_check", "--master_addr", "127.0.0.1"]
    else:
        argv += ["--master_addr", r.master_addr or (used[0] if used else addr)]
    argv += ["--master_port", str(port), *module]
    where = "this machine" if n == 1 else "node 0 (pdsh/ssh start the ranks on every host of the hostfile)"
    plan.commands.append(Command(where, argv, env if n == 1 else {}))
    if n > 1:
        plan.notes.append(
            "without pdsh/passwordless ssh: run the same command on node i with `--no_ssh --node_rank i` added"
        )


def _job_name(r: LaunchRequest) -> str:
    return r.job_name or f"scgrn-{Path(r.config).stem}"


def _display_path(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def render_sbatch(plan: LaunchPlan, port: int) -> str:
    """The filled-in SLURM script: one task per node (srun), each running torchrun over the node's GPUs, joined by
    c10d rendezvous on the allocation's first host (as launch/recipes/slurm/pretrain.sbatch, with values inlined)."""
    r = plan.request
    n, g = r.nodes, r.gpus_per_node
    header = [
        f"--job-name={_job_name(r)}",
        f"--nodes={n}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={g}",
        f"--time={r.time}",
        "--output=%x-%j.out",
    ]
    header += [f"--partition={r.partition}"] if r.partition else []
    header += [f"--account={r.account}"] if r.account else []
    torchrun = shell_join(
        [
            "torchrun",
            "--nnodes",
            str(n),
            "--nproc_per_node",
            str(g),
            "--rdzv_id",
            "$SLURM_JOB_ID",
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            "$MASTER_ADDR:$MASTER_PORT",
            "-m",
            "pretrain",
            *_pretrain_args(r),
        ]
    )
    lines = [
        "#!/bin/bash",
        f"# Written by `scgrn launch --launcher slurm`: {n} node(s) x {g} GPU(s) = {plan.world_size} ranks,",
        f"# global batch {plan.global_batch} cells per optimizer step. Submit with: sbatch THIS_FILE [key=value ...]",
        "# (extra arguments are appended to the pretrain overrides).",
        *(f"#SBATCH {h}" for h in header),
        "set -euo pipefail",
        "",
        f"cd {shlex.quote(str(Path.cwd()))}  # config and corpus paths are relative to the repo",
        "if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi",
        "# The allocation's first host runs the c10d rendezvous every node's torchrun joins.",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MASTER_PORT={port}",
        "export MASTER_ADDR MASTER_PORT",
        "",
        "# One task per node (srun); torchrun starts the node's ranks and sets RANK / LOCAL_RANK / WORLD_SIZE.",
        f'srun --ntasks-per-node=1 --kill-on-bad-exit=1 {torchrun} "$@"',
        "",
    ]
    return "\n".join(lines)


def _add_notes(plan: LaunchPlan) -> None:
    r, z = plan.request, plan.zero
    if not plan.machine.cuda_devices and plan.local:
        plan.notes.append(
            "no CUDA GPU on this machine: --gpus-per-node counts CPU processes (gloo); the memory figures are per "
            "process, in CPU RAM"
        )
    if z.stage == 3 and plan.world_size == 1:
        plan.notes.append("ZeRO-3 over 1 rank partitions nothing: the memory of stage 0 plus gather overhead")
    if z.offload_optimizer != "none" or z.offload_params != "none":
        plan.notes.append(
            f"{z.path.name} needs a CUDA GPU; its optimizer step runs torch AdamW on the CPU (no CPUAdam JIT build)"
        )
    if r.nodes > 1 and r.launcher in ("torchrun", "accelerate") and r.master_addr is None:
        plan.notes.append("set MASTER_ADDR to node 0's address on every node before running the command")


# -- output ----------------------------------------------------------------------------------------------------------
def format_plan(plan: LaunchPlan) -> str:
    r, cfg, z = plan.request, plan.cfg, plan.zero
    d, t = cfg.data, cfg.train
    n, g, w = r.nodes, r.gpus_per_node, plan.world_size
    p, gr, k = STATE_BYTES[t.precision]
    st = plan.states
    unit = "GPU" if plan.machine.cuda_devices or not plan.local else "process"
    units = {"GPU": "GPUs", "process": "processes"}[unit]
    offload = []
    if z.offload_optimizer != "none":
        offload.append(f"optimizer states -> {z.offload_optimizer}")
    if z.offload_params != "none":
        offload.append(f"parameters -> {z.offload_params}")
    partitioned = {
        0: "nothing partitioned (plain data parallel)",
        1: "optimizer states partitioned",
        2: "optimizer states + gradients partitioned",
        3: "optimizer states + gradients + parameters partitioned",
    }[z.stage]
    mixed = "bf16 mixed-precision" if t.precision == "bf16" else "fp32"
    rows = [
        f"scgrn launch: {n} node(s) x {g} {units}, launcher {r.launcher}, config {r.config}"
        + (f" + {len(r.overrides)} override(s)" if r.overrides else ""),
        "",
        "Batch",
        f"  world size                {n} node(s) x {g} {units}/node = {w} ranks",
        f"  per-rank micro batch      {d.micro_batch_cells} cells (data.micro_batch_cells)",
        f"  gradient accumulation     {t.grad_accum} (train.grad_accum)",
        f"  global batch              {w} x {d.micro_batch_cells} x {t.grad_accum} = {plan.global_batch} cells per "
        "optimizer step",
        "",
        "ZeRO",
        f"  DeepSpeed JSON            {_display_path(z.path)}",
        f"  stage                     {z.stage}: {partitioned} over Nd = {w} ranks",
        f"  offload                   {', '.join(offload) if offload else 'none'}",
        "",
        f"Model states per {unit} (ZeRO paper, Rajbhandari et al. 2020; {mixed} Adam, {p} + {gr} + {k} bytes/param)",
        f"  parameters Ψ              {plan.params.total:,} ({cfg.family}; vocab_size {plan.vocab_size:,} "
        f"{plan.vocab_source})",
        f"  formula                   {st.formula}, Nd = {w}",
        f"  params/grads/optimizer    {gib(st.gpu_params)} / {gib(st.gpu_grads)} / {gib(st.gpu_optimizer)}",
        f"  model states              {gib(st.gpu)} per {unit}",
    ]
    if z.stage == 3:
        rows += [
            f"  + ZeRO-3 working set      {gib(plan.zero3_gathered + plan.zero3_persistent)}: the largest tensor "
            f"gathered whole ({plan.params.largest_name}, {plan.params.largest_numel:,}) + tensors <= "
            f"stage3_param_persistence_threshold ({z.persistence_threshold:,}) kept whole",
        ]
    if st.cpu:
        rows += [
            f"  CPU RAM (offload)         {gib(st.cpu)} per rank, {gib(st.cpu * g)} per node ({g} ranks; pinned)",
        ]
    else:
        rows += ["  CPU RAM (offload)         none"]
    rows += [
        "",
        "Activations per " + unit + " (come ON TOP of the model states; an ESTIMATE, every cell at max_genes tokens)",
        f"  {plan.activations.formula}",
        f"  = {gib(plan.activations.bytes)}  (Korthikanti et al. 2022: ~34 bytes/token/width/layer in bf16, 66 in "
        "fp32; with activation checkpointing, layer inputs + one recomputed layer)",
        "",
        f"Total per {unit} (estimate)  {gib(plan.gpu_total)}"
        + (f"  (budget --gpu-memory-gb {r.gpu_memory_gb:g} GiB: fits)" if r.gpu_memory_gb else ""),
    ]
    for name, content in plan.files:
        rows += ["", f"File {name}:", *("  " + line if line else "" for line in content.splitlines())]
    rows += ["", "Command(s)"]
    rows += [f"  # on {c.where}\n  {c.text()}" for c in plan.commands]
    if plan.notes:
        rows += ["", "Notes", *(f"  - {note}" for note in plan.notes)]
    return "\n".join(rows)


def run_plan(plan: LaunchPlan) -> int:
    """Run the plan's command on this machine (nodes == 1) or submit the SLURM script; returns the exit code."""
    r = plan.request
    if r.nodes > 1 and r.launcher != "slurm":
        msg = (
            f"--nodes = {r.nodes} without --dry-run: scgrn launch starts ranks on this machine only. Run the printed "
            "command(s) on each node, or use --launcher slurm (the sbatch script)."
        )
        raise LaunchError([msg])
    for name, content in plan.files:
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    code = 0
    for command in plan.commands:
        code = subprocess.run(command.argv, env={**env, **command.env}, check=False).returncode
        if code:
            break
    return code
