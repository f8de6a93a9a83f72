"""webdataset shard: a POSIX tar of samples, each sample a block of consecutive cells (see SPEC.md).

Why blocks of cells, not one cell per sample: a cell is ~800 non-zeros (~3 KB); per-cell samples would pay a
512-byte tar header per member (5 members) and Python work per cell, so block samples (default 128 cells) keep
headers under 1 % of the bytes and the hot path vectorized. Shuffling still reaches single cells: the loader
shuffles blocks, then cells inside a shuffle window.

Members of sample `KEY` (all `.npy` are plain numeric arrays, read with allow_pickle=False):
`KEY.indptr.npy`, `KEY.gene_ids.npy`, `KEY.values.npy`, `KEY.split.npy`, `KEY.meta.json`.
Readers index the tar's member offsets once (headers only) and then read samples by seek, so a rank or worker
reads only its own samples. Any standard `webdataset.WebDataset` pipeline can stream the same tars.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import webdataset as wds

from data_prep import remote
from data_prep.cell_block import CellBlock
from data_prep.errors import CorpusError

WDS_MAGIC = "scgrn-wds-shard"
WDS_FORMAT_VERSION = 2  # 2: per-cell `library_size.npy` in every sample (counts corpora)
READABLE_VERSIONS = (1, 2)
_ARRAYS = ("indptr", "gene_ids", "values", "split")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def check_member(tar_path: Path, member: tarfile.TarInfo) -> None:
    """Refuse a tar member that is not a plain file with a plain relative name.

    scgrn never extracts shards (members are read by offset), but a tar holding `/etc/x`, `../x`, a link or a device
    is not one scgrn wrote and could harm a tool that does extract it (`webdataset`, `tar -x`): such a shard is
    refused with its tar and member named, never half-read.
    """
    name = member.name
    parts = PurePosixPath(name).parts
    problem = None
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        problem = "an absolute path"
    elif ".." in parts or ".." in name.replace("\\", "/").split("/"):
        problem = "a '..' path part"
    elif member.issym() or member.islnk():
        problem = f"a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r})"
    elif not member.isfile():
        problem = "not a regular file"
    if problem is not None:
        msg = (
            f"{tar_path}: member {name!r} is {problem}; scgrn shards hold only plain files with relative names. "
            "The tar was not written by `scgrn shard` or was tampered with; delete it and re-shard."
        )
        raise CorpusError(msg)


def sample_key(shard_index: int, sample_index: int) -> str:
    return f"{shard_index:06d}_{sample_index:06d}"


def write_wds_shard(path: Path, block: CellBlock, shard_index: int, cells_per_sample: int, attrs: dict) -> int:
    """Write `block` as a tar of samples under a temp name, then rename. Returns the number of samples."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n_samples = 0
    # Fixed mtime: the same cells give byte-identical tars, so resumed and uninterrupted runs hash alike.
    with open(tmp, "wb") as stream, wds.TarWriter(stream, mtime=0.0, encoder=False) as sink:
        header = {
            "magic": WDS_MAGIC,
            "format_version": WDS_FORMAT_VERSION,
            "n_cells": block.n_cells,
            "nnz": block.nnz,
            "cells_per_sample": cells_per_sample,
            "obs_columns": list(block.obs),
            **attrs,
        }
        sink.write({"__key__": f"{shard_index:06d}_header", "json": json.dumps(header).encode()})
        for start in range(0, block.n_cells, cells_per_sample):
            part = block.take(np.arange(start, min(start + cells_per_sample, block.n_cells)))
            meta = {
                "first_cell": start,
                "cell_ids": part.cell_ids.astype(str).tolist(),
                "obs": {k: np.asarray(v).tolist() for k, v in part.obs.items()},
            }
            sample = {"__key__": sample_key(shard_index, n_samples), "meta.json": json.dumps(meta).encode()}
            for name in _ARRAYS:
                sample[f"{name}.npy"] = _npy(getattr(part, name))
            if part.library_size is not None:
                sample["library_size.npy"] = _npy(part.library_size.astype(np.float64))
            sink.write(sample)
            n_samples += 1
    os.replace(tmp, path)
    return n_samples


