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
    # runs of equal-shape sequences go through one batched SDPA call (in-silico deletion variants, cells at max_genes);
    # a run breaks where the key length changes even if the query length does not
    cases.append(("runs", [5, 5, 5, 3, 3, 7, 5, 5], [5, 5, 5, 3, 3, 7, 5, 5]))
    cases.append(("runs-cross", [4, 4, 4, 4, 2], [6, 6, 9, 9, 9]))
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


@pytest.mark.parametrize(("lengths_q", "lengths_k"), [([1, 6, 9], [4, 1, 12]), ([6, 6, 6, 2], [6, 6, 6, 2])])
def test_sdpa_gradients_match_reference(lengths_q, lengths_k):
    gen = torch.Generator().manual_seed(5)
    q, k, v, cu_q, cu_k, max_q, max_k = _qkv(lengths_q, lengths_k, gen)
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
    assert resolve_backend("auto", "cpu", torch.bfloat16) == "sdpa"
    assert resolve_backend("sdpa", torch.device("cpu")) == "sdpa"
    assert resolve_backend("reference", "cpu") == "reference"


def test_resolve_backend_rejects_unknown_name_listing_allowed():
    with pytest.raises(ValueError, match="'fast'") as info:
        resolve_backend("fast", "cpu")
    for allowed in ("auto", *BACKENDS):
        assert allowed in str(info.value)


def test_flash_on_cpu_is_a_helpful_error():
    with pytest.raises(ValueError, match=r"'flash' cannot run here.*(scgrn\[gpu\]|varlen)"):
        resolve_backend("flash", "cpu")
    args = _qkv([3], [3], torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="'flash' cannot run here") as info:
        varlen_attention(*args, backend="flash")
    assert "sdpa" in str(info.value)


def test_varlen_on_cpu_or_fp32_or_with_dropout_is_a_helpful_error():
    """torch's varlen_attn needs CUDA sm80+, half precision and no attention dropout; each miss names the fix."""
    with pytest.raises(ValueError, match=r"'varlen' cannot run here: .*device=cpu.*sdpa"):
        resolve_backend("varlen", "cpu", torch.bfloat16)
    args = _qkv([3, 2], [3, 2], torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="'varlen' cannot run here"):
        varlen_attention(*args, backend="varlen")


def _varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.10's varlen_attn signature (no `scale`: always 1/sqrt(head_dim)), computed with the reference."""
    assert not is_causal and return_aux is None
    return attention._reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, 0.0, query.shape[-1] ** -0.5)


