"""Variable-length (packed) multi-head attention for bidirectional single-cell encoders.

Cells arrive packed without padding (see `data_prep.loader.CellBatch.to_torch`): the tokens of all B cells are
concatenated into one (T, ...) tensor and `cu_seqlens` (B+1,) int32 marks where each cell starts and ends. Attention
must stay inside a cell: token t of sequence i in q attends to every token of sequence i in k/v and to nothing else
(a block-diagonal attention pattern, non-causal).

Four interchangeable backends, checked against each other by `tests/pretrain/test_attention.py`:

- ``varlen``: torch's own `torch.nn.attention.varlen.varlen_attn` (FlashAttention-2 kernels built into torch >= 2.10;
  torch 2.9 has no `torch.nn.attention.varlen`; CUDA sm80+, fp16/bf16, forward and backward;
  `torch.nn.attention.activate_flash_attention_impl("FA3")` routes it to Hopper kernels). No extra package, so it
  is what ``auto`` picks on a GPU. It has no attention dropout, and its ``scale`` keyword is newer than the function
  (absent in torch 2.10, present in 2.13): the scale is passed only where the signature takes it, and a model whose
  scale is not the default 1/sqrt(head_dim) is refused on a torch without it.
- ``flash``: the flash-attn package's varlen function, FlashAttention-2 (``flash_attn.flash_attn_varlen_func``) or
  FlashAttention-4 (``flash_attn.cute.flash_attn_varlen_func``, Hopper/Blackwell). Detected by the function, not
  the package name: flash-attn-4 installs only ``flash_attn.cute``, so ``import flash_attn`` alone proves nothing.
- ``sdpa``: `torch.nn.functional.scaled_dot_product_attention`. On CUDA via nested jagged tensors, which reach the
  fused flash / memory-efficient kernels without materialising padding; on CPU one SDPA call per cell (measured
  fastest, numbers beside `_sdpa`).
- ``reference``: the textbook softmax(Q Kᵀ · scale + block-diagonal mask) V in fp32. Slow, quadratic in T; for tests.

No backend falls back to another: a backend that cannot run raises an error naming it and what to set instead.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("varlen", "flash", "sdpa", "reference")
HALF = (torch.float16, torch.bfloat16)

_FLASH_HINT = 'install flash-attn (`pip install scgrn[gpu]`) or set model.attention to "varlen" or "sdpa"'
_VARLEN_HINT = 'set model.attention to "sdpa" (or "flash" with flash-attn installed) instead'


@functools.cache
def torch_varlen_function() -> Callable | None:
    """torch's fused varlen attention (`torch.nn.attention.varlen.varlen_attn`), or None on torch < 2.10."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def flash_varlen_function() -> tuple[str, Callable] | None:
    """("fa2" | "fa4", the flash-attn varlen function) when one imports, else None.

    Looked up by the function: flash-attn 2 exports ``flash_attn.flash_attn_varlen_func``; flash-attn 4
    (``flash-attn-4`` on PyPI) installs only ``flash_attn.cute`` with a varlen function of another signature.
    """
    for flavour, module in (("fa2", "flash_attn"), ("fa4", "flash_attn.cute")):
        try:
            fn = __import__(module, fromlist=["flash_attn_varlen_func"]).flash_attn_varlen_func
        except Exception:  # ImportError, AttributeError, or a CUDA build whose extension fails to load
            continue
        return flavour, fn
    return None


def flash_attn_available() -> bool:
    """True when a flash-attn varlen function (FA2 or FA4) imports."""
    return flash_varlen_function() is not None


