"""`manifest.json`: the corpus's table of contents, written last (atomically) by `scgrn shard`.

Holds format + version, vocab + hash, value kind, every shard (cells, nnz, sha256 per format), totals,
per-gene statistics, the train/validation rule, the inputs with their hashes, and the command. See SPEC.md.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np

from data_prep import remote
from data_prep.errors import CorpusError
from data_prep.gene_stats import GeneStats
from data_prep.io_utils import atomic_write_text
from data_prep.parts import PART_NAME
from data_prep.values import ValueKind

CORPUS_MAGIC = "scgrn-corpus"
CORPUS_FORMAT_VERSION = 3  # 2: per-cell library sizes in the shards; 3: measured-gene panels (SPEC.md, Versions)
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("magic", "format_version", "formats", "value_kind", "vocab", "shards", "totals", "inputs")
# The fields before `shards`, in order; a part's part.json carries them too (with its own magic and version).
HEADER_KEYS = (
    "magic",
    "format_version",
    "scgrn_version",
    "created",
    "command",
    "formats",
    "value_kind",
    "vocab",
    "split",
    "options",
    "inputs",
    "panels",
)
# Fields that describe the run, not the corpus: they differ between two runs that write the same corpus
# (single machine vs `--part` + `scgrn shard merge`, or a resumed run). Everything else is equal.
RUN_SPECIFIC_KEYS = ("created", "command", "seconds")


def measured_panels(column_to_id: list[np.ndarray]) -> tuple[list[list[int]], list[int]]:
    """Each input's measured genes (the vocab ids its columns map to, expressed in a cell or not) as shared panels:
    -> (panels, panel index of each input). Inputs measuring the same genes (e.g. one 10x chemistry) share a
    panel, so the manifest holds each distinct panel once."""
    panels: list[list[int]] = []
    index: dict[tuple[int, ...], int] = {}
    of_input = []
    for ids in column_to_id:
        key = tuple(np.unique(ids[ids >= 0]).tolist())
        if key not in index:
            index[key] = len(panels)
            panels.append(list(key))
        of_input.append(index[key])
    return panels, of_input


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=1))
    return path


def read_manifest(directory: Path | str) -> dict:
    """Load and check a manifest (local directory or URL); every problem names the file and what to do."""
    directory = remote.as_location(directory)
    path = remote.join(directory, MANIFEST_NAME)
    if not remote.exists(path) and remote.exists(remote.join(directory, PART_NAME)):
        try:
            part = json.loads(remote.read_bytes(remote.join(directory, PART_NAME)))["part"]
            which = f"part {part['index']}/{part['count']}"
        except (ValueError, KeyError, TypeError):
            which = "a part"
        msg = (
            f"{directory}: this is {which} of a corpus sharded with `scgrn shard --part`, not a whole corpus; "
            "it cannot be loaded alone. Join all parts into one corpus first: "
            "`scgrn shard merge PART_DIR... --out CORPUS_DIR`."
        )
        raise CorpusError(msg)
    if not remote.exists(path):
        where = remote.missing_root(directory) if remote.is_url(directory) else None
        msg = where or (
            f"{directory}: no {MANIFEST_NAME}; not a finished scgrn corpus. If `scgrn shard` was interrupted, "
            "run it again with --resume."
        )
        raise CorpusError(msg)
    try:
        manifest = json.loads(remote.read_bytes(path).decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # non-UTF-8 bytes: found by fuzzing
        msg = f"{path}: not valid JSON ({err}); the manifest is damaged. Re-run `scgrn shard ... --resume`."
        raise CorpusError(msg) from None
    if not isinstance(manifest, dict) or manifest.get("magic") != CORPUS_MAGIC:
        got = manifest.get("magic") if isinstance(manifest, dict) else type(manifest).__name__
        msg = f"{path}: magic {got!r} is not {CORPUS_MAGIC!r}; this is not an scgrn corpus manifest."
        raise CorpusError(msg)
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        msg = (
            f"{path}: corpus format version {version!r} is unknown; this scgrn reads versions "
            f"{READABLE_VERSIONS}. Upgrade scgrn, or re-shard the inputs with this version."
        )
        raise CorpusError(msg)
    if version < 2 and manifest.get("value_kind") == "counts":
        _warn_no_library_size(str(path))
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        msg = f"{path}: missing field(s) {missing}; the manifest is incomplete. Re-run `scgrn shard ... --resume`."
        raise CorpusError(msg)
    return manifest


@functools.cache
def _warn_no_library_size(path: str) -> None:  # once per corpus and process
    warnings.warn(
        f"{path}: corpus format 1 records no per-cell library sizes, so models normalise each cell by the sum of its "
        "vocabulary genes, which changes with a dataset's gene-mapping rate. Re-shard with this scgrn "
        "(format 2) to use each cell's raw total.",
        stacklevel=3,
    )


def cp10k_median(stats: GeneStats) -> dict:
    """{"nonzero_median_cp10k": [...]} for counts corpora whose every shard gave its CP10k histogram, else {}."""
    median = stats.nonzero_median_cp10k()
    return {} if median is None else {"nonzero_median_cp10k": np.round(median, 6).tolist()}


def complete_manifest(header: dict, records: list[dict], stats_files: list[Path], seconds: float) -> dict:
    """The manifest from its header (`magic` .. `inputs`), every shard's record in shard order, and each shard's
    gene statistics (`GeneStats.partial` saved as .npz).

    One code path for a single run and for `scgrn shard merge`: stats are added shard by shard in index order,
    so float sums round identically whichever machine wrote which shard.
    """
    stats = GeneStats(header["vocab"]["size"], ValueKind(header["value_kind"]))
    shards, offset = [], 0
    for record, stats_file in zip(records, stats_files, strict=True):
        with np.load(stats_file, allow_pickle=False) as part:
            stats.add(dict(part))
        shards.append({**record, "cell_offset": offset})
        offset += record["n_cells"]
    totals = {
        "n_cells": offset,
        "n_train": sum(s["n_train"] for s in shards),
        "n_val": sum(s["n_val"] for s in shards),
        "nnz": sum(s["nnz"] for s in shards),
        "n_shards": len(shards),
        "n_genes": header["vocab"]["size"],
        "n_genes_expressed": int((stats.n_cells > 0).sum()),
        "n_input_cells": sum(i["n_cells"] for i in header["inputs"]),
        "cells_dropped": {k: sum(s["dropped"][k] for s in shards) for k in ("zero_counts", "min_genes")},
    }
    return {
        **header,
        "shards": shards,
        "totals": totals,
        "gene_stats": {
            "n_cells_expressing": stats.n_cells.tolist(),
            "sum": np.round(stats.total, 6).tolist(),
            "nonzero_median": np.round(stats.nonzero_median(), 6).tolist(),
            **cp10k_median(stats),
        },
        "seconds": round(seconds, 3),
    }
