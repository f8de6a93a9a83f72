"""Corpora written by every released format version stay readable (anndata's archive habit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.corpus import Corpus
from data_prep.loader import StreamingCellDataset
from data_prep.validate import validate_corpus

ARCHIVES = sorted((Path(__file__).resolve().parents[1] / "data" / "archives").glob("v*/"))


@pytest.mark.parametrize("archive", ARCHIVES, ids=[a.name for a in ARCHIVES])
@pytest.mark.parametrize("fmt", ["zarr", "webdataset"])
def test_archived_corpus_reads_back(archive, fmt):
    expected = json.loads((archive / "expected.json").read_text())
    corpus_dir = archive / "corpus"
    assert validate_corpus(corpus_dir) == []
    corpus = Corpus(corpus_dir, fmt)
    tokens = corpus.vocab().tokens
    block = corpus.read_cells(0, corpus.n_cells)
    assert corpus.n_cells == len(expected)
    for i, cid in enumerate(block.cell_ids):
        genes, values = block.cell(i)
        assert [tokens[g] for g in genes] == expected[cid]["genes"]
        assert values.tolist() == expected[cid]["values"]
        assert block.obs["cell_type"][i] == expected[cid]["cell_type"]
    streamed = list(StreamingCellDataset(corpus_dir, fmt=fmt, split="all", seed=0))
    assert sorted(str(c["cell_id"]) for c in streamed) == sorted(expected)


def test_there_is_an_archive_for_the_current_version():
    from data_prep.manifest import CORPUS_FORMAT_VERSION

    assert any(a.name == f"v{CORPUS_FORMAT_VERSION}" for a in ARCHIVES)
