"""zarr v3 shard: one CSR group per shard (see data_prep/SPEC.md, "zarr shard").

Arrays use zarr's sharding codec: inner chunks of 256 Ki entries (~300 cells) inside shard files of 4 Mi
entries, so one cell is one inner-chunk read and a corpus is a few files per array with large sequential reads.
Compression: blosc-lz4 with byte shuffle by default, zstd (`--codec zstd`) for ~10 % smaller shards. Measured
end to end through the loader on 2 cores (bench/RESULTS.md): lz4 + 256 Ki chunks ~230k cells/s, zstd-1 ~180k,
zstd-3 with 64 Ki chunks ~125k. Reads go through the Rust `zarrs` codec pipeline when installed (2-3x faster
decoding than zarr-python's), else zarr-python's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.buffer import cpu

from data_prep import remote
from data_prep.cell_block import CellBlock
from data_prep.errors import CorpusError
from data_prep.io_utils import pause_point

SHARD_MAGIC = "scgrn-zarr-shard"
SHARD_FORMAT_VERSION = 2  # 2: per-cell `library_size` (raw totals before vocab mapping), counts corpora
READABLE_VERSIONS = (1, 2)
INNER_CHUNK = 1 << 18
OUTER_SHARD = 1 << 22
CELL_CHUNK = 1 << 14  # cells per chunk of per-cell arrays (indptr, split, obs)
CODECS = ("zstd", "lz4")
REMOTE_CONCURRENCY = 64  # byte-range requests in flight per read from a URL


def use_fast_codec_pipeline() -> bool:
    """Switch zarr to the `zarrs` Rust codec pipeline if it is installed; returns whether it is active."""
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return False
    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    return True


def _python_pipeline():
    """zarr-python's own codec pipeline, for arrays opened from a URL: the `zarrs` pipeline deadlocks on fsspec
    stores (its Rust threads wait on the Python event loop that serves the byte ranges)."""
    # More requests in flight than zarr's default 10: each inner chunk is one byte-range request, and a remote
    # store answers many at once.
    return zarr.config.set(
        {
            "codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline",
            "async.concurrency": REMOTE_CONCURRENCY,
        }
    )


def _compressors(codec: str, level: int):
    if codec == "zstd":
        return [ZstdCodec(level=level)]
    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=level, shuffle="shuffle")]
    msg = f"codec {codec!r} not supported; allowed: {CODECS}."
    raise ValueError(msg)


def _write_array(group, name: str, values: np.ndarray, chunk: int, shard: int | None, compressors) -> None:
    n = max(1, len(values))
    chunks = (min(chunk, n),)
    shards = None
    if shard is not None and n > chunk:
        shards = (min(shard, -(-n // chunk) * chunk),)
    dtype = values.dtype
    if values.dtype.kind in "UO":  # strings: zarr v3 vlen-utf8 (fixed-width numpy strings have no v3 spec)
        dtype, values = str, values.astype(object)
    arr = group.create_array(
        name, shape=values.shape, dtype=dtype, chunks=chunks, shards=shards, compressors=compressors
    )
    if len(values):
        arr[:] = values


def write_zarr_shard(path: Path, block: CellBlock, attrs: dict, codec: str = "lz4", level: int = 5) -> None:
    """Write `block` to `path` (a directory) under a temporary name, then rename: never half a shard."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    comp = _compressors(codec, level)
    group = zarr.open_group(tmp, mode="w")
    group.attrs.update(
        {
            "magic": SHARD_MAGIC,
            "format_version": SHARD_FORMAT_VERSION,
            "n_cells": block.n_cells,
            "nnz": block.nnz,
            "obs_columns": list(block.obs),
            **attrs,
        }
    )
    _write_array(group, "indptr", block.indptr.astype(np.int64), CELL_CHUNK, None, comp)
    _write_array(group, "gene_ids", block.gene_ids, INNER_CHUNK, OUTER_SHARD, comp)
    _write_array(group, "values", block.values, INNER_CHUNK, OUTER_SHARD, comp)
    _write_array(group, "split", block.split.astype(np.uint8), CELL_CHUNK, None, comp)
    _write_array(group, "cell_id", np.asarray(block.cell_ids, dtype=object), CELL_CHUNK, None, comp)
    if block.library_size is not None:
        _write_array(group, "library_size", block.library_size.astype(np.float64), CELL_CHUNK, None, comp)
    obs = group.create_group("obs")
    for name, values in block.obs.items():
        values = np.asarray(values)
        if values.dtype == object or values.dtype.kind == "U":
            values = np.asarray([str(v) for v in values], dtype=object)
        _write_array(obs, name, values, CELL_CHUNK, None, comp)
    pause_point(f"zarr-tmp:{attrs.get('shard_index')}")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


# What zarr / numcodecs / zarrs raise on a damaged chunk (e.g. "blosc_decompress_ctx failed", a UnicodeDecodeError
# from a vlen-utf8 chunk). Our own CorpusError (a ValueError) passes through unchanged.
DECODE_ERRORS = (RuntimeError, ValueError, OSError, KeyError, EOFError)


def damaged_shard_error(path: Path, err: Exception) -> CorpusError:
    msg = (
        f"{path}: shard cannot be decoded ({type(err).__name__}: {err}); the file is damaged. Run "
        "`scgrn validate` on the corpus, then delete the shard and re-create it with `scgrn shard ... --resume`."
    )
    return CorpusError(msg)


