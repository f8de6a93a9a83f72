"""`scgrn grn`, top to bottom: load → evidence → (per seed) split → fit and choose on validation → score → report.

Three modes share the loop:
- benchmark (`--benchmark DIR`): a BEELINE folder's ground truth, split per seed (GENELink's protocol, degree-aware
  negatives, cold-start TFs or a split file);
- evaluation on the user's cells (`--expression X --truth EDGES`): the same, with the user's ground truth;
- inference (`--expression X --prior P`): the prior's edges are split per seed with degree-matched negatives; every
  method is scored on the held-out prior edges, and every TF → gene pair that is not a prior edge is ranked by the
  method with the best *validation* AUROC (or `--method`), which the output names.

Every method (the joint model, its ablations, the learned and unsupervised baselines) is run on the same splits;
every choice (hyper-parameters, pooling, epochs) is made per seed on that seed's validation set, and the test set is
read only to compute metrics. Outputs: `metrics.json`, `results.md`, `edges.tsv`, `roc.png` / `pr.png`. They are
written at the end, so a run that fails leaves nothing under `--out` that looks finished (only the cache).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from finetune.errors import GrnInputError
from finetune.grn import baselines as bl
from finetune.grn import splits, trees
from finetune.grn.adaptation import AdaptConfig
from finetune.grn.attention_readout import has_gene_attention, release_attention_evidence
from finetune.grn.beeline import GrnDataset, load_benchmark
from finetune.grn.choice import verdicts, winner
from finetune.grn.config import SHORTCUT_BASELINES, SPLITS, GrnConfig
from finetune.grn.embeddings import cached_gene_embeddings
from finetune.grn.evidence import (
    DeletionConfig,
    evidence_tensor,
    partial_correlation_matrix,
    release_deletion_evidence,
    tf_regression_matrix,
)
from finetune.grn.fit_pool import FitPool, submission_order
from finetune.grn.methods import GrnInputs, candidate_configs, choose, learned_methods, scorer, zscore_genes
from finetune.grn.metrics import edge_metrics, summarize
from finetune.grn.natural_density import candidate_index_of, natural_density_metrics, natural_density_set
from finetune.grn.plots import plot_curves
from finetune.grn.probe import ProbeConfig, predicts_values, release_probe_evidence
from finetune.grn.release_inputs import MODEL_KINDS, ReleaseInputs, open_release_inputs
from finetune.grn.report import write_edges, write_metrics, write_results
from finetune.grn.shortcuts import SHORTCUT_DESCRIPTIONS, shortcut_matrix
from finetune.grn.splits import EdgeSplit, genelink_split, read_split, repair_reverse

log = logging.getLogger(__name__)
SUMMARY_METRICS = ("auroc", "auprc", "auprc_ratio", "epr", "val_auroc", "density_auprc_ratio", "density_epr")


def run_grn(cfg: GrnConfig) -> dict:
    """Run `scgrn grn` as configured; returns the metrics.json payload."""
    return run_grn_detailed(cfg)[0]


def run_grn_detailed(cfg: GrnConfig) -> tuple[dict, Evaluation, GrnDataset]:
    """`run_grn`, also returning every method's scores of every candidate pair (for benchmarks that score them
    against a truth the run never saw, e.g. the simulator's held-out edges)."""
    start = time.perf_counter()
    torch.set_num_threads(cfg.workers)
    timings: dict[str, float] = {}
    dataset, expression_file, value_kind = load(cfg)
    timings["load"] = time.perf_counter() - start
    inputs, unsupervised = gather_evidence(cfg, dataset, expression_file, value_kind, timings)
    evaluation = evaluate(cfg, dataset, inputs, unsupervised, timings)
    payload = report(cfg, dataset, inputs, evaluation, timings)
    payload["timings_s"]["total"] = time.perf_counter() - start
    write_metrics(cfg.out / "metrics.json", payload)  # last: its presence means the run finished
    return payload, evaluation, dataset


# ---------------------------------------------------------------------------------------------------------------
# 1. load


