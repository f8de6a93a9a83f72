"""scGPT (Cui et al., 2024, Nature Methods) as a release family: the layer stack of its published checkpoints, on
packed cells, for the GRN stage (gene states, value predictions).

Data flow (B cells, T packed tokens, D = embsize):
1. Values: each cell's non-zero expression is binned by the cell's own quantiles into 1 .. n_bins - 1 (0 = not
   expressed), as scGPT's preprocessing (`bin_cell_values`; ties go to the lower bin here, scGPT breaks them at
   random). A `<cls>` token with value 0 leads each cell.
2. Token = LayerNorm(gene embedding) + value encoding: "continuous" (Linear(1, D) -> ReLU -> Linear(D, D) ->
   LayerNorm on the bin as a number, clipped at 512) or "category" (an embedding of the bin, LayerNorm).
3. `n_layers` transformer layers, post-norm as the published models (x = LN(x + Attn(x)); x = LN(x + FFN(x)),
   ReLU), through the packed varlen attention backends; scGPT's fused `Wqkv` is our `attn.qkv_proj` (rows
   [q; k; v]).
4. Expression decoder: Linear -> LeakyReLU -> Linear -> LeakyReLU -> Linear(D, 1): the predicted (binned) value of
   every token; a masked gene's input value is `mask_value` (-1).

Imported, not trained here: `pretrain.interop.scgpt_io` reads a checkpoint folder (best_model.pt through
`torch.load(weights_only=True)`, vocab.json, args.json).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.attention import BACKENDS
from pretrain.models.common import MultiheadAttention, cu_seqlens_from_lengths, seqlens
from pretrain.models.unexpressed import append_to_cells

INPUT_EMB_STYLES = ("continuous", "category")


@dataclass
class ScGPTConfig:
    """scGPT's architecture fields (args.json: embsize, nheads, d_hid, nlayers, n_bins, input_emb_style)."""

    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 512
    n_layers: int = 12
    n_bins: int = 51
    input_emb_style: str = "continuous"
    dropout: float = 0.0
    cls_token: int = 0
    """Id of `<cls>` in the vocabulary (leads each cell)."""
    pad_token: int = 0
    mask_value: float = -1.0
    """Input value of a masked gene."""
    max_genes: int = 1200
    """Expressed genes a cell keeps (the most expressed), as scGPT's GRN tutorials' sequence length."""
    layer_norm_eps: float = 1e-5
    attention: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_genes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.n_bins, int) or self.n_bins < 2:
            problems.append(f"n_bins={self.n_bins!r} must be an integer >= 2")
        if self.input_emb_style not in INPUT_EMB_STYLES:
            problems.append(f"input_emb_style={self.input_emb_style!r} must be one of {INPUT_EMB_STYLES}")
        if self.attention not in ("auto", *BACKENDS):
            problems.append(f"attention={self.attention!r} must be one of {('auto', *BACKENDS)}")
        ints = isinstance(self.d_model, int) and isinstance(self.n_heads, int) and self.n_heads > 0
        if ints and self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if problems:
            msg = "invalid ScGPTConfig:\n  " + "\n  ".join(problems)
            raise ValueError(msg)


def bin_cell_values(values: Tensor, cu_seqlens: Tensor, n_bins: int) -> Tensor:
    """(T,) raw values of packed cells -> (T,) float bins: per cell, the non-zero values digitised by the cell's own
    quantiles (n_bins - 1 edges from its minimum to its maximum) into 1 .. n_bins - 1; zeros stay 0."""
    out = torch.zeros_like(values, dtype=torch.float32)
    cu = cu_seqlens.tolist()
    v = values.detach().cpu().numpy().astype(np.float64)
    for c in range(len(cu) - 1):
        row = v[cu[c] : cu[c + 1]]
        nonzero = row > 0
        if not nonzero.any():
            continue
        edges = np.quantile(row[nonzero], np.linspace(0, 1, n_bins - 1))
        digits = np.clip(np.digitize(row[nonzero], edges[1:-1], right=True) + 1, 1, n_bins - 1)
        block = np.zeros(len(row))
        block[nonzero] = digits
        out[cu[c] : cu[c + 1]] = torch.from_numpy(block).float()
    return out.to(values.device)


class PostNormBlock(nn.Module):
    """scGPT's encoder layer (norm_scheme "post", ReLU) on packed cells."""

    def __init__(self, c: ScGPTConfig) -> None:
        super().__init__()
        self.attn = MultiheadAttention(c.d_model, c.n_heads, dropout=c.dropout, backend=c.attention,
                                       self_attention=True)  # fmt: skip
        self.fc_in = nn.Linear(c.d_model, c.d_ff)
        self.fc_out = nn.Linear(c.d_ff, c.d_model)
        self.norm1 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.norm2 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
        x = self.norm1(x + self.attn(x, cu_seqlens, max_seqlen))
        return self.norm2(x + self.dropout(self.fc_out(self.dropout(F.relu(self.fc_in(x))))))


