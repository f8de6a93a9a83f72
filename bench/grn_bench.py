"""`scgrn bench grn --release R`: `scgrn grn` over every BEELINE dataset × network × size that has expression, under
one or more evaluation protocols, with paired comparisons whose intervals respect how the data are shared.

Protocols (each one `scgrn grn` run per dataset, every method on the same splits; all of them directed: a labelled
pair and its reverse are always in one set):
- degree-aware:    GENELink's per-TF positives, negatives matched per TF and by the target's training in-degree (the
                   degree shortcut scores 0.50);
- cold-start:      held-out TFs: no edge touching a validation or test TF is in training (degree-matched negatives);
- held-out-genes:  genes partitioned: a test pair's genes have no training edge at all, so no shortcut (degree,
                   topology, label-knn) has anything to read; sets leaving fewer than 20 test positives are listed
                   as too small;
- genelink:        GENELink's own negatives, for comparison with published numbers only (labelled leaky: node
                   degree leaks into the labels).

Writes bench/GRN_RESULTS.md after every dataset (a partial run keeps its figures): per protocol the mean AUROC of
every method and the wall time per set, then paired differences (joint − each baseline, joint − the best shortcut of
each set, pretrained − random-init) with a hierarchical bootstrap interval: the 25 folders share 8 expression
matrices (cell type × size), so matrices are resampled first and (dataset, seed) rows within a matrix second
(`finetune.grn.statistics`); "beats" / "LOSES to" only when the 95 % interval excludes 0, "ties with" otherwise.
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
    "degree-aware": ("genelink", "degree-aware"),
    "cold-start": ("cold-start", "degree-aware"),
    "held-out-genes": ("held-out-genes", "degree-aware"),
    "genelink": ("genelink", "genelink"),
}  # fmt: skip  name -> (split, negatives)
LEAKY = {"genelink": "GENELink's negatives: node degree leaks into the labels (the degree shortcut alone ranks test "
                     "pairs well); for comparison with published numbers only"}  # fmt: skip
COLUMNS = ("joint", "genelink-gat", "expression-gcn", "random-embedding", "random-init", "no-gnn", "evidence-logreg",
           "pearson", "regression", "partial", "trees", "pretrained-isd", "random-init-isd",
           "degree", "topology", "label-knn")  # fmt: skip
SHORTCUTS = ("degree", "topology", "label-knn")
# the methods of the leak-free BEELINE table (issue 20), fixed so that pieces run in different sessions compare; the
# perturbation probe (issue 21) came later and is measured by its own experiment
TABLE_EVIDENCE = ("pearson", "regression", "partial", "trees", "isd")
TABLE_BASELINES = ("genelink-gat", "expression-gcn", "random-embedding", "random-init", "no-gnn", "evidence-logreg",
                   "pretrained-isd", "random-init-isd", "pearson", "spearman", "partial", "regression", "trees",
                   "degree", "topology", "label-knn")  # fmt: skip
TOO_SMALL_KEY = "_too_small"  # summary.json: {protocol: [[dataset, test positives], ...]} of sets too small to run
BEST_SHORTCUT = "best shortcut"
PAIRS = (("joint", "genelink-gat"), ("joint", "pearson"), ("joint", "regression"), ("joint", "trees"),
         ("joint", "evidence-logreg"), ("joint", "expression-gcn"), ("joint", "random-embedding"),
         ("joint", "degree"), ("joint", "topology"), ("joint", "label-knn"), ("joint", BEST_SHORTCUT),
         ("genelink-gat", BEST_SHORTCUT), ("pearson", BEST_SHORTCUT),
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
    """Per-seed values of a column; BEST_SHORTCUT is, per seed, the highest of the shortcuts that ran (a reference
    the learned model must clear on the same split, so taking the maximum is the conservative choice)."""
    if key == BEST_SHORTCUT:
        rows = [v for name in SHORTCUTS if (v := per_seed(run, name, metric)) is not None]
        return [max(values) for values in zip(*rows, strict=True)] if rows else None
    name = column_names(run["methods"]).get(key)
    if name is None:
        return None
    return [row[metric] for row in run["methods"][name]["seeds"]]


def paired(runs: list[dict], a: str, b: str, metric: str = "auroc") -> dict | None:
    """a − b per (dataset, seed), with a hierarchical bootstrap interval over expression matrices, then the
    (dataset, seed) rows within a matrix. Adds wins / losses over rows. None when a pair never ran together."""
    from finetune.grn.statistics import hierarchical_bootstrap, paired_diffs

    diffs = paired_diffs(runs, a, b, lambda run, key: per_seed(run, key, metric))
    if not diffs:
        return None
    rows = np.concatenate([np.asarray(v, dtype=float) for by_set in diffs.values() for v in by_set.values()])
    stats = dict(hierarchical_bootstrap(diffs))
    stats.update(wins=int((rows > 0).sum()), losses=int((rows < 0).sum()))
    return stats


WORDS = {"beats": "beats", "loses": "LOSES to", "ties": "ties with"}


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def render(results: dict[str, list[dict]], skipped, args, machine: str, total_s: float, too_small=None,
           available: list[str] | None = None) -> str:  # fmt: skip
    """The results page. `available`: every set with expression (names); a protocol's table then says which of them
    it does not have yet (a table computed in pieces is partial until it has them all)."""
    too_small = too_small or {}
    steps = getattr(args, "adapt_steps", 0)
    adapted = f" Release and twin adapted {steps} steps on each set's cells (`--adapt-steps`)." if steps else ""
    counts = sorted({len(m["seeds"]) for runs in results.values() for r in runs for m in r["methods"].values()})
    n_seeds = "–".join(map(str, counts[:: max(1, len(counts) - 1)])) if counts else str(args.seeds)
    lines = [
        "# GRN inference on BEELINE — `scgrn bench grn`",
        "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine}. Release: `{args.release}`. Seeds: {n_seeds}; tuning budget {args.budget} "
        f"configurations per learned method and seed; in-silico deletion on {args.isd_cells} cells. "
        f"Wall time {total_s / 60:.1f} min (summed over processes).{adapted}",
        "",
        "Every method runs on the same directed splits (a labelled pair and its reverse are always in one set); every "
        "choice (hyper-parameters, pooling, epochs) is made per seed on that seed's validation set; the test set is "
        "read only for the metrics. `joint` = expression ‖ pretrained embedding → GCN with the pair evidence (|r|, "
        "TF regression, partial correlation, trees, in-silico deletion) in an interaction decoder. Shortcuts (degree, "
        "topology, label-knn) read only the training labels' structure; `best shortcut` is the highest of them per "
        "set and seed. Columns are mean test AUROC over seeds; `s/seed` is the wall time of the set per seed.",
        "",
        "Intervals: 95 % hierarchical bootstrap over the 8 expression matrices (cell type × size; the 25 folders are "
        "network types over them), then the (dataset, seed) rows within a matrix. A difference is a win or a loss "
        "only when its interval excludes 0.",
        "",
    ]
    for protocol, runs in results.items():
        if not runs:
            continue
        title = f"## {protocol}: AUROC" + (
            " — LEAKY, for comparison with published numbers" if protocol in LEAKY else ""
        )
        lines += [title, ""]
        if protocol in LEAKY:
            lines += [f"> {LEAKY[protocol]}.", ""]
        lines += ["| dataset | " + " | ".join(COLUMNS) + " | s/seed |", "|---|" + "---:|" * (len(COLUMNS) + 1)]
        for run in runs:
            cells = []
            for key in COLUMNS:
                values = per_seed(run, key)
                cells.append(_cell(None if values is None else float(np.mean(values))))
            n = max(1, len(next(iter(run["methods"].values()))["seeds"]))
            lines.append(f"| {run['name']} | " + " | ".join(cells) + f" | {run['wall_s'] / n:.0f} |")
        means = []
        for key in COLUMNS:
            values = [np.mean(v) for run in runs if (v := per_seed(run, key)) is not None]
            means.append(f"**{np.mean(values):.3f}**" if values else "—")
        wall = [r["wall_s"] / max(1, len(next(iter(r["methods"].values()))["seeds"])) for r in runs]
        lines += ["| mean | " + " | ".join(means) + f" | {np.mean(wall):.0f} |", ""]
        if too_small.get(protocol):
            lines += [f"Too small for {protocol} (fewer than 20 test positives per seed): "
                      + ", ".join(f"{name} ({n})" for name, n in too_small[protocol]) + ".", ""]  # fmt: skip
        done = {r["name"] for r in runs} | {name for name, _ in too_small.get(protocol, [])}
        if missing := [name for name in available or [] if name not in done]:
            lines += [f"**Partial: {len(missing)} of the {len(available)} sets not run yet under {protocol}** "
                      f"({', '.join(missing)}); means and intervals are over the sets present.", ""]  # fmt: skip
        lines += [f"### {protocol}: paired differences of test AUROC", "",
                  "| comparison | matrices | rows | mean Δ | 95 % interval | verdict | wins | losses |",
                  "|---|---:|---:|---:|---|---|---:|---:|"]  # fmt: skip
        for a, b in PAIRS:
            stats = paired(runs, a, b)
            if stats is not None:
                lines.append(f"| {a} − {b} | {stats['n_units']} | {stats['n_rows']} | {stats['mean']:+.3f} | "
                             f"[{stats['low']:+.3f}, {stats['high']:+.3f}] | {a} {WORDS[stats['verdict']]} {b} | "
                             f"{stats['wins']} | {stats['losses']} |")  # fmt: skip
        lines.append("")
    lines += ["## Reading", "", *reading(results), ""]
    lines += ["## By network type (mean test AUROC over the sets of each type and their seeds)", "",
              *by_network(results), ""]  # fmt: skip
    lines += ["## Goals (from the issues; reported whether met or not)", "", *goals(results), ""]
    lines += ["## Skipped (no expression matrix in the snapshot)", ""]
    lines += [f"- {name}: {why}" for name, why in skipped] or ["- none"]
    return "\n".join(lines) + "\n"


def _said(b: str, stats: dict | None) -> str:
    """'beats b (+0.061 [+0.043, +0.079], 8 matrices)', from a `paired` result."""
    if stats is None:
        return f"was not compared with {b}"
    return (f"{WORDS[stats['verdict']]} {b} ({stats['mean']:+.3f} [{stats['low']:+.3f}, {stats['high']:+.3f}], "
            f"{stats['n_units']} matrices)")  # fmt: skip


def _pearson_lead_by_network(runs: list[dict]) -> dict[str, float]:
    leads = {}
    for network in sorted({r["name"].split("/")[0] for r in runs}):
        diffs = []
        for r in runs:
            joint, pearson = per_seed(r, "joint"), per_seed(r, "pearson")
            if r["name"].split("/")[0] == network and joint is not None and pearson is not None:
                diffs.append(float(np.mean(np.subtract(joint, pearson))))
        if diffs:
            leads[network] = float(np.mean(diffs))
    return leads


def reading(results: dict[str, list[dict]]) -> list[str]:
    """The table in words, computed from the intervals (so it cannot drift from the numbers)."""
    out, twin_ties = [], []
    for protocol in ("degree-aware", "cold-start", "held-out-genes"):
        runs = results.get(protocol) or []
        if not runs:
            continue
        twin = paired(runs, "joint", "random-init")
        twin_ties.append(twin is not None and twin["verdict"] != "beats")
        shortcut, pearson = paired(runs, "joint", BEST_SHORTCUT), paired(runs, "joint", "pearson")
        trees, gat = paired(runs, "joint", "trees"), paired(runs, "joint", "genelink-gat")
        isd = paired(runs, "pretrained-isd", "random-init-isd")
        out.append(f"- **{protocol}**: joint {_said('the best shortcut', shortcut)}, {_said('abs(Pearson)', pearson)} "
                   f"and {_said('GRNBoost2', trees)}; it {_said('the GENELink GAT', gat)} and "
                   f"{_said('its random-init twin', twin)}; pretrained in-silico deletion "
                   f"{_said('random-init deletion', isd)}.")  # fmt: skip
        if leads := _pearson_lead_by_network(runs):
            order = sorted(leads, key=leads.get, reverse=True)
            out.append("  Joint − abs(Pearson) by network type: " + ", ".join(f"{n} {leads[n]:+.3f}" for n in order)
                       + " (STRING is an association network; Specific / Non-Specific are ChIP-seq; Lofgof is "
                       "perturbation-based).")  # fmt: skip
    if twin_ties and all(twin_ties):
        out.append("- The pretrained release adds nothing measurable here: under every protocol the joint model on "
                   "random-init weights does as well, and so does a random-init release's in-silico deletion. What "
                   "the learned models gain over abs(Pearson) they gain from the supervised network labels, not from "
                   "pretraining (issue 21 measures what pretraining compute changes).")  # fmt: skip
    return out


NETWORK_COLUMNS = ("joint", "genelink-gat", "random-init", "pearson", "trees", BEST_SHORTCUT)


def by_network(results: dict[str, list[dict]]) -> list[str]:
    """Where a method's lead comes from: the network types (STRING, Non-Specific, Specific, Lofgof) are different
    kinds of truth over the same cells (association, ChIP-seq of any cell type, ChIP-seq of this cell type, loss /
    gain of function)."""
    lines = ["| protocol | network | sets | " + " | ".join(NETWORK_COLUMNS) + " |",
             "|---|---|---:|" + "---:|" * len(NETWORK_COLUMNS)]  # fmt: skip
    for protocol, runs in results.items():
        for network in sorted({r["name"].split("/")[0] for r in runs}):
            sel = [r for r in runs if r["name"].split("/")[0] == network]
            cells = []
            for key in NETWORK_COLUMNS:
                values = [np.mean(v) for r in sel if (v := per_seed(r, key)) is not None]
                cells.append(_cell(float(np.mean(values)) if values else None))
            lines.append(f"| {protocol} | {network} | {len(sel)} | " + " | ".join(cells) + " |")
    return lines


def goals(results: dict[str, list[dict]]) -> list[str]:
    out = []
    for protocol in ("degree-aware", "cold-start", "held-out-genes"):
        runs = results.get(protocol) or []
        if not runs:
            out.append(f"- {protocol}: not run.")
            continue
        for a, b in (("joint", BEST_SHORTCUT), ("joint", "genelink-gat"), ("joint", "pearson"),
                     ("joint", "random-init")):  # fmt: skip
            stats = paired(runs, a, b)
            if stats is not None:
                interval = f"[{stats['low']:+.3f}, {stats['high']:+.3f}]"
                out.append(f"- {protocol}: {a} {WORDS[stats['verdict']]} {b}: ΔAUROC {stats['mean']:+.3f} "
                           f"{interval} over {stats['n_units']} matrices.")  # fmt: skip
        for key in SHORTCUTS:
            values = [np.mean(v) for run in runs if (v := per_seed(run, key)) is not None]
            if values:
                out.append(f"- {protocol}: {key} shortcut mean AUROC {np.mean(values):.3f} "
                           f"(range {min(values):.3f}–{max(values):.3f}; 0.5 = nothing to read).")  # fmt: skip
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
    from finetune.grn.config import GENELINK_RECIPES, GrnConfig
    from finetune.grn.pipeline import run_grn
    from finetune.grn.splits import HeldOutGenesTooSmall

    p = argparse.ArgumentParser(prog="scgrn bench grn", description=__doc__)
    p.add_argument("--release", required=True, type=Path)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="BEELINE data (default ../shared/data/beeline)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-grn"))
    p.add_argument("--results", type=Path, default=Path("bench/GRN_RESULTS.md"))
    p.add_argument(
        "--protocols", default="degree-aware,cold-start,held-out-genes,genelink", help=f"subset of {list(PROTOCOLS)}"
    )
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST.. (add seeds to earlier summaries)")
    p.add_argument("--budget", type=int, default=3, help="hyper-parameter configurations per learned method")
    p.add_argument("--isd-cells", type=int, default=200, help="cells for the in-silico deletion evidence")
    p.add_argument(
        "--evidence",
        default=",".join(TABLE_EVIDENCE),
        help="pair evidence of the learned models (default: the leak-free table's, fixed so its pieces compare)",
    )
    p.add_argument(
        "--baselines",
        default=",".join(TABLE_BASELINES),
        help="methods beside the joint model (default: the leak-free table's, fixed so its pieces compare)",
    )
    p.add_argument("--gnn", default="gcn")
    p.add_argument("--tree-method", default="grnboost2")
    p.add_argument(
        "--genelink-recipe",
        default="extended",
        choices=GENELINK_RECIPES,
        help="genelink-gat's training (default: extended, the recipe of every committed piece of the table)",
    )
    p.add_argument("--only", default="", help="comma-separated substrings of dataset names, e.g. 'TFs+500'")
    p.add_argument("--skip", default="", help="comma-separated substrings of dataset names to leave out")
    p.add_argument(
        "--from-summaries",
        type=Path,
        nargs="+",
        help="re-render --results from the summary.json of earlier runs (e.g. two runs on different datasets)",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--adapt-steps", type=int, default=0,
                   help="masked pretraining of the release (and its twin) on each set's cells before any readout "
                        "(issue 21's compute experiment on BEELINE; 0 = none, as in the leak-free table)")  # fmt: skip
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
    too_small: dict[str, list[tuple[str, int]]] = {}
    if args.from_summaries:
        wall = 0.0
        for path in args.from_summaries:
            for protocol, runs in json.loads(path.read_text()).items():
                if protocol == TOO_SMALL_KEY:
                    for small, entries in runs.items():
                        known = {n for n, _ in too_small.get(small, [])}
                        too_small.setdefault(small, []).extend((n, c) for n, c in entries if n not in known)
                    continue
                results[protocol] = merge_runs([*results.get(protocol, []), *runs])
                wall += sum(r["wall_s"] for r in runs)
        for protocol, small in too_small.items():  # too small for a seed of another piece: too small for the table
            names_small = {name for name, _ in small}
            results[protocol] = [r for r in results.get(protocol, []) if r["name"] not in names_small]
        names = ["/".join(f.parts[-3:]) for f in available]
        text = render(results, skipped_named, args, machine, wall, too_small, available=names)
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
                            tree_method=args.tree_method, genelink_recipe=args.genelink_recipe,
                            isd_cells=args.isd_cells, cache_dir=args.out / "cache",
                            evidence=[e for e in args.evidence.split(",") if e and e != "none"],
                            baselines=[b for b in args.baselines.split(",") if b],
                            workers=args.workers, adapt_steps=args.adapt_steps, progress=False)  # fmt: skip
            try:
                payload = run_grn(cfg)
            except HeldOutGenesTooSmall as err:
                too_small.setdefault(protocol, []).append((name, err.test_positives))
                print(f"{protocol} {name}: too small ({err.test_positives} test positives)", flush=True)
            else:
                wall = time.perf_counter() - t
                results[protocol].append({"name": name, "methods": payload["methods"], "wall_s": wall,
                                          "edges_method": payload["edges_method"]})  # fmt: skip
                joint = per_seed(results[protocol][-1], "joint")
                print(f"{protocol} {name}: {wall:.0f} s, joint AUROC {np.mean(joint):.3f}", flush=True)
            # after every protocol of every set, so a stopped run keeps all it finished (the largest set takes hours)
            text = render(results, skipped_named, args, machine, time.perf_counter() - start, too_small)
            atomic_write_text(args.results, text)
            summary = {**results, TOO_SMALL_KEY: too_small}
            # compact: the pieces of the BEELINE table are kept in git (bench/grn_runs/)
            atomic_write_text(args.out / "summary.json", json.dumps(summary, separators=(",", ":"), default=str))
    print(text)
    return 0