def load(cfg: GrnConfig) -> tuple[GrnDataset, Path, str]:
    if cfg.benchmark is not None:
        return load_benchmark(Path(cfg.benchmark)), _expression_file(Path(cfg.benchmark)), "log1p"
    from finetune.grn.user_data import load_user_dataset

    edges = cfg.truth if cfg.truth is not None else cfg.prior
    flag = "--truth" if cfg.truth is not None else "--prior"
    dataset = load_user_dataset(cfg.expression, edges, values=cfg.values, max_genes=cfg.max_genes, flag=flag)
    return dataset, Path(cfg.expression), cfg.values


def _expression_file(folder: Path) -> Path:
    for name in ("BL--ExpressionData.csv.gz", "BL--ExpressionData.csv"):
        if (folder / name).exists():
            return folder / name
    msg = f"{folder}: no BL--ExpressionData.csv[.gz]; this benchmark folder cannot be evaluated."
    raise GrnInputError(msg)


# ---------------------------------------------------------------------------------------------------------------
# 2. evidence: per-gene vectors and per-pair scores, computed once per dataset (and cached)


# evidence names (--evidence) that are readouts of the release, computed for each model kind
RELEASE_READOUTS = ("isd", "probe", "attention")


def gather_evidence(
    cfg: GrnConfig, dataset: GrnDataset, expression_file: Path, value_kind: str, timings: dict
) -> tuple[GrnInputs, dict[str, tuple[np.ndarray, str]]]:
    """The learned methods' inputs and the unsupervised score matrices {name: ((G, G), description)}."""
    wanted = set(cfg.baselines)
    matrices: dict[str, tuple[np.ndarray, str]] = {}
    t = time.perf_counter()
    for method in ("pearson", "spearman"):
        if method in wanted or (method == "pearson" and "pearson" in cfg.evidence):
            matrices[method] = (bl.correlation_matrix(dataset.expression, method), f"|{method} r| over cells")
    if "regression" in wanted or "regression" in cfg.evidence:
        matrices["regression"] = (
            tf_regression_matrix(dataset.expression, dataset.tf_index),
            "|t| of the TF in a ridge regression of the target on all TFs",
        )
    if "partial" in wanted or "partial" in cfg.evidence:
        matrices["partial"] = (
            partial_correlation_matrix(dataset.expression),
            "|partial correlation| (Ledoit–Wolf shrunk precision)",
        )
    timings["correlation"] = time.perf_counter() - t
    if ("trees" in wanted or "trees" in cfg.evidence) and cfg.tree_method != "none":
        t = time.perf_counter()
        matrix, label = _trees(cfg, dataset)
        matrices["trees"] = (matrix, label)
        timings["trees"] = time.perf_counter() - t

    # the release: loaded, hashed and (when a readout is not cached) sharded once for every readout below
    kinds = [k for k in MODEL_KINDS if k == "pretrained" or "random-init" in wanted]
    with open_release_inputs(
        cfg.release,
        dataset.genes,
        expression_file,
        value_kind=value_kind,
        min_coverage=cfg.min_vocab_coverage,
        adapt=AdaptConfig(steps=cfg.adapt_steps),
        cache_dir=cfg.cache_dir,
        progress=cfg.progress,
    ) as rel:
        if cfg.adapt_steps:
            t = time.perf_counter()
            for kind in MODEL_KINDS:
                rel.model(kind)  # adapted (or loaded from the cache) once, before every readout
            timings["adaptation"] = time.perf_counter() - t
        t = time.perf_counter()
        embeddings = {kind: cached_gene_embeddings(rel, kind, cfg.cache_dir, progress=cfg.progress) for kind in kinds}
        timings["gene_embeddings"] = time.perf_counter() - t
        readouts = list(RELEASE_READOUTS)
        left_out = {
            "attention": not has_gene_attention(rel.model("pretrained")) and "has no self-attention over genes",
            "probe": not predicts_values(rel.model("pretrained")) and "predicts gene tokens, not values",
        }
        for readout, why in left_out.items():
            if not why:
                continue
            readouts.remove(readout)
            if readout in cfg.evidence or any(readout in b for b in wanted):
                log.warning("release %s (family %s) %s: the %s readout is left out", rel.path, rel.family, why, readout)
        for kind in MODEL_KINDS:
            for readout in readouts:
                name = f"{kind}-{readout}"
                if name not in wanted and not (readout in cfg.evidence and kind in kinds):
                    continue
                t = time.perf_counter()
                matrices[name] = _release_readout(cfg, rel, dataset, kind, readout)
                timings[name] = time.perf_counter() - t
        attention_heads = {}
        for kind in MODEL_KINDS:
            method = "attention-heads" if kind == "pretrained" else f"{kind}-attention-heads"
            if method in wanted and "attention" in readouts:
                stats = release_attention_evidence(
                    rel, dataset.tf_index, kind, cfg.attention_cells, cache_dir=cfg.cache_dir, progress=cfg.progress
                )  # cached: the same pass as the mean readout
                heads = dict(enumerate(stats["attention_heads"]))
                attention_heads[kind] = evidence_tensor(heads, dataset.tf_index, threads=cfg.workers)

    # the pair evidence of the pretrained release and of its twin, normal-scored in one call: the matrices they
    # share (correlations, regression, trees) are scored once
    parts = {}
    for kind in ("pretrained", "random-init") if "random-init" in wanted else ("pretrained",):
        for name in cfg.evidence:
            key = f"{kind}-{name}" if name in RELEASE_READOUTS else name
            if key in matrices:
                parts[kind, name] = matrices[key][0]
    scored = evidence_tensor(parts, dataset.tf_index, threads=cfg.workers) if parts else None

    def stacked(kind: str) -> torch.Tensor | None:
        rows = [i for i, (k, _) in enumerate(parts) if k == kind]  # contiguous: parts were added kind by kind
        return scored[rows[0] : rows[-1] + 1] if rows else None

    inputs = GrnInputs(
        features=torch.from_numpy(zscore_genes(dataset.expression)),
        embeddings=embeddings["pretrained"],
        evidence=stacked("pretrained"),
        random_init_embeddings=embeddings.get("random-init"),
        random_init_evidence=stacked("random-init"),
        evidence_names=[n for n in cfg.evidence if (f"pretrained-{n}" if n in RELEASE_READOUTS else n) in matrices],
        attention_heads=attention_heads,
    )
    # the tree baseline is reported under the algorithm that ran (grnboost2, or genie3-sklearn when arboreto is absent)
    unsupervised = {
        (m[1].split(" ")[0] if name == "trees" else name): m for name, m in matrices.items() if name in wanted
    }
    return inputs, unsupervised


