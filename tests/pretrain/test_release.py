"""Release round trip: `scgrn export` output loaded with `load_release` gives the engine's outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, make_adata

SCRIPT = r"""
import json, sys, torch
from pretrain.config import PretrainConfig
from pretrain.trainer import Trainer
from pretrain.release import export_release, load_release
from data_prep.loader import StreamingCellDataset

family, corpus, run_dir, release = sys.argv[1:5]
cfg_path = {"scbert": "launch/configs/pretrain/debug.yaml", "exceiver": "launch/configs/pretrain/exceiver-debug.yaml"}
cfg = PretrainConfig.load(cfg_path[family], [f"data.corpus={corpus}", f"train.out_dir={run_dir}", "train.steps=6",
                                             "train.save_every=6", "train.eval_every=6", "parallel.zero_stage=3"])
trainer = Trainer(cfg)
trainer.train()
batch = next(iter(StreamingCellDataset(corpus, split="val", shuffle=False, batch_size=8)))
inputs = batch.to_torch()
trainer.engine.eval()
with torch.no_grad():
    a = trainer.engine(inputs, generator=torch.Generator().manual_seed(7))
export_release(run_dir, release)
model, vocab = load_release(release)
with torch.no_grad():
    b = model(inputs, generator=torch.Generator().manual_seed(7))
print(json.dumps({"engine": float(a["loss"]), "release": float(b["loss"]), "vocab": vocab.size}))
"""


@pytest.mark.parametrize("family", ["scbert", "exceiver"])
def test_export_round_trip_matches_engine(tmp_path, family, cli):
    adata = make_adata(400, 60, seed=5)
    adata.write_h5ad(tmp_path / "a.h5ad")
    cli("shard", tmp_path / "a.h5ad", "--out", tmp_path / "corpus", "--quiet", "--val-fraction", "0.2", check=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            family,
            str(tmp_path / "corpus"),
            str(tmp_path / "run"),
            str(tmp_path / "release"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["engine"] == pytest.approx(out["release"], rel=1e-6)
    release = tmp_path / "release"
    assert {p.name for p in release.iterdir()} == {
        "model.safetensors",
        "config.json",
        "vocab.json",
        "training_summary.json",
        "README.md",
    }
    summary = json.loads((release / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["corpus_manifest_sha256"]
    # The CLI path too, and a clear error for a directory that is no run.
    again = cli("export", tmp_path / "run", "--out", tmp_path / "release2")
    assert again.returncode == 0, again.stderr
    bad = cli("export", tmp_path, "--out", tmp_path / "release3")
    assert bad.returncode == 2 and "no complete checkpoint" in bad.stderr


def test_load_release_refuses_a_damaged_release(tmp_path):
    from pretrain.config import ConfigError
    from pretrain.release import load_release

    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else", "version": 9}))
    with pytest.raises(ConfigError, match="scgrn-release"):
        load_release(tmp_path)
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_release(tmp_path / "missing")
