"""The release as one GRN run sees it: loaded and hashed once, its random-init twin built once, and the dataset's
cells sharded once with the release's own vocabulary.

Every readout of the release (gene embeddings, in-silico deletion, the perturbation probe) is a function of a
`ReleaseInputs` and a model kind ("pretrained" or "random-init"), so a run loads, hashes and shards once however
many readouts it asks for, and a new readout is one function behind the same interface (issue 21, item 5).

    with open_release_inputs(release, genes, expression_file, value_kind="log1p") as rel:
        model = rel.model("random-init")
        for batch in rel.batches(64): ...
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from data_prep.io_utils import sha256_file
from data_prep.vocab import GeneVocab
from finetune.errors import GrnInputError
from finetune.grn.adaptation import AdaptConfig, cached_adapt, check_adaptable
from pretrain.model_factory import build_model, families
from pretrain.release import load_release

MODEL_KINDS = ("pretrained", "random-init")
RANDOM_INIT_SEED = 0


def random_init_like(release: Path, seed: int = RANDOM_INIT_SEED) -> torch.nn.Module:
    """The release's architecture with fresh random weights (its own initialiser, seeded): the ablation that shows
    what pretraining adds to any readout."""
    config = json.loads((Path(release) / "config.json").read_text())
    config_cls, _ = families()[config["family"]]
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's global RNG
        torch.manual_seed(seed)
        model = build_model(config["family"], config_cls(**config["model"])).eval()
    if hasattr(model, "gene_median"):  # Geneformer: the tokenizer's medians are data, not weights; the twin keeps them
        from safetensors import safe_open

        with safe_open(str(Path(release) / "model.safetensors"), framework="pt") as f:
            model.gene_median.copy_(f.get_tensor("gene_median"))
    return model


@dataclass
class ReleaseInputs:
    """One release and one dataset, prepared once per run (see the module docstring)."""

    path: Path
    sha256: str  # of model.safetensors (checked against config.json when loaded)
    family: str
    vocab: GeneVocab
    genes: list[str]  # the dataset's genes, in its order (readouts' rows follow it)
    ids: np.ndarray  # (G,) vocab id of each gene, -1 when the vocabulary lacks it
    value_kind: str  # "counts" or "log1p"
    expression_file: Path
    expression_sha256: str
    work_dir: Path  # where the dataset's cells are sharded (on first use)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)  # continued pretraining on these cells (none by default)
    cache_dir: Path | None = None  # where adapted weights are cached
    progress: bool = False
    _corpus: Path | None = field(default=None, repr=False)
    _base: dict[str, torch.nn.Module] = field(default_factory=dict, repr=False)
    _models: dict[str, torch.nn.Module] = field(default_factory=dict, repr=False)
    _cells: sp.csr_matrix | None = field(default=None, repr=False)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def corpus(self) -> Path:
        """The dataset's cells sharded with the release's vocabulary (sharded on first use: a run whose readouts
        all come from the cache never shards)."""
        if self._corpus is None:
            self._corpus = release_corpus(self.path, self.expression_file, self.value_kind, self.work_dir)
        return self._corpus

    @property
    def row_of_id(self) -> np.ndarray:
        """(V,) dataset row of each vocab id, -1 for ids outside the dataset (the first row when a gene repeats)."""
        out = np.full(self.vocab.size, -1, dtype=np.int64)
        for row, i in enumerate(self.ids):
            if i >= 0 and out[i] < 0:
                out[i] = row
        return out

    def model(self, kind: str) -> torch.nn.Module:
        """The pretrained release or its random-init twin (built once, seeded), each adapted to the dataset's cells
        for `adapt.steps` steps when asked (adaptation.py), in eval mode."""
        if kind not in MODEL_KINDS:
            msg = f"model kind {kind!r}: allowed {MODEL_KINDS}"
            raise ValueError(msg)
        if kind not in self._models:
            model = self._base["pretrained"] if kind == "pretrained" else random_init_like(self.path)
            if self.adapt.steps:
                key = [self.sha256, kind, self.expression_sha256, self.value_kind]
                measured = np.unique(self.ids[self.ids >= 0])  # the dataset's genes: its measured-gene panel
                model = cached_adapt(model, self.cells(), self.adapt, key, self.cache_dir, self.progress, measured)
            self._models[kind] = model
        return self._models[kind]

    def batches(self, batch_cells: int) -> Iterator[dict]:
        """Packed batches of the dataset's cells in file order; log1p values are turned back into relative
        expression (expm1) for the model's own per-cell normalisation."""
        from data_prep.loader import StreamingCellDataset

        data = StreamingCellDataset(self.corpus, split="all", shuffle=False, batch_size=batch_cells, obs_columns=[])
        for batch in data:
            out = batch.to_torch()
            if self.value_kind == "log1p":
                out["values"] = torch.expm1(out["values"])
            yield out

    def cells(self) -> sp.csr_matrix:
        """(cells, V) float32 matrix of every cell's values as the model reads them (relative expression for
        log1p data), indexed by vocab id; read once."""
        if self._cells is None:
            rows, cols, vals, n_cells = [], [], [], 0
            for batch in self.batches(256):
                cu = batch["cu_seqlens"].numpy()
                cell_of_token = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
                rows.append(cell_of_token + n_cells)
                cols.append(batch["gene_ids"].numpy())
                vals.append(batch["values"].numpy().astype(np.float32))
                n_cells += len(cu) - 1
            matrix = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_cells, self.vocab.size)
            )
            matrix.sum_duplicates()
            self._cells = matrix
        return self._cells

    def cache_key(self, readout: str, kind: str, *parts: str) -> str:
        """A cache key over the model, the data, the genes and the readout's own options."""
        text = "\x00".join(
            [readout, self.sha256, kind, self.expression_sha256, "\n".join(self.genes), self.value_kind, *parts]
            + ([self.adapt.key()] if self.adapt.steps else [])  # N = 0: the keys of no adaptation
        )
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def vocab_ids(genes: list[str], vocab: GeneVocab, source: str) -> np.ndarray:
    """(n_genes,) vocab id of each gene, -1 when unknown; the rule data_prep's sharding uses (case-insensitive)."""
    from data_prep.gene_mapping import MappingOptions, map_genes

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


