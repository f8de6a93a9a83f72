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


def test_version_3_records_each_inputs_measured_genes_and_older_versions_none():
    """Format 3's panels: the archive's one input measured all 12 genes (G0..G11); the loader gives each cell its
    panel index. Version 2 records none (`Corpus.panels` is None, no `panel` in the batches)."""
    by_version = {a.name: a / "corpus" for a in ARCHIVES}
    corpus = Corpus(by_version["v3"])
    tokens = corpus.vocab().tokens
    assert len(corpus.panels) == 1 and [tokens[g] for g in corpus.panels[0]] == [f"G{j}" for j in range(12)]
    for fmt in ("zarr", "webdataset"):
        batches = list(StreamingCellDataset(by_version["v3"], fmt=fmt, split="all", seed=0, batch_size=5))
        assert all(b.to_torch()["panel"].tolist() == [0] * b.n_cells for b in batches)
    assert Corpus(by_version["v2"]).panels is None
    batch = next(iter(StreamingCellDataset(by_version["v2"], split="all", seed=0, batch_size=5)))
    assert "panel" not in batch.to_torch()
