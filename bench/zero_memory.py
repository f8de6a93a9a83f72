"""`scgrn bench train zero`: per-rank model-state memory under DeepSpeed ZeRO 0/1/2/3, 2 real gloo ranks.

How it runs. For each stage the parent starts `--world-size` worker processes (`python -m bench.zero_memory
--worker`, RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set, OMP_NUM_THREADS=1). Each worker joins the
process group with `pretrain.parallel.engine.init_distributed` (gloo), builds the same model (``--config``, default
the scbert-small pretraining config, vocabulary ``--vocab-size``), and wraps it with
`pretrain.parallel.engine.create_engine` under that config with ``parallel.zero_stage = s``, ``train.precision =
fp32`` and ``train.optimizer = adamw`` (torch AdamW), i.e. exactly how `scgrn pretrain` trains. It runs one forward
and backward on a synthetic packed batch (model-state memory does not depend on the data), measures, runs one
`engine.step()`, measures again, and writes what it holds to JSON. DeepSpeed is never imported here (the repo keeps
it inside `pretrain.parallel.engine`); its optimizer's internals are read as attributes of the engine object.

What is counted, per rank. Memory is counted per *storage* (`Tensor.untyped_storage()`), each storage once, in the
first category that reaches it, in this order — so a view keeps the whole buffer it lives in on the books, which is
what the process actually holds:

- params (after step): storages of every model parameter's ``p.data`` with elements (ZeRO 0: the parameters;
  ZeRO 1/2: DeepSpeed's flat buffer ``bit16_groups_flat`` they are views of; ZeRO 3: only parameters kept whole
  because they are below ``stage3_param_persistence_threshold``) and, at ZeRO 3, ``p.ds_tensor``, the rank's
  partition (views of ``lp_param_buffer``).
- grads (right after backward, before step): ``p.grad`` and ``p.grad_accum`` of every parameter (ZeRO 0: the full
  gradients; DeepSpeed 0.19.8 clears them at ZeRO 1/2/3 once reduced), the optimizer's ``averaged_gradients``
  (ZeRO 1/2/3: the rank's gradient partition), ``grads_in_partition`` (ZeRO 2 contiguous partition, when
  allocated), ``grad_partitions_flat_buffer`` and ``__param_id_to_grad_partition`` (ZeRO 3: a partition-sized
  buffer allocated once), and ``.grad`` of the fp32 master partitions.
- optimizer (after step): every tensor in the inner torch optimizer's ``state`` (AdamW ``exp_avg``, ``exp_avg_sq``,
  ``step``), plus the tensors that inner optimizer updates when they are not the model parameters: the fp32 master
  partitions DeepSpeed keeps even in fp32 training (ZeRO 1/2 ``single_partition_of_fp32_groups``, ZeRO 3
  ``fp32_partitioned_groups_flat``: clones, not views, of the rank's parameter partition).
- other (not in the total): any further tensor reachable from DeepSpeed's optimizer object (walked through its
  attributes, lists and dicts), named by attribute, e.g. ZeRO 3's reduce bucket ``ipg_buckets[...].buffer``
  (``reduce_bucket_size`` elements, allocated once and kept).
- all live tensors (cross-check): every distinct storage of every tensor the garbage collector knows of in the
  worker after step; what params, optimizer, the gradient buffers still held after step and other leave out of
  it is printed as "not attributed".

"logical" bytes are also kept: the union of the byte ranges the category's tensors cover, smaller than the storage
bytes when a partition is a view into a larger buffer. Seen with DeepSpeed 0.19.8 fp32 on CPU: the ZeRO 1/2
``averaged_gradients`` are views (narrowed to the partition) of the full gradients of every parameter overlapping
the rank's partition, so a parameter straddling the partition boundary, such as the gene embedding, is held whole.

Total = params + grads + optimizer, the model states of Rajbhandari et al. 2020 (ZeRO, arXiv:1910.02054), whose
per-rank theory for P parameters and N ranks in fp32 with Adam is printed beside the measurement: ZeRO 0: 4P + 4P +
8P; ZeRO 1: 4P + 4P + (8P + M)/N; ZeRO 2: 4P + (4P + 8P + M)/N; ZeRO 3: (4P + 4P + 8P + M)/N, where M = 4P, the
fp32 master copy DeepSpeed keeps at ZeRO 1-3 (the paper's mixed-precision K = 12 includes it; pure fp32 without it
would be K = 8).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "launch" / "configs" / "pretrain" / "scbert-small.yaml"
DEFAULT_VOCAB = 49_618  # the vocabulary `scgrn shard` builds from ../shared/data/counts
GOAL = 0.55  # ZeRO-3 / ZeRO-0 per-rank model-state bytes, 2 ranks
CATEGORIES = ("params", "grads", "optimizer")
STAGE3_GRAD_MAP = "_DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition"  # a name-mangled private dict


# ----------------------------------------------------------------------------------------------------------------------
# accounting (runs inside a worker)


class Ledger:
    """Bytes per category, each storage counted once (in the first category that claims it).

    `storage`: whole storages; `logical`: the union of the byte ranges the category's tensors cover inside them
    (overlapping views counted once), i.e. what a partition occupies when its buffer is larger than itself.
    """

    def __init__(self) -> None:
        self.owner: dict[int, str] = {}  # storage data_ptr -> category
        self.storage: dict[str, int] = {}
        self._ranges: dict[str, list[tuple[int, int]]] = {}
        self.names: dict[str, dict[str, int]] = {}  # category -> attribute name -> storage bytes

    def add(self, category: str, tensors, name: str = "") -> None:
        self.storage.setdefault(category, 0)
        ranges = self._ranges.setdefault(category, [])
        for t in tensors:
            if not isinstance(t, Tensor) or t.numel() == 0 or t.is_meta:
                continue
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if self.owner.get(ptr, category) != category:
                continue
            ranges.append((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()))
            if ptr in self.owner:
                continue
            self.owner[ptr] = category
            self.storage[category] += st.nbytes()
            if name:
                self.names.setdefault(category, {}).setdefault(name, 0)
                self.names[category][name] += st.nbytes()

    def logical(self, category: str) -> int:
        covered, end = 0, -1
        for lo, hi in sorted(self._ranges.get(category, [])):
            lo = max(lo, end)
            if hi > lo:
                covered += hi - lo
            end = max(end, hi)
        return covered


def _flatten(obj) -> list:
    if obj is None:
        return []
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _flatten(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _flatten(v)]
    return []


def inner_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer doing the update: DeepSpeed's ZeRO wrappers keep it as `.optimizer`; ZeRO 0 in fp32
    hands the client optimizer through unwrapped."""
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    if not isinstance(inner, torch.optim.Optimizer):
        msg = f"cannot find the torch optimizer inside {type(opt).__name__}"
        raise TypeError(msg)
    return inner


