"""`scgrn bench train`: training-side benchmarks on CPU.

``scgrn bench train packing`` — packed vs padded training throughput, same model, same real cells.
    Cells: the h5ad files of ``--counts`` (default ../shared/data/counts), sharded once into ``--workdir`` and
    streamed as batches of ``--batch-cells`` cells (``StreamingCellDataset(split="all")``, shuffled, seeded). Model:
    a scBERT-family model (`pretrain.models.scbert.ScBert`), fp32, forward + backward + AdamW step, ``--threads``
    torch threads. Every step of every variant starts from the same raw cells and the same generator state, so the
    genes kept (``max_genes`` sampling), their bins and the masked targets are identical across variants.

    - ``packed``: the model's normal path. Cells are concatenated, ``cu_seqlens`` marks them, no pad token exists;
      attention costs sum_i L_i^2.
    - ``padded-to-batch-max``: HF-style dynamic padding. The prepared cells (after sampling, binning and masking,
      `ScBert.prepare_batch`) are padded with pad tokens (gene id 0 = <pad>, bin 0, label -100 = never a target)
      to the batch's longest cell L_max, and fed back as a packed batch whose cells all have length L_max, so the
      model computes B x L_max tokens and B x L_max^2 attention, as a padded implementation does. Pads are not
      masked out of attention (a padded implementation would add a key-padding mask, which costs extra), so this
      is, if anything, generous to padding.
    - ``padded-to-max-genes``: the same, padded to the fixed length ``max_genes`` (like scBERT's fixed gene set).

    Only real (non-pad) tokens count in tokens/s, in every variant. ``--warmup`` steps, then ``--steps`` timed
    steps; the variants run interleaved step by step (order rotated each round) so background load on a shared
    machine hits them alike. The timed step covers prepare/pad + forward + backward + optimizer step; batches are
    read before timing. Also printed: the model FLOP ratio (6 N per computed token + 12 n_layers d_model L per
    token, `ScBert.flops_per_token`'s formula), the speedup that compute alone would predict.

``scgrn bench train gpu`` — tokens/s, cells/s and MFU of the base configs per attention backend on one GPU; see
    `bench.train_gpu`.

``scgrn bench train zero`` — per-rank parameter / gradient / optimizer-state bytes under ZeRO 0-3 with 2 real gloo
    ranks; see `bench.zero_memory`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from pretrain.models.attention import pad_packed
from pretrain.models.scbert import IGNORE_INDEX, ScBert, ScBertConfig

COUNTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "counts"
PACKING_GOAL = 3.0  # packed / padded-to-batch-max tokens/s on CPU
PAD_ID = 0  # data_prep's vocab: <pad> = 0
VARIANTS = ("packed", "padded-to-batch-max", "padded-to-max-genes")


# ----------------------------------------------------------------------------------------------------------------------
# batches


def prepare_corpus(counts_dir: Path, workdir: Path) -> Path:
    """Shard every ``*.h5ad`` of `counts_dir` once into `workdir` (zarr, no validation split); reuse it after."""
    inputs = sorted(Path(counts_dir).glob("*.h5ad"))
    if not inputs:
        msg = f"no .h5ad files in {counts_dir}; pass --counts DIR (a directory of count h5ad files)."
        raise SystemExit(msg)
    from data_prep.config import ShardConfig
    from data_prep.manifest import CORPUS_FORMAT_VERSION
    from data_prep.sharder import shard

    out = Path(workdir) / f"corpus_{Path(counts_dir).name}"
    manifest = out / "manifest.json"
    current = manifest.exists() and json.loads(manifest.read_text()).get("format_version") == CORPUS_FORMAT_VERSION
    if not current:  # absent, or written by an older scgrn (re-sharded so the bench sees today's format)
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        shard(ShardConfig(inputs=inputs, out=out, format="zarr", workers=2, val_fraction=0.0), progress=False)
        print(f"sharded {len(inputs)} file(s) in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def load_batches(corpus_dir: Path, batch_cells: int, n_batches: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """The first `n_batches` full batches of a shuffled epoch over all cells, as packed tensors (`to_torch`)."""
    from data_prep.loader import StreamingCellDataset

    ds = StreamingCellDataset(
        corpus_dir, split="all", seed=seed, batch_size=batch_cells, drop_last=True, obs_columns=[], prefetch=False
    )
    batches = []
    for batch in ds:
        batches.append(batch.to_torch())
        if len(batches) == n_batches:
            return batches
    msg = f"{corpus_dir} holds {len(batches)} full batches of {batch_cells} cells; {n_batches} are needed."
    raise SystemExit(msg)


def cell_lengths(cu_seqlens: Tensor) -> Tensor:
    """(B+1,) offsets -> (B,) int64 lengths."""
    return (cu_seqlens[1:] - cu_seqlens[:-1]).long()


def pad_prepared(prepared: dict[str, Tensor], length: int) -> dict[str, Tensor]:
    """Prepared packed cells (`ScBert.prepare_batch` output) -> the same cells each padded to `length` tokens.

    Pads get gene id 0 (<pad>), bin 0 and label IGNORE_INDEX (never a prediction target). The result is again a
    packed batch (every cell `length` long, cu_seqlens = 0, L, 2L, ...) that `ScBert.forward` takes as prepared
    inputs, so the model sees B x length tokens exactly as a padded implementation would.
    """
    cu = prepared["cu_seqlens"]
    n_cells = cu.numel() - 1
    longest = int(cell_lengths(cu).max()) if n_cells else 0
    if length < longest:
        msg = f"pad length {length} is shorter than the longest cell ({longest} tokens)"
        raise ValueError(msg)
    gene_ids, real = pad_packed(prepared["gene_ids"], cu, length)  # (B, L), (B, L) bool
    bins, _ = pad_packed(prepared["input_bins"], cu, length)  # (B, L)
    labels, _ = pad_packed(prepared["labels"], cu, length)
    labels = labels.masked_fill(~real, IGNORE_INDEX)
    gene_ids = gene_ids.masked_fill(~real, PAD_ID)
    return {
        "cu_seqlens": torch.arange(n_cells + 1, dtype=torch.int32) * length,  # (B+1,)
        "gene_ids": gene_ids.reshape(-1),  # (B*L,)
        "input_bins": bins.reshape(-1),
        "labels": labels.reshape(-1),
        "max_seqlen": length,  # host int: no device read of the longest cell
    }


# ----------------------------------------------------------------------------------------------------------------------
# timing


@dataclass
class VariantResult:
    name: str
    seconds: float = 0.0
    real_tokens: int = 0  # tokens of the cells themselves (after max_genes sampling), what tokens/s counts
    computed_tokens: int = 0  # tokens the model ran on, pads included
    attention_pairs: int = 0  # sum over cells of (computed length)^2
    step_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def pad_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.computed_tokens if self.computed_tokens else 0.0


def _inputs(variant: str, model: ScBert, raw: dict[str, Tensor], gen: torch.Generator) -> tuple[dict, int, int, int]:
    """Model inputs for one step, and (real tokens, computed tokens, attention pairs) they hold."""
    if variant == "packed":  # the model samples, bins and masks inside forward (its normal path)
        return raw, -1, -1, -1
    prepared = model.prepare_batch(raw, gen)
    lengths = cell_lengths(prepared["cu_seqlens"])
    length = int(lengths.max()) if variant == "padded-to-batch-max" else model.config.max_genes
    padded = pad_prepared(prepared, length)
    return padded, int(lengths.sum()), int(padded["gene_ids"].numel()), int(lengths.numel()) * length**2


def _step(model: ScBert, optimizer: torch.optim.Optimizer, inputs: dict, gen: torch.Generator) -> dict:
    out = model(inputs, gen)
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def run_packing(
    batches: list[dict[str, Tensor]],
    config: ScBertConfig,
    *,
    steps: int,
    warmup: int = 2,
    variants: tuple[str, ...] = VARIANTS,
    seed: int = 0,
    lr: float = 1e-4,
) -> dict[str, VariantResult]:
    """Train one copy of the same initial model per variant on the same batches; time steps after `warmup`.

    Needs ``warmup + steps`` batches. Returns {variant: VariantResult} (only the timed steps are counted).
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        msg = f"unknown variant(s) {unknown}; allowed: {VARIANTS}"
        raise ValueError(msg)
    if len(batches) < warmup + steps:
        msg = f"{len(batches)} batches given, warmup + steps = {warmup + steps} needed"
        raise ValueError(msg)
    torch.manual_seed(seed)
    base = ScBert(config)
    models = {v: copy.deepcopy(base) for v in variants}
    optimizers = {v: torch.optim.AdamW(models[v].parameters(), lr=lr) for v in variants}
    for m in models.values():
        m.train()
    results = {v: VariantResult(v) for v in variants}
    for i, raw in enumerate(batches[: warmup + steps]):
        order = variants[i % len(variants) :] + variants[: i % len(variants)]  # rotate who goes first
        for v in order:
            gen = torch.Generator().manual_seed(seed * 100_003 + i)  # same sampling and masks in every variant
            t0 = time.perf_counter()
            inputs, real, computed, pairs = _inputs(v, models[v], raw, gen)
            out = _step(models[v], optimizers[v], inputs, gen)
            seconds = time.perf_counter() - t0
            if v == "packed":
                lengths = cell_lengths(out["cu_seqlens"])
                real = computed = int(lengths.sum())
                pairs = int((lengths**2).sum())
            if i < warmup:
                continue
            r = results[v]
            r.seconds += seconds
            r.step_seconds.append(seconds)
            r.real_tokens += real
            r.computed_tokens += computed
            r.attention_pairs += pairs
            r.losses.append(float(out["loss"].detach()))
    counts = {v: r.real_tokens for v, r in results.items()}
    if len(set(counts.values())) > 1:  # the variants must have trained on exactly the same cells
        msg = f"variants saw different real-token counts: {counts}"
        raise RuntimeError(msg)
    return results


