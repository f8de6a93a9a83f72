"""bench grn / grn-sim reporting: paired differences with hierarchical intervals over expression matrices, the
tables, verdicts and goals, the held-out truth split."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from bench.grn_bench import BEST_SHORTCUT, paired, per_seed, render
from bench.grn_sim_bench import split_truth


def fake_run(name: str, joint: list[float], gat: list[float], degree: list[float]) -> dict:
    def method(values):
        return {"kind": "learned", "seeds": [{"auroc": v} for v in values]}

    methods = {"joint-gcn": method(joint), "genelink-gat": method(gat), "degree": method(degree)}
    return {"name": name, "methods": methods, "wall_s": 1.0, "edges_method": "joint-gcn"}


def test_paired_differences_carry_a_hierarchical_interval_and_a_verdict():
    runs = [fake_run("S/a/TFs+500", [0.8, 0.7], [0.6, 0.75], [0.5, 0.5]),
            fake_run("N/b/TFs+500", [0.9, 0.65], [0.7, 0.6], [0.5, 0.5])]  # fmt: skip
    stats = paired(runs, "joint", "genelink-gat")
    assert stats["n_units"] == 2 and stats["n_rows"] == 4  # two expression matrices, four (dataset, seed) rows
    assert stats["wins"] == 3 and stats["losses"] == 1
    # equal weight per matrix: mean of the matrix means (0.075 and 0.125)
    assert np.isclose(stats["mean"], 0.1)
    assert stats["low"] <= stats["mean"] <= stats["high"]
    assert paired(runs, "joint", "pearson") is None  # a method that did not run is left out, not zero
    # two network types over the SAME expression matrix are one unit, not two
    same = [fake_run("S/a/TFs+500", [0.8], [0.6], [0.5]), fake_run("N/a/TFs+500", [0.9], [0.7], [0.5])]
    assert paired(same, "joint", "genelink-gat")["n_units"] == 1


def test_best_shortcut_is_the_highest_shortcut_per_seed():
    run = fake_run("S/a/TFs+500", [0.8, 0.7], [0.6, 0.75], [0.5, 0.55])
    run["methods"]["topology"] = {"kind": "shortcut", "seeds": [{"auroc": 0.6}, {"auroc": 0.52}]}
    assert per_seed(run, BEST_SHORTCUT) == [0.6, 0.55]


def test_render_reports_intervals_verdicts_and_too_small_sets():
    runs = [fake_run(f"S/{c}/TFs+500", [0.8, 0.81], [0.6, 0.6], [0.5, 0.5]) for c in "abcdef"]
    runs += [fake_run(f"N/{c}/TFs+500", [0.6, 0.6], [0.6, 0.6], [0.5, 0.5]) for c in "gh"]
    args = SimpleNamespace(command="scgrn bench grn ...", release="R", seeds=2, budget=2, isd_cells=100)
    text = render({"degree-aware": runs, "genelink": runs[:2]}, [], args, "test machine", 60.0,
                  {"degree-aware": [("STRING/x/TFs+500", 15)]})  # fmt: skip
    assert "## degree-aware: AUROC" in text and "| joint − genelink-gat | 8 | 16 |" in text
    assert "joint beats genelink-gat" in text and "joint beats best shortcut" in text
    assert "LEAKY, for comparison with published numbers" in text
    assert "STRING/x/TFs+500 (15)" in text
    assert "cold-start: not run." in text
    assert "- **degree-aware**: joint beats the best shortcut (+0." in text  # the reading, from the intervals
    assert "was not compared with its random-init twin" in text and "adds nothing measurable" not in text
    assert "| degree-aware | S | 6 | 0.805 | 0.600 |" in text and "| degree-aware | N | 2 | 0.600 | 0.600 |" in text
    tie = [fake_run(f"S/{c}/TFs+500", [0.6, 0.7], [0.7, 0.6], [0.5, 0.5]) for c in "abc"]
    assert "joint ties with genelink-gat" in render({"degree-aware": tie}, [], args, "m", 1.0)
    assert "Partial" not in text  # nothing said about sets when the caller does not list them
    # a table computed in pieces names the sets it does not have yet; a too-small set is not missing
    every = [r["name"] for r in runs] + ["STRING/x/TFs+500", "Specific/y/TFs+500"]
    partial = render({"degree-aware": runs}, [], args, "m", 1.0, {"degree-aware": [("STRING/x/TFs+500", 15)]}, every)
    assert "**Partial: 1 of the 10 sets not run yet under degree-aware** (Specific/y/TFs+500)" in partial
    complete = render({"degree-aware": runs}, [], args, "m", 1.0, {}, [r["name"] for r in runs])
    assert "Partial" not in complete


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
