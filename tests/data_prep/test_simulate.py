"""Tests for data_prep.simulate: the GRN-driven count simulator.

The simulator backs the demo dataset and scale benchmarks, so these tests pin
what downstream code relies on: determinism, the AnnData contract, a valid
ground-truth network, and a real (non-trivial) regulatory signal in the counts.
"""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from data_prep import simulate as sim
from data_prep.simulate import SimulationConfig, simulate, write_simulation

SMALL = SimulationConfig(n_cells=300, n_genes=120, n_tfs=15, seed=7)


@pytest.fixture(scope="module")
def default_sim() -> tuple[anndata.AnnData, pd.DataFrame]:
    return simulate(SimulationConfig())


def _same(a: tuple[anndata.AnnData, pd.DataFrame], b: tuple[anndata.AnnData, pd.DataFrame]) -> bool:
    (xa, ea), (xb, eb) = a, b
    return (
        xa.X.shape == xb.X.shape
        and (xa.X != xb.X).nnz == 0
        and xa.obs.equals(xb.obs)
        and xa.var.equals(xb.var)
        and ea.equals(eb)
    )


def test_same_seed_is_identical_and_different_seed_differs() -> None:
    first = simulate(SMALL)
    assert _same(first, simulate(SMALL))
    other = simulate(SimulationConfig(n_cells=300, n_genes=120, n_tfs=15, seed=8))
    assert (first[0].X != other[0].X).nnz > 0
    assert not first[1].equals(other[1])


def test_other_states_share_the_network_and_nothing_else() -> None:
    """states_seed: a pretraining corpus and a GRN sample of one network in different cell states."""
    sample = simulate(SMALL)
    corpus = simulate(SimulationConfig(n_cells=300, n_genes=120, n_tfs=15, seed=7, states_seed=1))
    assert corpus[1].equals(sample[1])  # the same true network
    assert (corpus[0].X != sample[0].X).nnz > 0  # other cells
    assert _same(corpus, simulate(SimulationConfig(n_cells=300, n_genes=120, n_tfs=15, seed=7, states_seed=1)))
    assert (simulate(SimulationConfig(n_cells=300, n_genes=120, n_tfs=15, seed=7, states_seed=2))[0].X
            != corpus[0].X).nnz > 0  # fmt: skip
    # other states: new TF activity programs and proportions over the same weights and baselines
    genes = list(sample[0].var_names)
    net_a = sim._draw_network(SMALL, genes)
    net_b = sim._draw_network(SimulationConfig(n_cells=300, n_genes=120, n_tfs=15, seed=7, states_seed=1), genes)
    assert np.array_equal(net_a.weights, net_b.weights) and np.array_equal(net_a.baseline, net_b.baseline)
    assert np.abs(net_a.programs - net_b.programs).mean() > 0.5 and not np.allclose(net_a.type_probs, net_b.type_probs)
    # the regulation is the network's: in both, |r| ranks true TF -> target pairs above the other TF -> gene pairs
    from sklearn.metrics import roc_auc_score

    truth = np.zeros((15, 120), dtype=bool)
    truth[[genes.index(t) for t in sample[1]["tf"]], [genes.index(g) for g in sample[1]["target"]]] = True
    for adata, _ in (sample, corpus):
        r = np.abs(np.corrcoef(np.log1p(adata.X.toarray()).T)[:15, 15:])  # (TFs, targets)
        assert roc_auc_score(truth[:, 15:].ravel(), np.nan_to_num(r).ravel()) > 0.6  # chance 0.5 ± 0.02
    # the default output is pinned: states_seed=None draws exactly what the simulator always drew
    import hashlib

    digest = hashlib.sha256()
    for part in (sample[0].X.data, sample[0].X.indices, sample[0].X.indptr):
        digest.update(part.tobytes())
    digest.update(sample[1].to_csv().encode())
    assert digest.hexdigest() == "ac20abb0313ef3ae7248182f5fd0ca3e9444ceb14aa53d57f08cdf2070d0ae93"


def test_chunks_use_independent_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    # With small chunks, full chunks do not depend on how many cells follow
    # them: this checks per-chunk seeding and CSR assembly across chunks.
    monkeypatch.setattr(sim, "CHUNK_SIZE", 100)
    cfg = dict(n_genes=60, n_tfs=8, seed=3)
    long_adata, _ = simulate(SimulationConfig(n_cells=250, **cfg))
    short_adata, _ = simulate(SimulationConfig(n_cells=200, **cfg))
    assert (long_adata.X[:200] != short_adata.X).nnz == 0
    assert list(long_adata.obs["cell_type"][:200]) == list(short_adata.obs["cell_type"])
    assert np.all(np.diff(long_adata.X.indptr) >= sim.MIN_NONZERO_PER_CELL)


