"""`scgrn grn`: GRN inference with a pretrained release, on a BEELINE folder (evaluation) or the user's data.

Benchmark mode, per seed: split the dataset's edges (GENELink's protocol or a given split), train every learned
method on the train set with early stopping on the validation set, score the test set with every method, and
keep the metrics. The test set is read only to compute those metrics. Outputs: `metrics.json` (every method,
every seed), `results.md` (mean ± sd), `edges.tsv` (all TF → gene pairs ranked by the joint model, averaged over
the seeds' models), `roc.png` / `pr.png` (first seed's test set).

Inference mode: the prior's edges among the data's genes are the known edges; they are split into train and
validation, the joint model is trained, and every TF → gene pair that is not a known edge is ranked.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.io_utils import sha256_file
from finetune.errors import GrnInputError
from finetune.grn import baselines as bl
from finetune.grn.beeline import GrnDataset, load_benchmark
from finetune.grn.config import GrnConfig
from finetune.grn.embeddings import GeneEmbeddings, cached_gene_embeddings
from finetune.grn.methods import LearnedMethod, fit_method, learned_methods, score, zscore_genes
from finetune.grn.metrics import edge_metrics, summarize
from finetune.grn.plots import plot_curves
from finetune.grn.report import write_edges, write_metrics, write_results_md
from finetune.grn.splits import EdgeSplit, genelink_split, read_split, split_prior

POOLINGS = ("mean", "attention", "static")


def run_grn(cfg: GrnConfig) -> dict:
    """Run `scgrn grn` as configured; returns the metrics.json payload."""
    start = time.perf_counter()
    torch.set_num_threads(cfg.workers)
    cfg.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    if cfg.benchmark is not None:
        dataset = load_benchmark(Path(cfg.benchmark))
        expression_file, value_kind = _expression_file(Path(cfg.benchmark)), "log1p"
    else:
        from finetune.grn.user_data import load_user_dataset

        edges = cfg.truth if cfg.truth is not None else cfg.prior
        flag = "--truth" if cfg.truth is not None else "--prior"
        dataset = load_user_dataset(cfg.expression, edges, values=cfg.values, max_genes=cfg.max_genes, flag=flag)
        expression_file, value_kind = Path(cfg.expression), cfg.values
    timings["load"] = time.perf_counter() - start

    t = time.perf_counter()
    embeddings = _embeddings(cfg, dataset, expression_file, value_kind)
    timings["gene_embeddings"] = time.perf_counter() - t
    features = torch.from_numpy(zscore_genes(dataset.expression))  # (G, C)
    if cfg.benchmark is not None or cfg.truth is not None:
        payload = _benchmark(cfg, dataset, embeddings, features, timings)
    else:
        payload = _inference(cfg, dataset, embeddings, features, timings)
    payload["timings_s"]["total"] = time.perf_counter() - start
    write_metrics(cfg.out / "metrics.json", payload)
    return payload


def _expression_file(folder: Path) -> Path:
    for name in ("BL--ExpressionData.csv.gz", "BL--ExpressionData.csv"):
        if (folder / name).exists():
            return folder / name
    msg = f"{folder}: no BL--ExpressionData.csv[.gz]; this benchmark folder cannot be evaluated."
    raise GrnInputError(msg)


def _embeddings(cfg: GrnConfig, dataset: GrnDataset, expression_file: Path, value_kind: str) -> GeneEmbeddings:
    genes_key = hashlib.sha256("\n".join(dataset.genes).encode()).hexdigest()
    key = [sha256_file(Path(cfg.release) / "model.safetensors"), sha256_file(expression_file), genes_key, value_kind]
    return cached_gene_embeddings(
        cfg.cache_dir,
        key,
        release=cfg.release,
        genes=dataset.genes,
        expression_file=expression_file,
        value_kind=value_kind,
        min_coverage=cfg.min_vocab_coverage,
        progress=cfg.progress,
    )


def _unsupervised(cfg: GrnConfig, dataset: GrnDataset, timings: dict) -> dict[str, tuple[np.ndarray, str]]:
    """Score matrices (G, G) of the methods that do not train: computed once, read for every seed's test set."""
    out = {}
    t = time.perf_counter()
    for method in ("pearson", "spearman"):
        if method in cfg.baselines:
            out[method] = (bl.correlation_matrix(dataset.expression, method), f"|{method} r| over cells")
    timings["correlation"] = time.perf_counter() - t
    if "trees" in cfg.baselines and cfg.tree_method != "none":
        t = time.perf_counter()
        # canonical gene order: BEELINE's network types hold the same matrix with rows permuted, so one cached run
        # serves all of them
        order = np.argsort(np.asarray(dataset.genes, dtype=object), kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        matrix, label = bl.tree_importance_matrix(
            dataset.expression[order],
            [dataset.genes[i] for i in order],
            np.sort(rank[dataset.tf_index]),
            method=cfg.tree_method,
            workers=cfg.workers,
            cache_dir=cfg.cache_dir,
        )
        matrix = matrix[np.ix_(rank, rank)]  # back to the dataset's order
        out[label.split(" ")[0]] = (matrix, label)
        timings["trees"] = time.perf_counter() - t
    return out


def _split(cfg: GrnConfig, dataset: GrnDataset, seed: int) -> EdgeSplit:
    if cfg.split == "genelink":
        return genelink_split(dataset, seed, negatives=cfg.negatives)
    return read_split(Path(cfg.split), dataset)


def _candidates(dataset: GrnDataset) -> np.ndarray:
    """Every TF → gene pair except self loops: (P, 2)."""
    tfs = np.repeat(dataset.tf_index, dataset.n_genes)
    targets = np.tile(np.arange(dataset.n_genes), len(dataset.tf_index))
    keep = tfs != targets
    return np.stack([tfs[keep], targets[keep]], axis=1).astype(np.int64)


def _choose_pooling(cfg, method, features, embeddings, split, seed, record) -> tuple[str, object]:
    """The pooling with the best *validation* AUROC on the first seed (or the one asked for)."""
    choices = POOLINGS if cfg.pooling == "auto" else (cfg.pooling,)
    best = None
    for pooling in choices:
        result = fit_method(
            method, cfg, features, embeddings.get(pooling), embeddings.mapped, split.train, split.val, seed
        )
        record[pooling] = result.val_auroc
        if best is None or result.val_auroc > best[1].val_auroc:
            best = (pooling, result)
    return best


def _benchmark(cfg: GrnConfig, dataset: GrnDataset, embeddings: GeneEmbeddings, features, timings) -> dict:
    unsup = _unsupervised(cfg, dataset, timings)
    learned = learned_methods(cfg)
    joint = learned[0]
    methods: dict[str, dict] = {m.name: {"kind": "learned", "description": m.description, "seeds": []} for m in learned}
    if "degree" in cfg.baselines:
        methods["degree"] = {"kind": "heuristic", "description": "train out-degree × in-degree", "seeds": []}
    for name, (_, label) in unsup.items():
        methods[name] = {"kind": "unsupervised", "description": label, "seeds": []}
    candidates = _candidates(dataset)
    edge_weights = np.zeros(len(candidates), dtype=np.float64)
    pooling, pooling_val = None, {}
    curves = {}
    splits = []
    t_learn = time.perf_counter()
    from tqdm.auto import tqdm

    for seed in tqdm(range(cfg.seeds), desc=f"grn {dataset.name}", disable=not cfg.progress):
        split = _split(cfg, dataset, seed)
        splits.append(split.summary())
        test, labels = split.test, split.test[:, 2]
        for method in learned:
            if method is joint and pooling is None:
                pooling, result = _choose_pooling(cfg, method, features, embeddings, split, seed, pooling_val)
            else:
                emb = embeddings.get(pooling or "mean") if method.embedding else embeddings.mean
                result = fit_method(method, cfg, features, emb, embeddings.mapped, split.train, split.val, seed)
            scores = score(result, features, split.train, test)
            row = {
                "seed": seed,
                **edge_metrics(labels, scores),
                "val_auroc": result.val_auroc,
                "best_epoch": result.best_epoch,
                "epochs": result.epochs_run,
                "seconds": result.seconds,
            }
            methods[method.name]["seeds"].append(row)
            if seed == 0:
                curves[method.name] = (labels, scores)
            if method is joint:
                edge_weights += score(result, features, split.train, candidates)
        heuristics = dict(unsup)
        if "degree" in cfg.baselines:
            heuristics["degree"] = (bl.degree_matrix(split.train, dataset.n_genes), "")
        for name, (matrix, _) in heuristics.items():
            scores = bl.score_pairs(matrix, test)
            methods[name]["seeds"].append({"seed": seed, **edge_metrics(labels, scores)})
            if seed == 0:
                curves[name] = (labels, scores)
    timings["learned_and_scoring"] = time.perf_counter() - t_learn
    for m in methods.values():
        m["summary"] = summarize([{k: r[k] for k in ("auroc", "auprc", "auprc_ratio", "epr")} for r in m["seeds"]])

    n_edges = write_edges(cfg.out / "edges.tsv", dataset.genes, candidates, edge_weights / cfg.seeds)
    plot_curves(curves, cfg.out, f"{dataset.name} — test edges, seed 0")
    emb_report = embeddings.report()
    protocol = f"{cfg.split} split, {cfg.negatives} negatives" if cfg.split == "genelink" else f"split from {cfg.split}"
    intro = [
        f"dataset: {dataset.name} ({dataset.n_genes} genes × {dataset.n_cells} cells, {len(dataset.tf_index)} TFs, "
        f"{len(dataset.positives)} true edges)",
        f"protocol: {protocol}; {cfg.seeds} seeds; early stopping and pooling choice on validation only",
        f"release: {cfg.release} ({emb_report['family']}, {emb_report['n_mapped']}/{emb_report['n_genes']} genes in "
        f"its vocab; {emb_report['n_unmapped']} unmapped get a learned vector); pooling: {pooling} "
        f"(validation AUROC {', '.join(f'{k} {v:.3f}' for k, v in pooling_val.items())})",
        f"test set (seed 0): {splits[0]['test']['edges']} edges, "
        f"positive rate {splits[0]['test']['positive_rate']:.3f}",
    ]
    write_results_md(
        cfg.out / "results.md",
        f"scgrn grn — {dataset.name}",
        intro,
        methods,
        [
            f"edges.tsv: {n_edges} TF → gene pairs ranked by {joint.name} (mean over seeds)",
            f"wall time {sum(timings.values()):.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
        ],
    )
    return {
        "format": "scgrn-grn-metrics",
        "version": 1,
        "mode": "benchmark",
        "dataset": {
            "name": dataset.name,
            "network": dataset.network,
            "n_genes": dataset.n_genes,
            "n_cells": dataset.n_cells,
            "n_tfs": len(dataset.tf_index),
            "n_edges": len(dataset.positives),
            "source": str(dataset.source),
        },
        "config": cfg.to_dict(),
        "protocol": protocol,
        "pooling": {"chosen": pooling, "validation_auroc": pooling_val},
        "embeddings": emb_report,
        "splits": splits,
        "methods": methods,
        "timings_s": timings,
    }


def _inference(cfg: GrnConfig, dataset: GrnDataset, embeddings: GeneEmbeddings, features, timings) -> dict:
    joint: LearnedMethod = learned_methods(cfg)[0]
    candidates = _candidates(dataset)
    known = {tuple(e) for e in dataset.positives.tolist()}
    new = np.array([tuple(p) not in known for p in candidates.tolist()])
    weights = np.zeros(len(candidates))
    runs, pooling, pooling_val = [], None, {}
    t = time.perf_counter()
    for seed in range(cfg.seeds):
        split = split_prior(dataset, seed)
        if pooling is None:
            pooling, result = _choose_pooling(cfg, joint, features, embeddings, split, seed, pooling_val)
        else:
            result = fit_method(
                joint, cfg, features, embeddings.get(pooling), embeddings.mapped, split.train, split.val, seed
            )
        val_scores = score(result, features, split.train, split.val)
        runs.append({"seed": seed, **edge_metrics(split.val[:, 2], val_scores), "best_epoch": result.best_epoch})
        weights += score(result, features, split.train, candidates)
    timings["learned"] = time.perf_counter() - t
    n_edges = write_edges(cfg.out / "edges.tsv", dataset.genes, candidates[new], weights[new] / cfg.seeds)
    known_pairs = candidates[~new]
    write_edges(cfg.out / "known_edges.tsv", dataset.genes, known_pairs, weights[~new] / cfg.seeds)
    summary = summarize([{k: r[k] for k in ("auroc", "auprc", "auprc_ratio", "epr")} for r in runs])
    methods = {joint.name: {"kind": "learned", "description": joint.description, "seeds": runs, "summary": summary}}
    emb_report = embeddings.report()
    write_results_md(
        cfg.out / "results.md",
        f"scgrn grn — {dataset.name} with prior {Path(cfg.prior).name}",
        [
            f"{dataset.n_genes} genes × {dataset.n_cells} cells; {len(dataset.tf_index)} TFs; "
            f"{len(dataset.positives)} prior edges among them",
            "metrics below are on held-out *prior* edges (validation, per seed) against random TF → gene pairs",
            f"release {cfg.release}: {emb_report['n_mapped']}/{emb_report['n_genes']} genes in its vocab; "
            f"pooling {pooling}",
        ],
        methods,
        [f"edges.tsv: {n_edges} new TF → gene edges ranked (known prior edges in known_edges.tsv)"],
    )
    return {
        "format": "scgrn-grn-metrics",
        "version": 1,
        "mode": "inference",
        "dataset": {
            "name": dataset.name,
            "n_genes": dataset.n_genes,
            "n_cells": dataset.n_cells,
            "n_tfs": len(dataset.tf_index),
            "n_prior_edges": len(dataset.positives),
        },
        "config": cfg.to_dict(),
        "pooling": {"chosen": pooling, "validation_auroc": pooling_val},
        "embeddings": emb_report,
        "methods": methods,
        "timings_s": timings,
        "new_edges": n_edges,
    }
