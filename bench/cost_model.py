"""`scgrn bench train model --config C [--gpu H100]`: what one training step of a config should cost on a GPU.

A roofline estimate, per part of the step, from the model's own shapes and real cell lengths (the expressed genes
per cell of ``--counts``, cut to ``max_genes``; ``--micro-batch-cells`` cells per step, the config's by default):

    linear        matmul FLOPs of every weight (6 N per token; the model's `flops()` minus attention)
                  at GEMM_EFFICIENCY of the GPU's dense bf16 peak
    attention     QKᵀ and AV FLOPs (12 · layers · d · ΣL² for scBERT; the Exceiver's cross- and latent attention)
                  at ATTENTION_EFFICIENCY[head dim] of peak: torch's varlen kernel is FlashAttention-2
    memory-bound  bytes of the element-wise work (LayerNorm, GELU, residual adds, bias gradients, the gradient of
                  q/k/v into the fused projection, embeddings, loss) in bf16, at MEMORY_EFFICIENCY of bandwidth
    optimizer     DeepSpeed's bf16 step: fp32 master weights, Adam moments, gradients, the bf16 copy back
                  (BYTES_PER_PARAMETER per parameter) at MEMORY_EFFICIENCY of bandwidth

The parts are added (no overlap assumed), and the predicted MFU is the trainer's: model FLOPs (`model.flops`, the
same count `scgrn pretrain` logs) / (step time × peak). The efficiencies are assumptions, not measurements made
here; the device check (`bench/gpu/check.sh`) prints this prediction beside the measured MFU so they can be
corrected. A step that is launch-bound (too many small kernels for the host to queue) is slower than this.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "launch" / "configs" / "pretrain"
COUNTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "counts"


@dataclass(frozen=True)
class Gpu:
    peak_bf16: float  # dense bf16 FLOP/s (no sparsity)
    bandwidth: float  # HBM bytes/s


# Vendor datasheets, SXM parts: H100 989 TFLOP/s dense bf16 and 3.35 TB/s HBM3; H200 the same compute and 4.8 TB/s
# HBM3e; A100 80 GB 312 TFLOP/s and 2.039 TB/s.
GPUS = {"H100": Gpu(989e12, 3.35e12), "H200": Gpu(989e12, 4.8e12), "A100": Gpu(312e12, 2.039e12)}
GEMM_EFFICIENCY = 0.70  # cuBLAS bf16 GEMMs with K = 512-2048 (assumed)
# FlashAttention-2 forward + backward, short non-causal sequences (hundreds to ~2,000 tokens), as a fraction of peak
# (assumed, from the FA2-on-H100 baselines in the FlashAttention-3 paper, discounted for short sequences)
ATTENTION_EFFICIENCY = {32: 0.18, 64: 0.28, 128: 0.38, 256: 0.38}
MEMORY_EFFICIENCY = 0.75  # fraction of HBM bandwidth reached by element-wise kernels (assumed)
BYTES_PER_PARAMETER = 40  # fp32 master r/w 8, m r/w 8, v r/w 8, fp32 grad read 4, bf16 -> fp32 grad copy 6,
#                           bf16 weight written back 2, gradient-norm read 4
BF16 = 2
HOST_SECONDS_PER_OP = 6e-6  # PyTorch eager dispatch + kernel launch per aten op on the host (assumed)
OPTIMIZER_OPS = 30  # fused AdamW, DeepSpeed's gradient norm, clip and bf16 copy-back: a few dozen launches


def cell_lengths(counts: Path, max_cells: int = 4000) -> np.ndarray:
    """Expressed genes per cell of every .h5ad under `counts` (up to `max_cells` cells per file)."""
    import anndata as ad
    import scipy.sparse as sp

    files = sorted(counts.glob("*.h5ad"))
    if not files:
        msg = f"--counts {counts}: no .h5ad files; give a directory of count matrices (e.g. ../shared/data/counts)"
        raise ValueError(msg)
    lengths = []
    for path in files:
        adata = ad.read_h5ad(path, backed="r")
        x = adata.X[: min(max_cells, adata.n_obs)]
        lengths.append(np.asarray(x.getnnz(axis=1) if sp.issparse(x) else (np.asarray(x) != 0).sum(axis=1)))
        adata.file.close()
    return np.concatenate(lengths)


def _scbert_parts(cfg: dict, kept: np.ndarray) -> dict:
    d, f, layers, bins = cfg["d_model"], cfg["d_ff"], cfg["n_layers"], cfg["n_bins"]
    tokens, squares = float(kept.sum()), float(np.square(kept).sum())
    attention = 12.0 * layers * d * squares
    # elements moved per token and layer, forward + backward: two LayerNorms (6d each: read x, write y; backward
    # reads x, y's gradient and writes x's), two residual adds (6d each with their gradients), GELU on d_ff (5f),
    # bias gradients of qkv, out, fc_in, fc_out (reduce 5d + f), and the q/k/v gradients stacked into the fused
    # projection's (6d); per token once: two embedding gathers and their scatter-add (6d), the final LayerNorm (6d)
    # and the loss over the bins (4 n_bins)
    per_token = layers * (6 * d + 6 * d + 12 * d + 5 * f + 5 * d + f + 6 * d) + 12 * d + 4 * bins
    return {"attention": attention, "memory_bytes": BF16 * per_token * tokens}


def _exceiver_parts(cfg: dict, kept: np.ndarray) -> dict:
    d, f, lat, layers = cfg["d_model"], cfg["d_ff"], cfg["n_latents"], cfg["n_self_layers"]
    mask = cfg.get("mask_prob", 0.15)
    m = mask * kept
    inputs = kept - m
    cells = len(kept)
    attention = 3.0 * float((4 * lat * inputs * d + layers * 4 * lat * lat * d + 4 * m * lat * d).sum())
    # elements per token, forward + backward: gene inputs (embeddings 6d, LayerNorm of keys 6d); each latent, per
    # self layer and in the encoder block (two LayerNorms, two residual adds, GELU, bias gradients, fused q/k/v);
    # each masked gene in the decoder (LayerNorm, residual, MLP, head, likelihood)
    per_latent_layer = 6 * d + 6 * d + 12 * d + 5 * f + 5 * d + f + 6 * d
    elements = 12 * d * inputs.sum() + (layers + 1) * per_latent_layer * lat * cells + (18 * d + 6 * f) * m.sum()
    return {"attention": attention, "memory_bytes": BF16 * float(elements)}


def count_ops(family: str, fields: dict) -> int:
    """aten ops of one eager forward + backward (each one a kernel the host must queue): counted on CPU on a
    narrow copy of the model with the same layers (the count does not depend on the width) and the `reference`
    attention (a few ops more than one fused varlen call; an upper bound for the attention part)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from pretrain.model_factory import build_model, model_config

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    narrow = {**fields, "d_model": 32, "n_heads": 2, "d_ff": 64, "attention": "reference", "compile": False}
    narrow["activation_checkpointing"] = False
    torch.manual_seed(0)
    model = build_model(family, model_config(family, narrow, vocab_size=64))
    gen = torch.Generator().manual_seed(0)
    lengths = [20, 12, 30, 7]
    gene_ids = torch.cat([torch.randperm(60, generator=gen)[:n].sort().values + 4 for n in lengths])
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    raw = {"cu_seqlens": cu, "gene_ids": gene_ids, "values": torch.randint(1, 50, (sum(lengths),)).float()}
    prepared = model.batch_preparer()(raw, gen)
    with Count():
        model(prepared)["loss"].backward()
    return Count.n


