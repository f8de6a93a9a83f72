"""`scgrn launch --dry-run`: the batch and ZeRO memory arithmetic against numbers worked out by hand here, and every
refusal naming its field and its problem (launch/launcher.py, launch/memory.py, launch/zero_config.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from launch.launch_cli import main as launch_main
from launch.launcher import LaunchError, LaunchRequest, Machine, plan_launch
from launch.memory import GIB

CONFIGS = REPO / "launch" / "configs"
DEBUG = CONFIGS / "pretrain" / "debug.yaml"
BASE = CONFIGS / "pretrain" / "scbert-base.yaml"
DS = CONFIGS / "deepspeed"
CPU = Machine(cuda_devices=0, cpu_count=2, has_sbatch=False)
GPU_BOX = Machine(cuda_devices=8, cpu_count=64, has_sbatch=True)
VOCAB = 60_000


def scbert_params(vocab: int, d: int, layers: int, d_ff: int, n_bins: int) -> int:
    """scBERT's parameters by hand: embeddings, per block 2 LayerNorms + q/kv/out projections + MLP, final LN, head."""
    per_block = 2 * 2 * d + (4 * d * d + 4 * d) + (d * d_ff + d_ff + d_ff * d + d)
    return vocab * d + (n_bins + 1) * d + layers * per_block + 2 * d + (d * n_bins + n_bins)


PSI_BASE = scbert_params(VOCAB, 512, 8, 2048, 51)  # scbert-base.yaml
PSI_DEBUG = scbert_params(VOCAB, 32, 2, 64, 7)  # debug.yaml


def plan(config=BASE, nodes=1, gpus=1, *overrides, machine=CPU, dry_run=True, **kwargs):
    request = LaunchRequest(
        config=config,
        nodes=nodes,
        gpus_per_node=gpus,
        overrides=["data.corpus=/nonexistent/corpus", *overrides],
        dry_run=dry_run,
        vocab_size=kwargs.pop("vocab_size", VOCAB),
        **kwargs,
    )
    return plan_launch(request, machine)


def problems(*args, **kwargs) -> list[str]:
    with pytest.raises(LaunchError) as info:
        plan(*args, **kwargs)
    return info.value.problems


def test_hand_parameter_count_matches_the_meta_device_count():
    assert PSI_BASE == 55_992_883
    assert plan().params.total == PSI_BASE
    assert plan(DEBUG).params.total == PSI_DEBUG


# (config, nodes, gpus, overrides, bytes/param: params, grads, optimizer) -> hand formula per rank, Nd = nodes x gpus
SHAPES = [
    # 1 x 1, fp32 debug, ZeRO-2: with Nd = 1 every stage is 16Ψ
    (DEBUG, 1, 1, ["parallel.zero_stage=2"], lambda psi, nd: 4 * psi + 12 * psi / nd),
    # 1 x 8, bf16, ZeRO 0/1/2/3: the paper's 16Ψ, 4Ψ + 12Ψ/Nd, 2Ψ + 14Ψ/Nd, 16Ψ/Nd
    (BASE, 1, 8, ["parallel.zero_stage=0"], lambda psi, nd: 16 * psi),
    (BASE, 1, 8, ["parallel.zero_stage=1"], lambda psi, nd: 4 * psi + 12 * psi / nd),
    (BASE, 1, 8, ["parallel.zero_stage=2"], lambda psi, nd: 2 * psi + 14 * psi / nd),
    (BASE, 1, 8, ["parallel.zero_stage=3"], lambda psi, nd: 16 * psi / nd),
    # 4 x 8, bf16
    (BASE, 4, 8, ["parallel.zero_stage=1"], lambda psi, nd: 4 * psi + 12 * psi / nd),
    (BASE, 4, 8, ["parallel.zero_stage=2"], lambda psi, nd: 2 * psi + 14 * psi / nd),
    (BASE, 4, 8, ["parallel.zero_stage=3"], lambda psi, nd: 16 * psi / nd),
    # 4 x 8, fp32: params 4 + grads 4 + Adam moments 8
    (BASE, 4, 8, ["train.precision=fp32", "parallel.zero_stage=1"], lambda psi, nd: 8 * psi + 8 * psi / nd),
    (BASE, 4, 8, ["train.precision=fp32", "parallel.zero_stage=2"], lambda psi, nd: 4 * psi + 12 * psi / nd),
    (BASE, 4, 8, ["train.precision=fp32", "parallel.zero_stage=3"], lambda psi, nd: 16 * psi / nd),
]


