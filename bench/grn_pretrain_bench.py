"""`scgrn bench grn-pretrain`: does pretraining compute buy GRN quality? (issue 21, item 6)

For each simulator seed × size × sequencing depth, one network and two sets of cells drawn from it
(`data_prep.simulate`, `states_seed`):

- a **pretraining corpus**: `--corpus-cells` cells in other cell states (8 states of their own, `states_seed=1`),
  sharded and pretrained on (`launch/configs/pretrain/demo.yaml`, one process), with and without the objective that
  also masks measured-but-unexpressed genes (`model.mask_unexpressed`); the run's learning-rate schedule spans the
  largest level of `--steps`, it stops at each level and each stop is exported as a release
  (`release-<objective>-<steps>of<largest>`), so every release is one run seen at another step and is rebuilt by
  re-running this command with the same arguments;
- a **GRN sample**: `--sample-cells` cells in the network's own states (what a user would have), on which
  `scgrn grn --expression --prior` runs with half of the true edges as the prior, with and without `--adapt-steps`
  (masked pretraining continued on the sample; the random-init twin gets the same steps, i.e. a model trained from
  scratch on the sample).

Every readout of the release and of its random-init twin (the twin is the 0-step point of the compute curve) is
scored in the same `scgrn grn` call on the same splits, against the held-out half of the true edges, beside
abs(Pearson), TF regression and GRNBoost2: in-silico deletion (`isd`), the perturbation probe (`probe`), mean
attention (`attention`) and the joint model on the release's gene embeddings (`joint`, twin `random-init`).
Paired differences use the simulations (seed × size × depth) as independent units: a Student-t interval over
them (one simulation gives no interval and reads as a tie).

Writes bench/GRN_PRETRAIN_RESULTS.md and `--summary` (bench/grn_pretrain_runs/summary.json) after every `scgrn grn`
run. The summary is the resume point: a later call with the same settings reads it, skips every (simulation,
objective, steps, adapt) row already there and adds its own, so the experiment can be computed over several
sessions (or machines: the simulations and releases are rebuilt from their seeds) and the table covers all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.grn_sim_bench import SIZES, score_held_out, split_truth
from data_prep.io_utils import atomic_write_text, sha256_file

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "launch" / "configs" / "pretrain" / "demo.yaml"
DEPTHS = {"sparse": 5_000.0, "deep": 50_000.0}  # whole-transcriptome UMIs per cell
SUMMARY = REPO / "bench" / "grn_pretrain_runs" / "summary.json"
SUMMARY_FORMAT, SUMMARY_VERSION = "scgrn-grn-pretrain-summary", 1
OBJECTIVES = {"expressed": 0.0, "unexpressed": 0.3}  # model.mask_unexpressed of the pretraining run
CORPUS_CELL_TYPES = 8
READOUTS = ("isd", "probe", "attention")  # unsupervised readouts: pretrained-X and random-init-X
EVIDENCE = ("pearson", "regression", "trees", "isd", "probe", "attention")
BASELINES = ("random-init", "pretrained-isd", "random-init-isd", "pretrained-probe", "random-init-probe",
             "pretrained-attention", "random-init-attention", "pearson", "regression", "trees")  # fmt: skip
SIMPLE = ("pearson", "regression", "grnboost2")


def _scgrn(*args) -> None:
    from bench.grn_sim_bench import _scgrn as run

    run(*args)


def simulate_pair(folder: Path, n_genes: int, n_tfs: int, seed: int, depth: float, sample_cells: int,
                  corpus_cells: int) -> tuple[Path, Path, Path]:  # fmt: skip
    """The GRN sample (the network's own states), its true edges, and the sharded pretraining corpus (other states
    of the same network); reused when present."""
    from data_prep.simulate import SimulationConfig, write_simulation

    folder.mkdir(parents=True, exist_ok=True)
    sample, edges = folder / "sample.h5ad", folder / "sample.edges.tsv"
    if not sample.exists():
        cfg = SimulationConfig(n_cells=sample_cells, n_genes=n_genes, n_tfs=n_tfs, seed=seed, library_size_mean=depth)
        write_simulation(cfg, sample)
    corpus = folder / "corpus"
    if not (corpus / "manifest.json").exists():
        cfg = SimulationConfig(n_cells=corpus_cells, n_genes=n_genes, n_tfs=n_tfs, seed=seed, library_size_mean=depth,
                               states_seed=1, n_cell_types=CORPUS_CELL_TYPES)  # fmt: skip
        write_simulation(cfg, folder / "corpus.h5ad")
        _scgrn("shard", folder / "corpus.h5ad", "--out", corpus, "--format", "zarr", "--quiet")
        (folder / "corpus.h5ad").unlink()
        (folder / "corpus.edges.tsv").unlink()  # the sample's network (tested equal), kept once as sample.edges.tsv
    return sample, edges, corpus


def pretrain_levels(folder: Path, corpus: Path, objective: str, levels: list[int]) -> dict[int, Path]:
    """One pretraining run per objective, stopped and exported at each compute level (reused when present)."""
    last = max(levels)
    run = folder / f"run-{objective}-{last}"  # the learning-rate schedule spans `last` steps: one run per schedule
    releases = {}
    for level in sorted(levels):
        release = folder / f"release-{objective}-{level}of{last}"
        releases[level] = release
        if (release / "model.safetensors").exists():
            continue
        _scgrn("pretrain", "--config", DEMO_CONFIG, f"data.corpus={corpus}", f"train.out_dir={run}",
               f"train.steps={last}", f"train.warmup_steps={max(1, min(levels) // 10)}",
               f"train.stop_after={0 if level == last else level}", f"train.save_every={last}",
               f"train.eval_every={last}", "train.resume=auto",
               f"model.mask_unexpressed={OBJECTIVES[objective]}")  # fmt: skip
        _scgrn("export", run, "--out", release, "--no-eval", "--quiet")
    return releases


def auroc_row(metrics: dict) -> dict[str, float]:
    return {name: m["auroc"] for name, m in metrics.items() if not name.startswith("_")}


def _interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval over independent units (the simulations: each its own network and cells); with
    one unit there is no interval (low = high = nan, read as a tie)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half


def _verdict(low: float, high: float) -> str:
    return "beats" if low > 0 else "LOSES to" if high < 0 else "ties with"  # nan (no interval): ties


def _span(low: float, high: float) -> str:
    return "no interval (one simulation)" if np.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"


def _pair(rows: list[dict], a: str, b: str, **where) -> tuple[float, float, float, int] | None:
    values = [r["auroc"][a] - r["auroc"][b] for r in rows
              if all(r[k] == v for k, v in where.items()) and a in r["auroc"] and b in r["auroc"]]  # fmt: skip
    if not values:
        return None
    return (*_interval(values), len(values))


def render(rows: list[dict], args, machine: str, total_s: float) -> str:
    objectives = [o for o in OBJECTIVES if o in {r["objective"] for r in rows}]
    levels = sorted({r["steps"] for r in rows})
    adapts = sorted({r["adapt"] for r in rows})
    sims = sorted({r["sim"] for r in rows})
    lines = [
        "# Does pretraining compute buy GRN quality? — `scgrn bench grn-pretrain`",
        "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine}. This call's wall time {total_s / 60:.1f} min; `scgrn grn` runs of all rows "
        f"{sum(r.get('wall_s', 0.0) for r in rows) / 60:.1f} min (the summary keeps rows of earlier calls with the "
        f"same settings). Simulations (independent units): {len(sims)}.",
        "",
        f"Per simulation: one network; a pretraining corpus of {args.corpus_cells:,} cells in {CORPUS_CELL_TYPES} "
        f"other cell states; a GRN sample of {args.sample_cells:,} cells in the network's own states. Releases: "
        "`launch/configs/pretrain/demo.yaml` trained on the corpus and exported at each compute level; objective "
        "`expressed` masks expressed genes only, `unexpressed` also masks measured unexpressed genes "
        f"(model.mask_unexpressed={OBJECTIVES['unexpressed']}). `scgrn grn --expression SAMPLE --prior HALF` "
        f"({args.seeds} split seeds, budget {args.budget}), scored on the held-out half of the true edges over every "
        "TF × gene pair that is not a prior edge. `pretrained-X` / `random-init-X`: readout X of the release / of "
        "its random-init twin (0 steps); `joint` / `random-init`: the joint model on their gene embeddings. "
        "`adapt N`: masked pretraining continued N steps on the sample before any readout (the twin gets the same "
        "steps). Intervals: 95 % Student-t over the simulations (independent networks and cells); one simulation "
        "gives none (a tie).",
        "",
    ]
    columns = ["joint", "random-init"] + [f"{k}-{x}" for x in READOUTS for k in ("pretrained", "random-init")]
    columns += list(SIMPLE)
    depths = [d for d in DEPTHS if d in {depth_of(r) for r in rows}]
    lines += ["## Mean AUROC over simulations", "",
              "| depth | objective | steps | adapt | n | " + " | ".join(columns) + " |",
              "|---|---|---:|---:|---:|" + "---:|" * len(columns)]  # fmt: skip
    for depth in depths:
        for objective in objectives:
            for level in levels:
                for adapt in adapts:
                    key = (depth, objective, level, adapt)
                    sel = [r for r in rows if (depth_of(r), r["objective"], r["steps"], r["adapt"]) == key]
                    if not sel:
                        continue
                    cells = []
                    for c in columns:
                        vals = [r["auroc"][c] for r in sel if c in r["auroc"]]
                        cells.append(f"{np.mean(vals):.3f}" if vals else "—")
                    lines.append(
                        f"| {depth} | {objective} | {level} | {adapt} | {len(sel)} | " + " | ".join(cells) + " |"
                    )
    lines += ["", "## Pretrained − random-init twin, per readout (the compute curve)", "",
              "| depth | objective | adapt | readout | steps | Δ AUROC | 95 % interval | verdict | n |",
              "|---|---|---:|---|---:|---:|---|---|---:|"]  # fmt: skip
    for depth in depths:
        at_depth = [r for r in rows if depth_of(r) == depth]
        for objective in objectives:
            for adapt in adapts:
                for readout in ("joint", *READOUTS):
                    a, b = _twins(readout)
                    for level in levels:
                        stats = _pair(at_depth, a, b, objective=objective, steps=level, adapt=adapt)
                        if stats is not None:
                            mean, low, high, n = stats
                            verdict = f"pretrained {_verdict(low, high)} twin"
                            lines.append(f"| {depth} | {objective} | {adapt} | {readout} | {level} | {mean:+.3f} | "
                                         f"{_span(low, high)} | {verdict} | {n} |")  # fmt: skip
    lines += ["", "## Goals (issue 21; reported whether met or not)", "",
              "Each unsupervised readout is reported on its own (choosing the best of them on the held-out edges "
              "would choose on test). Per depth, then over all simulations.", ""]  # fmt: skip
    for depth in depths:
        lines += goals([r for r in rows if depth_of(r) == depth], depth)
    if len(depths) > 1:
        lines += goals(rows, "all depths")
    lines += ["", "## Per simulation", "", "| simulation | objective | steps | adapt | " + " | ".join(columns) + " |",
              "|---|---|---:|---:|" + "---:|" * len(columns)]  # fmt: skip
    for r in rows:
        cells = [f"{r['auroc'][c]:.3f}" if c in r["auroc"] else "—" for c in columns]
        lines.append(f"| {r['sim']} | {r['objective']} | {r['steps']} | {r['adapt']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def depth_of(row: dict) -> str:
    """The sequencing depth of a row's simulation ("400 genes, deep, seed 1" → "deep")."""
    return row["sim"].split(", ")[1]


