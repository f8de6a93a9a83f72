"""Every learned method of `scgrn grn` behind one interface: fit on a seed's train set, choose on that seed's
validation set, score pairs (BEELINE's BLRun gives each algorithm the same three steps; STYLE.md habit 13).

Learned methods (each gets `tuning_budget` hyper-parameter configurations, chosen by validation AUROC, per seed):
    joint-<gnn>        expression ‖ pretrained gene embedding → GNN, interaction decoder over the pair evidence
                       (scTransNet, Kommu et al. 2024, with pair evidence); held-out supervision edges
    expression-gcn     the joint model without any embedding (expression only)
    random-embedding   the joint model with the pretrained embedding replaced by Gaussian vectors of its scale
    random-init        the joint model with everything from the release (embedding *and* in-silico deletion
                       evidence) computed by a randomly initialised copy of the release: what pretraining adds
    no-gnn             the joint model with an MLP in place of message passing
    evidence-logreg    logistic regression on the pair evidence alone (no genes' vectors, no graph)
    genelink-gat       GENELink (Chen & Liu 2022): expression → GAT, dot decoder, Adam lr 3e-3, mini-batches of 256,
                       no pair evidence; its grid varies lr and decoder. `--genelink-recipe extended` (default)
                       trains it like every learned method here (early stopping, constant lr); `published` runs
                       the paper's 20 epochs with lr ×0.99 per step. Both keep the best validation epoch
    attention-heads    logistic regression on the release's per-head attention scores (attention_readout.py):
                       a weighting of the heads fitted on the training prior edges of each seed, as scPRINT's head
                       selection (never on validation or test pairs); twin random-init-attention-heads
The unsupervised and heuristic scores (correlations, partial correlation, trees, in-silico deletion, degree) are
(G, G) matrices computed by `pipeline.py` and `baselines.py`; they need no choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from finetune.errors import GrnInputError
from finetune.grn.config import GrnConfig
from finetune.grn.embeddings import GeneEmbeddings
from finetune.grn.fit import TrainConfig, auroc_torch, fit_link_model, predict, training_graph
from finetune.grn.link_model import LinkModelConfig, LinkPredictor

POOLINGS = ("mean", "attention", "static")
GENELINK_EPOCHS = 20
"""GENELink's `Code/main.py` defaults: 20 epochs, StepLR(step_size=1, gamma=0.99) stepped after every mini-batch."""
GENELINK_LR_DECAY = 0.99


@dataclass(frozen=True)
class LearnedMethod:
    name: str
    encoder: str  # gcn | sage | gat | mlp; "logreg" for evidence-logreg
    embedding: str | None  # "pretrained", "random", "random-init" or None (expression only)
    evidence: str | None  # which release's pair evidence the decoder sees: "pretrained", "random-init" or None
    recipe: str  # "scgrn" (full batch, AdamW, held-out supervision), "genelink" or "logreg"
    description: str


@dataclass
class GrnInputs:
    """What every learned method may read: node features and the pair evidence, for one dataset."""

    features: torch.Tensor  # (G, C) z-scored expression
    embeddings: GeneEmbeddings  # the release's pooled gene states
    evidence: torch.Tensor | None  # (F, G, G) normal scores of the pair evidence (pretrained release)
    random_init_embeddings: GeneEmbeddings | None = None
    random_init_evidence: torch.Tensor | None = None
    attention_heads: dict[str, torch.Tensor] = field(default_factory=dict)  # kind → (L·H, G, G) normal scores
    evidence_names: list[str] = field(default_factory=list)

    @property
    def n_genes(self) -> int:
        return int(self.features.shape[0])


@dataclass
class Choice:
    """A method fitted on one seed's train set with the configuration that won on its validation set."""

    params: dict
    val_auroc: float
    tried: list[dict]  # every configuration with its validation AUROC
    best_epoch: int | None
    epochs_run: int | None
    seconds: float
    scorer: Callable[[np.ndarray], np.ndarray]  # (P, ≥2) pairs → real scores (logits), higher = more likely


def learned_methods(cfg: GrnConfig) -> list[LearnedMethod]:
    evidence = "pretrained" if cfg.evidence else None
    gnn = cfg.gnn
    methods = [
        LearnedMethod(
            f"joint-{gnn}", gnn, "pretrained", evidence, "scgrn", f"expression ‖ pretrained embedding, {gnn} (scgrn)"
        )
    ]
    optional = {
        "expression-gcn": LearnedMethod(
            "expression-gcn", "gcn", None, evidence, "scgrn", "expression only, gcn (no embedding; ablation)"
        ),
        "random-embedding": LearnedMethod(
            "random-embedding", gnn, "random", evidence, "scgrn", f"expression ‖ random embedding, {gnn} (ablation)"
        ),
        "random-init": LearnedMethod(
            "random-init",
            gnn,
            "random-init",
            "random-init" if evidence else None,
            "scgrn",
            f"embedding and deletion evidence from a random-init copy of the release, {gnn} (ablation)",
        ),
        "no-gnn": LearnedMethod(
            "no-gnn", "mlp", "pretrained", evidence, "scgrn", "expression ‖ pretrained embedding, MLP (ablation)"
        ),
        "evidence-logreg": LearnedMethod(
            "evidence-logreg", "logreg", None, "pretrained", "logreg", "logistic regression on the pair evidence"
        ),
        "genelink-gat": LearnedMethod(
            "genelink-gat", "gat", None, None, "genelink", "GENELink: expression → GAT, Adam, batch 256"
        ),
        "attention-heads": LearnedMethod(
            "attention-heads",
            "logreg",
            None,
            "pretrained-attention-heads",
            "logreg",
            "logistic regression on the pretrained release's per-head attention (heads weighted on training edges)",
        ),
        "random-init-attention-heads": LearnedMethod(
            "random-init-attention-heads",
            "logreg",
            None,
            "random-init-attention-heads",
            "logreg",
            "logistic regression on the random-init release's per-head attention (ablation)",
        ),
    }
    for name, method in optional.items():
        if name not in cfg.baselines:
            continue
        if method.evidence in ("pretrained", "random-init") and not cfg.evidence:
            continue  # evidence-logreg needs evidence
        methods.append(method)
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


