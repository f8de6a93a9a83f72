"""Masked targets that are genes switched off: `model.mask_unexpressed` (both families).

The corpus stores expressed genes only, so a masked objective over stored tokens never asks "is this gene off?",
which is what regulation does to a target when its TF is off. A corpus of format >= 3 records each input's
measured-gene panel (data_prep/SPEC.md), so the genes a cell's input measured but the cell did not express are
known zeros. With `mask_unexpressed = f`, each cell with m masked expressed genes gets u more masked genes drawn
from its unexpressed measured genes, u = floor(m · f / (1 − f) + U), U ~ U[0, 1) (stochastic rounding), so that
on average a fraction f of the masked set is unexpressed genes (fewer where a cell has less room under max_genes or
fewer unexpressed measured genes). They are appended to the cell's tokens with value 0.

Runs on the host, in the loader's workers (a loop over the batch's cells; rejection sampling, so the cost does not
grow with the panel's size), and is deterministic given the batch's generator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from pretrain.models.common import cu_seqlens_from_lengths, uniform


def check_fraction(value: object) -> str | None:
    """The problem with a `mask_unexpressed` value, or None: a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        return f"mask_unexpressed={value!r} must be a float in [0, 1) (the fraction of masked genes drawn unexpressed)"
    return None


def reserve(max_genes: int, mask_prob: float, fraction: float) -> int:
    """Tokens a cell keeps free under `max_genes` for its unexpressed targets: the expected count for a full cell."""
    if fraction == 0:
        return 0
    return min(max_genes - 1, math.ceil(max_genes * mask_prob * fraction / (1.0 - fraction)))


def draw_unexpressed(
    expressed: Tensor,
    cu_expressed: Tensor,
    n_masked: Tensor,
    room: Tensor,
    panel: Tensor,
    panels: tuple[np.ndarray, ...],
    fraction: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Unexpressed measured genes to mask, per cell.

    Args:
        expressed: (T,) the cells' expressed vocab ids (all of them, before any max_genes sampling), ascending
            within a cell; cu_expressed: (B+1,) their cell boundaries.
        n_masked: (B,) masked expressed genes of each cell; room: (B,) most genes each cell may add.
        panel: (B,) each cell's panel index into `panels` (ascending vocab ids its input measured).

    Returns:
        gene_ids (U,) int64, packed cell by cell, and cu_seqlens (B+1,) int32 of them.
    """
    n_cells = cu_expressed.numel() - 1
    rounding = uniform(n_cells, generator, torch.device("cpu")).numpy()  # (B,)
    want = np.floor(n_masked.cpu().numpy() * (fraction / (1.0 - fraction)) + rounding).astype(np.int64)
    want = np.minimum(want, room.cpu().numpy())
    cu = cu_expressed.cpu().numpy()
    ids = expressed.cpu().numpy()
    panel = panel.cpu().numpy()
    out, lengths = [], np.zeros(n_cells, dtype=np.int64)
    for c in np.flatnonzero(want > 0):
        genes = _sample_cell(ids[cu[c] : cu[c + 1]], panels[panel[c]], int(want[c]), generator)
        out.append(genes)
        lengths[c] = len(genes)
    gene_ids = torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0, dtype=torch.long)
    return gene_ids, cu_seqlens_from_lengths(torch.from_numpy(lengths))


def _sample_cell(expressed: np.ndarray, panel: np.ndarray, want: int, generator: torch.Generator | None) -> np.ndarray:
    """Up to `want` distinct genes of `panel` (ascending) not in `expressed` (ascending), uniformly at random."""
    draws = 2 * want + 16
    picks = _randint(len(panel), draws, generator)
    genes = panel[picks]
    pos = np.searchsorted(expressed, genes).clip(max=max(len(expressed) - 1, 0))
    free = genes[expressed[pos] != genes] if len(expressed) else genes
    _, first = np.unique(free, return_index=True)
    free = free[np.sort(first)]  # distinct, in draw order
    if len(free) >= want:
        return free[:want]
    # a cell expressing most of its panel: draw from the exact complement (rare, so its O(panel) cost is fine)
    complement = panel[~np.isin(panel, expressed, assume_unique=True)]
    order = _randint_permutation(len(complement), generator)
    return complement[order[: min(want, len(complement))]]


def _randint(high: int, n: int, generator: torch.Generator | None) -> np.ndarray:
    device = generator.device if generator is not None else "cpu"
    return torch.randint(high, (n,), generator=generator, device=device).cpu().numpy()


def _randint_permutation(n: int, generator: torch.Generator | None) -> np.ndarray:
    device = generator.device if generator is not None else "cpu"
    return torch.randperm(n, generator=generator, device=device).cpu().numpy()


def append_to_cells(cu_a: Tensor, a: list[Tensor], cu_b: Tensor, b: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Packed cells a and b (same B) -> cells holding a's tokens then b's: (cu_seqlens (B+1,) int32, arrays), on
    a's device (b, drawn on the host, is moved there)."""
    device = cu_a.device
    cu_b = cu_b.to(device)
    len_a, len_b = (cu_a[1:] - cu_a[:-1]).long(), (cu_b[1:] - cu_b[:-1]).long()  # (B,)
    cu = cu_seqlens_from_lengths(len_a + len_b)
    start = cu[:-1].long()
    cells = torch.arange(len(len_a), device=device)
    cell_a, cell_b = torch.repeat_interleave(cells, len_a), torch.repeat_interleave(cells, len_b)
    pos_a = torch.arange(cell_a.numel(), device=device) - cu_a[:-1].long()[cell_a] + start[cell_a]
    pos_b = torch.arange(cell_b.numel(), device=device) - cu_b[:-1].long()[cell_b] + start[cell_b] + len_a[cell_b]
    out = []
    for x, y in zip(a, b, strict=True):
        merged = torch.empty(cell_a.numel() + cell_b.numel(), dtype=x.dtype, device=device)
        merged[pos_a] = x
        merged[pos_b] = y.to(device=device, dtype=x.dtype)
        out.append(merged)
    return cu, out