def param_tensors(engine) -> list[Tensor]:
    out = []
    for p in engine.module.parameters():
        out.append(p.data)
        ds_tensor = getattr(p, "ds_tensor", None)  # ZeRO 3: this rank's partition
        if ds_tensor is not None:
            out.append(ds_tensor)
    return out


def grad_tensors(engine) -> list[tuple[str, list]]:
    opt = engine.optimizer
    named = [
        ("param.grad", [p.grad for p in engine.module.parameters()]),
        ("param.grad_accum", [getattr(p, "grad_accum", None) for p in engine.module.parameters()]),
        ("averaged_gradients", _flatten(getattr(opt, "averaged_gradients", None))),
        ("grads_in_partition", _flatten(getattr(opt, "grads_in_partition", None))),
        ("grad_partitions_flat_buffer", _flatten(getattr(opt, "grad_partitions_flat_buffer", None))),
        ("param_id_to_grad_partition", _flatten(getattr(opt, STAGE3_GRAD_MAP, None))),
    ]
    named.append(("master.grad", [p.grad for p in master_tensors(engine)]))
    return named


def master_tensors(engine) -> list[Tensor]:
    """What the inner torch optimizer updates: its param groups' tensors and its state's keys (ZeRO 3 puts a
    sub-group's fp32 partition into the param group only while stepping it), and DeepSpeed's named fp32 master
    partitions. At ZeRO 0 these are the model parameters themselves (already counted as params)."""
    inner = inner_optimizer(engine)
    opt = engine.optimizer
    out = [p for g in inner.param_groups for p in g["params"]]
    out += [k for k in inner.state if isinstance(k, Tensor)]
    out += _flatten(getattr(opt, "single_partition_of_fp32_groups", None))  # ZeRO 1/2
    out += _flatten(getattr(opt, "fp32_partitioned_groups_flat", None))  # ZeRO 3
    return out