def candidate_configs(method: LearnedMethod, cfg: GrnConfig) -> list[dict]:
    """The first `cfg.tuning_budget` configurations of the method's grid, most standard first; every method gets
    the same number (the budget), so none is tuned harder than another."""
    lrs = (cfg.lr, cfg.lr / 3, cfg.lr * 3)
    if method.recipe == "genelink":
        grid = [{"lr": lr, "decoder": d} for d in ("dot", "mlp") for lr in (3e-3, 1e-3, 1e-2)]
    elif method.recipe == "logreg":
        grid = [{"C": c} for c in (1.0, 0.1, 10.0, 0.01, 100.0, 0.001)]
    elif method.embedding in ("pretrained", "random-init"):
        # learning rate and pooling alternate, so a small budget explores both
        poolings = POOLINGS if cfg.pooling == "auto" else (cfg.pooling,)
        n_p, n_lr = len(poolings), len(lrs)
        grid = [{"pooling": poolings[i % n_p], "lr": lrs[(i + i // n_p) % n_lr]} for i in range(n_p * n_lr)]
    else:
        grid = [{"lr": lr, "hidden": h} for h in (cfg.hidden, max(8, cfg.hidden // 2)) for lr in lrs]
    return grid[: cfg.tuning_budget]


def _evidence(method: LearnedMethod, inputs: GrnInputs) -> torch.Tensor | None:
    if method.evidence is not None and method.evidence.endswith("-attention-heads"):
        kind = method.evidence.removesuffix("-attention-heads")
        if kind not in inputs.attention_heads:
            msg = f"{method.name} needs the {kind} release's per-head attention; it was not computed"
            raise GrnInputError(msg)
        return inputs.attention_heads[kind]
    if method.evidence == "pretrained":
        return inputs.evidence
    if method.evidence == "random-init":
        if inputs.random_init_evidence is None:
            msg = "the random-init ablation needs the random-init release's evidence; it was not computed"
            raise GrnInputError(msg)
        return inputs.random_init_evidence
    return None


def _embedding(method: LearnedMethod, inputs: GrnInputs, params: dict, seed: int) -> torch.Tensor | None:
    if method.embedding == "pretrained":
        return torch.from_numpy(inputs.embeddings.get(params["pooling"]))
    if method.embedding == "random-init":
        if inputs.random_init_embeddings is None:
            msg = "the random-init ablation needs the random-init release's gene embeddings; they were not computed"
            raise GrnInputError(msg)
        return torch.from_numpy(inputs.random_init_embeddings.get(params["pooling"]))
    if method.embedding == "random":
        return torch.from_numpy(random_embedding(inputs.embeddings.mean, seed))
    return None


def build_link_model(
    method: LearnedMethod, cfg: GrnConfig, inputs: GrnInputs, params: dict, seed: int
) -> LinkPredictor:
    """The method's `LinkPredictor` for one configuration, freshly initialised from `seed` (deterministic, so a
    fitted model's parameters can be loaded into a copy built the same way in another process)."""
    torch.manual_seed(seed)
    hidden = params.get("hidden", cfg.hidden)
    hidden_dims = [max(8, hidden // (2**i)) for i in range(cfg.layers)]
    model_cfg = LinkModelConfig(
        encoder=method.encoder, hidden_dims=hidden_dims, decoder=params.get("decoder", cfg.decoder)
    )
    return LinkPredictor(
        inputs.features.shape[1],
        model_cfg,
        _embedding(method, inputs, params, seed),
        torch.from_numpy(inputs.embeddings.mapped) if method.embedding else None,
        _evidence(method, inputs),
    )


@dataclass
class Fitted:
    """One configuration of one method fitted on a seed's train set: what `choose` compares and what `scorer`
    needs to rebuild the model anywhere (trained parameters only; buffers such as the embedding and the evidence
    are rebuilt from the inputs)."""

    params: dict
    val_auroc: float
    best_epoch: int | None
    epochs_run: int | None
    seconds: float
    state: dict[str, torch.Tensor]


def fit_config(
    method: LearnedMethod,
    cfg: GrnConfig,
    inputs: GrnInputs,
    train: np.ndarray,
    val: np.ndarray,
    seed: int,
    params: dict,
) -> Fitted:
    """Fit one configuration of `method` on `train`, early-stopped on `val` (this seed's)."""
    import time

    start = time.perf_counter()
    if method.recipe == "logreg":
        evidence = _evidence(method, inputs).numpy()
        model = _logreg(evidence, train, params["C"])  # the training pairs only
        state = {"coef": torch.from_numpy(model.coef_[0].copy()), "intercept": torch.tensor(model.intercept_[0])}
        val_scores = _logreg_scores(evidence, state, val)
        val_auroc = auroc_torch(torch.from_numpy(val[:, 2].astype(np.float32)), torch.from_numpy(val_scores))
        return Fitted(params, val_auroc, None, None, time.perf_counter() - start, state)
    genelink = method.recipe == "genelink"
    published = genelink and cfg.genelink_recipe == "published"
    model = build_link_model(method, cfg, inputs, params, seed)
    if model.evidence_weight is not None:
        # start from the best evidence-only ranking of the training pairs (the evidence-logreg baseline's model), so
        # training with early stopping on validation keeps only what the gene views add on top of it
        weights = _logreg(model.evidence.numpy(), train, c=1.0).coef_[0]
        with torch.no_grad():
            model.evidence_weight.copy_(torch.from_numpy(weights).float())
    train_cfg = TrainConfig(
        epochs=GENELINK_EPOCHS if published else cfg.epochs,
        lr=params["lr"],
        patience=GENELINK_EPOCHS if published else cfg.patience,
        lr_decay=GENELINK_LR_DECAY if published else 1.0,
        optimizer="adam" if genelink else "adamw",
        weight_decay=0.0 if genelink else 1e-4,
        batch_size=256 if genelink else None,
        supervision_fraction=0.0 if genelink else cfg.supervision_fraction,
    )
    result = fit_link_model(model, inputs.features, train, val, inputs.n_genes, train_cfg, seed)
    state = {name: p.detach().clone() for name, p in result.model.named_parameters()}
    return Fitted(params, result.val_auroc, result.best_epoch, result.epochs_run, time.perf_counter() - start, state)


def scorer(
    method: LearnedMethod, cfg: GrnConfig, inputs: GrnInputs, train: np.ndarray, seed: int, fitted: Fitted
) -> Callable[[np.ndarray], np.ndarray]:
    """(P, ≥2) pairs → logits of the fitted configuration; message passing over the training positives."""
    if method.recipe == "logreg":
        evidence = _evidence(method, inputs).numpy()
        return lambda pairs: _logreg_scores(evidence, fitted.state, pairs)
    model = build_link_model(method, cfg, inputs, fitted.params, seed)
    expected = {name for name, _ in model.named_parameters()}
    if set(fitted.state) != expected:
        msg = f"{method.name}: fitted parameters {sorted(fitted.state)} do not match the model's {sorted(expected)}"
        raise RuntimeError(msg)
    model.load_state_dict(fitted.state, strict=False)  # buffers were rebuilt from the inputs
    graph = training_graph(train, inputs.n_genes)
    return lambda pairs: predict(model, inputs.features, graph, pairs, logits=True)


def choose(fits: list[Fitted], scorer_of: Callable[[Fitted], Callable]) -> Choice:
    """The configuration with the best validation AUROC (the first on a tie, i.e. the most standard one)."""
    best = fits[0]
    for fit in fits[1:]:
        if fit.val_auroc > best.val_auroc:
            best = fit
    tried = [{**f.params, "val_auroc": f.val_auroc} for f in fits]
    seconds = sum(f.seconds for f in fits)
    return Choice(best.params, best.val_auroc, tried, best.best_epoch, best.epochs_run, seconds, scorer_of(best))


def _logreg(evidence: np.ndarray, train: np.ndarray, c: float):
    """Logistic regression of the training labels on the training pairs' evidence (F, G, G) → (P, F)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=1000).fit(evidence[:, train[:, 0], train[:, 1]].T, train[:, 2])


def _logreg_scores(evidence: np.ndarray, state: dict, pairs: np.ndarray) -> np.ndarray:
    """The logistic regression's decision function on pairs: evidence (F, G, G) at pairs → (P, F) · coef + intercept."""
    features = evidence[:, pairs[:, 0], pairs[:, 1]].T.astype(np.float64)  # (P, F)
    return features @ state["coef"].numpy().astype(np.float64) + float(state["intercept"])


def fit_and_choose(
    method: LearnedMethod, cfg: GrnConfig, inputs: GrnInputs, train: np.ndarray, val: np.ndarray, seed: int
) -> Choice:
    """Fit every candidate configuration on `train` in this process, keep the one with the best AUROC on `val`
    (this seed's). `fit_pool.FitPool` does the same with the fits spread over worker processes."""
    fits = [fit_config(method, cfg, inputs, train, val, seed, params) for params in candidate_configs(method, cfg)]
    return choose(fits, partial(scorer, method, cfg, inputs, train, seed))
