"""Every (seed, method, configuration) fit of `scgrn grn`, spread over `--workers` processes of one thread each.

The link models are small (a few hundred to a few thousand genes, ~10⁵ parameters), so one fit is a long chain of
tiny kernels that a second intra-op thread barely speeds up (GENELink's GAT step on STRING mESC TFs+500: 22.8 ms on
one thread, 19.7 ms on two), while two fits side by side run in nearly half the time. Each worker runs one thread,
and so does the in-process path of `--workers 1`, so the numbers (chosen configuration, epochs, scores) do not
depend on the worker count (tested).

Workers receive the inputs once (forked on Linux, pickled where fork is not the platform's way) and return each
fit's trained parameters; the parent rebuilds the chosen model to score pairs (`methods.scorer`). The longest fits
(GENELink's mini-batch recipe) are submitted first, so the last minutes are not spent on one of them alone.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import sys
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import torch

from finetune.grn.config import GrnConfig
from finetune.grn.methods import Fitted, GrnInputs, LearnedMethod, fit_config

_WORKER: dict = {}  # the worker process's config and inputs (set once by _init_worker)


# glibc mallopt parameters (malloc.h) and the values the fits run with
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 256 << 20, _M_TOP_PAD: 16 << 20}


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MiB in the heap (and up to 256 MiB unused at its top) instead of
    handing them back to the kernel. By default every block over 128 KiB (and every one of a size already freed, up
    to 32 MiB) goes to its own mmap, so a training step page-faults its activations in again at every step: measured
    17-22 % of a GENELink GAT step on STRING mESC TFs+500 (22.7 -> 17.6-18.8 ms). Values are unchanged; memory held
    by the process can stay higher by up to the trim threshold. Returns False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl and others: no mallopt
    return all(mallopt(param, value) == 1 for param, value in _KEEP.items())


def _init_worker(cfg: GrnConfig, inputs: GrnInputs) -> None:
    torch.set_num_threads(1)
    keep_freed_memory()
    _WORKER["cfg"], _WORKER["inputs"] = cfg, inputs


def _fit_in_worker(method: LearnedMethod, train: np.ndarray, val: np.ndarray, seed: int, params: dict) -> Fitted:
    return fit_config(method, _WORKER["cfg"], _WORKER["inputs"], train, val, seed, params)


class FitPool:
    """`submit` one fit, get a `Future[Fitted]`. With `cfg.workers == 1` the fit runs at once in this process;
    otherwise in a pool of `cfg.workers` processes. Inside the block this process also runs one thread (it rebuilds
    the chosen models and scores pairs with them), restored on exit."""

    def __init__(self, cfg: GrnConfig, inputs: GrnInputs) -> None:
        self.cfg, self.inputs = cfg, inputs
        self._executor: ProcessPoolExecutor | None = None
        self._threads = torch.get_num_threads()

    def __enter__(self) -> FitPool:
        if self.cfg.workers > 1:
            # fork shares the inputs' pages with the workers; macOS and Windows default to spawn for a reason
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._executor = ProcessPoolExecutor(
                max_workers=self.cfg.workers,
                mp_context=multiprocessing.get_context(method),
                initializer=_init_worker,
                initargs=(self.cfg, self.inputs),
            )
        torch.set_num_threads(1)
        keep_freed_memory()  # this process fits too when workers == 1, and scores pairs with every chosen model
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self._threads)

    def submit(
        self, method: LearnedMethod, train: np.ndarray, val: np.ndarray, seed: int, params: dict
    ) -> Future[Fitted]:
        if self._executor is not None:
            return self._executor.submit(_fit_in_worker, method, train, val, seed, params)
        future: Future[Fitted] = Future()
        try:
            future.set_result(fit_config(method, self.cfg, self.inputs, train, val, seed, params))
        except Exception as err:  # surfaced by .result(), as a worker's would be
            future.set_exception(err)
        return future


def submission_order(methods: list[LearnedMethod]) -> list[LearnedMethod]:
    """Longest first: GENELink's recipe takes a full-graph pass per 256 pairs, ~5-10x a full-batch method's fit."""
    return sorted(methods, key=lambda m: m.recipe != "genelink")