@pytest.mark.parametrize(("config", "nodes", "gpus", "overrides", "formula"), SHAPES)
def test_model_states_follow_the_zero_paper(config, nodes, gpus, overrides, formula):
    p = plan(config, nodes, gpus, *overrides)
    psi, nd = p.params.total, nodes * gpus
    assert p.world_size == nd
    assert p.states.gpu == pytest.approx(formula(psi, nd), rel=1e-12)
    assert p.states.cpu == 0


def test_offload_moves_optimizer_states_and_params_to_cpu():
    nd = 32
    z2 = plan(BASE, 4, 8, "parallel.zero_stage=2", f"parallel.deepspeed_config={DS / 'zero2_offload.json'}")
    assert (z2.zero.offload_optimizer, z2.zero.offload_params) == ("cpu", "none")
    assert z2.states.gpu == pytest.approx(2 * PSI_BASE + 2 * PSI_BASE / nd)  # bf16 params whole, grads partitioned
    assert z2.states.cpu == pytest.approx(12 * PSI_BASE / nd)  # fp32 master + Adam moments, this rank's partition
    z3 = plan(BASE, 4, 8, "parallel.zero_stage=3", f"parallel.deepspeed_config={DS / 'zero3_offload.json'}")
    assert z3.states.gpu == pytest.approx(2 * PSI_BASE / nd)  # only the gradient partition stays
    assert z3.states.cpu == pytest.approx((2 + 12) * PSI_BASE / nd)
    offload3 = f"parallel.deepspeed_config={DS / 'zero3_offload.json'}"
    z3_fp32 = plan(BASE, 4, 8, "train.precision=fp32", "parallel.zero_stage=3", offload3)
    assert z3_fp32.states.cpu == pytest.approx((4 + 8) * PSI_BASE / nd)


def test_batch_and_activation_arithmetic():
    p = plan(BASE, 4, 8, "train.grad_accum=4")
    assert p.global_batch == 32 * 64 * 4
    # scbert-base keeps every layer's activations (bf16: 34 B per token, width and layer): 18.3 GB, fits 80 GB
    assert p.activations.bytes == 64 * 2048 * 512 * 8 * 34
    # checkpointed: 2 B x 8 layer inputs + 34 B for the block being recomputed, per token-width
    checkpointed = plan(BASE, 4, 8, "train.grad_accum=4", "model.activation_checkpointing=true")
    assert checkpointed.activations.bytes == 64 * 2048 * 512 * (2 * 8 + 34)
    debug = plan(DEBUG, 1, 2)  # fp32, no checkpointing: 66 B per token, width and layer
    assert debug.activations.bytes == 8 * 256 * 32 * 2 * 66
    assert debug.global_batch == 2 * 8 * 1


