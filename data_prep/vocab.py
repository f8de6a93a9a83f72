"""Gene vocabulary: token strings whose position is the token id, special tokens first, hashed.

A corpus either builds its vocabulary from its inputs (union of genes in first-seen order) or takes one a user
gives: our `vocab.json`, a TSV like Geneformer's `token_dictionary` (token, token_id) or a JSON `{gene: id}` like
scGPT's. Given ids are kept (so pretrained embeddings still line up); missing special tokens are appended.
The sha256 of the token list travels in the manifest and in checkpoints, so a model refuses another vocab.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from data_prep import remote
from data_prep.errors import InputError
from data_prep.io_utils import atomic_write_text

VOCAB_FORMAT = "scgrn-vocab"
VOCAB_VERSION = 1
SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<unk>")


@dataclass(frozen=True)
class GeneVocab:
    tokens: tuple[str, ...]
    source: str = "built from inputs"

    def __post_init__(self) -> None:
        seen: set[str] = set()
        dups = [t for t in self.tokens if t in seen or seen.add(t)]
        if dups:
            msg = f"vocabulary ({self.source}) lists token(s) more than once: {dups[:5]}; tokens must be unique."
            raise InputError(msg)

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(list(self.tokens), separators=(",", ":")).encode()).hexdigest()

    def special_ids(self) -> dict[str, int]:
        index = self.index()
        return {t: index[t] for t in SPECIAL_TOKENS}

    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @property
    def genes(self) -> list[str]:
        return [t for t in self.tokens if t not in SPECIAL_TOKENS and not t.startswith("<unused")]

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_genes(cls, gene_lists: Iterable[Iterable[str]]) -> GeneVocab:
        """Specials, then the union of genes in first-seen order (stable for the same inputs)."""
        tokens = dict.fromkeys(SPECIAL_TOKENS)
        for genes in gene_lists:
            tokens.update(dict.fromkeys(genes))
        return cls(tuple(tokens))

    @classmethod
    def from_ids(cls, token_to_id: dict[str, int], source: str) -> GeneVocab:
        ids = sorted(token_to_id.values())
        if ids and (ids[0] < 0 or len(set(ids)) != len(ids)):
            msg = f"{source}: token ids must be unique and >= 0 (got min {ids[0]}, {len(ids)} ids)."
            raise InputError(msg)
        size = (ids[-1] + 1) if ids else 0
        tokens = [f"<unused{i}>" for i in range(size)]
        for tok, i in token_to_id.items():
            tokens[i] = tok
        tokens += [t for t in SPECIAL_TOKENS if t not in token_to_id]
        return cls(tuple(tokens), source)

    @classmethod
    def load(cls, path: Path | str) -> GeneVocab:
        path = remote.as_location(path)  # a local file or a URL (a remote corpus's vocab.json)
        if not remote.exists(path):
            msg = f"--vocab {path}: no such file."
            raise InputError(msg)
        text = remote.read_bytes(path).decode()
        if PurePosixPath(str(path)).suffix == ".json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                msg = f"{path}: not valid JSON ({err})."
                raise InputError(msg) from None
            if isinstance(obj, dict) and obj.get("format") == VOCAB_FORMAT:
                if obj.get("version") != VOCAB_VERSION:
                    msg = f"{path}: vocab version {obj.get('version')!r} unknown; this scgrn reads {VOCAB_VERSION}."
                    raise InputError(msg)
                return cls(tuple(obj["tokens"]), str(path))
            if isinstance(obj, dict) and all(isinstance(v, int) for v in obj.values()):
                return cls.from_ids(obj, str(path))
            if isinstance(obj, list) and all(isinstance(v, str) for v in obj):
                return cls.from_genes([obj]) if obj[:1] != ["<pad>"] else cls(tuple(obj), str(path))
            msg = f"{path}: JSON vocab must be {{gene: id}}, a list of genes, or an scgrn vocab.json."
            raise InputError(msg)
        table = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
        if table.shape[1] >= 2 and pd.to_numeric(table.iloc[:, 1], errors="coerce").notna().all():
            return cls.from_ids(dict(zip(table.iloc[:, 0], table.iloc[:, 1].astype(int), strict=True)), str(path))
        if table.shape[1] == 1:
            genes = [table.columns[0], *table.iloc[:, 0]]
            return cls.from_genes([genes])
        msg = (
            f"{path}: TSV vocab must have columns (token, token_id) with integer ids, or a single column of genes; "
            f"got columns {list(table.columns)[:4]}."
        )
        raise InputError(msg)

    def save(self, path: Path) -> None:
        obj = {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "sha256": self.sha256,
            "source": self.source,
            "special_tokens": list(SPECIAL_TOKENS),
            "tokens": list(self.tokens),
        }
        atomic_write_text(path, json.dumps(obj))
