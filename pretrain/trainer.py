"""The pretraining loop: resume, stream batches, train_step, evaluate, log, checkpoint (torchtitan's Trainer).

Runs the same code in one process (`scgrn pretrain`), under `deepspeed --num_gpus N --module pretrain` and under
`torchrun --nproc_per_node N -m pretrain`: the launcher only decides how many ranks there are.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from data_prep import remote
from data_prep.corpus import Corpus
from data_prep.errors import CorpusError
from data_prep.io_utils import atomic_write_text, out_dir_problem
from data_prep.loader import StatefulCellLoader, StreamingCellDataset
from data_prep.test_hooks import TestHookError, read_step_hook
from pretrain import checkpointing as ckpt
from pretrain.config import WHOLE_SHARDS, ConfigError, PretrainConfig
from pretrain.console import attach_run_log
from pretrain.metrics import MetricsLogger, memory_gb
from pretrain.model_factory import build_model, check_compile, check_corpus, init_from_release, model_config
from pretrain.models.common import resolve_attention
from pretrain.parallel import engine as dist

log = logging.getLogger("scgrn.pretrain")


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; a checkpoint of the last good state was written."""


# Test-only fault injection (tests/pretrain/test_kill_resume.py, test_kill_save.py); never set in real runs.
# The value is "STEP" (every rank) or "STEP:RANK". A matching rank writes its pid to RUN/test_hold/rank{r}.pid and
# sleeps, so the test can SIGKILL it at a known point instead of racing a fast run.
HOLD_IN_SAVE = "SCGRN_TEST_HOLD_IN_SAVE"  # after this rank's checkpoint files are written, before COMPLETE
HOLD_AFTER_SAVE = "SCGRN_TEST_HOLD_AFTER_SAVE"  # after that checkpoint is complete
POISON_AT = "SCGRN_TEST_POISON_AT"  # "STEP[:RANK]": that step's loss is made NaN (test_nonfinite.py)


