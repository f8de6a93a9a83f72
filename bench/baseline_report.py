"""Measure every public baseline on the PBMC-replica corpus, warm and cold, and print a table.

    python -m bench.baseline_report --n-cells 200000 --out-dir /tmp/scgrn-bench --repeats 3

Builds (or reuses) the corpus with :func:`bench.corpus.build_pbmc_replicas`, then runs each
baseline ``--repeats`` times per cache state and reports the median cells/s (with min-max), so
one noisy run on a shared 2-core machine does not become the figure. Derived copies (bionemo-scdl
archive, raw .npy arrays) go to ``<out-dir>/work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import time
import warnings
from pathlib import Path

from bench.baselines import BASELINES, Throughput, library_versions
from bench.corpus import build_pbmc_replicas, sidecar_path

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "counts" / "human_pbmc3k_10x.h5ad"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(corpus: Path, workdir: Path, names: list[str], repeats: int, batch_size: int) -> list[dict[str, object]]:
    """Run each baseline ``repeats`` times warm then cold; one summary row per (baseline, cache state)."""
    rows = []
    for name in names:
        for cold in (False, True):
            baseline = BASELINES[name]
            runs: list[Throughput] = [
                baseline(corpus, batch_size=batch_size, workdir=workdir, cold=cold) for _ in range(repeats)
            ]
            rates = [r.cells_per_s for r in runs]
            rows.append(
                {
                    "baseline": name,
                    "cache": "cold" if cold else "warm",
                    "cells_per_run": runs[0].cells,
                    "median_cells_per_s": statistics.median(rates),
                    "min_cells_per_s": min(rates),
                    "max_cells_per_s": max(rates),
                    "note": runs[0].note,
                    # 1-min load average after the runs: ~1.0 is this process alone on the machine;
                    # clearly above means something else competed for the cores.
                    "load_avg_1min": round(os.getloadavg()[0], 2),
                }
            )
            logging.getLogger(__name__).info("%s", rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="PBMC h5ad to replicate")
    parser.add_argument("--n-cells", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/scgrn-bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--only", default=",".join(BASELINES), help="comma-separated baseline names")
    parser.add_argument("--json", type=Path, help="also write the rows and context here")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        parser.error(f"unknown baselines {unknown}; choose from {sorted(BASELINES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=FutureWarning)

    corpus_path = args.out_dir / f"pbmc_replicas_{args.n_cells}_seed{args.seed}.h5ad"
    started = time.perf_counter()
    corpus = build_pbmc_replicas(args.source, args.n_cells, corpus_path, seed=args.seed)
    corpus_facts = json.loads(sidecar_path(corpus).read_text())
    build = {
        "seconds_this_call": round(time.perf_counter() - started, 2),
        "build_seconds": corpus_facts["build_seconds"],
        "peak_rss_mib_after_build": round(_peak_rss_mib(), 1),
    }
    rows = measure(corpus, args.out_dir / "work", names, args.repeats, args.batch_size)

    n_cells, nnz_per_cell = corpus_facts["n_cells"], corpus_facts["mean_nnz_per_cell"]
    print(f"corpus {corpus}: {n_cells} cells, {nnz_per_cell:.1f} nnz/cell")
    print(f"build: {build}")
    print("| baseline | cache | cells/s (median) | min-max | cells/run | load | note |")
    print("|---|---|---:|---|---:|---:|---|")
    for row in rows:
        spread = f"{row['min_cells_per_s']:,.0f}-{row['max_cells_per_s']:,.0f}"
        print(
            f"| {row['baseline']} | {row['cache']} | {row['median_cells_per_s']:,.0f} | {spread} "
            f"| {row['cells_per_run']:,} | {row['load_avg_1min']} | {row['note']} |"
        )
    if args.json:
        context = {"corpus": corpus_facts, "build": build, "versions": library_versions()}
        args.json.write_text(json.dumps({"context": context, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
