"""Every shipped launch config loads: DeepSpeed JSONs (through DeepSpeed's own validation), accelerate YAMLs (through
accelerate's loader), pretrain YAMLs (through pretrain's config loader and model factory); every recipe script passes
`bash -n`; and launch/zero_config.py resolves a ZeRO JSON exactly as pretrain/parallel/engine.py does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from launch.zero_config import read_zero_settings

CONFIGS = REPO / "launch" / "configs"
DS_JSONS = sorted((CONFIGS / "deepspeed").glob("*.json"))
ACCELERATE_YAMLS = sorted((CONFIGS / "accelerate").glob("*.yaml"))
PRETRAIN_YAMLS = sorted((CONFIGS / "pretrain").glob("*.yaml"))
SCRIPTS = sorted(p for p in (REPO / "launch" / "recipes").rglob("*") if p.suffix in (".sh", ".sbatch"))


def _stage(path: Path) -> int:
    return json.loads(path.read_text())["zero_optimization"]["stage"]


def test_the_shipped_set_is_complete():
    names = {p.name for p in DS_JSONS}
    assert {f"zero{s}.json" for s in range(4)} | {"zero2_offload.json", "zero3_offload.json"} <= names
    assert {p.name for p in ACCELERATE_YAMLS} >= {"cpu-2proc.yaml", "zero2-1node.yaml", "zero2-multinode.yaml"}
    assert SCRIPTS, "no recipe scripts found"


@pytest.mark.parametrize("path", DS_JSONS, ids=lambda p: p.name)
def test_deepspeed_json_validates_in_deepspeed(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    from pretrain.config import PretrainConfig

    stage = _stage(path)
    cfg = PretrainConfig.load(
        CONFIGS / "pretrain" / "debug.yaml", [f"parallel.zero_stage={stage}", f"parallel.deepspeed_config={path}"]
    )
    settings, problems = read_zero_settings(cfg, 1)
    assert problems == []
    DeepSpeedConfig(settings.resolved)  # pydantic: unknown or misspelled zero_optimization keys raise
    offloads = "offload" in path.stem
    assert (settings.offload_optimizer == "cpu") == offloads
    assert (settings.offload_params == "cpu") == (path.stem == "zero3_offload")
    if offloads:  # the offload configs say they need a GPU, and why no CPUAdam JIT build is involved
        comment = " ".join(json.loads(path.read_text())["_comment"])
        assert "NEEDS A CUDA GPU" in comment and "CPUAdam" in comment and "JIT" in comment


@pytest.mark.parametrize("path", ACCELERATE_YAMLS, ids=lambda p: p.name)
def test_accelerate_yaml_loads_in_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # refuses unknown keys
    assert str(config.distributed_type) in ("DistributedType.DEEPSPEED", "DEEPSPEED")
    ds_file = REPO / yaml.safe_load(path.read_text())["deepspeed_config"]["deepspeed_config_file"]
    assert ds_file.exists()


@pytest.mark.parametrize("path", PRETRAIN_YAMLS, ids=lambda p: p.name)
def test_pretrain_yaml_validates(path):
    from pretrain.config import PretrainConfig
    from pretrain.model_factory import model_config

    cfg = PretrainConfig.load(path)
    # every model field known and valid (model.init_from names a release made by the user: its config is the base,
    # so the file's own fields are checked against the family's defaults)
    model_config(cfg.family, {k: v for k, v in cfg.model.items() if k != "init_from"}, vocab_size=1000)
    _, problems = read_zero_settings(cfg, 8)
    assert problems == []


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(REPO / "launch" / "recipes")))
def test_recipe_script_parses(path):
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_recipes_show_the_asked_for_commands():
    recipes = REPO / "launch" / "recipes"
    text = {p.name: p.read_text() for p in recipes.rglob("*") if p.is_file()}
    deepspeed = text["pretrain_hostfile.sh"]
    assert "deepspeed --hostfile" in deepspeed and "--module pretrain" in deepspeed
    assert "localhost slots=2" in text["hostfile.localhost"]
    torchrun = text["pretrain_multinode.sh"]
    assert all(flag in torchrun for flag in ("--nnodes", "--node_rank", "--rdzv_backend c10d", "--rdzv_endpoint"))
    sbatch = text["pretrain.sbatch"]
    assert "#SBATCH --ntasks-per-node=1" in sbatch and "srun" in sbatch and "torchrun" in sbatch
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in sbatch
    assert "accelerate launch" in text["pretrain.sh"] and "-m pretrain --config" in text["pretrain.sh"]


# -- parity with the run itself ---------------------------------------------------------------------------------------
def _cases():
    for pretrain in PRETRAIN_YAMLS:
        for ds in DS_JSONS:
            yield pretrain, ds


@pytest.mark.parametrize(("pretrain", "ds"), list(_cases()), ids=lambda p: p.stem)
def test_zero_settings_match_the_engine(pretrain, ds):
    from pretrain.config import PretrainConfig
    from pretrain.parallel.engine import build_ds_config

    cfg = PretrainConfig.load(pretrain, [f"parallel.zero_stage={_stage(ds)}", f"parallel.deepspeed_config={ds}"])
    for world in (1, 8):
        settings, problems = read_zero_settings(cfg, world)
        assert problems == []
        assert settings.resolved == build_ds_config(cfg, world)


@pytest.mark.parametrize(
    "overrides",
    [
        ["parallel.train_batch_size=100"],  # pinned global batch not reached
        ["parallel.zero_stage=1", f"parallel.deepspeed_config={CONFIGS / 'deepspeed' / 'zero3.json'}"],  # stage
    ],
)
def test_both_refuse_the_same_conflicts(overrides):
    from pretrain.config import ConfigError, PretrainConfig
    from pretrain.parallel.engine import build_ds_config

    cfg = PretrainConfig.load(CONFIGS / "pretrain" / "debug.yaml", overrides)
    _, problems = read_zero_settings(cfg, 2)
    assert problems
    with pytest.raises(ConfigError):
        build_ds_config(cfg, 2)
