"""What a pretraining process prints: our lines and progress bars on the console, everything else in the run's log.

DeepSpeed logs INFO lines through its own stdout handler, warns "Setting accelerator to CPU" when it finds no GPU,
and torch, DeepSpeed and dask raise deprecation and performance warnings (dask's "large graph" one among them). Each
rank's process (every launcher runs `python -m pretrain`) routes them, complete, to RUN/logs/rank{r}.log:

    quiet_console()            first thing in `python -m pretrain`: Python warnings and DeepSpeed's records are held
                               in memory (`pretrain.parallel.engine`, the one module that imports DeepSpeed, calls
                               `tame_deepspeed_logger` after the import: INFO and up kept, its console handler shows
                               only errors)
    attach_run_log(run, rank)  once the run directory is known: the held records are written to the rank's log file
                               and every later one goes there too, with our own INFO lines

The accelerator warning is not raised at all on a machine where torch sees no CUDA device: `DS_ACCELERATOR=cpu` is
set (as a user would), and DeepSpeed records its choice as an INFO line instead, in the log.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

_HELD = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
_ROUTED = ("DeepSpeed", "py.warnings")


def quiet_console() -> None:
    """Hold DeepSpeed's records and Python warnings for the run's log (see the module docstring)."""
    os.environ.update(quiet_env(dict(os.environ)))
    logging.captureWarnings(capture=True)
    for name in _ROUTED:
        logger = logging.getLogger(name)
        logger.propagate = False
        if _HELD not in logger.handlers:
            logger.addHandler(_HELD)
    tame_deepspeed_logger()


def tame_deepspeed_logger() -> None:
    """DeepSpeed's logger, once DeepSpeed has created it (`pretrain.parallel.engine` calls this after importing it):
    INFO and up are kept (for the run's log), its own stdout handler shows only errors."""
    logger = logging.getLogger("DeepSpeed")
    if _HELD not in logger.handlers and not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
        return  # no log to route to (a process that did not call quiet_console): DeepSpeed's own console stays
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)  # errors still reach the console
    logger.setLevel(logging.INFO)


def quiet_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a launcher subprocess (deepspeed, torchrun): DS_ACCELERATOR=cpu where torch sees no GPU, so its
    processes do not warn that they found none."""
    if "DS_ACCELERATOR" in env:
        return env
    import torch

    return env if torch.cuda.is_available() else {**env, "DS_ACCELERATOR": "cpu"}


def attach_run_log(run_dir: Path, rank: int | str) -> Path:
    """Write what was held, and every later record of DeepSpeed, warnings and scgrn, to RUN/logs/rank{rank}.log
    (RUN/logs/{name}.log for a name, e.g. the demo's own process)."""
    path = Path(run_dir) / "logs" / (f"rank{rank}.log" if isinstance(rank, int) else f"{rank}.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")  # open(): the mode follows the umask
    handler.setFormatter(_FORMAT)
    handler.setLevel(logging.INFO)
    _HELD.setTarget(handler)
    _HELD.flush()
    for name in (*_ROUTED, "scgrn"):
        logger = logging.getLogger(name)
        if _HELD in logger.handlers:
            logger.removeHandler(_HELD)
        if not any(getattr(h, "baseFilename", None) == handler.baseFilename for h in logger.handlers):
            logger.addHandler(handler)
    logging.getLogger("scgrn").setLevel(logging.INFO)
    return path
