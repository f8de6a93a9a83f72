"""`scgrn inspect DIR`: what a corpus holds, for people (text) or programs (`--json`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_prep import remote
from data_prep.manifest import read_manifest


def corpus_summary(directory: Path | str) -> dict:
    m = read_manifest(directory)
    t = m["totals"]
    expressing = np.asarray(m["gene_stats"]["n_cells_expressing"])
    vocab_tokens = None
    top = np.argsort(-expressing)[:10]
    try:
        vocab_file = remote.join(remote.as_location(directory), m["vocab"]["file"])
        vocab_tokens = json.loads(remote.read_bytes(vocab_file))["tokens"]
    except (OSError, ValueError, KeyError):
        vocab_tokens = None
    return {
        "directory": str(directory),
        "format_version": m["format_version"],
        "formats": m["formats"],
        "value_kind": m["value_kind"],
        "n_cells": t["n_cells"],
        "n_train": t["n_train"],
        "n_val": t["n_val"],
        "n_genes": t["n_genes"],
        "n_genes_expressed": t["n_genes_expressed"],
        "nnz": t["nnz"],
        "n_shards": t["n_shards"],
        "mean_genes_per_cell": round(t["nnz"] / max(1, t["n_cells"]), 1),
        "cells_dropped": t["cells_dropped"],
        "vocab_sha256": m["vocab"]["sha256"],
        "vocab_source": m["vocab"]["source"],
        "inputs": [
            {
                "path": i["path"],
                "kind": i["kind"],
                "n_cells": i["n_cells"],
                "n_genes": i["n_genes"],
                "genes_mapped": i["mapping"]["n_mapped"],
            }
            for i in m["inputs"]
        ],
        "top_expressed_genes": [
            {"gene": vocab_tokens[i] if vocab_tokens else int(i), "n_cells": int(expressing[i])} for i in top
        ],
        "command": m["command"],
        "created": m["created"],
    }


def format_summary(s: dict) -> str:
    lines = [
        f"corpus {s['directory']}  (format v{s['format_version']}, {'+'.join(s['formats'])}, "
        f"values: {s['value_kind']})",
        f"  cells        {s['n_cells']:,}  (train {s['n_train']:,} / val {s['n_val']:,}; dropped: "
        + ", ".join(f"{k} {v}" for k, v in s["cells_dropped"].items())
        + ")",
        f"  genes        {s['n_genes']:,} in vocab ({s['n_genes_expressed']:,} expressed), "
        f"{s['mean_genes_per_cell']} per cell on average",
        f"  non-zeros    {s['nnz']:,} in {s['n_shards']} shard(s)",
        f"  vocab        {s['vocab_sha256'][:16]}…  ({s['vocab_source']})",
        "  inputs:",
    ]
    lines += [
        f"    {i['path']}  [{i['kind']}] {i['n_cells']:,} cells x {i['n_genes']:,} genes ({i['genes_mapped']:,} mapped)"
        for i in s["inputs"]
    ]
    lines.append("  most expressed: " + ", ".join(f"{g['gene']} ({g['n_cells']:,})" for g in s["top_expressed_genes"]))
    return "\n".join(lines)