def _varlen_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, **rest):
    """The installed torch's own varlen_attn signature (2.13: keyword `scale`), computed with the reference."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return attention._reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, 0.0, scale)


@pytest.mark.parametrize("signature", ["2.10", "2.13"])
def test_the_varlen_call_fits_each_torch_signature(monkeypatch, signature):
    """torch's varlen_attn needs CUDA, so its kernel cannot run here; what is tested is our call against each
    torch's signature: `scale` is passed where the function takes it, left out (its default is ours) where it does
    not, and a scale the function cannot take is refused with the fix."""
    if signature == "2.13":
        varlen = pytest.importorskip("torch.nn.attention.varlen")
        if "scale" not in __import__("inspect").signature(varlen.varlen_attn).parameters:
            pytest.skip(f"torch {torch.__version__}'s varlen_attn has no scale keyword")
        fake = _varlen_2_13
        fake.__signature__ = __import__("inspect").signature(varlen.varlen_attn)
    else:
        fake = _varlen_2_10
    monkeypatch.setattr(attention, "torch_varlen_function", lambda: fake)
    monkeypatch.setattr(attention, "_VARLEN_KERNEL", {})
    q, k, v, cu_q, cu_k, max_q, max_k = _qkv([3, 5, 1], [3, 5, 1], torch.Generator().manual_seed(3))
    for scale in (D**-0.5, 0.5):  # what varlen_attention hands the backend (its default: 1/sqrt(D))
        ref = attention._reference(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, scale)
        if signature == "2.10" and scale == 0.5:
            with pytest.raises(ValueError, match=r"has no `scale` keyword .* asks for 0\.5; use a torch"):
                attention._torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, scale)
            continue
        torch.testing.assert_close(attention._torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, scale), ref)


def test_varlen_on_a_torch_without_it_names_the_version_and_the_fix(monkeypatch):
    monkeypatch.setattr(attention, "torch_varlen_function", lambda: None)  # torch 2.9: no torch.nn.attention.varlen
    monkeypatch.setattr(attention, "_VARLEN_KERNEL", {})
    with pytest.raises(ValueError, match=r"has no torch.nn.attention.varlen.*sdpa"):
        resolve_backend("varlen", "cuda", torch.bfloat16)
    q, k, v, cu_q, cu_k, max_q, max_k = _qkv([2, 2], [2, 2], torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match=r"has no torch.nn.attention.varlen.*sdpa"):
        attention._torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, D**-0.5)


FA4_ONLY = '''
import torch
from pretrain.models import attention

calls = []

def flash_attn_varlen_func(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
                           softmax_scale=None, causal=False, window_size=(None, None)):
    """flash-attn 4's keyword signature (no max_seqlen, no dropout_p); returns (out, lse) like FA4."""
    calls.append(sorted(k for k, v in locals().items() if v is not None))
    out = attention._reference(q, k, v, cu_seqlens_q, cu_seqlens_k, 0, 0, 0.0, softmax_scale)
    return out, None
