"""`scgrn bench eval`: does pretraining beat the baselines at this scale? Exceiver's three checks, on a held-out file.

For each CPU-sized config (scBERT `scbert-grn`, Exceiver `exceiver-cpu`): pretrain for a fixed step budget on two of
the three real count files in ../shared/data/counts (one process, ZeRO-2), export the release, and run `scgrn eval` on
the third file, which no model saw: masked values, cell embeddings, gene embeddings against TRRUST / DoRothEA, and
transfer (cell-type classification). Writes bench/EVAL_RESULTS.md with every table, the budget, the wall times and a
verdict per check computed from the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from safetensors.numpy import load_file

from data_prep.io_utils import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CONFIGS = {
    "scbert-grn": "launch/configs/pretrain/scbert-grn.yaml",
    "exceiver-cpu": "launch/configs/pretrain/exceiver-cpu.yaml",
}


def _cli(*args, log: Path) -> float:
    """Run `scgrn ARGS` as a subprocess (output to `log`); return its wall time; raise with the log tail on failure."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "launch.cli", *map(str, args)], cwd=REPO, stdout=fh,
                              stderr=subprocess.STDOUT, check=False)  # fmt: skip
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        msg = f"scgrn {' '.join(map(str, args))} exited {proc.returncode}; log {log}:\n{tail}"
        raise RuntimeError(msg)
    return time.perf_counter() - start


def _f(x) -> str:
    return "—" if x is None else f"{x:.3f}"


MARGIN = 0.01  # differences below this (MSE, AUROC, F1, accuracy) are called ties: one seed, one split


