"""Is the pretrained model better than a trivial one? Held-out masked loss vs a per-gene baseline.

The baseline knows each gene's marginal distribution (learned on the train split) and nothing about the cell:
for scBERT-family models it predicts each gene's empirical bin distribution (Laplace-smoothed), scored with the same
cross-entropy on the same masked positions of validation cells. A model that uses co-expression must beat it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from data_prep.loader import StreamingCellDataset
from pretrain.models.scbert import IGNORE_INDEX, ScBert, bin_values


@torch.no_grad()
def scbert_vs_gene_baseline(
    model: ScBert, corpus: Path, *, train_cells: int = 3000, val_batches: int = 20, batch_size: int = 16, seed: int = 0
) -> dict[str, float]:
    """Masked cross-entropy of `model` and of the per-gene bin-distribution baseline on validation cells."""
    model.eval()
    n_bins = model.config.n_bins
    vocab = model.config.vocab_size
    counts = torch.ones(vocab, n_bins)  # Laplace smoothing
    seen = 0
    for batch in StreamingCellDataset(corpus, split="train", shuffle=True, seed=seed, batch_size=256, obs_columns=[]):
        t = batch.to_torch()
        bins = bin_values(t["values"], t["cu_seqlens"], n_bins, library_size=t.get("library_size"))
        counts.index_put_((t["gene_ids"], bins), torch.ones_like(bins, dtype=torch.float), accumulate=True)
        seen += batch.n_cells
        if seen >= train_cells:
            break
    log_p = (counts / counts.sum(1, keepdim=True)).log()  # (V, n_bins)
    gen = torch.Generator().manual_seed(seed)
    model_sum = base_sum = 0.0
    n = 0
    data = StreamingCellDataset(corpus, split="val", shuffle=False, batch_size=batch_size, obs_columns=[])
    for i, batch in enumerate(data):
        if i >= val_batches:
            break
        out = model(batch.to_torch(), generator=gen)
        masked = out["labels"] != IGNORE_INDEX
        m = int(masked.sum())
        model_sum += float(out["loss"]) * m
        base_sum += float(-log_p[out["gene_ids"][masked], out["labels"][masked]].sum())
        n += m
    return {"model": model_sum / n, "gene_baseline": base_sum / n, "n_masked": n}
