"""`scgrn demo` / `make demo`: the main job end to end, on simulated cells or on the user's files.

    simulate (or DATA) -> shard (zarr v3) -> pretrain with 2 ranks under the deepspeed launcher (ZeRO-2)
    -> export a release -> scgrn grn scored against the simulator's true network (or the user's PRIOR)

Every long step shows a progress bar; the end prints the GRN table (joint model vs baselines) and where each output
went. With user data, all files are pretrained on and the GRN step runs on the first one, with the prior network as
the edges to hold out and recover.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from data_prep.config import ShardConfig
from data_prep.io_utils import atomic_write_text
from data_prep.sharder import shard
from data_prep.simulate import SimulationConfig, write_simulation
from pretrain.console import quiet_env

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "launch" / "configs" / "pretrain" / "demo.yaml"
DEMO_SIMULATION = SimulationConfig(n_cells=4_000, n_genes=500, n_tfs=50, seed=0)
RANKS = 2


def _step(n: int, title: str) -> float:
    print(f"\n[{n}/5] {title}", flush=True)
    return time.perf_counter()


def _pretrain_command(corpus: Path, run_dir: Path, steps: int | None) -> list[str]:
    """The deepspeed launcher, 2 ranks; on CPU DeepSpeed picks its CPU accelerator and gloo."""
    overrides = [f"data.corpus={corpus}", f"train.out_dir={run_dir}"]
    if steps is not None:
        overrides += [f"train.steps={steps}", f"train.warmup_steps={max(1, steps // 10)}"]
    launcher = Path(sys.executable).parent / "deepspeed"
    head = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*head, "--num_gpus", str(RANKS), "--module", "pretrain", "--config", str(DEMO_CONFIG), *overrides]


def _obs_columns(inputs: list[Path]) -> list[str]:
    """Keep cell_type when every h5ad input has it (the export's evaluation uses it)."""
    import h5py

    for path in inputs:
        if path.suffix != ".h5ad":
            return []
        with h5py.File(path, "r") as f:
            if "cell_type" not in f.get("obs", {}):
                return []
    return ["cell_type"]


def run_demo(out: Path, data: list[Path] | None = None, prior: Path | None = None, steps: int | None = None) -> int:
    from finetune.errors import GrnInputError
    from finetune.grn.config import GrnConfig
    from finetune.grn.pipeline import run_grn
    from pretrain.console import attach_run_log, quiet_console
    from pretrain.release import export_release

    start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    quiet_console()  # DeepSpeed's lines and warnings (dask's "large graph" one) go to OUT/logs/demo.log
    attach_run_log(out, "demo")
    timings: dict[str, float] = {}
    if data:
        inputs = [Path(p).resolve() for p in data]
        missing = [str(p) for p in inputs if not p.exists()]
        if missing or prior is None or not Path(prior).exists():
            problem = f"no such file(s): {missing}" if missing else f"PRIOR {prior!r} is missing or does not exist"
            print(f"scgrn demo: error: {problem}. With your data run: make demo DATA='a.h5ad b.h5ad' "
                  "PRIOR=edges.tsv (a TF<TAB>target table, e.g. TRRUST; the GRN step holds its edges out).",
                  file=sys.stderr)  # fmt: skip
            return 2
        truth = Path(prior).resolve()
        t = _step(1, f"your data: {len(inputs)} file(s); GRN on {inputs[0].name} against {truth.name}")
    else:
        sim = DEMO_SIMULATION
        t = _step(1, f"simulate {sim.n_cells:,} cells × {sim.n_genes} genes from a random network of {sim.n_tfs} TFs")
        h5ad, truth = write_simulation(sim, out / "simulated.h5ad")
        inputs = [h5ad]
        print(f"  {h5ad}\n  true network: {truth}")
    timings["data"] = time.perf_counter() - t

    t = _step(2, "shard -> zarr v3 corpus (scgrn shard)")
    corpus = out / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)  # the demo always rebuilds its own corpus
    shard(ShardConfig(inputs=inputs, out=corpus, format="zarr", cells_per_shard=2_000, workers=2,
                      obs_columns=_obs_columns(inputs), command="scgrn demo"), progress=True)  # fmt: skip
    manifest = json.loads((corpus / "manifest.json").read_text())
    print(f"  {manifest['totals']['n_cells']:,} cells, {manifest['totals']['n_shards']} shards, "
          f"vocab of {manifest['vocab']['size']:,} genes -> {corpus}")  # fmt: skip
    timings["shard"] = time.perf_counter() - t

    t = _step(3, f"pretrain {DEMO_CONFIG.name}: {RANKS} ranks under the deepspeed launcher, ZeRO-2")
    run_dir = out / "runs" / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = _pretrain_command(corpus, run_dir, steps)
    print("  $ " + " ".join(command), flush=True)
    env = quiet_env({**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    # the launcher's own INFO lines (stdout) go to its log; the ranks' progress bar and errors (stderr) stay here
    launcher_log = out / "logs" / "launcher.log"
    with launcher_log.open("w") as stdout:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=stdout, check=False).returncode
    if code != 0:
        tail = "".join(launcher_log.read_text().splitlines(keepends=True)[-20:])
        print(f"{tail}scgrn demo: error: pretraining exited {code}; the launcher's output is in {launcher_log} "
              f"(its end above), the ranks' in {run_dir / 'logs'}.", file=sys.stderr)  # fmt: skip
        return code
    summary = json.loads((run_dir / "run_summary.json").read_text())
    losses = summary.get("final_losses") or {}
    print(f"  {summary.get('steps')} steps on {summary.get('world_size')} ranks; final loss train "
          f"{losses.get('train', float('nan')):.3f}, val {losses.get('val', float('nan')):.3f}")  # fmt: skip
    timings["pretrain"] = time.perf_counter() - t

    t = _step(4, "export a release (safetensors + config + vocab)")
    release = export_release(run_dir, out / "release")
    print(f"  {release}")
    timings["export"] = time.perf_counter() - t

    t = _step(
        5,
        "scgrn grn: the joint model (pair evidence + pretrained embeddings + GNN) vs every baseline, "
        "on held-out true edges",
    )
    grn_out = out / "grn"
    tree = "grnboost2" if _has_arboreto() else "genie3"
    # the simulator's regulators are drawn uniformly from the TFs: node degree carries no signal, so only evidence
    # about each pair (co-expression, regression on the TFs, trees, the release's in-silico deletion) can rank it
    cfg = GrnConfig(release=release, out=grn_out, expression=inputs[0], truth=truth, seeds=3, tree_method=tree,
                    max_genes=1000, tuning_budget=2, isd_cells=200, probe_cells=30, attention_cells=300,
                    progress=True)  # fmt: skip
    try:
        payload = run_grn(cfg)
    except GrnInputError as err:
        print(f"scgrn demo: error: {err}", file=sys.stderr)
        return 2
    timings["grn"] = time.perf_counter() - t
    print()
    print((grn_out / "results.md").read_text())
    _summary(out, payload, timings, time.perf_counter() - start, run_dir, grn_out, release)
    return 0


def _has_arboreto() -> bool:
    try:
        import arboreto  # noqa: F401
    except ImportError:
        return False
    return True


def _summary(out, payload, timings, total, run_dir, grn_out, release) -> None:
    """The run's verdict lines (same words as results.md and bench/GRN_RESULTS.md: beats / ties with / LOSES to,
    each with its interval over seeds), where everything went, and demo_summary.json."""
    methods = payload["methods"]
    joint = payload["joint"]

    def mean(name: str, metric: str) -> float:
        return methods[name]["summary"][metric]["mean"]

    auroc = {name: mean(name, "auroc") for name in methods}
    trees = next((n for n in ("grnboost2", "genie3-sklearn") if n in methods), None)
    margins = {}
    for name in ("pearson", trees):
        if name is not None:
            margins[name] = {"auroc": auroc[joint] - auroc[name]}
    print("== summary")
    for line in payload["verdict"]:
        print(f"  {line}")
    print(f"  joint model AUROC {auroc[joint]:.3f} (chance 0.5); its verdict lines are in {grn_out / 'results.md'}")
    print("  time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s")
    print(f"  outputs under {out}/:")
    print(f"    release          {release}  (model.safetensors, config.json, vocab.json, README.md)")
    print(f"    ranked edges     {grn_out / 'edges.tsv'}")
    print(f"    curves           {grn_out / 'roc.png'}, {grn_out / 'pr.png'}")
    print(f"    metrics          {grn_out / 'metrics.json'}, {grn_out / 'results.md'}")
    print(f"    training curves  tensorboard --logdir {run_dir / 'tensorboard'}")
    print(f"    logs             {out / 'logs'} (launcher, demo), {run_dir / 'logs'} (each rank)")
    summary = {"auroc": auroc, "joint": joint, "edges_method": payload["edges_method"], "verdict": payload["verdict"],
               "joint_margins": margins, "seconds": {**timings, "total": total}}  # fmt: skip
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=1))
