"""Tree-ensemble importance of each TF for each target: GRNBoost2 (Moerman et al. 2019, via arboreto) or a
GENIE3-style per-target ensemble (Huynh-Thu et al. 2010, via scikit-learn), the two best unsupervised methods in
BEELINE. Results are cached by the inputs' sha256 (`tree_importance_matrix(cache_dir=...)`).

Shapes: `expression` is (n_genes, n_cells); S (n_genes, n_genes) float32, S[tf, target].
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import ExtraTreesRegressor

from data_prep.io_utils import publish
from finetune.errors import GrnInputError
from finetune.grn.baselines import check_expression

TREE_METHODS = ("grnboost2", "genie3")
# GENIE3 uses 1000 trees; 100 keeps a TFs+500 folder within minutes on two cores at a small cost in stability.
GENIE3_N_TREES = 100
# Bump when a tree method's output changes, so stale cache files are not reused.
_CACHE_VERSION = "1"

logger = logging.getLogger(__name__)


def _check_tree_inputs(expression: np.ndarray, genes: list[str], tf_index: np.ndarray, workers: int) -> np.ndarray:
    n_genes = expression.shape[0]
    if len(genes) != n_genes:
        msg = f"genes lists {len(genes)} names but expression has {n_genes} gene rows; they must match row for row"
        raise GrnInputError(msg)
    if len(set(genes)) != len(genes):
        dupes = sorted(name for name, count in Counter(genes).items() if count > 1)
        msg = f"gene names must be unique (arboreto keys edges by name); duplicated: {', '.join(dupes[:5])}"
        raise GrnInputError(msg)
    tf_index = np.asarray(tf_index)
    if tf_index.ndim != 1 or tf_index.size == 0 or tf_index.dtype.kind not in "iu":
        msg = (
            f"tf_index must be a non-empty 1-D integer array of gene rows; received shape {tf_index.shape}, "
            f"dtype {tf_index.dtype}"
        )
        raise GrnInputError(msg)
    out_of_range = (tf_index < 0) | (tf_index >= n_genes)
    if out_of_range.any():
        msg = f"tf_index holds rows outside 0..{n_genes - 1}: {tf_index[out_of_range][:5].tolist()}"
        raise GrnInputError(msg)
    if np.unique(tf_index).size != tf_index.size:
        msg = f"tf_index repeats rows ({tf_index.size} entries, {np.unique(tf_index).size} distinct)"
        raise GrnInputError(msg)
    if workers < 1:
        msg = f"workers must be at least 1, received {workers}"
        raise GrnInputError(msg)
    return tf_index.astype(np.int64)


def _cache_path(
    cache_dir: Path, expression: np.ndarray, genes: list[str], tf_index: np.ndarray, algorithm: str, seed: int
) -> Path:
    """The cache file for one run: sha256 over the inputs and the algorithm actually run (not the one requested),
    so a GENIE3 fallback result is never served as GRNBoost2."""
    digest = hashlib.sha256()
    digest.update(f"scgrn-tree-importance-v{_CACHE_VERSION}|{algorithm}|seed={seed}|".encode())
    digest.update(f"{expression.shape}|{expression.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(expression).tobytes())
    digest.update("\0".join(genes).encode())
    digest.update(b"|")
    digest.update(tf_index.astype("<i8").tobytes())
    return Path(cache_dir) / f"{algorithm}-{digest.hexdigest()}.npy"


def _load_cached(path: Path, n_genes: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable cache file %s (%s); recomputing", path, err)
        return None
    if matrix.shape != (n_genes, n_genes):
        logger.warning("ignoring cache file %s with shape %s, expected %s", path, matrix.shape, (n_genes, n_genes))
        return None
    return matrix


def _save_atomic(path: Path, matrix: np.ndarray) -> None:
    """Write to a temp file in the same folder, then rename: a killed run leaves no partial cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            np.save(tmp, matrix, allow_pickle=False)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise
    publish(tmp_path, path)


def _genie3_sklearn(expression: np.ndarray, tf_index: np.ndarray, *, seed: int, workers: int) -> np.ndarray:
    """GENIE3 (Huynh-Thu et al. 2010): one tree ensemble per target gene, regressing it on the TFs' expression
    (the target itself excluded); the ensemble's feature importances score each TF → target edge.

    Extra-Trees with max_features="sqrt" is GENIE3's "ET" variant. scikit-learn normalizes each ensemble's
    importances to sum to 1, which makes targets comparable as GENIE3's unit-variance scaling of the target does.
    """
    n_genes = expression.shape[0]
    scores = np.zeros((n_genes, n_genes), dtype=np.float32)
    tf_expression = expression[tf_index].T  # (n_cells, n_tfs)
    for target in range(n_genes):
        y = expression[target]  # (n_cells,)
        if np.ptp(y) == 0:
            continue  # a constant target has nothing to explain
        keep = tf_index != target
        if not keep.any():
            continue
        forest = ExtraTreesRegressor(
            n_estimators=GENIE3_N_TREES, max_features="sqrt", n_jobs=workers, random_state=seed
        )
        forest.fit(tf_expression[:, keep], y)
        scores[tf_index[keep], target] = forest.feature_importances_
    return scores


