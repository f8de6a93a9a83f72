"""`EvalConfig`: everything one `scgrn eval` run needs, checked up front (every problem reported at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_prep.io_utils import out_dir_problem
from finetune.errors import GrnInputError

SECTIONS = ("masked", "cells", "genes", "transfer")
MAP_METHODS = ("auto", "umap", "pca")


@dataclass
class EvalConfig:
    release: Path
    out: Path
    data: Path | None = None
    """A file of cells (.h5ad / 10x / CSV raw counts). Exactly one of `data` and `corpus`."""
    corpus: Path | None = None
    """Or a corpus: its `split` cells are evaluated and its `reference_split` fits the masked-value baselines."""
    split: str = "val"
    reference_split: str = "train"
    label: str | None = "cell_type"
    """obs column with cell types; None or missing -> the cell and transfer sections are skipped."""
    priors: list[Path] = field(default_factory=list)
    """Regulator -> target tables (TRRUST / DoRothEA); none -> the gene section is skipped."""
    sections: tuple[str, ...] = SECTIONS
    max_cells: int = 3000
    reference_cells: int = 3000
    batch_cells: int = 16
    seed: int = 0
    map_method: str = "auto"
    knn_k: int = 15
    folds: int = 5
    test_fraction: float = 0.3
    finetune_epochs: int = 3
    finetune_lr: float = 1e-4
    head_lr: float = 1e-3
    min_gene_cells: int = 10
    max_eval_genes: int = 3000
    device: str = "auto"
    """"auto" (cuda when available), "cpu", "cuda", "cuda:1", ..."""
    progress: bool = True

    def __post_init__(self) -> None:
        self.release, self.out = Path(self.release), Path(self.out)
        self.priors = [Path(p) for p in self.priors]
        self.sections = tuple(self.sections)
        problems = []
        if (why := out_dir_problem(self.out)) is not None:
            problems.append(f"--out {self.out}: {why}")
        if (self.data is None) == (self.corpus is None):
            problems.append("give exactly one of --data FILE or a corpus (got both or neither)")
        if not (self.release / "config.json").exists():
            problems.append(f"release {self.release}: no config.json (make a release with `scgrn export`)")
        if self.data is not None and not Path(self.data).exists():
            problems.append(f"--data {self.data}: no such file")
        for p in self.priors:
            if not p.exists():
                problems.append(f"--prior {p}: no such file")
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown or not self.sections:
            problems.append(f"--sections {list(self.sections)}: allowed are {list(SECTIONS)} (at least one)")
        if self.map_method not in MAP_METHODS:
            problems.append(f"--map {self.map_method!r}: allowed are {list(MAP_METHODS)}")
        for name in ("max_cells", "reference_cells", "batch_cells", "knn_k", "min_gene_cells", "max_eval_genes"):
            if int(getattr(self, name)) < 1:
                problems.append(f"--{name.replace('_', '-')} = {getattr(self, name)}: must be >= 1")
        if self.folds < 2:
            problems.append(f"--folds = {self.folds}: must be >= 2")
        if self.finetune_epochs < 0:
            problems.append(f"--finetune-epochs = {self.finetune_epochs}: must be >= 0 (0 skips the finetune)")
        if not 0.0 < self.test_fraction < 1.0:
            problems.append(f"--test-fraction = {self.test_fraction}: must be in (0, 1)")
        for name in ("finetune_lr", "head_lr"):
            if not float(getattr(self, name)) > 0:
                problems.append(f"--{name.replace('_', '-')} = {getattr(self, name)}: must be > 0")
        if problems:
            raise GrnInputError("scgrn eval: invalid options:\n  - " + "\n  - ".join(problems))