class CellIdLog:
    """`train.log_cell_ids`: one JSON line per micro batch, `{"step", "micro", "epoch", "cell_ids"}`, in RUN/cell_ids/.

    Lines are flushed as they are written, so a kill loses at most the line being written. `open(step)` keeps
    only whole lines of steps <= `step` (the resumed step): what remains is what the restored state has seen.
    """

    def __init__(self, directory: Path, rank: int) -> None:
        self.path = directory / f"rank{rank}.jsonl"
        self.file = None

    def open(self, step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the torn last line of a killed run
                    continue
                if entry["step"] <= step:
                    kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))
        self.file = self.path.open("a")

    def write(self, step: int, micro: int, cell_ids, epoch: int) -> None:
        entry = {"step": step, "micro": micro, "epoch": epoch, "cell_ids": [str(c) for c in cell_ids]}
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class Trainer:
    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.world_size, local_rank = dist.init_distributed()
        self.device = dist.device_for(local_rank)
        self.run_dir = Path(cfg.train.out_dir)
        try:  # read (and announced on stderr) once, at start: a malformed value stops here, naming the variable
            self.test_hooks = {name: read_step_hook(name) for name in (HOLD_IN_SAVE, HOLD_AFTER_SAVE, POISON_AT)}
        except TestHookError as err:
            raise ConfigError(str(err)) from None
        if (why := out_dir_problem(self.run_dir)) is not None:
            msg = f"train.out_dir = {str(self.run_dir)!r}: {why}."
            raise ConfigError(msg)
        attach_run_log(self.run_dir, self.rank)
        if not cfg.data.corpus:
            msg = "data.corpus is empty: point it at a directory written by `scgrn shard`."
            raise ConfigError(msg)
        self.corpus = Corpus(cfg.data.corpus)  # a directory or a URL (s3://, gs://, https://)
        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        self.model_config = model_config(cfg.family, cfg.model, self.corpus.manifest["vocab"]["size"])
        model = build_model(cfg.family, self.model_config)
        release_vocab = init_from_release(model, cfg.model)  # model.init_from: continue pretraining a release
        if hasattr(model, "gene_median") and not bool((model.gene_median > 0).any()):
            self._corpus_medians(model)  # a Geneformer trained from scratch: the corpus's CP10k medians
        # Gene sampling, binning and masking run in the loader's workers (seeded per batch, resumed by the cursor):
        # the training step gets finished inputs with host-side sizes and never waits on the device for a length.
        prepare = model.batch_preparer(panels=self._panels(self.model_config))
        expected_vocab = release_vocab or cfg.model.get("vocab_sha256")
        check_corpus(model, self.corpus.value_kind.value, self.corpus.vocab_sha256, expected_vocab)
        model.to(self.device)
        # Backends fixed now, so a compiled forward never resolves one (DeepSpeed's bf16 casts the weights to bf16).
        dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        check_compile(self.model_config, resolve_attention(model, self.device, dtype), self.device)
        # Counted before ZeRO-3 partitions the parameters (a partitioned parameter's numel() is 0): the MFU figure.
        self.n_matmul_params = model.num_parameters(exclude_embeddings=True)
        self.param_layout = ckpt.parameter_layout(model)
        self.ds_config = dist.build_ds_config(cfg, self.world_size)
        # Which checkpoint to resume from, decided before the engine exists: one saved by another number of ranks
        # is loaded through DeepSpeed's universal checkpoint, which the engine must be configured for.
        self.resume_from = ckpt.resolve_resume(cfg.train.resume, self.run_dir)
        self.resume_marker = None if self.resume_from is None else ckpt.read_marker(self.resume_from)
        if self.resume_marker is not None:
            ckpt.check_parameter_layout(self.resume_from, self.resume_marker, self.param_layout, cfg.family)
        self.elastic = self.resume_marker is not None and self.resume_marker["world_size"] != self.world_size
        # The stage that saved it (markers written before it was recorded: the configured stage).
        self.saved_stage = (
            None if self.resume_marker is None else self.resume_marker.get("zero_stage", cfg.parallel.zero_stage)
        )
        if self.elastic:
            self._prepare_elastic()
        self.engine = dist.create_engine(model, cfg, self.ds_config)
        check = cfg.train.finite_check
        self.lagged_check = check == "lagged" or (check == "auto" and self.device.type == "cuda")
        self.pending_check: tuple[int, torch.Tensor, torch.cuda.Event | None] | None = None
        d = cfg.data
        max_genes = self.model_config.max_genes
        if d.micro_batch_tokens and d.micro_batch_tokens < max_genes:
            msg = (
                f"data.micro_batch_tokens = {d.micro_batch_tokens} is below model.max_genes = {max_genes}: a long "
                f"cell would not fit in any micro batch. Set data.micro_batch_tokens >= {max_genes} (e.g. "
                f"{max_genes * d.micro_batch_cells}, the worst case of {d.micro_batch_cells} cells) or lower max_genes."
            )
            raise ConfigError(msg)
        self.train_data = StatefulCellLoader(
            StreamingCellDataset(
                self.corpus.directory,
                split="train",
                rank=self.rank,
                world_size=self.world_size,
                seed=cfg.train.seed,
                batch_size=d.micro_batch_cells,
                block_cells=d.block_cells,
                window_blocks=d.window_blocks,
                obs_columns=[],
                verify_shards=d.verify_shards,
                batch_tokens=d.micro_batch_tokens or None,
                token_cap=max_genes,
                cache_dir=d.cache_dir or None,
                cache_bytes=int(d.cache_gb * 1e9),
                whole_shards=WHOLE_SHARDS[d.whole_shards],
                prepare=prepare,
            ),
            num_workers=d.num_workers,
            pin_memory=self.device.type == "cuda",  # CellBatch.pin_memory pins the prepared tensors
        )
        self.step = 0
        self.tokens_seen = 0  # this rank's tokens, after max_genes sampling
        self.last_losses: dict[str, float] = {}
        ids = cfg.train.log_cell_ids
        self.cell_id_log = None
        if ids not in (False, ""):
            self.cell_id_log = CellIdLog(self.run_dir / "cell_ids" if ids is True else Path(ids), self.rank)

    # -- data ----------------------------------------------------------------------------------------
    def _batches(self):
        """Endless stream of this rank's micro batches; a new epoch (reshuffled) when one ends."""
        try:
            yield from self.train_data.forever()
        except CorpusError as e:
            raise ConfigError(str(e)) from None

    def _to_device(self, tensors: dict) -> dict:
        """Host tensors -> device; pinned ones (the loader pins on a GPU) are copied asynchronously. Host ints (the
        prepared sizes) stay as they are."""
        if self.device.type == "cpu":
            return tensors
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in tensors.items()}

    # -- steps ---------------------------------------------------------------------------------------
    def train_step(self, batches) -> dict:
        """One optimizer step over `grad_accum` micro batches, with a per-token loss.

        Every masked gene of the step, over all micro batches and ranks, weighs the same: each micro batch's summed
        loss is divided by the step's global count of masked genes (counted on the host where the batches were
        prepared, summed over ranks by one all-reduce of a device tensor), times world_size because DeepSpeed
        averages gradients over ranks, and DeepSpeed's own 1/grad_accum scaling is turned off. So grad_accum 2 x 1
        rank, 1 x 2 ranks and one large batch give the same update.

        Nothing in a micro step reads a value back from the device: the batches arrive prepared (sizes are host
        ints), and the finite-loss check is either one host sync per step before the update is applied
        (train.finite_check=before_update) or reads the previous step's flag, which the device has long finished
        (lagged). The returned loss is a device tensor; the loop reads losses once per log interval.
        """
        module = self.engine.module
        micro_batches = []
        for micro in range(self.cfg.train.grad_accum):
            batch = next(batches)
            if self.cell_id_log is not None:
                self.cell_id_log.write(self.step + 1, micro, batch.cell_ids, self.train_data.dataset.epoch)
            micro_batches.append((batch, self._to_device(batch.prepared)))
        n_local = sum(module.n_targets(prepared) for _, prepared in micro_batches)  # host int
        # torch.full fills on the device from a host scalar: no copy, no sync
        n_global = dist.all_reduce_sum_tensor(torch.full((), float(n_local), dtype=torch.float64, device=self.device))
        scale = self.world_size / n_global.clamp(min=1.0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens, cells, flops = 0, 0, 0.0
        poison = self._test_matches(POISON_AT, self.step + 1)
        for i, (batch, prepared) in enumerate(micro_batches):
            micro_loss = self.engine(prepared)["loss_sum"]
            if poison:
                micro_loss = micro_loss * float("nan")
            loss_sum += micro_loss.detach().double()
            if i == len(micro_batches) - 1:
                if self.lagged_check:
                    self._stop_if_pending_not_finite()  # the previous step's flag; this one's is read next step
                else:
                    self._stop_if_not_finite(loss_sum, n_local)
            self.engine.backward(micro_loss * scale.to(micro_loss.dtype), scale_wrt_gas=False)
            self.engine.step()
            tokens += int(prepared["gene_ids"].shape[0])  # shape: host-side, no sync
            cells += batch.n_cells
            flops += module.flops(np.diff(batch.indptr), self.n_matmul_params)
        self.step += 1
        self.tokens_seen += tokens
        if self.lagged_check:
            self._queue_finite_check(loss_sum)
        loss = loss_sum / max(n_local, 1)  # this rank's per-token mean, still on the device
        return {"loss": loss, "tokens": tokens, "cells": cells, "flops": flops}

    def _not_finite_error(self, bad_step: int, loss: str, kept_step: int) -> NonFiniteLossError:
        msg = (
            f"the loss of step {bad_step} is not finite on at least one rank (rank {self.rank}'s per-token loss: "
            f"{loss}); stopped before applying "
        )
        if kept_step == bad_step - 1:
            msg += (
                f"that update. The last good state (step {kept_step}) is saved in {ckpt.checkpoint_root(self.run_dir)}."
            )
        else:
            latest = ckpt.complete_checkpoints(self.run_dir)
            where = f"{latest[-1]}" if latest else "none yet: restart the run"
            msg += (
                f"the next one, but step {bad_step}'s update was applied (train.finite_check=lagged reads the check "
                f"one step late so the host never waits for the device) and nothing after step {bad_step - 1} is "
                f"saved. Resume from the last complete checkpoint ({where}); train.finite_check=before_update stops "
                "before the bad update at the cost of one host sync per step."
            )
        return NonFiniteLossError(msg + " Lower train.lr, enable train.grad_clip, or check the corpus values.")

    def _stop_if_not_finite(self, loss_sum: torch.Tensor, n_tokens: int) -> None:
        # Every rank must agree to stop before anyone applies the update.
        if dist.all_reduce_max(0.0 if torch.isfinite(loss_sum).item() else 1.0, self.device) > 0:
            self._save(reason="non-finite loss")
            raise self._not_finite_error(self.step + 1, str(float(loss_sum / max(n_tokens, 1))), self.step)

    def _queue_finite_check(self, loss_sum: torch.Tensor) -> None:
        """Start the all-reduced not-finite flag of the step just queued on its way to the host; read next step."""
        flag = dist.all_reduce_max_tensor((~torch.isfinite(loss_sum)).to(torch.float32).reshape(1))
        value = loss_sum.reshape(1).float()
        both = torch.cat([flag, value])  # (2,) flag over ranks, this rank's loss sum
        event = None
        if both.device.type == "cuda":
            host = torch.empty(2, dtype=torch.float32, pin_memory=True)
            host.copy_(both, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            both = host
        self.pending_check = (self.step, both, event)

    def _stop_if_pending_not_finite(self) -> None:
        """Raise if the step queued last had a non-finite loss on any rank (waits only for that step's work)."""
        if self.pending_check is None:
            return
        step, host, event = self.pending_check
        self.pending_check = None
        if event is not None:
            event.synchronize()
        if float(host[0]) > 0:
            raise self._not_finite_error(step, str(float(host[1])), -1)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Masked loss on the validation split (first `data.eval_batches` batches of every rank), per masked gene.

        Ranks run the same number of forwards (ZeRO-3 all-gathers parameters in every forward, so unequal counts
        would deadlock): a rank with fewer validation batches repeats one of its batches, or a train batch if it
        has none, and leaves those out of the loss.
        """
        self.engine.eval()
        data = StreamingCellDataset(
            self.corpus.directory,
            split="val",
            rank=self.rank,
            world_size=self.world_size,
            seed=self.cfg.train.seed,
            shuffle=False,
            batch_size=self.cfg.data.micro_batch_cells,
            obs_columns=[],
        )
        batches = list(itertools.islice(data, self.cfg.data.eval_batches))
        n_forwards = int(dist.all_reduce_max(float(len(batches)), self.device))
        filler = batches[-1] if batches else None
        if filler is None and n_forwards:
            filler = next(iter(self._filler_data()))
        gen = torch.Generator().manual_seed(12345 + self.rank)  # the same masks at every evaluation
        loss_sum, n = 0.0, 0
        for i in range(n_forwards):
            out = self.engine(self._to_device((batches[i] if i < len(batches) else filler).to_torch()), generator=gen)
            if i < len(batches):
                m = int(out.get("n_masked", 1))
                loss_sum += float(out["loss"]) * m
                n += m
        total, count = dist.all_reduce_sum([loss_sum, float(n)], self.device)
        self.engine.train()
        return total / count if count else float("nan")

    def _filler_data(self) -> StreamingCellDataset:
        """One train cell, for a rank that holds no validation cell but must run lockstep forwards."""
        return StreamingCellDataset(self.corpus.directory, split="train", shuffle=False, batch_size=1, obs_columns=[])

    # -- checkpoints ---------------------------------------------------------------------------------
    def _client_state(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "world_size": self.world_size,
            "config": self.cfg.to_dict(),
            "vocab_sha256": self.corpus.vocab_sha256,
            "value_kind": self.corpus.value_kind.value,
            "losses": self.last_losses,
        }

    def _save(self, reason: str = "periodic") -> Path:
        if reason != "non-finite loss":
            self._stop_if_pending_not_finite()  # never save the state after a bad update (lagged check)
        tag = ckpt.tag_for(self.step)
        root = ckpt.checkpoint_root(self.run_dir)
        dist.save_checkpoint(self.engine, root, tag, self._client_state())
        ckpt.save_rank_state(root / tag, self.rank, self.train_data.state_dict(), self.device)
        self._test_hold(HOLD_IN_SAVE)
        dist.barrier()
        if self.rank == 0:
            ckpt.mark_complete(
                root / tag,
                {
                    "step": self.step,
                    "reason": reason,
                    "time": time.time(),
                    "world_size": self.world_size,
                    "zero_stage": self.cfg.parallel.zero_stage,
                    "vocab_sha256": self.corpus.vocab_sha256,
                    "param_layout": self.param_layout,
                },
            )
            ckpt.prune(self.run_dir, self.cfg.train.keep_last)
        dist.barrier()
        self._test_hold(HOLD_AFTER_SAVE)
        return root / tag

    def _test_matches(self, variable: str, step: int) -> bool:
        """Does the test-only `variable` ("STEP" or "STEP:RANK") name `step` on this rank?"""
        hook = self.test_hooks.get(variable)
        return hook is not None and hook[0] == step and (hook[1] is None or hook[1] == self.rank)

    def _test_hold(self, variable: str) -> None:
        """Sleep here if the test-only `variable` names this step (and rank); see HOLD_IN_SAVE."""
        if not self._test_matches(variable, self.step):
            return
        hold_dir = self.run_dir / "test_hold"
        hold_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(hold_dir / f"rank{self.rank}.pid", str(os.getpid()))
        time.sleep(600)  # the test kills this process; the sleep only bounds a test that forgets to
        log.warning(
            "%s held rank %d for 600 s at step %d and nobody killed it; going on", variable, self.rank, self.step
        )

    def _corpus_medians(self, model) -> None:
        """Geneformer's rank-value normaliser from the corpus (manifest gene_stats.nonzero_median_cp10k, corpus
        format 3 counts corpora); refused when the corpus has none."""
        medians = self.corpus.manifest.get("gene_stats", {}).get("nonzero_median_cp10k")
        if medians is None or len(medians) != model.gene_median.numel():
            msg = (
                f"family geneformer needs each gene's non-zero median of CP10k values (the rank-value normaliser); "
                f"{self.corpus.directory} records none (a counts corpus of format 3 does). Re-shard the raw counts "
                "with this scgrn, or start from an imported checkpoint: model.init_from=RELEASE made by "
                "`scgrn import geneformer ... --gene-medians FILE`."
            )
            raise ConfigError(msg)
        with torch.no_grad():
            model.gene_median.copy_(torch.tensor(medians, dtype=torch.float32))

    def _panels(self, model_config) -> tuple | None:
        """The corpus's measured-gene panels when the objective masks unexpressed genes; an older corpus without
        them is refused (never a silent fallback to the expressed-genes objective)."""
        if not getattr(model_config, "mask_unexpressed", 0):
            return None
        if self.corpus.panels is None:
            msg = (
                f"model.mask_unexpressed = {model_config.mask_unexpressed} needs each input's measured-gene panel, "
                f"which {self.corpus.directory} (corpus format {self.corpus.manifest['format_version']}) does not "
                "record. Re-shard the inputs with this scgrn (corpus format 3) or set model.mask_unexpressed=0."
            )
            raise ConfigError(msg)
        return self.corpus.panels

    def _prepare_elastic(self) -> None:
        """Resuming on another world size: ZeRO 1-3 states go through DeepSpeed's universal checkpoint (converted
        once, by rank 0, into CKPT/universal/); ZeRO-0 checkpoints hold the whole optimizer state and load as
        they are. The data cursor is re-partitioned in `_resume`."""
        path, saved = self.resume_from, self.resume_marker
        stage = self.saved_stage
        log.warning(
            "resuming %s, saved by %d rank(s), on %d rank(s): elastic resume (ZeRO-%d)",
            path,
            saved["world_size"],
            self.world_size,
            stage,
        )
        if stage == 0:
            return
        if self.rank == 0:
            dist.convert_to_universal(path)
        dist.barrier()
        self.ds_config["checkpoint"] = {**self.ds_config.get("checkpoint", {}), "load_universal": True}

    def _resume(self) -> None:
        path, marker = self.resume_from, self.resume_marker
        if path is None:
            return
        if marker["vocab_sha256"] != self.corpus.vocab_sha256:
            msg = f"cannot resume from {path}: the corpus vocabulary differs from the one it was trained on."
            raise ConfigError(msg)
        if self.elastic and self.saved_stage != 0:
            state = dist.load_checkpoint(self.engine, path / dist.UNIVERSAL_DIR, path.name)
        else:
            state = dist.load_checkpoint(self.engine, path.parent, path.name)
        if self.elastic:
            self.train_data.load_elastic_state(ckpt.load_loader_states(path, marker["world_size"]))
            # The old ranks' random streams cannot be split over new ranks: each rank starts a fresh one, seeded by
            # the run's seed, the step and the rank (dropout draws differ from an uninterrupted run's).
            torch.manual_seed(self.cfg.train.seed + 104_729 * state["step"] + self.rank)
        else:
            loader_state, rng = ckpt.load_rank_state(path, self.rank)
            self.train_data.load_state_dict(loader_state)
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and self.device.type == "cuda":  # dropout draws on the GPU
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.last_losses = state.get("losses", {})
        log.info("resumed from %s at step %d", path, self.step)

    # -- the loop ------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self._resume()
        if self.cell_id_log is not None:
            self.cell_id_log.open(self.step)
        metrics = MetricsLogger(self.run_dir, self.rank, cfg.train.steps, self.step)
        batches = self._batches()
        window = {"losses": [], "tokens": 0, "cells": 0, "flops": 0.0, "t0": time.perf_counter()}
        history = []
        last = cfg.train.stop_after or cfg.train.steps
        try:
            while self.step < last:
                out = self.train_step(batches)
                window["losses"].append(out["loss"])  # device tensors, read once per log interval
                window["tokens"] += out["tokens"]
                window["cells"] += out["cells"]
                window["flops"] += out["flops"]
                metrics.advance()
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    losses = torch.stack(window["losses"]).tolist()  # the interval's one device read
                    history += losses
                    seconds = time.perf_counter() - window["t0"]
                    tokens_s = window["tokens"] * self.world_size / seconds  # all ranks stream similar amounts
                    scalars = {
                        "train/loss": sum(losses) / len(losses),
                        "train/lr": self.engine.get_lr()[0],
                        "train/grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
                        "perf/tokens_per_s": tokens_s,
                        "perf/cells_per_s": window["cells"] * self.world_size / seconds,
                        "perf/memory_gb": memory_gb(self.device),
                    }
                    scalars["perf/tflops_per_rank"] = window["flops"] / seconds / 1e12  # this rank's model FLOPs
                    if cfg.train.peak_tflops > 0:
                        scalars["perf/mfu"] = window["flops"] / seconds / (cfg.train.peak_tflops * 1e12)
                    metrics.scalars(self.step, scalars)
                    self.last_losses["train"] = scalars["train/loss"]
                    window = {"losses": [], "tokens": 0, "cells": 0, "flops": 0.0, "t0": time.perf_counter()}
                paused = time.perf_counter()  # evaluation and saves are not training: kept out of the window
                if self.step % cfg.train.eval_every == 0 or self.step == cfg.train.steps:
                    val = self.evaluate()
                    self.last_losses["val"] = val
                    metrics.scalars(self.step, {"val/loss": val})
                if self.step % cfg.train.save_every == 0 or self.step in (cfg.train.steps, last):
                    self._save()
                window["t0"] += time.perf_counter() - paused
            if window["losses"]:  # steps after the last log line (a stop_after between two log steps)
                history += torch.stack(window["losses"]).tolist()
        finally:
            metrics.close()
            if self.cell_id_log is not None:
                self.cell_id_log.close()
        summary = {
            "steps": self.step,
            "tokens": self.tokens_seen,
            "world_size": self.world_size,
            "family": cfg.family,
            "final_losses": self.last_losses,
            "loss_history": history,
            "corpus": str(self.corpus.directory),
            "corpus_manifest_sha256": hashlib.sha256(
                remote.read_bytes(remote.join(self.corpus.directory, "manifest.json"))
            ).hexdigest(),
            "vocab_sha256": self.corpus.vocab_sha256,
            "value_kind": self.corpus.value_kind.value,
            "config_sha256": hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest(),
        }
        if self.rank == 0:
            atomic_write_text(self.run_dir / "run_summary.json", json.dumps(summary, indent=1))
        return summary


def run(config_path: str, overrides: list[str]) -> dict:
    cfg = PretrainConfig.load(config_path, overrides)
    return Trainer(cfg).train()
