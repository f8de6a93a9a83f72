"""`ShardConfig`: every option of `scgrn shard`, typed, documented and validated at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_prep.errors import InputError
from data_prep.gene_mapping import MappingOptions
from data_prep.parts import Part
from data_prep.values import ValueKind
from data_prep.zarr_shard import CODECS

FORMATS = ("zarr", "webdataset", "both")
ZERO_CELL_POLICIES = ("drop", "refuse")
UNMAPPED_POLICIES = ("drop", "refuse")


@dataclass
class ShardConfig:
    inputs: list[Path]
    out: Path
    format: str = "both"  # zarr (random access + streaming), webdataset (streaming tars), or both
    cells_per_shard: int = 10_000  # input rows per shard; bounds memory per worker
    workers: int = 1  # processes writing shards in parallel
    vocab: Path | None = None  # a given vocabulary; default: built from the inputs' genes
    values: str = "counts"  # counts | log1p | normalized
    layer: str | None = None  # h5ad layer holding the values (default X)
    obs_columns: list[str] = field(default_factory=list)  # obs columns to keep
    min_genes: int = 0  # drop cells expressing fewer genes (after mapping)
    zero_cells: str = "drop"  # cells with no counts: drop (counted in the report) or refuse
    unmapped: str = "drop"  # genes not in a given vocab: drop (listed in a file) or refuse
    val_fraction: float = 0.05  # share of cells in the validation split (by cell hash)
    cells_per_sample: int = 128  # webdataset: cells per tar sample
    codec: str = "lz4"  # zarr compressor: lz4 (blosc, byte shuffle; fastest to read) or zstd (smaller)
    codec_level: int = 5
    csv_orientation: str = "genes-by-cells"
    mapping: MappingOptions = field(default_factory=MappingOptions)
    resume: bool = False
    part: Part | str | None = None  # "I/N": write only part I's block of shards (parts.py); None = the whole corpus
    command: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not self.inputs:
            problems.append("no INPUT given: pass one or more .h5ad / 10x / CSV paths")
        if self.format not in FORMATS:
            problems.append(f"--format {self.format!r} not in {FORMATS}")
        if self.cells_per_shard < 1:
            problems.append(f"--cells-per-shard {self.cells_per_shard} must be >= 1")
        if self.workers < 1:
            problems.append(f"--workers {self.workers} must be >= 1")
        if self.values not in [k.value for k in ValueKind]:
            problems.append(f"--values {self.values!r} not in {[k.value for k in ValueKind]}")
        if self.min_genes < 0:
            problems.append(f"--min-genes {self.min_genes} must be >= 0")
        if self.zero_cells not in ZERO_CELL_POLICIES:
            problems.append(f"--zero-cells {self.zero_cells!r} not in {ZERO_CELL_POLICIES}")
        if self.unmapped not in UNMAPPED_POLICIES:
            problems.append(f"--unmapped {self.unmapped!r} not in {UNMAPPED_POLICIES}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"--val-fraction {self.val_fraction} must be in [0, 1)")
        if self.cells_per_sample < 1:
            problems.append(f"--cells-per-sample {self.cells_per_sample} must be >= 1")
        if self.codec not in CODECS:
            problems.append(f"--codec {self.codec!r} not in {CODECS}")
        if isinstance(self.part, str):
            try:
                self.part = Part.parse(self.part)
            except InputError as err:
                problems.append(str(err))
        if problems:
            msg = "invalid shard options:\n  - " + "\n  - ".join(problems)
            raise InputError(msg)
        self.inputs = [Path(p) for p in self.inputs]
        self.out = Path(self.out)

    @property
    def value_kind(self) -> ValueKind:
        return ValueKind(self.values)

    @property
    def formats(self) -> list[str]:
        return ["zarr", "webdataset"] if self.format == "both" else [self.format]

    def identity(self) -> dict:
        """The options that define *which corpus* this is (resume refuses a directory whose identity differs)."""
        d = asdict(self)
        # `part` is left out: every part of a corpus, and the merged corpus, share one identity.
        for k in ("out", "workers", "resume", "part", "command"):
            d.pop(k)
        d["inputs"] = [str(p) for p in self.inputs]
        d["vocab"] = str(self.vocab) if self.vocab else None
        d["mapping"]["gene_map"] = str(self.mapping.gene_map) if self.mapping.gene_map else None
        return d
