"""Open a sharded corpus: its manifest, vocab, shards in either format, and random access to one cell."""

from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path

import numpy as np

from data_prep import remote
from data_prep.cell_block import CellBlock, slice_block
from data_prep.errors import CorpusError
from data_prep.manifest import read_manifest
from data_prep.shard_cache import ShardCache
from data_prep.values import ValueKind
from data_prep.vocab import GeneVocab
from data_prep.wds_shard import WdsShard
from data_prep.zarr_shard import ZarrShard, use_fast_codec_pipeline

FORMATS = ("zarr", "webdataset")

# Shards this process has hashed and found matching, keyed by what would change if the files did: (path, expected
# sha256, (relative name, size, mtime_ns) of every file). A loader re-creates its Corpus in every epoch's workers
# and for every evaluation; with this a shard is hashed once per process (workers forked after a shard was
# verified inherit it), not once per Corpus.
_VERIFIED: set[tuple] = set()


def _tree_signature(path: Path) -> tuple:
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
    return tuple((str(q.relative_to(path.parent)), q.stat().st_size, q.stat().st_mtime_ns) for q in files)


class Corpus:
    """Read-only view of a corpus directory written by `scgrn shard`.

    `corpus.cell(i)` reads cell `i` (global index, shard order) from the zarr shards; `corpus.shard(k)` gives a
    `ZarrShard` or `WdsShard`. Open shards are kept in a small LRU so millions of cells over thousands of shards
    stay in bounded memory.
    """

    def __init__(
        self,
        directory: Path | str,
        fmt: str | None = None,
        max_open_shards: int = 64,
        *,
        verify: bool = False,
        cache: ShardCache | None = None,
        whole_shards: bool = True,
    ) -> None:
        self.directory = remote.as_location(directory)  # a Path, or a URL (s3://, gs://, https://)
        self.remote = isinstance(self.directory, str)
        # whole_shards: a remote zarr shard is fetched whole (one GET per file, hashed on the way) and read from
        # memory; False reads the inner chunks it needs by byte range (cheaper for a few cells of a big shard)
        self.whole_shards = whole_shards
        self.cache = cache if self.remote else None  # data.cache_dir: local copies of remote shards
        # verify: hash each shard against its manifest sha256 the first time this process opens it (one extra read
        # per shard per process), so a bit flip that still decodes fails loudly instead of training on wrong values
        self.verify = verify
        self._verified: set[int] = set()
        self.manifest = read_manifest(self.directory)
        available = self.manifest["formats"]
        fmt = fmt or ("zarr" if "zarr" in available else available[0])
        if fmt not in available:
            msg = f"{self.directory}: format {fmt!r} was not written for this corpus; it has {available}."
            raise CorpusError(msg)
        self.format = fmt
        if fmt == "zarr":
            use_fast_codec_pipeline()
        self.shards_meta = self.manifest["shards"]
        self.cell_offsets = np.array([s["cell_offset"] for s in self.shards_meta] + [self.n_cells], dtype=np.int64)
        self._open: OrderedDict[int, ZarrShard | WdsShard] = OrderedDict()
        # a remote shard read whole is held in memory while open: keep only a few
        in_memory = self.remote and (fmt == "webdataset" or whole_shards) and cache is None
        self._max_open = min(max_open_shards, 4) if in_memory else max_open_shards

    @property
    def n_cells(self) -> int:
        return int(self.manifest["totals"]["n_cells"])

    @property
    def value_kind(self) -> ValueKind:
        return ValueKind(self.manifest["value_kind"])

    @property
    def vocab_sha256(self) -> str:
        return self.manifest["vocab"]["sha256"]

    @functools.cached_property
    def panels(self) -> tuple[np.ndarray, ...] | None:
        """Measured-gene panels (corpus format >= 3): panel j = the ascending vocab ids some input measured, whether
        or not a cell expressed them; None for older corpora, which record no panel (re-shard to get them)."""
        panels = self.manifest.get("panels")
        if panels is None:
            return None
        return tuple(np.asarray(p, dtype=np.int64) for p in panels)

    def panel_column(self, k: int, n_cells: int) -> np.ndarray | None:
        """(n_cells,) int32: the panel index of shard `k`'s input for each of n cells (a shard holds one input)."""
        if self.panels is None:
            return None
        panel = self.manifest["inputs"][self.shards_meta[k]["input"]]["panel"]
        return np.full(n_cells, panel, dtype=np.int32)

    def vocab(self) -> GeneVocab:
        path = remote.join(self.directory, self.manifest["vocab"]["file"])
        vocab = (
            GeneVocab.load(path) if isinstance(path, Path) else GeneVocab.from_json_bytes(remote.read_bytes(path), path)
        )
        if vocab.sha256 != self.vocab_sha256:
            msg = f"{self.directory}: vocab.json hash {vocab.sha256[:12]} != manifest {self.vocab_sha256[:12]}."
            raise CorpusError(msg)
        return vocab

    def __len__(self) -> int:
        return self.n_cells

    def shard(self, k: int) -> ZarrShard | WdsShard:
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        info = self.shards_meta[k]["files"].get(self.format)
        if info is None:
            msg = f"{self.directory}: shard {k} has no {self.format} file in the manifest."
            raise CorpusError(msg)
        path = remote.join(self.directory, info["path"])
        cached = self.cache.cached(path) if self.cache is not None else None
        probe = remote.join(path, "zarr.json") if self.format == "zarr" and self.remote else path
        if cached is None and not remote.exists(probe):
            msg = f"{path}: shard file missing. Run `scgrn validate {self.directory}`, then re-shard with --resume."
            raise CorpusError(msg)
        if self.cache is not None:  # from here on the shard is a local one
            path = cached or self.cache.local_copy(path, directory=self.format == "zarr")
        streamed = isinstance(path, str) and self.format == "webdataset"  # checked by WdsShard as it streams
        files = None
        if isinstance(path, str) and self.format == "zarr" and self.whole_shards:
            files = remote.read_tree(path)  # checked here, as fetched
            if self.verify and remote.tree_sha256(files) != info["sha256"]:
                raise self._corrupt(path, k)
        if self.verify and k not in self._verified and not streamed and files is None:
            local = isinstance(path, Path)
            key = (str(path.resolve()) if local else path, info["sha256"])
            key += (_tree_signature(path),) if local else ()
            if key not in _VERIFIED and remote.sha256_location(path, directory=self.format == "zarr") != info["sha256"]:
                raise self._corrupt(path, k)
            _VERIFIED.add(key)
            self._verified.add(k)
        if self.format == "zarr":
            shard = ZarrShard(path, files)
        else:
            shard = WdsShard(path, expected_sha256=info["sha256"] if self.verify and streamed else None)
        self._check_against_manifest(k, shard)
        self._open[k] = shard
        if len(self._open) > self._max_open:
            _, old = self._open.popitem(last=False)
            if isinstance(old, WdsShard):
                old.close()
        return shard

    def _corrupt(self, path, k: int) -> CorpusError:
        msg = (
            f"{path}: shard {k}'s sha256 does not match manifest.json; the file is corrupt or was changed "
            f"after sharding. Run `scgrn validate {self.directory}`, then re-create it with "
            "`scgrn shard ... --resume` (the corrupt shard is detected and rewritten)."
        )
        return CorpusError(msg)

    def release(self, k: int) -> None:
        """Close shard `k` if open (a remote shard read whole frees its memory)."""
        shard = self._open.pop(k, None)
        if isinstance(shard, WdsShard):
            shard.close()

    def _check_against_manifest(self, k: int, shard: ZarrShard | WdsShard) -> None:
        """Cheap check on open (no hashing): the shard's own header agrees with its manifest record, so an edited
        manifest or a shard file swapped in from elsewhere fails here instead of yielding wrong cells."""
        meta = self.shards_meta[k]
        own = shard.attrs if isinstance(shard, ZarrShard) else shard.header
        expected = {"shard_index": meta["index"], "n_cells": meta["n_cells"], "nnz": meta["nnz"]}
        diffs = [
            f"{key} {own.get(key)!r} (manifest: {want!r})" for key, want in expected.items() if own.get(key) != want
        ]
        if diffs:
            if isinstance(shard, WdsShard):
                shard.close()
            msg = (
                f"{shard.path}: shard {k} does not match manifest.json: it holds {', '.join(diffs)}. The manifest "
                f"was edited or the file replaced; run `scgrn validate {self.directory}` and re-shard with --resume."
            )
            raise CorpusError(msg)

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.n_cells:
            msg = f"cell index {index} out of range; this corpus has {self.n_cells} cells (0..{self.n_cells - 1})."
            raise IndexError(msg)
        k = int(np.searchsorted(self.cell_offsets, index, side="right") - 1)
        return k, index - int(self.cell_offsets[k])

    def read_cells(self, start: int, stop: int) -> CellBlock:
        """Global cells [start, stop) (may span shards)."""
        blocks = []
        while start < stop:
            k, local = self.locate(start)
            n = min(stop - start, self.shards_meta[k]["n_cells"] - local)
            blocks.append(self._read_local(k, local, local + n))
            start += n
        return CellBlock.concat(blocks)

    def _read_local(self, k: int, lo: int, hi: int) -> CellBlock:
        shard = self.shard(k)
        if isinstance(shard, ZarrShard):
            return shard.read_block(lo, hi)
        per = shard.cells_per_sample
        parts = [shard.read_sample(s) for s in range(lo // per, (hi - 1) // per + 1)]
        whole = CellBlock.concat(parts)
        first = (lo // per) * per
        return slice_block(whole, lo - first, hi - first)

    def take(self, indices: np.ndarray) -> CellBlock:
        """Cells at global `indices` (any order), one batched read per shard touched (zarr format)."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n_cells):
            msg = f"cell indices must be in [0, {self.n_cells}); got min {indices.min()}, max {indices.max()}."
            raise IndexError(msg)
        if self.format != "zarr":
            msg = f"{self.directory}: random access needs the zarr format; this Corpus reads {self.format}."
            raise CorpusError(msg)
        shard_of = np.searchsorted(self.cell_offsets, indices, side="right") - 1
        order = np.argsort(shard_of, kind="stable")
        parts = []
        for k in np.unique(shard_of):
            sel = order[shard_of[order] == k]
            parts.append(self.shard(int(k)).read_cells(indices[sel] - self.cell_offsets[k]))
        block = CellBlock.concat(parts)
        return block.take(np.argsort(order, kind="stable"))  # back to the requested order

    def cell(self, index: int) -> dict:
        """One cell by global index: {'gene_ids', 'values', 'cell_id', 'split', 'obs'}; no densifying."""
        k, local = self.locate(index)
        block = self._read_local(k, local, local + 1)
        return {
            "gene_ids": block.gene_ids,
            "values": block.values,
            "cell_id": str(block.cell_ids[0]),
            "split": int(block.split[0]),
            "obs": {c: v[0] for c, v in block.obs.items()},
        }
