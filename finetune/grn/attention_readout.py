"""Attention readout: which genes the release's attention heads make a gene look at, averaged over cells.

For every self-attention layer l and head h, each gene's query and key vectors are averaged over the cells that
express it (one streaming pass; the cells as they are, nothing masked): Q̄_lh[g], K̄_lh[g]. A gene's attention to the
other genes is then softmax over keys of Q̄_lh[g] · K̄_lh[j] / √d (scPRINT's reading of a transformer's attention as a
GRN, on averaged queries and keys; Kalfon et al. 2025). A target reads its regulators, so the score of TF t → gene g is
g's attention to t: S_lh[t, g] = softmax_j(Q̄_lh[g] · K̄_lh[j] / √d)[t], over the genes seen in any cell.

The unsupervised readout (`pretrained-attention`, twin `random-init-attention`) is the mean of S over layers and
heads; the per-head matrices are kept beside it (`attention_heads`, (L·H, G, G)) for the learned methods.

Families: scBERT, Geneformer, scGPT (self-attention over a cell's tokens, as above). The Exceiver attends through its
latents: latent l reads gene t with the encoder's weight E_c[l, t] (a softmax over the cell's genes), the latent
self-attention blocks mix latents (R_c = Π_b (½ A_b + ½ I), attention rollout with the residual as the identity;
Abnar & Zuidema 2020), and a query gene g reads latent l with the decoder's weight D_c[g, l]. So g reads t with
P_c[g, t] = (D_c R_c E_c)[g, t] (each row sums to 1 over the cell's genes), computed exactly per cell and averaged
over the cells that express t: S[t, g] = mean_c P_c[g, t] (`latent_rollout`). Heads averaged within each attention
for the mean readout; the channels for the learned methods are each encoder head (decoder heads averaged) and each
decoder head (encoder heads averaged).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from finetune.errors import GrnInputError
from finetune.grn.evidence import cached_arrays
from finetune.grn.release_inputs import ReleaseInputs
from pretrain.models.common import MultiheadAttention

ATTENTION_VERSION = 1


def _self_attentions(model: torch.nn.Module) -> list[MultiheadAttention]:
    return [m for m in model.modules() if isinstance(m, MultiheadAttention) and m.self_attention]


def has_gene_attention(model: torch.nn.Module) -> bool:
    """Whether genes' attention to genes can be read: self-attention over genes (scBERT, Geneformer, scGPT), or the
    routing through latents (the Exceiver's `attention_maps`)."""
    return bool(_self_attentions(model)) or hasattr(model, "attention_maps")


def _first_cells(batches, max_cells: int, bar):
    """(gene_ids, values, cu_seqlens) of the packed batches cut to their first `max_cells` cells in all."""
    seen = 0
    for batch in batches:
        cu = batch["cu_seqlens"]
        n_cells = min(cu.numel() - 1, max_cells - seen)
        if n_cells <= 0:
            return
        end = int(cu[n_cells])
        yield batch["gene_ids"][:end], batch["values"][:end], cu[: n_cells + 1]
        seen += n_cells
        bar.update(n_cells)


@torch.no_grad()
def latent_rollout(
    model: torch.nn.Module, batches, row_of_id: np.ndarray, n_genes: int, tf_rows: np.ndarray, max_cells: int,
    progress: bool = False,
) -> dict[str, np.ndarray]:  # fmt: skip
    """S[t, g] = mean over the cells expressing TF t of (D_c R_c E_c)[g, t] (module docstring), for a latent model.

    Returns {"attention_mean": (G, G), "attention_heads": (2H, G, G)} float32, TF rows filled, others 0."""
    from tqdm.auto import tqdm

    rows_all = torch.from_numpy(row_of_id)
    mapped = np.flatnonzero(row_of_id >= 0)  # vocab ids of the dataset's genes
    query_ids = torch.from_numpy(mapped).long()
    query_rows = rows_all[query_ids]  # (Q,) dataset rows of the query genes
    is_tf = torch.zeros(n_genes, dtype=torch.bool)
    is_tf[torch.as_tensor(np.asarray(tf_rows), dtype=torch.int64)] = True
    heads = model.config.n_heads
    sums = torch.zeros(1 + 2 * heads, n_genes, n_genes, dtype=torch.float64)  # [channel, tf row, target row]
    count = torch.zeros(n_genes, dtype=torch.float64)
    bar = tqdm(total=max_cells, desc="attention readout (latents)", unit="cell", disable=not progress)
    for ids, values, cu in _first_cells(batches, max_cells, bar):
        maps = model.attention_maps(ids, values, cu, query_ids)
        n_cells = cu.numel() - 1
        bounds = maps["cu_seqlens"].tolist()
        n_latents = maps["decoder"].shape[-1]
        for c in range(n_cells):
            rows = rows_all[maps["gene_ids"][bounds[c] : bounds[c + 1]]]  # (n_c,) rows of the cell's genes
            keep = (rows >= 0) & is_tf[rows.clamp(min=0)]  # the cell's TFs are the t of S[t, g]
            if not keep.any():
                continue
            rollout = torch.eye(n_latents)
            for attention in maps["latent"]:
                rollout = (0.5 * attention[c].mean(0) + 0.5 * torch.eye(n_latents)) @ rollout  # (L, L)
            enc = maps["encoder"][c][:, :, keep]  # (H, L, n_tf)
            dec = maps["decoder"][c]  # (H, Q, L)
            routed_dec, enc_mean = dec.mean(0) @ rollout, enc.mean(0)  # D̄ R (Q, L), Ē (L, n_tf)
            channels = [routed_dec @ enc_mean]  # (Q, n_tf)
            channels += [routed_dec @ enc[h] for h in range(heads)]
            channels += [dec[h] @ rollout @ enc_mean for h in range(heads)]
            tf_here = rows[keep]
            for i, routed in enumerate(channels):
                sums[i][tf_here[:, None], query_rows[None, :]] += routed.T.double()
            count[tf_here] += 1
    bar.close()
    scores = (sums / count.clamp(min=1).view(1, -1, 1)).float()
    scores.diagonal(dim1=1, dim2=2).zero_()
    return {"attention_mean": scores[0].numpy(), "attention_heads": scores[1:].numpy()}


@torch.no_grad()
def mean_queries_keys(
    model: torch.nn.Module,
    batches,
    row_of_id: np.ndarray,
    n_genes: int,
    max_cells: int,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-gene means of every self-attention layer's queries and keys over the first `max_cells` cells.

    Returns q̄ and k̄ (L, G, H, d) float32 and the count of cells per gene (G,)."""
    from tqdm.auto import tqdm

    layers = _self_attentions(model)
    if not layers:
        msg = (
            f"{type(model).__name__}: no self-attention over a cell's genes (the Exceiver attends through latents), "
            "so there is no gene → gene attention to read; leave the attention readout out (--baselines / "
            "--evidence) for this release."
        )
        raise GrnInputError(msg)
    n_heads, head_dim = layers[0].n_heads, layers[0].head_dim
    q_sum = torch.zeros(len(layers), n_genes, n_heads, head_dim, dtype=torch.float64)
    k_sum = torch.zeros_like(q_sum)
    count = torch.zeros(n_genes, dtype=torch.float64)
    captured: list[torch.Tensor] = []
    hooks = [m.qkv_proj.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in layers]
    row_of_id = torch.from_numpy(row_of_id)
    try:
        bar = tqdm(total=max_cells, desc="attention readout", unit="cell", disable=not progress)
        for ids, values, cu in _first_cells(batches, max_cells, bar):
            end = ids.numel()
            captured.clear()
            if hasattr(model, "token_states"):  # Geneformer family: the attention runs over its rank-value tokens
                ids, _, _ = model.token_states(ids, values, cu)
                end = ids.numel()
            else:
                model.gene_states(ids, values, cu)
                if hasattr(model, "with_cls"):  # scGPT: the attention also ran over each cell's leading <cls>
                    ids = model.with_cls(ids, values.float(), cu)[0]
                    end = ids.numel()
            rows = row_of_id[ids]
            keep = rows >= 0
            rows = rows[keep]
            for layer, out in enumerate(captured):
                qkv = out.float().view(end, 3, n_heads, head_dim)[keep].double()
                q_sum[layer].index_add_(0, rows, qkv[:, 0])
                k_sum[layer].index_add_(0, rows, qkv[:, 1])
            count.index_add_(0, rows, torch.ones(rows.numel(), dtype=torch.float64))
        bar.close()
    finally:
        for hook in hooks:
            hook.remove()
    denominator = count.clamp(min=1).view(1, -1, 1, 1)
    return (q_sum / denominator).float(), (k_sum / denominator).float(), count.float()


def attention_scores(q_mean: torch.Tensor, k_mean: torch.Tensor, count: torch.Tensor, tf_rows: np.ndarray) -> dict:
    """S_lh[t, g] = softmax_j(q̄[g] · k̄[j] / √d)[t] over genes j seen in a cell (module docstring).

    Returns {"attention_mean": (G, G), "attention_heads": (L·H, G, G)} float32, TF rows filled, others 0."""
    n_layers, n_genes, n_heads, head_dim = q_mean.shape
    seen = count > 0
    tf_rows = torch.as_tensor(np.asarray(tf_rows), dtype=torch.int64)
    heads = torch.zeros(n_layers * n_heads, n_genes, n_genes)
    for layer in range(n_layers):
        for head in range(n_heads):
            logits = q_mean[layer, :, head] @ k_mean[layer, :, head].T / math.sqrt(head_dim)  # (G query, G key)
            logits = logits.masked_fill(~seen.view(1, -1), -math.inf)
            attention = torch.softmax(logits, dim=1).nan_to_num(0.0)  # a query gene's weights over key genes
            attention[~seen] = 0.0
            channel = heads[layer * n_heads + head]
            channel[tf_rows] = attention.T[tf_rows]  # S[t, g] = attention of g to t
    heads.diagonal(dim1=1, dim2=2).zero_()
    return {"attention_mean": heads.mean(0).numpy(), "attention_heads": heads.numpy()}


def release_attention_evidence(
    rel: ReleaseInputs,
    tf_rows: np.ndarray,
    kind: str,
    max_cells: int,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """The attention readout of the release (or its random-init twin, `kind`) on the dataset's cells, cached like
    the other readouts."""
    tf_rows = np.asarray(tf_rows, dtype=np.int64)
    key = rel.cache_key(
        f"attention-v{ATTENTION_VERSION}", kind, ",".join(map(str, tf_rows.tolist())), json.dumps(max_cells)
    )

    def compute() -> dict[str, np.ndarray]:
        model = rel.model(kind)
        if hasattr(model, "attention_maps"):  # the Exceiver: through its latents
            return latent_rollout(model, rel.batches(32), rel.row_of_id, rel.n_genes, tf_rows, max_cells, progress)
        q, k, count = mean_queries_keys(
            rel.model(kind), rel.batches(32), rel.row_of_id, rel.n_genes, max_cells, progress
        )
        return attention_scores(q, k, count, tf_rows)

    return cached_arrays(cache_dir, f"attention-{key}", compute)
