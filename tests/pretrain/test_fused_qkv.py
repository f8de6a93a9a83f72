"""Self-attention projects q, k, v with one fused matmul (issue 22, item 4); weights saved with the separate
`q_proj` / `kv_proj` of earlier releases load into it and compute the same function."""

from __future__ import annotations

import pytest
import torch
from test_scbert import _random_cells

from data_prep.vocab import GeneVocab
from pretrain.models.common import MultiheadAttention
from pretrain.models.scbert import ScBert, ScBertConfig
from pretrain.release import load_release, write_release

VOCAB = 200


def _separate(state: dict[str, torch.Tensor], d_model: int) -> dict[str, torch.Tensor]:
    """A state dict in the layout releases had before the fusion: `q_proj` (d rows) and `kv_proj` ([k; v] rows)."""
    old = {}
    for name, value in state.items():
        if ".qkv_proj." in name:
            old[name.replace("qkv_proj", "q_proj")] = value[:d_model].clone()
            old[name.replace("qkv_proj", "kv_proj")] = value[d_model:].clone()
        else:
            old[name] = value
    return old


def test_fused_projection_equals_separate_projections_forward_and_backward():
    torch.manual_seed(0)
    separate = MultiheadAttention(32, 4, backend="sdpa")
    fused = MultiheadAttention(32, 4, backend="sdpa", self_attention=True)
    fused.load_state_dict(separate.state_dict())  # q_proj / kv_proj -> qkv_proj by the pre-hook
    assert [n for n, _ in fused.named_parameters()] == [
        "qkv_proj.weight",
        "qkv_proj.bias",
        "out_proj.weight",
        "out_proj.bias",
    ]
    lengths = [5, 1, 9, 9, 3]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    x = torch.randn(sum(lengths), 32, requires_grad=True)
    y_sep = separate(x, cu, max(lengths))
    y_fused = fused(x, cu, max(lengths))
    torch.testing.assert_close(y_fused, y_sep, rtol=0, atol=1e-6)
    (g_sep,) = torch.autograd.grad(y_sep.square().sum(), x)
    (g_fused,) = torch.autograd.grad(y_fused.square().sum(), x)
    torch.testing.assert_close(g_fused, g_sep, rtol=0, atol=1e-6)
    weight_grad = torch.autograd.grad(fused(x, cu, max(lengths)).square().sum(), fused.qkv_proj.weight)[0]
    q_grad, kv_grad = torch.autograd.grad(
        separate(x, cu, max(lengths)).square().sum(), [separate.q_proj.weight, separate.kv_proj.weight]
    )
    torch.testing.assert_close(weight_grad, torch.cat([q_grad, kv_grad]), rtol=0, atol=1e-5)


def test_a_fused_self_attention_refuses_a_context_and_a_foreign_kv_dim():
    fused = MultiheadAttention(16, 2, self_attention=True)
    x = torch.randn(4, 16)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="takes no context"):
        fused(x, cu, 4, context=x, cu_seqlens_context=cu, max_seqlen_context=4)
    with pytest.raises(ValueError, match="kv_dim=8 must be None or d_model=16"):
        MultiheadAttention(16, 2, kv_dim=8, self_attention=True)


def test_a_release_saved_with_separate_projections_loads_and_gives_the_same_outputs(tmp_path):
    torch.manual_seed(1)
    vocab = GeneVocab.from_genes([[f"G{i}" for i in range(VOCAB - 4)]])
    cfg = ScBertConfig(vocab_size=vocab.size, d_model=32, n_layers=2, n_heads=4, d_ff=64, n_bins=7, max_genes=40,
                       attention="sdpa")  # fmt: skip
    model = ScBert(cfg).eval()
    manifest = {"value_kind": "counts", "totals": {"n_cells": 0}, "vocab": {"size": vocab.size, "sha256": vocab.sha256}}
    old_state = _separate(model.state_dict(), cfg.d_model)
    assert any(".q_proj." in k for k in old_state) and not any(".qkv_proj." in k for k in old_state)
    release = write_release(tmp_path / "old", "scbert", cfg, old_state, vocab, manifest, {"steps": 0})
    loaded, _ = load_release(release)
    raw = _random_cells(6, vocab.size, seed=2, max_genes=30)
    with torch.no_grad():
        want = model(raw, generator=torch.Generator().manual_seed(0))
        got = loaded(raw, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got["loss"], want["loss"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["logits"], want["logits"], rtol=0, atol=1e-6)


def test_a_checkpoint_of_another_parameter_layout_is_refused_before_its_optimizer_state_is_misread(tmp_path):
    from pretrain import checkpointing as ckpt
    from pretrain.config import ConfigError

    cfg = ScBertConfig(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2, d_ff=32, n_bins=5)
    layout = ckpt.parameter_layout(ScBert(cfg))
    assert layout == ckpt.parameter_layout(ScBert(cfg))
    assert layout != ckpt.parameter_layout(ScBert(ScBertConfig(**{**cfg.__dict__, "d_ff": 48})))
    ckpt.check_parameter_layout(tmp_path, {"param_layout": layout}, layout, "scbert")
    ckpt.check_parameter_layout(tmp_path, {}, layout, "exceiver")  # the Exceiver's layout did not change
    with pytest.raises(ConfigError, match=r"before scBERT's self-attention fused its q/k/v projections.*scgrn export"):
        ckpt.check_parameter_layout(tmp_path, {}, layout, "scbert")
    with pytest.raises(ConfigError, match=r"are not this model's .*train.resume=none"):
        ckpt.check_parameter_layout(tmp_path, {"param_layout": "0" * 64}, layout, "scbert")