def optimizer_tensors(engine) -> list[tuple[str, list]]:
    inner = inner_optimizer(engine)
    states: dict[str, list] = {}
    for state in inner.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor):
                states.setdefault(f"state.{key}", []).append(value)
    return [*states.items(), ("fp32 master partition", master_tensors(engine))]


def _walk(obj, path: str, out: list[tuple[str, Tensor]], seen: set[int], depth: int = 0) -> None:
    """Tensors reachable from a DeepSpeed/torch.optim object through attributes, lists, tuples and dicts."""
    if isinstance(obj, Tensor):
        out.append((path, obj))
        if obj.grad is not None:
            out.append((path + ".grad", obj.grad))
        return
    if depth > 6 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        for key, value in obj.items():
            _walk(value, f"{path}[{type(key).__name__ if isinstance(key, Tensor) else key}]", out, seen, depth + 1)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _walk(value, f"{path}[]", out, seen, depth + 1)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("deepspeed", "torch.optim")):
        for key, value in vars(obj).items():
            _walk(value, f"{path}.{key}", out, seen, depth + 1)


def live_tensor_bytes() -> int:
    """Distinct storages of every tensor the garbage collector tracks (parameters included)."""
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, Tensor) and not obj.is_meta:
                st = obj.untyped_storage()
                storages[st.data_ptr()] = st.nbytes()
        except Exception:  # exotic tensor subclasses without a storage
            continue
    storages.pop(0, None)  # empty storages
    return sum(storages.values())


def measure(engine, batch: dict[str, Tensor], generator: torch.Generator) -> dict:
    """One forward/backward (grads measured), one step (params, optimizer, other, live measured)."""
    out = engine(batch, generator=generator)
    loss = out["loss"]
    del out
    engine.backward(loss)
    loss_value = float(loss.detach())
    del loss
    gc.collect()
    after_backward = Ledger()
    after_backward.add("params", param_tensors(engine))
    for name, tensors in grad_tensors(engine):
        after_backward.add("grads", tensors, name)
    engine.step()
    gc.collect()
    after_step = Ledger()
    after_step.add("params", param_tensors(engine))
    for name, tensors in optimizer_tensors(engine):
        after_step.add("optimizer", tensors, name)
    for name, tensors in grad_tensors(engine):  # gradient buffers kept across steps (ZeRO 3)
        after_step.add("grads", tensors, name)
    found: list[tuple[str, Tensor]] = []
    _walk(engine.optimizer, "optimizer", found, set())
    for path, t in found:
        after_step.add("other", [t], path)
    return {
        "loss": loss_value,
        "bytes": {
            "params": after_step.storage.get("params", 0),
            "grads": after_backward.storage.get("grads", 0),
            "optimizer": after_step.storage.get("optimizer", 0),
            "other": after_step.storage.get("other", 0),
        },
        "logical": {
            "params": after_step.logical("params"),
            "grads": after_backward.logical("grads"),
            "optimizer": after_step.logical("optimizer"),
        },
        "names": {
            "grads": after_backward.names.get("grads", {}),
            "optimizer": after_step.names.get("optimizer", {}),
            "other": after_step.names.get("other", {}),
        },
        "grads_after_step": after_step.storage.get("grads", 0),
        "live": live_tensor_bytes(),
    }


