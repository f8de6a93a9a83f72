"""`scgrn shard --resume` after a run killed mid-way gives the same corpus as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import REPO, make_adata

from data_prep.io_utils import sha256_tree


def _comparable(manifest: dict) -> dict:
    m = dict(manifest)
    for k in ("created", "command", "seconds"):
        m.pop(k)
    return m


def test_resume_after_kill_equals_uninterrupted(tmp_path, cli):
    make_adata(3000, 80, seed=21).write_h5ad(tmp_path / "a.h5ad")
    args = [tmp_path / "a.h5ad", "--cells-per-shard", "40", "--obs-columns", "cell_type", "--quiet"]
    cli("shard", *args, "--out", tmp_path / "ref", check=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "shard", *map(str, args), "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    progress = out / ".progress"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(progress.glob("shard-*.json"))) < 5:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(progress.glob("shard-*.json"))
    assert 5 <= len(done) < 75, "the run should be killed mid-way"
    assert not (out / "manifest.json").exists()

    # Corrupt one finished shard: resume must notice (checksum) and redo it rather than keep it.
    record = json.loads(done[0].read_text())
    victim = next((out / record["files"]["zarr"]["path"]).rglob("c/*"))
    victim.write_bytes(b"garbage")

    again = cli("shard", *args, "--out", out)
    assert again.returncode == 2 and "--resume" in again.stderr  # not silently overwritten
    cli("shard", *args, "--out", out, "--resume", check=True)

    ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    got = json.loads((out / "manifest.json").read_text())
    assert _comparable(got) == _comparable(ref)
    for shard in got["shards"]:
        for info in shard["files"].values():
            assert sha256_tree(out / info["path"]) == info["sha256"]
    assert not (out / ".progress").exists() and not (out / ".spill").exists()
    assert cli("validate", out).returncode == 0


def test_resume_of_a_finished_corpus_keeps_it(tmp_path, cli):
    make_adata(200, 30, seed=2).write_h5ad(tmp_path / "a.h5ad")
    args = [tmp_path / "a.h5ad", "--out", tmp_path / "c", "--quiet", "--cells-per-shard", "64"]
    cli("shard", *args, check=True)
    before = sha256_tree(tmp_path / "c" / "zarr")
    cli("shard", *args, "--resume", check=True)
    assert sha256_tree(tmp_path / "c" / "zarr") == before
