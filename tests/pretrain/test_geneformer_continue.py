"""Continue pretraining an imported Geneformer checkpoint on our shards: 2 ranks, ZeRO-2, under the deepspeed launcher;
stopped and resumed it gives the straight run's losses; the run exports back to a Hugging Face folder that
transformers loads, with the input and output embeddings still one matrix; under ZeRO-3 too."""

from __future__ import annotations

import json
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from test_geneformer import _checkpoint, transformers
from test_step_semantics import REPO, _train

from data_prep.config import ShardConfig
from data_prep.gene_mapping import MappingOptions
from data_prep.sharder import shard
from pretrain.interop.geneformer_io import export_hf, import_geneformer
from pretrain.release import export_release

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
CONFIG = REPO / "launch" / "configs" / "pretrain" / "geneformer-continue.yaml"


def _corpus(root, tokens, n_cells=96):
    """Cells named by gene symbols (SYMj), mapped onto the checkpoint's Ensembl ids through the release's
    gene_map.tsv (from `--gene-names`), as a user's symbol-named data would be."""
    rng = np.random.default_rng(0)
    genes = [f"SYM{j}" for j, g in enumerate(tokens) if g.startswith("ENSG")]
    x = np.zeros((n_cells, len(genes)), dtype=np.int32)
    for c in range(n_cells):
        chosen = rng.choice(len(genes), size=int(rng.integers(5, 30)), replace=False)
        x[c, chosen] = rng.integers(1, 40, chosen.size)
    adata = ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                       var=pd.DataFrame(index=genes))  # fmt: skip
    adata.write_h5ad(root / "cells.h5ad")
    out = root / "corpus"
    mapping = MappingOptions(gene_map=root / "release" / "gene_map.tsv")
    config = ShardConfig(inputs=[root / "cells.h5ad"], out=out, vocab=root / "release" / "vocab.json",
                         val_fraction=0.0, mapping=mapping)  # fmt: skip
    shard(config, progress=False)
    report = json.loads((out / "mapping_report.json").read_text())[0]
    assert report["n_mapped"] == len(genes), report  # every symbol reached its Ensembl token
    return out


def test_two_rank_zero2_continue_pretraining_resumes_exactly_and_exports_to_hf(tmp_path):
    _, tokens, _ = _checkpoint(tmp_path, "v2")
    names = {f"SYM{j}": g for j, g in enumerate(tokens) if g.startswith("ENSG")}
    (tmp_path / "gene_names.pkl").write_bytes(pickle.dumps(names))
    release = import_geneformer(tmp_path / "hf", tmp_path / "token_dictionary.pkl", tmp_path / "release",
                                gene_medians=tmp_path / "gene_median_dictionary.pkl",
                                gene_names=tmp_path / "gene_names.pkl")  # fmt: skip
    corpus = _corpus(tmp_path, tokens)
    common = (f"data.corpus={corpus}", f"model.init_from={release}", "train.steps=6", "train.warmup_steps=0",
              "train.save_every=100", "train.eval_every=1000", "train.log_every=1000", "train.lr=2e-4",
              "model.dropout=0.0", "data.block_cells=8", "data.window_blocks=1")  # fmt: skip
    _train(tmp_path / "straight", corpus, 2, *common, "train.resume=none", config=CONFIG)
    _train(tmp_path / "stopgo", corpus, 2, *common, "train.resume=none", "train.stop_after=3", config=CONFIG)
    first = json.loads((tmp_path / "stopgo" / "run_summary.json").read_text())["loss_history"]
    _train(tmp_path / "stopgo", corpus, 2, *common, "train.resume=auto", config=CONFIG)
    rest = json.loads((tmp_path / "stopgo" / "run_summary.json").read_text())["loss_history"]
    straight = json.loads((tmp_path / "straight" / "run_summary.json").read_text())["loss_history"]
    assert len(straight) == 6 and first + rest == pytest.approx(straight, rel=1e-5, abs=1e-6)
    trained = export_release(tmp_path / "stopgo", tmp_path / "trained")
    hf_dir = export_hf(trained, tmp_path / "trained-hf")
    back = transformers.BertForMaskedLM.from_pretrained(hf_dir)
    assert back.cls.predictions.decoder.weight.data_ptr() == back.bert.embeddings.word_embeddings.weight.data_ptr()
    start = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf")
    before, after = start.bert.embeddings.word_embeddings.weight, back.bert.embeddings.word_embeddings.weight
    change = float((after - before).norm() / before.norm())
    assert 0 < change < 0.25, change  # trained from the imported weights (a fresh init would be ~1.4 away)
    # ZeRO-3 partitions every parameter over the ranks: the one embedding matrix is saved once, consolidated once
    # and exported as tied, trained as in the ZeRO-2 run
    _train(tmp_path / "zero3", corpus, 2, *common, "train.resume=none", "parallel.zero_stage=3", config=CONFIG)
    zero3 = json.loads((tmp_path / "zero3" / "run_summary.json").read_text())["loss_history"]
    assert zero3 == pytest.approx(straight, rel=1e-4, abs=1e-5)
    hf3 = export_hf(export_release(tmp_path / "zero3", tmp_path / "z3"), tmp_path / "z3-hf")
    back3 = transformers.BertForMaskedLM.from_pretrained(hf3)
    assert back3.cls.predictions.decoder.weight.data_ptr() == back3.bert.embeddings.word_embeddings.weight.data_ptr()
    assert torch.allclose(back3.bert.embeddings.word_embeddings.weight, after, atol=1e-5)
