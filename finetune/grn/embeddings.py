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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from data_prep.config import ShardConfig
from data_prep.gene_mapping import MappingOptions, map_genes
from data_prep.io_utils import atomic_write_text, publish
from data_prep.loader import StreamingCellDataset
from data_prep.sharder import shard
from data_prep.vocab import GeneVocab
from finetune.errors import GrnInputError
from pretrain.release import load_release, release_sha256

POOLINGS = ("mean", "attention", "static")
DEFAULT_MIN_COVERAGE = 0.5


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


def vocab_ids(genes: list[str], vocab: GeneVocab, source: str) -> np.ndarray:
    """(n_genes,) vocab id of each gene, -1 when unknown; the rule data_prep's sharding uses (case-insensitive)."""
    options = MappingOptions(case_insensitive=True, duplicate_genes="sum", min_mapped_fraction=0.0)
    return map_genes(list(genes), vocab, options, source).column_to_id


def check_coverage(genes: list[str], ids: np.ndarray, release: Path, min_coverage: float, source: str) -> None:
    mapped = int((ids >= 0).sum())
    fraction = mapped / max(1, len(genes))
    if fraction < min_coverage:
        missing = [g for g, i in zip(genes, ids, strict=True) if i < 0][:8]
        msg = (
            f"release {release}: its vocabulary covers only {mapped} of the {len(genes)} genes of {source} "
            f"({fraction:.1%}); at least {min_coverage:.0%} are required (--min-vocab-coverage). Unmapped examples: "
            f"{missing}. Use a release pretrained on the same species / gene naming (symbols vs Ensembl ids), or "
            "lower --min-vocab-coverage to accept learned vectors for the missing genes."
        )
        raise GrnInputError(msg)


@torch.no_grad()
def extract_gene_embeddings(
    release: Path,
    genes: list[str],
    expression_file: Path,
    *,
    value_kind: str,
    work_dir: Path | None = None,
    batch_cells: int = 32,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    seed: int = 0,
    progress: bool = False,
    model: torch.nn.Module | None = None,
) -> GeneEmbeddings:
    """Run `release` over the cells of `expression_file` and pool per gene (see the module docstring).

    Args:
        genes: the dataset's genes in its own order; the output rows follow it.
        expression_file: any data_prep input (BEELINE's genes × cells CSV, .h5ad, 10x); its genes must be `genes`.
        value_kind: "counts" or "log1p" (BEELINE). log1p values are turned back into relative expression
            (expm1) before the model's own per-cell normalisation; both families normalise per cell, so the
            unknown scale of a log-normalised matrix does not matter, only its log base does (natural assumed).
        model: run this model instead of the release's weights, with the release's vocabulary (the random-init
            ablation: `evidence.random_init_like(release)`).
    """
    release = Path(release)
    if model is None:
        model, vocab = load_release(release)
        origin = release_sha256(release)
    else:
        vocab, origin = GeneVocab.load(release / "vocab.json"), f"random-init:{release_sha256(release)}"
    ids = vocab_ids(genes, vocab, str(expression_file))
    check_coverage(genes, ids, release, min_coverage, str(expression_file))
    if not hasattr(model, "gene_states"):
        msg = (
            f"release {release}: family {type(model).__name__} has no gene_states(); scgrn cannot embed genes with it."
        )
        raise GrnInputError(msg)
    row_of_id = np.full(vocab.size, -1, dtype=np.int64)
    for row, i in enumerate(ids):
        if i >= 0 and row_of_id[i] < 0:
            row_of_id[i] = row
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        corpus = release_corpus(release, expression_file, value_kind, Path(tmp))
        pooled = _pool(model, corpus, row_of_id, len(genes), value_kind, batch_cells, seed, progress)
    static = model.gene_embedding.weight.detach().float().numpy()  # (V, D)
    static_rows = np.zeros((len(genes), static.shape[1]), dtype=np.float32)
    static_rows[ids >= 0] = static[ids[ids >= 0]]
    mean, attention, cells = pooled
    no_cells = (ids >= 0) & (cells == 0)
    mean[no_cells] = static_rows[no_cells]
    attention[no_cells] = static_rows[no_cells]
    return GeneEmbeddings(
        genes=list(genes),
        mean=mean,
        attention=attention,
        static=static_rows,
        mapped=ids >= 0,
        cells_expressing=cells,
        release=origin,
        meta={"release_path": str(release), "family": type(model).__name__, "value_kind": value_kind},
    )


