"""Checkpoints in other projects' on-disk layouts, made in the tests (no download): scGPT's state-dict names."""

from __future__ import annotations

import torch

E, H, D_HID, LAYERS, N_BINS = 32, 4, 48, 2, 11  # a tiny scGPT: embsize, nheads, d_hid, nlayers, n_bins


def scgpt_state(vocab_size: int, style: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under scGPT's TransformerModel names (flash layers: self_attn.Wqkv), plus heads the GRN stage
    leaves out (cls_decoder, mvc_decoder)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    s = {"encoder.embedding.weight": w(vocab_size, E, scale=1.0), "encoder.enc_norm.weight": 1 + w(E),
         "encoder.enc_norm.bias": w(E)}  # fmt: skip
    if style == "continuous":
        s |= {"value_encoder.linear1.weight": w(E, 1), "value_encoder.linear1.bias": w(E),
              "value_encoder.linear2.weight": w(E, E), "value_encoder.linear2.bias": w(E)}  # fmt: skip
        s |= {"value_encoder.norm.weight": 1 + w(E), "value_encoder.norm.bias": w(E)}
    else:
        s |= {"value_encoder.embedding.weight": w(N_BINS + 2, E), "value_encoder.enc_norm.weight": 1 + w(E),
              "value_encoder.enc_norm.bias": w(E)}  # fmt: skip
    for i in range(LAYERS):
        p = f"transformer_encoder.layers.{i}."
        s |= {p + "self_attn.Wqkv.weight": w(3 * E, E), p + "self_attn.Wqkv.bias": w(3 * E),
              p + "self_attn.out_proj.weight": w(E, E), p + "self_attn.out_proj.bias": w(E),
              p + "linear1.weight": w(D_HID, E), p + "linear1.bias": w(D_HID), p + "linear2.weight": w(E, D_HID),
              p + "linear2.bias": w(E), p + "norm1.weight": 1 + w(E), p + "norm1.bias": w(E),
              p + "norm2.weight": 1 + w(E), p + "norm2.bias": w(E)}  # fmt: skip
    for i, (o, n) in {0: (E, E), 2: (E, E), 4: (1, E)}.items():
        s |= {f"decoder.fc.{i}.weight": w(o, n), f"decoder.fc.{i}.bias": w(o)}
    s |= {"cls_decoder.out_layer.weight": w(3, E), "mvc_decoder.gene2query.weight": w(E, E)}
    return s
