"""Which method ranks `edges.tsv`, and the verdict sentences of one `scgrn grn` run (report step of pipeline.py).

The choice is made on validation with its uncertainty and never falls on a shortcut; the verdicts compare the joint
model with each reference on the test pairs, with the interval over this run's seeds (split variance only).
"""

from __future__ import annotations

from finetune.errors import GrnInputError
from finetune.grn.config import GrnConfig


def winner(cfg: GrnConfig, methods: dict[str, dict]) -> tuple[str, str]:
    """The method whose edges.tsv is written, and why: (name, reason).

    `--method`, else the choice on validation with its uncertainty. Shortcuts (degree, topology, label-knn) are
    references and never chosen. The learned method with the best mean validation AUROC is chosen only when its
    per-seed margin over the best unsupervised method (correlations, trees, in-silico deletion) has a seed interval
    above 0; otherwise that unsupervised method is chosen, and the reason says so. A learned model that only ties a
    correlation on the user's own validation edges has not earned the ranking."""
    from finetune.grn.statistics import seed_interval

    if cfg.method is not None:
        if cfg.method not in methods:
            msg = f"--method {cfg.method!r} did not run (is it in --baselines?); ran: {sorted(methods)}"
            raise GrnInputError(msg)
        return cfg.method, "chosen with --method"

    def best(kind: str) -> str | None:
        names = [n for n, m in methods.items() if m["kind"] == kind]
        return max(names, key=lambda n: methods[n]["summary"]["val_auroc"]["mean"]) if names else None

    learned, unsupervised = best("learned"), best("unsupervised")
    if unsupervised is None:
        return learned, "best learned method on validation (no unsupervised method ran to compare with)"
    if learned is None:
        return unsupervised, "best unsupervised method on validation (no learned method ran)"
    diffs = [
        a["val_auroc"] - b["val_auroc"]
        for a, b in zip(methods[learned]["seeds"], methods[unsupervised]["seeds"], strict=True)
    ]
    stats = seed_interval(diffs)
    margin = (
        f"validation AUROC {learned} − {unsupervised} {stats['mean']:+.3f} "
        f"[{stats['low']:+.3f}, {stats['high']:+.3f}] over {stats['n']} seed(s)"
    )
    if stats["verdict"] == "beats":
        return learned, f"{margin}: the learned model beats the best unsupervised method on validation"
    why = "one seed gives no interval (use --seeds 2 or more)" if stats["n"] < 2 else "the interval does not exclude 0"
    return unsupervised, (
        f"{margin}: no learned method beats the best unsupervised one on validation ({why}), so the unsupervised "
        "method ranks edges.tsv"
    )


def verdicts(methods: dict[str, dict], joint: str, chosen: str, reason: str) -> list[str]:
    """Plain sentences: what ranks edges.tsv and why, then the joint model against each reference with the interval
    of the paired per-seed test-AUROC difference ("beats" / "LOSES to" only when it excludes 0, else "ties with").
    The interval is over this run's seeds, i.e. split variance only: it says nothing about other data."""
    from finetune.grn.statistics import seed_interval, verdict_sentence

    lines = [f"edges.tsv ranked by **{chosen}**: {reason}"]

    def per_seed(name: str) -> list[float]:
        return [row["auroc"] for row in methods[name]["seeds"]]

    shortcuts = [n for n, m in methods.items() if m["kind"] == "shortcut"]
    named = ("pearson", "regression", "grnboost2", "genie3-sklearn", "genelink-gat", "random-init", "random-embedding")
    references = [n for n in named if n in methods]
    if shortcuts:
        best_shortcut = max(shortcuts, key=lambda n: methods[n]["summary"]["auroc"]["mean"])
        references.append(best_shortcut)
    for name in references:
        diffs = [a - b for a, b in zip(per_seed(joint), per_seed(name), strict=True)]
        stats = seed_interval(diffs)
        label = f"{name} (the best shortcut)" if name in shortcuts else name
        lines.append(verdict_sentence(joint, label, stats, metric="AUROC") + " on the test pairs")
    return lines
