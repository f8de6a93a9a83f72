"""The whole `scgrn eval` on a debug release trained in the test on real PBMC counts, through the CLI; and the
evaluation `scgrn export` runs by itself on the corpus's validation split."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from conftest import require_shared, run_cli

# one worker under pytest-xdist builds the session's PBMC release for both CLI modules
pytestmark = [pytest.mark.real_data, pytest.mark.slow, pytest.mark.xdist_group("pbmc-release")]

SECTIONS = {"masked", "cells", "genes", "transfer"}


@pytest.fixture(scope="module")
def labelled_release(pbmc_debug_release):
    """The session's debug release on PBMC 3k (tests/conftest.py) and its export's output."""
    return pbmc_debug_release


def test_eval_on_a_file_the_model_never_saw_has_all_four_sections_with_baselines(tmp_path, labelled_release):
    release, _ = labelled_release
    retina = require_shared("counts", "human_retina_cellxgene_1k.h5ad")
    trrust = require_shared("priors", "trrust_v2_human.tsv")
    out = tmp_path / "eval"
    proc = run_cli("eval", release, "--data", retina, "--label", "cell_type", "--prior", trrust, "--out", out,
                   "--max-cells", "400", "--map", "pca", "--finetune-epochs", "1", "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"eval.json", "eval.md", "cell_map.png", "masked_values.png"} <= {p.name for p in out.iterdir()}
    payload = json.loads((out / "eval.json").read_text())
    assert set(payload["sections"]) == SECTIONS and payload["skipped"] == {}
    assert payload["n_cells"] == 400 and payload["n_cell_types"] >= 5
    assert payload["seen_in_pretraining"] == "no"  # retina is not among the release's training inputs
    masked = payload["sections"]["masked"]
    assert set(masked["predictors"]) == {"model", "per-gene mean", "library-scaled mean", "random-init"}
    # 10 steps already teach the model its bin distribution: on cells it never saw, it beats its own random init on
    # its objective by a clear margin (a useless, untrained model would not)
    ours, theirs = masked["predictors"]["model"]["cross_entropy"], masked["predictors"]["random-init"]["cross_entropy"]
    assert ours < theirs - 0.1, (ours, theirs)
    assert masked["n_masked"] > 1000 and masked["native_metric"] == "cross_entropy"
    # the masked-value baselines are real predictors: a library-aware mean tracks the truth on real cells
    assert masked["predictors"]["library-scaled mean"]["pearson"] > 0.5
    cells = payload["sections"]["cells"]["metrics"]
    assert set(cells) == {"pretrained", "random-init", "PCA (log-normalized)"}
    assert cells["PCA (log-normalized)"]["knn_accuracy"] > 0.6  # the baseline every single-cell user has works
    genes = payload["sections"]["genes"]["priors"]["trrust_v2_human.tsv"]
    assert genes["pairs"]["n_pos"] >= 10 and genes["pairs"]["n_neg"] >= 10
    assert {"static (token embedding)", "pretrained contextual", "random-init contextual",
            "expression-correlation"} == set(genes["methods"])  # fmt: skip
    transfer = payload["sections"]["transfer"]
    assert transfer["split"]["train_cells"] + transfer["split"]["test_cells"] <= 400
    assert {"pretrained linear probe", "random-init linear probe", "logistic regression on PCA",
            "pretrained finetune", "random-init finetune"} == set(transfer["methods"])  # fmt: skip
    assert transfer["methods"]["logistic regression on PCA"]["macro_f1"] > 0.4
    text = (out / "eval.md").read_text()
    for heading in ("Masked-value prediction", "Cell embeddings", "Gene embeddings", "Transfer"):
        assert heading in text
    assert "beat" in text  # every section states its verdict
    assert proc.stdout.startswith("# scgrn eval")


def test_export_evaluates_the_release_on_its_validation_split(labelled_release):
    release, export = labelled_release
    assert "eval on" in export.stdout and "validation split" in export.stdout, export.stdout + export.stderr
    payload = json.loads((release / "eval" / "eval.json").read_text())
    assert "(val split)" in payload["data"]
    assert {"masked", "cells", "transfer"} <= set(payload["sections"])
    assert "no prior network" in payload["skipped"]["genes"]
    assert payload["seen_in_pretraining"].startswith("yes")
    assert payload["sections"]["cells"]["map"] in ("umap", "pca")
    assert (release / "eval" / "cell_map.png").stat().st_size > 1000


def test_eval_refuses_normalized_values_and_bad_options(tmp_path, labelled_release):
    release, _ = labelled_release
    adata = ad.AnnData(np.abs(np.random.default_rng(0).normal(size=(20, 5))).astype(np.float32))
    adata.var_names = ["CD3E", "MS4A1", "LYZ", "NKG7", "GNLY"]
    path = tmp_path / "lognorm.h5ad"
    adata.write_h5ad(path)
    proc = run_cli("eval", release, "--data", path, "--out", tmp_path / "o", "--label", "")
    assert proc.returncode == 2 and "lognorm.h5ad: the matrix is not raw counts" in proc.stderr, proc.stderr
    proc = run_cli("eval", release, "--data", path, "--out", tmp_path / "o", "--sections", "masked,umap")
    assert proc.returncode == 2 and "--sections" in proc.stderr and "'umap'" in proc.stderr, proc.stderr
    assert not (tmp_path / "o" / "eval.json").exists()
