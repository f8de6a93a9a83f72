"""Simulate single-cell RNA counts from a known gene regulatory network (GRN).

Why this exists: GRN inference needs data whose true network is known, both to
ship a small embedded demo dataset and to benchmark the pipeline at scale
(e.g. 1,000,000 cells x 2,000 genes) without downloading anything.

Generative model (all randomness from ``numpy.random.Generator``):

1. **Network.** The first ``n_tfs`` genes are transcription factors (TFs).
   Every non-TF target draws ``k = max(1, Poisson(edges_per_target))``
   regulators (capped at ``n_tfs``), sampled among TFs without replacement.
   Each edge gets a signed weight (~60% activating, ~40% repressing) with
   magnitude ``U(0.5, 1.0) * 1.2 / sqrt(k)``, so a gene with many regulators
   does not get an absurd expression range.  TFs themselves are driven only by
   cell type (no TF->TF edges), which keeps the network trivially acyclic.
2. **Cell types.** Each of ``n_cell_types`` states has its own TF activity
   program: a vector of log TF levels drawn ``N(0, 1)`` (i.e. log-normal TF
   levels).  Cell-type proportions come from a Dirichlet(5) draw.
3. **Cells.** A cell's latent log TF activity is its type's program plus
   ``N(0, 0.8^2)`` noise; this within-type variation is what carries the
   regulatory signal beyond cell-type identity.  Activities are standardised
   with the *population* mean / sd (computed analytically from the mixture,
   not from the sampled cells, so chunking cannot change them) into ``z``.
4. **Expression.** The negative-binomial mean is log-linear:
   ``log mu_cg = log L_c + log(share) + baseline_g + sum_j w_jg * z_cj - log C``
   (for a TF, the sum is just its own ``z``), with ``baseline_g ~ N(0, 1.2^2)``
   for the spread of gene abundances and ``L_c ~ LogNormal`` with mean
   ``library_size_mean`` (log-sd 0.35).  ``library_size_mean`` is the
   whole-transcriptome depth; the simulated genes are a panel of an implicit
   ``TRANSCRIPTOME_SIZE``-gene transcriptome and get on average
   ``share = min(1, n_genes / TRANSCRIPTOME_SIZE)`` of it (``C`` normalises the
   expected panel total; no per-cell renormalisation, so a target depends on
   its regulators only).  This is what makes counts realistically sparse:
   5000 UMIs spread over 500 genes would be mostly non-zero; real cells are not.
5. **Counts.** ``count ~ NB(mean=mu, dispersion=phi)`` with
   ``Var = mu + phi * mu^2`` (``phi = config.dispersion = 1/size``; 0 means
   Poisson), sampled as gamma-Poisson:
   ``lambda ~ Gamma(shape=1/phi, scale=phi*mu)``, ``count ~ Poisson(lambda)``.
   A cell with fewer than ``min(3, n_genes)`` non-zero genes gets a count of 1
   on its highest-mean genes, so every cell is usable downstream.

Determinism and scale: the network is drawn from ``SeedSequence(seed,
spawn_key=(0,))`` and cell chunk ``i`` (fixed size ``CHUNK_SIZE``) from
``SeedSequence(seed, spawn_key=(1, i))`` (with ``states_seed`` s: the states
from ``(2, s)`` and the chunks from ``(3, s, i)``, the network unchanged) -- the same streams as
``SeedSequence(seed).spawn(2)[1].spawn(i + 1)[i]`` -- so the output depends on
the config only.  Each chunk is simulated densely (vectorised, no
per-cell loop), converted to CSR and only its non-zeros are kept, so memory is
bounded by the number of non-zeros, never by ``n_cells * n_genes``.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from data_prep.errors import DataPrepError, InputError
from data_prep.io_utils import out_dir_problem, publish

__all__ = ["CHUNK_SIZE", "SimulationConfig", "simulate", "write_simulation"]

#: Cells simulated per chunk.  Fixed (not a parameter) because per-chunk random
#: streams are keyed by chunk index: changing it would change the output.
CHUNK_SIZE = 10_000

#: Size of the implicit whole transcriptome that ``library_size_mean`` refers
#: to.  The simulated genes are a panel of it and receive on average
#: ``min(1, n_genes / TRANSCRIPTOME_SIZE)`` of each cell's library; this is what
#: makes counts realistically sparse (5000 UMIs over 500 genes would be dense).
TRANSCRIPTOME_SIZE = 10_000

#: Every cell gets at least this many non-zero genes (capped at n_genes).
MIN_NONZERO_PER_CELL = 3

# Model constants (see module docstring).  Changing any changes the output.
_FRACTION_ACTIVATING = 0.6
_WEIGHT_MAGNITUDE = (0.5, 1.0)
_WEIGHT_SCALE = 1.2
_PROGRAM_SD = 1.0
_CELL_NOISE_SD = 0.8
_BASELINE_SD = 1.2
_LIBRARY_LOG_SD = 0.35
_DIRICHLET_ALPHA = 5.0
# Library sizes are bounded so that int32 counts cannot overflow.
_MAX_LIBRARY_SIZE_MEAN = 1e7


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of :func:`simulate`; the output is a pure function of these.

    ``dispersion`` is the negative-binomial dispersion ``phi = 1/size`` in the
    ``Var = mu + phi * mu**2`` parameterisation (``phi = 0`` gives Poisson).
    """

    n_cells: int = 2000
    n_genes: int = 500
    n_tfs: int = 50  # the first n_tfs genes are transcription factors
    seed: int = 0
    edges_per_target: float = 2.0  # mean number of TF regulators per non-TF target
    n_cell_types: int = 4  # cell states with different TF activity programs
    library_size_mean: float = 5000.0  # whole-transcriptome UMIs/cell; see TRANSCRIPTOME_SIZE
    dispersion: float = 0.5  # NB phi = 1/size: Var = mu + phi * mu^2
    # Other cell states of the same network: with a states_seed, the cell-type programs and proportions and the cells
    # come from their own streams (keyed by seed and states_seed), while the network (regulators, weights, baselines)
    # stays the one of `seed`. A pretraining corpus and a GRN sample of one network, in different states, are two
    # simulations with one seed and two states_seeds. None: the states of `seed` (the default output, unchanged).
    states_seed: int | None = None

    def __post_init__(self) -> None:
        """Validate eagerly so a bad config fails here, not deep inside sampling."""
        n_genes_ok = _is_int(self.n_genes) and self.n_genes >= 2
        checks: list[tuple[str, bool, str, str]] = [
            (
                "n_cells",
                _is_int(self.n_cells) and self.n_cells >= 1,
                "an integer >= 1",
                "pass the number of cells to simulate, e.g. 2000",
            ),
            (
                "n_genes",
                n_genes_ok,
                "an integer >= 2 (at least one TF and one target)",
                "pass the number of genes, e.g. 500",
            ),
            (
                "n_tfs",
                _is_int(self.n_tfs) and self.n_tfs >= 1,
                "an integer >= 1",
                "pass the number of transcription factors, e.g. 50",
            ),
            (
                "n_tfs",
                not (n_genes_ok and _is_int(self.n_tfs)) or self.n_tfs < self.n_genes,
                f"an integer < n_genes = {self.n_genes!r}",
                "leave at least one non-TF target gene (lower n_tfs or raise n_genes)",
            ),
            ("seed", _is_int(self.seed) and self.seed >= 0, "a non-negative integer", "pass e.g. seed=0"),
            (
                "states_seed",
                self.states_seed is None or (_is_int(self.states_seed) and self.states_seed >= 0),
                "None or a non-negative integer",
                "leave it unset for the states of `seed`, or pass e.g. states_seed=1 for other states",
            ),
            (
                "edges_per_target",
                _is_real(self.edges_per_target) and 0 < self.edges_per_target < math.inf,
                "a finite number > 0",
                "pass the mean number of regulators per target, e.g. 2.0",
            ),
            (
                "n_cell_types",
                _is_int(self.n_cell_types) and self.n_cell_types >= 1,
                "an integer >= 1",
                "pass the number of cell states, e.g. 4",
            ),
            (
                "library_size_mean",
                _is_real(self.library_size_mean) and 0 < self.library_size_mean <= _MAX_LIBRARY_SIZE_MEAN,
                f"a number in (0, {_MAX_LIBRARY_SIZE_MEAN:g}]",
                "pass the mean whole-transcriptome counts per cell, e.g. 5000.0",
            ),
            (
                "dispersion",
                _is_real(self.dispersion) and 0 <= self.dispersion < math.inf,
                "a finite number >= 0",
                "pass the NB dispersion phi = 1/size (0 for Poisson), e.g. 0.5",
            ),
        ]
        for name, ok, must, fix in checks:
            if not ok:
                value = getattr(self, name)
                msg = f"field {name} = {value!r} is invalid: must be {must}; {fix}"
                raise DataPrepError(msg)


