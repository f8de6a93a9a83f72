"""`bench/gpu/check.sh`: the device check fits one device command and walks every step on CPU with --dry-run.

The dry run is what CI can run of it: install and CUDA steps are skipped and named, the imports, the `gpu` tests'
collection, the cost model and a real (tiny, fp32) ZeRO-2 stop-and-go run, and the summary table is written."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from conftest import REPO, make_adata

CHECK = REPO / "bench" / "gpu" / "check.sh"


def _run(tmp_path, *args, env_extra=None, timeout=240):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    env.update(env_extra or {})
    return subprocess.run(["bash", str(CHECK), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def test_the_step_budgets_fit_one_device_command():
    text = CHECK.read_text()
    budgets = re.findall(r"^\s*T_INSTALL=(\d+) T_IMPORTS=(\d+) T_TESTS=(\d+) T_MODEL=(\d+) T_BENCH=(\d+) "
                         r"T_STRAIGHT=(\d+) T_FIRST=(\d+) T_RESUMED=(\d+)$", text, flags=re.MULTILINE)  # fmt: skip
    full, default = (sum(map(int, b)) for b in budgets)
    assert default <= 300 and full <= 540, (default, full)  # a device command may run 600 s


def test_a_dry_run_walks_every_step_and_writes_the_summary(tmp_path):
    counts = tmp_path / "counts"  # the check reads real count matrices (.gpu/counts); any .h5ad counts will do
    counts.mkdir()
    make_adata(240, 80, seed=5, density=0.3).write_h5ad(counts / "cells.h5ad")
    done = _run(tmp_path, "--dry-run", env_extra={"COUNTS": str(counts)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for n in range(1, 8):
        assert f"=== {n} " in done.stdout
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "DRY RUN on CPU" in summary
    assert re.search(r"\| stop-and-go \| equal: .* largest difference 0\.00e\+00", summary), summary
    assert "MFU scbert-base (predicted" in summary and "not run (dry run: needs CUDA)" in summary
    assert "ok   deepspeed" in (tmp_path / "out" / "imports.txt").read_text()


def test_the_first_failed_import_stops_the_check_with_the_reason(tmp_path):
    broken = tmp_path / "site" / "deepspeed"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libcudart.so.13: cannot open shared object file')\n")
    done = _run(tmp_path, "--dry-run", env_extra={"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}"})
    assert done.returncode == 3
    assert "FAIL deepspeed: ImportError: libcudart.so.13" in done.stdout and "Carry a wheel of deepspeed" in done.stdout
    assert "=== 3 " not in done.stdout  # nothing after the imports ran


@pytest.mark.parametrize("arg", ["--fast"])
def test_an_unknown_argument_is_refused(tmp_path, arg):
    done = _run(tmp_path, arg)
    assert done.returncode == 2 and "allowed: --full, --dry-run" in done.stderr
