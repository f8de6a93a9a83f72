"""Gene embeddings from a pretrained release, for the genes of one GRN dataset (scTransNet's "LLM embeddings").

The target dataset's cells go through data_prep (sharded with the release's own vocabulary, case-insensitive so that
upper-cased mouse symbols meet human ones) and are streamed in packed batches through the model. Each expressed
gene of each cell gets a contextual state (`gene_states` of the model); they are pooled per gene over the cells that
express it:

- mean:      e_g = (1/|C_g|) Σ_c h_cg
- attention: e_g = Σ_c α_cg h_cg with α_·g = softmax_c(⟨h_cg, m_g⟩ / √D) and m_g the mean above: cells whose state
             agrees with the gene's typical state weigh more (a parameter-free attention pooling over cells, in the
             spirit of scTransNet's pooling of scBERT outputs; Kommu et al. 2024). Computed in two streaming passes.
- static:    the release's input gene-token embedding (no cells involved).

Genes the vocabulary does not know are kept (never dropped): their rows are zero and `mapped` is False, and the
joint model gives them a learned vector instead. Genes that are mapped but expressed in no cell get their static
embedding as contextual one (counted in the report).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from data_prep.io_utils import publish
from finetune.errors import GrnInputError
from finetune.grn.release_inputs import ReleaseInputs, open_release_inputs

POOLINGS = ("mean", "attention", "static")
DEFAULT_MIN_COVERAGE = 0.5
EMBEDDINGS_VERSION = 1
# the first pass's gene states are kept for the second while they take at most this much memory
KEEP_STATES_BYTES = 1 << 30


@dataclass
class GeneEmbeddings:
    """Per-gene vectors for one dataset's genes (row i = genes[i]), from one release."""

    genes: list[str]
    mean: np.ndarray  # (n_genes, D) float32
    attention: np.ndarray  # (n_genes, D) float32
    static: np.ndarray  # (n_genes, D) float32
    mapped: np.ndarray  # (n_genes,) bool: the gene has a vocab token
    cells_expressing: np.ndarray  # (n_genes,) int64: cells whose states were pooled
    release: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.static.shape[1])

    def get(self, pooling: str) -> np.ndarray:
        if pooling not in POOLINGS:
            msg = f"embedding pooling {pooling!r} is not known; allowed: {POOLINGS}."
            raise GrnInputError(msg)
        return getattr(self, pooling)

    def report(self) -> dict:
        unmapped = [g for g, m in zip(self.genes, self.mapped, strict=True) if not m]
        no_context = [g for g, m, c in zip(self.genes, self.mapped, self.cells_expressing, strict=True) if m and c == 0]
        return {
            "release": self.release,
            "n_genes": len(self.genes),
            "n_mapped": int(self.mapped.sum()),
            "coverage": float(self.mapped.mean()) if len(self.genes) else 0.0,
            "n_unmapped": len(unmapped),
            "unmapped": unmapped,
            "n_mapped_without_cells": len(no_context),
            "dim": self.dim,
            **self.meta,
        }

    def save(self, path: Path) -> None:
        """safetensors for the arrays, JSON for the rest (no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        arrays = {
            "mean": self.mean,
            "attention": self.attention,
            "static": self.static,
            "mapped": self.mapped.astype(np.uint8),
            "cells_expressing": self.cells_expressing,
        }
        save_file(
            arrays,
            str(tmp),
            metadata={"genes": json.dumps(self.genes), "release": self.release, "meta": json.dumps(self.meta)},
        )
        publish(tmp, path)

    @classmethod
    def load(cls, path: Path) -> GeneEmbeddings:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            meta = f.metadata()
        arrays = load_file(str(path))
        return cls(
            genes=json.loads(meta["genes"]),
            mean=arrays["mean"],
            attention=arrays["attention"],
            static=arrays["static"],
            mapped=arrays["mapped"].astype(bool),
            cells_expressing=arrays["cells_expressing"],
            release=meta["release"],
            meta=json.loads(meta["meta"]),
        )


@torch.no_grad()
def gene_embeddings(
    rel: ReleaseInputs, kind: str = "pretrained", *, batch_cells: int = 32, seed: int = 0, progress: bool = False
) -> GeneEmbeddings:
    """Run the release (or its random-init twin, `kind`) over the dataset's cells and pool per gene (see the module
    docstring). Rows follow `rel.genes`."""
    model = rel.model(kind)
    if not hasattr(model, "gene_states") and not hasattr(model, "token_states"):
        msg = f"release {rel.path}: family {rel.family} has no gene_states(); scgrn cannot embed genes with it."
        raise GrnInputError(msg)
    ids = rel.ids
    mean, attention, cells = _pool(model, rel, batch_cells, seed, progress)
    static = model.gene_embedding.weight.detach().float().numpy()  # (V, D)
    static_rows = np.zeros((rel.n_genes, static.shape[1]), dtype=np.float32)
    static_rows[ids >= 0] = static[ids[ids >= 0]]
    no_cells = (ids >= 0) & (cells == 0)
    mean[no_cells] = static_rows[no_cells]
    attention[no_cells] = static_rows[no_cells]
    return GeneEmbeddings(
        genes=list(rel.genes),
        mean=mean,
        attention=attention,
        static=static_rows,
        mapped=ids >= 0,
        cells_expressing=cells,
        release=rel.sha256 if kind == "pretrained" else f"random-init:{rel.sha256}",
        meta={"release_path": str(rel.path), "family": type(model).__name__, "value_kind": rel.value_kind},
    )


def extract_gene_embeddings(
    release: Path,
    genes: list[str],
    expression_file: Path,
    *,
    value_kind: str,
    work_dir: Path | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    kind: str = "pretrained",
    **options,
) -> GeneEmbeddings:
    """`gene_embeddings` of one release on one file, for a caller that needs nothing else from the release.

    Args:
        genes: the dataset's genes in its own order; the output rows follow it.
        expression_file: any data_prep input (BEELINE's genes × cells CSV, .h5ad, 10x); its genes must be `genes`.
        value_kind: "counts" or "log1p" (BEELINE). log1p values are turned back into relative expression
            (expm1) before the model's own per-cell normalisation; both families normalise per cell, so the
            unknown scale of a log-normalised matrix does not matter, only its log base does (natural assumed).
        kind: "pretrained" or "random-init" (the release's architecture with fresh weights: the ablation).
    """
    with open_release_inputs(
        release, genes, expression_file, value_kind=value_kind, min_coverage=min_coverage, work_dir=work_dir
    ) as rel:
        return gene_embeddings(rel, kind, **options)


def _states(model, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(gene ids, states) of a batch's tokens: every given gene (scBERT, Exceiver), or the tokens a Geneformer-family
    model makes of the cell (its rank-value context; specials map to no dataset gene and are dropped by the caller)."""
    if hasattr(model, "token_states"):
        ids, states, _ = model.token_states(batch["gene_ids"], batch["values"], batch["cu_seqlens"])
        return ids, states.float()
    states = model.gene_states(batch["gene_ids"], batch["values"], batch["cu_seqlens"], generator=generator)  # (T, D)
    return batch["gene_ids"], states.float()


def _pool(model, rel: ReleaseInputs, batch_cells, seed, progress, keep_bytes: int = KEEP_STATES_BYTES):
    """Two streaming passes over the cells: per-gene means, then attention weights against those means. The first
    pass keeps its states while they fit in `keep_bytes`, so the second reads them back instead of running the model
    again (same states: the gene sampling is seeded alike in both passes); past the budget it recomputes."""
    from tqdm.auto import tqdm

    n_genes = rel.n_genes
    d = model.gene_embedding.weight.shape[1]
    sums = torch.zeros(n_genes, d)
    cells = torch.zeros(n_genes, dtype=torch.int64)
    row_of_id = torch.from_numpy(rel.row_of_id)
    kept: list[tuple[torch.Tensor, torch.Tensor]] | None = []
    kept_bytes = 0

    def states_of(generator):
        for batch in tqdm(rel.batches(batch_cells), desc="gene states", disable=not progress):
            gene_ids, states = _states(model, batch, generator)
            rows = row_of_id[gene_ids]  # (T,)
            keep = rows >= 0
            yield rows[keep], states[keep]

    generator = torch.Generator().manual_seed(seed)
    for rows, states in states_of(generator):
        sums.index_add_(0, rows, states)
        cells.index_add_(0, rows, torch.ones_like(rows))
        if kept is not None:
            kept_bytes += states.nbytes + rows.nbytes
            if kept_bytes <= keep_bytes:
                kept.append((rows, states))
            else:
                kept = None  # past the budget: the second pass runs the model again
    means = sums / cells.clamp(min=1).unsqueeze(1)  # (G, D)
    best = torch.full((n_genes,), -math.inf)
    weighted = torch.zeros(n_genes, d)
    norm = torch.zeros(n_genes)
    second = kept if kept is not None else states_of(torch.Generator().manual_seed(seed))
    for rows, states in second:
        logits = (states * means[rows]).sum(-1) / math.sqrt(d)  # (T,)
        # streaming softmax per gene: rescale what was accumulated when a larger logit arrives
        new_best = best.clone().scatter_reduce_(0, rows, logits, reduce="amax")
        scale = torch.exp(best - new_best).nan_to_num(0.0)  # (G,) 0 where nothing was seen yet
        weighted *= scale.unsqueeze(1)
        norm *= scale
        w = torch.exp(logits - new_best[rows])  # (T,)
        weighted.index_add_(0, rows, states * w.unsqueeze(1))
        norm.index_add_(0, rows, w)
        best = new_best
    mean = means.numpy().astype(np.float32)
    attention = (weighted / norm.clamp(min=1e-30).unsqueeze(1)).numpy().astype(np.float32)
    return mean, attention, cells.numpy()


def cached_gene_embeddings(
    rel: ReleaseInputs, kind: str, cache_dir: Path | None, *, progress: bool = False
) -> GeneEmbeddings:
    """`gene_embeddings` with a cache under `cache_dir` keyed by model, data, genes and kind (safetensors)."""
    if cache_dir is None:
        return gene_embeddings(rel, kind, progress=progress)
    key = rel.cache_key(f"gene-embeddings-v{EMBEDDINGS_VERSION}", kind)
    path = Path(cache_dir) / f"gene_embeddings-{key}.safetensors"
    if path.exists():
        return GeneEmbeddings.load(path)
    emb = gene_embeddings(rel, kind, progress=progress)
    emb.save(path)
    return emb
