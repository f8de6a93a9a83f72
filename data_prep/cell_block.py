"""`CellBlock`: a run of cells in CSR form, the unit that is written to shards, read back and streamed.

Never densified: `gene_ids[indptr[i]:indptr[i+1]]` are cell i's expressed genes (vocab ids, ascending) and
`values[...]` their values. Packed batches for the transformer (cu_seqlens) come straight from `indptr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLIT_TRAIN, SPLIT_VAL = 0, 1


@dataclass
class CellBlock:
    indptr: np.ndarray  # (n_cells + 1,) int64, starts at 0
    gene_ids: np.ndarray  # (nnz,) uint16 | uint32 vocab ids
    values: np.ndarray  # (nnz,) smallest dtype that holds the values
    cell_ids: np.ndarray  # (n_cells,) str
    split: np.ndarray  # (n_cells,) uint8: SPLIT_TRAIN | SPLIT_VAL
    obs: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (n_cells,)

    @property
    def n_cells(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def cell(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.gene_ids[lo:hi], self.values[lo:hi]

    def take(self, rows: np.ndarray) -> CellBlock:
        """Cells `rows` (any order) as a new block; vectorized gather, no Python loop per cell."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # Position of each output entry in the source arrays: start of its cell + offset within the cell.
        gather = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1], dtype=np.int64)
        return CellBlock(
            indptr,
            self.gene_ids[gather],
            self.values[gather],
            self.cell_ids[rows],
            self.split[rows],
            {k: v[rows] for k, v in self.obs.items()},
        )

    @staticmethod
    def concat(blocks: list[CellBlock]) -> CellBlock:
        if len(blocks) == 1:
            return blocks[0]
        offsets = np.cumsum([0] + [b.nnz for b in blocks[:-1]])
        indptr = np.concatenate([[0]] + [b.indptr[1:] + o for b, o in zip(blocks, offsets, strict=True)])
        return CellBlock(
            indptr.astype(np.int64),
            np.concatenate([b.gene_ids for b in blocks]),
            np.concatenate([b.values for b in blocks]),
            np.concatenate([b.cell_ids for b in blocks]),
            np.concatenate([b.split for b in blocks]),
            {k: np.concatenate([b.obs[k] for b in blocks]) for k in blocks[0].obs},
        )


def slice_block(block: CellBlock, start: int, stop: int) -> CellBlock:
    """Cells [start, stop) as views (no copy of the non-zeros)."""
    lo, hi = int(block.indptr[start]), int(block.indptr[stop])
    return CellBlock(
        block.indptr[start : stop + 1] - lo,
        block.gene_ids[lo:hi],
        block.values[lo:hi],
        block.cell_ids[start:stop],
        block.split[start:stop],
        {k: v[start:stop] for k, v in block.obs.items()},
    )