def predict(config_name: str, gpu_name: str, lengths: np.ndarray, micro_batch_cells: int | None = None,
            vocab_size: int = 30_000) -> dict:  # fmt: skip
    """The per-part cost of one micro batch of `micro_batch_cells` average cells (the mean over `lengths` scaled to
    that many cells, so the figure does not depend on which cells a sample drew)."""
    from pretrain.model_factory import build_model, model_config

    if gpu_name not in GPUS:
        msg = f"--gpu {gpu_name!r}: no peak FLOP/s and bandwidth for it; allowed: {sorted(GPUS)}"
        raise ValueError(msg)
    gpu = GPUS[gpu_name]
    path = CONFIGS / f"{config_name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        msg = f"--config {config_name!r}: no {path}; allowed: {known}"
        raise ValueError(msg)
    raw = yaml.safe_load(path.read_text())
    family, fields = raw["family"], dict(raw["model"])
    model = build_model(family, model_config(family, fields, vocab_size=vocab_size))
    cfg = {k: getattr(model.config, k) for k in vars(model.config)}
    head_dim = cfg["d_model"] // cfg["n_heads"]
    if head_dim not in ATTENTION_EFFICIENCY:
        allowed = sorted(ATTENTION_EFFICIENCY)
        msg = f"model.d_model / model.n_heads = {head_dim}: no attention efficiency for it; allowed {allowed}"
        raise ValueError(msg)
    cells = micro_batch_cells or raw.get("data", {}).get("micro_batch_cells", 64)
    kept_all = np.minimum(lengths.astype(np.float64), cfg["max_genes"])
    kept_all = kept_all[kept_all > 0]
    # `cells` cells of the average length and the average squared length: tokens and ΣL² scale exactly
    scale = cells / len(kept_all)
    n_nonemb = model.num_parameters(exclude_embeddings=True)
    n_total = sum(p.numel() for p in model.parameters())
    total_flops = model.flops(kept_all, n_nonemb) * scale
    parts = (_scbert_parts if family == "scbert" else _exceiver_parts)(cfg, kept_all)
    attention = parts["attention"] * scale
    linear = total_flops - attention
    memory_bytes = parts["memory_bytes"] * scale
    optimizer_bytes = BYTES_PER_PARAMETER * n_total
    att_eff = ATTENTION_EFFICIENCY[head_dim]
    rows = {
        "linear": {"flops": linear, "bytes": None, "rate": f"{GEMM_EFFICIENCY:.0%} of peak",
                   "seconds": linear / (GEMM_EFFICIENCY * gpu.peak_bf16)},
        "attention": {"flops": attention, "bytes": None, "rate": f"{att_eff:.0%} of peak (FA2, head dim {head_dim})",
                      "seconds": attention / (att_eff * gpu.peak_bf16)},
        "memory-bound": {"flops": None, "bytes": memory_bytes, "rate": f"{MEMORY_EFFICIENCY:.0%} of bandwidth",
                         "seconds": memory_bytes / (MEMORY_EFFICIENCY * gpu.bandwidth)},
        "optimizer": {"flops": None, "bytes": optimizer_bytes, "rate": f"{MEMORY_EFFICIENCY:.0%} of bandwidth",
                      "seconds": optimizer_bytes / (MEMORY_EFFICIENCY * gpu.bandwidth)},
    }  # fmt: skip
    device = sum(r["seconds"] for r in rows.values())
    ops = count_ops(family, fields) + OPTIMIZER_OPS
    host = ops * HOST_SECONDS_PER_OP
    step = max(device, host)  # the host queues kernels ahead of the device unless it is the slower of the two
    return {
        "config": config_name,
        "family": family,
        "gpu": gpu_name,
        "micro_batch_cells": cells,
        "tokens": float(kept_all.sum() * scale),
        "mean_genes": float(kept_all.mean()),
        "params": n_total,
        "params_non_embedding": n_nonemb,
        "model_flops": total_flops,
        "parts": rows,
        "device_seconds": device,
        "host_ops": ops,
        "host_seconds": host,
        "step_seconds": step,
        "predicted_mfu": total_flops / (step * gpu.peak_bf16),
        "peak_at_100_percent_seconds": total_flops / gpu.peak_bf16,
    }


