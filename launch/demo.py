"""`scgrn demo` / `make demo`: the main job end to end on the embedded default (no user data needed).

Today: simulate counts from a known TF->target network -> shard (zarr + webdataset) -> inspect -> validate ->
loader benchmark on those cells. Later stages (pretrain, GRN inference) extend this same script.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from data_prep.config import ShardConfig
from data_prep.sharder import shard
from data_prep.simulate import SimulationConfig, write_simulation
from data_prep.summary import corpus_summary, format_summary
from data_prep.validate import validate_corpus

DEMO_SIMULATION = SimulationConfig(n_cells=20_000, n_genes=1_000, n_tfs=80, seed=0)


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(out: Path) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = _step(
        f"simulate {DEMO_SIMULATION.n_cells:,} cells x {DEMO_SIMULATION.n_genes:,} genes ({DEMO_SIMULATION.n_tfs} TFs)"
    )
    h5ad, edges = write_simulation(DEMO_SIMULATION, out / "simulated.h5ad")
    print(f"wrote {h5ad} and the ground-truth network {edges} ({time.perf_counter() - t:.1f} s)")

    t = _step("shard -> zarr v3 + webdataset")
    corpus = out / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)  # the demo always rebuilds its own corpus
    cfg = ShardConfig(
        inputs=[h5ad],
        out=corpus,
        format="both",
        cells_per_shard=5_000,
        workers=2,
        obs_columns=["cell_type"],
        command=f"scgrn shard {h5ad} --out {corpus} --workers 2",
    )
    shard(cfg)
    print(f"sharded in {time.perf_counter() - t:.1f} s")

    _step("inspect")
    print(format_summary(corpus_summary(corpus)))

    _step("validate")
    problems = validate_corpus(corpus)
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{corpus}: valid")

    _step("loader benchmark (same cells: scgrn loaders vs AnnData / bionemo-scdl / scDataset)")
    from bench.loader_bench import main as bench_loader

    return bench_loader(["--h5ad", str(h5ad), "--workdir", str(out / "bench")])