'''


def _run_with_packages(tmp_path, packages: dict[str, str], code: str) -> str:
    """Run `code` in a fresh interpreter whose path holds `packages` ({relative file: source}) ahead of site."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    for relative, source in packages.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{repo}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_flash_attn_4_only_install_is_found_by_its_function_and_called_with_its_signature(tmp_path):
    """flash-attn-4 installs only `flash_attn.cute` (so `import flash_attn` succeeds as a namespace package and
    `flash_attn.flash_attn_varlen_func` does not exist). Detection must find FA4's function, never a broken FA2 one,
    and `auto` must not pick flash on CPU or in fp32. FA4's kernels cannot run without a Hopper GPU, so the module
    here has FA4's signature and computes with the reference; what is tested is our detection and argument mapping."""
    code = """
import torch
from pretrain.models import attention
import flash_attn  # the namespace package imports
assert not hasattr(flash_attn, "flash_attn_varlen_func")
flavour, fn = attention.flash_varlen_function()
print(flavour)
print(attention.resolve_backend("auto", "cpu", torch.bfloat16),
      attention.resolve_backend("auto", "cuda", torch.float32))
gen = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(7, 2, 8, generator=gen) for _ in range(3))
cu = torch.tensor([0, 3, 7], dtype=torch.int32)
out = attention._flash(q, k, v, cu, cu, 4, 4, 0.0, 8 ** -0.5)
ref = attention._reference(q, k, v, cu, cu, 4, 4, 0.0, 8 ** -0.5)
torch.testing.assert_close(out, ref)
import flash_attn.cute as cute
print(cute.calls[-1])
try:
    attention.resolve_backend("flash", "cuda", torch.bfloat16, dropout_p=0.1)
except ValueError as err:
    print("ERR", err)
"""
    out = _run_with_packages(tmp_path, {"flash_attn/cute/__init__.py": FA4_ONLY}, code).splitlines()
    assert out[0] == "fa4"
    assert out[1] == "sdpa sdpa"
    assert out[2] == "['causal', 'cu_seqlens_k', 'cu_seqlens_q', 'k', 'q', 'softmax_scale', 'v', 'window_size']"
    assert out[3].startswith("ERR attention backend 'flash' cannot run here: flash-attn fa4's varlen function")


def test_a_broken_flash_attn_2_build_is_not_detected(tmp_path):
    """A flash_attn whose CUDA extension fails to load (as on a CPU machine) is not a backend."""
    broken = "raise ImportError('libcudart.so.12: cannot open shared object file')\n"
    code = "from pretrain.models import attention; print(attention.flash_varlen_function())"
    assert _run_with_packages(tmp_path, {"flash_attn/__init__.py": broken}, code).strip() == "None"


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


def _require_fused(backend: str):
    _require_cuda()
    try:
        resolve_backend(backend, "cuda", torch.bfloat16)
    except ValueError as err:
        pytest.skip(str(err))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["varlen", "flash"])
@pytest.mark.parametrize(("name", "lengths_q", "lengths_k"), CASES, ids=[c[0] for c in CASES])
def test_fused_varlen_matches_sdpa_and_reference_bf16_head_dim_64(backend, name, lengths_q, lengths_k):
    """torch's varlen_attn and flash-attn against the nested SDPA path and fp32 math: forward and backward, bf16,
    head dim 64 (the base configs' head size)."""
    _require_fused(backend)
    gen = torch.Generator().manual_seed(9)
    tq, tk = sum(lengths_q), sum(lengths_k)
    q, k, v = (torch.randn(t, 4, 64, generator=gen).to("cuda", torch.bfloat16) for t in (tq, tk, tk))
    cu_q, cu_k = _cu(lengths_q).cuda(), _cu(lengths_k).cuda()
    outs, grads = {}, {}
    for b in (backend, "sdpa", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        outs[b] = varlen_attention(*leaves, cu_q, cu_k, max(lengths_q), max(lengths_k), backend=b)
        outs[b].float().square().sum().backward()
        grads[b] = [t.grad.float() for t in leaves]
    assert outs[backend].dtype == torch.bfloat16
    for other in ("sdpa", "reference"):
        torch.testing.assert_close(outs[backend].float(), outs[other].float(), atol=2e-2, rtol=2e-2)
        for got, expected in zip(grads[backend], grads[other], strict=True):
            torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["scbert", "exceiver"])
def test_model_level_varlen_matches_sdpa(family):
    """A whole model in bf16 autocast gives the same loss and gradients with attention=varlen and attention=sdpa."""
    _require_fused("varlen")
    from pretrain.model_factory import build_model, model_config

    gen = torch.Generator().manual_seed(3)
    lengths = [5, 130, 64, 1, 257]
    cu = _cu(lengths).cuda()
    gene_ids = torch.cat([torch.randperm(500, generator=gen)[:n] + 4 for n in lengths]).cuda()
    values = torch.randint(1, 30, (sum(lengths),), generator=gen).float().cuda()
    batch = {"cu_seqlens": cu, "gene_ids": gene_ids, "values": values}
    results = {}
    for backend in ("varlen", "sdpa"):
        torch.manual_seed(0)
        cfg = {"d_model": 128, "n_heads": 2, "attention": backend}
        model = build_model(family, model_config(family, cfg, vocab_size=600)).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch, generator=torch.Generator(device="cuda").manual_seed(1))
        out["loss"].backward()
        results[backend] = (out["loss"].float(), [p.grad.float() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(results["varlen"][0], results["sdpa"][0], atol=2e-2, rtol=2e-2)
    for a, b in zip(results["varlen"][1], results["sdpa"][1], strict=True):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=1e-1)


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


def test_head_dims_the_fused_kernels_run_pass_and_others_are_refused():
    for backend, head_dim in (("varlen", 64), ("varlen", 128), ("flash", 256), ("sdpa", 36), ("reference", 12)):
        attention.check_head_dim(backend, head_dim)
    for backend, head_dim in (("varlen", 36), ("flash", 512)):
        with pytest.raises(ValueError, match="a multiple of 8, at most 256"):
            attention.check_head_dim(backend, head_dim)