def _release_readout(
    cfg: GrnConfig, rel: ReleaseInputs, dataset: GrnDataset, kind: str, readout: str
) -> tuple[np.ndarray, str]:
    """One pair readout of the release (or its random-init twin) as an unsupervised (G, G) score matrix."""
    what = "random-init copy of the release" if kind == "random-init" else "pretrained release"
    if readout == "isd":
        config = DeletionConfig(max_cells=cfg.isd_cells)
        stats = release_deletion_evidence(
            rel, dataset.tf_index, kind, config, cache_dir=cfg.cache_dir, progress=cfg.progress
        )
        return np.abs(stats["isd_mean"]), f"|mean in-silico deletion effect|, {what} (unsupervised)"
    if readout == "attention":
        stats = release_attention_evidence(
            rel, dataset.tf_index, kind, cfg.attention_cells, cache_dir=cfg.cache_dir, progress=cfg.progress
        )
        return stats["attention_mean"], f"attention of the target to the TF, mean over heads, {what} (unsupervised)"
    config = ProbeConfig(max_cells=cfg.probe_cells)
    stats = release_probe_evidence(rel, dataset.tf_index, kind, config, cache_dir=cfg.cache_dir, progress=cfg.progress)
    return np.abs(stats["probe_mean"]), f"|mean change, TF input low → high| (probe), {what} (unsupervised)"