@dataclass(frozen=True)
class _Network:
    """Everything shared by all cells: drawn once from the network stream."""

    weights: np.ndarray  # (n_tfs, n_genes) effect of standardised TF activity on log abundance
    edges: pd.DataFrame
    baseline: np.ndarray  # (n_genes,) log relative abundance
    programs: np.ndarray  # (n_cell_types, n_tfs) log TF activity per type
    type_probs: np.ndarray  # (n_cell_types,)
    activity_mean: np.ndarray  # (n_tfs,) population mean of latent log activity
    activity_sd: np.ndarray  # (n_tfs,) population sd of latent log activity
    log_scale: float  # log(panel share / C): puts the expected panel total at share * L_c


def _gene_names(config: SimulationConfig) -> list[str]:
    n_targets = config.n_genes - config.n_tfs
    tf_width = max(4, len(str(config.n_tfs)))
    target_width = max(5, len(str(n_targets)))
    return [f"TF{i:0{tf_width}d}" for i in range(1, config.n_tfs + 1)] + [
        f"G{i:0{target_width}d}" for i in range(1, n_targets + 1)
    ]


def _cell_type_names(n_types: int) -> list[str]:
    width = max(2, len(str(n_types)))
    return [f"type{i:0{width}d}" for i in range(1, n_types + 1)]