def render(result: dict) -> str:
    lines = [
        f"{result['config']} ({result['family']}, {result['params'] / 1e6:.1f} M parameters) on {result['gpu']}: "
        f"{result['micro_batch_cells']} cells/step, {result['tokens']:,.0f} tokens (mean {result['mean_genes']:.0f} "
        f"genes/cell after max_genes), {result['model_flops'] / 1e12:.2f} model TFLOP/step "
        f"({1e3 * result['peak_at_100_percent_seconds']:.1f} ms at peak)",
        f"  {'part':13s} {'TFLOP':>8s} {'GB':>8s}  {'assumed rate':38s} {'ms':>8s} {'share':>6s}",
    ]
    for name, row in result["parts"].items():
        flops = f"{row['flops'] / 1e12:8.2f}" if row["flops"] is not None else f"{'':8s}"
        size = f"{row['bytes'] / 1e9:8.2f}" if row["bytes"] is not None else f"{'':8s}"
        share = row["seconds"] / result["step_seconds"]
        lines.append(f"  {name:13s} {flops} {size}  {row['rate']:38s} {1e3 * row['seconds']:8.1f} {share:6.0%}")
    host = f"{result['host_ops']} ops x {HOST_SECONDS_PER_OP * 1e6:.0f} us (launch floor)"
    lines.append(f"  {'host':13s} {'':8s} {'':8s}  {host:38s} {1e3 * result['host_seconds']:8.1f}")
    bound = "device-bound" if result["device_seconds"] >= result["host_seconds"] else "HOST-BOUND: launches"
    lines.append(
        f"  {'step':13s} {'':8s} {'':8s}  {bound:38s} {1e3 * result['step_seconds']:8.1f}   predicted MFU "
        f"{result['predicted_mfu']:.1%} (predicted, not measured)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scgrn bench train model", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="scbert-base,exceiver-base", help="names under launch/configs/pretrain/")
    p.add_argument("--gpu", default="H100", help=f"one of {sorted(GPUS)}")
    p.add_argument("--counts", type=Path, default=COUNTS, help="directory of count .h5ad files (cell lengths)")
    p.add_argument("--micro-batch-cells", type=int, default=None, help="default: the config's data.micro_batch_cells")
    p.add_argument("--vocab-size", type=int, default=30_000, help="gene vocabulary (embedding rows; optimizer bytes)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    results = []
    try:
        lengths = cell_lengths(args.counts)
        for name in [c for c in args.config.split(",") if c]:
            results.append(predict(name, args.gpu, lengths, args.micro_batch_cells, args.vocab_size))
            print(render(results[-1]))
    except ValueError as err:
        print(f"scgrn bench train model: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        from data_prep.io_utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
