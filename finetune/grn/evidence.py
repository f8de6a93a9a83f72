"""Pair evidence: what the data and the pretrained model say about one (TF, target) pair.

Per-gene vectors (`embeddings.py`) can only say which genes look alike; a regulatory edge is a statement about a pair.
This module computes (G, G) matrices S[tf, target], each one piece of evidence about every pair:

- co-expression: |Pearson r| and |Spearman ρ| over cells (BEELINE's correlation baselines);
- conditional dependence: |partial correlation| from a shrunk precision matrix (Ledoit & Wolf 2004 shrinkage of
  the correlation matrix, then -P_ij / sqrt(P_ii P_jj)); it removes what two genes share through the others, e.g.
  a cell-type program that moves hundreds of genes together;
- tree importance: GRNBoost2 / GENIE3 (`trees.tree_importance_matrix`);
- **in-silico deletion** by the pretrained release (Geneformer's in-silico perturbation, Theodoris et al. 2023, on a
  masked-expression model): in each sampled cell a random set of genes is masked and the model predicts their
  expression; the same cell is then run again with one expressed TF's token removed (a deletion: only expressed genes
  are tokens, so this is "the TF at 0") and the prediction for every masked gene is read again. The change
  Δ(t → g) = pred(g | cell) - pred(g | cell without t) is what the model learned about how t's expression informs g's,
  conditional on the rest of the cell. Over the cells where both are expressed and g was masked, the evidence is
  |mean Δ| (`isd_mean`; the t statistic mean / (sd / sqrt(n)) is kept as `isd_t`: on a 10k-step demo-size release
  of dense simulated counts |mean| ranked true edges at 0.76 AUROC, |t| at 0.65, a random-init copy at 0.49).

scBERT's prediction is the expected expression bin under the masked-bin softmax; the Exceiver's is its decoder output
(log expression). Each variant of a cell is a sequence of its own in one packed batch (varlen attention), so a cell and
its K deletions cost one forward of (K + 1) sequences.

The in-silico deletion matrix also scores pairs on its own: the **unsupervised pretrained-model GRN** (method
`pretrained-isd`), with the same computation on a randomly initialised copy of the release as its ablation
(`random-init-isd`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from data_prep.io_utils import publish
from finetune.errors import GrnInputError
from finetune.grn.release_inputs import ReleaseInputs
from pretrain.models.scbert import bin_values

ISD_VERSION = 1


@dataclass(frozen=True)
class DeletionConfig:
    """How many cells and deletions the in-silico deletion evidence costs."""

    max_cells: int = 600
    """Cells streamed through the release (the first ones of the file, in order; all when fewer)."""
    mask_fraction: float = 0.15
    """Fraction of each cell's genes masked and predicted (the pretraining rate; at least one per cell)."""
    repeats: int = 2
    """Independent masks per cell, so each gene is predicted in more cells."""
    tfs_per_cell: int = 64
    """At most this many expressed TFs are deleted per cell and mask (a random subset when more are expressed)."""
    max_genes: int = 512
    """Cells longer than this keep their TFs and a random subset of the other genes (attention is quadratic)."""
    tokens_per_forward: int = 1 << 16
    """Packed tokens per forward pass (memory bound)."""
    seed: int = 0

    def __post_init__(self) -> None:
        raise_problems(self, readout_problems(self, ("max_cells", "repeats", "tfs_per_cell", "max_genes")))