def synthetic_batch(cells: int, genes: int, vocab_size: int, seed: int) -> dict[str, Tensor]:
    """`cells` cells of `genes` distinct expressed genes each (ids past the 4 special tokens), counts 1..20."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randperm(vocab_size - 4, generator=g)[:genes].sort().values + 4 for _ in range(cells)]
    return {
        "cu_seqlens": torch.arange(cells + 1, dtype=torch.int32) * genes,
        "gene_ids": torch.cat(ids),
        "values": torch.randint(1, 21, (cells * genes,), generator=g).float(),
    }


def worker(args) -> int:
    from pretrain.config import PretrainConfig
    from pretrain.model_factory import build_model, model_config
    from pretrain.parallel import engine as dist

    torch.set_num_threads(1)
    rank, world_size, _ = dist.init_distributed()
    overrides = [
        f"parallel.zero_stage={args.stage}",
        "train.precision=fp32",
        "train.optimizer=adamw",
        f"data.micro_batch_cells={args.cells}",
        *args.set,
    ]
    cfg = PretrainConfig.load(args.config, overrides)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.family, model_config(cfg.family, cfg.model, args.vocab_size))
    n_params = sum(p.numel() for p in model.parameters())
    engine = dist.create_engine(model, cfg, dist.build_ds_config(cfg, world_size))
    batch = synthetic_batch(args.cells, args.genes, args.vocab_size, seed=1000 + rank)
    result = measure(engine, batch, torch.Generator().manual_seed(rank))
    result.update({"rank": rank, "world_size": world_size, "stage": args.stage, "n_params": n_params})
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# launching (parent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """Exit codes of all workers; stops (kills) the others as soon as one fails, and all of them at the timeout
    (a rank left alone would wait forever in a collective). None = killed here."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            codes = [proc.poll() for proc in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:  # only the workers started here, by handle
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [proc.returncode if proc.returncode is not None and proc.returncode >= 0 else None for proc in procs]


def run_stage(
    stage: int,
    *,
    world_size: int = 2,
    config: Path = DEFAULT_CONFIG,
    vocab_size: int = DEFAULT_VOCAB,
    cells: int = 4,
    genes: int = 256,
    overrides: list[str] | None = None,
    timeout: float = 600.0,
) -> list[dict]:
    """Launch `world_size` worker processes for one ZeRO stage; returns each rank's measurement."""
    with tempfile.TemporaryDirectory(prefix=f"scgrn-zero{stage}-") as tmp:
        env_base = {
            **os.environ,
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        cmd = [sys.executable, "-m", "bench.zero_memory", "--worker", "--stage", str(stage), "--out", tmp]
        cmd += ["--config", str(config), "--vocab-size", str(vocab_size), "--cells", str(cells), "--genes", str(genes)]
        for item in overrides or []:
            cmd += ["--set", item]
        with contextlib.ExitStack() as stack:
            procs = []
            for rank in range(world_size):
                log = stack.enter_context(Path(tmp, f"rank{rank}.log").open("w"))
                env = {**env_base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
            codes = _wait_all(procs, timeout)
        if any(c != 0 for c in codes):
            tails = "\n".join(
                f"--- rank {r} (exit {c}):\n{Path(tmp, f'rank{r}.log').read_text()[-4000:]}"
                for r, c in enumerate(codes)
            )
            msg = f"ZeRO-{stage} workers failed or timed out after {timeout:.0f} s:\n{tails}"
            raise RuntimeError(msg)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world_size)]


def theory(stage: int, n_params: int, world_size: int) -> dict[str, float]:
    """Per-rank fp32 model-state bytes (ZeRO paper, Adam, + DeepSpeed's fp32 master partition at stages 1-3)."""
    p, n = float(n_params), float(world_size)
    params, grads, adam, master = 4 * p, 4 * p, 8 * p, 4 * p if stage >= 1 else 0.0
    if stage >= 1:
        adam, master = adam / n, master / n
    if stage >= 2:
        grads /= n
    if stage >= 3:
        params /= n
    return {"params": params, "grads": grads, "optimizer": adam + master}


def total(entry: dict) -> int:
    return sum(entry["bytes"][c] for c in CATEGORIES)


