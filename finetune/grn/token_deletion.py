"""Geneformer's in-silico deletion: how far each gene's embedding moves when a TF's token is removed from the cell.

For a model that predicts gene identity rather than expression (the Geneformer family: rank-value encoded cells),
there is no predicted value to compare. Its own perturbation readout (Theodoris et al., 2023) removes the TF's
token, lets the remaining genes move up one rank, re-encodes, and measures each gene's embedding shift:

    Δ(t → g) = 1 − cos(h_g(cell), h_g(cell without t))

per cell where both are tokenised; the statistics over cells (mean, t, count) are those of the value deletion
(`finetune.grn.evidence.PairAccumulator`), so the GRN stage treats both alike. Batched (the reference and its
deletions of one cell share a forward), cached by `evidence.release_deletion_evidence`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from finetune.grn.evidence import DeletionConfig, PairAccumulator


@torch.no_grad()
def token_deletion(
    model: torch.nn.Module,
    batches,
    row_of_id: np.ndarray,
    tf_rows: np.ndarray,
    n_genes: int,
    config: DeletionConfig,
    progress: bool = False,
    total_cells: int | None = None,
) -> dict[str, np.ndarray]:
    """Δ(t → g) statistics over the cells of `batches` (packed raw counts): {"isd_t", "isd_mean", "isd_count"}, (G, G)
    float32 matrices indexed [tf row, target row]."""
    from tqdm.auto import tqdm

    from pretrain.models.geneformer import rank_value_encode

    rng = np.random.default_rng(config.seed)
    is_tf_row = np.zeros(n_genes, dtype=bool)
    is_tf_row[tf_rows] = True
    acc = PairAccumulator(n_genes)
    special = set(model.config.special_ids)
    median = model.gene_median.cpu()
    device = model.token_embedding.weight.device
    pending: list[tuple[np.ndarray, int, np.ndarray]] = []  # (tokens, deleted row or -1, rows of the tokens)
    pending_tokens = 0
    seen = 0

    def flush() -> None:
        nonlocal pending, pending_tokens
        if not pending:
            return
        ids = torch.from_numpy(np.concatenate([p[0] for p in pending]))
        lengths = torch.tensor([len(p[0]) for p in pending])
        cu = torch.zeros(len(pending) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths, 0)
        positions = torch.cat([torch.arange(n) for n in lengths.tolist()])
        hidden = model.encode(ids.to(device), positions.to(device), cu.to(device)).float().cpu()
        states = hidden.split(lengths.tolist())
        reference: dict[int, torch.Tensor] = {}
        for (_, deleted, rows), h in zip(pending, states, strict=True):
            if deleted < 0:
                reference = {int(r): h[i] for i, r in enumerate(rows) if r >= 0}
                continue
            keep = [i for i, r in enumerate(rows) if r >= 0 and int(r) in reference]
            if not keep:
                continue
            before = torch.stack([reference[int(rows[i])] for i in keep])
            shift = 1.0 - F.cosine_similarity(before, h[keep], dim=-1)
            targets = torch.as_tensor(rows[keep], dtype=torch.int64)
            acc.add(torch.full_like(targets, deleted), targets, shift)
        pending, pending_tokens = [], 0

    bar = tqdm(total=total_cells, desc="in-silico deletion (tokens)", unit="cell", disable=not progress)
    for batch in batches:
        input_ids, _, cu = rank_value_encode(
            model.config, median, batch["gene_ids"], batch["values"], batch["cu_seqlens"], batch.get("library_size")
        )
        cu, input_ids = cu.numpy(), input_ids.numpy()
        for c in range(len(cu) - 1):
            if seen >= config.max_cells:
                break
            seen += 1
            bar.update(1)
            tokens = input_ids[cu[c] : cu[c + 1]]
            rows = np.array([-1 if t in special else row_of_id[t] for t in tokens], dtype=np.int64)
            tf_positions = np.flatnonzero((rows >= 0) & is_tf_row[np.maximum(rows, 0)])
            if not len(tf_positions) or len(tokens) < 3:
                continue
            if len(tf_positions) > config.tfs_per_cell:
                tf_positions = np.sort(rng.choice(tf_positions, size=config.tfs_per_cell, replace=False))
            size = len(tokens) * (len(tf_positions) + 1)
            if pending_tokens and pending_tokens + size > config.tokens_per_forward:
                flush()
            pending.append((tokens, -1, rows))  # the reference first: a cell's variants are flushed together
            for position in tf_positions:
                sel = np.ones(len(tokens), dtype=bool)
                sel[position] = False  # the genes after it move up one rank
                pending.append((tokens[sel], int(rows[position]), rows[sel]))
            pending_tokens += size
        if seen >= config.max_cells:
            break
    flush()
    bar.close()
    return acc.statistics()
