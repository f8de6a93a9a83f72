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

from typing import TYPE_CHECKING

from launch.memory import (
    STATE_BYTES,
    ParameterStats,
    activation_estimate,
    count_parameters,
    gib,
    model_states,
)
from launch.zero_config import ZeroSettings, read_zero_settings

if TYPE_CHECKING:
    from pretrain.config import PretrainConfig

from launch.launch_checks import (
    accelerate_fits,
    corpus_fits,
    default_accelerate_config,
    fits_this_machine,
    flag_problems,
    hostfile_fits,
    partition_problems,
    problem_lines,
    resolve_vocab,
)
from launch.launch_commands import add_commands, add_notes, format_plan, render_sbatch, run_plan
from launch.launch_types import LAUNCHERS, LaunchError, LaunchPlan, LaunchRequest, Machine, detect_machine

__all__ = ["LAUNCHERS", "LaunchError", "LaunchPlan", "LaunchRequest", "Machine", "format_plan", "plan_launch",
           "render_sbatch", "run_plan"]  # fmt: skip


# -- planning --------------------------------------------------------------------------------------------------------
def plan_launch(request: LaunchRequest, machine: Machine | None = None) -> LaunchPlan:
    """Resolve and check a launch request; raises LaunchError listing every problem found."""
    from pretrain.config import ConfigError, PretrainConfig

    machine = machine or detect_machine()
    r = request
    problems = flag_problems(r)
    world = max(r.nodes, 0) * max(r.gpus_per_node, 0)
    try:
        cfg = PretrainConfig.load(r.config, r.overrides)
    except ConfigError as err:  # nothing below can be checked without the config
        raise LaunchError([*problems, *problem_lines(str(err))]) from None
    zero, zero_problems = read_zero_settings(cfg, max(world, 1))
    problems += zero_problems
    vocab_size, vocab_source, manifest = resolve_vocab(cfg, r.vocab_size)
    params = None
    try:
        params = count_parameters(cfg.family, cfg.model, vocab_size)
    except (ConfigError, ValueError) as err:
        problems += problem_lines(str(err))
    if params is not None:
        problems += partition_problems(params, zero)
    if manifest is not None and world >= 1:
        problems += corpus_fits(cfg, manifest, world)
    if r.launcher == "deepspeed" and r.hostfile is not None:
        problems += hostfile_fits(r.hostfile, r.nodes, r.gpus_per_node)
    elif r.hostfile is not None:
        problems.append(f"--hostfile is read by the deepspeed launcher only, not by --launcher {r.launcher}")
    accelerate_yaml = None
    if r.launcher == "accelerate":
        accelerate_yaml = r.accelerate_config or default_accelerate_config(r.nodes, machine)
        if zero is not None:
            problems += accelerate_fits(accelerate_yaml, cfg, zero, r.nodes, world)
    elif r.accelerate_config is not None:
        problems.append(f"--accelerate-config is read by --launcher accelerate only, not by {r.launcher}")
    if not r.dry_run and r.nodes == 1 and r.launcher != "slurm":
        problems += fits_this_machine(r, cfg, zero, machine)
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
    add_commands(plan, accelerate_yaml)
    add_notes(plan)
    return plan


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
