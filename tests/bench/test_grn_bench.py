"""bench grn / grn-sim reporting: paired statistics against scipy, the tables and goals, the held-out truth split."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy.stats import binomtest, wilcoxon

from bench.grn_bench import paired, render
from bench.grn_sim_bench import split_truth


def fake_run(name: str, joint: list[float], gat: list[float], degree: list[float]) -> dict:
    def method(values):
        return {"kind": "learned", "seeds": [{"auroc": v} for v in values]}

    methods = {"joint-gcn": method(joint), "genelink-gat": method(gat), "degree": method(degree)}
    return {"name": name, "methods": methods, "wall_s": 1.0, "edges_method": "joint-gcn"}


def test_paired_differences_match_scipy_over_every_dataset_and_seed():
    runs = [fake_run("a", [0.8, 0.7], [0.6, 0.75], [0.5, 0.5]), fake_run("b", [0.9, 0.65], [0.7, 0.6], [0.5, 0.5])]
    stats = paired(runs, "joint", "genelink-gat")
    diffs = np.array([0.2, -0.05, 0.2, 0.05])
    assert stats["n"] == 4 and stats["wins"] == 3 and stats["losses"] == 1
    assert np.isclose(stats["mean"], diffs.mean())
    assert np.isclose(stats["sign_p"], binomtest(3, 4, 0.5).pvalue)
    assert np.isclose(stats["wilcoxon_p"], wilcoxon(diffs).pvalue)
    assert paired(runs, "joint", "pearson") is None  # a method that did not run is left out, not zero


def test_render_reports_goals_met_or_not():
    runs = [fake_run("a", [0.8, 0.7], [0.6, 0.75], [0.5, 0.5]), fake_run("b", [0.6, 0.6], [0.7, 0.7], [0.5, 0.5])]
    args = SimpleNamespace(command="scgrn bench grn ...", release="R", seeds=2, budget=2, isd_cells=100)
    text = render({"degree-aware": runs}, [], args, "test machine", 60.0)
    assert "## degree-aware: AUROC" in text and "| joint − genelink-gat | 4 |" in text
    assert "joint beats genelink-gat by mean AUROC on 1 of 2 dataset cells (NOT met" in text
    assert "joint beats degree by mean AUROC on 2 of 2 dataset cells (met" in text
    assert "cold-start: not run." in text


def test_half_of_the_truth_is_the_prior_and_the_other_half_is_held_out():
    edges = pd.DataFrame({"tf": [f"TF{i % 5}" for i in range(40)], "target": [f"G{i}" for i in range(40)]})
    prior, held_out = split_truth(edges, seed=1)
    assert len(prior) == len(held_out) == 20
    assert not set(prior["target"]) & set(held_out["target"])
    again, _ = split_truth(edges, seed=1)
    assert prior.equals(again)


def test_summaries_of_other_seeds_merge_per_dataset_and_a_repeated_seed_is_refused():
    import pytest

    from bench.grn_bench import merge_runs

    def run(name, seeds):
        methods = {m: {"kind": "learned", "seeds": [{"seed": s, "auroc": 0.5 + s / 10} for s in seeds]}
                   for m in ("joint-gcn", "degree")}  # fmt: skip
        return {"name": name, "methods": methods, "wall_s": 2.0, "edges_method": "joint-gcn"}

    merged = merge_runs([run("b", [2, 3]), run("a", [0, 1]), run("b", [0, 1]), run("a", [2])])
    assert [r["name"] for r in merged] == ["a", "b"]
    assert [row["seed"] for row in merged[1]["methods"]["joint-gcn"]["seeds"]] == [0, 1, 2, 3]
    assert merged[1]["wall_s"] == 4.0 and len(merged[0]["methods"]["degree"]["seeds"]) == 3
    args = SimpleNamespace(command="c", release="R", seeds=2, budget=2, isd_cells=100)
    assert "Seeds: 3–4;" in render({"degree-aware": merged}, [], args, "m", 1.0)
    with pytest.raises(SystemExit, match=r"seed\(s\) \[1\] appear twice"):
        merge_runs([run("a", [0, 1]), run("a", [1])])