def _grnboost2(
    expression: np.ndarray, genes: list[str], tf_index: np.ndarray, *, seed: int, workers: int
) -> np.ndarray:
    """GRNBoost2 (Moerman et al. 2019) through arboreto on an in-process dask cluster that is always closed."""
    from arboreto.algo import grnboost2
    from distributed import Client, LocalCluster

    frame = pd.DataFrame(expression.T, columns=genes)  # (n_cells, n_genes), arboreto's layout
    tf_names = [genes[i] for i in tf_index]
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its comm layer logs every in-process connection at INFO
    with warnings.catch_warnings():
        # dask 2024.2 warns about its own deprecations on every graph arboreto builds; none is actionable here.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        try:
            client = Client(cluster)
            try:
                edges = grnboost2(frame, tf_names=tf_names, client_or_address=client, seed=seed, verbose=False)
            finally:
                client.close()
        finally:
            cluster.close()
            quiet.setLevel(level)
    position = {gene: row for row, gene in enumerate(genes)}
    scores = np.zeros((len(genes), len(genes)), dtype=np.float32)
    rows = edges["TF"].map(position).to_numpy(dtype=np.int64)
    cols = edges["target"].map(position).to_numpy(dtype=np.int64)
    scores[rows, cols] = edges["importance"].to_numpy(dtype=np.float32)
    return scores


def tree_importance_matrix(
    expression: np.ndarray,
    genes: list[str],
    tf_index: np.ndarray,
    *,
    method: str = "grnboost2",
    seed: int = 0,
    workers: int = 2,
    cache_dir: Path | None = None,
) -> tuple[np.ndarray, str]:
    """Tree-ensemble importance of each TF for each target: GRNBoost2, or GENIE3 via scikit-learn.

    method="grnboost2" runs arboreto's GRNBoost2 (Moerman et al. 2019) with `tf_names` = genes[tf_index], on a
    local in-process dask cluster of `workers` single-threaded workers. If arboreto or dask cannot be imported it
    falls back to the scikit-learn GENIE3 ensemble and says so in the label. method="genie3" runs that ensemble
    (Huynh-Thu et al. 2010; Extra-Trees, max_features="sqrt", GENIE3_N_TREES trees) directly.

    With `cache_dir`, the matrix is stored as `<algorithm>-<sha256>.npy`, keyed on the expression bytes, genes,
    tf_index, the algorithm actually run and seed, and written atomically; a later identical call loads it.

    Shapes: expression (n_genes, n_cells), genes n_genes names, tf_index (n_tfs,) gene rows ->
    S (n_genes, n_genes) float32, S[tf, target]; rows of non-TF genes and the diagonal are 0.

    Returns (S, label), label one of "grnboost2", "genie3-sklearn", "genie3-sklearn (arboreto unavailable: ...)".
    """
    if method not in TREE_METHODS:
        msg = f"tree method {method!r} is unknown; allowed: {', '.join(TREE_METHODS)}"
        raise GrnInputError(msg)
    expression = check_expression(expression)
    genes = [str(g) for g in genes]
    tf_index = _check_tree_inputs(expression, genes, tf_index, workers)
    n_genes = expression.shape[0]

    def cached_or_run(algorithm: str, run: Callable[[], np.ndarray]) -> np.ndarray:
        path = None if cache_dir is None else _cache_path(cache_dir, expression, genes, tf_index, algorithm, seed)
        if path is not None and (hit := _load_cached(path, n_genes)) is not None:
            return hit
        matrix = run()
        if path is not None:
            _save_atomic(path, matrix)
        return matrix

    def genie3() -> np.ndarray:
        return _genie3_sklearn(expression, tf_index, seed=seed, workers=workers)

    if method == "genie3":
        return cached_or_run("genie3", genie3), "genie3-sklearn"

    if cache_dir is not None:
        # A GRNBoost2 hit needs no arboreto import (dask alone takes seconds to import).
        hit = _load_cached(_cache_path(cache_dir, expression, genes, tf_index, "grnboost2", seed), n_genes)
        if hit is not None:
            return hit, "grnboost2"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import arboreto.algo  # noqa: F401
            import distributed  # noqa: F401
    except ImportError as err:
        reason = str(err) or type(err).__name__
        logger.warning("arboreto unavailable (%s); using the scikit-learn GENIE3 ensemble instead of GRNBoost2", reason)
        return cached_or_run("genie3", genie3), f"genie3-sklearn (arboreto unavailable: {reason})"
    matrix = cached_or_run("grnboost2", lambda: _grnboost2(expression, genes, tf_index, seed=seed, workers=workers))
    return matrix, "grnboost2"
