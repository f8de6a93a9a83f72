"""Masked-value prediction on held-out cells, against the two predictors any analyst has without a model.

The task is the pretraining task: in each held-out cell (genes capped at the model's `max_genes` as in pretraining)
a `mask_prob` fraction of its expressed genes is hidden (`sample_mask`: at least one per cell, never all) and the
model predicts them from the rest. Every predictor is scored on the *same* masked positions, on one common scale:
x = log1p(k / s · 1e4), the log-normalised value of count k in a cell of s total counts (s over the whole cell).

Predictors (the baselines are fitted on reference cells, never on the scored ones):

- model: scBERT's expected value under its softmax over the expressed bins (bin b stands for the centre of its
  log2 interval, converted to ln); Exceiver-mse's output; Exceiver-poisson/nb's mean given that the gene is expressed
  (zero-truncated: μ / (1 − P(k=0)), μ = exp(ŷ) · s / 1e4), turned into x with the cell's own s.
- per-gene mean: the gene's mean x over the reference cells that express it (the global mean for unseen genes).
- library-scaled mean: the gene's share of all reference counts f_g = Σ_c k_cg / Σ_c s_c, scaled to this cell:
  μ = f_g · s, then the zero-truncated Poisson mean μ / (1 − e^−μ) (the gene *is* expressed at a masked position),
  as x. It knows the cell's depth, which matters: a single count in a shallow cell is a large x.

Metrics: mean squared error and Pearson / Spearman correlation with the true x; for scBERT also its own loss
(cross-entropy over bins) and bin accuracy, next to the per-gene bin distribution's (Laplace-smoothed) and the
library-scaled mean's bin. Exceiver reports its own loss (mse / Poisson / NB negative log-likelihood) alone.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy import stats

from finetune.evaluation.data import EvalCells
from finetune.evaluation.pooling import to_device
from pretrain.models.common import sample_genes
from pretrain.models.exceiver import sample_mask
from pretrain.models.objectives import TARGET_SUM, cell_library_size, token_cell_index
from pretrain.models.scbert import IGNORE_INDEX, ScBert, bin_values

PLOT_POINTS = 20000


class GeneBaselines:
    """Per-gene statistics of reference cells (cells × vocab counts): mean x when expressed, count share, bins."""

    def __init__(self, counts: sp.csr_matrix, n_bins: int | None) -> None:
        counts = counts.tocsr().astype(np.float64)
        library = np.asarray(counts.sum(axis=1)).ravel()  # (C,)
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        x = np.log1p(counts.data / library[rows] * TARGET_SUM)  # (nnz,)
        n_genes = counts.shape[1]
        self.n_expr = np.bincount(counts.indices, minlength=n_genes)
        sum_x = np.bincount(counts.indices, weights=x, minlength=n_genes)
        self.global_mean = float(x.mean()) if x.size else 0.0
        self.mean_x = np.where(self.n_expr > 0, sum_x / np.maximum(self.n_expr, 1), self.global_mean)
        self.share = np.bincount(counts.indices, weights=counts.data, minlength=n_genes) / max(library.sum(), 1.0)
        self.n_cells = counts.shape[0]
        self.bin_log_p = None
        if n_bins is not None:
            width = math.log2(1.0 + TARGET_SUM) / (n_bins - 1)
            bins = np.clip(np.floor(x / math.log(2) / width).astype(np.int64) + 1, 1, n_bins - 1)
            table = np.ones((n_genes, n_bins))  # Laplace smoothing
            table[:, 0] = 0.0  # masked positions are expressed: bin 0 is impossible
            np.add.at(table, (counts.indices, bins), 1.0)
            with np.errstate(divide="ignore"):  # log 0 = -inf for bin 0, never a label
                self.bin_log_p = np.log(table / table.sum(1, keepdims=True))

    def per_gene(self, genes: np.ndarray) -> np.ndarray:
        return self.mean_x[genes]

    def library_scaled(self, genes: np.ndarray, library: np.ndarray) -> np.ndarray:
        mu = np.maximum(self.share[genes] * library, 1e-12)
        expected = mu / -np.expm1(-mu)  # zero-truncated Poisson mean, >= 1
        return np.log1p(expected / library * TARGET_SUM)


def _bin_of(x: np.ndarray, n_bins: int) -> np.ndarray:
    width = math.log2(1.0 + TARGET_SUM) / (n_bins - 1)
    return np.clip(np.floor(x / math.log(2) / width).astype(np.int64) + 1, 1, n_bins - 1)


def _bin_centres(n_bins: int) -> torch.Tensor:
    """(n_bins - 1,) x value (ln scale) standing for bins 1..n_bins-1."""
    width = math.log2(1.0 + TARGET_SUM) / (n_bins - 1)
    return (torch.arange(1, n_bins, dtype=torch.float64) - 0.5) * width * math.log(2)


def _truncated_mean(model, pred: torch.Tensor, genes: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    mu = (torch.exp(pred.double()) * library / TARGET_SUM).clamp_min(1e-12)
    if model.config.objective == "nb":
        theta = torch.exp(model.log_theta(genes).squeeze(-1).double())
        p_zero = torch.exp(theta * (torch.log(theta) - torch.log(theta + mu)))
    else:
        p_zero = torch.exp(-mu)
    return mu / (1.0 - p_zero).clamp_min(1e-12)


@torch.no_grad()
def _score_batch(model, batch: dict, generator: torch.Generator, mask_prob: float) -> dict[str, torch.Tensor]:
    """Mask one batch and return, per masked token: gene, count, library, model x̂ (+ scBERT log-probs), on CPU."""
    batch = to_device(batch, model)
    library = batch.get("library_size")  # (B,) each cell's raw total (corpus format >= 2), else its vocab genes
    library = (library if library is not None else cell_library_size(batch["values"], batch["cu_seqlens"])).double()
    c = model.config
    if isinstance(model, ScBert):
        bins = bin_values(batch["values"], batch["cu_seqlens"], c.n_bins, library_size=batch.get("library_size"))
    gene_ids, values, cu_seqlens, kept = sample_genes(
        batch["gene_ids"], batch["values"], batch["cu_seqlens"], c.max_genes, c.gene_sampling, generator,
        return_index=True,
    )  # fmt: skip
    mask = sample_mask(cu_seqlens, gene_ids.shape[0], mask_prob, generator)  # (T',)
    cell = token_cell_index(cu_seqlens, gene_ids.shape[0])  # (T',)
    out = {"genes": gene_ids[mask], "counts": values[mask].double(), "library": library[cell[mask]]}
    if isinstance(model, ScBert):
        labels = torch.where(mask, bins[kept], torch.full_like(gene_ids, IGNORE_INDEX))
        input_bins = torch.where(mask, torch.full_like(gene_ids, c.mask_token), bins[kept])
        result = model({"cu_seqlens": cu_seqlens, "gene_ids": gene_ids, "input_bins": input_bins, "labels": labels})
        log_p = F.log_softmax(result["logits"][mask].double(), dim=-1)  # (N, n_bins)
        expressed = torch.softmax(result["logits"][mask][:, 1:].double(), dim=-1)  # (N, n_bins - 1)
        out["pred_x"] = expressed @ _bin_centres(c.n_bins).to(expressed.device)
        out["log_p"] = log_p
        out["labels"] = labels[mask]
    else:
        result = model(
            {"gene_ids": gene_ids, "values": values, "cu_seqlens": cu_seqlens, "mask": mask, "library_size": library}
        )
        pred = result["pred"].double()
        if c.objective == "mse":
            out["pred_x"] = pred
        else:
            k_hat = _truncated_mean(model, pred, out["genes"], out["library"])
            out["pred_x"] = torch.log1p(k_hat / out["library"] * TARGET_SUM)
        out["loss_sum"] = result["loss"].double() * result["n_masked"]
    return {k: v.cpu() for k, v in out.items()}


def _regression(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {
        "mse": float(np.mean((pred - truth) ** 2)),
        "pearson": float(np.corrcoef(pred, truth)[0, 1]) if pred.std() > 0 and truth.std() > 0 else 0.0,
        "spearman": float(stats.spearmanr(pred, truth).statistic) if pred.std() > 0 and truth.std() > 0 else 0.0,
    }


def masked_value_prediction(
    model,
    cells: EvalCells,
    reference: EvalCells,
    *,
    batch_cells: int = 16,
    seed: int = 0,
    mask_prob: float | None = None,
    progress: bool = False,
    random_model=None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Score the model, both baselines and (given `random_model`) the random-init ablation on the same masked
    positions of `cells` (the ablation draws its masks from an identically seeded generator).

    Returns (report, points): points holds up to PLOT_POINTS (truth, model, per-gene, library) values for plots."""
    model.eval()
    mask_prob = float(mask_prob if mask_prob is not None else model.config.mask_prob)
    is_scbert = isinstance(model, ScBert)
    base = GeneBaselines(reference.vocab_counts, model.config.n_bins if is_scbert else None)
    generator = torch.Generator().manual_seed(seed)
    from tqdm.auto import tqdm

    batches = tqdm(cells.model_batches(batch_cells), desc="masked values", disable=not progress, unit="batch")
    parts = [_score_batch(model, b, generator, mask_prob) for b in batches]
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "loss_sum"}
    ablation = None
    if random_model is not None:
        random_model.eval()
        same_masks = torch.Generator().manual_seed(seed)
        ablation = [_score_batch(random_model, b, same_masks, mask_prob) for b in cells.model_batches(batch_cells)]
    genes = cat["genes"].numpy()
    counts, library = cat["counts"].numpy(), cat["library"].numpy()
    truth = np.log1p(counts / library * TARGET_SUM)
    preds = {
        "model": cat["pred_x"].numpy(),
        "per-gene mean": base.per_gene(genes),
        "library-scaled mean": base.library_scaled(genes, library),
    }
    random_cat = None
    if ablation is not None:
        random_cat = {k: torch.cat([p[k] for p in ablation]) for k in ablation[0] if k != "loss_sum"}
        if not torch.equal(random_cat["genes"], cat["genes"]):
            msg = "masked-value evaluation: the random-init ablation was masked at other positions than the model."
            raise RuntimeError(msg)
        preds["random-init"] = random_cat["pred_x"].numpy()
    table = {name: _regression(p, truth) for name, p in preds.items()}
    n = len(truth)
    if is_scbert:
        labels = cat["labels"].numpy()
        n_bins = model.config.n_bins
        for name, scored in (("model", cat), ("random-init", random_cat)):
            if scored is not None:
                table[name]["cross_entropy"] = float(-scored["log_p"][torch.arange(n), scored["labels"]].mean())
                table[name]["bin_accuracy"] = float((scored["log_p"].argmax(1).numpy() == labels).mean())
        table["per-gene mean"]["cross_entropy"] = float(-base.bin_log_p[genes, labels].mean())
        table["per-gene mean"]["bin_accuracy"] = float((base.bin_log_p[genes].argmax(1) == labels).mean())
        library_bins = _bin_of(preds["library-scaled mean"], n_bins)
        table["library-scaled mean"]["bin_accuracy"] = float((library_bins == labels).mean())
        native = "cross_entropy"
    else:
        native = f"{model.config.objective}_loss"
        table["model"][native] = float(sum(float(p["loss_sum"]) for p in parts) / max(n, 1))
        if ablation is not None:
            table["random-init"][native] = float(sum(float(p["loss_sum"]) for p in ablation) / max(n, 1))
    report = {
        "target": "x = log1p(count / cell total * 1e4) of the masked (expressed) genes",
        "n_cells": cells.n_cells,
        "n_masked": n,
        "mask_prob": mask_prob,
        "reference_cells": reference.n_cells,
        "native_metric": native,
        "predictors": table,
    }
    pick = np.random.default_rng(seed).permutation(n)[:PLOT_POINTS]
    points = {"truth": truth[pick], **{k: v[pick] for k, v in preds.items()}}
    return report, points
