"""Packed varlen attention: every backend agrees with the plain-math reference, and packed equals padded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.models import attention
from pretrain.models.attention import BACKENDS, pad_packed, resolve_backend, unpad, varlen_attention

H, D = 4, 16


def _cu(lengths: list[int]) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return cu


def _random_lengths(gen: torch.Generator, n: int, low: int = 1, high: int = 40) -> list[int]:
    lengths = torch.randint(low, high, (n,), generator=gen).tolist()
    lengths[0] = 1  # always include length-1 sequences
    lengths[-1] = 1
    return lengths


def _qkv(lengths_q: list[int], lengths_k: list[int], gen: torch.Generator, dtype=torch.float32, device="cpu"):
    tq, tk = sum(lengths_q), sum(lengths_k)
    q = torch.randn(tq, H, D, generator=gen).to(device, dtype)
    k = torch.randn(tk, H, D, generator=gen).to(device, dtype)
    v = torch.randn(tk, H, D, generator=gen).to(device, dtype)
    return q, k, v, _cu(lengths_q).to(device), _cu(lengths_k).to(device), max(lengths_q), max(lengths_k)


def _cases():
    """(name, lengths_q, lengths_k): self-attention and cross-attention with different q/k lengths."""
    gen = torch.Generator().manual_seed(0)
    cases = []
    for i in range(3):
        lengths = _random_lengths(gen, 7)
        cases.append((f"self{i}", lengths, lengths))
        cases.append((f"cross{i}", _random_lengths(gen, 7, high=9), _random_lengths(gen, 7)))
    cases.append(("single", [1], [1]))
    cases.append(("latents", [8] * 5, [1, 30, 2, 17, 5]))  # Exceiver-like: fixed queries per cell
    return cases


CASES = _cases()


@pytest.mark.parametrize(("name", "lengths_q", "lengths_k"), CASES, ids=[c[0] for c in CASES])
def test_sdpa_matches_reference(name, lengths_q, lengths_k):
    args = _qkv(lengths_q, lengths_k, torch.Generator().manual_seed(1))
    expected = varlen_attention(*args, backend="reference")
    out = varlen_attention(*args, backend="sdpa")
    assert out.shape == args[0].shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("strategy", ["_sdpa_per_sequence", "_sdpa_block_mask", "_sdpa_nested"])
@pytest.mark.parametrize(("name", "lengths_q", "lengths_k"), CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_every_sdpa_strategy_matches_reference(strategy, name, lengths_q, lengths_k):
    """The CUDA paths (nested jagged, block mask fallback) are exercised on CPU too, for correctness."""
    q, k, v, cu_q, cu_k, max_q, max_k = _qkv(lengths_q, lengths_k, torch.Generator().manual_seed(2))
    expected = varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, backend="reference")
    with torch.autograd.set_grad_enabled(False):
        out = getattr(attention, strategy)(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, D**-0.5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("backend", ["sdpa", "reference", "_sdpa_nested", "_sdpa_block_mask"])
def test_strided_kv_from_a_fused_projection(backend):
    """k, v unbound from one (Tk, 2, H, D) projection (as `MultiheadAttention` makes them) are not contiguous."""
    gen = torch.Generator().manual_seed(11)
    cu = _cu([3, 1, 8])
    q = torch.randn(12, H, D, generator=gen, requires_grad=True)
    kv = torch.randn(12, 2, H, D, generator=gen, requires_grad=True)
    k, v = kv.unbind(1)  # 2 x (Tk, H, D), strided
    expected = varlen_attention(
        q.detach(), k.detach().contiguous(), v.detach().contiguous(), cu, cu, 8, 8, backend="reference"
    )
    if backend.startswith("_"):
        out = getattr(attention, backend)(q, k, v, cu, cu, 8, 8, 0.0, D**-0.5)
    else:
        out = varlen_attention(q, k, v, cu, cu, 8, 8, backend=backend)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert kv.grad is not None and kv.grad.abs().sum() > 0


def test_softmax_scale_is_used():
    args = _qkv([3, 5], [4, 2], torch.Generator().manual_seed(3))
    expected = varlen_attention(*args, backend="reference", softmax_scale=0.3)
    torch.testing.assert_close(varlen_attention(*args, backend="sdpa", softmax_scale=0.3), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(varlen_attention(*args, backend="sdpa"), expected, atol=1e-3)


def _padded_attention(q, k, v, cu_q, cu_k, max_q, max_k):
    """The same cells padded to (B, L, H, D), attended with a key-padding mask, then unpadded."""
    qp, mask_q = pad_packed(q, cu_q, max_q)  # (B, Lq, H, D), (B, Lq)
    kp, mask_k = pad_packed(k, cu_k, max_k)  # (B, Lk, H, D), (B, Lk)
    vp, _ = pad_packed(v, cu_k, max_k)
    out = F.scaled_dot_product_attention(
        qp.transpose(1, 2),  # (B, H, Lq, D)
        kp.transpose(1, 2),  # (B, H, Lk, D)
        vp.transpose(1, 2),
        attn_mask=mask_k[:, None, None, :],  # (B, 1, 1, Lk): keys that are real tokens
    )  # (B, H, Lq, D)
    return unpad(out.transpose(1, 2), mask_q)  # (Tq, H, D)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
@pytest.mark.parametrize(("name", "lengths_q", "lengths_k"), CASES, ids=[c[0] for c in CASES])
def test_packed_equals_padded(backend, name, lengths_q, lengths_k):
    args = _qkv(lengths_q, lengths_k, torch.Generator().manual_seed(4))
    packed = varlen_attention(*args, backend=backend)
    padded = _padded_attention(*args)
    torch.testing.assert_close(packed, padded, atol=1e-6, rtol=1e-6)


def test_pad_unpad_roundtrip():
    lengths = [3, 1, 5]
    x = torch.arange(9 * 2, dtype=torch.float32).view(9, 2)
    padded, mask = pad_packed(x, _cu(lengths), 6)
    assert padded.shape == (3, 6, 2)
    assert mask.sum(1).tolist() == lengths
    assert torch.equal(padded[1, 0], x[3])
    assert torch.equal(padded[2, 5], torch.zeros(2))  # padding is zero
    assert torch.equal(unpad(padded, mask), x)


def test_sdpa_gradients_match_reference():
    gen = torch.Generator().manual_seed(5)
    q, k, v, cu_q, cu_k, max_q, max_k = _qkv([1, 6, 9], [4, 1, 12], gen)
    grad_out = torch.randn(q.shape, generator=gen)
    grads = {}
    for backend in ("sdpa", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = varlen_attention(*leaves, cu_q, cu_k, max_q, max_k, backend=backend)
        out.backward(grad_out)
        grads[backend] = [t.grad for t in leaves]
    for got, expected in zip(grads["sdpa"], grads["reference"], strict=True):
        assert got is not None and torch.isfinite(got).all()
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dropout_changes_the_output():
    args = _qkv([5, 7], [5, 7], torch.Generator().manual_seed(6))
    base = varlen_attention(*args, backend="sdpa")
    torch.manual_seed(0)
    dropped = varlen_attention(*args, backend="sdpa", dropout_p=0.5)
    assert not torch.allclose(base, dropped)


# ---------------------------------------------------------------------------------------------------------------------
# backend selection and errors


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("sdpa", torch.device("cpu")) == "sdpa"
    assert resolve_backend("reference", "cpu") == "reference"


def test_resolve_backend_rejects_unknown_name_listing_allowed():
    with pytest.raises(ValueError, match="'fast'") as info:
        resolve_backend("fast", "cpu")
    for allowed in ("auto", *BACKENDS):
        assert allowed in str(info.value)


def test_flash_on_cpu_is_a_helpful_error():
    with pytest.raises(ValueError, match=r"scgrn\[gpu\]|sdpa"):
        resolve_backend("flash", "cpu")
    args = _qkv([3], [3], torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="flash") as info:
        varlen_attention(*args, backend="flash")
    message = str(info.value)
    assert "sdpa" in message
    assert "scgrn[gpu]" in message or "device=cpu" in message


def test_varlen_attention_rejects_bad_inputs():
    q, k, v, cu_q, cu_k, max_q, max_k = _qkv([3, 2], [4, 4], torch.Generator().manual_seed(8))
    with pytest.raises(ValueError, match="not one of"):
        varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, backend="auto")
    with pytest.raises(ValueError, match=r"\(T, H, D\)"):
        varlen_attention(q[0], k, v, cu_q, cu_k, max_q, max_k)
    with pytest.raises(ValueError, match="Tk, H, D"):
        varlen_attention(q, k[:, :2], v, cu_q, cu_k, max_q, max_k)
    with pytest.raises(ValueError, match="B\\+1"):
        varlen_attention(q, k, v, cu_q, cu_k[:2], max_q, max_k)


# ---------------------------------------------------------------------------------------------------------------------
# GPU (run on the lent GPU machine: pytest -m gpu)


def _require_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.gpu
@pytest.mark.parametrize(("name", "lengths_q", "lengths_k"), CASES, ids=[c[0] for c in CASES])
def test_flash_matches_sdpa_bf16(name, lengths_q, lengths_k):
    _require_cuda()
    if not attention.flash_attn_available():
        pytest.skip("flash-attn not installed (pip install scgrn[gpu])")
    args = _qkv(lengths_q, lengths_k, torch.Generator().manual_seed(9), dtype=torch.bfloat16, device="cuda")
    flash = varlen_attention(*args, backend="flash")
    sdpa = varlen_attention(*args, backend="sdpa")
    assert flash.dtype == torch.bfloat16
    torch.testing.assert_close(flash.float(), sdpa.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "lengths_q", "lengths_k"), CASES, ids=[c[0] for c in CASES])
def test_cuda_sdpa_matches_reference(dtype, name, lengths_q, lengths_k):
    """The CUDA sdpa path (nested jagged tensors) against fp32 math, forward and backward."""
    _require_cuda()
    q, k, v, cu_q, cu_k, max_q, max_k = _qkv(lengths_q, lengths_k, torch.Generator().manual_seed(10), dtype, "cuda")
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    outs, grads = {}, {}
    for backend in ("sdpa", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        outs[backend] = varlen_attention(*leaves, cu_q, cu_k, max_q, max_k, backend=backend)
        outs[backend].float().square().sum().backward()
        grads[backend] = [t.grad.float() for t in leaves]
    torch.testing.assert_close(outs["sdpa"].float(), outs["reference"].float(), **tol)
    for got, expected in zip(grads["sdpa"], grads["reference"], strict=True):
        torch.testing.assert_close(got, expected, **tol)