def _draw_network(config: SimulationConfig, genes: list[str]) -> _Network:
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    n_tfs, n_genes = config.n_tfs, config.n_genes
    n_targets = n_genes - n_tfs

    # Regulator sets: a random permutation of TFs per target, keep the first k.
    k = np.clip(rng.poisson(config.edges_per_target, size=n_targets), 1, n_tfs)
    order = np.argsort(rng.random((n_targets, n_tfs)), axis=1)
    keep = np.arange(n_tfs)[None, :] < k[:, None]
    target_local, rank = np.nonzero(keep)  # row-major: grouped by target
    tf_idx = order[target_local, rank]
    sign = np.where(rng.random(tf_idx.size) < _FRACTION_ACTIVATING, 1.0, -1.0)
    magnitude = rng.uniform(*_WEIGHT_MAGNITUDE, size=tf_idx.size)
    weight = sign * magnitude * _WEIGHT_SCALE / np.sqrt(k[target_local])
    target_idx = target_local + n_tfs

    weights = np.zeros((n_tfs, n_genes))
    weights[tf_idx, target_idx] = weight
    weights[np.arange(n_tfs), np.arange(n_tfs)] = 1.0  # a TF's mRNA tracks its activity

    # Sort edges by (target, tf) so the table is stable and easy to read.
    sort = np.lexsort((tf_idx, target_idx))
    gene_arr = np.asarray(genes, dtype=object)
    edges = pd.DataFrame(
        {
            "tf": gene_arr[tf_idx[sort]],
            "target": gene_arr[target_idx[sort]],
            "weight": weight[sort].astype(np.float64),
        }
    )

    baseline = rng.normal(0.0, _BASELINE_SD, size=n_genes)
    programs = rng.normal(0.0, _PROGRAM_SD, size=(config.n_cell_types, n_tfs))
    type_probs = rng.dirichlet(np.full(config.n_cell_types, _DIRICHLET_ALPHA))
    if config.states_seed is not None:  # other states of this network (drawn after the above: same network stream)
        states = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2, config.states_seed)))
        programs = states.normal(0.0, _PROGRAM_SD, size=(config.n_cell_types, n_tfs))
        type_probs = states.dirichlet(np.full(config.n_cell_types, _DIRICHLET_ALPHA))
    activity_mean = type_probs @ programs
    between = type_probs @ (programs - activity_mean) ** 2
    activity_sd = np.sqrt(between + _CELL_NOISE_SD**2)

    # C ~= E[sum_g exp(baseline_g + sum_j w_jg z_j)], treating z as standard normal.
    log_c = float(np.logaddexp.reduce(baseline + 0.5 * (weights**2).sum(axis=0)))
    share = min(1.0, n_genes / TRANSCRIPTOME_SIZE)
    return _Network(
        weights,
        edges,
        baseline,
        programs,
        type_probs,
        activity_mean,
        activity_sd,
        math.log(share) - log_c,
    )


