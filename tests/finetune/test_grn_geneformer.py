"""`scgrn grn` with an imported Geneformer-family release: embeddings, Geneformer's deletion (embedding shift when
the TF's token is removed) and attention run; the value probe is left out with the reason; the random-init twin
keeps the tokenizer's gene medians."""

from __future__ import annotations

import logging
import pickle

import anndata as ad
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency (pip install -e .[dev])")

from data_prep.simulate import SimulationConfig, write_simulation  # noqa: E402
from finetune.grn import pipeline  # noqa: E402
from finetune.grn.config import GrnConfig  # noqa: E402
from finetune.grn.release_inputs import random_init_like  # noqa: E402
from pretrain.interop.geneformer_io import import_geneformer  # noqa: E402
from pretrain.release import load_release  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def geneformer_release(tmp_path_factory):
    """A tiny V2 checkpoint whose dictionary is the simulated genes, medians from the simulated cells (CP10k)."""
    root = tmp_path_factory.mktemp("gf-grn")
    h5ad, truth = write_simulation(SimulationConfig(n_cells=300, n_genes=60, n_tfs=8, seed=1), root / "sim.h5ad")
    adata = ad.read_h5ad(h5ad)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    cp10k = x / x.sum(1, keepdims=True) * 1e4
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3} | {g: 4 + j for j, g in enumerate(adata.var_names)}
    medians = {g: float(np.median(cp10k[cp10k[:, j] > 0, j])) for j, g in enumerate(adata.var_names)
               if (cp10k[:, j] > 0).any()}  # fmt: skip
    (root / "tokens.pkl").write_bytes(pickle.dumps(tokens))
    (root / "medians.pkl").write_bytes(pickle.dumps(medians))
    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    config = transformers.BertConfig(vocab_size=len(tokens), max_position_embeddings=64, **sizes)
    transformers.BertForMaskedLM(config).save_pretrained(root / "hf")
    release = import_geneformer(root / "hf", root / "tokens.pkl", root / "release", gene_medians=root / "medians.pkl")
    return release, h5ad, truth, root


def test_grn_runs_the_geneformer_readouts_and_leaves_the_probe_out(geneformer_release, tmp_path, caplog):
    release, h5ad, truth, _ = geneformer_release
    cfg = GrnConfig(release=release, out=tmp_path / "out", expression=h5ad, truth=truth, seeds=1, tuning_budget=1,
                    tree_method="none", isd_cells=30, attention_cells=60, epochs=20,
                    evidence=["pearson", "isd", "attention", "probe"])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        payload = pipeline.run_grn(cfg)
    methods = payload["methods"]
    assert {"pretrained-isd", "random-init-isd", "pretrained-attention", "random-init-attention"} <= set(methods)
    assert not any("probe" in name for name in methods)
    assert "predicts gene tokens, not values: the probe readout is left out" in caplog.text
    assert payload["embeddings"]["n_unmapped"] == 0  # every dataset gene is in the dictionary
    for name in ("pretrained-isd", "pretrained-attention"):
        assert 0.0 <= methods[name]["summary"]["auroc"]["mean"] <= 1.0
    twin, (pretrained, _) = random_init_like(release), load_release(release)
    assert torch.equal(twin.gene_median, pretrained.gene_median) and (twin.gene_median > 0).any()  # same tokenizer
    assert not torch.equal(twin.token_embedding.weight, pretrained.token_embedding.weight)  # other weights


def test_grn_runs_an_imported_scgpt_checkpoint(geneformer_release, tmp_path, caplog):
    """An scGPT-layout checkpoint over the simulated genes: its embeddings, value deletion and probe (its expression
    decoder on masked genes; the probe moves the TF from the cell's lowest bin to its top one) and attention run."""
    import json

    from checkpoints import scgpt_state

    from pretrain.interop.scgpt_io import import_scgpt

    _, h5ad, truth, _ = geneformer_release
    genes = list(ad.read_h5ad(h5ad).var_names)
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2} | {g: 3 + j for j, g in enumerate(genes)}
    folder = tmp_path / "scgpt"
    folder.mkdir()
    torch.save(scgpt_state(len(vocab), "continuous"), folder / "best_model.pt")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "args.json").write_text(json.dumps({"embsize": 32, "nheads": 4, "d_hid": 48, "nlayers": 2,
                                                  "n_bins": 11, "input_emb_style": "continuous"}))  # fmt: skip
    release = import_scgpt(folder, tmp_path / "release")
    cfg = GrnConfig(release=release, out=tmp_path / "out", expression=h5ad, truth=truth, seeds=1, tuning_budget=1,
                    tree_method="none", isd_cells=20, probe_cells=10, attention_cells=40, epochs=20,
                    evidence=["pearson", "isd", "attention", "probe"])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        payload = pipeline.run_grn(cfg)
    methods = payload["methods"]
    assert {"pretrained-isd", "random-init-isd", "pretrained-attention", "pretrained-probe"} <= set(methods)
    assert "left out" not in caplog.text
    assert payload["embeddings"]["n_unmapped"] == 0
