"""Training of a `LinkPredictor` with early stopping on the validation set only.

The graph the encoder sees holds *training* positives only (both directions); validation and test edges never enter
message passing, and the test set is never looked at here: the epoch kept is the one with the best validation AUROC,
and training stops after `patience` epochs without improvement.

Held-out supervision (`supervision_fraction > 0`): if the pairs a model is trained on are also edges of the graph it
passes messages over, "connected ⇒ edge" is learnable in training and never true at validation or test (where the
scored pair is not in the graph). So each epoch a fresh random `supervision_fraction` of the training rows is the
loss's target set and only the *other* training positives form the message-passing graph (PyG's RandomLinkSplit
calls this disjoint_train_ratio). Validation and test pairs are scored with the graph of all training positives,
none of which they are in, which is the situation training now imitates.

Two recipes: full-batch AdamW (one step per epoch; the default) and GENELink's own (Chen & Liu 2022, its
`Code/main.py`: Adam, lr 3e-3 decayed ×0.99 after every optimizer step (StepLR), mini-batches of 256 training pairs,
20 epochs, every training positive in the graph). Both keep the epoch with the best validation AUROC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from finetune.grn.link_model import LinkPredictor


@dataclass
class TrainConfig:
    """Optimisation of one link model; fixed a priori (not tuned on test)."""

    epochs: int = 300
    """Upper bound on epochs (passes over the training pairs)."""
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 30
    """Stop after this many epochs without a better validation AUROC."""
    optimizer: str = "adamw"
    """"adamw" (decoupled weight decay) or "adam" (GENELink's; weight_decay is then L2 in the gradient)."""
    batch_size: int | None = None
    """Training pairs per optimizer step; None: the whole training set (one step per epoch)."""
    lr_decay: float = 1.0
    """The learning rate is multiplied by this after every optimizer step (GENELink's StepLR(step_size=1,
    gamma=0.99)); 1.0: constant."""
    min_delta: float = 0.0
    """A validation AUROC counts as better only when it beats the best so far by more than this (noise guard)."""
    supervision_fraction: float = 0.0
    """Training rows held out of message passing each epoch and used as the loss's targets (see the module
    docstring); 0: every training positive is in the graph and every training row is supervised."""

    def __post_init__(self) -> None:
        problems = [
            f"{name}={getattr(self, name)!r}: must be > 0"
            for name in ("epochs", "lr", "patience")
            if not getattr(self, name) > 0
        ]
        if not 0.0 < self.lr_decay <= 1.0:
            problems.append(f"lr_decay={self.lr_decay!r}: within (0, 1] (1: a constant learning rate)")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay!r}: must be >= 0")
        if self.optimizer not in ("adamw", "adam"):
            problems.append(f"optimizer={self.optimizer!r}: allowed 'adamw', 'adam'")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            problems.append(f"batch_size={self.batch_size!r}: an int >= 1, or None for full batch")
        if not 0.0 <= self.supervision_fraction < 1.0:
            problems.append(f"supervision_fraction={self.supervision_fraction!r}: within [0, 1)")
        if problems:
            msg = "invalid TrainConfig:\n  - " + "\n  - ".join(problems)
            raise ValueError(msg)


@dataclass
class FitResult:
    model: LinkPredictor  # in its best-validation state, eval mode
    best_epoch: int
    epochs_run: int
    val_auroc: float
    seconds: float


def training_graph(train: np.ndarray, n_genes: int) -> torch.Tensor:
    """(2, 2M) edge_index of the training positives in both directions (regulation informs both ends)."""
    pos = train[train[:, 2] == 1][:, :2].astype(np.int64)  # (M, 2)
    both = np.concatenate([pos, pos[:, ::-1]], axis=0)  # (2M, 2)
    both = np.unique(both[both[:, 0] != both[:, 1]], axis=0)
    if both.size and both.max() >= n_genes:
        msg = f"training edges index gene {int(both.max())} but the dataset has {n_genes} genes."
        raise ValueError(msg)
    return torch.from_numpy(np.ascontiguousarray(both.T))


