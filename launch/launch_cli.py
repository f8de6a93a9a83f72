"""`scgrn launch`: the parser (fields of `launch.launcher.LaunchRequest`) and the command.

    scgrn launch --nodes 4 --gpus-per-node 8 --config launch/configs/pretrain/scbert-base.yaml --dry-run
    scgrn launch --nodes 1 --gpus-per-node 2 --config launch/configs/pretrain/debug.yaml --launcher torchrun \\
        train.steps=40

Prints the resolved batch and memory arithmetic and the exact command(s); on one machine without --dry-run it runs
them and returns their exit code. Every problem is reported at once (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.launcher import LAUNCHERS, LaunchError, LaunchRequest, format_plan, plan_launch, run_plan

EPILOG = """launchers (each ends in `python -m pretrain --config CFG key=value ...` on every rank):
  deepspeed   deepspeed --num_gpus G --module pretrain ...     (--hostfile: `host slots=N` lines, multi-node)
  torchrun    torchrun --nproc_per_node G -m pretrain ...       (multi-node: c10d rendezvous on $MASTER_ADDR)
  slurm       an sbatch script: srun, one task per node, each running torchrun
  accelerate  accelerate launch --config_file YAML -m pretrain ... (DeepSpeed plugin YAMLs: launch/configs/accelerate)
ZeRO stage and offload come from the pretrain config: parallel.zero_stage=3
parallel.deepspeed_config=launch/configs/deepspeed/zero3_offload.json"""


def add_launch_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "launch",
        help="multi-GPU / multi-node pretraining: the exact launcher commands, batch and ZeRO memory arithmetic",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="pretrain YAML (launch/configs/pretrain/*.yaml)")
    p.add_argument("--nodes", type=int, default=1, help="machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per machine; processes on a CPU-only machine")
    p.add_argument("--launcher", default="deepspeed", choices=LAUNCHERS)
    p.add_argument("--dry-run", action="store_true", help="print the arithmetic and commands; start nothing")
    p.add_argument("--hostfile", type=Path, help="deepspeed: `hostname slots=N` per line (one line per node)")
    p.add_argument("--master-addr", help="node 0's address (default: 127.0.0.1 on one node, else $MASTER_ADDR)")
    p.add_argument("--master-port", type=int, help="rendezvous port (default: a free one on one node, else 29500)")
    p.add_argument("--accelerate-config", type=Path, help="accelerate YAML (default by shape)")
    p.add_argument("--gpu-memory-gb", type=float, help="refuse when the per-GPU estimate exceeds this many GiB")
    p.add_argument("--vocab-size", type=int, help="for the parameter count (default: the corpus manifest's)")
    p.add_argument("--job-name", help="slurm: job name (default scgrn-<config name>)")
    p.add_argument("--time", default="24:00:00", help="slurm: wall-clock limit (default 24:00:00)")
    p.add_argument("--partition", help="slurm: partition")
    p.add_argument("--account", help="slurm: account")
    p.add_argument("--sbatch-out", type=Path, help="slurm: where to write the script (default RUN_DIR/launch.sbatch)")
    p.add_argument("overrides", nargs="*", help="pretrain key=value overrides, e.g. train.steps=40")
    return p


def request_from_args(args: argparse.Namespace) -> LaunchRequest:
    return LaunchRequest(
        config=args.config,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        launcher=args.launcher,
        overrides=list(args.overrides),
        dry_run=args.dry_run,
        hostfile=args.hostfile,
        master_addr=args.master_addr,
        master_port=args.master_port,
        accelerate_config=args.accelerate_config,
        gpu_memory_gb=args.gpu_memory_gb,
        vocab_size=args.vocab_size,
        job_name=args.job_name,
        time=args.time,
        partition=args.partition,
        account=args.account,
        sbatch_out=args.sbatch_out,
    )


def cmd_launch(args: argparse.Namespace) -> int:
    try:
        plan = plan_launch(request_from_args(args))
    except LaunchError as err:
        print(f"scgrn launch: error: {err}", file=sys.stderr)
        return 2
    print(format_plan(plan), flush=True)
    if args.dry_run:
        return 0
    try:
        return run_plan(plan)
    except LaunchError as err:
        print(f"scgrn launch: error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """`python -m launch.launch_cli launch ...` (tests; `scgrn launch` once launch/cli.py wires it in)."""
    parser = argparse.ArgumentParser(prog="scgrn")
    add_launch_parser(parser.add_subparsers(dest="command", required=True))
    return cmd_launch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
