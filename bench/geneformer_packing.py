"""`scgrn bench train packing --family geneformer`: our packed varlen Geneformer step vs the Hugging Face way.

Same real cells, same weights, same masked tokens, fp32, forward + backward + AdamW, on CPU:

- ``packed``: `pretrain.models.geneformer.Geneformer` on packed cells (cu_seqlens, no pad token; attention costs
  sum_i L_i^2), batches in stream order.
- ``hf-length-grouped``: transformers' `BertForMaskedLM` (the model Geneformer is) with the Trainer's
  `group_by_length` batching (`transformers.trainer_pt_utils.get_length_grouped_indices`: megabatches of 50
  batches sorted by length, longest batch first) and dynamic padding to each batch's longest cell with an attention
  mask, as Geneformer's own pretraining runs.
- ``hf-padded``: the same model with dynamic padding, batches in stream order (no length grouping).

Cells: the counts of ``--counts`` sharded once (`bench.train_bench.prepare_corpus`); rank-value encoded with gene
medians taken from those cells (non-zero median of CP10k values per gene) and masked once, BERT-style; each variant
then batches the same tokenised cells its own way. Only real tokens count in tokens/s. Variants run interleaved
step by step, so background load hits them alike.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench.train_bench import COUNTS, load_batches, prepare_corpus
from pretrain.models.geneformer import IGNORE_INDEX, Geneformer, GeneformerConfig, prepare_batch

VARIANTS = ("packed", "hf-length-grouped", "hf-padded")


def compact_vocab(batches: list[dict], vocab_size: int) -> tuple[list[dict], int]:
    """Renumber the genes of `batches` 4.. (ids 0-3: <pad>, <mask>, <cls>, <eos>), with a vocabulary of
    `vocab_size` tokens (Geneformer V1: 25,426), or as many as the cells' genes need, so the decoder costs what a
    Geneformer checkpoint's does rather than the size of the corpus's vocabulary."""
    genes = np.unique(np.concatenate([b["gene_ids"].numpy() for b in batches]))
    lookup = np.full(int(genes.max()) + 1, -1, dtype=np.int64)
    lookup[genes] = np.arange(len(genes)) + 4
    out = [{**b, "gene_ids": torch.from_numpy(lookup[b["gene_ids"].numpy()])} for b in batches]
    return out, max(vocab_size, len(genes) + 4)


def gene_medians(batches: list[dict], vocab_size: int) -> torch.Tensor:
    """Each gene's non-zero median of CP10k values over the cells of `batches` (0 for genes never seen)."""
    ids_all, cp_all = [], []
    for b in batches:
        cu = b["cu_seqlens"].numpy()
        v = b["values"].numpy().astype(np.float64)
        totals = np.add.reduceat(v, cu[:-1]) if len(v) else v
        cell = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
        ids_all.append(b["gene_ids"].numpy())
        cp_all.append(v / (b["library_size"].numpy()[cell] if "library_size" in b else totals[cell]) * 1e4)
    ids, cp = np.concatenate(ids_all), np.concatenate(cp_all)
    order = np.argsort(ids, kind="stable")
    ids, cp = ids[order], cp[order]
    bounds = np.flatnonzero(np.diff(ids)) + 1
    median = torch.zeros(vocab_size)
    for gene, part in zip(ids[np.r_[0, bounds]], np.split(cp, bounds), strict=True):
        median[int(gene)] = float(np.median(part))
    return median


def tokenised_cells(config, median, batches, seed) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every cell's (masked input ids, labels), tokenised and masked once (the same targets in every variant)."""
    cells = []
    for i, raw in enumerate(batches):
        prepared = prepare_batch(config, median, raw, torch.Generator().manual_seed(seed * 100_003 + i))
        cu = prepared["cu_seqlens"].tolist()
        for c in range(len(cu) - 1):
            cells.append((prepared["input_ids"][cu[c] : cu[c + 1]], prepared["labels"][cu[c] : cu[c + 1]]))
    return cells


