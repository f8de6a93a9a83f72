"""`python -m pretrain --config CFG [key=value ...]`: the entry point every launcher runs.

scgrn pretrain --config launch/configs/pretrain/debug.yaml            # one process
deepspeed --num_gpus 2 --module pretrain --config CFG                  # DeepSpeed launcher
torchrun --nproc_per_node 2 -m pretrain --config CFG                   # torchrun
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pretrain", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed adds it
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=20 model.n_layers=2")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pretrain.console import quiet_console

    quiet_console()  # DeepSpeed's INFO lines and Python warnings go to RUN/logs/rank{r}.log, not the console
    from pretrain.config import ConfigError
    from pretrain.trainer import NonFiniteLossError, run

    try:
        run(args.config, args.overrides)
    except ConfigError as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"pretrain: stopped: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
