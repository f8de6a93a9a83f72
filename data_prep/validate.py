"""`scgrn validate DIR`: structure + checksums of a corpus; every problem is listed, none stops the check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep import remote
from data_prep.cell_block import CellBlock
from data_prep.errors import CorpusError
from data_prep.manifest import read_manifest
from data_prep.vocab import GeneVocab
from data_prep.wds_shard import WdsShard
from data_prep.zarr_shard import ZarrShard, use_fast_codec_pipeline


def validate_corpus(directory: Path | str, checksums: bool = True) -> list[str]:
    """Return the list of problems (empty = valid). `directory` may be a URL: each shard is then streamed once
    for its sha256 (and a webdataset tar checked while it streams)."""
    try:
        directory = remote.as_location(directory)
    except CorpusError as err:
        return [str(err)]
    try:
        manifest = read_manifest(directory)
    except CorpusError as err:
        return [str(err)]
    use_fast_codec_pipeline()
    problems: list[str] = []
    vocab_size = manifest["vocab"]["size"]
    try:
        vocab = GeneVocab.load(remote.join(directory, manifest["vocab"]["file"]))
        if vocab.sha256 != manifest["vocab"]["sha256"]:
            problems.append(
                f"{remote.join(directory, 'vocab.json')}: sha256 {vocab.sha256[:16]}… != manifest "
                f"{manifest['vocab']['sha256'][:16]}…; the vocab was changed after sharding."
            )
    except (CorpusError, ValueError, OSError) as err:
        problems.append(f"{remote.join(directory, manifest['vocab']['file'])}: {err}")
    offset = 0
    for shard in manifest["shards"]:
        if shard["cell_offset"] != offset:
            problems.append(
                f"shard {shard['index']}: cell_offset {shard['cell_offset']} != {offset} (sum of previous shards)"
            )
        offset += shard["n_cells"]
        for fmt, info in shard["files"].items():
            path = remote.join(directory, info["path"])
            try:
                if not remote.exists(
                    remote.join(path, "zarr.json") if isinstance(path, str) and fmt == "zarr" else path
                ):
                    problems.append(f"{path}: missing (shard {shard['index']}, {fmt}).")
                    continue
                streamed = isinstance(path, str) and fmt == "webdataset"  # hashed as it streams, in _check_shard
                if (
                    checksums
                    and not streamed
                    and remote.sha256_location(path, directory=fmt == "zarr") != info["sha256"]
                ):
                    problems.append(
                        f"{path}: sha256 does not match the manifest; the shard is corrupt or was "
                        "modified. Re-create it: delete it and run `scgrn shard ... --resume`."
                    )
                    continue
                expected = info["sha256"] if checksums and streamed else None
                problems += _check_shard(path, fmt, shard, vocab_size, expected)
            except (CorpusError, ValueError, OSError, KeyError) as err:
                problems.append(f"{path}: cannot be read ({err}).")
    totals = manifest["totals"]
    if offset != totals["n_cells"]:
        problems.append(f"totals.n_cells {totals['n_cells']} != sum over shards {offset}.")
    nnz = sum(s["nnz"] for s in manifest["shards"])
    if nnz != totals["nnz"]:
        problems.append(f"totals.nnz {totals['nnz']} != sum over shards {nnz}.")
    return problems


def _check_shard(path: Path | str, fmt: str, meta: dict, vocab_size: int, sha256: str | None = None) -> list[str]:
    out = []
    if fmt == "zarr":
        z = ZarrShard(path)
        block = z.read_block(0, z.n_cells)
    else:
        w = WdsShard(path, expected_sha256=sha256)
        block = CellBlock.concat([w.read_sample(i) for i in range(len(w.sample_keys))]) if w.sample_keys else None
        w.close()
        if block is None:
            return [f"{path}: no samples."] if meta["n_cells"] else []
    if block.n_cells != meta["n_cells"] or block.nnz != meta["nnz"]:
        out.append(
            f"{path}: holds {block.n_cells} cells / {block.nnz} non-zeros, manifest says "
            f"{meta['n_cells']} / {meta['nnz']}."
        )
    if np.any(np.diff(block.indptr) < 0):
        out.append(f"{path}: indptr is not non-decreasing.")
    if block.nnz and int(block.gene_ids.max()) >= vocab_size:
        out.append(f"{path}: gene id {int(block.gene_ids.max())} >= vocab size {vocab_size}.")
    if not np.isin(block.split, (0, 1)).all():
        out.append(f"{path}: split holds values other than 0 (train) / 1 (val).")
    return out
