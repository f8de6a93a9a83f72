"""Tests for `scgrn bench train`: the padded batches the packing benchmark times, a tiny packing run, and the ZeRO
memory accounting (2 real gloo ranks).

A padded batch with the wrong number of tokens, pads that become prediction targets, or variants that trained on
different cells would make the packed/padded ratio meaningless; so would a ZeRO ledger that double-counts views.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from conftest import REPO, require_shared

from bench import train_bench as tb
from bench import zero_memory as zm
from pretrain.models.scbert import IGNORE_INDEX, ScBert, ScBertConfig

TINY = ScBertConfig(vocab_size=200, n_bins=7, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_genes=24)


def raw_batch(lengths: list[int], seed: int = 0, vocab_size: int = 200) -> dict[str, torch.Tensor]:
    """Packed raw cells of the given lengths: distinct ascending gene ids past the special tokens, counts >= 1."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randperm(vocab_size - 4, generator=g)[:n].sort().values + 4 for n in lengths]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return {
        "cu_seqlens": cu,
        "gene_ids": torch.cat(ids),
        "values": torch.randint(1, 30, (sum(lengths),), generator=g).float(),
    }


def test_padded_batch_has_b_times_lmax_tokens_and_the_same_real_tokens():
    model = ScBert(TINY)
    prepared = model.prepare_batch(raw_batch([5, 17, 9, 24]), torch.Generator().manual_seed(0))
    lengths = tb.cell_lengths(prepared["cu_seqlens"])
    l_max = int(lengths.max())
    padded = tb.pad_prepared(prepared, l_max)

    n_cells = lengths.numel()
    assert padded["gene_ids"].numel() == n_cells * l_max
    assert padded["cu_seqlens"].tolist() == [i * l_max for i in range(n_cells + 1)]
    real = padded["gene_ids"] != tb.PAD_ID  # real genes never have the <pad> id
    assert int(real.sum()) == prepared["gene_ids"].numel()
    assert torch.equal(padded["gene_ids"][real], prepared["gene_ids"])
    assert torch.equal(padded["input_bins"][real], prepared["input_bins"])
    assert torch.equal(padded["labels"][real], prepared["labels"])
    assert bool((padded["labels"][~real] == IGNORE_INDEX).all())  # pads are never prediction targets
    assert bool((padded["input_bins"][~real] == 0).all())
    # the padded batch still trains: the loss is over the same masked genes
    out = model(padded)
    assert int(out["n_masked"]) == int((prepared["labels"] != IGNORE_INDEX).sum())
    assert math.isfinite(float(out["loss"].detach()))


def test_padding_to_max_genes_and_too_short_a_length():
    model = ScBert(TINY)
    prepared = model.prepare_batch(raw_batch([3, 40, 8]), torch.Generator().manual_seed(1))  # 40 > max_genes
    assert int(tb.cell_lengths(prepared["cu_seqlens"]).max()) == TINY.max_genes
    padded = tb.pad_prepared(prepared, TINY.max_genes)
    assert padded["gene_ids"].numel() == 3 * TINY.max_genes
    with pytest.raises(ValueError, match="shorter than the longest cell"):
        tb.pad_prepared(prepared, TINY.max_genes - 1)


def test_tiny_packing_run_returns_finite_figures():
    batches = [raw_batch([4, 20, 11, 7], seed=s) for s in range(3)]
    results = tb.run_packing(batches, TINY, steps=2, warmup=1)
    assert set(results) == set(tb.VARIANTS)
    packed, to_max, to_fixed = (results[v] for v in tb.VARIANTS)
    assert packed.real_tokens == to_max.real_tokens == to_fixed.real_tokens == packed.computed_tokens
    assert packed.pad_fraction == 0.0
    assert to_max.computed_tokens == 2 * 4 * 20  # 2 timed steps x 4 cells x the longest cell
    assert to_fixed.computed_tokens == 2 * 4 * TINY.max_genes
    for r in results.values():
        assert len(r.step_seconds) == 2 and len(r.losses) == 2
        assert math.isfinite(r.tokens_per_s) and r.tokens_per_s > 0
        assert all(math.isfinite(x) for x in r.losses)
    meta = {"source": "synthetic", "batch_cells": 4, "steps": 2, "warmup": 1, "load_before": "0", "load_after": "0"}
    text = tb.packing_report(results, TINY, meta)
    assert "packed / padded-to-batch-max:" in text and "goal >= 3x" in text


def test_run_packing_needs_enough_batches():
    with pytest.raises(ValueError, match="batches given"):
        tb.run_packing([raw_batch([3, 4])], TINY, steps=2, warmup=1)


@pytest.mark.real_data
def test_packing_cli_on_real_cells(tmp_path, capsys):
    pbmc = require_shared("counts", "human_pbmc3k_10x.h5ad")
    counts = tmp_path / "counts"
    counts.mkdir()
    shutil.copy(pbmc, counts / pbmc.name)
    args = ["packing", "--counts", str(counts), "--workdir", str(tmp_path / "work"), "--batch-cells", "4"]
    args += ["--steps", "1", "--warmup", "1", "--d-model", "16", "--n-layers", "1", "--n-heads", "2"]
    args += ["--max-genes", "64", "--threads", "1"]
    assert tb.main(args) == 0
    out = capsys.readouterr().out
    assert "packed / padded-to-batch-max:" in out
    assert "[met]" in out or "[MISSED]" in out


