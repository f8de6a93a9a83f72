"""Exceiver: a Perceiver IO masked-expression model over packed single cells.

Connell et al. 2022, "A single-cell gene expression language model" (arXiv:2210.14330), built on Perceiver IO
(Jaegle et al. 2021, arXiv:2107.14795). Reference implementation: github.com/keiserlab/exceiver.

One training step, for a packed batch of B cells (T expressed genes in all):

1. Gene sampling: a cell with more than `max_genes` expressed genes keeps `max_genes` of them ("random" or the
   "topk" highest counts). Library sizes are taken *before* sampling, so normalization sees the whole cell.
2. Masking: `mask_prob` of each cell's expressed genes are hidden (at least 1 in a cell with >= 2 genes, never all).
3. Encoder: every unmasked gene becomes the token  e_g · x_g,  its gene embedding scaled by its log1p-normalized
   value (as in the paper). L learned latents, the same L for every cell, cross-attend into their own cell's tokens
   (varlen attention), then `n_self_layers` pre-LN transformer blocks run over each cell's (L, D) latents.
4. Decoder: the masked genes' bare embeddings e_g are queries that cross-attend into their cell's latents, and the
   result h_g is read out with the same embedding:  ŷ_g = ⟨LN(h_g), e_g⟩ / √D + b_g + b  — the log1p value (mse)
   or the log expression per 1e4 counts (poisson, nb).

Design choices, and where they depart from the reference code:

- Mask handling. Masked genes are *removed* from the encoder's input rather than replaced by a [MASK] token or a
  learned mask value, as in the reference implementation (it hands the masked genes to the decoder only): the
  latents never see a masked gene, and the decoder query (the gene's own embedding) says which gene to predict.
  So the vocab's <mask> id is unused here, and `encode` on an unmasked cell runs exactly the encoder that training
  ran.
- No LayerNorm on the encoder's keys/values. Perceiver IO (and the reference code) layer-norm their inputs, but
  LayerNorm(x_g · e_g) = LayerNorm(e_g) for any x_g > 0: it would erase the expression value from the input.
  Gene embeddings start at unit variance and the latents at std 0.02 (GPT-2 init), so what the latents receive
  from the genes dominates their initial value.
- Decoder without a query residual, with a tied readout, as Perceiver IO's masked-language-model decoder (no query
  residual; logits read with the input embedding matrix plus a per-token bias). With the reference's residual
  h_g = e_g + Attn(...) and a shared Linear(D, 1) head, the unit-size query swamps the cell-dependent part of h_g
  at initialization (about 1e-3 of it) and training sat at the per-gene-mean predictor on the synthetic task of
  `tests/pretrain/test_exceiver.py`; without the residual, with e_g as the gene's own readout weights, it learns.

Shapes: B cells, T packed genes, L latents, D model width, H heads, N masked genes in the batch.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pretrain.models import unexpressed
from pretrain.models.attention import BACKENDS
from pretrain.models.common import (
    GENE_SAMPLING_MODES,
    MLP,
    MultiheadAttention,
    init_transformer_weights,
    sample_genes,
    seqlens,
)
from pretrain.models.exceiver_batch import (
    check_packed,
    lengths_stats,
    prepare_batch,
    raise_empty,
    sample_mask,
    split_masked,
)
from pretrain.models.objectives import (
    TARGET_SUM,
    cell_library_size,
    mse_loss,
    negative_binomial_nll,
    normalize_log1p,
    poisson_nll,
)

OBJECTIVES = ("mse", "poisson", "nb")
ATTENTION = ("auto", *BACKENDS)
N_SPECIAL_TOKENS = 4  # <pad>=0, <mask>=1, <cls>=2, <unk>=3 (data_prep.vocab.SPECIAL_TOKENS)


@dataclass
class ExceiverConfig:
    """Hyperparameters of an `Exceiver`; all problems are reported at once by `__post_init__`."""

    vocab_size: int
    """Rows of the gene embedding: the corpus vocab's size, 4 special tokens included."""
    d_model: int = 128
    """Width D of gene embeddings, latents and every block."""
    n_latents: int = 64
    """Latent vectors L per cell (the Perceiver bottleneck); every cell uses the same L learned queries."""
    n_heads: int = 4
    """Attention heads in every block; must divide `d_model`."""
    n_self_layers: int = 4
    """Pre-LN self-attention blocks over each cell's L latents (0 = encoder cross-attention only)."""
    d_ff: int = 512
    """Hidden width of every block's MLP."""
    dropout: float = 0.0
    """Dropout on attention probabilities and residual branches, in [0, 1)."""
    max_genes: int = 2048
    """Most expressed genes a cell keeps per step; longer cells are subsampled by `gene_sampling`."""
    gene_sampling: str = "random"
    """How a cell longer than `max_genes` is cut: "random" genes or the "topk" highest counts."""
    mask_prob: float = 0.15
    """Fraction of each cell's expressed genes hidden from the encoder and predicted, in (0, 1)."""
    mask_unexpressed: float = 0.0
    """Fraction of the predicted set drawn from genes the cell's input measured but the cell did not express (count
    0, scored with the full, not zero-truncated, likelihood), in [0, 1); needs a corpus of format >= 3
    (measured-gene panels). 0 = expressed genes only. See pretrain.models.unexpressed."""
    objective: str = "mse"
    """"mse" on log1p(CP10k) values (the paper), or zero-truncated "poisson" / "nb" likelihoods of the raw counts
    (the targets are expressed genes, k >= 1) with the cell's library size as offset (pretrain.models.objectives)."""
    attention: str = "auto"
    """Varlen attention backend: "auto" (torch's fused "varlen" on CUDA in bf16/fp16 without attention dropout,
    "sdpa" on CPU), "varlen", "flash", "sdpa", "reference"; see ScBertConfig.attention."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (torch.utils.checkpoint, non-reentrant)."""
    compile: bool = False
    """torch.compile the encoder, latent and decoder blocks in place (dynamic shapes). For GPUs; off by default."""

    def __post_init__(self) -> None:
        problems = []

        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                problems.append(f"{name}={value!r} must be an integer >= {minimum}")

        positive_int("vocab_size", N_SPECIAL_TOKENS + 1)
        for name in ("d_model", "n_latents", "n_heads", "d_ff", "max_genes"):
            positive_int(name)
        positive_int("n_self_layers", 0)
        if (
            all(isinstance(getattr(self, n), int) and getattr(self, n) >= 1 for n in ("d_model", "n_heads"))
            and self.d_model % self.n_heads
        ):
            problems.append(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads} "
                f"(d_model % n_heads = {self.d_model % self.n_heads}); pick n_heads among the divisors of d_model"
            )
        if not (isinstance(self.dropout, int | float) and 0.0 <= self.dropout < 1.0):
            problems.append(f"dropout={self.dropout!r} must be in [0, 1)")
        if not (isinstance(self.mask_prob, int | float) and 0.0 < self.mask_prob < 1.0):
            problems.append(f"mask_prob={self.mask_prob!r} must be in (0, 1)")
        if (problem := unexpressed.check_fraction(self.mask_unexpressed)) is not None:
            problems.append(problem)
        choices = (("gene_sampling", GENE_SAMPLING_MODES), ("objective", OBJECTIVES), ("attention", ATTENTION))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if not isinstance(self.activation_checkpointing, bool):
            problems.append(f"activation_checkpointing={self.activation_checkpointing!r} must be true or false")
        if not isinstance(self.compile, bool):
            problems.append(f"compile={self.compile!r} must be true or false")
        if problems:
            msg = f"invalid ExceiverConfig ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems)
            raise ValueError(msg)