@torch.no_grad()
def predict(
    model: LinkPredictor,
    expression: torch.Tensor | None,
    edge_index: torch.Tensor,
    pairs: np.ndarray,
    *,
    logits: bool = False,
) -> np.ndarray:
    """Probabilities (or logits) (P,) for pairs (P, ≥2) [tf, target, ...], in chunks to bound memory. Logits keep
    ranks that sigmoid's float32 saturation would tie."""
    model.eval()
    views = model.encode(expression, edge_index)
    pairs_t = torch.from_numpy(np.ascontiguousarray(pairs[:, :2], dtype=np.int64))
    out = [model.decode(views, chunk) for chunk in pairs_t.split(1 << 18)]
    if not out:
        return np.zeros(0, dtype=np.float32)
    scores = torch.cat(out)
    return (scores if logits else torch.sigmoid(scores)).numpy()


def auroc_torch(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """AUROC by the rank-sum (Mann–Whitney) formula with average ranks for ties; equals sklearn's roc_auc_score
    (tested) at a fraction of its per-call overhead, which matters once per epoch."""
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
    ranks[order] = average[inverse]
    n_pos = float(labels.sum())
    n_neg = labels.numel() - n_pos
    return float((ranks[labels.bool()].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_link_model(
    model: LinkPredictor,
    expression: torch.Tensor | None,
    train: np.ndarray,
    val: np.ndarray,
    n_genes: int,
    config: TrainConfig,
    seed: int,
) -> FitResult:
    """Train on `train` (n, 3) [tf, target, label]; keep the epoch with the best AUROC on `val`."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    edge_index = training_graph(train, n_genes)
    pairs = torch.from_numpy(train[:, :2].astype(np.int64))
    labels = torch.from_numpy(train[:, 2].astype(np.float32))
    val_labels = torch.from_numpy(val[:, 2].astype(np.float32))
    if len(np.unique(val[:, 2])) < 2:
        msg = (
            f"the validation set has {int(val_labels.sum())} positives of {len(val_labels)} edges: early stopping "
            "needs both classes. Use a dataset with more known edges or a larger validation fraction."
        )
        raise ValueError(msg)
    optimizer_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    positive = labels.bool()
    best_auroc, best_epoch, best_state = -1.0, 0, None
    val_pairs = torch.from_numpy(np.ascontiguousarray(val[:, :2], dtype=np.int64))
    for epoch in range(config.epochs + 1):  # epoch = passes over the training pairs before this evaluation
        # the node features at this epoch's weights serve the evaluation and the first training step (they have no
        # dropout): one pass of the expression projection, the widest layer, instead of two; same values
        features = model.node_features(expression)  # (N, F), with grad for the training step
        model.eval()
        with torch.no_grad():
            val_logits = model.decode(model.encode_features(features.detach(), edge_index), val_pairs)
        auroc = auroc_torch(val_labels, torch.sigmoid(val_logits))
        if auroc > best_auroc + (config.min_delta if best_state is not None else 0.0):
            # parameters only: the buffers (evidence stacks of up to F × N × N floats) never change in training
            best_state = {name: p.detach().clone() for name, p in model.named_parameters()}
            best_auroc, best_epoch = auroc, epoch
        elif epoch - best_epoch >= config.patience or epoch == config.epochs:
            break
        model.train()
        rows = torch.arange(len(labels))
        graph = edge_index
        if config.supervision_fraction > 0:
            held = torch.rand(len(labels), generator=generator) < config.supervision_fraction
            rows = rows[held]
            graph = _graph_of(pairs[positive & ~held])
        order = rows[torch.randperm(len(rows), generator=generator)]
        for step, batch in enumerate(order.split(config.batch_size or max(1, len(order)))):
            optimizer.zero_grad(set_to_none=True)
            if step > 0:  # the weights moved
                features = model.node_features(expression)
            views = model.encode_features(features, graph)
            loss_fn(model.decode(views, pairs[batch]), labels[batch]).backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(best_state[name])
    model.eval()
    return FitResult(model, best_epoch, epoch, best_auroc, time.perf_counter() - start)


def _graph_of(positive_pairs: torch.Tensor) -> torch.Tensor:
    """(2, 2M) edge_index of (M, 2) positive pairs in both directions, self pairs dropped, unique and sorted by
    (source, destination). Deduplicated through 1-D codes: `torch.unique(dim=0)` took ~10 % of a whole
    `scgrn grn` fit, called once per epoch."""
    both = torch.cat([positive_pairs, positive_pairs.flip(1)], dim=0)  # (2M, 2)
    both = both[both[:, 0] != both[:, 1]]
    if len(both) == 0:
        return both.T.contiguous()
    n = int(both.max()) + 1
    codes = torch.unique(both[:, 0] * n + both[:, 1])  # sorted, so rows come out in lexicographic order
    return torch.stack([codes // n, codes % n])
