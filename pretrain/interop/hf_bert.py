"""Hugging Face `BertForMaskedLM` checkpoints <-> the Geneformer family (pretrain.models.geneformer).

Config: BertConfig's fields map onto GeneformerConfig's (hidden_size -> d_model, num_hidden_layers -> n_layers, ...).
Weights: per layer, `attention.self.{query,key,value}` are stacked into our fused `attn.qkv_proj` (rows [q; k; v]);
the MLM decoder's weight is the word-embedding matrix (tied in both models) and its bias our `head_bias`.
`BertForMaskedLM` has no pooler; a checkpoint that carries one (BertForPreTraining) is refused by name.
"""

from __future__ import annotations

import torch

from pretrain.config import ConfigError

ARCHITECTURES = ("BertForMaskedLM",)
CONFIG_FIELDS = {  # BertConfig -> GeneformerConfig
    "vocab_size": "vocab_size",
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "intermediate_size": "d_ff",
    "max_position_embeddings": "max_len",
    "hidden_act": "hidden_act",
    "hidden_dropout_prob": "dropout",
    "layer_norm_eps": "layer_norm_eps",
    "type_vocab_size": "type_vocab_size",
    "pad_token_id": "pad_token",
}
_EMBEDDINGS = {
    "bert.embeddings.word_embeddings.weight": "token_embedding.weight",
    "bert.embeddings.position_embeddings.weight": "position_embedding.weight",
    "bert.embeddings.token_type_embeddings.weight": "type_embedding.weight",
    "bert.embeddings.LayerNorm.weight": "ln_embedding.weight",
    "bert.embeddings.LayerNorm.bias": "ln_embedding.bias",
    "cls.predictions.transform.dense.weight": "head_dense.weight",
    "cls.predictions.transform.dense.bias": "head_dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "head_ln.weight",
    "cls.predictions.transform.LayerNorm.bias": "head_ln.bias",
    "cls.predictions.bias": "head_bias",
}
_LAYER = {
    "attention.output.dense": "attn.out_proj",
    "attention.output.LayerNorm": "ln_attn",
    "intermediate.dense": "fc_in",
    "output.dense": "fc_out",
    "output.LayerNorm": "ln_mlp",
}
_IGNORED = ("bert.embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def config_fields(hf: dict, source: str) -> dict:
    """GeneformerConfig fields from a BertConfig dict (config.json); a config of another architecture is refused."""
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "bert" or not set(arch) & set(ARCHITECTURES):
        msg = (
            f"{source}: model_type {hf.get('model_type')!r}, architectures {arch}: not a BERT masked-language model. "
            f"The Geneformer importer reads Hugging Face {ARCHITECTURES[0]} checkpoints (model_type 'bert')."
        )
        raise ConfigError(msg)
    if hf.get("position_embedding_type", "absolute") != "absolute":
        msg = f"{source}: position_embedding_type {hf['position_embedding_type']!r}; only 'absolute' is supported."
        raise ConfigError(msg)
    missing = [k for k in CONFIG_FIELDS if k not in hf and k not in ("pad_token_id", "type_vocab_size")]
    if missing:
        msg = f"{source}: missing BertConfig field(s) {missing}; the checkpoint's config.json is incomplete."
        raise ConfigError(msg)
    return {ours: hf[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in hf}


def hf_config(config, extra: dict | None = None) -> dict:
    """A BertConfig dict (config.json) for a GeneformerConfig."""
    out = {theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()}
    return {
        "architectures": list(ARCHITECTURES),
        "model_type": "bert",
        **out,
        "attention_probs_dropout_prob": config.dropout,
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "use_cache": True,
        "classifier_dropout": None,
        **(extra or {}),
    }


def from_hf(state: dict[str, torch.Tensor], n_layers: int, source: str) -> dict[str, torch.Tensor]:
    """Our state dict from a BertForMaskedLM one; unknown or missing tensors are refused by name."""
    state = {k.removeprefix("model."): v for k, v in state.items()}
    out, used = {}, set()
    for theirs, ours in _EMBEDDINGS.items():
        if theirs in state:
            out[ours] = state[theirs]
            used.add(theirs)
    for i in range(n_layers):
        p = f"bert.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            names = [f"{p}attention.self.{x}.{kind}" for x in ("query", "key", "value")]
            if all(n in state for n in names):
                out[f"blocks.{i}.attn.qkv_proj.{kind}"] = torch.cat([state[n] for n in names], dim=0)
                used.update(names)
            for theirs, ours in _LAYER.items():
                if f"{p}{theirs}.{kind}" in state:
                    out[f"blocks.{i}.{ours}.{kind}"] = state[f"{p}{theirs}.{kind}"]
                    used.add(f"{p}{theirs}.{kind}")
    unknown = sorted(k for k in set(state) - used if k not in _IGNORED)
    if unknown:
        msg = (
            f"{source}: tensors this importer does not know: {unknown[:6]}{' …' if len(unknown) > 6 else ''}. "
            "Only BertForMaskedLM weights (no pooler, no next-sentence head) are read; export the masked-LM model."
        )
        raise ConfigError(msg)
    decoder = state.get("cls.predictions.decoder.weight")
    words = state.get("bert.embeddings.word_embeddings.weight")
    if decoder is not None and words is not None and not torch.equal(decoder, words):
        msg = f"{source}: the MLM decoder's weight differs from the word embeddings; untied heads are not supported."
        raise ConfigError(msg)
    return out


def to_hf(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """A BertForMaskedLM state dict from ours (the tied decoder weight written once more, as transformers does)."""
    out = {theirs: state[ours] for theirs, ours in _EMBEDDINGS.items()}
    out["cls.predictions.decoder.weight"] = state["token_embedding.weight"]
    out["cls.predictions.decoder.bias"] = state["head_bias"]
    for i in range(n_layers):
        p = f"bert.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"blocks.{i}.attn.qkv_proj.{kind}"].chunk(3, dim=0)
            for name, tensor in (("query", q), ("key", k), ("value", v)):
                out[f"{p}attention.self.{name}.{kind}"] = tensor
            for theirs, ours in _LAYER.items():
                out[f"{p}{theirs}.{kind}"] = state[f"blocks.{i}.{ours}.{kind}"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
