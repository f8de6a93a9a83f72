"""`run_eval`: the four evaluations of a release on one set of cells, written as eval.json, eval.md and plots.

Sections (each with its baselines side by side; see the modules):
  masked   masked-value prediction vs per-gene and library-scaled means and the random-init model (`masked.py`)
  cells    cell embeddings: k-NN accuracy, ARI / NMI of k-means, against PCA and a random init (`cells.py`)
  genes    known regulator -> target pairs closer than random pairs, against expression correlation (`genes.py`)
  transfer linear probe and short finetune vs random init vs logistic regression on PCA, macro-F1 (`transfer.py`)

A section that cannot run on these cells (no labels, no prior, too few cells) is skipped with its reason recorded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.io_utils import sha256_file
from finetune.evaluation import cells as cell_eval
from finetune.evaluation import data as eval_data
from finetune.evaluation import genes as gene_eval
from finetune.evaluation.config import EvalConfig
from finetune.evaluation.masked import masked_value_prediction
from finetune.evaluation.pooling import embed_cells
from finetune.evaluation.report import write_report
from finetune.evaluation.transfer import finetune_classifier, linear_probe, split_cells
from finetune.grn.user_data import read_prior
from pretrain.model_factory import build_model
from pretrain.release import load_release, release_sha256


def random_init_like(model: torch.nn.Module, family: str, seed: int) -> torch.nn.Module:
    """The release's architecture with fresh weights (pretraining's own initialisation), seeded."""
    torch.manual_seed(seed)
    return build_model(family, model.config).eval()


def _load_cells(cfg: EvalConfig, vocab) -> tuple[eval_data.EvalCells, eval_data.EvalCells, eval_data.EvalCells]:
    """(all evaluated cells, masked-value test cells, masked-value reference cells)."""
    if cfg.data is not None:
        cells = eval_data.from_file(cfg.data, vocab, label=cfg.label, max_cells=cfg.max_cells, seed=cfg.seed)
        half = np.random.default_rng(cfg.seed).permutation(cells.n_cells)
        cut = cells.n_cells // 2
        return cells, cells.subset(np.sort(half[cut:])), cells.subset(np.sort(half[:cut]))
    kwargs = {"label": cfg.label, "seed": cfg.seed, "vocab_size": vocab.size}
    cells = eval_data.from_corpus(cfg.corpus, cfg.split, max_cells=cfg.max_cells, **kwargs)
    reference = eval_data.from_corpus(cfg.corpus, cfg.reference_split, max_cells=cfg.reference_cells, **kwargs)
    return cells, cells, reference


def seen_in_pretraining(release: Path, data: Path | None) -> str:
    """ "yes" / "no" / "unknown": is `data` (by sha256) one of the inputs of the corpus the release trained on?"""
    if data is None:
        return "yes (the training corpus's own split)"
    try:
        corpus = Path(json.loads((release / "training_summary.json").read_text())["corpus"])
        inputs = json.loads((corpus / "manifest.json").read_text())["inputs"]
    except (OSError, KeyError, TypeError, ValueError):
        return "unknown (the release's training corpus is not readable here)"
    return "yes" if sha256_file(Path(data)) in {i.get("sha256") for i in inputs} else "no"


def _gene_section(cfg, cells, model, vocab, gene_states: dict[str, dict]) -> dict:
    counts = gene_states["pretrained"]["count"]
    expressed = np.flatnonzero(counts >= cfg.min_gene_cells)
    order = expressed[np.argsort(-counts[expressed], kind="stable")][: cfg.max_eval_genes]
    order = np.sort(order)
    genes = [vocab.tokens[i] for i in order]
    static = model.gene_embedding.weight.detach().float().cpu().numpy()[order]
    vectors = {"static (token embedding)": static}
    for name, states in gene_states.items():
        vectors[f"{name} contextual"] = (states["sum"][order] / np.maximum(states["count"][order], 1)[:, None]).astype(
            np.float32
        )
    profiles = gene_eval.expression_profiles(cell_eval.log_normalize(cells.vocab_counts)[:, order])
    priors = {p.name: read_prior(p) for p in cfg.priors}
    report = gene_eval.gene_embedding_report(vectors, profiles, genes, priors, seed=cfg.seed)
    return {"n_genes": len(genes), "min_cells": cfg.min_gene_cells, "priors": report}


def run_eval(cfg: EvalConfig) -> dict:
    """Run the configured sections; write OUT/eval.json, OUT/eval.md and the plots; return the payload."""
    start = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, vocab = load_release(cfg.release, device=device)
    family = json.loads((cfg.release / "config.json").read_text())["family"]
    random_model = random_init_like(model, family, cfg.seed).to(device)
    cells, masked_cells, reference = _load_cells(cfg, vocab)
    labelled = cells.labelled
    n_types = len(np.unique(cells.labels[labelled]))
    payload: dict = {
        "release": str(cfg.release),
        "release_sha256": release_sha256(cfg.release),
        "family": family,
        "data": cells.source,
        "label": cfg.label,
        "n_cells": cells.n_cells,
        "n_labelled": int(labelled.sum()),
        "n_cell_types": n_types,
        "seen_in_pretraining": seen_in_pretraining(cfg.release, cfg.data),
        "seed": cfg.seed,
        "device": str(device),
        "sections": {},
        "skipped": {},
    }
    plots: dict = {}
    timings: dict[str, float] = {}

    if "masked" in cfg.sections:
        t = time.perf_counter()
        payload["sections"]["masked"], plots["masked"] = masked_value_prediction(
            model,
            masked_cells,
            reference,
            batch_cells=cfg.batch_cells,
            seed=cfg.seed,
            progress=cfg.progress,
            random_model=random_model,
        )
        timings["masked"] = time.perf_counter() - t

    need_embeddings = {"cells", "genes", "transfer"} & set(cfg.sections)
    if need_embeddings:
        t = time.perf_counter()
        embeddings, gene_states = {}, {}
        for name, m in (("pretrained", model), ("random-init", random_model)):
            embeddings[name], gene_states[name] = embed_cells(
                m,
                cells.model_batches(cfg.batch_cells),
                vocab_size=vocab.size,
                seed=cfg.seed,
                desc=f"{name} embeddings" if cfg.progress else None,
            )
        embeddings["PCA (log-normalized)"] = cell_eval.pca_baseline(cells.counts, seed=cfg.seed)
        timings["embeddings"] = time.perf_counter() - t

    has_labels = n_types >= 2 and labelled.sum() >= 10
    no_label = f"no usable labels (column {cfg.label!r}: {n_types} cell types over {int(labelled.sum())} cells)"
    if "cells" in cfg.sections:
        if has_labels:
            t = time.perf_counter()
            metrics = {
                name: cell_eval.cell_type_metrics(
                    e[labelled], cells.labels[labelled].astype(str), k=cfg.knn_k, folds=cfg.folds, seed=cfg.seed
                )
                for name, e in embeddings.items()
            }
            maps, method = {}, cfg.map_method
            for name in ("pretrained", "random-init", "PCA (log-normalized)"):
                maps[name], method = cell_eval.map_2d(embeddings[name], method=cfg.map_method, seed=cfg.seed)
            plots["cells"] = {"maps": maps, "labels": cells.labels.astype(str), "method": method}
            payload["sections"]["cells"] = {"metrics": metrics, "map": method, "k": cfg.knn_k, "folds": cfg.folds}
            timings["cells"] = time.perf_counter() - t
        else:
            payload["skipped"]["cells"] = no_label

    if "genes" in cfg.sections:
        if cfg.priors:
            t = time.perf_counter()
            payload["sections"]["genes"] = _gene_section(cfg, cells, model, vocab, gene_states)
            timings["genes"] = time.perf_counter() - t
        else:
            payload["skipped"]["genes"] = "no prior network given (--prior TRRUST/DoRothEA table)"

    if "transfer" in cfg.sections:
        if has_labels:
            t = time.perf_counter()
            payload["sections"]["transfer"] = _transfer(cfg, cells, model, random_model, embeddings)
            timings["transfer"] = time.perf_counter() - t
        else:
            payload["skipped"]["transfer"] = no_label

    timings["total"] = time.perf_counter() - start
    payload["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    write_report(cfg.out, payload, plots)
    return payload


def _transfer(cfg, cells, model, random_model, embeddings) -> dict:
    labels = cells.labels.astype(str)
    train, test, dropped = split_cells(cells.labels, test_fraction=cfg.test_fraction, seed=cfg.seed)
    methods = {
        "pretrained linear probe": linear_probe(embeddings["pretrained"], labels, train, test, cfg.seed),
        "random-init linear probe": linear_probe(embeddings["random-init"], labels, train, test, cfg.seed),
        "logistic regression on PCA": linear_probe(embeddings["PCA (log-normalized)"], labels, train, test, cfg.seed),
    }
    if cfg.finetune_epochs > 0:
        kwargs = {
            "epochs": cfg.finetune_epochs,
            "lr": cfg.finetune_lr,
            "head_lr": cfg.head_lr,
            "batch_cells": cfg.batch_cells,
            "seed": cfg.seed,
        }
        for name, m in (("pretrained", model), ("random-init", random_model)):
            desc = f"{name} finetune" if cfg.progress else None
            methods[f"{name} finetune"] = finetune_classifier(m, cells, train, test, **kwargs, desc=desc)
    return {
        "split": {
            "kind": "stratified by cell type, one seeded split",
            "test_fraction": cfg.test_fraction,
            "train_cells": len(train),
            "test_cells": len(test),
            "dropped_classes": dropped,
        },
        "classes": sorted(set(labels[train])),
        "finetune": {"epochs": cfg.finetune_epochs, "lr": cfg.finetune_lr, "head_lr": cfg.head_lr},
        "methods": methods,
    }