@functools.cache
def _cuda_sm80(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_backend(
    name: str, device: torch.device | str, dtype: torch.dtype | None = None, dropout_p: float = 0.0
) -> str:
    """Map a configured backend name to a concrete one for tensors of `dtype` on `device`.

    ``auto``: on CUDA in fp16/bf16, ``varlen`` (torch's fused kernel) when there is no attention dropout, else
    ``flash`` when flash-attn with dropout support is installed; ``sdpa`` everywhere else (CPU, fp32). An explicit
    backend that cannot run here is an error now, naming what to set instead, rather than a failure (or a silent
    switch) at the first forward pass. `dtype` None skips the precision checks.
    """
    allowed = ("auto", *BACKENDS)
    if name not in allowed:
        msg = f"attention backend {name!r} is not one of {allowed}"
        raise ValueError(msg)
    device = torch.device(device)
    half = dtype is None or dtype in HALF
    if name == "auto":
        if device.type != "cuda" or not half:
            return "sdpa"
        if dropout_p == 0.0 and torch_varlen_function() is not None and _cuda_sm80(device):
            return "varlen"
        found = flash_varlen_function()
        if found is not None and (dropout_p == 0.0 or _accepts(found[1], "dropout_p")):
            return "flash"
        return "sdpa"
    if name == "varlen":
        problem = None
        if torch_varlen_function() is None:
            problem = f"torch {torch.__version__} has no torch.nn.attention.varlen"
        elif device.type != "cuda" or not _cuda_sm80(device):
            problem = f"device={device} is not a CUDA GPU of compute capability >= 8.0 (sm80+)"
        elif not half:
            problem = f"dtype={dtype} (it runs fp16/bf16 only: set train.precision=bf16)"
        elif dropout_p > 0.0:
            problem = f"dropout={dropout_p} (torch's varlen_attn has no attention dropout: set model.dropout=0)"
        if problem:
            msg = f"attention backend 'varlen' cannot run here: {problem}; {_VARLEN_HINT}"
            raise ValueError(msg)
    if name == "flash":
        found = flash_varlen_function()
        problem = None
        if found is None:
            problem = "no flash-attn varlen function imports (flash_attn.flash_attn_varlen_func for FA2, "
            problem += "flash_attn.cute.flash_attn_varlen_func for FA4)"
        elif device.type != "cuda":
            problem = f"it needs a CUDA device, got device={device}"
        elif not half:
            problem = f"it needs fp16/bf16 inputs, got dtype={dtype} (set train.precision=bf16)"
        elif dropout_p > 0.0 and not _accepts(found[1], "dropout_p"):
            problem = f"flash-attn {found[0]}'s varlen function has no dropout (model.dropout={dropout_p}; set it to 0)"
        if problem:
            msg = f"attention backend 'flash' cannot run here: {problem}; {_FLASH_HINT}"
            raise ValueError(msg)
    return name


FUSED_HEAD_DIMS = "a multiple of 8, at most 256"  # FlashAttention-2's kernels (torch's varlen and flash-attn)


def check_head_dim(backend: str, head_dim: int) -> None:
    """Refuse a head dim the fused kernels (`varlen`, `flash`) cannot run, naming the model keys to change."""
    if backend in ("varlen", "flash") and (head_dim % 8 or head_dim > 256):
        msg = (
            f"model.d_model / model.n_heads = {head_dim}: attention backend {backend!r} (FlashAttention-2 kernels) "
            f"needs a head dim that is {FUSED_HEAD_DIMS} (e.g. 64 or 128); change model.n_heads or model.d_model, "
            'or set model.attention to "sdpa"'
        )
        raise ValueError(msg)


def _accepts(fn: Callable, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    backend: str = "sdpa",
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
) -> Tensor:
    """Non-causal attention over packed sequences: sequence i of q attends only to sequence i of k/v.

    Args:
        q: (Tq, H, D) packed queries.
        k, v: (Tk, H, D) packed keys and values (Tk may differ from Tq: cross-attention, e.g. Exceiver latents).
        cu_seqlens_q, cu_seqlens_k: (B+1,) int32 cumulative lengths, starting at 0 and ending at Tq / Tk.
            Every k/v sequence must hold at least one token (an empty one would give a softmax over nothing).
        max_seqlen_q, max_seqlen_k: longest sequence in q / k (python ints, so no device sync is needed).
        backend: one of `BACKENDS` (resolve "auto" first with `resolve_backend`).
        dropout_p: attention-probability dropout; pass 0.0 at eval time.
        softmax_scale: defaults to 1/sqrt(D).

    Returns:
        (Tq, H, D) in q's dtype.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        msg = f"q, k, v must be (T, H, D); got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        raise ValueError(msg)
    if k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        msg = f"need q (Tq, H, D) and k, v (Tk, H, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        raise ValueError(msg)
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape != cu_seqlens_k.shape:
        msg = (
            f"cu_seqlens_q and cu_seqlens_k must both be (B+1,); got {tuple(cu_seqlens_q.shape)} "
            f"and {tuple(cu_seqlens_k.shape)}"
        )
        raise ValueError(msg)
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, scale)
    if backend in ("varlen", "flash"):
        if not torch.compiler.is_compiling():  # a compiled model resolved its backends before tracing
            resolve_backend(backend, q.device, q.dtype, dropout_p)  # the clear error, not the kernel's
        return _torch_varlen(*args) if backend == "varlen" else _flash(*args)
    if backend == "sdpa":
        return _sdpa(*args)
    if backend == "reference":
        return _reference(*args)
    msg = f"attention backend {backend!r} is not one of {BACKENDS} (resolve 'auto' with resolve_backend first)"
    raise ValueError(msg)


# ----------------------------------------------------------------------------------------------------------------------
# varlen (torch) and flash (flash-attn 2 / 4)


_VARLEN_KERNEL: dict[str, tuple[Callable, bool]] = {}  # "varlen" -> (torch's varlen_attn, whether it takes scale)


def varlen_kernel() -> tuple[Callable, bool]:
    """(torch's varlen_attn, whether its signature has `scale`: torch 2.13 does, 2.10 does not), looked up once.

    Kept in a plain dict rather than a functools cache: a compiled graph reads it as a constant (after
    `common.resolve_attention` filled it) instead of tracing the signature inspection."""
    kernel = _VARLEN_KERNEL.get("varlen")
    if kernel is None:
        fn = torch_varlen_function()
        if fn is None:
            msg = f"attention backend 'varlen': torch {torch.__version__} has no torch.nn.attention.varlen; "
            msg += _VARLEN_HINT
            raise ValueError(msg)
        kernel = _VARLEN_KERNEL["varlen"] = (fn, _accepts(fn, "scale"))
    return kernel


def _torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale) -> Tensor:
    del dropout_p  # 0 (checked by resolve_backend)
    fn, takes_scale = varlen_kernel()
    cu_q = cu_q.to(device=q.device, dtype=torch.int32)
    cu_k = cu_k.to(device=q.device, dtype=torch.int32)
    if takes_scale:
        return fn(q, k, v, cu_q, cu_k, int(max_q), int(max_k), scale=scale)  # (Tq, H, D)
    default = 1.0 / math.sqrt(q.shape[-1])
    if not math.isclose(scale, default, rel_tol=1e-6):
        msg = (
            f"attention backend 'varlen': torch {torch.__version__}'s varlen_attn has no `scale` keyword and always "
            f"scales by 1/sqrt(head_dim) = {default:.6g}, but this call asks for {scale:.6g}; use a torch whose "
            f"varlen_attn takes `scale` (2.13 does) or {_VARLEN_HINT}"
        )
        raise ValueError(msg)
    return fn(q, k, v, cu_q, cu_k, int(max_q), int(max_k))  # its default scale is this call's


def _flash(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale) -> Tensor:
    flavour, fn = flash_varlen_function()
    cu_q = cu_q.to(device=q.device, dtype=torch.int32)
    cu_k = cu_k.to(device=q.device, dtype=torch.int32)
    if flavour == "fa2":
        return fn(q, k, v, cu_q, cu_k, int(max_q), int(max_k), dropout_p=dropout_p, softmax_scale=scale, causal=False)
    # FA4 (flash_attn.cute): keyword arguments, no max_seqlen; returns (out, lse) in the versions seen so far.
    kwargs = {"cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k, "softmax_scale": scale, "causal": False}
    for name, value in (("max_seqlen_q", int(max_q)), ("max_seqlen_k", int(max_k)), ("dropout_p", dropout_p)):
        if _accepts(fn, name):
            kwargs[name] = value
    out = fn(q, k, v, **kwargs)
    return out[0] if isinstance(out, tuple) else out  # (Tq, H, D)


# ----------------------------------------------------------------------------------------------------------------------
# sdpa

# Why a Python loop on CPU. `python -m pretrain.models.attention` times the three strategies round-robin (best of 4)
# on B=32 cells of 200-800 tokens (T=17,721), H=4, D=32, fp32, torch 2.13 CPU, 2 threads. On a shared box with a
# load average of ~6 (absolute times inflated, ratios meaningful):
#   one SDPA call per cell          fwd   477 ms   fwd+bwd  2395 ms
#   one call, block-diagonal mask   fwd  5064 ms   fwd+bwd 14482 ms   (computes, then discards, the (T, T) off-diagonal)
#   nested jagged tensors (NJT)     fwd 10439 ms   fwd+bwd 20258 ms   (CPU NJT SDPA unbinds and runs the math kernel)
# An earlier, quieter run gave 129 / 358 ms (per cell, 3-D inputs), 1910 / 4816 ms (mask), 1218 / 3235 ms (NJT).
# The per-cell loop does only the useful O(sum L_i^2) work, so it wins by ~6-20x. Passing each cell as 4-D
# (1, H, L, D) rather than 3-D reaches the fused CPU flash kernel: 1.7x (fwd) / 1.9x (fwd+bwd) faster than 3-D,
# measured interleaved. Runs of equal-shape sequences share one call: fwd+bwd, 1 thread, H=4, D=16, same load,
# 64 x 50 tokens 44 -> 15 ms, 17 x 200 tokens 41 -> 31 ms, 16 x 512 tokens 210 -> 190 ms (no gain once one sequence
# fills the kernel; in-silico deletion, whose time is in the linear layers, did not change: 54 s either way).


def _sdpa(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale) -> Tensor:
    if q.device.type != "cuda":
        return _sdpa_per_sequence(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale)
    try:
        return _sdpa_nested(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, NotImplementedError, TypeError) as err:  # no silent switch to a (T, T) mask
        msg = (
            f"attention backend 'sdpa' (nested jagged tensors, torch {torch.__version__}) failed on {q.device} "
            f'with {q.dtype}: {type(err).__name__}: {str(err)[:300]}. Set model.attention to "varlen" '
            '(torch >= 2.10, bf16) or "flash" instead.'
        )
        raise RuntimeError(msg) from err


def _jagged(x: Tensor, offsets: Tensor, max_seqlen: int) -> Tensor:
    """(T, H, D) packed -> nested (B, H, j, D) (autograd flows back to x)."""
    # NJT SDPA rejects non-contiguous values (e.g. k, v unbound from a fused (T, 2, H, D) projection) with
    # "No viable backend"; .contiguous() is a no-op for contiguous x.
    x = x.contiguous()
    try:
        nt = torch.nested.nested_tensor_from_jagged(x, offsets, max_seqlen=int(max_seqlen))  # (B, j, H, D)
    except TypeError:  # torch < 2.5 has no max_seqlen argument
        nt = torch.nested.nested_tensor_from_jagged(x, offsets)
    return nt.transpose(1, 2)  # (B, H, j, D)


def _sdpa_nested(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale) -> Tensor:
    off_q = cu_q.to(device=q.device, dtype=torch.int64)
    off_k = cu_k.to(device=q.device, dtype=torch.int64)
    out = F.scaled_dot_product_attention(
        _jagged(q, off_q, max_q), _jagged(k, off_k, max_k), _jagged(v, off_k, max_k), dropout_p=dropout_p, scale=scale
    )  # (B, H, j, D)
    return out.transpose(1, 2).values()  # (Tq, H, D)


def segment_ids(cu_seqlens: Tensor, total: int) -> Tensor:
    """(B+1,) offsets -> (T,) int64 index of the sequence each token belongs to (`total` = T, avoids a sync)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths, output_size=total)


def block_diagonal_mask(cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, total_q: int, total_k: int) -> Tensor:
    """(Tq, Tk) bool, True where query and key belong to the same sequence."""
    seg_q = segment_ids(cu_seqlens_q, total_q)
    seg_k = segment_ids(cu_seqlens_k, total_k)
    return seg_q[:, None] == seg_k[None, :]  # (Tq, Tk)


def _sdpa_block_mask(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale) -> Tensor:
    mask = block_diagonal_mask(cu_q.to(q.device), cu_k.to(q.device), q.shape[0], k.shape[0])  # (Tq, Tk)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),  # (1, H, Tq, D)
        k.transpose(0, 1).unsqueeze(0),  # (1, H, Tk, D)
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        dropout_p=dropout_p,
        scale=scale,
    )  # (1, H, Tq, D)
    return out.squeeze(0).transpose(0, 1)  # (Tq, H, D)