def readout_problems(config, counts: tuple[str, ...]) -> list[str]:
    """Problems of a readout config: `counts` and tokens_per_forward must be ints >= 1, mask_fraction in (0, 1)."""
    problems = []
    for name in (*counts, "tokens_per_forward"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            problems.append(f"{name}={value!r}: an int >= 1")
    if not 0.0 < config.mask_fraction < 1.0:
        problems.append(f"mask_fraction={config.mask_fraction!r}: within (0, 1)")
    return problems


def raise_problems(config, problems: list[str]) -> None:
    if problems:
        msg = f"invalid {type(config).__name__}:\n  - " + "\n  - ".join(problems)
        raise GrnInputError(msg)


# ---------------------------------------------------------------------------------------------------------------
# co-expression and conditional dependence


def partial_correlation_matrix(expression: np.ndarray) -> np.ndarray:
    """|partial correlation| of every gene pair given all other genes: (G, C) -> (G, G) float32, diagonal 0.

    The genes' correlation matrix is shrunk towards the identity by Ledoit–Wolf (sklearn's estimator, on standardised
    genes) so that it is invertible with fewer cells than genes; constant genes get 0.
    """
    from sklearn.covariance import ledoit_wolf

    x = np.asarray(expression, dtype=np.float64)
    sd = x.std(axis=1)
    varying = sd > 0
    out = np.zeros((x.shape[0], x.shape[0]), dtype=np.float32)
    if varying.sum() < 2:
        return out
    z = (x[varying] - x[varying].mean(axis=1, keepdims=True)) / sd[varying, None]  # (G', C)
    shrunk, _ = ledoit_wolf(z.T, assume_centered=True)  # (G', G')
    precision = np.linalg.inv(shrunk)
    d = np.sqrt(np.diag(precision))
    partial = -precision / np.outer(d, d)
    np.fill_diagonal(partial, 0.0)
    out[np.ix_(varying, varying)] = np.abs(partial)
    return out


# ---------------------------------------------------------------------------------------------------------------
# in-silico deletion by the release


@torch.no_grad()
def predict_masked(model, gene_ids, bins_or_values, cu_seqlens, mask, library) -> torch.Tensor:
    """The model's prediction for every masked token of a packed batch: (N,), in packed order."""
    if hasattr(model, "predict_masked"):  # scGPT: its expression decoder on the masked (mask_value) genes
        return model.predict_masked(gene_ids, bins_or_values, cu_seqlens, mask).float()
    if hasattr(model, "head"):  # scBERT: expected bin under the masked-bin softmax
        mask_token = model.config.mask_token
        inputs = torch.where(mask, torch.full_like(bins_or_values, mask_token), bins_or_values)
        hidden = model.encode(gene_ids, inputs, cu_seqlens)  # (T, D)
        probs = torch.softmax(model.head(hidden[mask]).float(), dim=-1)  # (N, n_bins)
        return probs @ torch.arange(probs.shape[1], dtype=probs.dtype)  # (N,)
    batch = {"gene_ids": gene_ids, "values": bins_or_values, "cu_seqlens": cu_seqlens, "mask": mask}
    batch["library_size"] = library
    return model(batch)["pred"].float()  # Exceiver: (N,) log expression of the masked genes


def _cell_variants(rng, rows, is_tf, n_mask, tfs_per_cell):
    """One cell's mask and the tokens to delete: (mask (n,), deleted token positions (K,))."""
    n = len(rows)
    order = rng.permutation(n)
    mask = np.zeros(n, dtype=bool)
    mask[order[:n_mask]] = True
    candidates = np.flatnonzero(is_tf & ~mask)
    if len(candidates) > tfs_per_cell:
        candidates = rng.choice(candidates, size=tfs_per_cell, replace=False)
    return mask, np.sort(candidates)


class PairAccumulator:
    """Running sums of Δ(t → g) over cells: n, Σ Δ, Σ Δ² per pair, as (G, G) float64."""

    def __init__(self, n_genes: int) -> None:
        self.n_genes = n_genes
        self.count = torch.zeros(n_genes * n_genes, dtype=torch.float64)
        self.total = torch.zeros_like(self.count)
        self.squares = torch.zeros_like(self.count)

    def add(self, tf_rows: torch.Tensor, target_rows: torch.Tensor, delta: torch.Tensor) -> None:
        code = tf_rows * self.n_genes + target_rows
        delta = delta.double()
        self.count.index_add_(0, code, torch.ones_like(delta))
        self.total.index_add_(0, code, delta)
        self.squares.index_add_(0, code, delta * delta)

    def statistics(self) -> dict[str, np.ndarray]:
        n = self.count
        mean = self.total / n.clamp(min=1)
        var = (self.squares / n.clamp(min=1) - mean**2).clamp(min=0) * n / (n - 1).clamp(min=1)
        t = mean / (var.sqrt() / n.clamp(min=1).sqrt()).clamp(min=1e-6)
        t = torch.where(n >= 2, t, torch.zeros_like(t))
        shape = (self.n_genes, self.n_genes)
        return {
            "isd_t": t.view(shape).float().numpy(),
            "isd_mean": mean.view(shape).float().numpy(),
            "isd_count": n.view(shape).float().numpy(),
        }


@torch.no_grad()
def in_silico_deletion(
    model: torch.nn.Module,
    batches,
    row_of_id: np.ndarray,
    tf_rows: np.ndarray,
    n_genes: int,
    config: DeletionConfig,
    progress: bool = False,
    total_cells: int | None = None,
) -> dict[str, np.ndarray]:
    """Δ(t → g) statistics (see the module docstring) over the cells of `batches` (packed, raw counts).

    Args:
        batches: iterable of dicts with gene_ids (T,), values (T,), cu_seqlens (B+1,), in the release's vocab ids.
        row_of_id: (V,) dataset row of each vocab id, -1 for genes outside the dataset.
        tf_rows: dataset rows of the TFs.
    Returns {"isd_t", "isd_mean", "isd_count"}: (G, G) float32 matrices indexed [tf row, target row].
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(config.seed)
    is_tf_row = np.zeros(n_genes, dtype=bool)
    is_tf_row[tf_rows] = True
    scbert = hasattr(model, "head")
    acc = PairAccumulator(n_genes)
    # variants waiting for a forward: per variant (gene ids, inputs, mask, library, delete-row, reference index)
    pending: list[tuple] = []
    pending_tokens = 0
    references: dict[int, torch.Tensor] = {}
    seen = 0

    def flush() -> None:
        nonlocal pending, pending_tokens
        if not pending:
            return
        ids = torch.from_numpy(np.concatenate([p[0] for p in pending]))
        inputs = torch.from_numpy(np.concatenate([p[1] for p in pending]))
        mask = torch.from_numpy(np.concatenate([p[2] for p in pending]))
        lengths = torch.tensor([len(p[0]) for p in pending])
        cu = torch.zeros(len(pending) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths, 0)
        library = torch.tensor([p[3] for p in pending], dtype=torch.float32)
        pred = predict_masked(model, ids, inputs, cu, mask, library)  # (N,)
        per_variant = pred.split([int(p[2].sum()) for p in pending])
        for p, values in zip(pending, per_variant, strict=True):
            deleted_row, ref_key, target_rows = p[4], p[5], p[6]
            if deleted_row < 0:
                references[ref_key] = values
                continue
            valid = torch.from_numpy(target_rows >= 0)  # tokens of genes outside the dataset are not targets
            acc.add(
                torch.full((int(valid.sum()),), deleted_row, dtype=torch.int64),
                torch.from_numpy(target_rows)[valid],
                (references[ref_key] - values)[valid],
            )
        pending, pending_tokens = [], 0
        references.clear()  # a reference and its deletions are always flushed together

    bar = tqdm(total=total_cells, desc="in-silico deletion", unit="cell", disable=not progress)
    ref_counter = 0
    for batch in batches:
        cu = batch["cu_seqlens"].numpy()
        gene_ids = batch["gene_ids"].numpy()
        values = batch["values"]
        if hasattr(model, "predict_masked"):  # scGPT: each cell's values binned by its own quantiles
            from pretrain.models.scgpt import bin_cell_values

            inputs_all = bin_cell_values(values, batch["cu_seqlens"], model.config.n_bins).numpy()
        elif scbert:
            inputs_all = bin_values(values, batch["cu_seqlens"], model.config.n_bins).numpy()
        else:
            inputs_all = values.numpy()
        for c in range(len(cu) - 1):
            if seen >= config.max_cells:
                break
            seen += 1
            lo, hi = int(cu[c]), int(cu[c + 1])
            ids, inputs = gene_ids[lo:hi], inputs_all[lo:hi]
            library = float(values[lo:hi].sum())  # whole-cell total before any deletion (Exceiver's normaliser)
            rows = row_of_id[ids]
            keep = rows >= 0
            if len(ids) > config.max_genes:  # keep the TFs, subsample the rest
                others = np.flatnonzero(~(keep & is_tf_row[np.maximum(rows, 0)]))
                drop = rng.choice(others, size=min(len(others), len(ids) - config.max_genes), replace=False)
                sel = np.ones(len(ids), dtype=bool)
                sel[drop] = False
                ids, inputs, rows, keep = ids[sel], inputs[sel], rows[sel], keep[sel]
            if len(ids) < 3:
                continue
            is_tf = keep & is_tf_row[np.maximum(rows, 0)]
            n_mask = max(1, round(config.mask_fraction * len(ids)))
            for _ in range(config.repeats):
                mask, deleted = _cell_variants(rng, rows, is_tf, n_mask, config.tfs_per_cell)
                target_keep = keep[mask]
                target_rows = rows[mask]
                if not len(deleted) or not target_keep.any():
                    continue
                ref_key = ref_counter
                ref_counter += 1
                variants = [(ids, inputs, mask, library, -1, ref_key, target_rows)]
                for position in deleted:
                    sel = np.ones(len(ids), dtype=bool)
                    sel[position] = False
                    variants.append(
                        (ids[sel], inputs[sel], mask[sel], library, int(rows[position]), ref_key, target_rows)
                    )
                # a reference and its deletions go in one flush, so the reference is always computed first
                size = len(ids) * len(variants)
                if pending_tokens and pending_tokens + size > config.tokens_per_forward:
                    flush()
                pending.extend(variants)
                pending_tokens += size
            bar.update(1)
        if seen >= config.max_cells:
            break
    flush()
    bar.close()
    return acc.statistics()


def release_deletion_evidence(
    rel: ReleaseInputs,
    tf_rows: np.ndarray,
    kind: str,
    config: DeletionConfig,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """In-silico deletion statistics of the release (or of its random-init twin, `kind`) on the dataset's cells,
    cached under `cache_dir` by model, data, genes, TFs and `config` (safetensors, written atomically)."""
    key = rel.cache_key(
        f"isd-v{ISD_VERSION}",
        kind,
        ",".join(map(str, np.asarray(tf_rows).tolist())),
        json.dumps(config.__dict__, sort_keys=True),
    )
    model = rel.model(kind)
    deletion = in_silico_deletion
    if hasattr(model, "token_states"):  # Geneformer family: embedding shift when the TF's token is removed
        from finetune.grn.token_deletion import token_deletion as deletion
    return cached_arrays(
        cache_dir,
        f"isd-{key}",
        lambda: deletion(
            model,
            rel.batches(64),
            rel.row_of_id,
            np.asarray(tf_rows),
            rel.n_genes,
            config,
            progress=progress,
            total_cells=config.max_cells,
        ),
    )


def cached_arrays(cache_dir: Path | None, name: str, compute) -> dict[str, np.ndarray]:
    """`compute()` (a dict of arrays), cached as `cache_dir/name.safetensors` (written atomically)."""
    path = None if cache_dir is None else Path(cache_dir) / f"{name}.safetensors"
    if path is not None and path.exists():
        return load_file(str(path))
    arrays = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_name(f".{path.name}.tmp")
        save_file(arrays, str(tmp_path))
        publish(tmp_path, path)
    return arrays


def normal_scores(matrix: np.ndarray, tf_rows: np.ndarray) -> np.ndarray:
    """Each candidate pair's score (TF rows × all genes, self pairs excluded) → the normal quantile of its rank
    (ties averaged), so evidence of any scale enters a model on one scale; other cells 0. (G, G) float32."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    n_genes = matrix.shape[0]
    candidate = np.zeros((n_genes, n_genes), dtype=bool)
    candidate[tf_rows] = True
    np.fill_diagonal(candidate, val=False)
    values = np.nan_to_num(np.asarray(matrix, dtype=np.float64)[candidate], nan=0.0)
    out = np.zeros((n_genes, n_genes), dtype=np.float32)
    if values.size:
        out[candidate] = ndtri((rankdata(values) - 0.5) / values.size)
    return out


def evidence_tensor(matrices: dict[object, np.ndarray], tf_rows: np.ndarray, threads: int = 1) -> torch.Tensor:
    """Stack the named (G, G) evidence matrices as normal scores: (F, G, G) float32, in the dict's order. A matrix
    object given under several names is scored once; `threads` > 1 scores matrices side by side (the time is in
    NumPy's argsort, which releases the GIL); the values do not depend on it."""
    unique = list({id(m): m for m in matrices.values()}.values())
    if threads > 1 and len(unique) > 1:
        with ThreadPoolExecutor(min(threads, len(unique))) as pool:
            scored = list(pool.map(lambda m: normal_scores(m, tf_rows), unique))
    else:
        scored = [normal_scores(m, tf_rows) for m in unique]
    by_id = {id(m): s for m, s in zip(unique, scored, strict=True)}
    return torch.from_numpy(np.stack([by_id[id(m)] for m in matrices.values()]))


def tf_regression_matrix(expression: np.ndarray, tf_rows: np.ndarray, ridge: float = 1e-2) -> np.ndarray:
    """|t statistic| of each TF's coefficient when a gene is regressed on all TFs (ridge, standardised genes):
    dependence of the target on the TF *given the other TFs*, which separates a regulator from TFs that merely move
    with it through a shared cell-state program (the Inferelator's and TIGRESS's regression view of a GRN).

    One solve serves every non-TF target; a TF target is regressed on the other TFs through the Schur complement of
    the same inverse. Shapes: expression (G, C), tf_rows (T,) → (G, G) float32 S[tf, target], other rows 0.
    """
    x = np.asarray(expression, dtype=np.float64)
    sd = x.std(axis=1)
    z = np.where(sd[:, None] > 0, (x - x.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)[:, None], 0.0)
    n_genes, n_cells = z.shape
    tf_rows = np.asarray(tf_rows, dtype=np.int64)
    a = z[tf_rows].T  # (C, T)
    gram = a.T @ a + ridge * n_cells * np.eye(len(tf_rows))  # (T, T)
    inverse = np.linalg.inv(gram)
    out = np.zeros((n_genes, n_genes), dtype=np.float32)
    is_tf = np.zeros(n_genes, dtype=bool)
    is_tf[tf_rows] = True
    targets = np.flatnonzero(~is_tf)
    if len(targets):
        coef = inverse @ (a.T @ z[targets].T)  # (T, G')
        residual = z[targets].T - a @ coef  # (C, G')
        noise = (residual**2).mean(axis=0)  # (G',)
        se = np.sqrt(np.outer(np.diag(inverse), noise)).clip(min=1e-12)  # (T, G')
        out[np.ix_(tf_rows, targets)] = np.abs(coef / se)
    for i, row in enumerate(tf_rows):  # a TF as target: regress on the other TFs
        others = np.delete(np.arange(len(tf_rows)), i)
        if not len(others):
            continue
        sub = inverse[np.ix_(others, others)] - np.outer(inverse[others, i], inverse[i, others]) / inverse[i, i]
        coef = sub @ (a[:, others].T @ z[row])
        noise = ((z[row] - a[:, others] @ coef) ** 2).mean()
        se = np.sqrt(np.diag(sub) * noise).clip(min=1e-12)
        out[tf_rows[others], row] = np.abs(coef / se)
    return out
