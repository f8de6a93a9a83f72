"""`scgrn bench loader`: scgrn's loaders against public baselines, same cells, one process, one run.

Cells: `--cells` thinned replicas of the real PBMC 3k cells (bench.corpus; ~800 non-zeros per cell, 32,738
genes), or any `--h5ad`. Every reader hands out shuffled batches of `--batch-size` cells, each materialized as a
scipy CSR matrix (in-memory indptr / indices / data), warm (files read through once) and cold (the files' pages
evicted with POSIX_FADV_DONTNEED before each repeat). Ratios print as `NAME / BASELINE: 12.3x`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench.baselines import BASELINES, Throughput, evict_page_cache, library_versions, warm_page_cache
from bench.corpus import build_pbmc_replicas
from data_prep.config import ShardConfig
from data_prep.corpus import Corpus
from data_prep.loader import StreamingCellDataset
from data_prep.sharder import shard

PBMC = Path(__file__).resolve().parents[2] / "shared" / "data" / "counts" / "human_pbmc3k_10x.h5ad"
GOALS = [  # (name, baseline, goal ratio, cache state)
    ("scgrn-zarr-shuffled", "anndata-backed", 12.0, "warm"),
    ("scgrn-zarr-shuffled", "bionemo-scdl", 4.0, "warm"),
    ("scgrn-zarr-shuffled", "scdataset-block-shuffle", 4.0, "warm"),
    ("scgrn-zarr-shuffled", "raw-memmap-limit", 0.4, "warm"),
    ("scgrn-zarr-shuffled", "anndata-backed", 5.0, "cold"),
]


def _check(name: str, csr: sp.csr_matrix, expected_rows: int) -> None:
    if csr.shape[0] != expected_rows or csr.indptr[-1] != len(csr.data):
        msg = f"{name}: a batch has {csr.shape[0]} rows (expected {expected_rows}) or inconsistent indptr."
        raise RuntimeError(msg)


def scgrn_streaming(
    corpus_dir: Path,
    fmt: str,
    batch_size: int,
    seed: int,
    cold: bool,
    n_vars: int,
    block_cells: int,
    window_blocks: int,
) -> Throughput:
    """scgrn's StreamingCellDataset, single process, split 'all' (the same cells as the baselines)."""
    name = f"scgrn-{'zarr' if fmt == 'zarr' else 'webdataset'}-shuffled"
    ds = StreamingCellDataset(
        corpus_dir,
        fmt=fmt,
        split="all",
        seed=seed,
        batch_size=batch_size,
        block_cells=block_cells,
        window_blocks=window_blocks,
        obs_columns=[],
    )
    files = [corpus_dir / fmt]
    (evict_page_cache if cold else warm_page_cache)(files)
    total = ds.corpus.n_cells
    cells = 0
    t0 = time.perf_counter()
    for batch in ds:
        csr = sp.csr_matrix((batch.values, batch.gene_ids, batch.indptr), shape=(batch.n_cells, n_vars))
        _check(name, csr, min(batch_size, total - cells))
        cells += batch.n_cells
    seconds = time.perf_counter() - t0
    if cells != total:
        msg = f"{name}: streamed {cells} cells, corpus has {total}."
        raise RuntimeError(msg)
    note = f"{'cold' if cold else 'warm'}; block {block_cells} cells x window {window_blocks}, one epoch"
    return Throughput(name, cells, seconds, note)