def test_geneformer_packing_times_the_same_cells_in_every_variant(tmp_path, capsys):
    """`packing --family geneformer`: our packed model and transformers' BertForMaskedLM (same weights) on the same
    tokenised cells, padded per batch and length-grouped as the HF Trainer does."""
    pytest.importorskip("transformers", reason="transformers is a dev dependency")
    from bench import geneformer_packing as gp

    pbmc = require_shared("counts", "human_pbmc3k_10x.h5ad")
    counts = tmp_path / "counts"
    counts.mkdir()
    shutil.copy(pbmc, counts / pbmc.name)
    args = ["packing", "--family", "geneformer", "--counts", str(counts), "--workdir", str(tmp_path / "work")]
    args += ["--batch-cells", "4", "--steps", "2", "--d-model", "16", "--n-layers", "1", "--n-heads", "2"]
    args += ["--d-ff", "32", "--max-len", "64", "--threads", "1"]
    assert tb.main(args) == 0
    out = capsys.readouterr().out
    assert "packed / hf-length-grouped:" in out and "packed / hf-padded:" in out
    table = [line.split() for line in out.splitlines() if line.strip().startswith(gp.VARIANTS)]
    rows = {row[0]: row for row in table if len(row) == 4 and row[3].endswith("%")}
    assert len({rows[v][2] for v in gp.VARIANTS}) == 1  # the same real tokens per step in every variant
    assert float(rows["packed"][3].rstrip("%")) == 0.0  # packing computes no pad token


def test_train_bench_usage_without_a_name(capsys):
    assert tb.main([]) == 2
    assert "packing" in capsys.readouterr().out


def test_ledger_counts_each_storage_once_and_views_by_their_bytes():
    buffer = torch.zeros(100)
    ledger = zm.Ledger()
    ledger.add("grads", [buffer[:10], buffer[5:20], buffer[:10]])  # overlapping views of one buffer
    ledger.add("optimizer", [buffer[50:60], torch.ones(3)])  # the buffer is the grads' already
    assert ledger.storage == {"grads": 400, "optimizer": 12}
    assert ledger.logical("grads") == 20 * 4
    assert ledger.logical("optimizer") == 3 * 4


@pytest.mark.distributed
def test_zero3_holds_less_than_zero0_on_two_ranks():
    config = REPO / "launch" / "configs" / "pretrain" / "debug.yaml"
    kwargs = {"config": config, "vocab_size": 5000, "cells": 2, "genes": 32, "timeout": 240}
    zero0 = zm.run_stage(0, **kwargs)
    zero3 = zm.run_stage(3, **kwargs)
    assert [e["rank"] for e in zero0] == [0, 1] and [e["rank"] for e in zero3] == [0, 1]
    n_params = zero0[0]["n_params"]
    for e in zero0:  # ZeRO 0 holds everything: 4P params, 4P grads, 8P Adam moments (+ the step counters)
        assert e["bytes"]["params"] == 4 * n_params
        assert e["bytes"]["grads"] == 4 * n_params
        assert 8 * n_params <= e["bytes"]["optimizer"] <= 8 * n_params + 1024
    for e3, e0 in zip(zero3, zero0, strict=True):
        assert zm.total(e3) < zm.total(e0)
        assert e3["bytes"]["params"] < e0["bytes"]["params"]
        assert e3["bytes"]["grads"] < e0["bytes"]["grads"]
    text = zm.report({0: zero0, 3: zero3}, {"config": "debug", "vocab_size": 5000, "load_before": "", "load_after": ""})
    assert "ZeRO-3 / ZeRO-0:" in text


def test_the_gpu_bench_runs_the_deepspeed_engine_path_on_cpu(tmp_path, cli):
    """`scgrn bench train gpu --path deepspeed` (its default) times the engine `scgrn pretrain` runs; on CPU it runs
    fp32 and reports no MFU (no peak), but the same code path as on a GPU up to the precision."""
    from conftest import make_adata

    (tmp_path / "counts").mkdir()
    make_adata(120, 60, seed=3).write_h5ad(tmp_path / "counts" / "a.h5ad")
    model = ("--model", "d_model=32", "--model", "n_heads=2", "--model", "d_ff=64", "--model", "n_layers=1")
    out = tmp_path / "gpu.json"
    args = ["bench", "train", "gpu", "--device", "cpu", "--counts", tmp_path / "counts", "--workdir", tmp_path / "w",
            "--configs", "scbert-base", "--backends", "sdpa,padded-sdpa", "--batch-cells", "8", "--steps", "2",
            "--warmup", "1", *model, "--json", out]  # fmt: skip
    proc = cli(*args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["backend"], r["path"]) for r in results] == [("sdpa", "deepspeed"), ("padded-sdpa", "deepspeed")]
    assert all(math.isfinite(r["final_loss"]) and r["tokens_per_s"] > 0 and r["mfu"] is None for r in results)
    assert "padded-sdpa tokens/s" in proc.stdout
