"""Checkpoint bookkeeping around DeepSpeed's `save_checkpoint`: complete markers, rotation, per-rank state.

Layout of a run directory:
    RUN/config.yaml, RUN/tensorboard/, RUN/checkpoints/step00000050/  (DeepSpeed files for that tag)
        loader_rank{r}.json   each rank's data-loader cursor (StreamingCellDataset.state_dict)
        rng_rank{r}.pt        each rank's torch CPU (and CUDA) RNG (tensors; weights_only=True); the masking draws
                              need none: they are seeded per batch by the loader's cursor
        COMPLETE              written by rank 0 after every rank finished: only such checkpoints are resumed from
                              (JSON: step, reason, time, world_size, zero_stage, vocab_sha256, param_layout)
        universal/STEP/       DeepSpeed's universal checkpoint of this one, made when resuming on another
                              number of ranks (ZeRO 1-3)
    RUN/checkpoints/latest    DeepSpeed's pointer to the newest tag, written only after that tag's COMPLETE
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import torch

from data_prep.io_utils import atomic_write_bytes, atomic_write_text
from pretrain.config import ConfigError

COMPLETE = "COMPLETE"
LATEST = "latest"  # DeepSpeed's pointer file (the tag name), in the checkpoints root


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / COMPLETE).exists())


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """'none' -> None; 'auto' -> latest complete checkpoint (or None); a path -> that checkpoint, checked."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        msg = f"train.resume = {resume!r}: no such checkpoint directory; use 'auto', 'none' or a path."
        raise ConfigError(msg)
    if not (path / COMPLETE).exists():
        msg = (
            f"train.resume = {resume!r}: checkpoint is partial (no {COMPLETE} marker: a rank died while saving). "
            f"Resume from an earlier one: {[p.name for p in complete_checkpoints(path.parent.parent)]}."
        )
        raise ConfigError(msg)
    return path


def save_rank_state(directory: Path, rank: int, loader_state: dict, device: torch.device | None = None) -> None:
    """The rank's loader cursor and RNG: torch's CPU RNG and, on a GPU, its CUDA RNG (dropout draws there), so a
    resumed run repeats the same random numbers. (Checkpoints of earlier versions also hold a "generator", the
    masking generator of the training step; masking now happens in the loader, seeded per batch, and it is
    ignored.)"""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / f"loader_rank{rank}.json", json.dumps(loader_state))
    rng = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    buffer = io.BytesIO()
    torch.save(rng, buffer)
    atomic_write_bytes(directory / f"rng_rank{rank}.pt", buffer.getvalue())


def load_rank_state(directory: Path, rank: int) -> tuple[dict, dict]:
    loader = directory / f"loader_rank{rank}.json"
    rng = directory / f"rng_rank{rank}.pt"
    if not loader.exists() or not rng.exists():
        msg = f"{directory}: no loader or RNG state for rank {rank}; the checkpoint is damaged, resume from another."
        raise ConfigError(msg)
    return json.loads(loader.read_text()), torch.load(rng, weights_only=True)


def read_marker(directory: Path) -> dict:
    """What rank 0 recorded when every rank had finished writing the checkpoint (step, world size, ZeRO stage)."""
    try:
        return json.loads((directory / COMPLETE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        msg = f"{directory / COMPLETE}: unreadable ({err}); resume from another checkpoint or train.resume=none."
        raise ConfigError(msg) from None


def parameter_layout(model: torch.nn.Module) -> str:
    """sha256 of the model's parameter names and shapes, in order: the layout of DeepSpeed's flat optimizer state.

    Taken before ZeRO-3 partitions the parameters (a partitioned parameter's shape is empty)."""
    layout = [[name, list(p.shape)] for name, p in model.named_parameters()]
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()


def check_parameter_layout(directory: Path, marker: dict, layout: str, family: str) -> None:
    """Refuse to resume a checkpoint whose optimizer state is laid out for other parameters: ZeRO 1/2 keep it as
    one flat buffer, so loading it into another layout would pair moments with the wrong weights, silently."""
    saved = marker.get("param_layout")
    if saved is None and family == "scbert":
        msg = (
            f"cannot resume from {directory}: it was written before scBERT's self-attention fused its q/k/v "
            "projections (its optimizer state is laid out for separate q_proj / kv_proj). Finish that run with the "
            "scgrn that started it, or export its weights as a release (`scgrn export RUN_DIR --out RELEASE`; "
            "releases of that layout load in this version) and start a new run."
        )
        raise ConfigError(msg)
    if saved is not None and saved != layout:
        msg = (
            f"cannot resume from {directory}: its parameters (layout {saved[:12]}…) are not this model's "
            f"({layout[:12]}…): the model config or the scgrn version differs. Resume with the config and version "
            "that wrote it, or start a new run (train.resume=none)."
        )
        raise ConfigError(msg)


def load_loader_states(directory: Path, world_size: int) -> list[dict]:
    """Every rank's loader cursor of a checkpoint saved by `world_size` ranks (for an elastic resume)."""
    missing = [r for r in range(world_size) if not (directory / f"loader_rank{r}.json").exists()]
    if missing:
        msg = (
            f"{directory}: no loader state for rank(s) {missing} of the {world_size} that saved it; an elastic "
            "resume needs every rank's cursor. Resume from another checkpoint."
        )
        raise ConfigError(msg)
    return [json.loads((directory / f"loader_rank{r}.json").read_text()) for r in range(world_size)]


def mark_complete(directory: Path, info: dict) -> None:
    """COMPLETE first, then DeepSpeed's `latest` file: `latest` never names a partial checkpoint."""
    atomic_write_text(directory / COMPLETE, json.dumps(info))
    atomic_write_text(directory.parent / LATEST, directory.name)


def prune(run_dir: Path, keep_last: int) -> None:
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
