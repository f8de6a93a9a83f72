"""Shared fixtures: tiny seeded AnnData inputs, the shared real data (skip, or fail under CI), CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# `make test` runs two pytest-xdist workers on the CI's two cores. Each worker, and every process it starts, runs
# torch / OpenMP on one thread whose idle waits sleep rather than spin: two workers spinning against each other on
# two cores run several times slower than either alone. Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def require_shared(*parts: str) -> Path:
    """Path under ../shared/data; skip with a reason when absent, fail when CI=true."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"real data not found at {path} (../shared/data sits beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


def make_counts(n_cells: int = 300, n_genes: int = 60, density: float = 0.2, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    m = sp.random(
        n_cells, n_genes, density=density, format="csr", random_state=rng, data_rvs=lambda n: rng.integers(1, 50, n)
    ).astype(np.int32)
    # Every cell expresses at least one gene, so none is dropped as empty unless a test wants that.
    lil = m.tolil()
    for i in np.flatnonzero(np.diff(m.indptr) == 0):
        lil[i, i % n_genes] = 1
    return lil.tocsr()


def make_adata(n_cells: int = 300, n_genes: int = 60, seed: int = 0, density: float = 0.2) -> ad.AnnData:
    x = make_counts(n_cells, n_genes, density, seed)
    rng = np.random.default_rng(seed + 1)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], n_cells)), "n_counts": np.asarray(x.sum(1)).ravel()},
        index=[f"cell{i:05d}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"gene_ids": [f"ENSG{i:011d}" for i in range(n_genes)]}, index=[f"GENE{i}" for i in range(n_genes)]
    )
    return ad.AnnData(X=x, obs=obs, var=var)


@pytest.fixture
def tiny_adata() -> ad.AnnData:
    return make_adata()


@pytest.fixture
def tiny_h5ad(tmp_path: Path, tiny_adata: ad.AnnData) -> Path:
    path = tmp_path / "tiny.h5ad"
    tiny_adata.write_h5ad(path)
    return path


def run_cli(
    *args: str, check: bool = False, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `scgrn ARGS` in a subprocess (the real entry point), capturing output."""
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"scgrn {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stderr}")
    return proc


def small_corpus(root: Path, n_cells: int, seed: int, **options) -> Path:
    """root/cells.h5ad (`make_adata(n_cells, 40, seed)`) sharded into root/corpus, both formats, 100 cells per shard,
    25 per webdataset sample (`options` override ShardConfig fields). Returns the corpus directory."""
    from data_prep.config import ShardConfig
    from data_prep.sharder import shard

    make_adata(n_cells, 40, seed=seed).write_h5ad(root / "cells.h5ad")
    config = {"cells_per_shard": 100, "cells_per_sample": 25, **options}
    shard(ShardConfig(inputs=[root / "cells.h5ad"], out=root / "corpus", **config), progress=False)
    return root / "corpus"


def check_inspect_and_validate(local: Path, url: str) -> None:
    """`scgrn inspect --json` of the corpus at `url` equals that of its local copy (but for where it is), and
    `scgrn validate url` (every shard streamed and hashed) passes."""
    import json

    here = json.loads(run_cli("inspect", local, "--json", check=True).stdout)
    there = json.loads(run_cli("inspect", url, "--json", check=True).stdout)
    assert (here.pop("directory"), there.pop("directory")) == (str(local), url)
    assert there == here
    proc = run_cli("validate", url)
    assert proc.returncode == 0 and f"{url}: valid" in proc.stdout, proc.stderr


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def pbmc_debug_release(tmp_path_factory):
    """A debug scBERT trained 10 steps on PBMC 3k, sharded with its cell types, exported through the CLI (which runs
    the auto-eval on the corpus's validation split); shared by the finetune CLI tests. Returns the release folder and
    the export's process."""
    counts = require_shared("counts", "human_pbmc3k_10x.h5ad")
    root = tmp_path_factory.mktemp("pbmc-release")
    run_cli("shard", counts, "--out", root / "corpus", "--obs-columns", "cell_type", "--quiet", check=True)
    run_cli("pretrain", "--config", "launch/configs/pretrain/debug.yaml", f"data.corpus={root / 'corpus'}",
            f"train.out_dir={root / 'run'}", "train.steps=10", "train.save_every=10", "train.eval_every=10",
            check=True)  # fmt: skip
    export = run_cli("export", root / "run", "--out", root / "release", "--quiet", check=True)
    return root / "release", export
