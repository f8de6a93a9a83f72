"""eval.json (everything), eval.md (the tables, baselines side by side, with a verdict per section) and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from data_prep.io_utils import atomic_write_text
from finetune.evaluation.cells import plot_cell_maps
from finetune.grn.plots import _save_atomic


def _f(x, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _masked_md(s: dict) -> list[str]:
    native = s["native_metric"]
    extra = ["cross_entropy", "bin_accuracy"] if native == "cross_entropy" else [native]
    cols = ["mse", "pearson", "spearman", *extra]
    rows = [[name] + [_f(m.get(c)) for c in cols] for name, m in s["predictors"].items()]
    best = min((m["mse"], n) for n, m in s["predictors"].items() if n not in ("model", "random-init"))
    model = s["predictors"]["model"]["mse"]
    verdict = "beats" if model < best[0] else "does not beat"
    ablation = []
    if "random-init" in s["predictors"]:
        ours, theirs = s["predictors"]["model"][native], s["predictors"]["random-init"][native]
        word = "beats" if ours < theirs else "does not beat"
        ablation = [f"It {word} the random-init model on its own objective ({native}): {ours:.3f} vs {theirs:.3f}.", ""]
    return [
        "## 1. Masked-value prediction",
        "",
        f"{s['n_masked']:,} masked expressed genes ({s['mask_prob']:.0%} of each cell's genes) in {s['n_cells']:,} "
        f"held-out cells; baselines fitted on {s['reference_cells']:,} other cells. Target: {s['target']}.",
        "",
        *_table(["predictor", *cols], rows),
        "",
        f"The model {verdict} the best baseline ({best[1]}) by MSE: {model:.3f} vs {best[0]:.3f}.",
        "",
        *ablation,
    ]


def _cells_md(s: dict) -> list[str]:
    rows = [
        [name, _f(m["knn_accuracy"]), _f(m["knn_accuracy_sd"]), _f(m["knn_macro_f1"]), _f(m["ari"]), _f(m["nmi"])]
        for name, m in s["metrics"].items()
    ]
    m = s["metrics"]
    pca = m["PCA (log-normalized)"]
    verdict = "beats" if m["pretrained"]["knn_accuracy"] > pca["knn_accuracy"] else "does not beat"
    return [
        "## 2. Cell embeddings vs cell-type labels",
        "",
        f"k-NN (k={s['k']}, {s['folds']}-fold stratified cross-validation) and k-means with as many clusters as cell "
        f"types (ARI, NMI). Map: {s['map']} (cell_map.png).",
        "",
        *_table(["embedding", "kNN accuracy", "sd", "kNN macro-F1", "ARI", "NMI"], rows),
        "",
        f"The pretrained embedding {verdict} PCA by k-NN accuracy "
        f"({m['pretrained']['knn_accuracy']:.3f} vs {pca['knn_accuracy']:.3f}).",
        "",
    ]


def _genes_md(s: dict) -> list[str]:
    out = [
        "## 3. Gene embeddings vs known regulation",
        "",
        f"AUROC of cosine similarity separating known regulator→target pairs from random pairs of the same genes "
        f"(degree-matched), over the {s['n_genes']:,} vocabulary genes expressed in ≥ {s['min_cells']} cells. "
        "Expression correlation = Pearson r across the cells. 0.5 = no separation.",
        "",
    ]
    for prior, r in s["priors"].items():
        if "skipped" in r:
            out += [f"- {prior}: skipped ({r['skipped']})", ""]
            continue
        pairs = r["pairs"]
        rows = [
            [name, _f(m["auroc"]), _f(m["auroc_abs"]), _f(m["mean_cosine_pos"]), _f(m["mean_cosine_neg"])]
            for name, m in r["methods"].items()
        ]
        out += [
            f"**{prior}**: {pairs['n_pos']:,} known pairs among these genes (of {pairs['n_prior_edges']:,} edges), "
            f"{pairs['n_neg']:,} random pairs.",
            "",
            *_table(["gene vectors", "AUROC", "AUROC of abs", "mean cos (known)", "mean cos (random)"], rows),
            "",
        ]
    return out


def _transfer_md(s: dict, seen: str) -> list[str]:
    sp = s["split"]
    rows = [[name, _f(m["macro_f1"]), _f(m["accuracy"])] for name, m in s["methods"].items()]
    m = s["methods"]
    best_pre = max(v["macro_f1"] for k, v in m.items() if k.startswith("pretrained"))
    pca = m["logistic regression on PCA"]["macro_f1"]
    return [
        "## 4. Transfer: cell-type classification",
        "",
        f"Split: {sp['kind']}, {sp['train_cells']:,} train / {sp['test_cells']:,} test cells "
        f"(test fraction {sp['test_fraction']}); {len(s['classes'])} classes"
        + (f", dropped (fewer than 2 cells): {sp['dropped_classes']}" if sp["dropped_classes"] else "")
        + f". Finetune: {s['finetune']['epochs']} epochs, AdamW lr {s['finetune']['lr']} (head "
        f"{s['finetune']['head_lr']}). These cells were in the pretraining corpus: {seen}.",
        "",
        *_table(["method", "macro-F1", "accuracy"], rows),
        "",
        f"Best pretrained method {'beats' if best_pre > pca else 'does not beat'} logistic regression on PCA by "
        f"macro-F1 ({best_pre:.3f} vs {pca:.3f}).",
        "",
    ]


def render_markdown(payload: dict) -> str:
    lines = [
        "# scgrn eval",
        "",
        f"Release `{payload['release']}` ({payload['family']}, sha256 {payload['release_sha256'][:12]}…) on "
        f"{payload['data']}: {payload['n_cells']:,} cells, {payload['n_labelled']:,} labelled "
        f"({payload['n_cell_types']} types, column {payload['label']!r}). Seed {payload['seed']}. "
        f"Wall time {payload['seconds']['total']:.0f} s.",
        "",
    ]
    sections = payload["sections"]
    if "masked" in sections:
        lines += _masked_md(sections["masked"])
    if "cells" in sections:
        lines += _cells_md(sections["cells"])
    if "genes" in sections:
        lines += _genes_md(sections["genes"])
    if "transfer" in sections:
        lines += _transfer_md(sections["transfer"], payload["seen_in_pretraining"])
    for name, reason in payload["skipped"].items():
        lines += [f"Section {name} skipped: {reason}.", ""]
    return "\n".join(lines)


def plot_masked(points: dict[str, np.ndarray], path: Path) -> Path:
    """Predicted vs true x at masked positions, one panel per predictor (hexbin: many points overlap)."""
    names = [k for k in points if k != "truth"]
    figure = Figure(figsize=(4.2 * len(names), 4.0), dpi=120, layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    truth = points["truth"]
    hi = float(max(truth.max(initial=1.0), *(points[n].max(initial=1.0) for n in names)))
    for ax, name in zip(axes, names, strict=True):
        ax.hexbin(truth, points[name], gridsize=40, bins="log", cmap="viridis", extent=(0, hi, 0, hi))
        ax.plot([0, hi], [0, hi], color="white", lw=0.8)
        r = np.corrcoef(truth, points[name])[0, 1] if points[name].std() > 0 else 0.0
        ax.set_title(f"{name} (r = {r:.2f})")
        ax.set_xlabel("true log1p(CP10k)")
        ax.set_ylabel("predicted")
    figure.suptitle("Masked-value prediction on held-out cells")
    _save_atomic(figure, path)
    return path


def write_report(out: Path, payload: dict, plots: dict) -> None:
    out = Path(out)
    files = []
    if "masked" in plots:
        files.append(plot_masked(plots["masked"], out / "masked_values.png").name)
    if "cells" in plots:
        c = plots["cells"]
        plot_cell_maps(c["maps"], c["labels"], out / "cell_map.png", title="Cell embeddings", method=c["method"])
        files.append("cell_map.png")
    payload["plots"] = files
    atomic_write_text(out / "eval.json", json.dumps(payload, indent=1, default=_json_default))
    atomic_write_text(out / "eval.md", render_markdown(payload))
    for name in ("eval.json", "eval.md"):
        (out / name).chmod(0o644)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    msg = f"cannot write {type(value).__name__} to eval.json"
    raise TypeError(msg)