def _simulate_chunk(
    config: SimulationConfig, net: _Network, chunk_index: int, n: int
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Simulate ``n`` cells of chunk ``chunk_index``; return (CSR counts, cell-type codes)."""
    key = (1, chunk_index) if config.states_seed is None else (3, config.states_seed, chunk_index)
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=key))
    n_tfs = config.n_tfs
    types = rng.choice(config.n_cell_types, size=n, p=net.type_probs)
    activity = net.programs[types] + rng.normal(0.0, _CELL_NOISE_SD, size=(n, n_tfs))
    z = (activity - net.activity_mean) / net.activity_sd
    log_lib = rng.normal(math.log(config.library_size_mean) - _LIBRARY_LOG_SD**2 / 2, _LIBRARY_LOG_SD, size=n)

    # log mu_cg = log L_c + log(panel share) + baseline_g + sum_j w_jg z_cj - log C.
    mu = z @ net.weights
    mu += net.baseline
    mu += (log_lib + net.log_scale)[:, None]
    np.exp(mu, out=mu)

    if config.dispersion > 0:
        shape = 1.0 / config.dispersion
        mu *= config.dispersion  # gamma scale = phi * mu, so E[lambda] = mu
        lam = rng.standard_gamma(shape, size=mu.shape)
        lam *= mu
    else:
        lam = mu
    counts = rng.poisson(lam).astype(np.int32, copy=False)

    # Guarantee a few non-zero genes per cell: bump the highest-mean genes to >= 1.
    min_nz = min(MIN_NONZERO_PER_CELL, config.n_genes)
    poor = np.flatnonzero(np.count_nonzero(counts, axis=1) < min_nz)
    if poor.size:
        top = np.argpartition(-mu[poor], min_nz - 1, axis=1)[:, :min_nz]
        rows = np.repeat(poor, min_nz)
        cols = top.ravel()
        counts[rows, cols] = np.maximum(counts[rows, cols], 1)
    return sp.csr_matrix(counts), types


def simulate(config: SimulationConfig) -> tuple[anndata.AnnData, pd.DataFrame]:
    """Simulate counts from a random GRN; return ``(adata, edges)``.

    ``adata.X`` is a ``scipy.sparse.csr_matrix`` of int32 counts (cells x
    genes); ``var_names`` are ``TF0001...`` (TFs, first) then ``G00001...``;
    ``var["is_tf"]`` is bool; ``obs_names`` are ``cell000001...``;
    ``obs["cell_type"]`` is categorical; ``uns["simulation"]`` records the
    config.  ``edges`` has columns ``tf``, ``target``, ``weight`` (signed:
    + activation, - repression) and is the ground-truth network.
    """
    if not isinstance(config, SimulationConfig):
        msg = f"config must be a SimulationConfig, got {type(config).__name__}"
        raise TypeError(msg)
    genes = _gene_names(config)
    net = _draw_network(config, genes)

    data_parts: list[np.ndarray] = []
    index_parts: list[np.ndarray] = []
    row_nnz_parts: list[np.ndarray] = []
    type_parts: list[np.ndarray] = []
    for chunk_index, start in enumerate(range(0, config.n_cells, CHUNK_SIZE)):
        n = min(CHUNK_SIZE, config.n_cells - start)
        chunk, types = _simulate_chunk(config, net, chunk_index, n)
        data_parts.append(chunk.data)
        index_parts.append(chunk.indices.astype(np.int32, copy=False))
        row_nnz_parts.append(np.diff(chunk.indptr))
        type_parts.append(types)

    # Concatenate one array at a time and drop the parts, to cap peak memory.
    row_nnz = np.concatenate(row_nnz_parts)
    nnz = int(row_nnz.sum())
    idx_dtype = np.int32 if nnz <= np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(config.n_cells + 1, dtype=idx_dtype)
    np.cumsum(row_nnz, out=indptr[1:])
    data = np.concatenate(data_parts).astype(np.int32, copy=False)
    data_parts.clear()
    indices = np.concatenate(index_parts).astype(idx_dtype, copy=False)
    index_parts.clear()
    X = sp.csr_matrix((data, indices, indptr), shape=(config.n_cells, config.n_genes))

    type_names = _cell_type_names(config.n_cell_types)
    cell_width = max(6, len(str(config.n_cells)))
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical.from_codes(np.concatenate(type_parts), categories=type_names)},
        index=pd.Index([f"cell{i:0{cell_width}d}" for i in range(1, config.n_cells + 1)]),
    )
    is_tf = np.zeros(config.n_genes, dtype=bool)
    is_tf[: config.n_tfs] = True
    var = pd.DataFrame({"is_tf": is_tf}, index=pd.Index(genes))
    adata = anndata.AnnData(X=X, obs=obs, var=var, uns={"simulation": asdict(config)})
    return adata, net.edges


def _atomic_target(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_simulation(config: SimulationConfig, out_h5ad: Path) -> tuple[Path, Path]:
    """Simulate and write ``out_h5ad`` plus ``<stem>.edges.tsv`` next to it.

    Both files are written to a temporary name in the destination directory
    and moved into place with ``os.replace``, so readers never see a partial
    file and an interrupted run leaves no half-written output.  Returns
    ``(h5ad_path, edges_path)``.
    """
    out_h5ad = Path(out_h5ad)
    edges_path = out_h5ad.with_name(f"{out_h5ad.stem}.edges.tsv")
    if (why := out_dir_problem(out_h5ad.parent)) is not None:
        msg = f"--out {out_h5ad}: its directory {out_h5ad.parent} {why}."
        raise InputError(msg)
    out_h5ad.parent.mkdir(parents=True, exist_ok=True)
    adata, edges = simulate(config)

    tmp_h5ad = _atomic_target(out_h5ad, ".h5ad.tmp")
    tmp_edges = _atomic_target(edges_path, ".tsv.tmp")
    try:
        adata.write_h5ad(tmp_h5ad)
        edges.to_csv(tmp_edges, sep="\t", index=False)
        publish(tmp_h5ad, out_h5ad)  # chmod + os.replace: atomic within one directory
        publish(tmp_edges, edges_path)
    finally:
        tmp_h5ad.unlink(missing_ok=True)
        tmp_edges.unlink(missing_ok=True)
    return out_h5ad, edges_path