def _twins(readout: str) -> tuple[str, str]:
    return ("joint", "random-init") if readout == "joint" else (f"pretrained-{readout}", f"random-init-{readout}")


def goals(rows: list[dict], label: str) -> list[str]:
    out = []
    top = max(r["steps"] for r in rows)
    n_sims = len({r["sim"] for r in rows})

    def met(stats: tuple, goal: float) -> str:
        mean, low, _, _ = stats
        if mean < goal:
            return "NOT met"
        return "met" if low > 0 else "met by the point estimate only: the interval includes 0 or there is none"

    for objective in [o for o in OBJECTIVES if o in {r["objective"] for r in rows}]:
        sel = [r for r in rows if r["objective"] == objective and r["steps"] == top and r["adapt"] == 0]
        if not sel:
            continue
        head = f"- **{label}**, {objective}, {top} steps, no adaptation ({len(sel)} of {n_sims} simulations):"
        parts = []
        for x in READOUTS:
            pearson = _pair(sel, f"pretrained-{x}", "pearson")
            twin = _pair(sel, f"pretrained-{x}", f"random-init-{x}")
            mean = np.mean([r["auroc"][f"pretrained-{x}"] for r in sel])
            parts.append(f"`{x}` {mean:.3f}: − abs(Pearson) {pearson[0]:+.3f} {_span(*pearson[1:3])} (goal +0.05: "
                         f"{met(pearson, 0.05)}), − twin {twin[0]:+.3f} {_span(*twin[1:3])} (goal +0.10: "
                         f"{met(twin, 0.10)})")  # fmt: skip
        out.append(head + " " + "; ".join(parts) + ".")
        for adapt in sorted({r["adapt"] for r in rows} - {0}):
            sel = [r for r in rows if r["objective"] == objective and r["steps"] == top and r["adapt"] == adapt]
            words = []
            for readout in ("joint", *READOUTS):
                stats = _pair(sel, *_twins(readout))
                if stats is not None:
                    words.append(f"{readout}: {_verdict(stats[1], stats[2])} ({stats[0]:+.3f} "
                                 f"{_span(stats[1], stats[2])})")  # fmt: skip
            if words:
                out.append(f"- **{label}**, {objective}, {top} steps, adapt {adapt}, pretrained + adapt vs "
                           f"random-init + adapt: " + "; ".join(words) + ".")  # fmt: skip
        levels = sorted({r["steps"] for r in rows if r["objective"] == objective})
        for x in READOUTS:
            base = [r["auroc"][f"random-init-{x}"] for r in rows if r["objective"] == objective and r["adapt"] == 0]
            curve = [np.mean([r["auroc"][f"pretrained-{x}"] for r in rows
                              if r["objective"] == objective and r["steps"] == level and r["adapt"] == 0])
                     for level in levels]  # fmt: skip
            points = ", ".join(f"{s} {v:.3f}" for s, v in zip(levels, curve, strict=True))
            top_rows = [r for r in rows if r["objective"] == objective and r["steps"] == levels[-1] and r["adapt"] == 0]
            stats = _pair(top_rows, f"pretrained-{x}", f"random-init-{x}")
            trend = {"beats": "rises with compute", "LOSES to": "falls with compute"}.get(
                _verdict(stats[1], stats[2]), "no measured change with compute"
            )
            out.append(
                f"- **{label}**, {objective}, `{x}` against pretraining steps (no adaptation): 0 (random init) "
                f"{np.mean(base):.3f}, {points}: {trend} ({levels[-1]} steps − twin {stats[0]:+.3f} "
                f"{_span(stats[1], stats[2])})."
            )
    return out