def report(results: dict[int, list[dict]], meta: dict) -> str:
    mb = 1e6
    any_rank = next(iter(results.values()))[0]
    n_params, world = any_rank["n_params"], any_rank["world_size"]
    lines = [
        f"ZeRO memory benchmark: {meta['config']} (vocab {meta['vocab_size']}), {n_params:,} parameters "
        f"({4 * n_params / mb:.1f} MB fp32), {world} gloo ranks, torch AdamW, fp32",
        f"  DeepSpeed config: launch/configs/deepspeed/zero{{stage}}.json via pretrain.parallel.engine; "
        f"torch {torch.__version__}; load average {meta['load_before']} (before) / {meta['load_after']} (after)",
        "  measured = bytes of distinct storages held (see bench/zero_memory.py); theory = ZeRO paper per rank, "
        "fp32 + Adam + fp32 master at stages 1-3\n",
        f"  {'stage':>5s} {'rank':>4s} {'params MB':>10s} {'grads MB':>9s} {'optim MB':>9s} {'total MB':>9s} "
        f"{'/ZeRO-0':>8s}   {'theory: params':>14s} {'grads':>7s} {'optim':>7s} {'total':>7s} {'/ZeRO-0':>8s}"
        f"   {'other MB':>8s} {'live MB':>8s}",
    ]
    base = max(total(e) for e in results[0]) if 0 in results else None
    th_base = sum(theory(0, n_params, world).values())
    for stage, entries in sorted(results.items()):
        th = theory(stage, n_params, world)
        th_total = sum(th.values())
        for e in entries:
            b = e["bytes"]
            ratio = f"{total(e) / base:.3f}" if base else "-"
            lines.append(
                f"  {stage:>5d} {e['rank']:>4d} {b['params'] / mb:>10.1f} {b['grads'] / mb:>9.1f} "
                f"{b['optimizer'] / mb:>9.1f} {total(e) / mb:>9.1f} {ratio:>8s}   {th['params'] / mb:>14.1f} "
                f"{th['grads'] / mb:>7.1f} {th['optimizer'] / mb:>7.1f} {th_total / mb:>7.1f} "
                f"{th_total / th_base:>8.3f}   {b['other'] / mb:>8.1f} {e['live'] / mb:>8.1f}"
            )
    lines.append("\n  where the bytes are (rank 0; storage MB by attribute, logical = byte ranges the tensors cover):")
    for stage, entries in sorted(results.items()):
        e = entries[0]
        parts = []
        for cat in ("grads", "optimizer", "other"):
            names = ", ".join(f"{k} {v / mb:.1f}" for k, v in sorted(e["names"][cat].items(), key=lambda kv: -kv[1]))
            if names:
                parts.append(f"{cat}: {names}")
        logical = " / ".join(f"{c} {e['logical'][c] / mb:.1f}" for c in CATEGORIES)
        b = e["bytes"]
        unattributed = e["live"] - b["params"] - b["optimizer"] - e["grads_after_step"] - b["other"]
        lines.append(f"  ZeRO-{stage}: logical {logical}; " + "; ".join(parts))
        lines.append(f"          live tensors not attributed above: {unattributed / mb:.1f} MB")
    if 0 in results and 3 in results:
        worst0 = max(total(e) for e in results[0])
        worst3 = max(total(e) for e in results[3])
        ratio = worst3 / worst0
        th_ratio = sum(theory(3, n_params, world).values()) / th_base
        pure = (16.0 / world) / 16.0  # the paper's pure-fp32 K = 8, no master copy
        with_other = max(total(e) + e["bytes"]["other"] for e in results[3]) / max(
            total(e) + e["bytes"]["other"] for e in results[0]
        )
        lines += [
            "",
            f"  ZeRO-3 / ZeRO-0: {ratio:.2f}   (per-rank model states, worst rank; theory with DeepSpeed's fp32 "
            f"master: {th_ratio:.3f}; paper without a master copy: {pure:.3f}; including 'other' buffers: "
            f"{with_other:.2f})",
            "\ngoals:",
            f"  [{'met' if ratio <= GOAL else 'MISSED'}] ZeRO-3 / ZeRO-0 = {ratio:.3f} (goal <= {GOAL}, {world} ranks)",
        ]
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scgrn bench train zero", description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="0,1,2,3", help="comma-separated ZeRO stages")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pretraining YAML (model section used)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB)
    p.add_argument("--cells", type=int, default=4, help="cells in the synthetic batch (per rank)")
    p.add_argument("--genes", type=int, default=256, help="expressed genes per synthetic cell")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per stage")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    load_before = _load()
    results = {}
    for stage in (int(s) for s in args.stages.split(",") if s):
        results[stage] = run_stage(
            stage,
            world_size=args.world_size,
            config=args.config,
            vocab_size=args.vocab_size,
            cells=args.cells,
            genes=args.genes,
            overrides=args.set,
            timeout=args.timeout,
        )
    meta = {
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "vocab_size": args.vocab_size,
        "load_before": load_before,
        "load_after": _load(),
    }
    text = report(results, meta)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results, "report": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
