"""Which method writes edges.tsv, and the verdict words: shortcuts are never chosen, a learned method is chosen only
when its validation margin over the best unsupervised one has a seed interval above 0, and "ties with" is printed
whenever the interval contains 0."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from finetune.errors import GrnInputError
from finetune.grn.choice import verdicts, winner
from finetune.grn.config import GrnConfig


def method(kind: str, val: list[float], test: list[float] | None = None) -> dict:
    test = test if test is not None else val
    seeds = [{"seed": i, "val_auroc": v, "auroc": t} for i, (v, t) in enumerate(zip(val, test, strict=True))]
    mean = {"val_auroc": {"mean": sum(val) / len(val)}, "auroc": {"mean": sum(test) / len(test)}}
    return {"kind": kind, "seeds": seeds, "summary": mean}


NO_METHOD = SimpleNamespace(method=None)


def test_a_shortcut_is_never_chosen_even_when_it_is_best_on_validation():
    methods = {
        "joint-gcn": method("learned", [0.70, 0.71, 0.72]),
        "pearson": method("unsupervised", [0.60, 0.61, 0.60]),
        "topology": method("shortcut", [0.95, 0.96, 0.94]),
        "degree": method("shortcut", [0.90, 0.90, 0.90]),
    }
    chosen, reason = winner(NO_METHOD, methods)
    assert chosen == "joint-gcn" and "beats the best unsupervised method" in reason


def test_the_unsupervised_method_is_chosen_when_the_learned_ones_tie_it():
    # planted: the learned model is ahead on average but not on every seed; its interval contains 0
    methods = {
        "joint-gcn": method("learned", [0.66, 0.58, 0.64]),
        "random-init": method("learned", [0.61, 0.60, 0.60]),
        "pearson": method("unsupervised", [0.60, 0.61, 0.60]),
        "label-knn": method("shortcut", [0.80, 0.80, 0.80]),
    }
    chosen, reason = winner(NO_METHOD, methods)
    assert chosen == "pearson"
    assert "no learned method beats the best unsupervised one" in reason and "does not exclude 0" in reason
    one_seed = {name: method(m["kind"], [r["val_auroc"] for r in m["seeds"]][:1]) for name, m in methods.items()}
    chosen, reason = winner(NO_METHOD, one_seed)
    assert chosen == "pearson" and "one seed gives no interval" in reason


def test_method_flag_overrides_but_never_names_a_shortcut(tmp_path):
    methods = {"joint-gcn": method("learned", [0.7]), "pearson": method("unsupervised", [0.6])}
    assert winner(SimpleNamespace(method="pearson"), methods) == ("pearson", "chosen with --method")
    release = tmp_path / "release"
    release.mkdir()
    with pytest.raises(GrnInputError, match="--method 'topology': a shortcut"):
        GrnConfig(release=release, out=tmp_path / "out", benchmark=tmp_path, method="topology")


def test_verdicts_say_ties_when_the_seed_interval_contains_zero_and_name_the_best_shortcut():
    methods = {
        "joint-gcn": method("learned", [0.7] * 3, [0.70, 0.75, 0.72]),
        "pearson": method("unsupervised", [0.6] * 3, [0.72, 0.70, 0.74]),  # joint − pearson: -0.02, +0.05, -0.02
        "random-init": method("learned", [0.6] * 3, [0.60, 0.61, 0.62]),  # +0.10, +0.14, +0.10
        "topology": method("shortcut", [0.5] * 3, [0.80, 0.82, 0.81]),  # -0.10, -0.07, -0.09
        "degree": method("shortcut", [0.5] * 3, [0.50, 0.50, 0.50]),
    }
    lines = verdicts(methods, "joint-gcn", "pearson", "reason")
    text = "\n".join(lines)
    assert lines[0].startswith("edges.tsv ranked by **pearson**")
    assert "joint-gcn ties with pearson" in text
    assert "joint-gcn beats random-init" in text
    assert "joint-gcn LOSES to topology (the best shortcut)" in text
    assert "split variance only" in text and "degree" not in text  # only the best shortcut is named
    assert "best on held-out edges" not in text