def release_corpus(release: Path, expression_file: Path, value_kind: str, work_dir: Path) -> Path:
    """Shard `expression_file` with the release's own vocabulary (case-insensitive, unmapped genes dropped) into
    `work_dir/corpus`, so its cells stream through the model exactly as pretraining's did."""
    from data_prep.config import ShardConfig
    from data_prep.gene_mapping import MappingOptions
    from data_prep.sharder import shard

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


@contextmanager
def open_release_inputs(
    release: Path,
    genes: list[str],
    expression_file: Path,
    *,
    value_kind: str,
    min_coverage: float = 0.5,
    work_dir: Path | None = None,
    adapt: AdaptConfig | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Iterator[ReleaseInputs]:
    """Load the release (its sha256 checked once) and map the dataset's genes onto its vocabulary (refusing one that
    covers fewer than `min_coverage` of them); the cells are sharded into a temporary corpus on first use, removed
    on exit."""
    release, expression_file = Path(release), Path(expression_file)
    model, vocab = load_release(release)  # checks model.safetensors against the config's model_sha256
    config = json.loads((release / "config.json").read_text())
    ids = vocab_ids(genes, vocab, str(expression_file))
    check_coverage(genes, ids, release, min_coverage, str(expression_file))
    adapt = adapt or AdaptConfig()
    if adapt.steps:
        check_adaptable(model, release, value_kind)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        yield ReleaseInputs(
            path=release,
            sha256=config.get("model_sha256") or sha256_file(release / "model.safetensors"),
            family=config["family"],
            vocab=vocab,
            genes=list(genes),
            ids=ids,
            value_kind=value_kind,
            expression_file=expression_file,
            expression_sha256=sha256_file(expression_file),
            work_dir=Path(tmp),
            adapt=adapt,
            cache_dir=cache_dir,
            progress=progress,
            _base={"pretrained": model},
        )