def scgrn_random_access(
    corpus_dir: Path, batch_size: int, seed: int, cold: bool, n_vars: int, max_cells: int
) -> Throughput:
    """Random batches of `batch_size` global indices read with Corpus.take (zarr inner chunks)."""
    name = "scgrn-zarr-random-access"
    corpus = Corpus(corpus_dir, "zarr")
    rng = np.random.default_rng(seed)
    n_batches = max(1, max_cells // batch_size)
    batches = [rng.integers(0, corpus.n_cells, batch_size) for _ in range(n_batches)]
    (evict_page_cache if cold else warm_page_cache)([corpus_dir / "zarr"])
    cells = 0
    t0 = time.perf_counter()
    for idx in batches:
        block = corpus.take(idx)
        csr = sp.csr_matrix((block.values, block.gene_ids, block.indptr), shape=(block.n_cells, n_vars))
        _check(name, csr, batch_size)
        cells += block.n_cells
    return Throughput(name, cells, time.perf_counter() - t0, f"{'cold' if cold else 'warm'}; random batches")


def _prepare(args) -> tuple[Path, Path]:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.h5ad:
        h5ad = Path(args.h5ad)
    else:
        if not PBMC.exists():
            msg = f"bench source {PBMC} not found; pass --h5ad PATH to benchmark another file."
            raise SystemExit(msg)
        h5ad = build_pbmc_replicas(PBMC, args.cells, workdir / f"pbmc_replicas_{args.cells}.h5ad", seed=0)
    corpus_dir = workdir / f"scgrn_{h5ad.stem}_{args.codec}"
    if not (corpus_dir / "manifest.json").exists():
        shutil.rmtree(corpus_dir, ignore_errors=True)
        t0 = time.perf_counter()
        shard(
            ShardConfig(
                inputs=[h5ad],
                out=corpus_dir,
                cells_per_shard=50_000,
                workers=2,
                val_fraction=0.0,
                codec=args.codec,
                codec_level=args.codec_level,
            ),
            progress=False,
        )
        print(f"sharded {h5ad.name} in {time.perf_counter() - t0:.1f} s -> {corpus_dir}")
    return h5ad, corpus_dir


def run(args) -> dict:
    h5ad, corpus_dir = _prepare(args)
    n_vars = len(Corpus(corpus_dir).vocab().tokens)
    results: dict[str, dict[str, list[Throughput]]] = {}
    states = ["warm"] if args.no_cold else ["warm", "cold"]
    only = set(args.only.split(",")) if args.only else None
    for state in states:
        cold = state == "cold"
        for _ in range(args.repeats):
            runs = []
            for name, fn in BASELINES.items():
                if only and name not in only:
                    continue
                runs.append(
                    fn(
                        h5ad,
                        batch_size=args.batch_size,
                        seed=args.seed,
                        workdir=Path(args.workdir),
                        cold=cold,
                        max_cells=args.baseline_cells,
                    )
                )
            for fmt in ("zarr", "webdataset"):
                name = f"scgrn-{fmt}-shuffled"
                if not only or name in only:
                    runs.append(
                        scgrn_streaming(
                            corpus_dir,
                            fmt,
                            args.batch_size,
                            args.seed,
                            cold,
                            n_vars,
                            args.block_cells,
                            args.window_blocks,
                        )
                    )
            if not only or "scgrn-zarr-random-access" in only:
                runs.append(
                    scgrn_random_access(corpus_dir, args.batch_size, args.seed, cold, n_vars, args.random_cells)
                )
            for r in runs:
                results.setdefault(state, {}).setdefault(r.name, []).append(r)
    return {"h5ad": str(h5ad), "corpus": str(corpus_dir), "results": results}


def best(runs: list[Throughput]) -> float:
    vals = [r.cells_per_s for r in runs if not r.skipped]
    return max(vals) if vals else float("nan")


def report(out: dict, args) -> str:
    lines = [
        f"loader benchmark: {out['h5ad']} | batch {args.batch_size} cells, shuffled, CSR per batch | "
        f"{platform.processor() or platform.machine()}, {_cores()} cores"
    ]
    for state, table in out["results"].items():
        lines.append(f"\n[{state} page cache] cells/s (best of {args.repeats})")
        for name, runs in table.items():
            note = runs[0].note
            lines.append(f"  {name:28s} {best(runs):>12,.0f}   {note}")
        ours = best(table.get("scgrn-zarr-shuffled", []))
        for name in table:
            if name != "scgrn-zarr-shuffled" and not np.isnan(best(table[name])):
                lines.append(f"  scgrn-zarr-shuffled / {name}: {ours / best(table[name]):.1f}x")
        for name, base in (
            ("scgrn-webdataset-shuffled", "anndata-backed"),
            ("scgrn-zarr-random-access", "anndata-backed"),
        ):
            if name in table and base in table:
                lines.append(f"  {name} / {base}: {best(table[name]) / best(table[base]):.1f}x")
    lines.append("\ngoals:")
    for name, base, goal, state in GOALS:
        table = out["results"].get(state, {})
        if name in table and base in table and not np.isnan(best(table[base])):
            ratio = best(table[name]) / best(table[base])
            lines.append(
                f"  [{'met' if ratio >= goal else 'MISSED'}] {state}: {name} / {base} = {ratio:.2f}x (goal >= {goal}x)"
            )
    if "warm" in out["results"] and "scgrn-zarr-shuffled" in out["results"]["warm"]:
        v = best(out["results"]["warm"]["scgrn-zarr-shuffled"])
        lines.append(
            f"  [{'met' if v >= 200_000 else 'MISSED'}] warm: scgrn-zarr-shuffled = {v:,.0f} cells/s (goal >= 200,000)"
        )
    return "\n".join(lines)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scgrn bench loader", description=__doc__)
    p.add_argument("--cells", type=int, default=200_000, help="PBMC replicas to build (ignored with --h5ad)")
    p.add_argument("--h5ad", type=Path, help="benchmark this file instead of PBMC replicas")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/scgrn-bench"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--codec", default="lz4", choices=["lz4", "zstd"], help="scgrn zarr codec of the bench corpus")
    p.add_argument("--codec-level", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--block-cells", type=int, default=8192)
    p.add_argument("--window-blocks", type=int, default=2)
    p.add_argument("--baseline-cells", type=int, default=None, help="cap cells read per baseline (default: theirs)")
    p.add_argument("--random-cells", type=int, default=20_000)
    p.add_argument("--no-cold", action="store_true")
    p.add_argument("--only", default="", help="comma-separated subset of reader names")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    out = run(args)
    text = report(out, args)
    print(text)
    if args.json:
        payload = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "versions": library_versions(),
            "results": {s: {n: [r.__dict__ for r in runs] for n, runs in t.items()} for s, t in out["results"].items()},
            "report": text,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0
