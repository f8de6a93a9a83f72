"""A real `scgrn shard` SIGKILLed at three points resumes to the corpus an uninterrupted run writes.

The kill is timed with the test-only pause points of `data_prep.io_utils.pause_point` (`$SCGRN_TEST_PAUSE_AT`):
the run stops at the named point, writes a marker, and the test kills its whole process group (parent and
shard workers) with SIGKILL. test_resume.py covers a kill timed by polling `.progress` plus a corrupted shard;
this file covers the three points below, with 1 and 2 workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, make_adata, run_cli

from data_prep.io_utils import PAUSE_AT_ENV, PAUSE_MARKER_ENV, sha256_tree
from data_prep.manifest import RUN_SPECIFIC_KEYS

N_SHARDS = 12  # 3 inputs x 100 cells / 25 cells per shard


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[str], Path]:
    """Shard arguments (without --out) and an uninterrupted run's corpus."""
    root = tmp_path_factory.mktemp("kill_shard")
    inputs = []
    for i in range(3):
        path = root / f"in{i}.h5ad"
        make_adata(100, 40, seed=30 + i).write_h5ad(path)
        inputs.append(str(path))
    args = [*inputs, "--cells-per-shard", "25", "--format", "both", "--obs-columns", "cell_type", "--quiet"]
    run_cli("shard", *args, "--out", root / "ref", check=True)
    return args, root / "ref"


def _comparable(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in RUN_SPECIFIC_KEYS}


def _final_shard_files(out: Path) -> list[Path]:
    return sorted([*out.glob("zarr/shard-*.zarr"), *out.glob("webdataset/shard-*.tar")])


def _run_until_paused(args: list[str], out: Path, point: str, workers: int) -> None:
    """Start `scgrn shard`, wait until it reaches pause point `point`, then SIGKILL its process group."""
    marker = out.parent / f"{out.name}.paused"
    env = {**os.environ, PAUSE_AT_ENV: point, PAUSE_MARKER_ENV: str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "shard", *args, "--out", str(out), "--workers", str(workers)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill reaches the shard workers too
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    reached = marker.exists()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate()
    assert reached, f"run never reached pause point {point!r} (exit {proc.returncode}):\n{stderr.decode()}"
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    ("point", "workers"),
    [
        ("zarr-tmp:1", 1),  # shard 0 done; shard 1 fully written under its temporary name, not yet renamed
        (f"shard-done:{N_SHARDS // 2}", 2),  # mid-way: shard 6 in place but not recorded; the other worker ran on
        ("before-manifest", 1),  # every shard done and recorded, manifest.json not written
    ],
)
def test_kill_at_point_then_resume_equals_uninterrupted(tmp_path, reference, point, workers):
    args, ref_dir = reference
    ref = json.loads((ref_dir / "manifest.json").read_text())
    ref_sha = {info["path"]: info["sha256"] for s in ref["shards"] for info in s["files"].values()}
    out = tmp_path / "killed"
    _run_until_paused(args, out, point, workers)

    assert not (out / "manifest.json").exists()
    finals = _final_shard_files(out)
    # No partial shard under its final name: every final-named file is byte-identical to the reference's.
    for path in finals:
        rel = str(path.relative_to(out))
        assert sha256_tree(path) == ref_sha[rel], f"{rel}: partial or different shard visible under its final name"
    names = {str(p.relative_to(out)) for p in finals}
    if point == "zarr-tmp:1":
        assert names == {"zarr/shard-000000.zarr", "webdataset/shard-000000.tar"}
        assert list(out.glob("zarr/.shard-000001.zarr.tmp-*")), "the kill should leave shard 1 under its temp name"
    elif point.startswith("shard-done"):
        assert {"zarr/shard-000006.zarr", "webdataset/shard-000006.tar"} <= names
        assert not (out / ".progress" / "shard-000006.json").exists()
        assert len(names) < 2 * N_SHARDS
    else:
        assert len(names) == 2 * N_SHARDS
        assert len(list((out / ".progress").glob("shard-*.json"))) == N_SHARDS

    run_cli("shard", *args, "--out", out, "--workers", workers, "--resume", check=True)
    got = json.loads((out / "manifest.json").read_text())
    assert _comparable(got) == _comparable(ref)
    assert {str(p.relative_to(out)) for p in _final_shard_files(out)} == set(ref_sha)
    for rel, sha in ref_sha.items():
        assert sha256_tree(out / rel) == sha, rel
    leftovers = [p.name for p in [*out.glob("*/.shard-*"), *out.glob(".progress"), *out.glob(".spill")]]
    assert not leftovers, f"temporary files left after the resume: {leftovers}"
    check = run_cli("validate", out)
    assert check.returncode == 0, check.stderr
