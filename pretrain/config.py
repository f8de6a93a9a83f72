"""`PretrainConfig`: one typed config for a pretraining run, loaded from YAML with `key=value` overrides.

Sections: `model` (family + that family's typed config), `data` (corpus and loader), `train` (optimizer,
schedule, precision, checkpoints, logging), `parallel` (DeepSpeed ZeRO JSON and batch arithmetic). Every field is
checked in `__post_init__`; all problems are reported at once, each with the field, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

FAMILIES = ("scbert", "exceiver", "geneformer")
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adamw", "fused_adam")
FINITE_CHECKS = ("auto", "before_update", "lagged")
WHOLE_SHARDS = {"auto": None, True: True, False: False}


class ConfigError(ValueError):
    """A configuration problem (or several), with the fix for each."""


@dataclass
class DataConfig:
    corpus: str = ""  # corpus directory written by `scgrn shard`
    micro_batch_cells: int = 16  # cells per rank per micro step (packed, no padding)
    # > 0: micro batches hold up to this many tokens instead (cells packed in stream order, each costing
    # min(genes, model.max_genes)), so every rank does about the same work per step; >= model.max_genes.
    micro_batch_tokens: int = 0
    num_workers: int = 0  # DataLoader workers per rank
    # corpus at a URL: keep local copies of its shards here, at most cache_gb (least recently used out); "" = stream
    cache_dir: str = ""
    cache_gb: float = 0.0
    # read each shard whole (one GET per file for a URL; the shard is the read unit, so the corpus needs at least
    # ranks x workers shards) or by block / sample (false: finer units, more requests). auto: true for URLs only.
    whole_shards: bool | str = "auto"
    block_cells: int = 1024  # loader read unit (cells)
    window_blocks: int = 4  # loader shuffle window (units)
    eval_batches: int = 8  # validation batches per evaluation
    verify_shards: bool = True  # hash each shard against the manifest when a loader first opens it (bit flips fail)


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps (the LR schedule spans them)
    stop_after: int = 0  # end this invocation after this step (0: at `steps`); for preemptible jobs, stop-and-go
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16 (fp16 is not supported: DeepSpeed's CPU path lacks it)
    optimizer: str = "adamw"  # adamw (torch, no JIT build) | fused_adam (DeepSpeed, GPU)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    save_every: int = 50
    keep_last: int = 2  # checkpoints kept (older complete ones are deleted)
    out_dir: str = "runs/pretrain"
    resume: str = "none"  # none | auto (latest complete checkpoint in out_dir) | a checkpoint directory
    peak_tflops: float = 0.0  # device peak for the MFU estimate (0: not logged)
    # When a non-finite loss is caught: before_update (the step's update is never applied; one host sync per step),
    # lagged (read one step later, so the host never waits for the GPU; the bad update is applied, nothing after
    # it is saved, resume from the last checkpoint) or auto (lagged on a GPU, before_update on CPU).
    finite_check: str = "auto"
    # Audit log of the cells each rank trains on: false (off) | true (RUN/cell_ids/rank{r}.jsonl) | a directory.
    # One JSON line per micro batch, {"step", "micro", "cell_ids"}, flushed as written; on resume, lines past
    # the resumed step are dropped, so the file is the exact sequence the model state has seen.
    log_cell_ids: bool | str = False


@dataclass
class ParallelConfig:
    zero_stage: int = 2  # 0, 1, 2, 3
    deepspeed_config: str = ""  # ZeRO JSON (default: launch/configs/deepspeed/zero{stage}.json)
    train_batch_size: int = 0  # global cells per optimizer step; 0 = world x micro x accum


@dataclass
class PretrainConfig:
    family: str = "scbert"
    model: dict[str, Any] = field(default_factory=dict)  # the family's config fields (vocab_size from the corpus)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        problems = []
        t, d, p = self.train, self.data, self.parallel
        checks = [
            (self.family in FAMILIES, "family", self.family, f"one of {FAMILIES}"),
            (t.steps >= 1, "train.steps", t.steps, ">= 1"),
            (0 <= t.stop_after <= t.steps, "train.stop_after", t.stop_after, f"in [0, train.steps={t.steps}]"),
            (t.lr > 0, "train.lr", t.lr, "> 0"),
            (0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", t.min_lr_ratio, "in [0, 1]"),
            (0 <= t.warmup_steps <= t.steps, "train.warmup_steps", t.warmup_steps, f"in [0, train.steps={t.steps}]"),
            (t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0"),
            (t.grad_clip >= 0, "train.grad_clip", t.grad_clip, ">= 0 (0 disables clipping)"),
            (t.grad_accum >= 1, "train.grad_accum", t.grad_accum, ">= 1"),
            (t.precision in PRECISIONS, "train.precision", t.precision, f"one of {PRECISIONS}"),
            (t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer, f"one of {OPTIMIZERS}"),
            (t.log_every >= 1, "train.log_every", t.log_every, ">= 1"),
            (t.eval_every >= 1, "train.eval_every", t.eval_every, ">= 1"),
            (t.save_every >= 1, "train.save_every", t.save_every, ">= 1"),
            (t.keep_last >= 1, "train.keep_last", t.keep_last, ">= 1"),
            (t.peak_tflops >= 0, "train.peak_tflops", t.peak_tflops, ">= 0"),
            (t.finite_check in FINITE_CHECKS, "train.finite_check", t.finite_check, f"one of {FINITE_CHECKS}"),
            (isinstance(t.log_cell_ids, bool | str), "train.log_cell_ids", t.log_cell_ids, "true, false or a dir"),
            (d.micro_batch_cells >= 1, "data.micro_batch_cells", d.micro_batch_cells, ">= 1"),
            (d.micro_batch_tokens >= 0, "data.micro_batch_tokens", d.micro_batch_tokens, ">= 0 (0 = by cells)"),
            (d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0"),
            (not d.cache_dir or d.cache_gb > 0, "data.cache_gb", d.cache_gb, "> 0 when data.cache_dir is set"),
            (d.whole_shards in (True, False, "auto"), "data.whole_shards", d.whole_shards, "true, false or auto"),
            (d.block_cells >= 1, "data.block_cells", d.block_cells, ">= 1"),
            (d.window_blocks >= 1, "data.window_blocks", d.window_blocks, ">= 1"),
            (d.eval_batches >= 1, "data.eval_batches", d.eval_batches, ">= 1"),
            (p.zero_stage in (0, 1, 2, 3), "parallel.zero_stage", p.zero_stage, "0, 1, 2 or 3"),
            (p.train_batch_size >= 0, "parallel.train_batch_size", p.train_batch_size, ">= 0 (0 = derived)"),
        ]
        betas = t.betas
        checks.append(
            (
                isinstance(betas, tuple) and len(betas) == 2 and all(0 <= b < 1 for b in betas),
                "train.betas",
                betas,
                "two numbers in [0, 1), e.g. [0.9, 0.98]",
            )
        )
        # NaN fails every comparison above; inf passes "> 0": refuse non-finite numbers by name.
        numbers = {f"train.{f.name}": getattr(t, f.name) for f in fields(t) if isinstance(getattr(t, f.name), float)}
        numbers.update({f"train.betas[{i}]": b for i, b in enumerate(betas) if isinstance(b, float)})
        problems += [f"{k} = {v!r}: must be a finite number" for k, v in numbers.items() if not math.isfinite(v)]
        problems += [f"{name} = {value!r}: must be {allowed}" for ok, name, value, allowed in checks if not ok]
        if problems:
            raise ConfigError("invalid pretrain config:\n  - " + "\n  - ".join(problems))

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> PretrainConfig:
        problems = []
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            problems.append(f"unknown top-level key(s) {unknown}; allowed: {sorted(known)}")
        sections = {}
        for name, kind in (("data", DataConfig), ("train", TrainConfig), ("parallel", ParallelConfig)):
            section = raw.get(name) or {}
            if not isinstance(section, dict):
                problems.append(f"'{name}' must be a mapping of fields, got {type(section).__name__} {section!r:.60}")
                section = {}
            values = dict(section)
            allowed = {f.name for f in fields(kind)}
            bad = sorted(set(values) - allowed)
            if bad:
                problems.append(f"unknown key(s) {bad} in '{name}'; allowed: {sorted(allowed)}")
                values = {k: v for k, v in values.items() if k in allowed}
            for f in fields(kind):
                if f.name in values:
                    values[f.name] = _coerce(values[f.name], f, f"{name}.{f.name}", problems)
            sections[name] = kind(**values)
        model = dict(raw.get("model") or {}) if isinstance(raw.get("model") or {}, dict) else {}
        family = raw.get("family", "scbert")
        if "family" in model:  # `model.family=geneformer` (e.g. an override on a config of another family) wins
            family = model.pop("family")
        if problems:
            raise ConfigError(f"{source}: invalid pretrain config:\n  - " + "\n  - ".join(problems))
        return cls(family=family, model=model, **sections)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> PretrainConfig:
        path = Path(path)
        if not path.exists():
            msg = f"--config {path}: no such file."
            raise ConfigError(msg)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            msg = f"{path}: not valid YAML ({err})."
            raise ConfigError(msg) from None
        if not isinstance(raw, dict):  # found by fuzzing: a scalar or list document crashed from_dict
            msg = f"{path}: the top level must be a mapping of sections (family, model, data, train, parallel), "
            msg += f"got a {type(raw).__name__}."
            raise ConfigError(msg)
        for item in overrides or []:
            apply_override(raw, item)
        return cls.from_dict(raw, str(path))

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(value, f: dataclasses.Field, name: str, problems: list[str]):
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
        if kind.startswith("tuple"):
            if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
                raise TypeError
            return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        problems.append(f"{name} = {value!r}: must be {kind}")
        return value
    return value


def apply_override(raw: dict, item: str) -> None:
    """`train.lr=3e-4` -> raw['train']['lr'] = 3e-4 (value parsed as YAML)."""
    if "=" not in item:
        msg = f"override {item!r}: expected key=value, e.g. train.lr=3e-4 or model.n_layers=2"
        raise ConfigError(msg)
    key, _, text = item.partition("=")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            msg = f"override {item!r}: {part!r} is not a section"
            raise ConfigError(msg)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:  # found by fuzzing: a control character in the value crashed the parser
        msg = f"override {item!r}: the value {text!r} is not valid YAML ({err})."
        raise ConfigError(msg) from None
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    node[parts[-1]] = value