def _trees(cfg: GrnConfig, dataset: GrnDataset) -> tuple[np.ndarray, str]:
    # canonical gene order: BEELINE's network types hold the same matrix with rows permuted, so one cached run
    # serves all of them
    order = np.argsort(np.asarray(dataset.genes, dtype=object), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    matrix, label = trees.tree_importance_matrix(
        dataset.expression[order],
        [dataset.genes[i] for i in order],
        np.sort(rank[dataset.tf_index]),
        method=cfg.tree_method,
        workers=cfg.workers,
        cache_dir=cfg.cache_dir,
    )
    return matrix[np.ix_(rank, rank)], label  # back to the dataset's order


# ---------------------------------------------------------------------------------------------------------------
# 3-5. per seed: split → fit and choose on validation → score validation, test and every candidate pair


@dataclass
class Evaluation:
    methods: dict[str, dict] = field(default_factory=dict)  # name -> kind, description, per-seed rows
    candidate_scores: dict[str, np.ndarray] = field(default_factory=dict)  # name -> summed scores over seeds
    candidates: np.ndarray | None = None  # (P, 2) every TF → gene pair but self pairs
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # the first seed's test set
    splits: list[dict] = field(default_factory=list)
    protocol: str = ""


def make_split(cfg: GrnConfig, dataset: GrnDataset, seed: int) -> EdgeSplit:
    """The seed's split: directed (a pair and its reverse in one set) for every built-in protocol; a split file runs
    as given unless --split-repair (its reverse-pair leaks are counted in the report either way)."""
    if cfg.benchmark is None and cfg.truth is None:  # inference: hold out prior edges, degree-matched negatives
        return genelink_split(dataset, seed, negatives="degree-aware")
    if cfg.split == "genelink":
        return genelink_split(dataset, seed, negatives=cfg.negatives)
    if cfg.split == "cold-start":
        return splits.cold_start_split(dataset, seed)
    if cfg.split == "held-out-genes":
        return splits.held_out_genes_split(dataset, seed)
    split = read_split(Path(cfg.split), dataset)
    if cfg.split_repair:
        split, _ = repair_reverse(split, dataset.n_genes)
    return split


def _check_split(cfg: GrnConfig, split: EdgeSplit, seed: int) -> None:
    flag = "--benchmark" if cfg.benchmark is not None else ("--truth" if cfg.truth is not None else "--prior")
    source = cfg.benchmark or cfg.truth or cfg.prior
    for name in ("val", "test"):
        labels = getattr(split, name)[:, 2]
        if len(np.unique(labels)) < 2:
            msg = (
                f"{flag} {source}: seed {seed}'s {name} set ({split.protocol}) has {int(labels.sum())} positive(s) "
                f"among {len(labels)} pairs, so AUROC is undefined there and no method can be chosen or scored. "
                "Give a network with more edges (at least ~10 per set), or a split file whose validation and test "
                "sets hold both edges and non-edges."
            )
            raise GrnInputError(msg)


def _candidates(dataset: GrnDataset) -> np.ndarray:
    """Every TF → gene pair except self loops: (P, 2)."""
    tfs = np.repeat(dataset.tf_index, dataset.n_genes)
    targets = np.tile(np.arange(dataset.n_genes), len(dataset.tf_index))
    keep = tfs != targets
    return np.stack([tfs[keep], targets[keep]], axis=1).astype(np.int64)


def evaluate(cfg: GrnConfig, dataset: GrnDataset, inputs: GrnInputs, unsupervised: dict, timings: dict) -> Evaluation:
    from tqdm.auto import tqdm

    # the attention-head methods need a release with attention over genes (gather_evidence warned when it has none)
    learned = [
        m
        for m in learned_methods(cfg)
        if not (m.evidence or "").endswith("-attention-heads")
        or m.evidence.removesuffix("-attention-heads") in inputs.attention_heads
    ]
    ev = Evaluation(candidates=_candidates(dataset))
    for m in learned:
        ev.methods[m.name] = {"kind": "learned", "description": m.description, "seeds": []}
    for name, (_, label) in unsupervised.items():
        ev.methods[name] = {"kind": "unsupervised", "description": label, "seeds": []}
    shortcuts = [name for name in SHORTCUT_BASELINES if name in cfg.baselines]
    for name in shortcuts:
        ev.methods[name] = {"kind": "shortcut", "description": SHORTCUT_DESCRIPTIONS[name], "seeds": []}
    candidate_index = candidate_index_of(ev.candidates, dataset.n_genes)
    t = time.perf_counter()
    seeds = range(cfg.first_seed, cfg.first_seed + cfg.seeds)
    seed_splits = {}
    for seed in seeds:
        split = make_split(cfg, dataset, seed)
        _check_split(cfg, split, seed)
        seed_splits[seed] = split
    with FitPool(cfg, inputs) as pool:
        # every fit of every seed is queued at once, longest first, so the workers stay busy to the end
        futures = {
            (seed, method.name, i): pool.submit(method, seed_splits[seed].train, seed_splits[seed].val, seed, params)
            for method in submission_order(learned)
            for seed in seeds
            for i, params in enumerate(candidate_configs(method, cfg))
        }
        for seed in tqdm(seeds, desc=f"grn {dataset.name}", disable=not cfg.progress):
            split = seed_splits[seed]
            ev.splits.append({**split.summary(), "reverse_in_training": split.reverse_leaks(dataset.n_genes)})
            ev.protocol = split.protocol
            natural = natural_density_set(dataset, split, candidate_index)
            scorers = {}
            for method in learned:
                n_configs = len(candidate_configs(method, cfg))
                fits = [futures.pop((seed, method.name, i)).result() for i in range(n_configs)]
                choice = choose(fits, partial(scorer, method, cfg, inputs, split.train, seed))
                scorers[method.name] = choice.scorer
                extra = {
                    "chosen": choice.params,
                    "tried": choice.tried,
                    "best_epoch": choice.best_epoch,
                    "epochs": choice.epochs_run,
                    "seconds": choice.seconds,
                }
                _record(ev, method.name, seed, split, choice.scorer, extra)
            matrices = {name: m for name, (m, _) in unsupervised.items()}
            for name in shortcuts:
                matrices[name] = shortcut_matrix(name, split.train, dataset.expression)
            for name, matrix in matrices.items():
                scorers[name] = _matrix_scorer(matrix)
                _record(ev, name, seed, split, scorers[name], {})
            for name, scorer_fn in scorers.items():
                scores = np.asarray(scorer_fn(ev.candidates), dtype=np.float64)
                ev.methods[name]["seeds"][-1].update(natural_density_metrics(natural, scores))
                ev.candidate_scores[name] = ev.candidate_scores.get(name, 0.0) + scores
    timings["fit_and_score"] = time.perf_counter() - t
    for m in ev.methods.values():
        rows = [{k: r[k] for k in SUMMARY_METRICS if r.get(k) is not None} for r in m["seeds"]]
        m["summary"] = summarize(rows)
    return ev


def _matrix_scorer(matrix: np.ndarray):
    def scorer(pairs: np.ndarray) -> np.ndarray:
        return bl.score_pairs(matrix, pairs[:, :2])

    return scorer


def _record(ev: Evaluation, name: str, seed: int, split: EdgeSplit, scorer, extra: dict) -> None:
    val_scores = scorer(split.val)
    test_scores = scorer(split.test)
    row = {"seed": seed, **edge_metrics(split.test[:, 2], test_scores)}
    row["val_auroc"] = edge_metrics(split.val[:, 2], val_scores)["auroc"]
    row.update(_per_tf(split.test, test_scores))
    row.update(extra)
    ev.methods[name]["seeds"].append(row)
    if name not in ev.curves:  # the first seed run (0 unless --first-seed)
        ev.curves[name] = (split.test[:, 2], test_scores)


def _per_tf(pairs: np.ndarray, scores: np.ndarray) -> dict:
    """Macro AUROC over TFs with both classes: a score that needs each TF's edges ranked above its own non-edges,
    so a TF's degree cannot help (metrics.edge_metrics_per_tf)."""
    from finetune.grn import metrics

    if not hasattr(metrics, "edge_metrics_per_tf"):
        return {}
    return metrics.edge_metrics_per_tf(pairs[:, 0], pairs[:, 2], scores)


# ---------------------------------------------------------------------------------------------------------------
# 6. report


def report(cfg: GrnConfig, dataset: GrnDataset, inputs: GrnInputs, ev: Evaluation, timings: dict) -> dict:
    cfg.out.mkdir(parents=True, exist_ok=True)
    inference = cfg.benchmark is None and cfg.truth is None
    chosen, reason = winner(cfg, ev.methods)
    joint = next(name for name, m in ev.methods.items() if m["kind"] == "learned" and name.startswith("joint-"))
    weights = ev.candidate_scores[chosen] / cfg.seeds
    candidates = ev.candidates
    if inference:
        n = dataset.n_genes
        new = ~np.isin(candidates[:, 0] * n + candidates[:, 1], dataset.positives[:, 0] * n + dataset.positives[:, 1])
        write_edges(cfg.out / "known_edges.tsv", dataset.genes, candidates[~new], weights[~new])
        candidates, weights = candidates[new], weights[new]
    n_edges = write_edges(cfg.out / "edges.tsv", dataset.genes, candidates, weights)
    plot_curves(ev.curves, cfg.out, f"{dataset.name} — held-out edges, seed {cfg.first_seed}")
    emb = inputs.embeddings.report()
    held_out = "held-out prior edges" if inference else "test edges"
    intro = [
        f"dataset: {dataset.name} ({dataset.n_genes} genes × {dataset.n_cells} cells, {len(dataset.tf_index)} TFs, "
        f"{len(dataset.positives)} {'prior' if inference else 'true'} edges)",
        f"protocol: {ev.protocol}; {cfg.seeds} seeds; every choice (hyper-parameters from a budget of "
        f"{cfg.tuning_budget} per learned method, pooling, epochs) on each seed's validation set; metrics on "
        f"{held_out} (seed {cfg.first_seed}: {ev.splits[0]['test']['edges']} pairs, positive rate "
        f"{ev.splits[0]['test']['positive_rate']:.3f})",
        f"release: {cfg.release} ({emb['family']}, {emb['n_mapped']}/{emb['n_genes']} genes in its vocab); pair "
        f"evidence for the learned models: {', '.join(inputs.evidence_names) or 'none'}",
        f"precision columns (AUPRC ratio, EPR) at natural density: the {held_out} against every other candidate "
        f"pair of the same TFs that is not a known edge and was not labelled in training or validation (seed "
        f"{cfg.first_seed}: positive rate {_first(ev, 'density_positive_rate')}), i.e. the precision of edges.tsv",
        *_protocol_notes(cfg, ev),
    ]
    verdict = verdicts(ev.methods, joint, chosen, reason)
    notes = [
        f"edges.tsv: {n_edges} {'new ' if inference else ''}TF → gene pairs ranked by **{chosen}** "
        f"(mean score over the seeds' models; logits for learned methods)",
        f"wall time {sum(timings.values()):.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
    ]
    title = f"scgrn grn — {dataset.name}" + (f" with prior {Path(cfg.prior).name}" if inference else "")
    write_results(cfg.out / "results.md", title, intro, ev.methods, verdict, notes)
    return {
        "format": "scgrn-grn-metrics",
        "version": 2,
        "mode": "inference" if inference else "benchmark",
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
        "protocol": ev.protocol,
        "joint": joint,
        "edges_method": chosen,
        "verdict": verdict,
        "evidence": inputs.evidence_names,
        "embeddings": emb,
        "splits": ev.splits,
        "methods": ev.methods,
        "timings_s": timings,
        "new_edges" if inference else "ranked_edges": n_edges,
    }


def _first(ev: Evaluation, key: str) -> str:
    for m in ev.methods.values():
        if m["seeds"] and m["seeds"][0].get(key) is not None:
            return f"{m['seeds'][0][key]:.4f}"
    return "—"


def _protocol_notes(cfg: GrnConfig, ev: Evaluation) -> list[str]:
    """What the protocol leaks, in one line each: GENELink's negatives (degree), a split file's reverse pairs."""
    notes = []
    if cfg.split == "genelink" and cfg.negatives == "genelink" and (cfg.benchmark or cfg.truth):
        degree = ev.methods.get("degree", {}).get("summary", {}).get("auroc", {}).get("mean")
        notes.append(
            "**leaky protocol**: GENELink's negatives leak node degree (hub TFs' and targets' pairs are mostly "
            "positives), so the degree shortcut ranks test pairs without any expression"
            + (f" (AUROC {degree:.3f} here)" if degree is not None else "")
            + "; for comparison with published numbers only — use --negatives degree-aware"
        )
    if cfg.split not in SPLITS and (cfg.benchmark is not None or cfg.truth is not None):
        leaks = [s["reverse_in_training"] for s in ev.splits]
        n_test = sum(x["test"] for x in leaks)
        n_val = sum(x["val"] for x in leaks)
        repaired = " after --split-repair" if cfg.split_repair else " (run as given; --split-repair moves them)"
        notes.append(
            f"split file {cfg.split}: {n_test} test and {n_val} validation pair(s) have their reverse pair in "
            f"training{repaired}"
        )
    return notes