# ----------------------------------------------------------------------------------------------------------------------
# blocks


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention + MLP over packed sequences (a Perceiver IO encode / decode block):

        y = [q +] Attn(LN(q), kv');   out = y + MLP(LN(y))

    with kv' = LN(kv) if `norm_kv` else kv, and the query residual [q +] if `query_residual`. Query sequence i
    attends only to key/value sequence i.

    Shapes: q (Tq, D), kv (Tk, D), cu_seqlens_q / cu_seqlens_k (B+1,) int32 -> (Tq, D).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        backend: str,
        *,
        norm_kv: bool,
        query_residual: bool,
    ) -> None:
        super().__init__()
        self.query_residual = query_residual
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model) if norm_kv else nn.Identity()
        self.attn = MultiheadAttention(d_model, n_heads, dropout=dropout, backend=backend)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff, dropout=dropout)

    def forward(
        self, q: Tensor, kv: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int
    ) -> Tensor:
        y = self.attn(
            self.norm_q(q),
            cu_seqlens_q,
            max_seqlen_q,
            context=self.norm_kv(kv),
            cu_seqlens_context=cu_seqlens_k,
            max_seqlen_context=max_seqlen_k,
        )  # (Tq, D)
        if self.query_residual:
            y = q + y
        return y + self.mlp(self.norm_mlp(y))


