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
def test_compiled_equals_eager(family):
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        fields = {"d_model": 32, "n_heads": 2, "d_ff": 64, "attention": "sdpa", "compile": compiled}
        model = build_model(family, model_config(family, fields, vocab_size=600))
        losses = []
        for lengths in ([5, 30, 1, 57], [12, 3, 40]):  # two batch shapes: dynamic shapes, no recompile per length
            gen = torch.Generator().manual_seed(len(lengths))
            gene_ids = torch.cat([torch.randperm(500, generator=gen)[:n] + 4 for n in lengths])
            values = torch.randint(1, 30, (sum(lengths),), generator=gen).float()
            batch = {"cu_seqlens": _cu(lengths), "gene_ids": gene_ids, "values": values}
            out = model(batch, generator=torch.Generator().manual_seed(1))
            out["loss"].backward()
            losses.append(out["loss"].detach())
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results[compiled] = (torch.stack(losses), grads, list(model.state_dict()))
    eager, compiled = results[False], results[True]
    assert compiled[2] == eager[2]  # releases and checkpoints keep their parameter names
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-5, rtol=1e-5)
    assert compiled[1].keys() == eager[1].keys()
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
