"""`scgrn shard INPUT... --out DIR [--part I/N]` and `scgrn shard merge PART_DIR... --out DIR`: argument parsing
only; the work lives in data_prep.sharder and data_prep.merge."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


class _ShardParser(argparse.ArgumentParser):
    """The `shard` subcommand's parser: `shard merge ...` goes to `merge_parser`, anything else is `shard INPUT...`.

    argparse has no optional sub-subcommand beside a variadic positional, so the dispatch happens here, before
    `INPUT... --out` is required. (An input file literally named `merge` can be passed as `./merge`.)
    """

    merge_parser: argparse.ArgumentParser

    def parse_known_args(self, args=None, namespace=None):
        if args and args[0] == "merge":
            return self.merge_parser.parse_args(args[1:], namespace), []
        return super().parse_known_args(args, namespace)


def _merge_parser(shard_prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{shard_prog} merge",
        description="Join the parts written by `scgrn shard INPUT... --out PART_DIR --part I/N` (I = 0..N-1) into "
        "one corpus equal to a single-machine run: same shard files and checksums, same manifest except created, "
        "command and seconds. The parts are checked first (same inputs, options, vocab, N; each part once); "
        "manifest.json is written last, so an interrupted merge is never mistaken for a corpus (re-run it).",
    )
    p.add_argument("part_dirs", nargs="+", type=Path, metavar="PART_DIR", help="the --out directory of every part")
    p.add_argument("--out", required=True, type=Path, help="merged corpus directory (new or empty)")
    p.add_argument(
        "--copy",
        action="store_true",
        help="copy the shard files, leaving the parts intact (default: move them; a rename on one filesystem)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(shard_action="merge")
    return p


def add_shard_parser(sub) -> None:
    p = sub.add_parser(
        "shard",
        help="stream inputs (.h5ad, 10x dir/.h5, CSV) into zarr v3 / webdataset shards; `shard merge` joins parts",
        description="Shard INPUTs into a corpus. Many machines: run it once per part with --part I/N (each with its "
        "own --out), then `scgrn shard merge PART_DIR... --out DIR` (see `scgrn shard merge --help`).",
    )
    # `scgrn shard merge ...` is parsed by its own parser (own usage, own --help); see _ShardParser.
    p.__class__ = _ShardParser
    p.merge_parser = _merge_parser(p.prog)
    p.set_defaults(shard_action="shard")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    p.add_argument(
        "--out",
        required=True,
        help="corpus directory (new, empty, or one to --resume), or a URL (s3://, gs://): sharded into --staging, "
        "each shard uploaded when written, manifest.json last; --resume then works from the bucket alone",
    )
    p.add_argument(
        "--staging",
        type=Path,
        help="local directory an --out URL is sharded into before the upload (default: $TMPDIR/scgrn-staging/<hash>)",
    )
    p.add_argument("--format", default="both", choices=["zarr", "webdataset", "both"])
    p.add_argument("--cells-per-shard", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    p.add_argument("--vocab", type=Path, help="given vocab (scgrn vocab.json, token TSV, {gene: id} JSON)")
    p.add_argument(
        "--values",
        default="counts",
        choices=["counts", "log1p", "normalized"],
        help="value kind; non-count inputs must be declared",
    )
    p.add_argument("--layer", help="h5ad layer holding the counts (default: X)")
    p.add_argument("--obs-columns", default="", help="comma-separated obs columns to keep, e.g. cell_type")
    p.add_argument("--min-genes", type=int, default=0, help="drop cells expressing fewer genes")
    p.add_argument("--zero-cells", default="drop", choices=["drop", "refuse"])
    p.add_argument(
        "--unmapped",
        default="drop",
        choices=["drop", "refuse"],
        help="genes not in a given vocab: drop (listed in unmapped_genes.tsv) or refuse",
    )
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--cells-per-sample", type=int, default=128, help="webdataset: cells per tar sample")
    p.add_argument(
        "--codec",
        default="lz4",
        choices=["lz4", "zstd"],
        help="zarr compressor: lz4 (blosc, fastest reads) or zstd (~10%% smaller)",
    )
    p.add_argument("--codec-level", type=int, default=5)
    p.add_argument("--csv-orientation", default="genes-by-cells", choices=["genes-by-cells", "cells-by-genes"])
    p.add_argument(
        "--match-on",
        default="symbol",
        choices=["symbol", "id"],
        help="match genes by symbol (var_names) or by gene id column (e.g. Ensembl)",
    )
    p.add_argument("--gene-map", type=Path, help="TSV: input gene key -> vocab token (e.g. symbol -> Ensembl)")
    p.add_argument("--case-insensitive", action="store_true", help="match symbols ignoring case (mouse<->human)")
    p.add_argument("--duplicate-genes", default="refuse", choices=["refuse", "sum"])
    p.add_argument("--min-mapped-fraction", type=float, default=0.5)
    p.add_argument("--resume", action="store_true", help="keep verified shards of an interrupted run, redo the rest")
    p.add_argument(
        "--part",
        metavar="I/N",
        help="write only part I (0-based) of N: a contiguous block of the shards a single run writes, plus a "
        "part.json; join all N with `scgrn shard merge` (SLURM: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)",
    )
    p.add_argument("--quiet", action="store_true")


def cmd_shard(args) -> int:
    if args.shard_action == "merge":
        return _cmd_merge(args)
    from data_prep import remote, upload
    from data_prep.config import ShardConfig
    from data_prep.errors import CorpusError
    from data_prep.gene_mapping import MappingOptions
    from data_prep.sharder import shard
    from data_prep.summary import corpus_summary, format_summary

    url = None
    if remote.is_url(args.out):
        url = remote.as_location(args.out)
        upload.check_destination(url, resume=args.resume)
        if args.part:
            msg = f"--out {url} with --part: write the parts locally, merge them, then upload the merged corpus."
            raise CorpusError(msg)
    cfg = ShardConfig(
        inputs=args.inputs,
        out=upload.staging_dir(url, args.staging) if url else remote.as_location(args.out),
        format=args.format,
        cells_per_shard=args.cells_per_shard,
        workers=args.workers,
        vocab=args.vocab,
        values=args.values,
        layer=args.layer,
        obs_columns=[c for c in args.obs_columns.split(",") if c],
        min_genes=args.min_genes,
        zero_cells=args.zero_cells,
        unmapped=args.unmapped,
        val_fraction=args.val_fraction,
        cells_per_sample=args.cells_per_sample,
        codec=args.codec,
        codec_level=args.codec_level,
        csv_orientation=args.csv_orientation,
        mapping=MappingOptions(
            match_on=args.match_on,
            gene_map=args.gene_map,
            case_insensitive=args.case_insensitive,
            duplicate_genes=args.duplicate_genes,
            min_mapped_fraction=args.min_mapped_fraction,
        ),
        resume=args.resume,
        part=args.part,
        command=shlex.join(["scgrn", *sys.argv[1:]]),
    )
    hooks = {}
    if url is not None:
        if args.resume and not (cfg.out / "manifest.json").exists():
            upload.restore_progress(url, cfg.out)  # the bucket's resume state, if this machine lacks it
        hooks = {
            "on_shard": lambda record: upload.mirror_shard(cfg.out, url, record),
            "kept_elsewhere": upload.recorded_in_bucket(url),
        }
    manifest = shard(cfg, progress=not args.quiet, **hooks)
    if url is not None:
        sent = upload.upload_corpus(cfg.out, url, manifest)
        if not args.quiet:
            print(f"{url}: uploaded {sent} file(s) from {cfg.out} (manifest.json last)")
    where = url or cfg.out
    if args.quiet:
        return 0
    if cfg.part:
        first, stop = manifest["part"]["shard_range"]
        print(
            f"{cfg.out}: part {cfg.part} written: shards {first}..{stop - 1} of {manifest['part']['n_shards_total']} "
            f"({sum(s['n_cells'] for s in manifest['shards'])} cells) in {manifest['seconds']:.1f} s. "
            "When every part is done: scgrn shard merge PART_DIR... --out CORPUS_DIR"
        )
        return 0
    print(format_summary(corpus_summary(where)))
    print(f"  wrote in {manifest['seconds']:.1f} s; mapping report: {remote.join(where, 'mapping_report.json')}")
    return 0


def _cmd_merge(args) -> int:
    from data_prep.merge import merge_parts
    from data_prep.summary import corpus_summary, format_summary

    manifest = merge_parts(
        args.part_dirs,
        args.out,
        copy=args.copy,
        command=shlex.join(["scgrn", *sys.argv[1:]]),
        progress=not args.quiet,
    )
    if not args.quiet:
        print(format_summary(corpus_summary(args.out)))
        n_shards = manifest["totals"]["n_shards"]
        print(f"  merged {len(args.part_dirs)} parts, {n_shards} shards; check them: scgrn validate {args.out}")
    return 0
