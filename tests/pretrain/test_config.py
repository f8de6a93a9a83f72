"""PretrainConfig: every shipped config loads and builds its model; bad fields and conflicts are all reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from pretrain.config import ConfigError, PretrainConfig, apply_override
from pretrain.model_factory import build_model, check_corpus, model_config

CONFIGS = sorted((REPO / "launch" / "configs" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_builds(path):
    cfg = PretrainConfig.load(path)
    fields = {k: v for k, v in cfg.model.items() if k != "init_from"}  # init_from: a release the user makes
    model = build_model(cfg.family, model_config(cfg.family, fields, vocab_size=1000))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_shipped_deepspeed_configs_resolve_for_each_stage():
    pytest.importorskip("deepspeed")
    from pretrain.parallel.engine import build_ds_config

    for stage in (0, 1, 2, 3):
        for precision in ("fp32", "bf16"):
            cfg = PretrainConfig.load(CONFIGS[0], [f"parallel.zero_stage={stage}", f"train.precision={precision}"])
            ds = build_ds_config(cfg, world_size=2)
            assert ds["zero_optimization"]["stage"] == stage
            assert ds["train_batch_size"] == 2 * cfg.data.micro_batch_cells * cfg.train.grad_accum
            assert ds["bf16"]["enabled"] is (precision == "bf16")
            # no per-step host reads of DeepSpeed's own (tests/pretrain/test_engine_syncs.py counts them)
            assert ds["timers"]["throughput"]["enabled"] is False
            assert ds["bf16"]["check_grad_overflow"] is False
            assert ds["wall_clock_breakdown"] is False


def test_a_deepspeed_json_without_the_step_settings_gets_them_and_one_that_sets_them_keeps_its_values(tmp_path):
    pytest.importorskip("deepspeed")
    from pretrain.parallel.engine import build_ds_config

    bare, chosen = tmp_path / "bare.json", tmp_path / "chosen.json"
    bare.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    chosen.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 2},
                "bf16": {"check_grad_overflow": True},
                "timers": {"throughput": {"enabled": True}},
            }
        )
    )
    on = ["train.precision=bf16", "parallel.zero_stage=2"]
    ds = build_ds_config(PretrainConfig.load(CONFIGS[0], [*on, f"parallel.deepspeed_config={bare}"]), 1)
    assert ds["timers"] == {"throughput": {"enabled": False}} and ds["bf16"]["check_grad_overflow"] is False
    ds = build_ds_config(PretrainConfig.load(CONFIGS[0], [*on, f"parallel.deepspeed_config={chosen}"]), 1)
    assert ds["timers"] == {"throughput": {"enabled": True}} and ds["bf16"]["check_grad_overflow"] is True


def test_all_bad_fields_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        PretrainConfig.from_dict(
            {"family": "gpt", "train": {"lr": -1, "precision": "fp16", "steps": 0}, "data": {"micro_batch_cells": 0}}
        )
    text = str(err.value)
    for field in ("family", "train.lr", "train.precision", "train.steps", "data.micro_batch_cells"):
        assert field in text


def test_unknown_keys_and_types_are_refused():
    with pytest.raises(ConfigError, match="unknown key") as err:
        PretrainConfig.from_dict({"train": {"learning_rate": 1e-3, "steps": "many"}})
    assert "train.steps" in str(err.value)
    with pytest.raises(ConfigError, match="unknown field"):
        model_config("scbert", {"n_layer": 2}, vocab_size=100)
    with pytest.raises(ConfigError, match="model"):
        model_config("scbert", {"d_model": 30, "n_heads": 4}, vocab_size=100)


def test_overrides():
    raw = {"train": {"lr": 1.0}}
    apply_override(raw, "train.lr=3e-4")
    apply_override(raw, "model.n_layers=2")
    assert raw == {"train": {"lr": 3e-4}, "model": {"n_layers": 2}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_override(raw, "train.lr")


def test_batch_arithmetic_and_json_conflicts_are_reported_together(tmp_path):
    pytest.importorskip("deepspeed")
    from pretrain.parallel.engine import build_ds_config

    ds_json = tmp_path / "ds.json"
    ds_json.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 4,
                "bf16": {"enabled": True},
                "zero_optimization": {"stage": 1},
                "optimizer": {"type": "Adam"},
            }
        )
    )
    cfg = PretrainConfig.load(
        CONFIGS[0],
        [
            f"parallel.deepspeed_config={ds_json}",
            "parallel.train_batch_size=64",
            "data.micro_batch_cells=8",
            "train.grad_accum=4",
            "parallel.zero_stage=2",
        ],
    )
    with pytest.raises(ConfigError) as err:
        build_ds_config(cfg, world_size=2)
    text = str(err.value)
    assert "world_size(2) x data.micro_batch_cells(8) x train.grad_accum(4) = 64" not in text  # 64 == 64: fine
    assert "train_micro_batch_size_per_gpu = 4 contradicts" in text
    assert "bf16.enabled" in text and "zero_optimization.stage = 1" in text and "'optimizer'" in text
    cfg = PretrainConfig.load(
        CONFIGS[0], ["parallel.train_batch_size=32", "data.micro_batch_cells=8", "train.grad_accum=4"]
    )
    with pytest.raises(
        ConfigError, match=r"world_size\(2\) x data.micro_batch_cells\(8\) x train.grad_accum\(4\) = 64"
    ):
        build_ds_config(cfg, world_size=2)


def test_model_refuses_a_corpus_of_the_wrong_kind_or_vocab():
    model = build_model("scbert", model_config("scbert", {}, vocab_size=100))
    with pytest.raises(ConfigError, match="log1p"):
        check_corpus(model, "log1p", "a" * 64, None)
    with pytest.raises(ConfigError, match="vocabulary"):
        check_corpus(model, "counts", "a" * 64, "b" * 64)
    check_corpus(model, "counts", "a" * 64, "a" * 64)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="no such file"):
        PretrainConfig.load(Path("nope.yaml"))