def _settings(args, levels: list[int]) -> dict:
    """What every row of one summary shares: rows computed under other settings cannot sit in one table."""
    return {"corpus_cells": args.corpus_cells, "sample_cells": args.sample_cells, "seeds": args.seeds,
            "budget": args.budget, "isd_cells": args.isd_cells, "steps": levels}  # fmt: skip


def row_key(row: dict) -> tuple:
    return row["sim"], row["objective"], row["steps"], row["adapt"]


def read_summary(path: Path, settings: dict) -> list[dict]:
    """The rows of an earlier run with the same settings ([] when `path` does not exist)."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        msg = f"--summary {path}: not readable as JSON ({err}); move it away or pass another --summary"
        raise ValueError(msg) from err
    if not isinstance(data, dict) or (data.get("format"), data.get("version")) != (SUMMARY_FORMAT, SUMMARY_VERSION):
        msg = (f"--summary {path}: not a {SUMMARY_FORMAT} v{SUMMARY_VERSION} file; move it away or pass another "
               "--summary")  # fmt: skip
        raise ValueError(msg)
    if data.get("settings") != settings:
        before = data.get("settings") or {}
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        then = ", ".join(f"{k}={before.get(k)!r}" for k in changed)
        now = ", ".join(f"{k}={settings[k]!r}" for k in changed)
        msg = (
            f"--summary {path} was computed with other settings ({then}; this call: {now}): its rows cannot share "
            "a table with this call's. Repeat its settings to continue it, or pass another --summary."
        )
        raise ValueError(msg)
    return list(data["rows"])


def write_summary(path: Path, settings: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": SUMMARY_FORMAT, "version": SUMMARY_VERSION, "settings": settings, "rows": rows}
    atomic_write_text(path, json.dumps(data, indent=1, default=float) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scgrn bench grn-pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--sim-seeds", default="1,2,3", help="simulator seeds (one network each)")
    p.add_argument("--sizes", default="400,1000", help=f"simulation sizes, from {sorted(SIZES)}")
    p.add_argument("--depths", default="sparse,deep", help=f"sequencing depths, from {DEPTHS}")
    p.add_argument("--steps", default="1000,10000", help="pretraining compute levels (steps; 0 = the twin, always)")
    p.add_argument("--objectives", default="expressed,unexpressed", help=f"from {list(OBJECTIVES)}")
    p.add_argument("--adapt-steps", default="0,200", help="adaptation steps on the sample (0 = none)")
    p.add_argument("--corpus-cells", type=int, default=50_000)
    p.add_argument("--sample-cells", type=int, default=1_500)
    p.add_argument("--seeds", type=int, default=3, help="split seeds of each scgrn grn run")
    p.add_argument("--budget", type=int, default=2, help="hyper-parameter configurations per learned method")
    p.add_argument("--isd-cells", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("runs/bench-grn-pretrain"))
    p.add_argument("--results", type=Path, default=REPO / "bench" / "GRN_PRETRAIN_RESULTS.md")
    p.add_argument(
        "--summary",
        type=Path,
        default=SUMMARY,
        help="rows so far (read first: rows already there are not recomputed), rewritten after each run",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only re-render --results from the rows in --summary (same settings); compute nothing",
    )
    args = p.parse_args(argv)
    args.command = "scgrn bench grn-pretrain " + " ".join(shlex.quote(a) for a in (argv or []))
    problems = []
    sizes, depths = args.sizes.split(","), args.depths.split(",")
    objectives = args.objectives.split(",")
    for flag, given, allowed in (("--sizes", sizes, SIZES), ("--depths", depths, DEPTHS),
                                 ("--objectives", objectives, OBJECTIVES)):  # fmt: skip
        if unknown := [x for x in given if x not in allowed]:
            problems.append(f"{flag} {unknown}: allowed {sorted(allowed)}")
    try:
        levels = sorted({int(s) for s in args.steps.split(",")} - {0})
        adapts = sorted({int(s) for s in args.adapt_steps.split(",")})
        sim_seeds = [int(s) for s in args.sim_seeds.split(",")]
    except ValueError as err:
        problems.append(f"--steps / --adapt-steps / --sim-seeds take comma-separated integers ({err})")
        levels, adapts, sim_seeds = [], [], []
    if not levels and not problems:
        problems.append(f"--steps {args.steps!r}: give at least one level > 0 (0, the random-init twin, is always in)")
    if problems:
        print("scgrn bench grn-pretrain: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    settings = _settings(args, levels)
    try:
        rows = read_summary(args.summary, settings)
    except ValueError as err:
        print(f"scgrn bench grn-pretrain: error: {err}", file=sys.stderr)
        return 2
    if args.report_only:
        if not rows:
            print(f"scgrn bench grn-pretrain: error: --report-only: {args.summary} holds no rows", file=sys.stderr)
            return 2
        here = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
        atomic_write_text(args.results, render(rows, args, f"{here} (every row computed by earlier calls)", 0.0))
        print(f"wrote {args.results} from {len(rows)} rows of {args.summary}")
        return 0
    from finetune.grn.config import GrnConfig
    from finetune.grn.pipeline import run_grn_detailed

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    start = time.perf_counter()
    done = {row_key(r) for r in rows}
    if rows:
        print(f"{len(rows)} rows read from {args.summary}; they are not recomputed", flush=True)
    text = render(rows, args, machine, 0.0) if rows else ""
    for size in sizes:
        n_genes, n_tfs = SIZES[size]
        for depth in depths:
            for sim_seed in sim_seeds:
                sim = f"{n_genes} genes, {depth}, seed {sim_seed}"
                wanted = {(sim, o, level, a) for o in objectives for level in levels for a in adapts}
                if wanted <= done:
                    continue
                folder = args.out / f"sim-{n_genes}-{depth}-seed{sim_seed}-cells{args.corpus_cells}"
                sample, edges_path, corpus = simulate_pair(folder, n_genes, n_tfs, sim_seed, DEPTHS[depth],
                                                           args.sample_cells, args.corpus_cells)  # fmt: skip
                prior, held_out = split_truth(pd.read_csv(edges_path, sep="\t"), sim_seed)
                prior[["tf", "target"]].to_csv(folder / "prior.tsv", sep="\t", index=False)
                for objective in objectives:
                    releases = pretrain_levels(folder, corpus, objective, levels)
                    for level, release in releases.items():
                        for adapt in adapts:
                            if (sim, objective, level, adapt) in done:
                                continue
                            t = time.perf_counter()
                            run_name = f"grn-{release.name.removeprefix('release-')}-adapt{adapt}"
                            cfg = GrnConfig(release=release, out=folder / run_name,
                                            expression=sample, prior=folder / "prior.tsv", seeds=args.seeds,
                                            tuning_budget=args.budget, max_genes=n_genes, adapt_steps=adapt,
                                            isd_cells=args.isd_cells, evidence=list(EVIDENCE),
                                            baselines=list(BASELINES), cache_dir=folder / "cache",
                                            workers=args.workers, progress=False)  # fmt: skip
                            _, evaluation, dataset = run_grn_detailed(cfg)
                            metrics = score_held_out(evaluation, dataset, held_out, args.seeds)
                            auroc = auroc_row(metrics)
                            auroc["joint"] = auroc.pop(next(m for m in list(auroc) if m.startswith("joint-")))
                            rows.append({"sim": sim, "objective": objective, "steps": level, "adapt": adapt,
                                         "auroc": auroc, "wall_s": time.perf_counter() - t,
                                         "release_sha256": sha256_file(release / "model.safetensors")})  # fmt: skip
                            keys = ("joint", "random-init", "pretrained-probe", "random-init-probe", "pearson")
                            shown = ", ".join(f"{k} {auroc[k]:.3f}" for k in keys if k in auroc)
                            print(f"{sim} | {objective} {level} steps | adapt {adapt}: "
                                  f"{time.perf_counter() - t:.0f} s; {shown}", flush=True)  # fmt: skip
                            text = render(rows, args, machine, time.perf_counter() - start)
                            atomic_write_text(args.results, text)
                            write_summary(args.summary, settings, rows)
    if rows:  # also when every row was read from the summary: the table shows them
        text = render(rows, args, machine, time.perf_counter() - start)
        atomic_write_text(args.results, text)
    print(text)
    return 0
