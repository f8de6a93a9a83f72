"""What `scgrn grn` writes: edges.tsv (BEELINE's ranked format), metrics.json, results.md and the curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.io_utils import atomic_write_text, publish

METRICS = ("auroc", "auprc", "auprc_ratio", "epr")


def write_edges(path: Path, genes: list[str], pairs: np.ndarray, weights: np.ndarray) -> int:
    """Gene1, Gene2, EdgeWeight, highest weight first (BEELINE's rankedEdges format, tab-separated)."""
    order = np.argsort(-weights, kind="stable")
    names = np.asarray(genes, dtype=object)
    table = pd.DataFrame(
        {"Gene1": names[pairs[order, 0]], "Gene2": names[pairs[order, 1]], "EdgeWeight": weights[order]}
    )
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, sep="\t", index=False, float_format="%.10g")  # no ties from rounding
    publish(tmp, path)
    return len(table)


def write_metrics(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    msg = f"cannot write {type(value).__name__} to metrics.json"
    raise TypeError(msg)


def fmt(summary: dict, metric: str) -> str:
    s = summary.get(metric)
    if not s:
        return "—"
    return f"{s['mean']:.3f} ± {s['sd']:.3f}" if s.get("n", 1) > 1 else f"{s['mean']:.3f}"


def results_table(methods: dict[str, dict]) -> str:
    """Markdown table: one row per method, best validation AUROC first; mean ± sd over seeds of every metric. AUROC
    is on the test pairs; the precision columns are at natural density (natural_density.py), so they
    describe the top of edges.tsv rather than a 50 %-positive test set."""
    lines = [
        "| method | kind | validation AUROC | AUROC | AUPRC ratio (natural density) | EPR (natural density) "
        "| per-TF AUROC |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    order = sorted(methods, key=lambda n: -methods[n]["summary"].get("val_auroc", {}).get("mean", -1.0))
    for name in order:
        m = methods[name]
        per_tf = [r["tf_macro_auroc"] for r in m["seeds"] if r.get("tf_macro_auroc") is not None]
        per_tf_cell = f"{np.mean(per_tf):.3f}" if per_tf else "—"
        cells = [fmt(m["summary"], k) for k in ("val_auroc", "auroc", "density_auprc_ratio", "density_epr")]
        lines.append(f"| {name} | {m['kind']} | " + " | ".join(cells) + f" | {per_tf_cell} |")
    return "\n".join(lines)


def write_results(
    path: Path, title: str, intro: list[str], methods: dict[str, dict], verdict: list[str], notes: list[str]
) -> None:
    """results.md: what was run, the verdict in sentences, then the table (also printed by the CLI)."""
    text = f"# {title}\n\n" + "\n".join(f"- {line}" for line in intro) + "\n\n"
    text += "## Verdict\n\n" + "\n".join(f"- {line}" for line in verdict) + "\n\n"
    text += results_table(methods) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {line}" for line in notes) + "\n"
    atomic_write_text(path, text)