def packed_batch(cells) -> dict:
    lengths = [len(ids) for ids, _ in cells]
    cu = torch.zeros(len(cells) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return {
        "input_ids": torch.cat([ids for ids, _ in cells]),
        "labels": torch.cat([lab for _, lab in cells]),
        "positions": torch.cat([torch.arange(n) for n in lengths]),
        "cu_seqlens": cu,
        "max_seqlen": max(lengths),
    }


def padded_batch(cells, pad: int) -> dict:
    longest = max(len(ids) for ids, _ in cells)
    input_ids = torch.full((len(cells), longest), pad, dtype=torch.long)
    labels = torch.full((len(cells), longest), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(cells), longest), dtype=torch.long)
    for c, (ids, lab) in enumerate(cells):
        input_ids[c, : len(ids)], labels[c, : len(ids)], attention[c, : len(ids)] = ids, lab, 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def batch_orders(cells, batch_cells: int, seed: int) -> dict[str, list[list[int]]]:
    """Cell indices per batch for each variant: stream order, or the HF Trainer's length grouping."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    n = len(cells) // batch_cells * batch_cells
    stream = [list(range(i, i + batch_cells)) for i in range(0, n, batch_cells)]
    generator = torch.Generator().manual_seed(seed)
    grouped = get_length_grouped_indices([len(ids) for ids, _ in cells[:n]], batch_cells, generator=generator)
    grouped_batches = [grouped[i : i + batch_cells] for i in range(0, n, batch_cells)]
    return {"packed": stream, "hf-length-grouped": grouped_batches, "hf-padded": stream}


def run(config: GeneformerConfig, median, cells, warm, batch_cells: int, seed: int, lr: float) -> dict:
    """Time every batch of `cells` in each variant (after one untimed step per variant on the cells of `warm`): all
    variants process exactly the same cells, each batched its own way."""
    import transformers

    from pretrain.interop import hf_bert

    torch.manual_seed(seed)
    ours = Geneformer(config)
    ours.gene_median.copy_(median)
    hf_model = transformers.BertForMaskedLM(transformers.BertConfig(**hf_bert.hf_config(config)))
    missing = hf_model.load_state_dict(hf_bert.to_hf(ours.state_dict(), config.n_layers), strict=False)
    assert not missing.missing_keys, missing  # the same weights in both
    models = {"packed": ours, "hf-length-grouped": hf_model, "hf-padded": copy.deepcopy(hf_model)}
    optimizers = {v: torch.optim.AdamW(m.parameters(), lr=lr) for v, m in models.items()}
    orders = batch_orders(cells, batch_cells, seed)
    results = {v: {"seconds": 0.0, "real_tokens": 0, "computed_tokens": 0, "steps": 0} for v in VARIANTS}
    for i in range(-1, len(orders["packed"])):
        for v in VARIANTS[i % 3 :] + VARIANTS[: i % 3]:
            chosen = warm if i < 0 else [cells[j] for j in orders[v][i]]
            inputs = packed_batch(chosen) if v == "packed" else padded_batch(chosen, config.pad_token)
            model = models[v].train()
            t0 = time.perf_counter()
            loss = model(inputs)["loss"] if v == "packed" else model(**inputs).loss
            loss.backward()
            optimizers[v].step()
            optimizers[v].zero_grad(set_to_none=True)
            seconds = time.perf_counter() - t0
            if i < 0:
                continue
            r = results[v]
            r["seconds"] += seconds
            r["steps"] += 1
            r["real_tokens"] += sum(len(ids) for ids, _ in chosen)
            r["computed_tokens"] += inputs["input_ids"].numel()
    for r in results.values():
        r["tokens_per_s"] = r["real_tokens"] / r["seconds"] if r["seconds"] else float("nan")
    return results


def report(results: dict, config: GeneformerConfig, meta: dict) -> str:
    c = config
    lines = [
        f"packing benchmark, Geneformer family: {meta['source']}",
        f"  {meta['batch_cells']} cells/batch, {meta['timed']} timed steps (the same cells) after {meta['warmup']} "
        "warm-up per variant; "
        f"BERT {c.n_layers} layers x {c.d_model}, {c.n_heads} heads, d_ff {c.d_ff}, context {c.max_len}, "
        f"vocab {c.vocab_size:,}, fp32, forward + backward + AdamW",
        f"  torch {torch.__version__}, transformers {meta['transformers']}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, load average {meta['load']}",
        "",
        f"  {'variant':20s} {'tokens/s':>10s} {'real tok/step':>14s} {'pad':>6s}",
    ]
    for v, r in results.items():
        pad = 1 - r["real_tokens"] / r["computed_tokens"] if r["computed_tokens"] else 0.0
        lines.append(f"  {v:20s} {r['tokens_per_s']:>10,.0f} {r['real_tokens'] / max(r['steps'], 1):>14,.0f} "
                     f"{100 * pad:>5.1f}%")  # fmt: skip
    packed = results["packed"]["tokens_per_s"]
    lines.append("")
    for v in ("hf-length-grouped", "hf-padded"):
        lines.append(f"  packed / {v}: {packed / results[v]['tokens_per_s']:.2f}x")
    # where the difference comes from, by model FLOPs: padding, and the vocabulary logits BertForMaskedLM computes
    # for every token where ours computes them for the masked ones only
    encoder = 6.0 * (12 * c.d_model**2 + 2 * c.d_model * c.d_ff) * c.n_layers + 6.0 * c.d_model**2  # per token
    decoder = 6.0 * c.d_model * c.vocab_size
    ours = encoder + decoder * c.mask_prob
    lines.append(
        f"  by model FLOPs per real token (attention left out): HF's full-vocabulary decoder makes a token cost "
        f"{(encoder + decoder) / ours:.2f}x ours; padding adds the pad share above on top. The speed-up is mostly "
        "the decoder on masked tokens only, then packing."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="scgrn bench train packing --family geneformer",
        description="packed Geneformer vs Hugging Face BertForMaskedLM, padded and length-grouped",
    )
    p.add_argument("--counts", type=Path, default=COUNTS, help="directory of count .h5ad files")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/scgrn-bench/train"))
    p.add_argument("--batch-cells", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="timed batches per variant (the same cells in each)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--max-len", type=int, default=2048, help="context (Geneformer V1: 2048)")
    p.add_argument("--vocab-size", type=int, default=25_426, help="tokens (Geneformer V1: 25,426)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import transformers

    from data_prep.corpus import Corpus

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(args.counts, args.workdir)
    # one warm-up batch, then `steps` timed batches; the HF grouping sorts within megabatches of these cells
    batches = load_batches(corpus, args.batch_cells, 1 + args.steps, args.seed)
    batches, vocab_size = compact_vocab(batches, args.vocab_size)
    config = GeneformerConfig(vocab_size=vocab_size, d_model=args.d_model, n_layers=args.n_layers,
                              n_heads=args.n_heads, d_ff=args.d_ff, max_len=args.max_len, dropout=0.0,
                              attention="sdpa")  # fmt: skip
    median = gene_medians(batches, vocab_size)
    cells = tokenised_cells(config, median, batches, args.seed)
    warm, timed = cells[: args.batch_cells], cells[args.batch_cells :]
    results = run(config, median, timed, warm, args.batch_cells, args.seed, args.lr)
    meta = {
        "source": f"{corpus} ({Corpus(corpus).n_cells:,} cells from {args.counts})",
        "batch_cells": args.batch_cells,
        "timed": results["packed"]["steps"],
        "warmup": 1,
        "transformers": transformers.__version__,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    print(report(results, config, meta))
    return 0
