"""The Exceiver's batch preparation: which genes each packed cell keeps, which it hides, and what the encoder and
decoder read (`exceiver.py` holds the model; the trainer runs `prepare_batch` in the data loader's workers).

Shapes: B cells, T packed genes, N masked genes in the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from pretrain.models import unexpressed
from pretrain.models.common import cu_seqlens_from_lengths, sample_genes
from pretrain.models.objectives import cell_library_size, normalize_log1p, token_cell_index

if TYPE_CHECKING:
    from pretrain.models.exceiver import ExceiverConfig


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """n U[0, 1) draws, made on the generator's own device (a trainer's CPU generator may drive a CUDA model)."""
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def sample_mask(cu_seqlens: Tensor, total: int, mask_prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Choose the genes to hide: (B+1,) boundaries of cells holding `total` genes -> (T,) bool, True = masked.

    A cell of n genes gets m = floor(n · mask_prob + u) masked genes, u ~ U[0, 1) (stochastic rounding, so the
    expected fraction is exactly `mask_prob`), clamped to [1, n − 1] when n >= 2 and 0 when n < 2: every cell that
    can spare one gets a target, and no cell loses all of its encoder input. Which m genes: the m smallest of
    uniform scores within the cell. Deterministic given `generator` (two draws: (B,) then (T,)); vectorized with two
    sorts, no loop over cells.
    """
    device = cu_seqlens.device
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]  # (B,)
    u_cell = _uniform(lengths.numel(), generator, device)  # (B,)
    n_masked = torch.floor(lengths * mask_prob + u_cell).long()  # (B,)
    n_masked = torch.minimum(n_masked.clamp_min(1), lengths - 1).clamp_min(0)
    cell = token_cell_index(cu, total)  # (T,)
    scores = _uniform(total, generator, device)  # (T,)
    order = scores.argsort()  # (T,) by score ...
    order = order[cell[order].argsort(stable=True)]  # ... then grouped by cell: order lists cell 0's tokens first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(total, device=device) - cu[cell]  # (T,) rank of each token's score in its cell
    return rank < n_masked[cell]  # (T,)


def _subset_cu_seqlens(cell_of_token: Tensor, selected: Tensor, n_cells: int) -> tuple[Tensor, Tensor]:
    """Boundaries of the selected tokens, still packed per cell: -> cu_seqlens (B+1,) int32, counts (B,) int64."""
    counts = torch.zeros(n_cells, dtype=torch.long, device=selected.device)
    counts.index_add_(0, cell_of_token, selected.long())  # (B,)
    return cu_seqlens_from_lengths(counts), counts


def lengths_stats(*counts: Tensor) -> list[int]:
    """Max of each (B,) count vector plus the min of the first, in one device->host copy (a sync on a GPU)."""
    with torch.no_grad():
        stats = torch.stack([c.max() if c.numel() else c.new_zeros(()) for c in counts] + [counts[0].min()])
    return stats.tolist()


def raise_empty(counts: Tensor, what: str) -> None:
    empty = (counts == 0).nonzero().flatten().tolist()  # error path only: the sync happens once
    msg = (
        f"cell(s) {empty[:10]} of the batch have no {what}; every cell needs >= 1 expressed gene "
        "(data_prep drops empty cells; check the batch's cu_seqlens)"
    )
    raise ValueError(msg)


