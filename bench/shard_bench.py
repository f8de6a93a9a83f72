"""`scgrn bench shard`: sharding throughput and peak memory at two corpus sizes, to show time is linear in cells
and memory is bounded whatever the input size.

Runs the real CLI (`scgrn shard INPUT --out DIR --workers 2 --format both`) as a subprocess on thinned PBMC
replicas (bench.corpus) and samples the resident memory of the whole process tree (parent + workers) every
50 ms with psutil; peak RSS is the largest sum seen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.corpus import build_pbmc_replicas
from bench.loader_bench import PBMC


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def run_shard(h5ad: Path, out: Path, workers: int, fmt: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "launch.cli",
        "shard",
        str(h5ad),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--format",
        fmt,
        "--quiet",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_rss(ps))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        msg = f"scgrn shard failed ({proc.returncode}): {proc.stderr.read()}"
        raise RuntimeError(msg)
    manifest = json.loads((out / "manifest.json").read_text())
    n = manifest["totals"]["n_cells"]
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "cells": n,
        "seconds": seconds,
        "cells_per_s": n / seconds,
        "peak_rss_gb": peak / 1e9,
        "nnz": manifest["totals"]["nnz"],
        "corpus_gb": size / 1e9,
        "input_gb": h5ad.stat().st_size / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scgrn bench shard", description=__doc__)
    p.add_argument("--sizes", default="200000,1000000", help="comma-separated cell counts")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--format", default="both", choices=["zarr", "webdataset", "both"])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/scgrn-bench"))
    p.add_argument("--keep", action="store_true", help="keep the sharded corpora")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        h5ad = build_pbmc_replicas(PBMC, n, args.workdir / f"pbmc_replicas_{n}.h5ad", seed=0)
        print(f"input {h5ad.name} ready in {time.perf_counter() - t0:.0f} s", flush=True)
        out = args.workdir / f"shard_bench_{n}"
        r = run_shard(h5ad, out, args.workers, args.format)
        rows.append(r)
        print(
            f"{n:>9,} cells: {r['seconds']:7.1f} s  {r['cells_per_s']:>9,.0f} cells/s  "
            f"peak RSS {r['peak_rss_gb']:.2f} GB"
            f"  (input {r['input_gb']:.2f} GB -> corpus {r['corpus_gb']:.2f} GB, {args.format}, "
            f"--workers {args.workers})",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        per_cell = (b["seconds"] / b["cells"]) / (a["seconds"] / a["cells"])
        print(f"time per cell, {b['cells']:,} vs {a['cells']:,}: {per_cell:.2f}x (1.0 = linear)")
        print(f"peak RSS, {b['cells']:,} vs {a['cells']:,}: {b['peak_rss_gb'] / a['peak_rss_gb']:.2f}x (bounded: ~1)")
    goal = next((r for r in rows if r["cells"] == 1_000_000), None)
    if goal:
        print(f"[{'met' if goal['seconds'] < 300 else 'MISSED'}] 1M cells in {goal['seconds']:.0f} s (goal < 300 s)")
        print(f"[{'met' if goal['peak_rss_gb'] < 3 else 'MISSED'}] peak RSS {goal['peak_rss_gb']:.2f} GB (goal < 3 GB)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0