def test_anndata_contract(default_sim: tuple[anndata.AnnData, pd.DataFrame]) -> None:
    adata, _ = default_sim
    cfg = SimulationConfig()
    assert adata.shape == (cfg.n_cells, cfg.n_genes)
    assert isinstance(adata.X, sp.csr_matrix)
    assert adata.X.dtype == np.int32
    assert adata.X.data.size > 0 and adata.X.data.min() >= 1  # only positive counts stored
    assert adata.var_names.is_unique and adata.obs_names.is_unique
    assert list(adata.var_names[:2]) == ["TF0001", "TF0002"]
    assert adata.var_names[cfg.n_tfs] == "G00001"
    assert adata.obs_names[0] == "cell000001"
    assert adata.var["is_tf"].dtype == bool
    assert adata.var["is_tf"].sum() == cfg.n_tfs and adata.var["is_tf"].iloc[: cfg.n_tfs].all()
    assert isinstance(adata.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert len(adata.obs["cell_type"].cat.categories) == cfg.n_cell_types

    nnz_per_cell = np.diff(adata.X.indptr)
    assert nnz_per_cell.min() >= sim.MIN_NONZERO_PER_CELL
    assert 0.10 <= nnz_per_cell.mean() / cfg.n_genes <= 0.40
    # library_size_mean is whole-transcriptome depth; the panel gets its share.
    expected_total = cfg.library_size_mean * cfg.n_genes / sim.TRANSCRIPTOME_SIZE
    assert adata.X.sum(axis=1).mean() == pytest.approx(expected_total, rel=0.15)


def test_edges_are_a_valid_ground_truth(default_sim: tuple[anndata.AnnData, pd.DataFrame]) -> None:
    adata, edges = default_sim
    assert list(edges.columns) == ["tf", "target", "weight"]
    assert edges["weight"].dtype == np.float64
    assert (edges["weight"] != 0).all()
    assert (edges["weight"] > 0).any() and (edges["weight"] < 0).any()
    is_tf = adata.var["is_tf"]
    assert edges["tf"].isin(adata.var_names).all() and edges["target"].isin(adata.var_names).all()
    assert is_tf.loc[edges["tf"]].all()
    assert not is_tf.loc[edges["target"]].any()
    assert not edges.duplicated(["tf", "target"]).any()
    targets = set(adata.var_names[~is_tf.to_numpy()])
    assert set(edges["target"]) == targets  # every target has >= 1 regulator
    per_target = len(edges) / len(targets)
    assert 1.5 <= per_target <= 3.0  # ~ max(1, Poisson(2.0))


def test_true_edges_carry_signal(default_sim: tuple[anndata.AnnData, pd.DataFrame]) -> None:
    adata, edges = default_sim
    expr = np.log1p(adata.X.toarray().astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(expr.T)
    pos = {g: i for i, g in enumerate(adata.var_names)}
    tf_i = edges["tf"].map(pos).to_numpy()
    tg_i = edges["target"].map(pos).to_numpy()
    edge_r = np.nanmean(np.abs(corr[tf_i, tg_i]))

    n_tfs = int(adata.var["is_tf"].sum())
    rng = np.random.default_rng(0)
    cand_tf = rng.integers(0, n_tfs, 5000)
    cand_tg = rng.integers(n_tfs, adata.n_vars, 5000)
    keep = ~np.isin(cand_tf * adata.n_vars + cand_tg, tf_i * adata.n_vars + tg_i)  # drop true edges
    null_r = np.nanmean(np.abs(corr[cand_tf[keep], cand_tg[keep]]))
    assert edge_r > 2.0 * null_r and edge_r - null_r > 0.04, (edge_r, null_r)


def test_poisson_limit_runs() -> None:
    adata, _ = simulate(SimulationConfig(n_cells=50, n_genes=30, n_tfs=5, dispersion=0.0))
    assert adata.X.dtype == np.int32 and np.diff(adata.X.indptr).min() >= 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_cells", 0),
        ("n_cells", 2.5),
        ("n_cells", True),
        ("n_genes", 1),
        ("n_tfs", 0),
        ("n_tfs", 120),
        ("seed", -1),
        ("seed", "0"),
        ("edges_per_target", 0.0),
        ("edges_per_target", float("nan")),
        ("n_cell_types", 0),
        ("library_size_mean", -5.0),
        ("library_size_mean", float("inf")),
        ("dispersion", -0.1),
        ("states_seed", -1),
        ("states_seed", 1.5),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    kwargs = {"n_genes": 120, "n_tfs": 15, field: value}
    with pytest.raises(ValueError, match=f"field {field} = "):
        SimulationConfig(**kwargs)


def test_write_simulation_round_trips_atomically(tmp_path: Path) -> None:
    out = tmp_path / "demo.h5ad"
    out.write_bytes(b"stale")  # an existing file is replaced, not appended to
    h5ad_path, edges_path = write_simulation(SMALL, out)
    assert h5ad_path == out and edges_path == tmp_path / "demo.edges.tsv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.edges.tsv", "demo.h5ad"]

    adata, edges = simulate(SMALL)
    back = anndata.read_h5ad(h5ad_path)
    assert isinstance(back.X, sp.csr_matrix) and back.X.dtype == np.int32
    assert (back.X != adata.X).nnz == 0
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    pd.testing.assert_frame_equal(back.var, adata.var)
    assert {k: back.uns["simulation"][k] for k in adata.uns["simulation"]} == adata.uns["simulation"]

    assert edges_path.read_text().splitlines()[0] == "tf\ttarget\tweight"
    pd.testing.assert_frame_equal(pd.read_csv(edges_path, sep="\t"), edges)
