"""`scgrn grn`: the parser (fields of `finetune.grn.config.GrnConfig`) and the command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune.grn.config import (
    BASELINES,
    EVIDENCE,
    GENELINK_RECIPES,
    GNNS,
    NEGATIVE_MODES,
    POOLING_CHOICES,
    TREE_METHODS,
)


def add_grn_parser(sub) -> None:
    p = sub.add_parser(
        "grn",
        help="GRN inference with a release: BEELINE evaluation (--benchmark) or your data + a prior network",
        description="Benchmark mode: scgrn grn --release R --benchmark DIR --out OUT. "
        "Evaluation on your data: scgrn grn --release R --expression X.h5ad --truth EDGES.tsv --out OUT. "
        "Inference mode: scgrn grn --release R --expression X.h5ad --prior PRIOR.tsv --out OUT.",
    )
    p.add_argument("--release", required=True, type=Path, help="release directory (scgrn export)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--benchmark", type=Path, help="GENELink-layout BEELINE folder <network>/<cell>/TFs+N")
    p.add_argument("--expression", type=Path, help="inference mode: cells (.h5ad / 10x / CSV)")
    p.add_argument("--prior", type=Path, help="inference mode: known edges TSV (TF, target), e.g. TRRUST")
    p.add_argument("--truth", type=Path, help="evaluation: ground-truth edges TSV for --expression")
    p.add_argument("--values", default="counts", choices=["counts", "log1p"], help="value kind of --expression")
    p.add_argument("--max-genes", type=int, default=1000, help="inference mode: graph nodes kept")
    p.add_argument("--gnn", default="gcn", choices=GNNS)
    p.add_argument("--layers", type=int, default=2, help="graph encoder depth")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--decoder", default="mlp", choices=["mlp", "dot"], help="interaction MLP or dot product")
    p.add_argument(
        "--evidence",
        help=f"pair evidence the learned models see: comma-separated subset of {','.join(EVIDENCE)}, or none "
        "(default: all, without trees when --tree-method none)",
    )
    p.add_argument("--tuning-budget", type=int, default=3, help="configurations per learned method and seed")
    p.add_argument("--supervision-fraction", type=float, default=0.3, help="training rows held out of the graph")
    p.add_argument("--isd-cells", type=int, default=600, help="cells for the in-silico deletion evidence")
    p.add_argument("--probe-cells", type=int, default=100, help="metacells for the perturbation probe")
    p.add_argument("--attention-cells", type=int, default=600, help="cells for the attention readout")
    p.add_argument(
        "--adapt-steps",
        type=int,
        default=0,
        help="masked pretraining steps on these cells before any readout, for the release and its random-init twin",
    )
    p.add_argument("--method", help="write edges.tsv from this method (default: the best on validation)")
    p.add_argument("--pooling", default="auto", choices=POOLING_CHOICES)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST .. FIRST+SEEDS-1")
    p.add_argument(
        "--split",
        default="genelink",
        help="genelink (per-TF edge split), cold-start (held-out TFs), held-out-genes (a test pair's genes have no "
        "training edge), or a split file / directory (run as given)",
    )
    p.add_argument(
        "--split-repair",
        action="store_true",
        help="with a split file: move pairs whose reverse pair is in a later set into that set",
    )
    p.add_argument(
        "--negatives",
        default="degree-aware",
        choices=NEGATIVE_MODES,
        help="degree-aware (node degree carries no signal) or genelink (published protocol; leaks node degree)",
    )
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated subset of {','.join(BASELINES)} (empty: joint model only)",
    )
    p.add_argument("--tree-method", default="grnboost2", choices=TREE_METHODS)
    p.add_argument(
        "--genelink-recipe",
        default="extended",
        choices=GENELINK_RECIPES,
        help="genelink-gat's training: extended (up to --epochs with --patience, as every learned method here; "
        "bench/GRN_RESULTS.md) or published (GENELink's 20 epochs with lr ×0.99 per step: faster, weaker)",
    )
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--patience", type=int, default=40)
    p.add_argument("--min-vocab-coverage", type=float, default=0.5)
    p.add_argument("--cache-dir", type=Path, help="gene-embedding / tree-baseline cache (default OUT/cache)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes fitting the learned methods (one thread each; numbers do not depend on it) and threads "
        "for the tree baseline and the release's forward passes",
    )
    p.add_argument("--quiet", action="store_true")


def config_from_args(args: argparse.Namespace):
    from finetune.grn.config import GrnConfig

    return GrnConfig(
        release=args.release,
        out=args.out,
        benchmark=args.benchmark,
        expression=args.expression,
        prior=args.prior,
        truth=args.truth,
        values=args.values,
        max_genes=args.max_genes,
        gnn=args.gnn,
        layers=args.layers,
        hidden=args.hidden,
        decoder=args.decoder,
        evidence=None if args.evidence is None else [e for e in args.evidence.split(",") if e and e != "none"],
        tuning_budget=args.tuning_budget,
        supervision_fraction=args.supervision_fraction,
        isd_cells=args.isd_cells,
        probe_cells=args.probe_cells,
        attention_cells=args.attention_cells,
        adapt_steps=args.adapt_steps,
        method=args.method,
        pooling=args.pooling,
        seeds=args.seeds,
        first_seed=args.first_seed,
        split=args.split,
        split_repair=args.split_repair,
        negatives=args.negatives,
        baselines=[b for b in args.baselines.split(",") if b],
        tree_method=args.tree_method,
        genelink_recipe=args.genelink_recipe,
        epochs=args.epochs,
        lr=args.lr,
        patience=args.patience,
        min_vocab_coverage=args.min_vocab_coverage,
        cache_dir=args.cache_dir,
        workers=args.workers,
        progress=not args.quiet,
    )


def cmd_grn(args: argparse.Namespace) -> int:
    from finetune.errors import GrnInputError
    from finetune.grn.pipeline import run_grn
    from pretrain.config import ConfigError

    try:
        payload = run_grn(config_from_args(args))
    except (GrnInputError, ConfigError) as err:
        print(f"scgrn grn: error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    print(
        f"wrote {args.out}/: edges.tsv, metrics.json, results.md"
        + (", roc.png, pr.png" if payload["mode"] == "benchmark" else ", roc.png, pr.png, known_edges.tsv")
        + f"; edges.tsv ranked by {payload['edges_method']}"
    )
    return 0
