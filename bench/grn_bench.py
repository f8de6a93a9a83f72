"""`scgrn bench grn --release R`: `scgrn grn` over every BEELINE dataset × network × size that has expression, under
one or more evaluation protocols, with paired per-seed comparisons.

Protocols (each one `scgrn grn` run per dataset, every method on the same splits):
- genelink:      GENELink's splits and negatives (node degree leaks into the labels: the degree heuristic wins);
- degree-aware:  the same positives, negatives matched per TF and by the target's training in-degree (the degree
                 heuristic scores 0.50), so only evidence about the pair can rank it;
- cold-start:    held-out TFs: no edge of a test TF is in training (degree-matched negatives).

Writes bench/GRN_RESULTS.md after every dataset (a partial run keeps its figures): per protocol the mean AUROC of
every method, then paired comparisons over (dataset, seed): the joint model against each baseline and pretrained
against random-init, each with mean difference, wins / losses, a two-sided sign test and a Wilcoxon signed-rank test.
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

from data_prep.io_utils import atomic_write_text

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beeline"
PROTOCOLS = {
    "genelink": ("genelink", "genelink"),
    "degree-aware": ("genelink", "degree-aware"),
    "cold-start": ("cold-start", "degree-aware"),
}  # fmt: skip  name -> (split, negatives)
COLUMNS = ("joint", "genelink-gat", "expression-gcn", "random-embedding", "random-init", "no-gnn", "evidence-logreg",
           "degree", "pearson", "regression", "partial", "trees", "pretrained-isd", "random-init-isd")  # fmt: skip
PAIRS = (("joint", "genelink-gat"), ("joint", "degree"), ("joint", "pearson"), ("joint", "regression"),
         ("joint", "trees"), ("joint", "evidence-logreg"), ("joint", "expression-gcn"), ("joint", "random-embedding"),
         ("joint", "random-init"), ("pretrained-isd", "random-init-isd"), ("pretrained-isd", "pearson"))  # fmt: skip


def column_names(methods: dict) -> dict[str, str]:
    """Column key -> method name in a run (joint-<gnn>; trees = grnboost2 or genie3-sklearn)."""
    out = {}
    for key in COLUMNS:
        for name in methods:
            if (
                name == key
                or (key == "joint" and name.startswith("joint-"))
                or (key == "trees" and name in ("grnboost2", "genie3-sklearn"))
            ):
                out[key] = name
                break
    return out


def per_seed(run: dict, key: str, metric: str = "auroc") -> list[float] | None:
    name = column_names(run["methods"]).get(key)
    if name is None:
        return None
    return [row[metric] for row in run["methods"][name]["seeds"]]


def paired(runs: list[dict], a: str, b: str, metric: str = "auroc") -> dict | None:
    """a − b over every (dataset, seed) both ran: mean, wins, losses, sign-test and Wilcoxon p-values."""
    from scipy.stats import binomtest, wilcoxon

    diffs = []
    for run in runs:
        xa, xb = per_seed(run, a, metric), per_seed(run, b, metric)
        if xa is not None and xb is not None:
            diffs += [x - y for x, y in zip(xa, xb, strict=True) if x is not None and y is not None]
    if not diffs:
        return None
    d = np.asarray(diffs)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    sign_p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    wilcoxon_p = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
    return {"n": len(d), "mean": float(d.mean()), "wins": wins, "losses": losses, "sign_p": float(sign_p),
            "wilcoxon_p": float(wilcoxon_p)}  # fmt: skip


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def render(results: dict[str, list[dict]], skipped, args, machine: str, total_s: float) -> str:
    counts = sorted({len(m["seeds"]) for runs in results.values() for r in runs for m in r["methods"].values()})
    n_seeds = "–".join(map(str, counts[:: max(1, len(counts) - 1)])) if counts else str(args.seeds)
    lines = [
        "# GRN inference on BEELINE — `scgrn bench grn`",
        "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine}. Release: `{args.release}`. Seeds: {n_seeds}; tuning budget {args.budget} "
        f"configurations per learned method and seed; in-silico deletion on {args.isd_cells} cells. "
        f"Wall time {total_s / 60:.1f} min (summed over processes).",
        "",
        "Every method runs on the same splits; every choice (hyper-parameters, pooling, epochs) is made per seed on "
        "that seed's validation set; the test set is read only for the metrics. `joint` = expression ‖ pretrained "
        "embedding → GCN with the pair evidence (|r|, TF regression, partial correlation, trees, in-silico deletion) "
        "in an interaction decoder. Columns are mean AUROC over seeds.",
        "",
    ]
    for protocol, runs in results.items():
        if not runs:
            continue
        lines += [f"## {protocol}: AUROC", "", "| dataset | " + " | ".join(COLUMNS) + " |",
                  "|---|" + "---:|" * len(COLUMNS)]  # fmt: skip
        for run in runs:
            cells = []
            for key in COLUMNS:
                values = per_seed(run, key)
                cells.append(_cell(None if values is None else float(np.mean(values))))
            lines.append(f"| {run['name']} | " + " | ".join(cells) + " |")
        means = []
        for key in COLUMNS:
            values = [np.mean(v) for run in runs if (v := per_seed(run, key)) is not None]
            means.append(f"**{np.mean(values):.3f}**" if values else "—")
        lines += ["| mean | " + " | ".join(means) + " |", ""]
        lines += [f"### {protocol}: paired differences over (dataset, seed)", "",
                  "| comparison | pairs | mean ΔAUROC | wins | losses | sign test p | Wilcoxon p |",
                  "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for a, b in PAIRS:
            stats = paired(runs, a, b)
            if stats is not None:
                lines.append(f"| {a} − {b} | {stats['n']} | {stats['mean']:+.3f} | {stats['wins']} | "
                             f"{stats['losses']} | {stats['sign_p']:.2g} | {stats['wilcoxon_p']:.2g} |")  # fmt: skip
        lines.append("")
    lines += ["## Goals (from the issue; reported whether met or not)", "", *goals(results), ""]
    lines += ["## Skipped (no expression matrix in the snapshot)", ""]
    lines += [f"- {name}: {why}" for name, why in skipped] or ["- none"]
    return "\n".join(lines) + "\n"


def goals(results: dict[str, list[dict]]) -> list[str]:
    out = []
    for protocol in ("degree-aware", "cold-start"):
        runs = results.get(protocol) or []
        if not runs:
            out.append(f"- {protocol}: not run.")
            continue
        for baseline in ("genelink-gat", "degree"):
            flags = []
            for run in runs:
                joint, other = per_seed(run, "joint"), per_seed(run, baseline)
                if joint is not None and other is not None:
                    flags.append(np.mean(joint) > np.mean(other))
            met = "met" if sum(flags) * 2 > len(flags) else "NOT met"
            out.append(f"- {protocol}: joint beats {baseline} by mean AUROC on {sum(flags)} of {len(flags)} "
                       f"dataset cells ({met}: most cells).")  # fmt: skip
        degree = [np.mean(v) for run in runs if (v := per_seed(run, "degree")) is not None]
        if degree:
            out.append(f"- {protocol}: degree heuristic mean AUROC {np.mean(degree):.3f} "
                       f"(range {min(degree):.3f}–{max(degree):.3f}; 0.5 = no degree signal left).")  # fmt: skip
        stats = paired(runs, "pretrained-isd", "random-init-isd")
        if stats is not None:
            out.append(
                f"- {protocol}: pretrained vs random-init in-silico deletion: mean ΔAUROC {stats['mean']:+.3f}, "
                f"{stats['wins']} wins / {stats['losses']} losses (Wilcoxon p {stats['wilcoxon_p']:.2g})."
            )
    return out


def merge_runs(runs: list[dict]) -> list[dict]:
    """One entry per dataset: runs of the same dataset (other seeds, from another summary) have their per-seed rows
    concatenated method by method, in seed order; a seed present twice is refused."""
    merged: dict[str, dict] = {}
    for run in runs:
        if run["name"] not in merged:
            merged[run["name"]] = {
                **run,
                "methods": {k: {**m, "seeds": list(m["seeds"])} for k, m in run["methods"].items()},
            }
            continue
        into = merged[run["name"]]
        if set(into["methods"]) != set(run["methods"]):
            msg = f"{run['name']}: the summaries ran different methods; merge runs of one configuration only."
            raise SystemExit(msg)
        for name, m in run["methods"].items():
            into["methods"][name]["seeds"] += m["seeds"]
        into["wall_s"] += run["wall_s"]
    for run in merged.values():
        for m in run["methods"].values():
            m["seeds"].sort(key=lambda row: row["seed"])
            seeds = [row["seed"] for row in m["seeds"]]
            if len(set(seeds)) != len(seeds):
                msg = f"{run['name']}: seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} appear twice."
                raise SystemExit(msg)
    return sorted(merged.values(), key=lambda r: r["name"])


def main(argv: list[str] | None = None) -> int:
    from finetune.grn.beeline import discover
    from finetune.grn.config import GrnConfig
    from finetune.grn.pipeline import run_grn

    p = argparse.ArgumentParser(prog="scgrn bench grn", description=__doc__)
    p.add_argument("--release", required=True, type=Path)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="BEELINE data (default ../shared/data/beeline)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-grn"))
    p.add_argument("--results", type=Path, default=Path("bench/GRN_RESULTS.md"))
    p.add_argument("--protocols", default="genelink,degree-aware,cold-start", help=f"subset of {list(PROTOCOLS)}")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST.. (add seeds to earlier summaries)")
    p.add_argument("--budget", type=int, default=3, help="hyper-parameter configurations per learned method")
    p.add_argument("--isd-cells", type=int, default=200, help="cells for the in-silico deletion evidence")
    p.add_argument("--gnn", default="gcn")
    p.add_argument("--tree-method", default="grnboost2")
    p.add_argument("--only", default="", help="comma-separated substrings of dataset names, e.g. 'TFs+500'")
    p.add_argument("--skip", default="", help="comma-separated substrings of dataset names to leave out")
    p.add_argument(
        "--from-summaries",
        type=Path,
        nargs="+",
        help="re-render --results from the summary.json of earlier runs (e.g. two runs on different datasets)",
    )
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    args.command = "scgrn bench grn " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    protocols = [x for x in args.protocols.split(",") if x]
    unknown = [x for x in protocols if x not in PROTOCOLS]
    if unknown:
        print(f"scgrn bench grn: error: --protocols {unknown}: allowed {list(PROTOCOLS)}", file=sys.stderr)
        return 2
    available, skipped = discover(args.root)
    filters = [f for f in args.only.split(",") if f]
    leave_out = [f for f in args.skip.split(",") if f]
    results: dict[str, list[dict]] = {x: [] for x in protocols}
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    skipped_named = [("/".join(Path(f).parts[-3:]), why) for f, why in skipped]
    start = time.perf_counter()
    if args.from_summaries:
        wall = 0.0
        for path in args.from_summaries:
            for protocol, runs in json.loads(path.read_text()).items():
                results[protocol] = merge_runs([*results.get(protocol, []), *runs])
                wall += sum(r["wall_s"] for r in runs)
        text = render(results, skipped_named, args, machine, wall)
        atomic_write_text(args.results, text)
        print(text)
        return 0
    text = ""
    for folder in available:
        name = "/".join(folder.parts[-3:])
        if (filters and not any(f in name for f in filters)) or any(f in name for f in leave_out):
            continue
        for protocol in protocols:
            split, negatives = PROTOCOLS[protocol]
            t = time.perf_counter()
            cfg = GrnConfig(release=args.release, out=args.out / protocol / name, benchmark=folder, split=split,
                            negatives=negatives, seeds=args.seeds, first_seed=args.first_seed,
                            tuning_budget=args.budget, gnn=args.gnn,
                            tree_method=args.tree_method, isd_cells=args.isd_cells, cache_dir=args.out / "cache",
                            workers=args.workers, progress=False)  # fmt: skip
            payload = run_grn(cfg)
            results[protocol].append({"name": name, "methods": payload["methods"], "wall_s": time.perf_counter() - t,
                                      "edges_method": payload["edges_method"]})  # fmt: skip
            joint = per_seed(results[protocol][-1], "joint")
            print(f"{protocol} {name}: {time.perf_counter() - t:.0f} s, joint AUROC {np.mean(joint):.3f}", flush=True)
        text = render(results, skipped_named, args, machine, time.perf_counter() - start)
        atomic_write_text(args.results, text)
        atomic_write_text(args.out / "summary.json", json.dumps(results, indent=1, default=str))
    print(text)
    return 0