def _sdpa_per_sequence(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale) -> Tensor:
    # Python loop over runs of consecutive sequences of one (Lq, Lk) shape: a run is contiguous in the packed tensors,
    # so it is a free (N, L, H, D) view and one SDPA call (in-silico deletion packs a cell's variants, all one token
    # shorter than the cell; training at max_genes packs many cells of exactly max_genes tokens). The offsets are read
    # once (a device sync when they live on a GPU).
    bounds_q = cu_q.tolist()
    bounds_k = cu_k.tolist()
    _, heads, dim = q.shape
    outs = []
    i, n_seqs = 0, len(bounds_q) - 1
    while i < n_seqs:
        len_q, len_k = bounds_q[i + 1] - bounds_q[i], bounds_k[i + 1] - bounds_k[i]
        j = i + 1
        while j < n_seqs and bounds_q[j + 1] - bounds_q[j] == len_q and bounds_k[j + 1] - bounds_k[j] == len_k:
            j += 1
        # 4-D inputs: the fused CPU kernel only accepts (N, H, L, D); 3-D ones silently take the slower math path.
        qi = q[bounds_q[i] : bounds_q[j]].view(j - i, len_q, heads, dim).transpose(1, 2)  # (N, H, Lq, D)
        ki = k[bounds_k[i] : bounds_k[j]].view(j - i, len_k, heads, dim).transpose(1, 2)  # (N, H, Lk, D)
        vi = v[bounds_k[i] : bounds_k[j]].view(j - i, len_k, heads, dim).transpose(1, 2)
        oi = F.scaled_dot_product_attention(qi, ki, vi, dropout_p=dropout_p, scale=scale)  # (N, H, Lq, D)
        outs.append(oi.transpose(1, 2).reshape((j - i) * len_q, heads, dim))  # (N · Lq, H, D)
        i = j
    if not outs:
        return q.new_empty(q.shape)
    return torch.cat(outs, dim=0)  # (Tq, H, D)