class LatentSelfAttentionBlock(nn.Module):
    """Pre-LN transformer block over each cell's latents. Every cell has exactly L latents, so this is dense batched
    SDPA on (B, L, D), no varlen needed:  x = x + Attn(LN(x));  x = x + MLP(LN(x)).

    Shapes: x (B, L, D) -> (B, L, D).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm_attn = nn.LayerNorm(d_model)
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.out_dropout = nn.Dropout(dropout)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        n_cells, n_latents, d_model = x.shape
        qkv = self.qkv_proj(self.norm_attn(x)).view(n_cells, n_latents, 3, self.n_heads, d_model // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, hd)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, H, L, hd)
        y = y.transpose(1, 2).reshape(n_cells, n_latents, d_model)  # (B, L, D)
        x = x + self.out_dropout(self.out_proj(y))
        return x + self.mlp(self.norm_mlp(x))


# ----------------------------------------------------------------------------------------------------------------------
# model


class Exceiver(nn.Module):
    """Exceiver masked-expression model (see the module docstring for the data flow and design choices).

    Shapes: batch["gene_ids"] (T,) int64, batch["values"] (T,) raw counts, batch["cu_seqlens"] (B+1,) int32;
    `encode` -> (B, L, D); `forward` -> per-masked-gene predictions (N,).
    """

    def __init__(self, config: ExceiverConfig) -> None:
        super().__init__()
        self.config = config
        d_model, n_heads, d_ff, dropout = config.d_model, config.n_heads, config.d_ff, config.dropout
        self.gene_embedding = nn.Embedding(config.vocab_size, d_model)  # e_g
        self.latents = nn.Parameter(torch.empty(config.n_latents, d_model))  # (L, D) learned queries, shared by cells
        # keys are x_g · e_g, deliberately not layer-normed (LN would cancel x_g; see module docstring)
        self.encoder = CrossAttentionBlock(
            d_model, n_heads, d_ff, dropout, config.attention, norm_kv=False, query_residual=True
        )
        self.self_blocks = nn.ModuleList(
            LatentSelfAttentionBlock(d_model, n_heads, d_ff, dropout) for _ in range(config.n_self_layers)
        )
        self.norm_latents = nn.LayerNorm(d_model)
        # kv: the latents, already normed by norm_latents; no query residual (see module docstring)
        self.decoder = CrossAttentionBlock(
            d_model, n_heads, d_ff, dropout, config.attention, norm_kv=False, query_residual=False
        )
        self.norm_out = nn.LayerNorm(d_model)
        self.gene_bias = nn.Embedding(config.vocab_size, 1)  # b_g
        # b, (1,) not 0-dim: DeepSpeed cannot broadcast 0-dim parameters. Starts at 0; setting it to the mean
        # target (a usual output-bias init) saves the first steps of fitting the offset.
        self.value_bias = nn.Parameter(torch.zeros(1))
        # log θ_g, the NB inverse dispersion of each gene (scVI's per-gene "px_r"); 0 -> θ = 1
        self.log_theta = nn.Embedding(config.vocab_size, 1) if config.objective == "nb" else None
        self.reset_parameters()
        if config.compile:
            for block in (self.encoder, *self.self_blocks, self.decoder):
                block.compile(dynamic=True)

    def reset_parameters(self) -> None:
        init_transformer_weights(self, n_layers=self.config.n_self_layers + 2)  # + encoder and decoder blocks
        # unit-variance gene embeddings: token x_g · e_g then has a norm that tracks the expression value
        nn.init.normal_(self.gene_embedding.weight, std=1.0)
        nn.init.zeros_(self.gene_bias.weight)
        nn.init.zeros_(self.value_bias)
        if self.log_theta is not None:
            nn.init.zeros_(self.log_theta.weight)

    # ------------------------------------------------------------------------------------------------------------------
    # values

    @property
    def required_value_kind(self) -> str:
        """The `data_prep.values.ValueKind` this model's input must have: always "counts".

        poisson / nb are likelihoods of integer counts with the library size as offset. mse regresses
        log1p(CP10k) values, but computes them itself from counts, normalizing with each *whole* cell's total
        before gene sampling and masking; a corpus already stored as log1p has lost its library sizes and cannot be
        renormalized that way, so it is refused too.
        """
        return "counts"

    def check_value_kind(self, value_kind: str) -> None:
        """Raise if a corpus whose manifest declares `value_kind` cannot feed this model."""
        if str(value_kind) != self.required_value_kind:
            msg = (
                f"objective {self.config.objective!r} needs values of kind {self.required_value_kind!r} (raw "
                f"counts), but the corpus holds {str(value_kind)!r}. Re-shard the corpus from raw counts "
                f"(data_prep, --values counts); Exceiver normalizes counts itself (log1p of counts per 1e4)."
            )
            raise ValueError(msg)

    # ------------------------------------------------------------------------------------------------------------------
    # encoder / decoder

    def _maybe_checkpoint(self, block: nn.Module, *args) -> Tensor:
        if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _encode_tokens(self, gene_ids: Tensor, log_values: Tensor, cu_seqlens: Tensor, max_genes: int) -> Tensor:
        """Packed genes of B cells with log1p values -> latents (B, L, D), final LayerNorm applied."""
        n_cells = cu_seqlens.numel() - 1
        n_latents, d_model = self.latents.shape
        values = log_values.unsqueeze(-1).to(self.gene_embedding.weight.dtype)  # (T, 1)
        tokens = self.gene_embedding(gene_ids) * values  # (T, D) x_g · e_g
        queries = self.latents.expand(n_cells, n_latents, d_model).reshape(n_cells * n_latents, d_model)  # (B·L, D)
        cu_latents = torch.arange(n_cells + 1, device=gene_ids.device, dtype=torch.int32) * n_latents  # (B+1,)
        latents = self._maybe_checkpoint(
            self.encoder, queries, tokens, cu_latents, cu_seqlens, n_latents, max_genes
        )  # (B·L, D)
        latents = latents.view(n_cells, n_latents, d_model)  # (B, L, D)
        for block in self.self_blocks:
            latents = self._maybe_checkpoint(block, latents)  # (B, L, D)
        return self.norm_latents(latents)

    def _decode(self, latents: Tensor, query_gene_ids: Tensor, cu_seqlens_q: Tensor, max_queries: int) -> Tensor:
        """Latents (B, L, D) and packed query genes (N,) -> one prediction per query gene (N,)."""
        n_cells, n_latents, d_model = latents.shape
        queries = self.gene_embedding(query_gene_ids)  # (N, D)
        cu_latents = torch.arange(n_cells + 1, device=latents.device, dtype=torch.int32) * n_latents  # (B+1,)
        out = self._maybe_checkpoint(
            self.decoder,
            queries,
            latents.reshape(n_cells * n_latents, d_model),
            cu_seqlens_q,
            cu_latents,
            max_queries,
            n_latents,
        )  # (N, D)
        # tied readout: the gene's own embedding is the output weight vector (as Perceiver IO's MLM decoder reads with
        # the input embedding matrix), plus a per-gene and a global bias
        readout = (self.norm_out(out) * queries).sum(-1) / math.sqrt(d_model)  # (N,)
        return readout + self.gene_bias(query_gene_ids).squeeze(-1) + self.value_bias

    def encode(
        self, gene_ids: Tensor, values: Tensor, cu_seqlens: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Latent summary of each cell from all of its expressed genes (no masking): -> (B, L, D).

        Args:
            gene_ids: (T,) vocab ids, packed.
            values: (T,) raw counts.
            cu_seqlens: (B+1,) int32 cell boundaries.
            generator: drives "random" gene sampling of cells longer than `max_genes` (use "topk" sampling or
                a seeded generator for reproducible embeddings).
        """
        check_packed(gene_ids, values, cu_seqlens)
        library = cell_library_size(values, cu_seqlens)  # (B,) whole-cell totals, before sampling
        gene_ids, values, cu_seqlens = sample_genes(
            gene_ids, values, cu_seqlens, self.config.max_genes, self.config.gene_sampling, generator
        )
        log_values = normalize_log1p(values, cu_seqlens, library_size=library)  # (T',)
        lengths = seqlens(cu_seqlens)  # (B,)
        max_genes, min_genes = lengths_stats(lengths)
        if min_genes == 0:
            raise_empty(lengths, "expressed genes")
        return self._encode_tokens(gene_ids, log_values, cu_seqlens, max_genes)

    def gene_states(
        self,
        gene_ids: Tensor,
        values: Tensor,
        cu_seqlens: Tensor,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
    ) -> Tensor:
        """Contextual state of every given gene in its cell: (T, D), in the packed order of `gene_ids`.

        The cell is encoded into latents from (at most `max_genes` of) its genes, then each of its genes queries the
        latents through the decoder, as a masked gene would in pretraining (Perceiver IO's output queries); the
        state is the decoder output after its LayerNorm, i.e. what the tied readout scores. Used for gene
        embeddings downstream (scgrn finetune pools these over cells). Pass `latents` (B, L, D) from `encode` of
        the same cells to skip encoding them again.
        """
        if latents is None:
            latents = self.encode(gene_ids, values, cu_seqlens, generator)  # (B, L, D)
        cu_seqlens = cu_seqlens.to(device=gene_ids.device, dtype=torch.int32)
        max_queries = lengths_stats(seqlens(cu_seqlens))[0]
        n_cells, n_latents, d_model = latents.shape
        queries = self.gene_embedding(gene_ids)  # (T, D)
        cu_latents = torch.arange(n_cells + 1, device=latents.device, dtype=torch.int32) * n_latents  # (B+1,)
        out = self.decoder(
            queries, latents.reshape(n_cells * n_latents, d_model), cu_seqlens, cu_latents, max_queries, n_latents
        )  # (T, D)
        return self.norm_out(out)

    @torch.no_grad()
    def attention_maps(
        self, gene_ids: Tensor, values: Tensor, cu_seqlens: Tensor, query_ids: Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor | list[Tensor]]:  # fmt: skip
        """Attention probabilities of every cell, for reading the model's gene → gene routing through its latents
        (finetune's attention readout). No masking: each cell as `encode` sees it.

        Returns:
            "gene_ids": (T',) the genes the encoder read (after `max_genes` sampling), packed; "cu_seqlens": (B+1,);
            "encoder": list of B tensors (H, L, n_c): each latent's weights over its cell's genes;
            "latent": list over the self-attention blocks of (B, H, L, L);
            "decoder": (B, H, Q, L): each query gene's weights over its cell's final latents (`query_ids`, (Q,)
            vocab ids, asked of every cell, as a masked gene would be).
        """
        check_packed(gene_ids, values, cu_seqlens)
        library = cell_library_size(values, cu_seqlens)
        gene_ids, values, cu_seqlens = sample_genes(
            gene_ids, values, cu_seqlens, self.config.max_genes, self.config.gene_sampling, generator
        )
        log_values = normalize_log1p(values, cu_seqlens, library_size=library)
        n_cells = cu_seqlens.numel() - 1
        n_latents, d_model = self.latents.shape
        heads, head_dim = self.config.n_heads, d_model // self.config.n_heads
        tokens = self.gene_embedding(gene_ids) * log_values.unsqueeze(-1).to(self.gene_embedding.weight.dtype)
        enc = self.encoder.attn
        q = enc.q_proj(self.encoder.norm_q(self.latents)).view(n_latents, heads, head_dim)  # (L, H, d)
        k = enc.kv_proj(self.encoder.norm_kv(tokens))[:, :d_model].reshape(-1, heads, head_dim)  # (T', H, d)
        bounds = cu_seqlens.tolist()
        encoder = [
            torch.softmax(torch.einsum("lhd,thd->hlt", q, k[a:b]) / math.sqrt(head_dim), dim=-1)
            for a, b in itertools.pairwise(bounds)
        ]  # B x (H, L, n_c)
        queries = self.latents.expand(n_cells, n_latents, d_model).reshape(n_cells * n_latents, d_model)
        cu_latents = torch.arange(n_cells + 1, device=gene_ids.device, dtype=torch.int32) * n_latents
        max_genes = lengths_stats(seqlens(cu_seqlens))[0]
        x = self.encoder(queries, tokens, cu_latents, cu_seqlens, n_latents, max_genes).view(n_cells, n_latents, -1)
        latent = []
        for block in self.self_blocks:
            qkv = block.qkv_proj(block.norm_attn(x)).view(n_cells, n_latents, 3, heads, head_dim)
            lq, lk = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # (B, H, L, d)
            latent.append(torch.softmax(lq @ lk.transpose(-1, -2) / math.sqrt(head_dim), dim=-1))  # (B, H, L, L)
            x = block(x)
        x = self.norm_latents(x)  # (B, L, D)
        dec = self.decoder.attn
        dq = dec.q_proj(self.decoder.norm_q(self.gene_embedding(query_ids))).view(-1, heads, head_dim)  # (Q, H, d)
        dk = dec.kv_proj(self.decoder.norm_kv(x))[..., :d_model].reshape(n_cells, n_latents, heads, head_dim)
        decoder = torch.softmax(torch.einsum("qhd,blhd->bhql", dq, dk) / math.sqrt(head_dim), dim=-1)  # (B,H,Q,L)
        return {"gene_ids": gene_ids, "cu_seqlens": cu_seqlens, "encoder": encoder, "latent": latent,
                "decoder": decoder}  # fmt: skip

    def gene_embeddings(self) -> Tensor:
        """(vocab_size, D) learned gene embeddings e_g (detached; row i is vocab id i)."""
        return self.gene_embedding.weight.detach()

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor | int]:
        """One masked-expression step.

        Args:
            batch: either raw packed cells, `data_prep.loader.CellBatch.to_torch()`: "gene_ids" (T,), "values" (T,)
                raw counts, "cu_seqlens" (B+1,), optional "library_size" (B,) (each cell's total counts, when the
                given genes are a subset of the cell's) and optional "mask" (T,) bool (True = hide and predict: the
                tokens are then used as given, with no gene sampling, and the caller is responsible for
                `max_genes`); or the output of `prepare_batch`, used as given with no data-dependent step (the
                trainer prepares batches in its loader workers, so no device sync happens here).
            generator: drives gene sampling and masking of raw cells; the same seed gives the same step.

        Returns:
            loss: scalar, mean over the N masked genes (mse, Poisson or NB negative log-likelihood).
            loss_sum: loss × N, for a per-token mean over a whole optimizer step.
            pred: (N,) the head's output: log1p(CP10k) (mse) or log expression per 1e4 counts (poisson, nb).
            target: (N,) log1p(CP10k) values (mse) or raw counts (poisson, nb).
            n_masked: N, a Python int.
            mask: (T',) bool over the tokens after gene sampling; masked_gene_ids: (N,).
        """
        if "cu_query" not in batch:
            if batch.get("mask") is None:
                batch = self.prepare_batch(batch, generator)
            else:
                batch = {**batch, **split_masked(self.config, batch)}
        latents = self._encode_tokens(
            batch["encoder_gene_ids"], batch["encoder_log_values"], batch["cu_encoder"], batch["max_encoder"]
        )  # (B, L, D)
        query_gene_ids, target = batch["query_gene_ids"], batch["target"]  # (N,), (N,)
        pred = self._decode(latents, query_gene_ids, batch["cu_query"], batch["max_query"])  # (N,)
        objective = self.config.objective
        if objective == "mse":
            loss = mse_loss(pred, target)
        # expressed targets (k >= 1) with the zero-truncated likelihood; unexpressed ones (mask_unexpressed, k = 0)
        # with the full one
        elif objective == "poisson":
            loss = poisson_nll(pred, target, batch["query_library"], TARGET_SUM, zero_truncated=target > 0)
        else:
            log_theta = self.log_theta(query_gene_ids).squeeze(-1)  # (N,)
            loss = negative_binomial_nll(
                pred, log_theta, target, batch["query_library"], TARGET_SUM, zero_truncated=target > 0
            )
        return {
            "loss": loss,
            "loss_sum": loss * pred.shape[0],
            "pred": pred,
            "target": target,
            "n_masked": int(pred.shape[0]),
            "mask": batch["mask"],
            "masked_gene_ids": query_gene_ids,
        }

    def prepare_batch(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None, panels: tuple | None = None
    ) -> dict:
        """Raw packed cells -> the inputs `forward` uses as given; see the module function `prepare_batch`."""
        return prepare_batch(self.config, batch, generator, panels)

    def batch_preparer(self, panels: tuple | None = None) -> functools.partial:
        """`prepare_batch` bound to this model's config (and the corpus's measured-gene `panels`, for
        `mask_unexpressed`): a picklable callable (batch, generator) -> prepared batch, for the data loader's
        workers, so sampling, masking and splitting run on the host, off the training step."""
        return functools.partial(prepare_batch, self.config, panels=panels)

    @staticmethod
    def n_targets(prepared: dict) -> int:
        """Masked genes of `prepared` (from `prepare_batch`): a host int, counted where it was prepared."""
        return prepared["n_targets"]

    # ------------------------------------------------------------------------------------------------------------------
    # accounting

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count; `exclude_embeddings` leaves out the gene embedding (and NB log θ) tables."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.gene_embedding.weight.numel()
            if self.log_theta is not None:
                total -= self.log_theta.weight.numel()
        return total

    def flops_per_token(self, genes_per_cell: int | None = None) -> float:
        """Training FLOPs (forward + backward ≈ 3 × forward) per expressed gene, for cells of `genes_per_cell`
        genes (default `max_genes`, the length cells are cut to).

        Counts matrix multiplies only (2 FLOPs per multiply-add); LayerNorm, softmax, GELU, embedding lookups and
        the loss are left out. With n genes, m = mask_prob · n masked, n − m encoder inputs, L latents, D width,
        F MLP width, forward FLOPs per cell are

            encoder cross-attn   4(n−m)D²  [k, v of genes]   + 4L(n−m)D [scores, AV]  + 4LD² [q, out] + 4LDF
            each self block      8LD²      [qkv, out]        + 4L²D     [scores, AV]  + 4LDF
            decoder cross-attn   4mD²      [q, out]          + 4LD²     [k, v]        + 4mLD + 4mDF + 2mD [head]

        and the result is 3 × that / n. Because the latent part does not grow with n, short cells cost more per
        gene.
        """
        c = self.config
        n = float(genes_per_cell if genes_per_cell is not None else c.max_genes)
        m, L, D, F_ = c.mask_prob * n, float(c.n_latents), float(c.d_model), float(c.d_ff)
        encoder = 4 * (n - m) * D * D + 4 * L * (n - m) * D + 4 * L * D * D + 4 * L * D * F_
        self_blocks = c.n_self_layers * (8 * L * D * D + 4 * L * L * D + 4 * L * D * F_)
        decoder = 4 * m * D * D + 4 * L * D * D + 4 * m * L * D + 4 * m * D * F_ + 2 * m * D
        return 3.0 * (encoder + self_blocks + decoder) / n

    def flops(self, lengths, n_params: int | None = None) -> float:
        """Training FLOPs of one micro batch of cells with `lengths` expressed genes (host-side ints, before
        `max_genes`): the per-cell sum of `flops_per_token(L') · L'`, L' = min(L, max_genes). `n_params` is unused
        (the count is per layer shape, unaffected by ZeRO-3 partitioning); the signature matches ScBert's."""
        del n_params
        kept = [min(int(n), self.config.max_genes) for n in lengths]
        return float(sum(self.flops_per_token(n) * n for n in kept if n > 0))


__all__ = [
    "ATTENTION",
    "OBJECTIVES",
    "Exceiver",
    "ExceiverConfig",
    "prepare_batch",
    "sample_mask",
    "split_masked",
]
