"""`manifest.json`: the corpus's table of contents, written last (atomically) by `scgrn shard`.

Holds format + version, vocab + hash, value kind, every shard (cells, nnz, sha256 per format), totals,
per-gene statistics, the train/validation rule, the inputs with their hashes, and the command. See SPEC.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.errors import CorpusError
from data_prep.io_utils import atomic_write_text

CORPUS_MAGIC = "scgrn-corpus"
CORPUS_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("magic", "format_version", "formats", "value_kind", "vocab", "shards", "totals", "inputs")


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=1))
    return path


def read_manifest(directory: Path) -> dict:
    """Load and check a manifest; every problem names the file and what to do."""
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        msg = (
            f"{directory}: no {MANIFEST_NAME}; not a finished scgrn corpus. If `scgrn shard` was interrupted, "
            "run it again with --resume."
        )
        raise CorpusError(msg)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        msg = f"{path}: not valid JSON ({err}); the manifest is damaged. Re-run `scgrn shard ... --resume`."
        raise CorpusError(msg) from None
    if not isinstance(manifest, dict) or manifest.get("magic") != CORPUS_MAGIC:
        got = manifest.get("magic") if isinstance(manifest, dict) else type(manifest).__name__
        msg = f"{path}: magic {got!r} is not {CORPUS_MAGIC!r}; this is not an scgrn corpus manifest."
        raise CorpusError(msg)
    version = manifest.get("format_version")
    if version != CORPUS_FORMAT_VERSION:
        msg = (
            f"{path}: corpus format version {version!r} is unknown; this scgrn reads version "
            f"{CORPUS_FORMAT_VERSION}. Upgrade scgrn, or re-shard the inputs with this version."
        )
        raise CorpusError(msg)
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        msg = f"{path}: missing field(s) {missing}; the manifest is incomplete. Re-run `scgrn shard ... --resume`."
        raise CorpusError(msg)
    return manifest