def split_masked(config: ExceiverConfig, batch: dict[str, Tensor]) -> dict:
    """Packed cells with a mask -> what the encoder and decoder read, all of it data-dependent (boolean selections,
    per-cell counts), so that `Exceiver.forward` on the result has none.

    Args:
        batch: "gene_ids" (T,), "values" (T,) raw counts, "cu_seqlens" (B+1,), "mask" (T,) bool (True = predict);
            optional "library_size" (B,), the cells' whole totals (default: the sum of the given values).

    Returns:
        encoder_gene_ids (T-N,), encoder_log_values (T-N,) log1p(CP10k), cu_encoder (B+1,) int32, max_encoder (int);
        query_gene_ids (N,), cu_query (B+1,) int32, max_query (int); target (N,) log1p(CP10k) (mse) or raw counts
        (poisson, nb); query_library (N,) the library size of each query's cell; n_targets = N (int);
        library_size (B,).
    """
    gene_ids, values, cu_seqlens, mask = batch["gene_ids"], batch["values"], batch["cu_seqlens"], batch["mask"]
    check_packed(gene_ids, values, cu_seqlens)
    if mask.shape != gene_ids.shape or mask.dtype != torch.bool:
        msg = (
            f"batch['mask'] must be a bool tensor shaped like gene_ids {tuple(gene_ids.shape)}; "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
        raise ValueError(msg)
    n_cells = cu_seqlens.numel() - 1
    library = batch.get("library_size")
    if library is None:
        library = cell_library_size(values, cu_seqlens)  # (B,) the given genes are the whole cells
    library = library.to(values.device)
    cell = token_cell_index(cu_seqlens, gene_ids.shape[0])  # (T,)
    log_values = normalize_log1p(values, cu_seqlens, library_size=library)  # (T,)
    keep = ~mask
    cu_encoder, n_encoder = _subset_cu_seqlens(cell, keep, n_cells)  # (B+1,), (B,)
    cu_query, n_query = _subset_cu_seqlens(cell, mask, n_cells)
    max_encoder, max_query, min_encoder = lengths_stats(n_encoder, n_query)
    if min_encoder == 0:
        raise_empty(n_encoder, "unmasked genes for the encoder")
    # boolean indexing keeps tokens in order, so both subsets stay packed cell by cell
    return {
        "encoder_gene_ids": gene_ids[keep],
        "encoder_log_values": log_values[keep],
        "cu_encoder": cu_encoder,
        "max_encoder": int(max_encoder),
        "query_gene_ids": gene_ids[mask],
        "cu_query": cu_query,
        "max_query": int(max_query),
        "target": log_values[mask] if config.objective == "mse" else values[mask],
        "query_library": library[cell[mask]],
        "n_targets": int(cu_query[-1]),
        "library_size": library,
    }


def prepare_batch(
    config: ExceiverConfig,
    batch: dict[str, Tensor],
    generator: torch.Generator | None = None,
    panels: tuple | None = None,
) -> dict:
    """Raw packed cells -> the inputs `Exceiver.forward` uses as given: library sizes taken before sampling, at
    most `max_genes` genes per cell, the mask, and its `split_masked` split. With `mask_unexpressed` > 0 and the
    corpus's measured-gene `panels` (the batch's "panel" gives each cell's), unexpressed measured genes are added
    to each cell as masked tokens of count 0 (room kept for them under `max_genes`); without panels the objective
    is the expressed-genes one.

    Runs wherever `batch` lives; the trainer runs it in the data loader's workers on CPU tensors (seeded per batch,
    see `data_prep.loader.StreamingCellDataset`), so the step on a GPU gets finished inputs with host-side sizes.
    Returns gene_ids, values, cu_seqlens, mask (T',) bool, library_size and the keys of `split_masked`.
    """
    gene_ids, values, cu_seqlens = batch["gene_ids"], batch["values"], batch["cu_seqlens"]
    check_packed(gene_ids, values, cu_seqlens)
    library = batch.get("library_size")
    if library is None:
        library = cell_library_size(values, cu_seqlens)  # (B,) whole-cell totals, before sampling
    zeros = config.mask_unexpressed > 0 and panels is not None and "panel" in batch
    room = unexpressed.reserve(config.max_genes, config.mask_prob, config.mask_unexpressed) if zeros else 0
    all_ids, all_cu = gene_ids, cu_seqlens
    gene_ids, values, cu_seqlens = sample_genes(
        gene_ids, values, cu_seqlens, config.max_genes - room, config.gene_sampling, generator
    )
    mask = sample_mask(cu_seqlens, gene_ids.shape[0], config.mask_prob, generator)  # (T',)
    if zeros:
        cell = token_cell_index(cu_seqlens, gene_ids.shape[0])
        n_masked = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.long, device=mask.device)
        n_masked.index_add_(0, cell, mask.long())  # (B,)
        room_left = config.max_genes - (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        extra, cu_extra = unexpressed.draw_unexpressed(
            all_ids, all_cu, n_masked, room_left, batch["panel"], panels, config.mask_unexpressed, generator
        )
        cu_seqlens, (gene_ids, values, mask) = unexpressed.append_to_cells(
            cu_seqlens,
            [gene_ids, values, mask],
            cu_extra,
            [extra, torch.zeros(extra.shape[0], dtype=values.dtype), torch.ones(extra.shape[0], dtype=torch.bool)],
        )
    sampled = {"gene_ids": gene_ids, "values": values, "cu_seqlens": cu_seqlens, "mask": mask, "library_size": library}
    return {**sampled, **split_masked(config, sampled)}


def check_packed(gene_ids: Tensor, values: Tensor, cu_seqlens: Tensor) -> None:
    if gene_ids.dim() != 1 or values.shape != gene_ids.shape or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        msg = (
            "expected packed cells: gene_ids (T,), values (T,), cu_seqlens (B+1,) with B >= 1; got "
            f"gene_ids {tuple(gene_ids.shape)}, values {tuple(values.shape)}, cu_seqlens {tuple(cu_seqlens.shape)}"
        )
        raise ValueError(msg)