def _beats(ours: float, theirs: float, *, lower_is_better: bool = False) -> str:
    diff = (theirs - ours) if lower_is_better else (ours - theirs)
    if abs(diff) < MARGIN:
        return f"**ties with** (|difference| < {MARGIN})"
    return "**beats**" if diff > 0 else "**does not beat**"


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render(runs: dict, args, meta: dict) -> str:
    lines = [
        "# Evaluation of pretrained releases (scgrn bench eval)",
        "",
        f"Command: `{args.command}`  ",
        f"Machine: {meta['machine']}; date {meta['date']}; total wall time {meta['total_s'] / 60:.1f} min.",
        "",
        f"**Pretraining data**: {', '.join(meta['train_files'])} ({meta['train_cells']:,} cells).  ",
        f"**Held-out data** (never seen in pretraining): {meta['holdout']} ({meta['holdout_cells']:,} cells, "
        f"{meta['holdout_types']} cell types, column `cell_type`).  ",
        f"**Budget**: {args.steps} optimizer steps × 16 cells per step for every config (one process, ZeRO-2, fp32, "
        "2 CPU cores), i.e. "
        f"{args.steps * 16:,} cells ≈ {args.steps * 16 / meta['train_cells']:.1f} passes over the training cells.",
        "",
        _row(["config", "family", "parameters", "steps", "pretrain wall", "eval wall", "final train / val loss"]),
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        losses = r["summary"].get("final_losses") or {}
        lines.append(_row([name, r["eval"]["family"], f"{r['params']:,}", r["summary"].get("steps"),
                           f"{r['pretrain_s'] / 60:.1f} min", f"{r['eval_s'] / 60:.1f} min",
                           f"{_f(losses.get('train'))} / {_f(losses.get('val'))}"]))  # fmt: skip
    lines += ["", "## 1. Masked-value prediction (held-out file, masked expressed genes)", ""]
    lines += [_row(["config", "predictor", "MSE", "Pearson r", "Spearman", "native loss", "bin accuracy"]),
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    verdicts = []
    for name, r in runs.items():
        s = r["eval"]["sections"]["masked"]
        native = s["native_metric"]
        for pred, m in s["predictors"].items():
            lines.append(_row([name, pred, _f(m["mse"]), _f(m["pearson"]), _f(m["spearman"]), _f(m.get(native)),
                               _f(m.get("bin_accuracy"))]))  # fmt: skip
        p = s["predictors"]
        best = min(p["per-gene mean"]["mse"], p["library-scaled mean"]["mse"])
        verdicts.append(
            f"- masked values, {name}: model MSE {p['model']['mse']:.3f} vs best baseline {best:.3f} → "
            + _beats(p["model"]["mse"], best, lower_is_better=True)
            + " the baselines"
        )
        if "cross_entropy" in p["model"]:
            ce, ce_base = p["model"]["cross_entropy"], p["per-gene mean"]["cross_entropy"]
            acc, acc_base = p["model"]["bin_accuracy"], max(p["per-gene mean"]["bin_accuracy"],
                                                            p["library-scaled mean"]["bin_accuracy"])  # fmt: skip
            verdicts.append(
                f"- masked values, {name}, its own task (bins): cross-entropy {ce:.3f} vs per-gene bin distribution "
                f"{ce_base:.3f} → {_beats(ce, ce_base, lower_is_better=True)}; bin accuracy {acc:.3f} vs best "
                f"baseline {acc_base:.3f} → {_beats(acc, acc_base)}"
            )
    lines += ["", "Native loss: cross-entropy over bins (scBERT), NB negative log-likelihood (Exceiver, no "
              "baseline has one). Baselines fitted on the other half of the held-out cells.", ""]  # fmt: skip
    lines += [
        "## 2. Cell embeddings vs cell-type labels",
        "",
        _row(["config", "embedding", "kNN accuracy", "kNN macro-F1", "ARI", "NMI"]),
        "|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        metrics = r["eval"]["sections"]["cells"]["metrics"]
        for emb, m in metrics.items():
            lines.append(_row([name, emb, _f(m["knn_accuracy"]), _f(m["knn_macro_f1"]), _f(m["ari"]), _f(m["nmi"])]))
        pre, pca = metrics["pretrained"]["knn_accuracy"], metrics["PCA (log-normalized)"]["knn_accuracy"]
        verdicts.append(
            f"- cell embeddings, {name}: kNN accuracy {pre:.3f} vs PCA {pca:.3f} → " + _beats(pre, pca) + " PCA"
        )
    lines += ["", "## 3. Gene embeddings: known regulator→target pairs vs degree-matched random pairs (AUROC)", ""]
    lines += [_row(["config", "prior", "known pairs", "static embedding", "pretrained contextual",
                    "random-init contextual", "expression correlation"]), "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in runs.items():
        for prior, rep in r["eval"]["sections"]["genes"]["priors"].items():
            if "skipped" in rep:
                lines.append(_row([name, prior, "skipped", "", "", "", ""]))
                continue
            m = rep["methods"]
            best_model = max(m["static (token embedding)"]["auroc"], m["pretrained contextual"]["auroc"])
            lines.append(_row([name, prior, f"{rep['pairs']['n_pos']:,}", _f(m["static (token embedding)"]["auroc"]),
                               _f(m["pretrained contextual"]["auroc"]), _f(m["random-init contextual"]["auroc"]),
                               _f(m["expression-correlation"]["auroc"])]))  # fmt: skip
            corr = m["expression-correlation"]["auroc"]
            verdicts.append(
                f"- gene embeddings, {name}, {prior}: best pretrained AUROC {best_model:.3f} vs expression "
                f"correlation {corr:.3f} → " + _beats(best_model, corr)
            )
    lines += ["", "## 4. Transfer: cell-type classification on the held-out file (macro-F1)", ""]
    any_run = next(iter(runs.values()))["eval"]["sections"]["transfer"]
    sp = any_run["split"]
    lines += [f"Split: {sp['kind']}, {sp['train_cells']} train / {sp['test_cells']} test cells; "
              f"finetune {any_run['finetune']['epochs']} epochs, AdamW lr {any_run['finetune']['lr']} "
              f"(head {any_run['finetune']['head_lr']}).", ""]  # fmt: skip
    methods = list(any_run["methods"])
    lines += [_row(["config", *methods]), "|---|" + "---|" * len(methods)]
    for name, r in runs.items():
        m = r["eval"]["sections"]["transfer"]["methods"]
        lines.append(_row([name, *(_f(m[k]["macro_f1"]) for k in methods)]))
        pre = max(v["macro_f1"] for k, v in m.items() if k.startswith("pretrained"))
        rnd = max(v["macro_f1"] for k, v in m.items() if k.startswith("random-init"))
        pca = m["logistic regression on PCA"]["macro_f1"]
        verdicts.append(f"- transfer, {name}: best pretrained macro-F1 {pre:.3f} vs random init {rnd:.3f} vs PCA "
                        f"logistic regression {pca:.3f} → " + _beats(pre, max(rnd, pca)) + " both")  # fmt: skip
    n_beats = sum("**beats**" in v for v in verdicts)
    lines += ["", "## Verdicts (computed from the tables above)", "", *verdicts, "",
              f"**Reading**: {n_beats} of {len(verdicts)} comparisons favour the pretrained model, at this scale "
              "(≈3 M parameters, a few thousand cells, minutes of CPU; scBERT and Exceiver were pretrained on "
              "millions of cells). The same command on a larger release says whether it learned more.", "",
              "Per-config eval reports (eval.md, eval.json, cell_map.png, masked_values.png) are under "
              f"`{args.work}/eval-<config>/`.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scgrn bench eval", description=__doc__)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=1000, help="pretraining budget per config (16 cells per step)")
    p.add_argument("--holdout", default="human_retina_cellxgene_1k.h5ad", help="count file kept out of pretraining")
    p.add_argument("--counts", type=Path, default=SHARED / "counts")
    p.add_argument("--priors", type=Path, default=SHARED / "priors")
    p.add_argument("--work", type=Path, default=Path("runs/bench-eval"))
    p.add_argument("--results", type=Path, default=Path("bench/EVAL_RESULTS.md"))
    p.add_argument("--finetune-epochs", type=int, default=3)
    args = p.parse_args(argv)
    args.command = "scgrn bench eval " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    files = sorted(args.counts.glob("*.h5ad"))
    holdout = args.counts / args.holdout
    if holdout not in files:
        print(
            f"scgrn bench eval: error: --holdout {args.holdout} is not one of {[f.name for f in files]}",
            file=sys.stderr,
        )
        return 2
    train_files = [f for f in files if f != holdout]
    species = "mouse" if "mouse" in holdout.name else "human"
    priors = [args.priors / f"trrust_v2_{species}.tsv", args.priors / f"dorothea_{species}_nonacademic.tsv.gz"]
    work = args.work if args.work.is_absolute() else REPO / args.work
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    corpus = work / "corpus"
    if not (corpus / "manifest.json").exists():
        _cli("shard", *train_files, "--out", corpus, "--obs-columns", "cell_type", "--quiet", log=work / "shard.log")
    manifest = json.loads((corpus / "manifest.json").read_text())
    runs = {}
    for name in [c for c in args.configs.split(",") if c]:
        run_dir, release, out = work / f"run-{name}", work / f"release-{name}", work / f"eval-{name}"
        print(f"[bench eval] {name}: pretraining {args.steps} steps", flush=True)
        overrides = {
            "data.corpus": corpus,
            "train.out_dir": run_dir,
            "train.steps": args.steps,
            "train.save_every": args.steps,
            "train.eval_every": max(args.steps // 4, 1),
            "train.warmup_steps": min(100, args.steps // 10),
            "train.resume": "none",
        }
        settings = [f"{k}={v}" for k, v in overrides.items()]
        pretrain_s = _cli("pretrain", "--config", CONFIGS[name], *settings, log=work / f"pretrain-{name}.log")
        _cli("export", run_dir, "--out", release, "--no-eval", log=work / f"export-{name}.log")
        print(f"[bench eval] {name}: evaluating on {holdout.name}", flush=True)
        eval_s = _cli("eval", release, "--data", holdout, "--label", "cell_type", *(a for pr in priors for a in
                      ("--prior", pr)), "--out", out, "--finetune-epochs", args.finetune_epochs, "--quiet",
                      log=work / f"eval-{name}.log")  # fmt: skip
        params = sum(v.size for v in load_file(str(release / "model.safetensors")).values())
        runs[name] = {
            "eval": json.loads((out / "eval.json").read_text()),
            "summary": json.loads((release / "training_summary.json").read_text()),
            "params": params,
            "pretrain_s": pretrain_s,
            "eval_s": eval_s,
        }
    first = next(iter(runs.values()))["eval"]
    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''} CPU-only, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "total_s": time.perf_counter() - start,
        "train_files": [f.name for f in train_files],
        "train_cells": manifest["totals"]["n_cells"],
        "holdout": holdout.name,
        "holdout_cells": first["n_cells"],
        "holdout_types": first["n_cell_types"],
    }
    atomic_write_text(work / "bench_runs.json", json.dumps({"runs": runs, "meta": meta}, indent=1))
    text = render(runs, args, meta)
    atomic_write_text(args.results, text)
    args.results.chmod(0o644)
    print(text)
    return 0
