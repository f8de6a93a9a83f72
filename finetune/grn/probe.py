"""Perturbation probe: what the release predicts for every masked gene when one TF's input moves from low to high.

In-silico deletion (`evidence.py`) can only remove a TF from cells that express it; regulation that shows as "TF
off ⇒ target off" is never asked. The probe sets the TF's *input value* instead (value perturbation; issue 21):

1. **Metacells.** Sparse counts make single cells poor contexts, so each probed context is the average of a cell and
   its `metacell_size - 1` nearest neighbours (cosine kNN in a PCA of log-normalised expression; `metacell_size = 1`
   probes single cells). Up to `max_cells` metacells are anchored on cells drawn at random (seeded).
2. **Levels.** Each TF's low and high level are the `low_quantile` and `high_quantile` of its share of the metacell's
   total over the metacells that express it. scBERT reads them as expression bins (low at least bin 1, high at
   least one bin above low); the Exceiver as counts at the metacell's library size.
3. **Probe.** In each metacell a random `mask_fraction` of the genes is masked (hidden and predicted) and up to
   `tfs_per_cell` TFs (drawn among all TFs with levels, expressed in the metacell or not) are each set to their low
   and their high level, the TF's token inserted where the metacell lacks it. Both variants are one sequence each in
   a packed batch. Δ(t → g) = pred(g | t high) − pred(g | t low) for every masked gene g.
4. **Statistics** over metacells: the signed mean of Δ (`probe_mean`), its t statistic (`probe_t`), the mean of |Δ|
   (`probe_abs`) and the count (`probe_count`). The unsupervised method `pretrained-probe` ranks pairs by
   |probe_mean|; `random-init-probe` is the same computation on the release's random-init twin.

scBERT's prediction is the expected bin under the masked-bin softmax, the Exceiver's its decoder output (log
expression); both through `evidence.predict_masked`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from finetune.errors import GrnInputError
from finetune.grn.evidence import PairAccumulator, cached_arrays, predict_masked, raise_problems, readout_problems
from finetune.grn.release_inputs import ReleaseInputs
from pretrain.models.scbert import TARGET_SUM, bin_values
from pretrain.models.scgpt import bin_cell_values

PROBE_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """How many contexts and TFs the perturbation probe costs, and where its levels sit."""

    max_cells: int = 100
    """Metacells probed (anchored on cells drawn at random; all cells when fewer)."""
    metacell_size: int = 20
    """Cells averaged into one metacell (the anchor and its nearest neighbours); 1 = single cells."""
    mask_fraction: float = 0.25
    """Fraction of each context's genes masked and predicted (at least one). Each metacell yields tfs_per_cell ×
    masked genes (TF, target) samples, so this and tfs_per_cell set how often a pair is seen."""
    tfs_per_cell: int = 32
    """TFs probed per metacell (a random subset of the TFs with levels)."""
    max_genes: int = 256
    """A metacell keeps its most expressed genes up to this many (attention is quadratic)."""
    low_quantile: float = 0.05
    high_quantile: float = 0.95
    tokens_per_forward: int = 1 << 16
    """Packed tokens per forward pass (memory bound)."""
    seed: int = 0

    def __post_init__(self) -> None:
        problems = readout_problems(self, ("max_cells", "metacell_size", "tfs_per_cell", "max_genes"))
        if not 0.0 <= self.low_quantile < self.high_quantile <= 1.0:
            problems.append(
                f"low_quantile={self.low_quantile!r}, high_quantile={self.high_quantile!r}: 0 <= low < high <= 1"
            )
        raise_problems(self, problems)


# ---------------------------------------------------------------------------------------------------------------
# 1. metacells


def metacells(cells: sp.csr_matrix, size: int, n: int, seed: int) -> sp.csr_matrix:
    """(n', V) averages of `size` nearest cells around n' = min(n, cells) anchors drawn without replacement.

    Neighbours: cosine kNN in the top principal components of log1p(counts / total × 1e4) (at most 30; fewer with
    few cells or genes)."""
    n_cells = cells.shape[0]
    rng = np.random.default_rng([seed, 4241])
    anchors = np.sort(rng.choice(n_cells, size=min(n, n_cells), replace=False))
    size = min(size, n_cells)
    if size == 1:
        return cells[anchors].tocsr()
    from sklearn.decomposition import TruncatedSVD
    from sklearn.neighbors import NearestNeighbors

    totals = np.asarray(cells.sum(axis=1)).ravel()
    normalised = sp.diags(TARGET_SUM / np.maximum(totals, 1e-12)) @ cells
    normalised.data = np.log1p(normalised.data)
    normalised = normalised[:, np.flatnonzero(np.diff(normalised.tocsc().indptr))]  # expressed genes only
    n_components = int(min(30, normalised.shape[1] - 1, n_cells - 1))
    if n_components >= 2:
        embedding = TruncatedSVD(n_components=n_components, random_state=seed).fit_transform(normalised)
    else:
        embedding = normalised.toarray()
    neighbours = NearestNeighbors(n_neighbors=size, metric="cosine").fit(embedding)
    _, index = neighbours.kneighbors(embedding[anchors])  # (n', size), the anchor first
    rows = np.repeat(np.arange(len(anchors)), size)
    averaging = sp.csr_matrix((np.full(rows.size, 1.0 / size), (rows, index.ravel())), shape=(len(anchors), n_cells))
    return (averaging @ cells).tocsr().astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# 2. levels


def tf_levels(contexts: sp.csr_matrix, tf_ids: np.ndarray, low_q: float, high_q: float) -> np.ndarray:
    """(T, 2) each TF's low and high share of a context's total, over the contexts that express it; NaN where
    none does."""
    totals = np.asarray(contexts.sum(axis=1)).ravel()
    shares = (sp.diags(1.0 / np.maximum(totals, 1e-12)) @ contexts[:, tf_ids]).tocsc()
    out = np.full((len(tf_ids), 2), np.nan)
    for j in range(len(tf_ids)):
        values = shares.data[shares.indptr[j] : shares.indptr[j + 1]]
        values = values[values > 0]
        if values.size:
            out[j] = np.quantile(values, [low_q, high_q])
    return out


def level_bins(levels: np.ndarray, n_bins: int) -> np.ndarray:
    """(T, 2) shares → scBERT bins: low ≥ 1, high ≥ low + 1 (when the bins allow), both ≤ n_bins - 1."""
    flat = torch.from_numpy(np.nan_to_num(levels, nan=0.0).ravel().astype(np.float32))
    cu = torch.arange(flat.numel() + 1, dtype=torch.int32)  # every share its own one-gene "cell" of total 1
    bins = bin_values(flat, cu, n_bins, library_size=torch.ones(flat.numel())).numpy().reshape(levels.shape)
    bins = bins.clip(1, n_bins - 1)
    bins[:, 1] = np.minimum(np.maximum(bins[:, 1], bins[:, 0] + 1), n_bins - 1)
    return bins


# ---------------------------------------------------------------------------------------------------------------
# 3-4. probe and statistics


@torch.no_grad()
def perturbation_probe(
    model: torch.nn.Module,
    contexts: sp.csr_matrix,
    row_of_id: np.ndarray,
    tf_ids: np.ndarray,
    levels: np.ndarray,
    n_genes: int,
    config: ProbeConfig,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Δ(t → g) statistics (module docstring, steps 3-4) over the rows of `contexts` ((N, V) values by vocab id).

    Args:
        row_of_id: (V,) dataset row of each vocab id, -1 for genes outside the dataset.
        tf_ids: (T,) vocab ids of the TFs to probe; levels: (T, 2) their low and high shares (NaN: not probed).
    Returns {"probe_mean", "probe_t", "probe_abs", "probe_count"}: (G, G) float32 indexed [tf row, target row].
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng([config.seed, 7717])
    scbert = hasattr(model, "head")
    scgpt = hasattr(
        model, "predict_masked"
    )  # per-cell quantile bins: the TF moves from the cell's lowest bin to its top
    probed = np.flatnonzero(~np.isnan(levels[:, 0]))
    if scgpt:
        low_high = np.tile(np.array([1.0, model.config.n_bins - 1.0]), (len(levels), 1))
    else:
        low_high = level_bins(levels, model.config.n_bins) if scbert else np.nan_to_num(levels, nan=0.0)
    signed, absolute = PairAccumulator(n_genes), PairAccumulator(n_genes)
    pending: list[tuple] = []  # (ids, inputs, mask, library, tf row, target rows, is high)
    pending_tokens = 0

    def flush() -> None:
        nonlocal pending, pending_tokens
        if not pending:
            return
        ids = torch.from_numpy(np.concatenate([p[0] for p in pending]))
        inputs = torch.from_numpy(np.concatenate([p[1] for p in pending]))
        mask = torch.from_numpy(np.concatenate([p[2] for p in pending]))
        cu = torch.zeros(len(pending) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor([len(p[0]) for p in pending]), 0)
        library = torch.tensor([p[3] for p in pending], dtype=torch.float32)
        pred = predict_masked(model, ids, inputs, cu, mask, library).split([int(p[2].sum()) for p in pending])
        for low, high, p in zip(pred[0::2], pred[1::2], pending[0::2], strict=True):
            valid = p[5] >= 0
            delta = (high - low)[torch.from_numpy(valid)]
            tf_rows = torch.full((int(valid.sum()),), p[4], dtype=torch.int64)
            targets = torch.from_numpy(p[5][valid])
            signed.add(tf_rows, targets, delta)
            absolute.add(tf_rows, targets, delta.abs())
        pending, pending_tokens = [], 0

    for c in tqdm(range(contexts.shape[0]), desc="perturbation probe", unit="metacell", disable=not progress):
        row = contexts.getrow(c)
        ids, values = row.indices.astype(np.int64), row.data.astype(np.float32)
        library = float(values.sum())
        if len(ids) > config.max_genes:
            keep = np.sort(np.argsort(-values, kind="stable")[: config.max_genes])
            ids, values = ids[keep], values[keep]
        if len(ids) < 2 or library <= 0:
            continue
        one_cell = torch.tensor([0, len(ids)], dtype=torch.int32)
        if scgpt:
            inputs = bin_cell_values(torch.from_numpy(values), one_cell, model.config.n_bins).numpy()
        elif scbert:
            inputs = bin_values(torch.from_numpy(values), one_cell, model.config.n_bins,
                                library_size=torch.tensor([library])).numpy()  # fmt: skip
        else:
            inputs = values
        rows = row_of_id[ids]
        n_mask = max(1, round(config.mask_fraction * len(ids)))
        mask = np.zeros(len(ids), dtype=bool)
        mask[rng.choice(len(ids), size=n_mask, replace=False)] = True
        masked_ids = set(ids[mask].tolist())
        candidates = np.array([j for j in probed if int(tf_ids[j]) not in masked_ids], dtype=np.int64)
        if not len(candidates):
            continue
        chosen = rng.choice(candidates, size=min(config.tfs_per_cell, len(candidates)), replace=False)
        target_rows = rows[mask]
        position = {int(i): k for k, i in enumerate(ids)}
        for j in np.sort(chosen):
            tf_id, tf_row = int(tf_ids[j]), int(row_of_id[tf_ids[j]])
            k = position.get(tf_id)
            for level in (0, 1):
                value = low_high[j, level] if scbert or scgpt else low_high[j, level] * library
                if k is None:  # insert the TF's token at the end (neither family reads token order)
                    v_ids = np.append(ids, tf_id)
                    v_inputs = np.append(inputs, np.asarray(value, dtype=inputs.dtype))
                    v_mask = np.append(mask, False)
                else:
                    v_ids, v_inputs, v_mask = ids, inputs.copy(), mask
                    v_inputs[k] = value
                pending.append((v_ids, v_inputs, v_mask, library, tf_row, target_rows, level))
            pending_tokens += 2 * (len(ids) + 1)
            if pending_tokens >= config.tokens_per_forward:
                flush()
    flush()
    stats = signed.statistics()
    return {
        "probe_mean": stats["isd_mean"],
        "probe_t": stats["isd_t"],
        "probe_abs": absolute.statistics()["isd_mean"],
        "probe_count": stats["isd_count"],
    }


def predicts_values(model: torch.nn.Module) -> bool:
    """Whether the probe can move this model's input values and read its predictions: scBERT (bins), the Exceiver
    (counts) and scGPT (per-cell bins). The Geneformer family predicts gene tokens."""
    return not hasattr(model, "token_states")


def release_probe_evidence(
    rel: ReleaseInputs,
    tf_rows: np.ndarray,
    kind: str,
    config: ProbeConfig,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """The probe of the release (or its random-init twin, `kind`) on the dataset's metacells, cached like the
    deletion evidence. TFs the vocabulary lacks are not probed; TFs expressed in no metacell are named in one
    warning and not probed; when no TF is left the error says so."""
    if not predicts_values(rel.model(kind)):
        msg = (
            f"release {rel.path} (family {rel.family}) predicts gene identity (rank-value tokens), not expression: "
            "there is no predicted value for the probe to move. Leave the probe out (--evidence / --baselines) and "
            "use its embeddings, deletion (embedding shift) and attention readouts."
        )
        raise GrnInputError(msg)
    tf_rows = np.asarray(tf_rows, dtype=np.int64)
    key = rel.cache_key(
        f"probe-v{PROBE_VERSION}",
        kind,
        ",".join(map(str, tf_rows.tolist())),
        json.dumps(config.__dict__, sort_keys=True),
    )

    def compute() -> dict[str, np.ndarray]:
        contexts = metacells(rel.cells(), config.metacell_size, config.max_cells, config.seed)
        ids = rel.ids[tf_rows]
        in_vocab = ids >= 0
        levels = tf_levels(contexts, ids[in_vocab], config.low_quantile, config.high_quantile)
        silent = [rel.genes[r] for r, lv in zip(tf_rows[in_vocab], levels[:, 0], strict=True) if np.isnan(lv)]
        if silent and len(silent) == len(levels):
            msg = (
                f"{rel.expression_file}: none of the {len(levels)} TFs the release knows is expressed in any of the "
                f"{contexts.shape[0]} metacells, so the perturbation probe has no levels to set. Check that the "
                "expression matrix holds the TFs' measurements, or leave the probe out (--baselines / --evidence)."
            )
            raise GrnInputError(msg)
        if silent:
            log.warning("perturbation probe: %d TFs expressed in no metacell are not probed: %s", len(silent), silent)
        return perturbation_probe(
            rel.model(kind), contexts, rel.row_of_id, ids[in_vocab], levels, rel.n_genes, config, progress=progress
        )

    return cached_arrays(cache_dir, f"probe-{key}", compute)
