"""Layers and packed-batch helpers shared by the single-cell encoders (scBERT, Exceiver).

Everything works on packed batches: per-token tensors are (T, ...) with the B cells concatenated, and `cu_seqlens`
(B+1,) int32 marks the cell boundaries (see `data_prep.loader.CellBatch.to_torch`). No padding anywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.attention import check_head_dim, resolve_backend, segment_ids, varlen_attention, varlen_kernel

GENE_SAMPLING_MODES = ("random", "topk")

__all__ = [
    "GENE_SAMPLING_MODES",
    "MLP",
    "MultiheadAttention",
    "PreLNBlock",
    "cu_seqlens_from_lengths",
    "init_transformer_weights",
    "max_seqlen",
    "sample_genes",
    "segment_ids",
    "seqlens",
    "uniform",
]


# ----------------------------------------------------------------------------------------------------------------------
# packed-batch helpers


def seqlens(cu_seqlens: Tensor) -> Tensor:
    """(B+1,) offsets -> (B,) int64 lengths."""
    return (cu_seqlens[1:] - cu_seqlens[:-1]).long()


def max_seqlen(cu_seqlens: Tensor) -> int:
    """Longest sequence as a python int (a device sync when cu_seqlens lives on a GPU)."""
    if cu_seqlens.numel() < 2:
        return 0
    return int(seqlens(cu_seqlens).max())


def cu_seqlens_from_lengths(lengths: Tensor) -> Tensor:
    """(B,) lengths -> (B+1,) int32 offsets starting at 0."""
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = torch.cumsum(lengths, 0)
    return cu


def uniform(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """n U[0, 1) draws from `generator` (drawn on the generator's device, then moved), else from the global RNG."""
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def sample_genes(
    gene_ids: Tensor,
    values: Tensor,
    cu_seqlens: Tensor,
    max_genes: int,
    mode: str = "random",
    generator: torch.Generator | None = None,
    *,
    return_index: bool = False,
) -> tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    """Keep at most `max_genes` expressed genes per cell.

    Cells longer than `max_genes` keep a uniform random subset without replacement (``mode="random"``) or their
    `max_genes` largest values (``mode="topk"``, ties go to the earlier token, i.e. the lower gene id). Kept tokens
    stay in their original order, so gene ids remain ascending within a cell. Vectorised: two stable sorts over the
    T tokens rank every token inside its cell by the sampling key; no Python loop over cells or tokens.

    Args:
        gene_ids, values: (T,) packed per-token tensors.
        cu_seqlens: (B+1,) int32 cell offsets.
        max_genes: per-cell cap (>= 1).
        mode: one of `GENE_SAMPLING_MODES`.
        generator: RNG for ``mode="random"`` (deterministic given its seed); the global RNG when None.
        return_index: also return the (T',) int64 indices of the kept tokens, to gather other per-token tensors.

    Returns:
        (gene_ids (T',), values (T',), cu_seqlens (B+1,) int32[, kept_index (T',)]).
    """
    if mode not in GENE_SAMPLING_MODES:
        msg = f"gene sampling mode {mode!r} is not one of {GENE_SAMPLING_MODES}"
        raise ValueError(msg)
    if max_genes < 1:
        msg = f"max_genes={max_genes}: must be >= 1"
        raise ValueError(msg)
    total = gene_ids.shape[0]
    device = gene_ids.device
    lengths = seqlens(cu_seqlens.to(device))  # (B,)
    if total == 0 or not bool((lengths > max_genes).any()):  # one sync; nothing to drop is the common case
        kept = torch.arange(total, device=device)
        out = (gene_ids, values, cu_seqlens)
        return (*out, kept) if return_index else out

    seg = segment_ids(cu_seqlens.to(device), total)  # (T,)
    key = uniform(total, generator, device) if mode == "random" else values.float()
    # Rank tokens inside their cell by key, descending: sort by key, then stably by cell.
    order = torch.sort(key, descending=True, stable=True).indices  # (T,)
    order = order[torch.sort(seg[order], stable=True).indices]  # (T,) grouped by cell, key-descending within a cell
    starts = cu_seqlens.to(device=device, dtype=torch.int64)[:-1]  # (B,)
    rank = torch.arange(total, device=device) - starts[seg[order]]  # (T,) rank of token order[i] in its cell
    keep = torch.zeros(total, dtype=torch.bool, device=device)
    keep[order] = rank < max_genes
    kept = keep.nonzero().squeeze(1)  # (T',) in original order
    new_cu = cu_seqlens_from_lengths(lengths.clamp(max=max_genes))
    out = (gene_ids[kept], values[kept], new_cu)
    return (*out, kept) if return_index else out


# ----------------------------------------------------------------------------------------------------------------------
# layers


def _pick_backend(name: str, x: Tensor, dropout_p: float) -> str:
    """Resolve the configured backend for tensor x (its device and dtype) and this call's attention dropout."""
    return resolve_backend(name, x.device, x.dtype, dropout_p)


class MultiheadAttention(nn.Module):
    """Multi-head attention on packed sequences (Vaswani et al., 2017), self- or cross-attention.

    Self-attention: ``attn(x, cu, max_len)``. Cross-attention (e.g. Exceiver latents attending to genes):
    ``attn(x, cu, max_len, context=c, cu_seqlens_context=cu_c, max_seqlen_context=max_c)``; query sequence i attends
    to context sequence i only.

    ``self_attention=True`` fuses the three projections into one ``qkv_proj`` (d_model -> 3 d_model): one matmul
    instead of two, and q, k, v are strided views of its output (the kernels take strided inputs; nothing is
    copied). Its rows are [q; k; v], so weights saved with separate ``q_proj`` (d_model rows) and ``kv_proj``
    ([k; v] rows) load into it by concatenation (`_fuse_separate_projections`): releases made before the fusion
    still load and compute the same function.

    Shapes:
        x: (Tq, d_model); context: (Tk, kv_dim) with kv_dim defaulting to d_model; output: (Tq, d_model).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kv_dim: int | None = None,
        dropout: float = 0.0,
        backend: str = "auto",
        bias: bool = True,
        self_attention: bool = False,
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            msg = f"d_model={d_model} is not divisible by n_heads={n_heads}"
            raise ValueError(msg)
        if self_attention and kv_dim not in (None, d_model):
            msg = f"self_attention=True attends x to itself: kv_dim={kv_dim} must be None or d_model={d_model}"
            raise ValueError(msg)
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.backend = backend
        self.dropout = dropout
        self.self_attention = self_attention
        # (training, evaluation) backends, fixed by `resolve_attention` before a compiled forward: resolving reads
        # the device's properties, which would break the graph on every call
        self.resolved_backends: tuple[str, str] | None = None
        if self_attention:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
            self.register_load_state_dict_pre_hook(_fuse_separate_projections)
        else:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.kv_proj = nn.Linear(d_model if kv_dim is None else kv_dim, 2 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        cu_seqlens: Tensor,
        max_seqlen: int,
        context: Tensor | None = None,
        cu_seqlens_context: Tensor | None = None,
        max_seqlen_context: int | None = None,
    ) -> Tensor:
        t_q = x.shape[0]
        if self.self_attention:
            if context is not None:
                msg = "this attention was built with self_attention=True (fused q/k/v): it takes no context"
                raise ValueError(msg)
            q, k, v = self.qkv_proj(x).view(t_q, 3, self.n_heads, self.head_dim).unbind(1)  # 3 x (T, H, D) views
            cu_seqlens_context, max_seqlen_context = cu_seqlens, max_seqlen
        else:
            if context is None:
                context, cu_seqlens_context, max_seqlen_context = x, cu_seqlens, max_seqlen
            elif cu_seqlens_context is None or max_seqlen_context is None:
                msg = "cross-attention needs cu_seqlens_context and max_seqlen_context along with context"
                raise ValueError(msg)
            q = self.q_proj(x).view(t_q, self.n_heads, self.head_dim)  # (Tq, H, D)
            k, v = self.kv_proj(context).view(context.shape[0], 2, self.n_heads, self.head_dim).unbind(1)
        dropout = self.dropout if self.training else 0.0
        y = varlen_attention(
            q,
            k,
            v,
            cu_seqlens,
            cu_seqlens_context,
            max_seqlen,
            max_seqlen_context,
            backend=_pick_backend(self.backend, q, dropout)
            if self.resolved_backends is None
            else self.resolved_backends[0 if self.training else 1],
            dropout_p=dropout,
        )  # (Tq, H, D)
        y = y.reshape(t_q, self.n_heads * self.head_dim)  # (Tq, d_model)
        return self.out_dropout(self.out_proj(y))


def resolve_attention(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> dict[str, str]:
    """Fix every attention layer's backend for inputs of `dtype` on `device` (training with its dropout, and
    evaluation without), so a compiled forward never resolves one: call it after moving the model, before the first
    step. Returns {layer name: "training backend / evaluation backend"}; errors as `resolve_backend`."""
    chosen = {}
    for name, module in model.named_modules():
        if isinstance(module, MultiheadAttention):
            module.resolved_backends = (
                resolve_backend(module.backend, device, dtype, module.dropout),
                resolve_backend(module.backend, device, dtype, 0.0),
            )
            for backend in module.resolved_backends:
                check_head_dim(backend, module.head_dim)
            chosen[name] = " / ".join(module.resolved_backends)
            if "varlen" in module.resolved_backends:
                varlen_kernel()  # looked up now, read as a constant by a compiled graph
    return chosen


def _fuse_separate_projections(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: weights saved with separate q_proj / kv_proj (before the fusion) -> qkv_proj."""
    del module, args
    for kind in ("weight", "bias"):
        q, kv = f"{prefix}q_proj.{kind}", f"{prefix}kv_proj.{kind}"
        if q in state_dict and kv in state_dict and f"{prefix}qkv_proj.{kind}" not in state_dict:
            state_dict[f"{prefix}qkv_proj.{kind}"] = torch.cat([state_dict.pop(q), state_dict.pop(kv)], dim=0)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(d_model, d_ff) -> GELU -> Linear(d_ff, d_model) -> dropout."""

    def __init__(self, d_model: int, d_ff: int, *, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc_out(F.gelu(self.fc_in(x))))  # (T, d_model)


class PreLNBlock(nn.Module):
    """Pre-LayerNorm transformer encoder block (Xiong et al., 2020, "On Layer Normalization in the Transformer
    Architecture"), bidirectional, on packed sequences:

        x = x + Attn(LN(x));  x = x + MLP(LN(x))

    Shapes:
        x: (T, d_model) packed; cu_seqlens: (B+1,) int32; output: (T, d_model).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, dropout: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = MultiheadAttention(d_model, n_heads, dropout=dropout, backend=backend, self_attention=True)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff, dropout=dropout)

    def forward(self, x: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
        x = x + self.attn(self.ln_attn(x), cu_seqlens, max_seqlen)
        return x + self.mlp(self.ln_mlp(x))


def init_transformer_weights(module: nn.Module, n_layers: int, std: float = 0.02) -> None:
    """GPT-2 style init (Radford et al., 2019; as in nanoGPT): N(0, std) for Linear/Embedding weights, zero biases,
    and residual output projections (`out_proj`, `fc_out`) scaled by 1/sqrt(2 * n_layers) so the residual stream's
    variance does not grow with depth."""
    for name, param in module.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(param)
        elif param.dim() >= 2:
            is_residual_out = name.endswith(("out_proj.weight", "fc_out.weight"))
            nn.init.normal_(param, mean=0.0, std=std / math.sqrt(2 * n_layers) if is_residual_out else std)
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
