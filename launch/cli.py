"""`scgrn`: one command, subcommands per stage. Parsing only; the work lives in data_prep, pretrain, finetune, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from data_prep.errors import DataPrepError
from launch.eval_cli import add_eval_parser, cmd_eval
from launch.grn_cli import add_grn_parser, cmd_grn
from launch.launch_cli import add_launch_parser, cmd_launch
from launch.shard_cli import add_shard_parser, cmd_shard


def _cmd_inspect(args) -> int:
    from data_prep.summary import corpus_summary, format_summary

    s = corpus_summary(args.dir)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0


def _cmd_validate(args) -> int:
    from data_prep.validate import validate_corpus

    problems = validate_corpus(args.dir, checksums=not args.no_checksums)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{args.dir}: valid")
    return 0


def _cmd_simulate(args) -> int:
    from data_prep.simulate import SimulationConfig, write_simulation

    cfg = SimulationConfig(n_cells=args.cells, n_genes=args.genes, n_tfs=args.tfs, seed=args.seed,
                           n_cell_types=args.cell_types, library_size_mean=args.library_size,
                           dispersion=args.dispersion, states_seed=args.states_seed)  # fmt: skip
    h5ad, edges = write_simulation(cfg, args.out)
    print(f"wrote {h5ad} ({args.cells} cells x {args.genes} genes) and ground-truth network {edges}")
    return 0


def _cmd_bench(args) -> int:
    if args.what == "loader" and "--remote" in args.rest:
        from bench.remote_loader_bench import main as remote_main

        return remote_main(args.rest)
    if args.what == "loader":
        from bench.loader_bench import main as loader_main

        return loader_main(args.rest)
    if args.what == "grn":
        from bench.grn_bench import main as grn_main

        return grn_main(args.rest)
    if args.what == "grn-sim":
        from bench.grn_sim_bench import main as grn_sim_main

        return grn_sim_main(args.rest)
    if args.what == "grn-pretrain":
        from bench.grn_pretrain_bench import main as grn_pretrain_main

        return grn_pretrain_main(args.rest)
    if args.what == "eval":
        from bench.eval_bench import main as eval_main

        return eval_main(args.rest)
    if args.what == "train":
        from bench.train_bench import main as train_main

        return train_main(args.rest)
    from bench.shard_bench import main as shard_main

    return shard_main(args.rest)


def _cmd_pretrain(args) -> int:
    from pretrain.__main__ import main as pretrain_main

    return pretrain_main(["--config", str(args.config), *args.overrides])


def _cmd_export(args) -> int:
    from pretrain.config import ConfigError
    from pretrain.release import export_release

    if args.format == "hf":
        return _export_hf(args)
    try:
        out = export_release(args.run_dir, args.out, args.tag)
    except ConfigError as err:
        print(f"scgrn export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote release {out} (model.safetensors, config.json, vocab.json, training_summary.json, README.md)")
    if not args.no_eval:
        from launch.eval_cli import eval_after_export

        status = eval_after_export(out, label=args.eval_label, priors=args.eval_prior, quiet=args.quiet)
        print(status, file=sys.stderr if "failed" in status else sys.stdout)
    return 0


def _export_hf(args) -> int:
    """`scgrn export RUN_OR_RELEASE --format hf --out DIR`: a Hugging Face BertForMaskedLM folder (Geneformer family);
    a run's checkpoint is consolidated into a release first (in a temporary folder beside DIR)."""
    import shutil

    from pretrain.config import ConfigError
    from pretrain.interop.geneformer_io import export_hf
    from pretrain.release import export_release

    source, scratch = Path(args.run_dir), None
    try:
        if not (source / "config.json").is_file():  # a run directory, not a release
            scratch = args.out.with_name(f".{args.out.name}.release-tmp")
            source = export_release(source, scratch, args.tag)
        out = export_hf(source, args.out)
    except ConfigError as err:
        print(f"scgrn export: error: {err}", file=sys.stderr)
        return 2
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out}: config.json + model.safetensors (transformers.BertForMaskedLM.from_pretrained loads it), "
          "token_dictionary and gene_median_dictionary (.json and .pkl)")  # fmt: skip
    return 0


def _cmd_import(args) -> int:
    from pretrain.config import ConfigError
    from pretrain.interop.geneformer_io import import_geneformer
    from pretrain.interop.scgpt_io import import_scgpt

    try:
        if args.family == "scgpt":
            out = import_scgpt(args.checkpoint, args.out)
        elif args.token_dictionary is None:
            msg = "geneformer: --token-dictionary is required (the checkpoint's gene id -> token id file)"
            raise ConfigError(msg)
        else:
            out = import_geneformer(args.checkpoint, args.token_dictionary, args.out, gene_medians=args.gene_medians,
                                    gene_names=args.gene_names)  # fmt: skip
    except ConfigError as err:
        print(f"scgrn import: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote release {out} (model.safetensors, config.json, vocab.json, README.md)")
    return 0


