"""`scgrn launch`'s output: the exact launcher commands, the filled-in sbatch script, the printed plan, and running
it on one machine."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launch.memory import (
    STATE_BYTES,
    gib,
)

if TYPE_CHECKING:
    pass

from launch.launch_checks import parse_hostfile
from launch.launch_types import (
    DEFAULT_PORT,
    LOCAL_HOSTS,
    Command,
    LaunchError,
    LaunchPlan,
    LaunchRequest,
    display_path,
    free_port,
    shell_join,
)


def _pretrain_args(r: LaunchRequest) -> list[str]:
    return ["--config", str(r.config), *r.overrides]


def add_commands(plan: LaunchPlan, accelerate_yaml: Path | None) -> None:
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
        base = ["accelerate", "launch", "--config_file", display_path(accelerate_yaml)]
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


def add_notes(plan: LaunchPlan) -> None:
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
        f"  DeepSpeed JSON            {display_path(z.path)}",
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
    from pretrain.console import quiet_env

    env = quiet_env({**os.environ, "PYTHONUNBUFFERED": "1"})  # no "found no GPU" warning from each process on CPU
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    code = 0
    for command in plan.commands:
        code = subprocess.run(command.argv, env={**env, **command.env}, check=False).returncode
        if code:
            break
    return code
