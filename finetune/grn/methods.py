"""The methods compared by `scgrn grn`, all run on the same splits: the joint model, its ablations and baselines.

Learned (trained on the split's train set, early-stopped on its validation set):
    joint-<gnn>        expression ‖ pretrained embedding → GNN over training edges (scTransNet, Kommu et al. 2024)
    genelink-gat       expression only → GAT (GENELink, Chen & Liu 2022)
    random-embedding   the joint model with the pretrained embedding replaced by a random one (ablation)
    no-gnn             expression ‖ pretrained embedding → MLP, no message passing (ablation)
Unsupervised / heuristic (scored on the same test edges):
    degree             out-degree(tf) × in-degree(target) in the training positives (exposes degree leakage,
                       Stock et al. 2025)
    pearson, spearman  |correlation| over cells
    grnboost2          arboreto's GRNBoost2 (Moerman et al. 2019), or a GENIE3-style scikit-learn ensemble
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from finetune.grn.config import GrnConfig
from finetune.grn.fit import FitResult, TrainConfig, fit_link_model, predict, training_graph
from finetune.grn.link_model import LinkModelConfig, LinkPredictor


@dataclass(frozen=True)
class LearnedMethod:
    name: str
    encoder: str  # gcn | sage | gat | mlp
    embedding: str | None  # "pretrained", "random" or None (expression only)
    description: str


def learned_methods(cfg: GrnConfig) -> list[LearnedMethod]:
    methods = [
        LearnedMethod(
            f"joint-{cfg.gnn}", cfg.gnn, "pretrained", f"expression ‖ pretrained embedding, {cfg.gnn} (scgrn)"
        )
    ]
    if "genelink-gat" in cfg.baselines:
        methods.append(LearnedMethod("genelink-gat", "gat", None, "expression only, GAT (GENELink-style)"))
    if "random-embedding" in cfg.baselines:
        methods.append(
            LearnedMethod("random-embedding", cfg.gnn, "random", f"expression ‖ random embedding, {cfg.gnn} (ablation)")
        )
    if "no-gnn" in cfg.baselines:
        methods.append(
            LearnedMethod("no-gnn", "mlp", "pretrained", "expression ‖ pretrained embedding, MLP (ablation)")
        )
    return methods


def zscore_genes(expression: np.ndarray) -> np.ndarray:
    """(G, C) → each gene standardised over cells (GENELink's StandardScaler on X.T); constant genes → 0."""
    x = expression.astype(np.float32)
    sd = x.std(axis=1, keepdims=True)
    return np.where(sd > 0, (x - x.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0), 0.0).astype(np.float32)


def random_embedding(like: np.ndarray, seed: int) -> np.ndarray:
    """Gaussian vectors with the pretrained embedding's shape and per-dimension scale (the ablation's input)."""
    rng = np.random.default_rng([seed, 7919])
    return (rng.standard_normal(like.shape) * like.std(axis=0, keepdims=True)).astype(np.float32)


def fit_method(
    method: LearnedMethod,
    cfg: GrnConfig,
    features: torch.Tensor,
    embedding: np.ndarray | None,
    mapped: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    seed: int,
) -> FitResult:
    """Build and train one learned method on one split (the same seed gives the same initialisation)."""
    torch.manual_seed(seed)
    emb = None
    if method.embedding == "pretrained":
        emb = torch.from_numpy(embedding)
    elif method.embedding == "random":
        emb = torch.from_numpy(random_embedding(embedding, seed))
    model_cfg = LinkModelConfig(
        encoder=method.encoder, hidden_dims=cfg.hidden_dims, decoder=cfg.decoder, pair_correlation=cfg.pair_correlation
    )
    model = LinkPredictor(features.shape[1], model_cfg, emb, torch.from_numpy(mapped))
    train_cfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, patience=cfg.patience)
    return fit_link_model(model, features, train, val, features.shape[0], train_cfg, seed)


def score(result: FitResult, features: torch.Tensor, train: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Probabilities for `pairs` with the graph of `train`'s positives (the graph the model was trained on)."""
    return predict(result.model, features, training_graph(train, features.shape[0]), pairs)
