"""`scgrn bench grn-pretrain` (issue 21, item 6): its pieces at a tiny scale and its reading of the numbers.

- the GRN sample and the pretraining corpus share the network and nothing else;
- one pretraining run per objective, stopped and exported at each compute level: the level-3 release is the run's
  step-3 weights, not a separate 3-step schedule;
- the table's verdicts: an interval over independent simulations, none (a tie) from one simulation.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from bench import grn_pretrain_bench as gp
from bench.grn_sim_bench import split_truth


def test_sample_and_corpus_share_the_network_and_the_levels_are_one_run(tmp_path):
    _, edges, corpus = gp.simulate_pair(tmp_path, 60, 8, seed=3, depth=5000.0, sample_cells=80,
                                             corpus_cells=160)  # fmt: skip
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["totals"]["n_cells"] == 160 and manifest.get("panels")  # format 3: panels for mask_unexpressed
    truth = pd.read_csv(edges, sep="\t")
    prior, held_out = split_truth(truth, 3)
    assert len(prior) + len(held_out) == len(truth) and not set(prior.index) & set(held_out.index)
    assert not (tmp_path / "corpus.h5ad").exists() and not (tmp_path / "corpus.edges.tsv").exists()

    releases = gp.pretrain_levels(tmp_path, corpus, "unexpressed", [3, 6])
    assert sorted(releases) == [3, 6] and releases[3].name == "release-unexpressed-3of6"
    summary = json.loads((tmp_path / "run-unexpressed-6" / "run_summary.json").read_text())
    assert summary["steps"] == 6  # one run, resumed after the stop at step 3
    config = json.loads((releases[6] / "config.json").read_text())
    assert config["model"]["mask_unexpressed"] == gp.OBJECTIVES["unexpressed"] > 0
    early, late = load_file(releases[3] / "model.safetensors"), load_file(releases[6] / "model.safetensors")
    assert early.keys() == late.keys()
    assert any(not np.array_equal(early[k], late[k]) for k in early)  # three more steps moved the weights
    again = gp.pretrain_levels(tmp_path, corpus, "unexpressed", [3, 6])  # present: reused, nothing retrained
    assert again == releases


def _rows(diffs: list[float]) -> list[dict]:
    rows = []
    for i, d in enumerate(diffs):
        auroc = {"joint": 0.7, "random-init": 0.7, "pearson": 0.6, "regression": 0.6, "grnboost2": 0.6}
        for x in gp.READOUTS:
            auroc[f"pretrained-{x}"] = 0.55 + d
            auroc[f"random-init-{x}"] = 0.55
        rows.append(
            {"sim": f"400 genes, sparse, seed {i}", "objective": "expressed", "steps": 100, "adapt": 0, "auroc": auroc}
        )
    return rows


@pytest.mark.parametrize(("diffs", "word"), [([0.05, 0.06, 0.04], "beats"), ([0.05, -0.05, 0.01], "ties with"),
                                             ([0.2], "ties with")])  # fmt: skip
def test_verdicts_need_an_interval_over_simulations(diffs, word):
    args = argparse.Namespace(command="scgrn bench grn-pretrain", corpus_cells=1000, sample_cells=100, seeds=2,
                              budget=1)  # fmt: skip
    text = gp.render(_rows(diffs), args, "test machine", 1.0)
    probe = next(line for line in text.splitlines() if line.startswith("| sparse | expressed | 0 | probe | 100 |"))
    assert f"pretrained {word} twin" in probe, probe
    if len(diffs) == 1:
        assert "no interval (one simulation)" in probe
    assert "does NOT rise" not in text  # 0 steps (the twin) 0.55 < 100 steps


def test_bad_arguments_are_refused_at_once(capsys):
    assert gp.main(["--sizes", "300", "--depths", "shallow", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "--sizes ['300']" in err and "--depths ['shallow']" in err


def test_the_summary_resumes_with_the_same_settings_and_refuses_others(tmp_path, capsys):
    args = argparse.Namespace(corpus_cells=1000, sample_cells=100, seeds=2, budget=1, isd_cells=10)
    settings = gp._settings(args, [100])
    path = tmp_path / "summary.json"
    assert gp.read_summary(path, settings) == []  # nothing yet
    rows = _rows([0.05, 0.06])
    gp.write_summary(path, settings, rows)
    again = gp.read_summary(path, settings)
    keys = {(f"400 genes, sparse, seed {i}", "expressed", 100, 0) for i in (0, 1)}
    assert again == rows and {gp.row_key(r) for r in again} == keys
    with pytest.raises(ValueError, match=r"budget=1; this call: budget=3") as err:
        gp.read_summary(path, {**settings, "budget": 3})
    assert str(path) in str(err.value) and "another --summary" in str(err.value)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a scgrn-grn-pretrain-summary v1 file"):
        gp.read_summary(path, settings)
    # the CLI says it once, before any simulation or pretraining starts
    out = tmp_path / "out"
    assert gp.main(["--summary", str(path), "--out", str(out), "--results", str(tmp_path / "r.md")]) == 2
    assert "not a scgrn-grn-pretrain-summary v1 file" in capsys.readouterr().err and not out.exists()


def test_rows_in_the_summary_are_not_recomputed(tmp_path):
    argv = ["--sizes", "200", "--depths", "sparse", "--sim-seeds", "1", "--steps", "100", "--objectives",
            "expressed", "--adapt-steps", "0", "--corpus-cells", "1000", "--sample-cells", "100", "--seeds", "2",
            "--budget", "1", "--isd-cells", "10"]  # fmt: skip
    args = argparse.Namespace(corpus_cells=1000, sample_cells=100, seeds=2, budget=1, isd_cells=10)
    row = {**_rows([0.05])[0], "sim": "200 genes, sparse, seed 1", "wall_s": 60.0}
    gp.write_summary(tmp_path / "summary.json", gp._settings(args, [100]), [row])
    out, results = tmp_path / "out", tmp_path / "results.md"
    paths = ["--out", str(out), "--results", str(results), "--summary", str(tmp_path / "summary.json")]
    assert gp.main(argv + paths) == 0
    assert not out.exists()  # nothing simulated, pretrained or run: the one wanted row was there
    assert "| 200 genes, sparse, seed 1 | expressed | 100 | 0 |" in results.read_text()
    results.unlink()
    assert gp.main(argv + paths + ["--report-only"]) == 0 and "## Goals" in results.read_text()
