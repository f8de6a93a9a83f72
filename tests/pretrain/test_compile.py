"""`model.compile`: torch.compile'd blocks give the eager model's loss and gradients, under the same parameter names.

On CPU the compile takes ~30 s per family (inductor builds C++ kernels); on a GPU it is the point of the option.
"""

from __future__ import annotations

import pytest
import torch

from pretrain.model_factory import build_model, model_config


def _cu(lengths: list[int]) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return cu


@pytest.mark.slow
@pytest.mark.parametrize("family", ["scbert", "exceiver"])
def test_compiled_equals_eager_without_graph_breaks_or_recompiles_over_cell_lengths(family):
    """The reference backend is the one that traces on CPU (`sdpa` loops over cells on the host here); on a GPU
    the same code runs `varlen` (see the custom-op test below). Batches of different sizes and longest cells must
    reuse the graphs of the first: at most 4 graphs (the Exceiver's encoder, latent, decoder and head parts)."""
    from torch._dynamo.utils import counters

    from pretrain.models.common import resolve_attention

    results = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        fields = {"d_model": 32, "n_heads": 2, "d_ff": 64, "attention": "reference", "compile": compiled}
        model = build_model(family, model_config(family, fields, vocab_size=600))
        resolve_attention(model, "cpu", torch.float32)
        losses, graphs = [], []
        for lengths in ([5, 30, 1, 57], [12, 3, 40], [7] * 6, [100, 2, 64]):
            gen = torch.Generator().manual_seed(len(lengths))
            gene_ids = torch.cat([torch.randperm(500, generator=gen)[:n] + 4 for n in lengths])
            values = torch.randint(1, 30, (sum(lengths),), generator=gen).float()
            batch = {"cu_seqlens": _cu(lengths), "gene_ids": gene_ids, "values": values}
            out = model(batch, generator=torch.Generator().manual_seed(1))
            out["loss"].backward()
            losses.append(out["loss"].detach())
            graphs.append(counters["stats"]["unique_graphs"])
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results[compiled] = (torch.stack(losses), grads, list(model.state_dict()))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert 1 <= graphs[0] == graphs[-1] <= 4, graphs  # no recompile for new lengths
    eager, compiled = results[False], results[True]
    assert compiled[2] == eager[2]  # releases and checkpoints keep their parameter names
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-5, rtol=1e-5)
    assert compiled[1].keys() == eager[1].keys()
    for name, grad in eager[1].items():  # summed over 4 backward passes: inductor's fp32 sums associate otherwise
        torch.testing.assert_close(compiled[1][name], grad, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


@torch.library.custom_op("scgrn_test::varlen_attn", mutates_args=())
def _varlen_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int,
    max_k: int, scale: float,
) -> torch.Tensor:  # fmt: skip
    from pretrain.models.attention import _reference

    return _reference(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, scale)


@_varlen_op.register_fake
def _(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    return torch.empty_like(q)


def _varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None):
    """torch 2.13's varlen_attn signature over an opaque custom op, as torch's own is (its CUDA kernel cannot run
    here): what a compiled block sees of the GPU path."""
    return _varlen_op(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale)


def test_a_compiled_block_on_the_varlen_path_has_no_graph_break_and_one_graph_for_every_longest_cell(monkeypatch):
    from torch._dynamo.utils import counters

    from pretrain.models import attention
    from pretrain.models.common import PreLNBlock

    monkeypatch.setattr(attention, "torch_varlen_function", lambda: _varlen_attn)
    monkeypatch.setattr(attention, "_VARLEN_KERNEL", {})
    attention.varlen_kernel()  # what resolve_attention does on a GPU
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    block = PreLNBlock(32, 2, 64, backend="varlen")
    block.attn.resolved_backends = ("varlen", "varlen")  # resolve_attention's answer on an sm80+ GPU in bf16
    compiled = torch.compile(block, dynamic=True, backend="eager")  # dynamo's tracing; no kernels built
    reference = PreLNBlock(32, 2, 64, backend="reference")
    reference.load_state_dict(block.state_dict())
    for lengths in ([5, 30, 1, 57], [12, 3, 40], [7, 7, 7], [100, 2], [250, 3, 9]):
        x = torch.randn(sum(lengths), 32)
        torch.testing.assert_close(compiled(x, _cu(lengths), max(lengths)), reference(x, _cu(lengths), max(lengths)))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1
