"""Map each input's genes onto vocabulary ids, and say what happened in a report.

Steps per input gene: pick its key (symbol, or the input's gene id column such as Ensembl), translate it through
an optional user table (e.g. Geneformer's symbol -> Ensembl `gene_name_id_dict`), then look it up in the vocab,
exactly or case-insensitively (mouse `Sox9` <-> human `SOX9`). Genes that land on the same vocab id are
duplicates: summed, or refused, by flag.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import InputError
from data_prep.vocab import GeneVocab

MATCH_ON = ("symbol", "id")
DUPLICATE_POLICIES = ("refuse", "sum")


@dataclass(frozen=True)
class MappingOptions:
    match_on: str = "symbol"  # which input gene column is the key: var_names/symbols or gene ids (Ensembl)
    gene_map: Path | None = None  # TSV: first column input key, second column vocab token
    case_insensitive: bool = False
    duplicate_genes: str = "refuse"  # when several input genes map to one vocab id
    min_mapped_fraction: float = 0.5  # below this, the vocab almost surely does not fit the input

    def __post_init__(self) -> None:
        if self.match_on not in MATCH_ON:
            msg = f"--match-on {self.match_on!r} not allowed; use one of {MATCH_ON}."
            raise InputError(msg)
        if self.duplicate_genes not in DUPLICATE_POLICIES:
            msg = f"--duplicate-genes {self.duplicate_genes!r} not allowed; use one of {DUPLICATE_POLICIES}."
            raise InputError(msg)
        if not 0.0 <= self.min_mapped_fraction <= 1.0:
            msg = f"--min-mapped-fraction {self.min_mapped_fraction} must be within [0, 1]."
            raise InputError(msg)


@dataclass
class InputMapping:
    """How one input's columns land in the vocab: `column_to_id[j]` is a vocab id or -1 (dropped)."""

    source: str
    column_to_id: np.ndarray  # (n_input_genes,) int64
    n_genes: int
    n_mapped: int
    unmapped: list[str] = field(default_factory=list)
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # vocab token -> input genes summed into it

    def summary(self) -> dict:
        return {
            "source": self.source,
            "n_genes": self.n_genes,
            "n_mapped": self.n_mapped,
            "n_unmapped": len(self.unmapped),
            "n_duplicated_groups": len(self.duplicated),
            "duplicated": self.duplicated,
        }


def load_gene_map(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.exists():
        msg = f"--gene-map {path}: no such file."
        raise InputError(msg)
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if table.shape[1] < 2:
        msg = f"{path}: a gene map needs two tab-separated columns (input key, vocab token); got {list(table.columns)}."
        raise InputError(msg)
    return dict(zip(table.iloc[:, 0], table.iloc[:, 1], strict=True))


def clean_name(name: object) -> str:
    """A gene name as scgrn keys it: Unicode NFC (one spelling for composed / decomposed letters), outer
    whitespace stripped."""
    return unicodedata.normalize("NFC", str(name)).strip()


def input_keys(gene_names: np.ndarray, gene_ids: np.ndarray | None, options: MappingOptions, source: str) -> list[str]:
    """The input's gene keys (names or ids), cleaned by `clean_name`; an empty key is refused with its column."""
    if options.match_on == "id":
        if gene_ids is None:
            msg = f"{source}: --match-on id, but this input has no gene id column (e.g. var['gene_ids']); use symbol."
            raise InputError(msg)
        raw, what = gene_ids, "gene id"
    else:
        raw, what = gene_names, "gene name"
    keys = [clean_name(g) for g in raw]
    empty = [j for j, k in enumerate(keys) if not k]
    if empty:
        msg = (
            f"{source}: {len(empty)} empty {what}(s) (blank or whitespace only), first at gene column {empty[0]} "
            f"(0-based; raw value {str(raw[empty[0]])!r}). Give every gene a name, or drop those columns."
        )
        raise InputError(msg)
    return keys


def check_unique_names(keys: list[str], source: str, options: MappingOptions) -> None:
    """Duplicate gene names inside one input are refused unless the user asked to sum them."""
    if options.duplicate_genes == "sum":
        return
    counts = pd.Series(keys).value_counts()
    dups = counts[counts > 1]
    if len(dups):
        listing = ", ".join(f"{g!r} x{n}" for g, n in dups.head(5).items())
        msg = (
            f"{source}: {len(dups)} gene name(s) appear more than once ({listing}). Make them unique "
            "(e.g. AnnData.var_names_make_unique) or pass --duplicate-genes sum to add their counts."
        )
        raise InputError(msg)


def map_genes(
    keys: list[str], vocab: GeneVocab, options: MappingOptions, source: str, gene_map: dict[str, str] | None = None
) -> InputMapping:
    index = {}
    for tok, i in vocab.index().items():
        index.setdefault(clean_name(tok), i)
    if options.case_insensitive:
        upper: dict[str, int] = {}
        for tok, i in index.items():
            upper.setdefault(tok.upper(), i)
        index = upper
    ids = np.full(len(keys), -1, dtype=np.int64)
    unmapped: list[str] = []
    for j, key in enumerate(keys):
        token = gene_map.get(key, key) if gene_map else key
        if options.case_insensitive:
            token = token.upper()
        i = index.get(token, -1)
        ids[j] = i
        if i < 0:
            unmapped.append(key)
    mapped = ids[ids >= 0]
    uniq, counts = np.unique(mapped, return_counts=True)
    dup_ids = set(uniq[counts > 1].tolist())
    duplicated = {vocab.tokens[i]: [keys[j] for j in np.flatnonzero(ids == i)] for i in sorted(dup_ids)}
    if duplicated and options.duplicate_genes == "refuse":
        first = next(iter(duplicated.items()))
        msg = (
            f"{source}: {len(duplicated)} vocab gene(s) receive more than one input gene, e.g. {first[0]!r} <- "
            f"{first[1]}. Pass --duplicate-genes sum to add them, or fix the gene map."
        )
        raise InputError(msg)
    n_mapped = int((ids >= 0).sum())
    fraction = n_mapped / max(1, len(keys))
    if fraction < options.min_mapped_fraction:
        msg = (
            f"{source}: only {n_mapped} of {len(keys)} genes ({fraction:.1%}) are in the vocabulary "
            f"({vocab.source}); at least {options.min_mapped_fraction:.0%} are required. Unmapped examples: "
            f"{unmapped[:5]}. Try --match-on id (Ensembl vocab), --gene-map TABLE (symbol -> vocab token), "
            "--case-insensitive (mouse vs human symbols), or lower --min-mapped-fraction."
        )
        raise InputError(msg)
    return InputMapping(source, ids, len(keys), n_mapped, unmapped, duplicated)