class ScGPT(nn.Module):
    """scGPT's published layer stack on packed cells (see the module docstring)."""

    def __init__(self, config: ScGPTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.gene_embedding = nn.Embedding(c.vocab_size, c.d_model)
        self.gene_norm = nn.LayerNorm(c.d_model)
        if c.input_emb_style == "continuous":
            self.value_fc1 = nn.Linear(1, c.d_model)
            self.value_fc2 = nn.Linear(c.d_model, c.d_model)
        else:
            self.value_embedding = nn.Embedding(c.n_bins + 2, c.d_model)  # bins, plus the mask and pad values
        self.value_norm = nn.LayerNorm(c.d_model)
        self.blocks = nn.ModuleList(PostNormBlock(c) for _ in range(c.n_layers))
        self.decoder = nn.Sequential(
            nn.Linear(c.d_model, c.d_model), nn.LeakyReLU(), nn.Linear(c.d_model, c.d_model), nn.LeakyReLU(),
            nn.Linear(c.d_model, 1),
        )  # fmt: skip

    @property
    def required_value_kind(self) -> str:
        return "counts"

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not (exclude_embeddings and "embedding" in n))

    def encode_values(self, values: Tensor) -> Tensor:
        """(T,) input values (bins, or mask_value) -> (T, D)."""
        if self.config.input_emb_style == "continuous":
            x = values.float().clamp(max=512).unsqueeze(-1)
            return self.value_norm(self.value_fc2(F.relu(self.value_fc1(x))))
        return self.value_norm(self.value_embedding(values.long()))

    def encode(self, gene_ids: Tensor, values: Tensor, cu_seqlens: Tensor, max_seqlen: int | None = None) -> Tensor:
        """Hidden states (T, D) of packed tokens with their input values (already binned; mask_value if masked)."""
        if max_seqlen is None:
            max_seqlen = int(seqlens(cu_seqlens).max())
        cu_seqlens = cu_seqlens.to(device=gene_ids.device, dtype=torch.int32)
        x = self.gene_norm(self.gene_embedding(gene_ids)) + self.encode_values(values)
        for block in self.blocks:
            x = block(x, cu_seqlens, max_seqlen)
        return x

    def predict(self, hidden: Tensor) -> Tensor:
        """(N, D) -> (N,) predicted values (the expression decoder)."""
        return self.decoder(hidden).squeeze(-1)

    def with_cls(self, gene_ids: Tensor, values: Tensor, cu_seqlens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Prepend each cell's `<cls>` token (value 0): -> (gene ids, values, cu_seqlens)."""
        n_cells = cu_seqlens.numel() - 1
        ones = cu_seqlens_from_lengths(torch.ones(n_cells, dtype=torch.long)).to(cu_seqlens.device)
        cls = torch.full((n_cells,), self.config.cls_token, dtype=gene_ids.dtype, device=gene_ids.device)
        cu, (ids, vals) = append_to_cells(ones, [cls, torch.zeros(n_cells, device=values.device)], cu_seqlens,
                                          [gene_ids, values.float()])  # fmt: skip
        return ids, vals, cu

    @torch.no_grad()
    def gene_states(
        self, gene_ids: Tensor, values: Tensor, cu_seqlens: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Contextual state of every given gene (T, D), in the given order: the cell's values binned, `<cls>`
        prepended (its state dropped), nothing masked. `generator` is unused (the signature of the other families)."""
        del generator
        bins = bin_cell_values(values, cu_seqlens, self.config.n_bins)
        ids, vals, cu = self.with_cls(gene_ids, bins, cu_seqlens)
        hidden = self.encode(ids, vals, cu)
        keep = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
        keep[cu[:-1].long()] = False
        return hidden[keep]

    @torch.no_grad()
    def predict_masked(self, gene_ids: Tensor, bins: Tensor, cu_seqlens: Tensor, mask: Tensor) -> Tensor:
        """Predicted (binned) value of every masked token (N,), in packed order: masked genes get `mask_value` as
        input, `<cls>` is prepended, the expression decoder reads their states."""
        inputs = torch.where(mask, torch.full_like(bins, self.config.mask_value), bins.float())
        ids, vals, cu = self.with_cls(gene_ids, inputs, cu_seqlens)
        keep = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
        keep[cu[:-1].long()] = False
        hidden = self.encode(ids, vals, cu)
        return self.predict(hidden[keep][mask])
