"""`scgrn launch`'s refusals: every check of a launch request against its flags, the pretrain config, the corpus,
the hostfile, an accelerate YAML and this machine. Each returns a list of problems (empty = fine)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from launch.memory import (
    ParameterStats,
)
from launch.zero_config import REPO, ZeroSettings

if TYPE_CHECKING:
    pass

from launch.launch_types import (
    ACCELERATE_DIR,
    ASSUMED_VOCAB_SIZE,
    LAUNCHERS,
    LaunchRequest,
    Machine,
    display_path,
    find_executable,
)


def flag_problems(r: LaunchRequest) -> list[str]:
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


def partition_problems(params: ParameterStats, zero: ZeroSettings | None) -> list[str]:
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


def problem_lines(message: str) -> list[str]:
    """A ConfigError's items ('  - x' or indented lines under a heading) as separate problems."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) == 1:
        return lines
    prefix = "model: " if lines[0].startswith("model") else ""
    return [prefix + line.strip().removeprefix("- ") for line in lines[1:]]


def resolve_vocab(cfg, given: int | None) -> tuple[int, str, dict | None]:
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


def corpus_fits(cfg, manifest: dict, world: int) -> list[str]:
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


def hostfile_fits(hostfile: Path, nodes: int, gpus: int) -> list[str]:
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


def default_accelerate_config(nodes: int, machine: Machine) -> Path:
    if nodes > 1:
        return ACCELERATE_DIR / "zero2-multinode.yaml"
    return ACCELERATE_DIR / ("zero2-1node.yaml" if machine.cuda_devices else "cpu-2proc.yaml")


def accelerate_fits(path: Path, cfg, zero: ZeroSettings, nodes: int, world: int) -> list[str]:
    """The accelerate YAML must describe the same run: our pretrain reads only the env vars accelerate sets, so a
    YAML that says another world size, ZeRO stage, offload or precision would be silently wrong."""
    name = f"--accelerate-config {display_path(path)}"
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


def fits_this_machine(r: LaunchRequest, cfg, zero: ZeroSettings | None, machine: Machine) -> list[str]:
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
    if launcher_exe and not find_executable(launcher_exe):
        problems.append(f"--launcher {r.launcher}: `{launcher_exe}` is not installed in this environment")
    return problems
