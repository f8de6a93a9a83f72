"""Geneformer: a BERT over rank-value encoded cells (Theodoris et al., 2023, Nature), on packed cells.

Data flow (shapes: B cells, T packed tokens, D width, V vocab):
1. Rank-value encoding (`rank_value_encode`, in the loader's workers like scBERT's binning): each expressed gene's
   count is normalised by the cell's total (x 10,000) and divided by the gene's non-zero median over the
   pretraining corpus (`gene_median`, a buffer of the model: the checkpoint's gene-median dictionary, or the
   corpus's statistic); the cell becomes its genes' token ids sorted by that value, descending, truncated to the
   context. Genes without a median (not in the model's dictionary) are left out. Layout "v1" (Geneformer V1,
   2,048 tokens): genes only; "v2" (V2, 4,096): `<cls>` first and `<eos>` last. The value itself is dropped: only
   the rank order (the position) carries it.
2. Masking (`mask_tokens`): BERT's, as the Hugging Face collator Geneformer trains with: each gene token is selected
   with `mask_prob`; of those 80 % become `<mask>`, 10 % a random token, 10 % stay; specials are never selected.
3. Encoder: token + absolute position (rank within the cell) + token-type-0 embeddings, LayerNorm, then `n_layers`
   post-LN BERT blocks (x = LN(x + Attn(x)); x = LN(x + FFN(x))) with the packed varlen attention backends.
4. Head: dense -> activation -> LayerNorm -> logits over the vocabulary with the *tied* input embedding matrix plus
   a bias; cross-entropy on the masked tokens (the gene identity, not its expression).

The parameter names are ours; `pretrain.interop.hf_bert` maps them to and from Hugging Face's `BertForMaskedLM`
(import and export, logits equal to transformers' own forward). The input and output embeddings are one
parameter, so they stay tied through ZeRO-3 saves, resumes and exports.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pretrain.models.attention import BACKENDS, segment_ids
from pretrain.models.common import MultiheadAttention, cu_seqlens_from_lengths, seqlens, uniform
from pretrain.models.unexpressed import append_to_cells

IGNORE_INDEX = -100
TARGET_SUM = 1e4
LAYOUTS = ("v1", "v2")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": functools.partial(F.gelu, approximate="tanh")}


@dataclass
class GeneformerConfig:
    """Geneformer-family model. Defaults: Geneformer V1 (6 layers x 256, 4 heads, 2,048 tokens, ReLU)."""

    vocab_size: int
    """Token ids [0, vocab_size): the checkpoint's token dictionary (specials included)."""
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 512
    max_len: int = 2048
    """Context: most tokens a cell keeps (specials included); the size of the position table."""
    hidden_act: str = "relu"
    """Activation of the feed-forward and head: "relu" (Geneformer), "gelu" or "gelu_new"."""
    dropout: float = 0.02
    """Dropout on embeddings, attention probabilities and residual branches, in [0, 1)."""
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    """Rows of BERT's token-type table (every token is type 0; kept so checkpoints map one to one)."""
    layout: str = "v1"
    """"v1": gene tokens only; "v2": `<cls>` first and `<eos>` last."""
    pad_token: int = 0
    mask_token: int = 1
    cls_token: int = -1
    """Id of `<cls>` (layout v2); -1 when the vocabulary has none."""
    eos_token: int = -1
    """Id of `<eos>` (layout v2); -1 when the vocabulary has none."""
    mask_prob: float = 0.15
    """Fraction of gene tokens selected for prediction (80 % `<mask>`, 10 % random, 10 % unchanged)."""
    attention: str = "auto"
    """Varlen attention backend, as ScBertConfig.attention."""
    activation_checkpointing: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        problems = []

        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                problems.append(f"{name}={value!r} must be an integer >= {minimum}")

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "type_vocab_size"):
            integer(name, 1)
        integer("max_len", 3)
        for name in ("pad_token", "mask_token"):
            integer(name, 0)
        for name in ("cls_token", "eos_token"):
            integer(name, -1)
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act={self.hidden_act!r} must be one of {sorted(ACTIVATIONS)}")
        if self.layout not in LAYOUTS:
            problems.append(f"layout={self.layout!r} must be one of {LAYOUTS}")
        elif self.layout == "v2" and (self.cls_token < 0 or self.eos_token < 0):
            problems.append("layout='v2' needs cls_token and eos_token (ids of <cls> and <eos> in the vocabulary)")
        for name, low, high in (("dropout", 0.0, 1.0), ("mask_prob", 1e-9, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
                problems.append(f"{name}={value!r} must be a float in [{low:g}, {high:g})")
        if self.attention not in ("auto", *BACKENDS):
            problems.append(f"attention={self.attention!r} must be one of {('auto', *BACKENDS)}")
        ints = isinstance(self.d_model, int) and isinstance(self.n_heads, int) and self.n_heads > 0
        if ints and self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if problems:
            msg = "invalid GeneformerConfig:\n  " + "\n  ".join(problems)
            raise ValueError(msg)

    @property
    def max_genes(self) -> int:
        """Gene tokens a cell keeps: the context minus the specials of the layout (the loader's token cap)."""
        return self.max_len - (2 if self.layout == "v2" else 0)

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(i for i in (self.pad_token, self.mask_token, self.cls_token, self.eos_token) if i >= 0)


# ----------------------------------------------------------------------------------------------------------------------
# tokenization and masking (host side, vectorised over the packed cells)


def rank_value_encode(
    config: GeneformerConfig,
    gene_median: Tensor,
    gene_ids: Tensor,
    values: Tensor,
    cu_seqlens: Tensor,
    library_size: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Raw counts -> rank-value tokens: (input_ids (T',), positions (T',), cu_seqlens (B+1,) int32).

    value = count / cell total x 10,000 / median[gene] (cell totals: `library_size` when the corpus records it,
    else the sum over the given genes); genes with no positive median are left out; each cell's genes sorted by
    value, descending (ties: the lower gene id first), truncated to `config.max_genes`; layout v2 adds `<cls>` and
    `<eos>`. Positions count from 0 in each cell.
    """
    total = gene_ids.shape[0]
    n_cells = cu_seqlens.numel() - 1
    cell = segment_ids(cu_seqlens, total)  # (T,)
    counts = values.float()
    if library_size is None:
        library_size = torch.zeros(n_cells, dtype=torch.float32).index_add_(0, cell, counts)
    median = gene_median[gene_ids]  # (T,)
    known = median > 0
    value = counts / library_size.float()[cell].clamp_min(torch.finfo(torch.float32).tiny) * TARGET_SUM
    value = torch.where(known, value / median.clamp_min(torch.finfo(torch.float32).tiny), -1.0)
    # rank inside each cell: by value descending (ties by gene id, ascending), then grouped by cell
    order = torch.argsort(gene_ids, stable=True)
    order = order[torch.argsort(value[order], descending=True, stable=True)]
    order = order[torch.argsort(cell[order], stable=True)]
    starts = cu_seqlens.long()[:-1]
    rank = torch.arange(total) - starts[cell[order]]
    kept = order[(rank < config.max_genes) & known[order]]  # (T',) grouped by cell, rank order within
    lengths = torch.zeros(n_cells, dtype=torch.long).index_add_(0, cell[kept], torch.ones_like(kept))
    cu = cu_seqlens_from_lengths(lengths)
    input_ids = gene_ids[kept].long()
    if config.layout == "v2":
        ones = cu_seqlens_from_lengths(torch.ones(n_cells, dtype=torch.long))
        cls = torch.full((n_cells,), config.cls_token, dtype=torch.long)
        eos = torch.full((n_cells,), config.eos_token, dtype=torch.long)
        cu, (input_ids,) = append_to_cells(ones, [cls], cu, [input_ids])
        cu, (input_ids,) = append_to_cells(cu, [input_ids], ones, [eos])
    positions = torch.arange(input_ids.shape[0]) - cu.long()[:-1][segment_ids(cu, input_ids.shape[0])]
    return input_ids, positions, cu


def mask_tokens(
    config: GeneformerConfig, input_ids: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """BERT masking (Devlin et al., 2019) -> (masked input ids, labels with IGNORE_INDEX where not predicted)."""
    n = input_ids.shape[0]
    special = torch.zeros(n, dtype=torch.bool)
    for token in config.special_ids:
        special |= input_ids == token
    selected = (uniform(n, generator, input_ids.device) < config.mask_prob) & ~special
    action = uniform(n, generator, input_ids.device)
    random_ids = (uniform(n, generator, input_ids.device) * config.vocab_size).long().clamp_max(config.vocab_size - 1)
    masked = torch.where(selected & (action < 0.8), config.mask_token, input_ids)
    masked = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, masked)
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    return masked, labels


def prepare_batch(
    config: GeneformerConfig,
    gene_median: Tensor,
    batch: dict[str, Tensor],
    generator: torch.Generator | None = None,
    panels: tuple | None = None,
) -> dict:
    """Raw packed cells -> gene_ids (the tokens), input_ids (masked), positions, cu_seqlens, labels and host ints
    max_seqlen, n_targets."""
    del panels  # the rank-value objective predicts gene identity; there are no zero-valued targets to add
    input_ids, positions, cu = rank_value_encode(
        config, gene_median, batch["gene_ids"], batch["values"], batch["cu_seqlens"], batch.get("library_size")
    )
    masked, labels = mask_tokens(config, input_ids, generator)
    sizes = torch.stack([seqlens(cu).max(), (labels != IGNORE_INDEX).sum()]).tolist()
    return {
        "gene_ids": input_ids,  # the unmasked tokens (the trainer counts tokens by this)
        "input_ids": masked,
        "positions": positions,
        "cu_seqlens": cu,
        "labels": labels,
        "max_seqlen": int(sizes[0]),
        "n_targets": int(sizes[1]),
    }


# ----------------------------------------------------------------------------------------------------------------------
# model


class PostLNBlock(nn.Module):
    """BERT encoder layer on packed cells: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__()
        c = config
        self.attn = MultiheadAttention(c.d_model, c.n_heads, dropout=c.dropout, backend=c.attention,
                                       self_attention=True)  # fmt: skip
        self.ln_attn = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.fc_in = nn.Linear(c.d_model, c.d_ff)
        self.fc_out = nn.Linear(c.d_ff, c.d_model)
        self.ln_mlp = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
        x = self.ln_attn(x + self.attn(x, cu_seqlens, max_seqlen))
        return self.ln_mlp(x + self.dropout(self.fc_out(self.act(self.fc_in(x)))))


class Geneformer(nn.Module):
    """Geneformer-family masked-token model (see the module docstring).

    Shapes: input_ids, positions (T,) int64 packed; cu_seqlens (B+1,) int32; hidden (T, D); logits (T, V).
    """

    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.d_model)
        self.position_embedding = nn.Embedding(c.max_len, c.d_model)
        self.type_embedding = nn.Embedding(c.type_vocab_size, c.d_model)
        self.ln_embedding = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(PostLNBlock(c) for _ in range(c.n_layers))
        self.head_dense = nn.Linear(c.d_model, c.d_model)
        self.head_ln = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.head_bias = nn.Parameter(torch.zeros(c.vocab_size))  # the decoder's weight is token_embedding's
        # each gene's non-zero median of CP10k values (the rank-value normaliser); 0 = not tokenised
        self.register_buffer("gene_median", torch.zeros(c.vocab_size))
        self.reset_parameters()
        if c.compile:
            for block in self.blocks:
                block.compile(dynamic=True)

    def reset_parameters(self, std: float = 0.02) -> None:
        """BERT's init: N(0, 0.02) weights, zero biases, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head_bias)

    @property
    def required_value_kind(self) -> str:
        """Rank-value encoding normalises raw counts by the cell total: "counts"."""
        return "counts"

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        skip = {"token_embedding.weight", "position_embedding.weight", "type_embedding.weight"}
        return sum(p.numel() for n, p in self.named_parameters() if not (exclude_embeddings and n in skip))

    def flops(self, lengths, n_params: int | None = None) -> float:
        """Training FLOPs of one micro batch of cells with `lengths` expressed genes (host-side ints), as
        ScBert.flops (PaLM's 6 N per token + 12 n_layers d_model L² attention), with L' = min(L, max_genes) + the
        layout's specials, plus the tied decoder on the masked tokens (6 d_model V per target, mask_prob of them).
        An upper bound where genes lack a median (they are not tokenised)."""
        c = self.config
        kept = np.minimum(np.asarray(lengths, dtype=np.float64), c.max_genes) + (c.max_len - c.max_genes)
        n = self.num_parameters(exclude_embeddings=True) if n_params is None else n_params
        decoder = 6.0 * c.d_model * c.vocab_size * c.mask_prob * kept.sum()
        return 6.0 * n * kept.sum() + 12.0 * c.n_layers * c.d_model * float(np.square(kept).sum()) + decoder

    def encode(self, input_ids: Tensor, positions: Tensor, cu_seqlens: Tensor, max_seqlen: int | None = None) -> Tensor:
        """Hidden states (T, D) of the packed tokens after the last block."""
        if max_seqlen is None:
            max_seqlen = int(seqlens(cu_seqlens).max())
        cu_seqlens = cu_seqlens.to(device=input_ids.device, dtype=torch.int32)
        x = self.token_embedding(input_ids) + self.position_embedding(positions) + self.type_embedding.weight[0]
        x = self.embedding_dropout(self.ln_embedding(x))
        for block in self.blocks:
            if self.config.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cu_seqlens, max_seqlen, use_reentrant=False)
            else:
                x = block(x, cu_seqlens, max_seqlen)
        return x

    @property
    def gene_embedding(self) -> nn.Embedding:
        """The token embedding table (rows = vocab ids), under the name the other families use."""
        return self.token_embedding

    @torch.no_grad()
    def token_states(
        self, gene_ids: Tensor, values: Tensor, cu_seqlens: Tensor, library_size: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Rank-value encode raw cells and run the encoder without masking: -> (token ids (T',) in each cell's rank
        order, specials included; hidden states (T', D); cu_seqlens (B+1,)). Genes without a median or beyond the
        context have no token (and no state)."""
        input_ids, positions, cu = rank_value_encode(
            self.config, self.gene_median.cpu(), gene_ids.cpu(), values.cpu(), cu_seqlens.cpu(), library_size
        )
        device = self.token_embedding.weight.device
        hidden = self.encode(input_ids.to(device), positions.to(device), cu.to(device))
        return input_ids, hidden, cu

    def logits(self, hidden: Tensor) -> Tensor:
        """(N, D) hidden states -> (N, V) masked-token logits (tied decoder)."""
        h = self.head_ln(ACTIVATIONS[self.config.hidden_act](self.head_dense(hidden)))
        return F.linear(h, self.token_embedding.weight, self.head_bias)

    def prepare_batch(self, batch: dict[str, Tensor], generator: torch.Generator | None = None, panels=None) -> dict:
        return prepare_batch(self.config, self.gene_median.detach().cpu(), batch, generator)

    def batch_preparer(self, panels: tuple | None = None) -> functools.partial:
        """`prepare_batch` bound to this model's config and gene medians: a picklable callable for the loader's
        workers, so rank-value encoding and masking run on the host."""
        del panels
        return functools.partial(prepare_batch, self.config, self.gene_median.detach().cpu().clone())

    @staticmethod
    def n_targets(prepared: dict) -> int:
        return prepared["n_targets"]

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Masked-token loss on a packed batch (raw cells are prepared first). loss: mean cross-entropy over the
        masked tokens; loss_sum: its sum; logits (N, V) of the masked tokens; n_masked."""
        if "input_ids" not in batch:
            batch = self.prepare_batch(batch, generator)
        hidden = self.encode(batch["input_ids"], batch["positions"], batch["cu_seqlens"], batch.get("max_seqlen"))
        labels = batch["labels"]
        selected = labels != IGNORE_INDEX
        logits = self.logits(hidden[selected])  # (N, V): only the masked tokens meet the vocabulary
        loss_sum = F.cross_entropy(logits.float(), labels[selected], reduction="sum")
        n_masked = selected.sum()
        return {
            "loss": loss_sum / n_masked.clamp(min=1),
            "loss_sum": loss_sum,
            "logits": logits,
            "n_masked": n_masked,
        }
