"""`scgrn launch` for real, 2 CPU ranks on gloo, on a tiny corpus sharded here: the deepspeed launcher with a
`localhost slots=2` hostfile, `accelerate launch` with the DeepSpeed plugin, and torchrun. Each run must finish its
steps and write what the trainer writes at the end (run_summary.json, a COMPLETE checkpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_adata, run_cli

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
DEBUG = REPO / "launch" / "configs" / "pretrain" / "debug.yaml"
STEPS = 2


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("launch")
    h5ad = root / "tiny.h5ad"
    make_adata().write_h5ad(h5ad)  # conftest's tiny seeded AnnData: 300 cells x 60 genes
    run_cli("shard", h5ad, "--out", root / "corpus", "--format", "zarr", "--quiet", check=True)
    return root / "corpus"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir: Path, corpus: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "launch.launch_cli", "launch", "--nodes", "1", "--gpus-per-node", "2",
        "--config", str(DEBUG), *flags,
        f"data.corpus={corpus}", f"train.out_dir={run_dir}", f"train.steps={STEPS}", "train.eval_every=100",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:  # every rank's output in the failure (PyG's testing/distributed habit)
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
        )
    return proc


def _assert_finished(run_dir: Path) -> None:
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert len(summary["loss_history"]) == STEPS
    last = run_dir / "checkpoints" / f"step{STEPS:08d}"
    assert (last / "COMPLETE").exists()
    assert {p.name for p in last.glob("loader_rank*.json")} == {"loader_rank0.json", "loader_rank1.json"}


def test_deepspeed_launcher_with_a_localhost_hostfile(tmp_path, tiny_corpus):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    flags = ["--launcher", "deepspeed", "--hostfile", str(hostfile), "--master-port", str(_free_port())]
    proc = _launch(tmp_path / "run", tiny_corpus, *flags)
    # a single local host: no ssh check, no `ssh localhost hostname -I` for the address
    assert f"deepspeed --hostfile {hostfile} --num_nodes 1 --num_gpus 2 --no_ssh_check --master_addr 127.0.0.1" in (
        proc.stdout
    )
    _assert_finished(tmp_path / "run")


def test_accelerate_launch_with_the_deepspeed_plugin(tmp_path, tiny_corpus):
    proc = _launch(tmp_path / "run", tiny_corpus, "--launcher", "accelerate", "--master-port", str(_free_port()))
    assert "accelerate launch --config_file launch/configs/accelerate/cpu-2proc.yaml" in proc.stdout
    _assert_finished(tmp_path / "run")


def test_torchrun_for_real(tmp_path, tiny_corpus):
    proc = _launch(tmp_path / "run", tiny_corpus, "--launcher", "torchrun")
    assert "torchrun --standalone --nnodes 1 --nproc_per_node 2 -m pretrain" in proc.stdout
    _assert_finished(tmp_path / "run")


def test_printed_multi_node_torchrun_command_runs_as_two_local_nodes(tmp_path, tiny_corpus):
    """The `--nodes 2` command, as printed, started twice on this machine (2 "nodes" x 1 process) meets at the c10d
    rendezvous and trains: what each node of a real cluster would run."""
    import shlex

    from launch.launcher import LaunchRequest, Machine, plan_launch

    run_dir = tmp_path / "run"
    overrides = [
        f"data.corpus={tiny_corpus}",
        f"train.out_dir={run_dir}",
        f"train.steps={STEPS}",
        "train.eval_every=100",
    ]
    request = LaunchRequest(
        config=DEBUG, nodes=2, gpus_per_node=1, launcher="torchrun", dry_run=True, overrides=overrides,
        master_addr="127.0.0.1", master_port=_free_port(),
    )  # fmt: skip
    (command,) = plan_launch(request, Machine(cuda_devices=0, cpu_count=2, has_sbatch=False)).commands
    assert command.where.startswith("every node")
    argv = shlex.split(command.text())  # exactly the printed line
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    nodes = [
        subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n\n".join(o[-4000:] for o in outputs)
    _assert_finished(run_dir)
