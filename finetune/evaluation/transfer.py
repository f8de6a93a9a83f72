"""Transfer: cell-type classification on cells the model was not pretrained on (Exceiver's downstream check).

One stratified split of the labelled cells (`test_fraction` held out, seeded; classes with fewer than 2 cells are
dropped and listed). On the same split:

- linear probe: logistic regression on the frozen cell embeddings of the pretrained model;
- short finetune: the pretrained model + a linear head trained end to end with AdamW for a few epochs;
- the same probe and finetune from a random initialisation of the same architecture (what pretraining adds);
- logistic regression on PCA of log-normalised expression (the usual single-cell baseline).

Scored by macro-F1 (every cell type counts the same, whatever its size) and accuracy on the held-out cells.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from finetune.evaluation.data import EvalCells
from finetune.evaluation.pooling import cell_embedding


def split_cells(labels: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train rows, test rows, dropped classes) over the labelled entries of `labels`, stratified."""
    names, counts = np.unique(labels[labels != ""], return_counts=True)
    dropped = [str(n) for n, c in zip(names, counts, strict=True) if c < 2]
    rows = np.flatnonzero((labels != "") & ~np.isin(labels, dropped))
    if len(np.unique(labels[rows])) < 2:
        msg = f"transfer needs at least 2 cell types with 2+ cells each; found {dict(zip(names, counts, strict=True))}"
        raise ValueError(msg)
    n_test = max(round(len(rows) * test_fraction), len(np.unique(labels[rows])))
    train, test = train_test_split(rows, test_size=n_test, stratify=labels[rows], random_state=seed)
    return np.sort(train), np.sort(test), dropped


def _scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "macro_f1": float(f1_score(truth, pred, average="macro")),
        "accuracy": float(accuracy_score(truth, pred)),
    }


def linear_probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> dict:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=seed))
    clf.fit(features[train], labels[train])
    return _scores(labels[test], clf.predict(features[test]))


class CellClassifier(nn.Module):
    """A release's model with a linear cell-type head on its pooled cell embedding."""

    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.gene_embedding.weight.shape[1], n_classes)

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.head(cell_embedding(self.backbone, batch, generator))


def finetune_classifier(
    backbone: nn.Module,
    cells: EvalCells,
    train: np.ndarray,
    test: np.ndarray,
    *,
    epochs: int,
    lr: float,
    head_lr: float,
    batch_cells: int,
    seed: int,
    desc: str | None = None,
) -> dict:
    """Train a copy of `backbone` + head on `train` rows; macro-F1 / accuracy on `test` rows, and the loss curve."""
    classes = np.unique(cells.labels[train])
    index = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([index.get(c, -1) for c in cells.labels], dtype=torch.long)
    torch.manual_seed(seed)
    model = CellClassifier(copy.deepcopy(backbone), len(classes)).to(backbone.gene_embedding.weight.device)
    targets = targets.to(backbone.gene_embedding.weight.device)
    optimizer = torch.optim.AdamW(
        [{"params": model.backbone.parameters(), "lr": lr}, {"params": model.head.parameters(), "lr": head_lr}],
        weight_decay=0.01,
    )
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    from tqdm.auto import tqdm

    for _ in tqdm(range(epochs), desc=desc, disable=desc is None, unit="epoch"):
        model.train()
        order = rng.permutation(train)
        total = 0.0
        for start in range(0, len(order), batch_cells):
            rows = order[start : start + batch_cells]
            batch = next(cells.model_batches(batch_cells, rows))
            loss = nn.functional.cross_entropy(model(batch, generator), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(rows)
        losses.append(total / len(train))
    model.eval()
    eval_gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits = torch.cat([model(b, eval_gen) for b in cells.model_batches(batch_cells, test)])
    pred = classes[logits.argmax(1).cpu().numpy()]
    return {**_scores(cells.labels[test], pred), "train_loss": losses, "seconds": time.perf_counter() - start}
