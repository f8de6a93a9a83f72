"""Single-device model code for pretraining: packed varlen attention, shared layers, scBERT.

(The Exceiver lives in `pretrain.models.exceiver`; import it from there.)"""

from pretrain.models.attention import (
    BACKENDS,
    block_diagonal_mask,
    flash_attn_available,
    pad_packed,
    resolve_backend,
    unpad,
    varlen_attention,
)
from pretrain.models.common import (
    GENE_SAMPLING_MODES,
    MLP,
    MultiheadAttention,
    PreLNBlock,
    cu_seqlens_from_lengths,
    init_transformer_weights,
    max_seqlen,
    sample_genes,
    segment_ids,
    seqlens,
    uniform,
)
from pretrain.models.scbert import IGNORE_INDEX, ScBert, ScBertConfig, bin_values, mask_for_mlm

__all__ = [
    "BACKENDS",
    "GENE_SAMPLING_MODES",
    "IGNORE_INDEX",
    "MLP",
    "MultiheadAttention",
    "PreLNBlock",
    "ScBert",
    "ScBertConfig",
    "bin_values",
    "block_diagonal_mask",
    "cu_seqlens_from_lengths",
    "flash_attn_available",
    "init_transformer_weights",
    "mask_for_mlm",
    "max_seqlen",
    "pad_packed",
    "resolve_backend",
    "sample_genes",
    "segment_ids",
    "seqlens",
    "uniform",
    "unpad",
    "varlen_attention",
]
