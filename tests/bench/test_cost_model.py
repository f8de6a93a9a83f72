"""`scgrn bench train model`: the per-part roofline adds up to the model's own FLOP count and the step time, and
bad names are refused with the allowed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from bench import cost_model as cm
from pretrain.model_factory import build_model, model_config


@pytest.mark.parametrize("config", ["scbert-base", "scbert-base-h128", "exceiver-base"])
def test_the_parts_add_up_to_the_models_flops_and_the_step_time(tiny_h5ad, config):
    lengths = cm.cell_lengths(tiny_h5ad.parent)
    assert len(lengths) == 300 and lengths.min() > 0
    result = cm.predict(config, "H100", lengths, micro_batch_cells=32, vocab_size=1000)
    parts = result["parts"]
    assert parts["linear"]["flops"] + parts["attention"]["flops"] == pytest.approx(result["model_flops"])
    assert parts["linear"]["flops"] > 0 and parts["attention"]["flops"] > 0
    assert sum(p["seconds"] for p in parts.values()) == pytest.approx(result["device_seconds"])
    assert result["step_seconds"] == max(result["device_seconds"], result["host_seconds"])
    # the trainer's count for the same cells: 32 average cells of these lengths
    raw = yaml.safe_load((cm.CONFIGS / f"{config}.yaml").read_text())
    model = build_model(raw["family"], model_config(raw["family"], raw["model"], vocab_size=1000))
    expected = model.flops(lengths) * 32 / len(lengths)
    assert result["model_flops"] == pytest.approx(expected)
    peak = cm.GPUS["H100"].peak_bf16
    assert result["predicted_mfu"] == pytest.approx(result["model_flops"] / (result["step_seconds"] * peak))
    assert 0 < result["predicted_mfu"] < cm.GEMM_EFFICIENCY


def test_head_dim_128_spends_less_time_in_attention_on_the_same_flops(tiny_h5ad):
    lengths = cm.cell_lengths(tiny_h5ad.parent)
    h64, h128 = (cm.predict(c, "H100", lengths, 64, 1000) for c in ("scbert-base", "scbert-base-h128"))
    assert h64["model_flops"] == pytest.approx(h128["model_flops"])
    assert h128["parts"]["attention"]["seconds"] < h64["parts"]["attention"]["seconds"]


def test_the_cli_prints_the_table_and_refuses_unknown_names(tiny_h5ad, tmp_path, capsys):
    out = tmp_path / "model.json"
    assert cm.main(["--config", "scbert-base", "--counts", str(tiny_h5ad.parent), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "predicted MFU" in text and "attention" in text and "(predicted, not measured)" in text
    assert json.loads(out.read_text())[0]["gpu"] == "H100"
    assert cm.main(["--gpu", "V100", "--counts", str(tiny_h5ad.parent)]) == 2
    assert "--gpu 'V100'" in capsys.readouterr().err
    assert cm.main(["--config", "scbert-huge", "--counts", str(tiny_h5ad.parent)]) == 2
    assert "--config 'scbert-huge'" in capsys.readouterr().err
    assert cm.main(["--counts", str(tmp_path / "none")]) == 2
    assert "no .h5ad files" in capsys.readouterr().err


def test_cell_lengths_count_expressed_genes(tiny_h5ad, tiny_adata):
    np.testing.assert_array_equal(cm.cell_lengths(tiny_h5ad.parent), tiny_adata.X.getnnz(axis=1))
