"""Cell embeddings and contextual gene states from a release's model, for both families.

- scBERT: each cell's genes (at most `max_genes`, chosen as in pretraining, binned over the whole cell) go through the
  encoder unmasked; the cell embedding is the mean of its genes' final hidden states (scBERT and Geneformer pool this
  way), and those hidden states are the genes' contextual states.
- Exceiver: the cell embedding is the mean of its latents after the encoder (Exceiver's cell representation); gene
  states are the decoder's outputs for the cell's genes queried against those latents (`Exceiver.gene_states`).

`cell_embedding` keeps the autograd graph (transfer finetuning trains through it); `embed_cells` runs it without
gradients over many cells and also pools gene states per vocabulary token.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from pretrain.models.common import sample_genes
from pretrain.models.objectives import token_cell_index
from pretrain.models.scbert import ScBert, bin_values


def to_device(batch: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Move a packed batch to the device the model's weights live on."""
    device = model.gene_embedding.weight.device
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _segment_mean(states: Tensor, cu_seqlens: Tensor) -> Tensor:
    """(T, D) packed per-token states -> (B, D) per-cell means."""
    n_cells = cu_seqlens.numel() - 1
    cell = token_cell_index(cu_seqlens, states.shape[0])  # (T,)
    sums = states.new_zeros(n_cells, states.shape[1]).index_add(0, cell, states)  # (B, D)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).clamp(min=1).to(states.dtype)  # (B,)
    return sums / lengths.unsqueeze(1)


def _scbert_tokens(model: ScBert, batch: dict[str, Tensor], generator: torch.Generator | None):
    c = model.config
    bins = bin_values(
        batch["values"], batch["cu_seqlens"], c.n_bins, library_size=batch.get("library_size")
    )  # (T,) over the whole cell
    gene_ids, _, cu_seqlens, kept = sample_genes(
        batch["gene_ids"], batch["values"], batch["cu_seqlens"], c.max_genes, c.gene_sampling, generator,
        return_index=True,
    )  # fmt: skip
    return gene_ids, bins[kept], cu_seqlens


def cell_embedding(model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
    """(B, D) embedding of each cell of a packed raw-count batch (differentiable), on the model's device."""
    batch = to_device(batch, model)
    if isinstance(model, ScBert):
        gene_ids, bins, cu_seqlens = _scbert_tokens(model, batch, generator)
        return _segment_mean(model.encode(gene_ids, bins, cu_seqlens), cu_seqlens)
    latents = model.encode(batch["gene_ids"], batch["values"], batch["cu_seqlens"], generator)  # (B, L, D)
    return latents.mean(1)


@torch.no_grad()
def embed_cells(
    model: nn.Module, batches, *, vocab_size: int, seed: int = 0, desc: str | None = None
) -> tuple[np.ndarray, dict]:
    """Cell embeddings (n_cells, D) over `batches`, and per-token sums of the genes' contextual states.

    Returns (cells, genes) with genes = {"sum": (V, D) float64, "count": (V,) int64}: the mean state of token v over
    the cells that express it is sum[v] / count[v]. `desc`: show a progress bar with this label."""
    from tqdm.auto import tqdm

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    d_model = model.gene_embedding.weight.shape[1]
    device = model.gene_embedding.weight.device
    gene_sum = torch.zeros(vocab_size, d_model, dtype=torch.float64, device=device)
    gene_count = torch.zeros(vocab_size, dtype=torch.int64, device=device)
    cells = []
    for batch in tqdm(batches, desc=desc, disable=desc is None, unit="batch"):
        batch = to_device(batch, model)
        if isinstance(model, ScBert):
            gene_ids, bins, cu_seqlens = _scbert_tokens(model, batch, generator)
            states = model.encode(gene_ids, bins, cu_seqlens)  # (T', D)
            cells.append(_segment_mean(states, cu_seqlens))
        else:
            latents = model.encode(batch["gene_ids"], batch["values"], batch["cu_seqlens"], generator)  # (B, L, D)
            cells.append(latents.mean(1))
            gene_ids = batch["gene_ids"]
            states = model.gene_states(gene_ids, batch["values"], batch["cu_seqlens"], latents=latents)  # (T, D)
        gene_sum.index_add_(0, gene_ids, states.double())
        gene_count.index_add_(0, gene_ids, torch.ones_like(gene_ids))
    embedding = torch.cat(cells).float().cpu().numpy() if cells else np.zeros((0, d_model), np.float32)
    return embedding, {"sum": gene_sum.cpu().numpy(), "count": gene_count.cpu().numpy()}