def release_corpus(release: Path, expression_file: Path, value_kind: str, work_dir: Path) -> Path:
    """Shard `expression_file` with the release's own vocabulary (case-insensitive, unmapped genes dropped) into
    `work_dir/corpus`, so its cells stream through the model exactly as pretraining's did."""
    corpus = Path(work_dir) / "corpus"
    cfg = ShardConfig(
        inputs=[Path(expression_file)],
        out=corpus,
        format="zarr",
        vocab=Path(release) / "vocab.json",
        values=value_kind,
        unmapped="drop",
        val_fraction=0.0,
        mapping=MappingOptions(case_insensitive=True, duplicate_genes="sum", min_mapped_fraction=0.0),
    )
    shard(cfg, progress=False)
    return corpus


def release_batches(corpus: Path, batch_cells: int, value_kind: str = "counts"):
    """Packed batches of the corpus's cells in file order; log1p values are turned back into relative expression
    (expm1) for the model's own per-cell normalisation."""
    data = StreamingCellDataset(corpus, split="all", shuffle=False, batch_size=batch_cells, obs_columns=[])
    for batch in data:
        out = batch.to_torch()
        if value_kind == "log1p":
            out["values"] = torch.expm1(out["values"])
        yield out


def _states(model, batch: dict, value_kind: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    del value_kind  # release_batches has already turned log1p back into relative expression
    states = model.gene_states(batch["gene_ids"], batch["values"], batch["cu_seqlens"], generator=generator)  # (T, D)
    return batch["gene_ids"], states.float()


def _pool(model, corpus, row_of_id, n_genes, value_kind, batch_cells, seed, progress):
    """Two streaming passes over the cells: per-gene means, then attention weights against those means."""
    from tqdm.auto import tqdm

    d = model.gene_embedding.weight.shape[1]
    sums = torch.zeros(n_genes, d)
    cells = torch.zeros(n_genes, dtype=torch.int64)
    row_of_id = torch.from_numpy(row_of_id)
    for pass_ in ("mean", "attention"):
        generator = torch.Generator().manual_seed(seed)  # the same gene sampling in both passes
        if pass_ == "attention":
            means = sums / cells.clamp(min=1).unsqueeze(1)  # (G, D)
            best = torch.full((n_genes,), -math.inf)
            weighted = torch.zeros(n_genes, d)
            norm = torch.zeros(n_genes)
        batches = release_batches(corpus, batch_cells, value_kind)
        for batch in tqdm(batches, desc=f"gene states ({pass_})", disable=not progress):
            gene_ids, states = _states(model, batch, value_kind, generator)
            rows = row_of_id[gene_ids]  # (T,)
            keep = rows >= 0
            rows, states = rows[keep], states[keep]
            if pass_ == "mean":
                sums.index_add_(0, rows, states)
                cells.index_add_(0, rows, torch.ones_like(rows))
                continue
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
    mean = (sums / cells.clamp(min=1).unsqueeze(1)).numpy().astype(np.float32)
    attention = (weighted / norm.clamp(min=1e-30).unsqueeze(1)).numpy().astype(np.float32)
    return mean, attention, cells.numpy()


def cached_gene_embeddings(cache_dir: Path | None, key_parts: list[str], **kwargs) -> GeneEmbeddings:
    """`extract_gene_embeddings` with a cache under `cache_dir` keyed by release + input + options."""
    import hashlib

    if cache_dir is None:
        return extract_gene_embeddings(**kwargs)
    key = hashlib.sha256("\x00".join(key_parts).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"gene_embeddings-{key}.safetensors"
    if path.exists():
        return GeneEmbeddings.load(path)
    emb = extract_gene_embeddings(**kwargs)
    emb.save(path)
    atomic_write_text(path.with_suffix(".json"), json.dumps({"key": key_parts}, indent=1))
    return emb
