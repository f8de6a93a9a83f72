"""Adaptation: continue the release's masked pretraining on the user's own cells (no labels) before any readout.

`scgrn grn --adapt-steps N` runs N optimizer steps of the model's own masked objective on the dataset's cells,
shuffled (seeded), for the pretrained release *and* for its random-init twin, which then is a model trained from
scratch on these cells for the same N steps. The pair separates "pretraining on a corpus helps" from "any model
fitted to these cells helps" (issue 21, item 3). N = 0 is no adaptation: the same models and the same cache keys.

Adapted weights are cached as safetensors by (release sha256, data sha256, kind, config): a second run with the same
inputs loads them instead of training again.

Value kinds: both families normalise each cell by its total, so log-normalised input (BEELINE), turned back into
relative expression, feeds scBERT's bins and the Exceiver's mse objective alike; a count likelihood (Exceiver nb or
poisson) needs integer counts and is refused on log-normalised data.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from finetune.errors import GrnInputError

ADAPT_VERSION = 1


@dataclass(frozen=True)
class AdaptConfig:
    """How long and how fast the release is adapted to the dataset's cells."""

    steps: int = 0
    """Optimizer steps of masked pretraining on the dataset's cells; 0 = no adaptation."""
    lr: float = 3e-4
    """AdamW learning rate (constant; the same for the pretrained release and its random-init twin)."""
    batch_cells: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.steps, int) or self.steps < 0:
            problems.append(f"steps={self.steps!r}: an int >= 0")
        if not isinstance(self.batch_cells, int) or self.batch_cells < 1:
            problems.append(f"batch_cells={self.batch_cells!r}: an int >= 1")
        if not self.lr > 0:
            problems.append(f"lr={self.lr!r}: > 0")
        if problems:
            raise GrnInputError("invalid adaptation options:\n  - " + "\n  - ".join(problems))

    def key(self) -> str:
        """The part of a cache key that names the adaptation ("" for none, so N = 0 keys equal no adaptation's)."""
        return "" if self.steps == 0 else f"adapt-v{ADAPT_VERSION}:{json.dumps(asdict(self), sort_keys=True)}"


def check_adaptable(model: torch.nn.Module, release: Path, value_kind: str) -> None:
    """Refuse a release that cannot be trained on this data: a count likelihood on log-normalised values."""
    objective = getattr(getattr(model, "config", None), "objective", None)
    if value_kind == "log1p" and objective in ("nb", "poisson"):
        msg = (
            f"--adapt-steps: release {release} is trained with the {objective!r} count likelihood, which needs raw "
            "integer counts, but this dataset holds log-normalised values (log1p). Give raw counts (--values "
            "counts), use a release with the mse objective or of the scBERT family, or leave --adapt-steps at 0."
        )
        raise GrnInputError(msg)
    if not hasattr(model, "forward") or not hasattr(model, "config"):
        msg = f"--adapt-steps: release {release} ({type(model).__name__}) has no masked objective to continue"
        raise GrnInputError(msg)


def packed_rows(cells: sp.csr_matrix, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows of a (cells, V) matrix as one packed batch of expressed genes (the loader's layout)."""
    block = cells[rows]
    lengths = np.diff(block.indptr)
    cu = np.zeros(len(rows) + 1, dtype=np.int32)
    cu[1:] = np.cumsum(lengths)
    return {
        "gene_ids": torch.from_numpy(block.indices.astype(np.int64)),
        "values": torch.from_numpy(block.data.astype(np.float32)),
        "cu_seqlens": torch.from_numpy(cu),
    }


def adapt(
    model: torch.nn.Module,
    cells: sp.csr_matrix,
    config: AdaptConfig,
    progress: bool = False,
    measured: np.ndarray | None = None,
) -> torch.nn.Module:
    """A copy of `model` after `config.steps` AdamW steps of its own masked objective on `cells` ((cells, V) values by
    vocab id), in seeded shuffled batches; `model` itself is not changed. Eval mode on return. A release trained with
    `mask_unexpressed` keeps that objective here, with `measured` (the dataset's vocab ids) as every cell's panel."""
    from tqdm.auto import tqdm

    adapted = copy.deepcopy(model).train()
    if config.steps == 0:
        return adapted.eval()
    expressed = np.flatnonzero(np.diff(cells.indptr) > 0)
    if not len(expressed):
        msg = "--adapt-steps: no cell of the dataset expresses a gene the release knows"
        raise GrnInputError(msg)
    rng = np.random.default_rng([config.seed, 5501])
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(adapted.parameters(), lr=config.lr, weight_decay=0.0)
    order, position = rng.permutation(expressed), 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout, where a release has it
        for _ in tqdm(range(config.steps), desc="adaptation", unit="step", disable=not progress):
            if position >= len(order):
                order, position = rng.permutation(expressed), 0
            rows = np.sort(order[position : position + config.batch_cells])
            position += config.batch_cells
            batch = packed_rows(cells, rows)
            if measured is not None and getattr(adapted.config, "mask_unexpressed", 0):
                panel = torch.zeros(len(rows), dtype=torch.long)
                batch = adapted.prepare_batch({**batch, "panel": panel}, generator, (measured,))
            loss = adapted(batch, generator=generator)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapted.parameters(), 1.0)
            optimizer.step()
    return adapted.eval()


def cached_adapt(
    model: torch.nn.Module,
    cells: sp.csr_matrix,
    config: AdaptConfig,
    key_parts: list[str],
    cache_dir: Path | None,
    progress: bool = False,
    measured: np.ndarray | None = None,
) -> torch.nn.Module:
    """`adapt`, with the adapted weights cached under `cache_dir` (safetensors, written atomically)."""
    from safetensors.torch import load_file, save_file

    from data_prep.io_utils import publish

    if config.steps == 0:
        return model
    key = hashlib.sha256("\x00".join([*key_parts, config.key()]).encode()).hexdigest()[:24]
    path = None if cache_dir is None else Path(cache_dir) / f"adapted-{key}.safetensors"
    if path is not None and path.exists():
        adapted = copy.deepcopy(model)
        adapted.load_state_dict(load_file(str(path)))
        return adapted.eval()
    adapted = adapt(model, cells, config, progress=progress, measured=measured)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.detach().contiguous() for k, v in adapted.state_dict().items()}, str(tmp))
        publish(tmp, path)
    return adapted