# ----------------------------------------------------------------------------------------------------------------------
# reference


def _reference(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale) -> Tensor:
    mask = block_diagonal_mask(cu_q.to(q.device), cu_k.to(q.device), q.shape[0], k.shape[0])  # (Tq, Tk)
    qf, kf, vf = q.float(), k.float(), v.float()
    scores = torch.einsum("qhd,khd->hqk", qf, kf) * scale  # (H, Tq, Tk)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (H, Tq, Tk)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    out = torch.einsum("hqk,khd->qhd", probs, vf)  # (Tq, H, D)
    return out.to(q.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# padding helpers (padded-vs-packed parity tests and benchmarks)


def pad_packed(x: Tensor, cu_seqlens: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """Packed (T, ...) -> padded (B, max_len, ...) with zeros, and mask (B, max_len) bool (True = real token)."""
    total = x.shape[0]
    n_seq = cu_seqlens.numel() - 1
    cu = cu_seqlens.to(device=x.device, dtype=torch.int64)
    seg = segment_ids(cu, total)  # (T,)
    pos = torch.arange(total, device=x.device) - cu[seg]  # (T,) position inside its sequence
    padded = x.new_zeros((n_seq, int(max_len), *x.shape[1:]))  # (B, L, ...)
    padded[seg, pos] = x
    mask = torch.zeros(n_seq, int(max_len), dtype=torch.bool, device=x.device)  # (B, L)
    mask[seg, pos] = True
    return padded, mask


def unpad(padded: Tensor, mask: Tensor) -> Tensor:
    """Inverse of `pad_packed`: (B, L, ...) and (B, L) bool -> packed (T, ...)."""
    return padded[mask]


def _benchmark_cpu(n_seqs: int = 32, n_heads: int = 4, head_dim: int = 32, repeats: int = 4, seed: int = 0) -> None:
    """Time the CPU SDPA strategies on B cells of 200-800 tokens (the numbers quoted beside `_sdpa`). Strategies
    run round-robin and the best of `repeats` is kept, so load from other processes hits them alike."""
    import time

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(200, 801, (n_seqs,), generator=gen)
    cu = torch.zeros(n_seqs + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    total, max_len = int(cu[-1]), int(lengths.max())
    print(f"T={total} B={n_seqs} H={n_heads} D={head_dim} threads={torch.get_num_threads()} torch={torch.__version__}")
    strategies = {"per_sequence": _sdpa_per_sequence, "nested": _sdpa_nested, "block_mask": _sdpa_block_mask}
    for backward in (False, True):
        best = dict.fromkeys(strategies, float("inf"))
        for _ in range(repeats):
            for name, fn in strategies.items():
                qkv = [torch.randn(total, n_heads, head_dim, generator=gen, requires_grad=backward) for _ in range(3)]
                start = time.perf_counter()
                out = fn(*qkv, cu, cu, max_len, max_len, 0.0, head_dim**-0.5)
                if backward:
                    out.sum().backward()
                best[name] = min(best[name], time.perf_counter() - start)
        for name, seconds in best.items():
            print(f"{name:13s} {'fwd+bwd' if backward else 'fwd':7s} {1e3 * seconds:8.1f} ms")


if __name__ == "__main__":
    _benchmark_cpu()
