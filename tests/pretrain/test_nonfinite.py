"""A non-finite loss stops training with a message and a resumable checkpoint of the last good state."""

from __future__ import annotations

from conftest import make_adata


def test_nonfinite_loss_stops_with_message_and_checkpoint(tmp_path, cli):
    make_adata(300, 50, seed=1).write_h5ad(tmp_path / "a.h5ad")
    cli("shard", tmp_path / "a.h5ad", "--out", tmp_path / "corpus", "--quiet", check=True)
    run = tmp_path / "run"
    # Poisson likelihood with a huge step size: exp(predicted log-rate) overflows to inf within a few steps.
    proc = cli(
        "pretrain",
        "--config",
        "launch/configs/pretrain/exceiver-debug.yaml",
        f"data.corpus={tmp_path / 'corpus'}",
        f"train.out_dir={run}",
        "train.lr=1e4",
        "train.grad_clip=0",
        "train.warmup_steps=0",
        "train.steps=30",
        "train.resume=none",
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "loss became" in proc.stderr and "Lower train.lr" in proc.stderr
    assert "Traceback" not in proc.stderr
    saved = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step")]
    assert saved and all((p / "COMPLETE").exists() for p in saved)
