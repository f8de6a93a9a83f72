"""`scgrn eval`: the parser (fields of `finetune.evaluation.config.EvalConfig`) and the command; also the automatic
evaluation `scgrn export` runs on the training corpus's validation split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finetune.evaluation.config import MAP_METHODS, SECTIONS


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="what a release learned: masked values, cell and gene embeddings, transfer (eval.json / eval.md)",
        description="scgrn eval RELEASE --data X.h5ad [--label cell_type] [--prior TRRUST.tsv] --out OUT",
    )
    p.add_argument("release", type=Path, help="release directory (scgrn export)")
    p.add_argument("--data", type=Path, help="cells to evaluate on: raw counts (.h5ad / 10x / CSV)")
    p.add_argument("--corpus", type=Path, help="or a corpus (scgrn shard): evaluate its --split cells")
    p.add_argument("--split", default="val", choices=["train", "val", "all"])
    p.add_argument("--label", default="cell_type", help="obs column with cell types ('' for none)")
    p.add_argument("--prior", type=Path, action="append", default=[], help="regulator->target table; repeatable")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--max-cells", type=int, default=3000, help="cells evaluated (seeded subsample)")
    p.add_argument("--batch-cells", type=int, default=16)
    p.add_argument("--map", dest="map_method", default="auto", choices=MAP_METHODS, help="2-D map: umap if installed")
    p.add_argument("--knn-k", type=int, default=15)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.3, help="transfer: held-out share of labelled cells")
    p.add_argument("--finetune-epochs", type=int, default=3, help="transfer: 0 = linear probes only")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--quiet", action="store_true")


def config_from_args(args: argparse.Namespace):
    from finetune.evaluation.config import EvalConfig

    return EvalConfig(
        release=args.release,
        out=args.out,
        data=args.data,
        corpus=args.corpus,
        split=args.split,
        label=args.label or None,
        priors=args.prior,
        sections=tuple(s for s in args.sections.split(",") if s),
        max_cells=args.max_cells,
        batch_cells=args.batch_cells,
        map_method=args.map_method,
        knn_k=args.knn_k,
        folds=args.folds,
        test_fraction=args.test_fraction,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from finetune.errors import GrnInputError
    from finetune.evaluation.run import run_eval
    from pretrain.config import ConfigError

    try:
        payload = run_eval(config_from_args(args))
    except (GrnInputError, ConfigError) as err:
        print(f"scgrn eval: error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "eval.md").read_text())
    print(f"wrote {args.out}/: eval.json, eval.md, {', '.join(payload['plots'])}")
    return 0


def eval_after_export(release: Path, *, label: str, priors: list[Path], quiet: bool) -> str:
    """Evaluate a fresh release on its training corpus's validation split, if that split has cell-type labels.

    Returns a one-line status for the export command (what ran, or why not)."""
    from finetune.errors import GrnInputError
    from finetune.evaluation.config import EvalConfig
    from finetune.evaluation.run import run_eval

    corpus = Path(json.loads((release / "training_summary.json").read_text())["corpus"])
    manifest_path = corpus / "manifest.json"
    if not manifest_path.exists():
        return f"eval skipped: the training corpus {corpus} is not readable here"
    manifest = json.loads(manifest_path.read_text())
    if label not in manifest.get("options", {}).get("obs_columns", []):
        return f"eval skipped: corpus {corpus} has no {label!r} obs column (shard with --obs-columns {label})"
    if not manifest.get("totals", {}).get("n_val"):
        return f"eval skipped: corpus {corpus} has no validation split (--val-fraction 0)"
    cfg = EvalConfig(release=release, out=release / "eval", corpus=corpus, split="val", label=label, priors=priors,
                     progress=not quiet)  # fmt: skip
    try:
        run_eval(cfg)
    except (GrnInputError, ValueError) as err:
        return f"eval failed on {corpus} (validation split): {err}"
    return f"eval on {corpus} (validation split): {release / 'eval' / 'eval.md'}"
