"""The DeepSpeed ZeRO JSON a pretraining run will use, read and checked against the scgrn config without DeepSpeed.

`pretrain.parallel.engine.build_ds_config` is what the run itself does; this module resolves the same file the same
way and reports the same conflicts (a test holds the two to the same answers), so `scgrn launch` can refuse a bad
setting on a login node before any rank starts, and read the stage and offload for the memory estimate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.parallel.step_settings import fill_step_settings

REPO = Path(__file__).resolve().parents[1]
DS_CONFIG_DIR = REPO / "launch" / "configs" / "deepspeed"
DEEPSPEED_PERSISTENCE_DEFAULT = 100_000  # DeepSpeed's stage3_param_persistence_threshold when the JSON omits it


@dataclass
class ZeroSettings:
    """What the run's DeepSpeed JSON says about ZeRO, with the batch fields as the run will fill them in."""

    path: Path
    stage: int
    offload_optimizer: str = "none"  # none | cpu | nvme
    offload_params: str = "none"
    persistence_threshold: int = DEEPSPEED_PERSISTENCE_DEFAULT
    resolved: dict = field(default_factory=dict)  # the JSON with "auto" replaced, as build_ds_config makes it


def resolve_path(cfg) -> Path:
    """parallel.deepspeed_config, else launch/configs/deepspeed/zero{stage}.json; relative to cwd, then the repo."""
    path = Path(cfg.parallel.deepspeed_config or DS_CONFIG_DIR / f"zero{cfg.parallel.zero_stage}.json")
    if not path.is_absolute() and not path.exists():
        path = REPO / path
    return path


def _offload_device(section: dict, key: str) -> str:
    value = section.get(key)
    if not isinstance(value, dict):
        return "none"
    return str(value.get("device", "none")).lower()


def read_zero_settings(cfg, world_size: int) -> tuple[ZeroSettings | None, list[str]]:
    """(settings, problems). Problems name the file or field, the value, and the fix; settings is None only when
    the JSON cannot be read."""
    path = resolve_path(cfg)
    if not path.exists():
        return None, [f"parallel.deepspeed_config = {str(path)!r}: no such file"]
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        return None, [f"{path}: not valid JSON ({err})"]
    t, p = cfg.train, cfg.parallel
    micro, accum = cfg.data.micro_batch_cells, t.grad_accum
    derived = world_size * micro * accum
    problems = []
    pinned = p.train_batch_size or (ds.get("train_batch_size") if ds.get("train_batch_size") != "auto" else 0)
    source = "parallel.train_batch_size" if p.train_batch_size else f"{path.name}: train_batch_size"
    if pinned and pinned != derived:
        per_step = world_size * micro
        if pinned % per_step:
            problems.append(
                f"{source} = {pinned} is not divisible by world_size({world_size}) x data.micro_batch_cells({micro}) "
                f"= {per_step}, so no whole train.grad_accum reaches it; pick a multiple of {per_step} or change "
                "the micro batch or the number of ranks"
            )
        else:
            problems.append(
                f"world_size({world_size}) x data.micro_batch_cells({micro}) x train.grad_accum({accum}) = "
                f"{derived} != {source}({pinned}); set train.grad_accum={pinned // per_step} or "
                "parallel.train_batch_size=0 (derived)"
            )
    ours = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": derived,
        "gradient_clipping": t.grad_clip,
    }
    for key, value in ours.items():
        given = ds.get(key, "auto")
        if key != "train_batch_size" and given not in ("auto", value):
            problems.append(
                f'{path.name}: {key} = {given!r} contradicts the scgrn config ({value!r}); set it to "auto"'
            )
        ds[key] = value
    bf16 = (ds.get("bf16") or {}).get("enabled", "auto")
    if bf16 != "auto" and bool(bf16) != (t.precision == "bf16"):
        problems.append(f"{path.name}: bf16.enabled = {bf16!r} contradicts train.precision = {t.precision!r}")
    ds.setdefault("bf16", {})["enabled"] = t.precision == "bf16"
    if (ds.get("fp16") or {}).get("enabled") is True:
        problems.append(f"{path.name}: fp16 is enabled; scgrn trains in fp32 or bf16 (train.precision)")
    zero = ds.setdefault("zero_optimization", {})
    stage = zero.get("stage", p.zero_stage)
    if stage != p.zero_stage:
        problems.append(
            f"{path.name}: zero_optimization.stage = {stage} contradicts parallel.zero_stage = {p.zero_stage}; "
            f"set parallel.zero_stage={stage} (or pick the JSON of stage {p.zero_stage})"
        )
    zero["stage"] = p.zero_stage
    for key in ("optimizer", "scheduler"):
        if key in ds:
            problems.append(
                f"{path.name}: has an '{key}' section; scgrn builds the optimizer and schedule from 'train'"
            )
    fill_step_settings(ds, t.precision)
    settings = ZeroSettings(
        path=path,
        stage=p.zero_stage,
        offload_optimizer=_offload_device(zero, "offload_optimizer"),
        offload_params=_offload_device(zero, "offload_param"),
        persistence_threshold=int(zero.get("stage3_param_persistence_threshold", DEEPSPEED_PERSISTENCE_DEFAULT)),
        resolved=ds,
    )
    if settings.offload_optimizer != "none" and settings.stage == 0:
        problems.append(
            f"{path.name}: zero_optimization.offload_optimizer needs ZeRO stage >= 1 (parallel.zero_stage = 0); "
            "use zero2_offload.json with parallel.zero_stage=2"
        )
    if settings.offload_params != "none" and settings.stage != 3:
        problems.append(
            f"{path.name}: zero_optimization.offload_param needs ZeRO stage 3 (parallel.zero_stage = "
            f"{settings.stage}); use zero3_offload.json with parallel.zero_stage=3"
        )
    if settings.offload_optimizer != "none" and t.optimizer == "fused_adam":
        problems.append(
            f"train.optimizer = 'fused_adam' cannot step the optimizer states {path.name} offloads to "
            f"{settings.offload_optimizer}; use train.optimizer=adamw"
        )
    return settings, problems
