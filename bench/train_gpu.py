"""`scgrn bench train gpu`: training throughput and MFU of the base configs on one GPU, per attention backend.

For each model config (default `scbert-base`, `exceiver-base` from launch/configs/pretrain/) and each attention
backend that can run here (`varlen`: torch's fused kernel; `flash`: flash-attn 2/4; `sdpa`: nested jagged tensors;
`padded-sdpa`: every cell padded to the batch's longest, as a padded implementation computes, scBERT only), the
same real cells (the h5ad files of ``--counts``, sharded once) are trained on for ``--warmup`` + ``--steps`` steps:
through the DeepSpeed engine `scgrn pretrain` runs (``--path deepspeed``: bf16 weights, the config's ZeRO stage,
torch AdamW, clipping) or plain torch (``--path autocast``: bf16 autocast, fused AdamW). Timed with the device
synchronised at both ends of the timed steps only (no sync inside a step from the bench itself).

Printed per run: real tokens/s (after `max_genes`; pads never count), cells/s, model TFLOP/s and MFU from the
model's own FLOP formula (`flops(lengths)`: 6 N ΣL + 12 n_layers d ΣL² for scBERT, per cell for the Exceiver),
peak memory; and the ratio of each backend's tokens/s to padded SDPA's on the same cells.
Peak bf16 dense TFLOP/s: from ``--peak-tflops`` or the device name (H100/H200 SXM 989, A100 312).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.train_bench import COUNTS, cell_lengths, load_batches, pad_prepared, prepare_corpus

CONFIGS = Path(__file__).resolve().parents[1] / "launch" / "configs" / "pretrain"
BACKENDS = ("varlen", "flash", "sdpa", "padded-sdpa")
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, SXM where it matters


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def build(config_name: str, backend: str, device: torch.device, overrides: dict) -> tuple[torch.nn.Module, str]:
    from pretrain.model_factory import build_model, model_config

    cfg = yaml.safe_load((CONFIGS / f"{config_name}.yaml").read_text())
    vocab = overrides.pop("_vocab")
    fields = {**cfg["model"], **overrides, "attention": "sdpa" if backend == "padded-sdpa" else backend}
    fields["activation_checkpointing"] = False  # throughput of the step itself; the base configs fit without it
    torch.manual_seed(0)
    model = build_model(cfg["family"], model_config(cfg["family"], fields, vocab_size=vocab))
    return model.to(device), cfg["family"]


def _stepper(model, path: str, config_name: str, batch_cells: int, device):
    """One training step on prepared device inputs -> its loss (a device tensor).

    ``deepspeed``: what `scgrn pretrain` runs: the DeepSpeed engine with the config's ZeRO stage, bf16 weights on a
    GPU (fp32 on CPU), torch AdamW, gradient clipping, and the step settings of `pretrain.parallel.step_settings`.
    ``autocast``: plain torch, bf16 autocast over fp32 weights and fused AdamW (the lower bound of framework cost)."""
    if path == "autocast":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

        def step(inputs):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model(inputs)
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return out["loss"]

        return step
    from pretrain.config import PretrainConfig
    from pretrain.parallel import engine as dist

    precision = "bf16" if device.type == "cuda" else "fp32"
    overrides = [f"train.precision={precision}", f"data.micro_batch_cells={batch_cells}", "train.grad_accum=1",
                 "train.warmup_steps=0", "train.lr=1e-4", "parallel.train_batch_size=0"]  # fmt: skip
    cfg = PretrainConfig.load(CONFIGS / f"{config_name}.yaml", overrides)
    dist.init_distributed()  # one process; a no-op after the first run
    engine = dist.create_engine(model, cfg, dist.build_ds_config(cfg, world_size=1))

    def step(inputs):
        loss = engine(inputs)["loss"]
        engine.backward(loss)
        engine.step()
        return loss

    return step


def run_one(model, family: str, backend: str, batches: list[tuple], warmup: int, steps: int, device,
            step=None) -> dict:  # fmt: skip
    """Train `model` on `batches` ((raw host tensors, cell lengths)); time the last `steps` steps.

    As in the trainer, each batch is prepared on the host first (gene sampling, binning, masking: the loader's
    workers do this off the step), pinned, and each step copies it asynchronously, then runs `step` (forward,
    backward, optimizer; `_stepper`'s autocast step by default); `padded-sdpa` pads the prepared cells to the
    batch's longest on the host too."""
    prepare = model.batch_preparer()
    host = []
    for i, (raw, lengths) in enumerate(batches):
        prepared = prepare(raw, torch.Generator().manual_seed(i))
        if backend == "padded-sdpa":
            prepared = pad_prepared(prepared, int(prepared["max_seqlen"]))
        if device.type == "cuda":
            prepared = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in prepared.items()}
        host.append((prepared, lengths))
    n_params = model.num_parameters(exclude_embeddings=True)  # before ZeRO partitions anything
    step = step or _stepper(model, "autocast", "", 0, device)
    tokens = cells = 0
    flops = 0.0
    losses = []
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
        prepared, lengths = host[i % len(host)]
        inputs = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in prepared.items()}
        loss = step(inputs)
        if i >= warmup:
            kept = np.minimum(lengths, model.config.max_genes)
            tokens += int(kept.sum())
            cells += len(lengths)
            flops += model.flops(lengths, n_params)
            losses.append(loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "family": family,
        "backend": backend,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cells_per_s": cells / seconds,
        "tflops": flops / seconds / 1e12,
        "peak_memory_gib": memory,
        "final_loss": float(torch.stack(losses).float().mean()),
        "n_params": n_params,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scgrn bench train gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", type=Path, default=COUNTS, help="directory of count .h5ad files")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/scgrn-bench/train-gpu"))
    p.add_argument("--configs", default="scbert-base,exceiver-base", help="names under launch/configs/pretrain/")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {BACKENDS}; unrunnable ones skipped")
    p.add_argument("--batch-cells", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak bf16 TFLOP/s (default: by name)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", action="append", default=[], help="model override KEY=VALUE (e.g. d_model=64)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--path",
        choices=("deepspeed", "autocast"),
        default="deepspeed",
        help="deepspeed: the engine `scgrn pretrain` runs (bf16 weights, ZeRO of the config); autocast: plain torch",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    overrides = {}
    for item in args.model:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    corpus = prepare_corpus(args.counts, args.workdir)
    from data_prep.corpus import Corpus

    vocab = Corpus(corpus).manifest["vocab"]["size"]
    raw = load_batches(corpus, args.batch_cells, max(1, min(args.steps + args.warmup, 8)))
    batches = [(b, cell_lengths(b["cu_seqlens"]).numpy()) for b in raw]  # host tensors: prepared in run_one
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name}  torch {torch.__version__}  peak bf16 {peak} TFLOP/s  batch {args.batch_cells} cells")
    results = []
    for config_name in args.configs.split(","):
        for backend in args.backends.split(","):
            model, family = build(config_name, backend, device, {**copy.deepcopy(overrides), "_vocab": vocab})
            if backend == "padded-sdpa" and family != "scbert":
                continue
            if backend in ("varlen", "flash"):
                from pretrain.models.attention import resolve_backend

                try:
                    resolve_backend(backend, device, torch.bfloat16)
                except ValueError as err:
                    print(f"{config_name:14s} {backend:12s} skipped: {err}")
                    continue
            from pretrain.models.common import resolve_attention

            resolve_attention(model, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
            step = _stepper(model, args.path, config_name, args.batch_cells, device)
            timed = run_one(model, family, backend, batches, args.warmup, args.steps, device, step=step)
            result = {"config": config_name, "path": args.path, **timed}
            result["mfu"] = result["tflops"] / peak if peak else None
            results.append(result)
            mfu = f"{100 * result['mfu']:.1f} %" if result["mfu"] is not None else "n/a"
            print(
                f"{config_name:14s} {backend:12s} {result['tokens_per_s']:>12,.0f} tok/s {result['cells_per_s']:>9,.1f}"
                f" cells/s {result['tflops']:8.1f} TFLOP/s  MFU {mfu:>7s}  {result['peak_memory_gib']:.1f} GiB"
            )
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for config_name in args.configs.split(","):
        padded = next((r for r in results if r["config"] == config_name and r["backend"] == "padded-sdpa"), None)
        if padded:
            for r in results:
                if r["config"] == config_name and r["backend"] != "padded-sdpa":
                    ratio = r["tokens_per_s"] / padded["tokens_per_s"]
                    print(
                        f"{config_name}: {r['backend']} / padded-sdpa tokens/s = {ratio:.2f}x (goal >= 2x for varlen)"
                    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": name,
                    "peak_tflops": peak,
                    "args": vars(args)
                    | {"counts": str(args.counts), "workdir": str(args.workdir), "json": str(args.json)},
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )
    return 0