class WdsShard:
    """The samples of one tar. A local tar is read by seeks through an index of member offsets (built from headers
    only); a remote one (an fsspec URL) is streamed once, start to end, into memory (no seeks, no local copy), its
    sha256 checked on the way when `expected_sha256` is given."""

    def __init__(self, path: Path | str, *, expected_sha256: str | None = None) -> None:
        self.path = remote.as_location(path)
        self._members: dict[str, dict[str, tuple[int, int]]] = {}
        self._data: dict[str, dict[str, bytes]] | None = None
        self._file = None
        if isinstance(self.path, str):
            self._stream(expected_sha256)
        else:
            self._index()
        self._check_header()
        if self._data is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - held for seeks, closed in close()

    def _index(self) -> None:
        try:
            with tarfile.open(self.path, "r:") as tar:
                for m in tar:
                    check_member(self.path, m)
                    key, _, ext = m.name.partition(".")
                    self._members.setdefault(key, {})[ext] = (m.offset_data, m.size)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise self._unreadable(err) from None

    def _unreadable(self, err: BaseException) -> CorpusError:
        msg = (
            f"{self.path}: unreadable or truncated tar ({err}). Run `scgrn validate` on the corpus and "
            "re-create the shard with `scgrn shard ... --resume`."
        )
        return CorpusError(msg)

    def _stream(self, expected_sha256: str | None) -> None:
        url = self.path

        def once() -> tuple[dict, str]:
            # one GET of the whole object into memory (no seeks, no local copy), then the tar parsed from memory:
            # tarfile's stream mode would otherwise make one small remote read per 10 KB
            blob = remote.fs_of(url).cat_file(url)
            data = {}
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tar:
                for m in tar:
                    check_member(url, m)
                    key, _, ext = m.name.partition(".")
                    data.setdefault(key, {})[ext] = tar.extractfile(m).read()
            return data, hashlib.sha256(blob).hexdigest()

        try:
            data, sha256 = remote.with_retries(url, once)
        except CorpusError:
            raise
        except (tarfile.TarError, EOFError) as err:
            raise self._unreadable(err) from None
        except Exception as err:
            raise remote.remote_error(url, err, "stream this shard") from err
        if expected_sha256 is not None and sha256 != expected_sha256:
            msg = (
                f"{url}: the shard's sha256 does not match manifest.json; its bytes were damaged in storage or in "
                "transit, or it was changed after sharding. Run `scgrn validate` on the corpus and re-create it."
            )
            raise CorpusError(msg)
        self._data = data
        self._members = {key: {ext: (0, len(b)) for ext, b in parts.items()} for key, parts in data.items()}

    def _check_header(self) -> None:
        header_key = next((k for k in self._members if k.endswith("_header")), None)
        if header_key is None:
            msg = f"{self.path}: no header sample; not an scgrn webdataset shard."
            raise CorpusError(msg)
        self.header = json.loads(self._read(header_key, "json"))
        if self.header.get("magic") != WDS_MAGIC or self.header.get("format_version") not in READABLE_VERSIONS:
            msg = (
                f"{self.path}: header {self.header.get('magic')!r} v{self.header.get('format_version')!r} is not "
                f"{WDS_MAGIC!r} v{'/'.join(map(str, READABLE_VERSIONS))}; upgrade scgrn or re-shard."
            )
            raise CorpusError(msg)
        self.sample_keys = sorted(k for k in self._members if not k.endswith("_header"))
        self.n_cells = int(self.header["n_cells"])
        self.cells_per_sample = int(self.header["cells_per_sample"])
        expected = -(-self.n_cells // self.cells_per_sample)
        if len(self.sample_keys) != expected:
            msg = (
                f"{self.path}: holds {len(self.sample_keys)} sample(s), its header promises {expected} "
                f"({self.n_cells} cells / {self.cells_per_sample} per sample); the tar is truncated. "
                "Run `scgrn validate` and re-create the shard with `scgrn shard ... --resume`."
            )
            raise CorpusError(msg)

    def _read(self, key: str, ext: str) -> bytes:
        try:
            offset, size = self._members[key][ext]
        except KeyError:
            msg = f"{self.path}: sample {key!r} has no member {ext!r}; the shard is incomplete. Re-shard it."
            raise CorpusError(msg) from None
        if self._data is not None:
            return self._data[key][ext]
        f = getattr(self, "_file", None)
        if f is None:
            with open(self.path, "rb") as g:
                g.seek(offset)
                data = g.read(size)
        else:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            msg = f"{self.path}: sample {key!r} member {ext!r} is truncated ({len(data)} of {size} bytes)."
            raise CorpusError(msg)
        return data

    def read_sample(self, sample_index: int) -> CellBlock:
        key = self.sample_keys[sample_index]
        try:
            arrays = {n: np.load(io.BytesIO(self._read(key, f"{n}.npy")), allow_pickle=False) for n in _ARRAYS}
            meta = json.loads(self._read(key, "meta.json"))
            library = None
            if "library_size.npy" in self._members[key]:
                library = np.load(io.BytesIO(self._read(key, "library_size.npy")), allow_pickle=False)
        except CorpusError:
            raise
        except (ValueError, OSError, EOFError) as err:  # a damaged .npy header, bad JSON / UTF-8
            msg = (
                f"{self.path}: sample {key!r} cannot be decoded ({type(err).__name__}: {err}); the shard is damaged. "
                "Run `scgrn validate` on the corpus, then delete the shard and re-create it with "
                "`scgrn shard ... --resume`."
            )
            raise CorpusError(msg) from err
        return CellBlock(
            arrays["indptr"],
            arrays["gene_ids"],
            arrays["values"],
            np.asarray(meta["cell_ids"], dtype=object),
            arrays["split"],
            {k: np.asarray(v) for k, v in meta["obs"].items()},
            library,
        )

    def read_all(self) -> CellBlock:
        """Every sample, in order, as one block (a remote shard's read unit)."""
        return CellBlock.concat([self.read_sample(i) for i in range(len(self.sample_keys))])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._data = None
