"""scBERT: masked expression modelling on single cells (Yang et al., 2022, "scBERT as a large-scale pretrained deep
language model for cell type annotation of single-cell RNA-seq data", Nat. Mach. Intell. 4, 852-866).

Each expressed gene of a cell is a token whose embedding is gene identity + binned expression. A fraction of the
expression bins is masked and a bidirectional transformer predicts the masked bins (cross-entropy over bins).

Departures from the paper, and why:
- Only expressed genes are tokens (the corpus is packed without zeros); scBERT feeds all ~16,900 genes, zeros
  included, to a Performer. With ~1-3k expressed genes per cell exact attention fits, so we use a pre-LN transformer
  with packed varlen attention (`pretrain.models.attention`) instead of Performer's kernel approximation.
- The gene embedding is learned; scBERT initialises it from gene2vec and keeps it as a fixed positional embedding.
- Binning: scBERT's public code (`pretrain.py`) total-count normalises to 1e4, takes ln(1 + x), clips at
  `bin_num = 5` and floors, giving token ids 0..5 plus a [MASK] id 6 (`CLASS = bin_num + 2 = 7`). We take
  log2(1 + x) of the 1e4-normalised counts and cut [0, log2(1 + 1e4)] into `n_bins - 1` equal-width bins with ids
  1..n_bins-1, so every `n_bins` spans the whole possible range; id 0 stays "not expressed" (never an input here,
  kept so ids line up with scBERT's) and id `n_bins` is the [MASK] value token. `n_bins = 7` is close to scBERT's
  resolution (2.2 log2 units = 1.5 ln units per bin); the default 51 (as scGPT) resolves counts 1, 2, 3, ... of a
  typical cell into different bins, which matters once zeros are no longer tokens.
- Masking as scBERT's code: 15% of the genes, of which 90% get the [MASK] value token and 10% keep their bin (no
  random replacement); plus at least one masked gene per cell so every cell contributes to the loss.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pretrain.models import common, unexpressed
from pretrain.models.attention import BACKENDS
from pretrain.models.common import (
    GENE_SAMPLING_MODES,
    PreLNBlock,
    init_transformer_weights,
    sample_genes,
    segment_ids,
    uniform,
)

IGNORE_INDEX = -100
TARGET_SUM = 1e4  # counts per cell after total-count normalisation, as scBERT (and scanpy's normalize_total)


@dataclass
class ScBertConfig:
    """Hyper-parameters of `ScBert`. All fields are checked in `__post_init__`, every problem reported at once."""

    vocab_size: int
    """Gene vocabulary size, special tokens included (data_prep's vocab: <pad>=0, <mask>=1, <cls>=2, <unk>=3)."""
    n_bins: int = 51
    """Expression classes: 0 = not expressed (never an input: the corpus holds expressed genes only), 1..n_bins-1 =
    equal-width bins of log2(1 + counts normalised to 1e4). The [MASK] value token gets id n_bins. scBERT's public
    code amounts to n_bins=6 on a ln scale (see the module docstring); >= 2."""
    d_model: int = 128
    """Width of the residual stream; divisible by n_heads."""
    n_layers: int = 4
    """Number of pre-LN transformer blocks."""
    n_heads: int = 4
    """Attention heads per block; head dim = d_model / n_heads."""
    d_ff: int = 512
    """Hidden width of the feed-forward MLP."""
    dropout: float = 0.0
    """Dropout on embeddings, attention probabilities and residual branches, in [0, 1)."""
    max_genes: int = 2048
    """Cells with more expressed genes keep this many (see gene_sampling), bounding the quadratic attention cost."""
    gene_sampling: str = "random"
    """How to pick max_genes genes: "random" (uniform without replacement) or "topk" (largest counts)."""
    mask_prob: float = 0.15
    """Fraction of genes whose bin is predicted, in (0, 1]."""
    mask_replace_prob: float = 0.9
    """Of the masked genes, the fraction whose input bin becomes the [MASK] token; the rest keep their bin. [0, 1]."""
    mask_unexpressed: float = 0.0
    """Fraction of the masked set drawn from genes the cell's input measured but the cell did not express (target:
    bin 0), in [0, 1); needs a corpus of format >= 3 (measured-gene panels). 0 = expressed genes only, as scBERT.
    See pretrain.models.unexpressed."""
    attention: str = "auto"
    """Attention backend: "auto" (on CUDA in bf16/fp16 torch's fused "varlen", or "flash" when attention dropout
    needs it; "sdpa" on CPU and in fp32) or one of pretrain.models.attention.BACKENDS ("varlen", "flash", "sdpa",
    "reference"). An explicit backend that cannot run is an error, never a silent switch."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass (torch.utils.checkpoint) to trade compute for activation memory."""
    compile: bool = False
    """torch.compile each transformer block (in place: parameter names and releases are unchanged), with dynamic
    shapes since packed batches vary in length. For GPUs; off by default and in every CPU config."""

    def __post_init__(self) -> None:
        errors = []

        def check(ok: bool, field: str, requirement: str) -> None:
            if not ok:
                errors.append(f"{field}={getattr(self, field)!r}: must be {requirement}")

        def is_int(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, int) and not isinstance(value, bool)

        def is_real(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

        check(is_int("vocab_size") and self.vocab_size >= 1, "vocab_size", "an int >= 1")
        check(is_int("n_bins") and self.n_bins >= 2, "n_bins", "an int >= 2 (bin 0 plus at least one value bin)")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_genes"):
            check(is_int(name) and getattr(self, name) >= 1, name, "an int >= 1")
        check(is_real("dropout") and 0.0 <= self.dropout < 1.0, "dropout", "a float in [0, 1)")
        check(self.gene_sampling in GENE_SAMPLING_MODES, "gene_sampling", f"one of {GENE_SAMPLING_MODES}")
        check(is_real("mask_prob") and 0.0 < self.mask_prob <= 1.0, "mask_prob", "a float in (0, 1]")
        check(
            is_real("mask_replace_prob") and 0.0 <= self.mask_replace_prob <= 1.0,
            "mask_replace_prob",
            "a float in [0, 1]",
        )
        if (problem := unexpressed.check_fraction(self.mask_unexpressed)) is not None:
            errors.append(problem)
        check(self.attention in ("auto", *BACKENDS), "attention", f"one of {('auto', *BACKENDS)}")
        check(isinstance(self.activation_checkpointing, bool), "activation_checkpointing", "a bool")
        check(isinstance(self.compile, bool), "compile", "a bool")
        if is_int("d_model") and is_int("n_heads") and self.n_heads >= 1 and self.d_model % self.n_heads:
            errors.append(
                f"d_model={self.d_model}, n_heads={self.n_heads}: d_model must be divisible by n_heads "
                f"({self.d_model} % {self.n_heads} = {self.d_model % self.n_heads})"
            )
        if errors:
            msg = f"invalid ScBertConfig ({len(errors)} problem{'s' * (len(errors) > 1)}):\n  " + "\n  ".join(errors)
            raise ValueError(msg)

    @property
    def mask_token(self) -> int:
        """Input bin id of the [MASK] value token."""
        return self.n_bins

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScBertConfig:
        """Build from a plain dict (a YAML section), rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            msg = f"unknown ScBertConfig field(s) {unknown}; allowed: {sorted(known)}"
            raise ValueError(msg)
        return cls(**values)


# ----------------------------------------------------------------------------------------------------------------------
# data transforms on packed cells (vectorised over cells and tokens)


def bin_values(
    values: Tensor,
    cu_seqlens: Tensor,
    n_bins: int,
    target_sum: float = TARGET_SUM,
    library_size: Tensor | None = None,
) -> Tensor:
    """Raw counts -> expression bins, per cell, as scBERT (see the module docstring for the exact scheme).

    x = log2(1 + counts / cell_total * target_sum); bin = 1 + floor(x / w) clipped to [1, n_bins - 1], with
    w = log2(1 + target_sum) / (n_bins - 1). Zero counts map to bin 0.

    Args:
        values: (T,) raw counts of the packed cells (cell totals are taken over these tokens, so bin *before*
            dropping genes with `sample_genes`).
        cu_seqlens: (B+1,) int32 cell offsets.
        n_bins: number of expression classes (>= 2).
        library_size: (B,) each cell's raw total over all of its genes (corpus format >= 2); default: the sum of
            `values` per cell, i.e. over the vocabulary genes only.

    Returns:
        (T,) int64 bins in [0, n_bins - 1].
    """
    total = values.shape[0]
    seg = segment_ids(cu_seqlens.to(values.device), total)  # (T,)
    counts = values.float()
    if library_size is not None:
        cell_totals = library_size.to(device=values.device, dtype=torch.float32)  # (B,)
    else:
        cell_totals = torch.zeros(cu_seqlens.numel() - 1, device=values.device).index_add_(0, seg, counts)  # (B,)
    normalised = counts / cell_totals[seg].clamp(min=torch.finfo(torch.float32).tiny) * target_sum  # (T,)
    width = math.log2(1.0 + target_sum) / (n_bins - 1)
    bins = torch.floor(torch.log2(1.0 + normalised) / width).long() + 1
    bins = bins.clamp(1, n_bins - 1)
    return torch.where(counts > 0, bins, torch.zeros_like(bins))  # (T,)


def mask_for_mlm(
    bins: Tensor,
    cu_seqlens: Tensor,
    generator: torch.Generator | None = None,
    *,
    mask_prob: float = 0.15,
    replace_prob: float = 0.9,
    mask_token: int,
) -> tuple[Tensor, Tensor]:
    """Choose genes to predict, scBERT/BERT style (Devlin et al., 2019), without a Python loop over cells.

    Each gene is selected with probability `mask_prob`; a cell that drew none gets its gene with the smallest draw
    selected anyway, so every non-empty cell contributes to the loss (this raises the rate above `mask_prob` for
    cells shorter than ~1/mask_prob genes; a one-gene cell always has its gene masked). Of the selected genes, a
    `replace_prob` fraction get `mask_token` as input, the rest keep their bin (scBERT's code: 90/10, no random bins).

    Args:
        bins: (T,) int64 expression bins.
        cu_seqlens: (B+1,) int32 cell offsets.
        generator: source of randomness; the same seed gives the same masks. Global RNG when None.

    Returns:
        input_bins (T,): bins with the replacements applied; labels (T,): the original bin where selected,
        IGNORE_INDEX (-100) elsewhere.
    """
    total = bins.shape[0]
    device = bins.device
    n_cells = cu_seqlens.numel() - 1
    draw = uniform(total, generator, device)  # (T,)
    replace_draw = uniform(total, generator, device)  # (T,)
    selected = draw < mask_prob  # (T,)
    seg = segment_ids(cu_seqlens.to(device), total)  # (T,)
    n_selected = torch.zeros(n_cells, dtype=torch.long, device=device).index_add_(0, seg, selected.long())  # (B,)
    cell_min = torch.full((n_cells,), 2.0, device=device).scatter_reduce(0, seg, draw, reduce="amin")  # (B,)
    selected |= (draw == cell_min[seg]) & (n_selected[seg] == 0)
    replaced = selected & (replace_draw < replace_prob)
    input_bins = torch.where(replaced, torch.full_like(bins, mask_token), bins)
    labels = torch.where(selected, bins, torch.full_like(bins, IGNORE_INDEX))
    return input_bins, labels


def prepare_batch(
    config: ScBertConfig,
    batch: dict[str, Tensor],
    generator: torch.Generator | None = None,
    panels: tuple[np.ndarray, ...] | None = None,
) -> dict:
    """Raw packed cells -> model inputs: bin every gene (cell totals: the batch's `library_size` when the corpus
    records it, else the sum over its genes), keep at most `max_genes` per cell, mask. With `mask_unexpressed` > 0
    and the corpus's measured-gene `panels` (the batch's "panel" gives each cell's), masked unexpressed measured
    genes are added to each cell (target bin 0; input [MASK] or, at 1 − mask_replace_prob, bin 0), with room kept
    for them under `max_genes`; without panels the objective is the expressed-genes one.

    Runs wherever `batch` lives; the trainer runs it in the data loader's workers on CPU tensors (seeded per batch,
    see `data_prep.loader.StreamingCellDataset`), so the training step on a GPU gets finished inputs and host-side
    sizes and never waits for the device to report a length.

    Returns cu_seqlens, gene_ids, input_bins, labels (tensors, packed, after sampling) and two host ints:
    max_seqlen (the longest cell, for the varlen kernels) and n_targets (the masked genes, for the per-token loss).
    """
    cu_seqlens, gene_ids, values = batch["cu_seqlens"], batch["gene_ids"], batch["values"]
    bins = bin_values(values, cu_seqlens, config.n_bins, library_size=batch.get("library_size"))  # (T,)
    zeros = config.mask_unexpressed > 0 and panels is not None and "panel" in batch
    room = unexpressed.reserve(config.max_genes, config.mask_prob, config.mask_unexpressed) if zeros else 0
    all_ids, all_cu = gene_ids, cu_seqlens
    gene_ids, values, cu_seqlens, kept = sample_genes(
        gene_ids, values, cu_seqlens, config.max_genes - room, config.gene_sampling, generator, return_index=True
    )  # (T',), (T',), (B+1,), (T',)
    input_bins, labels = mask_for_mlm(
        bins[kept],
        cu_seqlens,
        generator,
        mask_prob=config.mask_prob,
        replace_prob=config.mask_replace_prob,
        mask_token=config.mask_token,
    )
    if zeros:
        seg = segment_ids(cu_seqlens, gene_ids.shape[0])
        n_masked = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.long, device=seg.device)
        n_masked.index_add_(0, seg, (labels >= 0).long())  # (B,)
        extra, cu_extra = unexpressed.draw_unexpressed(
            all_ids, all_cu, n_masked, config.max_genes - common.seqlens(cu_seqlens), batch["panel"], panels,
            config.mask_unexpressed, generator,
        )  # fmt: skip
        keep_bin = uniform(extra.shape[0], generator, extra.device) >= config.mask_replace_prob
        extra_input = torch.where(keep_bin, 0, config.mask_token)
        cu_seqlens, (gene_ids, input_bins, labels) = unexpressed.append_to_cells(
            cu_seqlens, [gene_ids, input_bins, labels], cu_extra, [extra, extra_input, torch.zeros_like(extra)]
        )
    sizes = torch.stack([common.seqlens(cu_seqlens).max(), (labels != IGNORE_INDEX).sum()]).tolist()  # one sync
    return {
        "cu_seqlens": cu_seqlens,
        "gene_ids": gene_ids,
        "input_bins": input_bins,
        "labels": labels,
        "max_seqlen": int(sizes[0]),
        "n_targets": int(sizes[1]),
    }


# ----------------------------------------------------------------------------------------------------------------------
# model


class ScBert(nn.Module):
    """scBERT-style masked expression model on packed cells.

    token = GeneEmbedding(gene_id) + BinEmbedding(input_bin);  h = LN(Block_L(...Block_1(token)));
    logits = Linear(h) over the n_bins expression classes; loss = mean cross-entropy over the masked genes.

    Shapes:
        gene_ids, values, bins: (T,) packed; cu_seqlens: (B+1,) int32; hidden: (T, d_model); logits: (T, n_bins).
    """

    def __init__(self, config: ScBertConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.gene_embedding = nn.Embedding(c.vocab_size, c.d_model)
        self.bin_embedding = nn.Embedding(c.n_bins + 1, c.d_model)  # + 1: the [MASK] value token
        self.embedding_dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            PreLNBlock(c.d_model, c.n_heads, c.d_ff, dropout=c.dropout, backend=c.attention) for _ in range(c.n_layers)
        )
        self.ln_final = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.n_bins)
        init_transformer_weights(self, c.n_layers)
        if c.compile:
            for block in self.blocks:
                block.compile(dynamic=True)

    def encode(self, gene_ids: Tensor, bins: Tensor, cu_seqlens: Tensor, max_seqlen: int | None = None) -> Tensor:
        """Hidden states (T, d_model) after the final LayerNorm, e.g. as contextual gene embeddings.

        `bins` may contain the mask token (id n_bins). `max_seqlen` (longest cell) avoids a device sync if given.
        """
        if max_seqlen is None:
            max_seqlen = common.max_seqlen(cu_seqlens)  # a device sync on GPU
        cu_seqlens = cu_seqlens.to(device=gene_ids.device, dtype=torch.int32)
        x = self.gene_embedding(gene_ids) + self.bin_embedding(bins)  # (T, d_model)
        x = self.embedding_dropout(x)
        for block in self.blocks:
            if self.config.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cu_seqlens, max_seqlen, use_reentrant=False)
            else:
                x = block(x, cu_seqlens, max_seqlen)
        return self.ln_final(x)  # (T, d_model)

    def gene_states(
        self, gene_ids: Tensor, values: Tensor, cu_seqlens: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Contextual state of every given gene in its cell: (T, d_model), in the packed order of `gene_ids`.

        Each gene is binned from its raw count (cell totals over the given genes) and nothing is masked. All genes
        of a cell attend to each other, even beyond `max_genes` (the model has no positions, so longer cells are
        valid input; the cost is quadratic in their length). `generator` is unused (the signature matches the
        Exceiver's).
        """
        del generator
        bins = bin_values(values, cu_seqlens, self.config.n_bins)  # (T,)
        return self.encode(gene_ids, bins, cu_seqlens)

    def prepare_batch(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None, panels: tuple | None = None
    ) -> dict:
        """Raw packed cells -> model inputs; see the module function `prepare_batch`."""
        return prepare_batch(self.config, batch, generator, panels)

    def batch_preparer(self, panels: tuple[np.ndarray, ...] | None = None) -> functools.partial:
        """`prepare_batch` bound to this model's config (and the corpus's measured-gene `panels`, for
        `mask_unexpressed`): a picklable callable (batch, generator) -> prepared batch, for the data loader's
        workers, so sampling, binning and masking run on the host, off the training step."""
        return functools.partial(prepare_batch, self.config, panels=panels)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Masked-bin loss on a packed batch.

        `batch` holds either raw cells (`cu_seqlens`, `gene_ids`, `values`: the model samples, bins and masks them
        with `generator`, see `prepare_batch`), or prepared inputs (`cu_seqlens`, `gene_ids`, `input_bins`,
        `labels`, optionally the host int `max_seqlen`, without which the longest cell is read from the device)
        used as given.

        Returns a dict: loss (scalar, mean over masked genes; 0 when nothing is masked), loss_sum (the sum over
        them, for a per-token mean over a whole optimizer step), logits (T', n_bins), n_masked (0-dim int64 tensor),
        and the cu_seqlens, gene_ids, labels the logits refer to.
        """
        if "labels" not in batch:
            batch = self.prepare_batch(batch, generator)
        elif "input_bins" not in batch:
            msg = f"a batch with 'labels' also needs 'input_bins' (prepared inputs); got keys {sorted(batch)}"
            raise ValueError(msg)
        labels = batch["labels"]
        hidden = self.encode(
            batch["gene_ids"], batch["input_bins"], batch["cu_seqlens"], batch.get("max_seqlen")
        )  # (T', d_model)
        logits = self.head(hidden)  # (T', n_bins)
        n_masked = (labels != IGNORE_INDEX).sum()
        loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        loss = loss_sum / n_masked.clamp(min=1)  # no .item(): stays on device, no sync
        return {
            "loss": loss,
            "loss_sum": loss_sum,
            "logits": logits,
            "n_masked": n_masked,
            "labels": labels,
            "cu_seqlens": batch["cu_seqlens"],
            "gene_ids": batch["gene_ids"],
        }

    @staticmethod
    def n_targets(prepared: dict) -> int:
        """Genes whose loss `prepared` (from `prepare_batch`) counts: a host int, counted where it was prepared."""
        return prepared["n_targets"]

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count; with `exclude_embeddings` the gene/bin lookup tables are left out (they do no matmul,
        which is what `flops_per_token` needs)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.gene_embedding.weight.numel() + self.bin_embedding.weight.numel()
        return n

    def flops_per_token(self, mean_context: float | None = None) -> float:
        """Training FLOPs (forward + backward) per token, for MFU estimates (PaLM, Chowdhery et al., 2022, App. B):

            6 * N  +  12 * n_layers * d_model * L

        N = non-embedding parameters (each weight does a multiply-add per token forward, twice that backward);
        the second term is QKᵀ and AV (2 * 2 * L * d_model forward per layer, x3 with backward), where a token
        attends to the L genes of its own cell (bidirectional: the whole cell, no causal halving). For a packed batch
        pass mean_context = sum(L_i²) / sum(L_i), the token-weighted mean cell length; default max_genes.
        Activation-checkpointing recompute is not counted (MFU convention).
        """
        c = self.config
        context = float(c.max_genes if mean_context is None else mean_context)
        return 6.0 * self.num_parameters(exclude_embeddings=True) + 12.0 * c.n_layers * c.d_model * context

    def flops(self, lengths, n_params: int | None = None) -> float:
        """Training FLOPs of one micro batch of cells with `lengths` expressed genes (host-side ints; raw lengths,
        before `max_genes`):  6 N ΣL' + 12 n_layers d_model ΣL'², L' = min(L, max_genes).

        `n_params` is the non-embedding parameter count N; pass the one taken before DeepSpeed ZeRO-3 partitions
        the parameters (`numel()` of a partitioned parameter is 0 there).
        """
        c = self.config
        kept = np.minimum(np.asarray(lengths, dtype=np.float64), c.max_genes)
        n = self.num_parameters(exclude_embeddings=True) if n_params is None else n_params
        return 6.0 * n * kept.sum() + 12.0 * c.n_layers * c.d_model * float(np.square(kept).sum())