def _cmd_demo(args) -> int:
    from launch.demo import run_demo

    return run_demo(args.out, data=args.data, prior=args.prior, steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scgrn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_shard_parser(sub)
    p = sub.add_parser("inspect", help="summarize a corpus")
    p.add_argument("dir", help="corpus directory or URL (s3://, gs://, https://, file://)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("validate", help="check a corpus's structure and checksums (exit 1 on problems)")
    p.add_argument("dir", help="corpus directory or URL (s3://, gs://, https://, file://); shards are streamed")
    p.add_argument("--no-checksums", action="store_true")
    p = sub.add_parser("simulate", help="counts driven by a random TF->target network, + the network as TSV")
    p.add_argument("--cells", type=int, default=2000)
    p.add_argument("--genes", type=int, default=500)
    p.add_argument("--tfs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="the network (and, without --states-seed, the cells)")
    p.add_argument("--cell-types", type=int, default=4, help="cell states with their own TF activity programs")
    p.add_argument("--states-seed", type=int, default=None,
                   help="other cell states and cells of the same network (e.g. a pretraining corpus beside a GRN "
                        "sample of seed S: --seed S --states-seed 1)")  # fmt: skip
    p.add_argument("--library-size", type=float, default=5000.0, help="mean whole-transcriptome UMIs per cell")
    p.add_argument("--dispersion", type=float, default=0.5, help="negative-binomial phi (0 = Poisson)")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser(
        "bench", help="benchmarks: loader | shard | train | grn | grn-sim | grn-pretrain | eval (see bench/RESULTS.md)"
    )
    p.add_argument("what", choices=["loader", "shard", "train", "grn", "grn-sim", "grn-pretrain", "eval"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("pretrain", help="pretrain a model (one process; see README for deepspeed / torchrun)")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=20")
    p = sub.add_parser("export", help="consolidate a run's checkpoint into a release (safetensors + config + vocab)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tag", help="checkpoint tag (default: latest complete)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation on the corpus's validation split")
    p.add_argument("--eval-label", default="cell_type", help="obs column with cell types for the evaluation")
    p.add_argument("--eval-prior", type=Path, action="append", default=[], help="prior for the gene evaluation")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--format",
        choices=["release", "hf"],
        default="release",
        help="release: an scgrn release; hf: a Hugging Face BertForMaskedLM folder (Geneformer family)",
    )
    p = sub.add_parser(
        "import", help="a published checkpoint -> an scgrn release (geneformer: Hugging Face BERT; scgpt)"
    )
    p.add_argument("family", choices=["geneformer", "scgpt"])
    p.add_argument("checkpoint", type=Path, help="geneformer: config.json + model.safetensors (or pytorch_model.bin); "
                   "scgpt: best_model.pt + vocab.json + args.json")  # fmt: skip
    p.add_argument("--token-dictionary", type=Path, help="geneformer: gene id -> token id (.pkl, .json or .tsv)")
    p.add_argument("--gene-medians", type=Path, help="gene id -> non-zero median of CP10k values (.pkl/.json/.tsv)")
    p.add_argument("--gene-names", type=Path, help="gene symbol -> id; written as gene_map.tsv for shard --gene-map")
    p.add_argument("--out", type=Path, required=True)
    add_grn_parser(sub)
    add_eval_parser(sub)
    add_launch_parser(sub)
    p = sub.add_parser(
        "demo", help="the main job end to end: simulate (or --data) -> shard -> 2-rank pretrain -> export -> grn"
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--data", type=Path, nargs="+", help="your count files instead of the simulation (needs --prior)")
    p.add_argument("--prior", type=Path, help="with --data: TF->target edges the GRN step holds out and recovers")
    p.add_argument("--steps", type=int, help="pretraining steps (default: launch/configs/pretrain/demo.yaml)")
    return parser


COMMANDS = {
    "shard": cmd_shard,
    "inspect": _cmd_inspect,
    "validate": _cmd_validate,
    "simulate": _cmd_simulate,
    "bench": _cmd_bench,
    "demo": _cmd_demo,
    "pretrain": _cmd_pretrain,
    "export": _cmd_export,
    "import": _cmd_import,
    "grn": cmd_grn,
    "eval": cmd_eval,
    "launch": cmd_launch,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except DataPrepError as err:
        print(f"scgrn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
