"""`scgrn demo` / `make demo`: the main job end to end on the embedded default (no user data needed).

Today: simulate counts from a known TF->target network -> shard (zarr + webdataset) -> inspect -> validate ->
pretrain a small model -> export a release and load it -> loader benchmark on those cells. GRN inference
extends this same script.
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
from pretrain.release import export_release, load_release
from pretrain.trainer import run as run_pretrain

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

    t = _step("pretrain a small scBERT-family model on the corpus (1 process, DeepSpeed ZeRO-2, 60 steps)")
    run_dir = out / "runs" / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    summary = run_pretrain(
        "launch/configs/pretrain/debug.yaml",
        [
            f"data.corpus={corpus}",
            f"train.out_dir={run_dir}",
            "train.steps=60",
            "train.eval_every=30",
            "train.save_every=30",
            "train.lr=3e-3",
            "train.resume=none",
        ],
    )
    losses = summary["loss_history"]
    print(
        f"loss {sum(losses[:5]) / 5:.3f} (first 5 steps) -> {sum(losses[-5:]) / 5:.3f} (last 5); "
        f"validation {summary['final_losses'].get('val', float('nan')):.3f}; {time.perf_counter() - t:.1f} s; "
        f"TensorBoard: {run_dir / 'tensorboard'}"
    )

    _step("export a release (safetensors + config + vocab) and load it back")
    release = export_release(run_dir, out / "releases" / "demo")
    model, vocab = load_release(release)
    print(f"{release}: {sum(p.numel() for p in model.parameters()):,} parameters, vocab of {vocab.size:,} tokens")

    _step("loader benchmark (same cells: scgrn loaders vs AnnData / bionemo-scdl / scDataset)")
    from bench.loader_bench import main as bench_loader

    return bench_loader(["--h5ad", str(h5ad), "--workdir", str(out / "bench")])