class ZarrShard:
    """Read access to one shard: whole cell ranges (streaming) or one cell (random access)."""

    def __init__(self, path: Path | str, files: dict[str, bytes] | None = None) -> None:
        """`files`: the shard's files already fetched ({relative name: bytes}, `remote.read_tree`): it is read from
        memory and `path` only names it in messages."""
        self.path = remote.as_location(path)
        try:
            if files is not None:
                buffers = {name: cpu.Buffer.from_bytes(data) for name, data in files.items()}
                self.group = zarr.open_group(zarr.storage.MemoryStore(buffers, read_only=True), mode="r")
            elif isinstance(self.path, str):  # a URL: zarr reads the inner chunks it needs by byte range
                store = zarr.storage.FsspecStore.from_url(self.path, read_only=True)
                with _python_pipeline():
                    self.group = remote.with_retries(self.path, lambda: zarr.open_group(store, mode="r"))
            else:
                self.group = zarr.open_group(self.path, mode="r")
            attrs = dict(self.group.attrs)
        except (FileNotFoundError, ValueError, KeyError) as err:
            msg = f"{self.path}: not a readable zarr shard ({err}). Run `scgrn validate` on the corpus."
            raise CorpusError(msg) from None
        except CorpusError:
            raise
        except Exception as err:
            if isinstance(self.path, str):
                raise remote.remote_error(self.path, err, "open this zarr shard") from err
            raise
        if attrs.get("magic") != SHARD_MAGIC:
            msg = f"{self.path}: magic {attrs.get('magic')!r} is not {SHARD_MAGIC!r}; not an scgrn zarr shard."
            raise CorpusError(msg)
        if attrs.get("format_version") not in READABLE_VERSIONS:
            msg = (
                f"{self.path}: shard format version {attrs.get('format_version')!r} is unknown; this scgrn reads "
                f"versions {READABLE_VERSIONS}. Upgrade scgrn or re-shard the inputs."
            )
            raise CorpusError(msg)
        self.attrs = attrs
        self.in_memory = files is not None
        self.n_cells = int(attrs["n_cells"])
        self.obs_columns = list(attrs.get("obs_columns", []))
        self.has_library_size = attrs["format_version"] >= 2 and self._decode(lambda: "library_size" in self.group)
        self._indptr: np.ndarray | None = None
        self._per_cell: dict[str, np.ndarray] = {}
        # array handles looked up once (each lookup reads metadata)
        self._gene_ids = self._decode(lambda: self.group["gene_ids"])
        self._values = self._decode(lambda: self.group["values"])

    def _decode(self, read):
        """Run `read()` (retried on transient errors when read by range from a URL); a decoding failure becomes a
        CorpusError naming this shard."""
        by_range = isinstance(self.path, str) and not getattr(self, "in_memory", False)
        try:
            if by_range:
                with _python_pipeline():
                    return remote.with_retries(self.path, read)
            return read()
        except CorpusError:
            raise
        except DECODE_ERRORS as err:
            if by_range and remote.is_transient(err):
                raise remote.remote_error(self.path, err, "read this zarr shard") from err
            raise damaged_shard_error(self.path, err) from err
        except Exception as err:
            if by_range:
                raise remote.remote_error(self.path, err, "read this zarr shard") from err
            raise

    @property
    def indptr(self) -> np.ndarray:
        if self._indptr is None:
            self._indptr = self._decode(lambda: self.group["indptr"][:])
        return self._indptr

    def per_cell(self, name: str) -> np.ndarray:
        """Small per-cell arrays (split, cell_id, obs/<col>), read once and cached."""
        if name not in self._per_cell:
            self._per_cell[name] = self._decode(lambda: self.group[name][:])
        return self._per_cell[name]

    def read_cells(self, rows: np.ndarray) -> CellBlock:
        """Cells `rows` (local indices, any order) with one orthogonal read per array: zarr fetches only the
        inner chunks those cells touch, decoded in parallel by the codec pipeline."""
        rows = np.asarray(rows, dtype=np.int64)
        indptr = self.indptr
        starts, stops = indptr[rows], indptr[rows + 1]
        lengths = stops - starts
        out_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_ptr[1:])
        coords = np.repeat(starts - out_ptr[:-1], lengths) + np.arange(out_ptr[-1], dtype=np.int64)
        if len(coords):
            gene_ids = self._decode(lambda: self._gene_ids.oindex[coords])
            values = self._decode(lambda: self._values.oindex[coords])
        else:
            gene_ids = np.zeros(0, self._gene_ids.dtype)
            values = np.zeros(0, self._values.dtype)
        obs = {c: self.per_cell(f"obs/{c}")[rows] for c in self.obs_columns}
        library = self.per_cell("library_size")[rows] if self.has_library_size else None
        cell_ids, split = self.per_cell("cell_id")[rows], self.per_cell("split")[rows]
        return CellBlock(out_ptr, gene_ids, values, cell_ids, split, obs, library)

    def read_block(self, start: int, stop: int, with_obs: bool = True) -> CellBlock:
        indptr = self.indptr[start : stop + 1]
        lo, hi = int(indptr[0]), int(indptr[-1])
        obs = {c: self.per_cell(f"obs/{c}")[start:stop] for c in self.obs_columns} if with_obs else {}
        return CellBlock(
            indptr - lo,
            self._decode(lambda: self._gene_ids[lo:hi]),
            self._decode(lambda: self._values[lo:hi]),
            self.per_cell("cell_id")[start:stop],
            self.per_cell("split")[start:stop],
            obs,
            self.per_cell("library_size")[start:stop] if self.has_library_size else None,
        )