def model_flops(config: ScBertConfig, result: VariantResult, n_matmul_params: int) -> float:
    """Training FLOPs of the timed steps (`ScBert.flops_per_token`'s formula summed over tokens): 6 N per computed
    token (N = non-embedding parameters) + 12 n_layers d_model per attention pair (query, key in one cell)."""
    return (
        6.0 * n_matmul_params * result.computed_tokens
        + 12.0 * config.n_layers * config.d_model * result.attention_pairs
    )


def packing_report(results: dict[str, VariantResult], config: ScBertConfig, meta: dict) -> str:
    c = config
    lines = [
        f"packing benchmark: {meta['source']}",
        f"  {meta['batch_cells']} cells/batch, {meta['steps']} timed steps after {meta['warmup']} warm-up, "
        f"scBERT d_model {c.d_model} x {c.n_layers} layers x {c.n_heads} heads, d_ff {c.d_ff}, n_bins {c.n_bins}, "
        f"max_genes {c.max_genes}, vocab {c.vocab_size}, fp32, forward + backward + AdamW",
        f"  torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, load average {meta['load_before']} (before) / "
        f"{meta['load_after']} (after)",
    ]
    any_r = next(iter(results.values()))
    lines.append(
        f"  real tokens per step: {any_r.real_tokens / meta['steps']:,.0f} "
        f"(cells' expressed genes after max_genes sampling)\n"
    )
    lines.append(
        f"  {'variant':22s} {'tokens/s':>10s} {'mean s/step':>12s} {'median':>8s} {'computed tok/step':>18s} "
        f"{'pad':>6s}"
    )
    for r in results.values():
        lines.append(
            f"  {r.name:22s} {r.tokens_per_s:>10,.0f} {r.seconds / len(r.step_seconds):>12.3f} "
            f"{statistics.median(r.step_seconds):>8.3f} {r.computed_tokens / len(r.step_seconds):>18,.0f} "
            f"{100 * r.pad_fraction:>5.1f}%"
        )
    packed = results.get("packed")
    n_matmul = ScBert(c).num_parameters(exclude_embeddings=True)
    flops = {v: model_flops(c, r, n_matmul) for v, r in results.items()}
    lines.append("")
    for name in ("padded-to-batch-max", "padded-to-max-genes"):
        if packed and name in results:
            ratio = packed.tokens_per_s / results[name].tokens_per_s
            lines.append(
                f"  packed / {name}: {ratio:.1f}x   (model-FLOP ratio {name} / packed: "
                f"{flops[name] / flops['packed']:.2f}x)"
            )
    if packed and "padded-to-batch-max" in results:
        ratio = packed.tokens_per_s / results["padded-to-batch-max"].tokens_per_s
        verdict = "met" if ratio >= PACKING_GOAL else "MISSED"
        lines.append(
            f"\ngoals:\n  [{verdict}] packed / padded-to-batch-max = {ratio:.2f}x (goal >= {PACKING_GOAL:g}x on CPU)"
        )
        bound = flops["padded-to-batch-max"] / flops["packed"]
        if bound < PACKING_GOAL:
            lines.append(
                f"  note: padding to the batch maximum adds {results['padded-to-batch-max'].pad_fraction:.1%} tokens "
                f"on these cells (max_genes {c.max_genes}); by model FLOPs packing can gain at most {bound:.2f}x"
            )
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def packing_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scgrn bench train packing", description="packed vs padded tokens/s")
    p.add_argument("--counts", type=Path, default=COUNTS, help="directory of count .h5ad files")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/scgrn-bench/train"))
    p.add_argument("--batch-cells", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=None, help="default 4 x d_model")
    p.add_argument("--n-bins", type=int, default=51)
    p.add_argument("--max-genes", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(args.counts, args.workdir)
    from data_prep.corpus import Corpus

    vocab_size = int(Corpus(corpus).manifest["vocab"]["size"])
    batches = load_batches(corpus, args.batch_cells, args.warmup + args.steps, args.seed)
    config = ScBertConfig(
        vocab_size=vocab_size,
        n_bins=args.n_bins,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        d_ff=args.d_ff or 4 * args.d_model,
        max_genes=args.max_genes,
        attention="sdpa",
    )
    load_before = _load()
    variants = tuple(v for v in args.variants.split(",") if v)
    results = run_packing(
        batches, config, steps=args.steps, warmup=args.warmup, variants=variants, seed=args.seed, lr=args.lr
    )
    meta = {
        "source": f"{corpus} ({Corpus(corpus).n_cells:,} cells from {args.counts})",
        "batch_cells": args.batch_cells,
        "steps": args.steps,
        "warmup": args.warmup,
        "load_before": load_before,
        "load_after": _load(),
    }
    text = packing_report(results, config, meta)
    print(text)
    if args.json:
        payload = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "model": asdict(config),
            "meta": meta,
            "results": {v: {**asdict(r), "tokens_per_s": r.tokens_per_s} for v, r in results.items()},
            "report": text,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`scgrn bench train {packing,zero,gpu,model} [options]`."""
    argv = list(argv or [])
    benches = {"packing": packing_main, "zero": None, "gpu": None, "model": None}
    if not argv or argv[0] not in benches:
        print(f"usage: scgrn bench train {{{','.join(benches)}}} [options]   (-h after the name for options)")
        return 2
    if argv[0] == "zero":
        from bench.zero_memory import main as zero_main

        return zero_main(argv[1:])
    if argv[0] == "model":
        from bench.cost_model import main as model_main

        return model_main(argv[1:])
    if argv[0] == "gpu":
        from bench.train_gpu import main as gpu_main

        return gpu_main(argv[1:])
    if "--family" in argv[1:]:  # packing --family geneformer: against Hugging Face BertForMaskedLM
        rest = argv[1:]
        at = rest.index("--family")
        family = rest[at + 1] if at + 1 < len(rest) else ""
        if family == "geneformer":
            from bench.geneformer_packing import main as geneformer_main

            return geneformer_main(rest[:at] + rest[at + 2 :])
        if family != "scbert":
            print(f"scgrn bench train packing: --family {family!r}: allowed scbert (default), geneformer")
            return 2
        argv = [argv[0], *rest[:at], *rest[at + 2 :]]
    return packing_main(argv[1:])
