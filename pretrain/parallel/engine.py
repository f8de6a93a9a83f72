"""DeepSpeed, in one place: process group, the DeepSpeed config, the engine, checkpoints, ZeRO consolidation.

Model and data code never see DeepSpeed (torchtitan's split: model.py is single-device, parallelize.py wraps it).
Everything here works on CPU (gloo, DeepSpeed's CPU accelerator) and on GPU (nccl).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from pathlib import Path

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator

from pretrain.config import ConfigError, PretrainConfig
from pretrain.console import tame_deepspeed_logger
from pretrain.parallel.step_settings import fill_step_settings

log = logging.getLogger("scgrn.pretrain")
tame_deepspeed_logger()  # its INFO lines to the run's log when `console.quiet_console` set one up, else unchanged
REPO = Path(__file__).resolve().parents[2]
DS_CONFIG_DIR = REPO / "launch" / "configs" / "deepspeed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """Join (or, without a launcher, create) the process group; returns (rank, world_size, local_rank).

    `deepspeed`, `torchrun` and `accelerate launch` set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; a plain
    `scgrn pretrain` is one process, for which they are filled in here.
    """
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        # DeepSpeed JIT-compiles a shared-memory all-reduce op (~45 s on a fresh machine) that only its inference
        # path uses; training's collectives go through torch.distributed (gloo), so skip that build.
        builder = accelerator.create_op_builder("ShareMemCommBuilder")
        if builder is not None:
            deepspeed.ops.__compatible_ops__[builder.NAME] = False
    backend = "gloo" if accelerator.device_name() == "cpu" else accelerator.communication_backend_name()
    deepspeed.init_distributed(dist_backend=backend)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def device_for(local_rank: int) -> torch.device:
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return torch.device("cpu")
    accelerator.set_device(local_rank)
    return torch.device(accelerator.device_name(), local_rank)


def build_ds_config(cfg: PretrainConfig, world_size: int) -> dict:
    """Our typed config + the ZeRO JSON -> the DeepSpeed config. Every conflict is reported at once."""
    path = Path(cfg.parallel.deepspeed_config or DS_CONFIG_DIR / f"zero{cfg.parallel.zero_stage}.json")
    if not path.is_absolute() and not path.exists():
        path = REPO / path
    if not path.exists():
        msg = f"parallel.deepspeed_config = {str(path)!r}: no such file."
        raise ConfigError(msg)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        msg = f"{path}: not valid JSON ({err})."
        raise ConfigError(msg) from None
    t, p = cfg.train, cfg.parallel
    micro, accum = cfg.data.micro_batch_cells, t.grad_accum
    derived = world_size * micro * accum
    problems = []
    if p.train_batch_size and p.train_batch_size != derived:
        problems.append(
            f"world_size({world_size}) x data.micro_batch_cells({micro}) x train.grad_accum({accum}) = {derived} "
            f"!= parallel.train_batch_size({p.train_batch_size}); change one of them"
        )
    ours = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": derived,
        "gradient_clipping": t.grad_clip,
    }
    for key, value in ours.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            problems.append(
                f'{path.name}: {key} = {given!r} contradicts the scgrn config ({value!r}); set it to "auto"'
            )
        ds[key] = value
    bf16 = ds.setdefault("bf16", {}).get("enabled", "auto")
    want_bf16 = t.precision == "bf16"
    if bf16 != "auto" and bool(bf16) != want_bf16:
        problems.append(f"{path.name}: bf16.enabled = {bf16!r} contradicts train.precision = {t.precision!r}")
    ds["bf16"]["enabled"] = want_bf16
    if ds.get("fp16", {}).get("enabled") is True:
        problems.append(f"{path.name}: fp16 is enabled; scgrn trains in fp32 or bf16 (train.precision)")
    stage = ds.setdefault("zero_optimization", {}).get("stage", p.zero_stage)
    if stage != p.zero_stage:
        problems.append(
            f"{path.name}: zero_optimization.stage = {stage} contradicts parallel.zero_stage = {p.zero_stage}"
        )
    ds["zero_optimization"]["stage"] = p.zero_stage
    for key in ("optimizer", "scheduler"):
        if key in ds:
            problems.append(
                f"{path.name}: has an '{key}' section; scgrn builds the optimizer and schedule from 'train'"
            )
    if problems:
        raise ConfigError("DeepSpeed configuration conflicts:\n  - " + "\n  - ".join(problems))
    fill_step_settings(ds, t.precision)
    return ds


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on biases, norms, embeddings' 1-D params)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: PretrainConfig):
    """Linear warmup to lr, then cosine to lr * min_lr_ratio (as in nanoGPT's get_lr)."""
    t = cfg.train

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def create_engine(model: torch.nn.Module, cfg: PretrainConfig, ds_config: dict):
    """Wrap the model: optimizer (torch AdamW on CPU: no JIT build; FusedAdam allowed on GPU) + schedule."""
    groups = _param_groups(model, cfg.train.weight_decay)
    if cfg.train.optimizer == "fused_adam":
        if get_accelerator().device_name() == "cpu":
            msg = "train.optimizer = 'fused_adam' needs a GPU; use 'adamw' on CPU."
            raise ConfigError(msg)
        from deepspeed.ops.adam import FusedAdam

        optimizer = FusedAdam(groups, lr=cfg.train.lr, betas=cfg.train.betas)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=cfg.train.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if cfg.parallel.zero_stage == 0 and cfg.train.precision == "bf16" and get_accelerator().device_name() != "cpu":
        n = sum(1 for p in model.parameters() if p.requires_grad)
        log.warning(
            "parallel.zero_stage=0 with train.precision=bf16: DeepSpeed wraps the optimizer in its unfused bf16 "
            "optimizer, which checks each of the %d gradient tensors for inf/NaN with a host read every step; "
            "parallel.zero_stage=1 keeps the same memory on one GPU and reads at most once per parameter group",
            n,
        )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


UNIVERSAL_DIR = "universal"  # CKPT/universal/TAG: DeepSpeed's universal form of checkpoint CKPT


def save_checkpoint(engine, directory: Path, tag: str, client_state: dict) -> None:
    # save_latest=False: DeepSpeed would point `latest` at this tag before every rank has finished writing it;
    # `checkpointing.mark_complete` writes `latest` after the COMPLETE marker instead.
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    # ds_to_universal requires this entry (Megatron-DeepSpeed writes it too); it makes the checkpoint convertible.
    info = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    engine.save_checkpoint(str(directory), tag=tag, client_state={**client_state, **info}, save_latest=False)


def convert_to_universal(checkpoint: Path) -> Path:
    """DeepSpeed's `ds_to_universal` on a ZeRO 1-3 checkpoint -> CHECKPOINT/universal/TAG (once; reused after).

    The universal form holds each parameter's fp32 value and optimizer moments whole, so any number of ranks can
    load it (engine config `checkpoint.load_universal`). Written under a temporary name and renamed when done."""
    import argparse
    import contextlib
    import io
    import shutil

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out = checkpoint / UNIVERSAL_DIR / checkpoint.name
    if (out / "mp_rank_00_model_states.pt").exists():
        return out
    tmp = checkpoint / UNIVERSAL_DIR / f".{checkpoint.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=str(checkpoint),
        output_folder=str(tmp),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # checkpoints written before save_checkpoint recorded the entry
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
            ds_to_universal(args)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        msg = (
            f"{checkpoint}: DeepSpeed could not convert it to a universal checkpoint for a resume on another "
            f"number of ranks ({type(err).__name__}: {err}). Resume with the number of ranks that saved it."
        )
        raise ConfigError(msg) from err
    (tmp.parent / "latest_universal").unlink(missing_ok=True)
    tmp.rename(out)
    return out


def load_checkpoint(engine, directory: Path, tag: str) -> dict:
    _, client_state = engine.load_checkpoint(
        str(directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if client_state is None:
        msg = f"{directory / tag}: DeepSpeed could not load this checkpoint (missing or partial)."
        raise ConfigError(msg)
    return client_state


def consolidated_fp32_state_dict(checkpoint_root: Path, tag: str) -> dict[str, torch.Tensor]:
    """Gather ZeRO-partitioned parameters of a saved checkpoint into one fp32 state dict (zero_to_fp32)."""
    import contextlib
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    printed = io.StringIO()  # it print()s its progress: kept for the log, off the console
    with contextlib.redirect_stdout(printed):
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_root), tag=tag)
    if printed.getvalue().strip():
        # DeepSpeed's own logger: the run's log file under `console.quiet_console`, never scgrn's console lines
        text = printed.getvalue().rstrip()
        logging.getLogger("DeepSpeed").info("zero_to_fp32 (%s/%s):\n%s", checkpoint_root, tag, text)
    return state


def barrier() -> None:
    deepspeed.comm.barrier()


def all_reduce_max(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    deepspeed.comm.all_reduce(t, op=deepspeed.comm.ReduceOp.MAX)
    return float(t.item())  # host sync, once per check


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    deepspeed.comm.all_reduce(t, op=deepspeed.comm.ReduceOp.SUM)
    return t.tolist()


def all_reduce_sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place and return it; stays on its device (no host sync)."""
    deepspeed.comm.all_reduce(t, op=deepspeed.comm.ReduceOp.SUM)
    return t


def all_reduce_max_tensor(t: torch.Tensor) -> torch.Tensor:
    """Max of `t` over ranks in place and return it; stays on its device (no host sync)."""
    deepspeed.comm.all_reduce(t, op=deepspeed.comm.ReduceOp.MAX)
    return t
