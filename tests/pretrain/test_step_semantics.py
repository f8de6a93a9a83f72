"""What one optimizer step means, independent of how it is spread over ranks and micro batches:

- the loss is a per-token mean over the whole step (grad_accum 2 x 1 rank == 1 x 2 ranks == one large batch);
- ZeRO-3 evaluation runs the same number of forwards on every rank (unequal validation splits do not deadlock);
- model FLOPs (for MFU) come from host-side cell lengths and the parameter count taken before ZeRO-3 partitions it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import REPO

DEBUG = REPO / "launch" / "configs" / "pretrain" / "debug.yaml"
VENV_BIN = Path(sys.executable).parent


def _corpus(directory: Path, n_cells: int, val_fraction: float, seed: int = 0, fmt: str = "zarr", **options) -> Path:
    """Cells of very different lengths (4..60 expressed genes of 80), so micro-batch means differ from token means."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_cells):
        x = np.zeros(80, dtype=np.int32)
        genes = rng.choice(80, size=int(rng.integers(4, 61)), replace=False)
        x[genes] = rng.integers(1, 40, size=genes.size)
        rows.append(x)
    adata = ad.AnnData(
        X=sp.csr_matrix(np.stack(rows)),
        obs=pd.DataFrame(index=[f"c{i:04d}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"G{j:03d}" for j in range(80)]),
    )
    directory.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(directory / "cells.h5ad")
    from data_prep.config import ShardConfig
    from data_prep.sharder import shard

    out = directory / "corpus"
    shard(
        ShardConfig(inputs=[directory / "cells.h5ad"], out=out, format=fmt, val_fraction=val_fraction, **options),
        progress=False,
    )
    return out


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(run_dir: Path, corpus: Path, ranks: int, *overrides: str, timeout: int = 300, config: Path = DEBUG) -> None:
    args = ["--config", str(config), f"data.corpus={corpus}", f"train.out_dir={run_dir}", *overrides]
    if ranks == 1:
        cmd = [sys.executable, "-m", "pretrain", *args]
    else:
        launcher = [str(VENV_BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(_port())]
        cmd = [*launcher, "--module", "pretrain", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    from pretrain.parallel.engine import consolidated_fp32_state_dict

    root = run_dir / "checkpoints"
    tag = (root / "latest").read_text().strip()
    return {k: v.detach().numpy() for k, v in consolidated_fp32_state_dict(root, tag).items()}


@pytest.mark.distributed
@pytest.mark.slow
def test_grad_accum_ranks_and_one_large_batch_give_the_same_update(tmp_path):
    """16 train cells = one step's cells in every layout (so every step sees the same cells); every gene masked and
    replaced by [MASK] (mask_prob = mask_replace_prob = 1), no dropout, no gene sampling: the masked targets do not
    depend on the layout either. After 3 AdamW steps the fp32 weights agree to 1e-5, which a per-micro-batch mean
    (each gene weighted by 1 / masked genes of its micro batch) does not give with cells of 4 to 60 genes."""
    corpus = _corpus(tmp_path, 16, val_fraction=0.0)
    common = (
        "train.steps=3",
        "train.warmup_steps=0",
        "train.lr=1e-2",
        "train.precision=fp32",
        "train.eval_every=1000",
        "train.save_every=3",
        "train.resume=none",
        "parallel.zero_stage=2",
        "data.block_cells=8",
        "model.mask_prob=1.0",
        "model.mask_replace_prob=1.0",
        "model.max_genes=256",
        "model.dropout=0.0",
        "train.log_cell_ids=true",
    )
    layouts = {
        "accum2_rank1": (1, "data.micro_batch_cells=8", "train.grad_accum=2"),
        "accum1_rank2": (2, "data.micro_batch_cells=8", "train.grad_accum=1"),
        "one_batch": (1, "data.micro_batch_cells=16", "train.grad_accum=1"),
    }
    weights, cells = {}, {}
    for name, (ranks, *layout) in layouts.items():
        _train(tmp_path / name, corpus, ranks, *common, *layout)
        weights[name] = _weights(tmp_path / name)
        steps: dict[int, set] = {}
        for log in (tmp_path / name / "cell_ids").glob("rank*.jsonl"):
            for line in log.read_text().splitlines():
                entry = json.loads(line)
                steps.setdefault(entry["step"], set()).update(entry["cell_ids"])
        cells[name] = steps
    assert cells["accum2_rank1"] == cells["accum1_rank2"] == cells["one_batch"]  # same cells in every step
    assert all(len(s) == 16 for s in cells["one_batch"].values())
    reference = weights["one_batch"]
    for name in ("accum2_rank1", "accum1_rank2"):
        assert weights[name].keys() == reference.keys()
        for key, value in reference.items():
            np.testing.assert_allclose(weights[name][key], value, atol=1e-5, rtol=0, err_msg=f"{name}: {key}")
    # The tolerance is meaningful: one step moves the weights by far more than it.
    _train(tmp_path / "two_steps", corpus, 1, *common, "data.micro_batch_cells=16", "train.stop_after=2")
    two = _weights(tmp_path / "two_steps")
    assert max(np.abs(reference[k] - two[k]).max() for k in reference) > 1e-3


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_evaluation_with_unequal_validation_splits_finishes(tmp_path):
    """Ranks hold different numbers of validation batches; under ZeRO-3 every forward all-gathers parameters, so
    evaluation must run the same number of forwards on both ranks or the run hangs (the timeout fails the test).
    The parameter persistence threshold is 0, so even the debug model's small matrices are partitioned and
    gathered (with zero3.json's 10,000 most of them would stay whole and a mismatch could go unnoticed)."""
    from data_prep.loader import StreamingCellDataset

    corpus = _corpus(tmp_path, 60, val_fraction=0.3, seed=1)
    counts = [
        sum(1 for _ in StreamingCellDataset(corpus, split="val", rank=r, world_size=2, shuffle=False, batch_size=2))
        for r in range(2)
    ]
    assert counts[0] != counts[1], counts  # the precondition: the validation splits are unequal
    ds = json.loads((REPO / "launch" / "configs" / "deepspeed" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    run = tmp_path / "run"
    _train(
        run,
        corpus,
        2,
        "parallel.zero_stage=3",
        f"parallel.deepspeed_config={tmp_path / 'zero3.json'}",
        "train.steps=4",
        "train.eval_every=2",
        "train.save_every=4",
        "train.resume=none",
        "data.micro_batch_cells=2",
        "data.block_cells=4",
        "data.eval_batches=100",
        timeout=120,
    )
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["steps"] == 4 and np.isfinite(summary["final_losses"]["val"])


ZERO_SCRIPT = """
import json, sys
from pretrain.config import PretrainConfig
from pretrain.trainer import Trainer
cfg = PretrainConfig.load(sys.argv[1], sys.argv[2:])
trainer = Trainer(cfg)
print(json.dumps({
    "counted": trainer.n_matmul_params,
    "numel_after_wrap": sum(p.numel() for p in trainer.engine.module.parameters()),
    "flops": trainer.engine.module.flops([3, 300], trainer.n_matmul_params),
}))
"""


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [0, 3])
def test_flops_use_the_parameter_count_from_before_zero_partitions_it(tmp_path, stage):
    """debug.yaml's scBERT (d = 32, 2 layers, d_ff = 64, 7 bins, max_genes 256), counted by hand:
    per block 2 LayerNorms (2 x 2d) + q (d² + d) + kv (2d² + 2d) + out (d² + d) + fc_in (d·ff + ff) + fc_out
    (ff·d + d) = 8,544; two blocks + final LayerNorm (2d) + head (7d + 7) = 17,383 non-embedding parameters.
    A batch of cells with 3 and 300 genes keeps 3 and 256: FLOPs = 6 N (3 + 256) + 12 · 2 · 32 · (3² + 256²)."""
    corpus = _corpus(tmp_path, 24, val_fraction=0.2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    overrides = [f"data.corpus={corpus}", f"train.out_dir={tmp_path / 'run'}", f"parallel.zero_stage={stage}"]
    proc = subprocess.run(
        [sys.executable, "-c", ZERO_SCRIPT, str(DEBUG), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    d, ff, bins = 32, 64, 7
    block = 2 * 2 * d + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)
    n = 2 * block + 2 * d + (bins * d + bins)
    assert block == 8544 and n == 17383
    assert got["counted"] == n
    assert got["flops"] == 6 * n * (3 + 256) + 12 * 2 * d * (3**2 + 256**2)
    if stage == 3:
        assert got["numel_after_wrap"] < n  # what counting after the wrap would have used


@pytest.mark.distributed
def test_token_budget_micro_batches_train_and_resume_exactly(tmp_path):
    """data.micro_batch_tokens: micro batches of at most 120 capped tokens (cells of 4-60 genes), 2 ranks; a run
    stopped at step 3 and resumed gives the straight run's losses, and every logged micro batch fits the budget."""
    corpus = _corpus(tmp_path, 120, val_fraction=0.1, seed=2)
    common = (
        "data.micro_batch_tokens=120",
        "model.max_genes=60",
        "data.block_cells=16",
        "train.precision=fp32",
        "train.steps=6",
        "train.eval_every=1000",
        "train.save_every=3",
        "train.log_cell_ids=true",
    )
    _train(tmp_path / "straight", corpus, 2, *common, "train.resume=none")
    _train(tmp_path / "stopgo", corpus, 2, *common, "train.resume=none", "train.stop_after=3")
    _train(tmp_path / "stopgo", corpus, 2, *common, "train.resume=auto")
    straight = json.loads((tmp_path / "straight" / "run_summary.json").read_text())
    resumed = json.loads((tmp_path / "stopgo" / "run_summary.json").read_text())
    assert resumed["loss_history"] == pytest.approx(straight["loss_history"][3:], rel=1e-5, abs=1e-6)
    import anndata as ad

    lengths = dict(
        zip(
            ad.read_h5ad(tmp_path / "cells.h5ad").obs_names,
            np.diff(ad.read_h5ad(tmp_path / "cells.h5ad").X.indptr),
            strict=True,
        )
    )
    for log in (tmp_path / "straight" / "cell_ids").glob("rank*.jsonl"):
        for line in log.read_text().splitlines():
            ids = json.loads(line)["cell_ids"]
            assert sum(min(lengths[c], 60) for c in ids) <= 120
    assert (tmp_path / "stopgo" / "cell_ids" / "rank0.jsonl").read_text() == (
        tmp_path / "straight" / "cell_ids" / "rank0.jsonl"
    ).read_text()


def test_a_token_budget_below_max_genes_is_refused(tmp_path):
    corpus = _corpus(tmp_path, 24, val_fraction=0.2)
    args = ["--config", str(DEBUG), f"data.corpus={corpus}", f"train.out_dir={tmp_path / 'run'}"]
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain", *args, "data.micro_batch_tokens=100"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "data.micro_batch_tokens = 100 is below model.max_genes = 256" in proc.stderr
    assert "Traceback" not in proc.stderr