def test_dry_run_prints_the_arithmetic_and_the_commands(capsys):
    args = ["launch", "--nodes", "4", "--gpus-per-node", "8", "--dry-run", "--vocab-size", str(VOCAB), "--config"]
    code = launch_main([*args, str(BASE), "data.corpus=/nonexistent", "train.grad_accum=2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 node(s) x 8 GPUs/node = 32 ranks" in out
    assert "32 x 64 x 2 = 4096 cells per optimizer step" in out
    assert "2Ψ + 14Ψ/Nd, Nd = 32" in out and f"{PSI_BASE:,}" in out
    expected_gib = (2 * PSI_BASE + 14 * PSI_BASE / 32) / GIB
    assert f"model states              {expected_gib:.3f} GiB per GPU" in out
    assert "ON TOP" in out and "ESTIMATE" in out
    assert "deepspeed --hostfile hostfile --num_nodes 4 --num_gpus 8" in out and "node-3 slots=8" in out


def test_each_launcher_prints_its_command(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # paths are printed relative to the working directory
    common = ["--config", str(BASE), "--dry-run", "--vocab-size", str(VOCAB), "data.corpus=/nonexistent"]
    two_nodes = ["launch", "--nodes", "2", "--gpus-per-node", "8"]
    assert launch_main([*two_nodes, "--launcher", "torchrun", *common]) == 0
    out = capsys.readouterr().out
    assert "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_id scgrn-scbert-base --rdzv_backend c10d" in out
    assert '--rdzv_endpoint "$MASTER_ADDR:29500" -m pretrain' in out
    assert launch_main([*two_nodes, "--launcher", "slurm", "--partition", "gpu", *common]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --nodes=2" in out and "#SBATCH --gpus-per-node=8" in out and "#SBATCH --partition=gpu" in out
    assert "#SBATCH --ntasks-per-node=1" in out and 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in out
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun --nnodes 2 --nproc_per_node 8" in out
    args = "launch --nodes 1 --gpus-per-node 2 --launcher accelerate --master-port 29555 --dry-run data.corpus=/x"
    assert launch_main([*args.split(), "--config", str(DEBUG)]) == 0
    out = capsys.readouterr().out
    assert "accelerate launch --config_file launch/configs/accelerate/cpu-2proc.yaml --main_process_port 29555" in out


def test_rendered_sbatch_script_passes_bash_n(tmp_path):
    p = plan(BASE, 4, 8, launcher="slurm", partition="gpu")
    ((_, script),) = p.files
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)


# -- refusals ----------------------------------------------------------------------------------------------------------
def test_every_problem_is_reported_at_once():
    found = problems(BASE, 0, 0, "data.micro_batch_cells=0")
    assert len(found) == 3, found
    assert any(p.startswith("--nodes = 0: must be >= 1") for p in found)
    assert any(p.startswith("--gpus-per-node = 0: must be >= 1") for p in found)
    assert any("data.micro_batch_cells = 0: must be >= 1" in p for p in found)


def test_pinned_global_batch_not_divisible_or_not_reached():
    (msg,) = problems(BASE, 4, 8, "parallel.train_batch_size=1000")
    assert "parallel.train_batch_size = 1000 is not divisible by world_size(32) x data.micro_batch_cells(64)" in msg
    assert "= 2048, so no whole train.grad_accum reaches it" in msg
    (msg,) = problems(BASE, 4, 8, "parallel.train_batch_size=4096")
    assert "32) x data.micro_batch_cells(64) x train.grad_accum(1) = 2048 != parallel.train_batch_size(4096)" in msg
    assert "set train.grad_accum=2" in msg
    assert plan(BASE, 4, 8, "parallel.train_batch_size=4096", "train.grad_accum=2").global_batch == 4096


def test_zero3_refuses_a_model_it_cannot_partition():
    # vocab 64: every tensor of the debug model is <= zero3.json's stage3_param_persistence_threshold (10,000)
    (msg,) = problems(DEBUG, 1, 2, "parallel.zero_stage=3", vocab_size=64)
    assert msg.startswith("ZeRO-3 cannot partition this model") and "stage3_param_persistence_threshold" in msg
    assert plan(DEBUG, 1, 2, "parallel.zero_stage=2", vocab_size=64).zero.stage == 2


def test_invalid_model_and_zero_json_conflicts_are_named():
    found = problems(BASE, 1, 8, "model.n_heads=3", f"parallel.deepspeed_config={DS / 'zero3_offload.json'}")
    assert any(p.startswith("model: ") and "n_heads" in p and "divisible" in p for p in found), found
    stage_conflict = "zero3_offload.json: zero_optimization.stage = 3 contradicts parallel.zero_stage = 2"
    assert any(stage_conflict in p for p in found), found
    (msg,) = problems(
        BASE,
        1,
        8,
        "parallel.zero_stage=3",
        "train.optimizer=fused_adam",
        f"parallel.deepspeed_config={DS / 'zero3_offload.json'}",
    )
    assert "train.optimizer = 'fused_adam' cannot step the optimizer states" in msg


def test_offload_param_needs_stage_3(tmp_path):
    bad = tmp_path / "zero2_param_offload.json"
    ds = json.loads((DS / "zero2.json").read_text())
    ds["zero_optimization"]["offload_param"] = {"device": "cpu"}
    bad.write_text(json.dumps(ds))
    (msg,) = problems(BASE, 1, 8, f"parallel.deepspeed_config={bad}")
    assert "offload_param needs ZeRO stage 3" in msg


def test_world_size_that_does_not_fit_the_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    manifest = {"formats": ["zarr"], "shards": [{"n_cells": 300}], "totals": {"n_cells": 300}, "vocab": {"size": 64}}
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    request = LaunchRequest(
        config=DEBUG, nodes=1, gpus_per_node=8, launcher="torchrun", dry_run=True, overrides=[f"data.corpus={corpus}"]
    )
    with pytest.raises(LaunchError) as info:
        plan_launch(request, CPU)
    (msg,) = info.value.problems
    assert f"data.corpus = '{corpus}'" in msg and "2 read unit(s)" in msg and "ranks 2..7 would get no cells" in msg


def test_accelerate_config_must_describe_the_same_run():
    found = problems(BASE, 2, 8, "parallel.zero_stage=3", launcher="accelerate")
    assert any("num_machines = 4 but --nodes = 2" in p for p in found), found
    assert any("num_processes = 32 but --nodes(2) x --gpus-per-node = 16" in p for p in found), found
    assert any("ZeRO stage 2 but the pretrain config runs stage 3" in p for p in found), found
    (msg,) = problems(DEBUG, 1, 2, "train.precision=bf16", launcher="accelerate")
    assert "mixed_precision = 'no' but train.precision = 'bf16'" in msg


def test_deepspeed_hostfile_shape(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# one node\nnode-a slots=4\n")
    found = problems(BASE, 2, 8, hostfile=hostfile)
    assert any("lists 1 host(s); --nodes = 2 needs 2" in p for p in found), found
    assert any("node-a has slots=4 < --gpus-per-node = 8" in p for p in found), found
    found = problems(BASE, 2, 8, hostfile=hostfile, launcher="torchrun")
    assert any("--hostfile is read by the deepspeed launcher only" in p for p in found)


def test_local_run_checks_this_machine():
    one_gpu = Machine(cuda_devices=1, cpu_count=8, has_sbatch=False)
    (msg,) = problems(BASE, 1, 2, machine=one_gpu, dry_run=False)
    assert msg.startswith("--gpus-per-node = 2: only 1 CUDA GPU(s) visible here")
    assert plan(BASE, 1, 2, machine=one_gpu, dry_run=True).world_size == 2  # a dry run may describe other machines
    (msg,) = problems(
        BASE, 1, 2, "parallel.zero_stage=2", f"parallel.deepspeed_config={DS / 'zero2_offload.json'}", dry_run=False
    )
    assert "zero2_offload.json offloads to CPU, which needs a CUDA GPU" in msg
    (msg,) = problems(BASE, 1, 2, launcher="slurm", dry_run=False)
    assert msg.startswith("--launcher slurm: sbatch is not on PATH here")


def test_memory_budget():
    (msg,) = problems(BASE, 1, 1, gpu_memory_gb=2, machine=GPU_BOX)
    assert msg.startswith("--gpu-memory-gb = 2: the estimate per GPU is") and "activations" in msg
    found = problems(BASE, 1, 1, "parallel.train_batch_size=100", gpu_memory_gb=2, machine=GPU_BOX)
    assert len(found) == 2 and found[1].startswith("--gpu-memory-gb = 2")  # reported with the others, not after
    assert plan(BASE, 1, 1, gpu_memory_gb=80, machine=GPU_BOX).gpu_total < 80 * GIB


def test_multi_node_without_dry_run_prints_then_refuses():
    args = "launch --nodes 2 --gpus-per-node 1 --launcher torchrun --vocab-size 5000 data.corpus=/nonexistent"
    cmd = [sys.executable, "-m", "launch.launch_cli", *args.split(), "--config", str(DEBUG)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "torchrun --nnodes 2 --nproc_per_node 1" in proc.stdout
    assert "scgrn launch: error:" in proc.stderr and "Run the printed command(s) on each node" in proc.stderr
    assert "Traceback" not in proc.stderr
