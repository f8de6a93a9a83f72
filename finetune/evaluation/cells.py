"""Cell embeddings scored against cell-type annotations, beside the PCA baseline every single-cell user has.

Exceiver (Connell et al. 2022) evaluated its cell embeddings against annotated cell types; we do the same with a
k-NN classifier (stratified cross-validation: accuracy, macro F1) and with k-means clustering (ARI, NMI against the
labels). The baseline follows scanpy's standard recipe: `normalize_total(target_sum=1e4)` + `log1p`, the most
variable genes (here: highest variance of the log values), `scale(max_value=10)` and `pca`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, adjusted_rand_score, f1_score, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier

from finetune.grn.plots import _save_atomic

MAP_METHODS = ("auto", "umap", "pca")
MIN_CELLS = 10
# tab20's dark shades first, then the light ones, so up to 10 types get distinct hues; repeats past 20 types
_TAB20_ORDER = [*range(0, 20, 2), *range(1, 20, 2)] * 50


def log_normalize(counts: sp.csr_matrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """log1p(counts / cell_total * target_sum) per cell; a cell with no counts stays all zero (no NaN)."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()  # (n_cells,)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    out = counts.copy()
    out.data = np.log1p(out.data * np.repeat(scale, np.diff(out.indptr)))
    return out.astype(np.float32)


def pca_baseline(
    counts: sp.csr_matrix, *, n_top_genes: int = 2000, n_components: int = 50, seed: int = 0
) -> np.ndarray:
    """The scanpy-standard embedding: log-normalize, top-variance genes, z-score clipped at ±10, PCA -> (n_cells, k)."""
    logged = log_normalize(counts)
    n_cells = logged.shape[0]
    mean = np.asarray(logged.mean(axis=0)).ravel()
    variance = np.asarray(logged.multiply(logged).mean(axis=0)).ravel() - mean**2
    keep = np.sort(np.argsort(-variance, kind="stable")[:n_top_genes])  # all genes when fewer than n_top_genes
    x = logged[:, keep].toarray().astype(np.float64)  # (n_cells, n_kept)
    std = x.std(axis=0, ddof=1) if n_cells > 1 else np.ones(len(keep))
    std[std == 0] = 1.0  # constant genes stay 0 after centring, as in sc.pp.scale
    x = np.clip((x - x.mean(axis=0)) / std, -10.0, 10.0)
    k = min(n_components, min(n_cells, len(keep)) - 1)
    if k < 1:
        msg = f"pca_baseline needs at least 2 cells and 2 genes; got {n_cells} cells and {len(keep)} genes"
        raise ValueError(msg)
    return PCA(n_components=k, random_state=seed).fit_transform(x).astype(np.float32)


def _check_embedding(embedding: np.ndarray, n_labels: int) -> np.ndarray:
    embedding = np.asarray(embedding, dtype=np.float64)
    if embedding.ndim != 2 or embedding.shape[0] != n_labels:
        msg = (
            f"embedding has shape {embedding.shape} but there are {n_labels} labels; "
            "pass a 2-D (n_cells, dim) array with one row per label"
        )
        raise ValueError(msg)
    return embedding


def cell_type_metrics(embedding: np.ndarray, labels: np.ndarray, *, k: int = 15, folds: int = 5, seed: int = 0) -> dict:
    """k-NN cell-type accuracy/macro F1 (stratified CV) and k-means ARI/NMI for labelled cells' embeddings.

    Classes with fewer members than `folds` reduce the folds to their size (at least 2); single-cell classes cannot
    be both trained on and tested, so they leave the k-NN part and are listed in "dropped_labels".
    """
    labels = np.asarray(labels).astype(str)
    embedding = _check_embedding(embedding, len(labels))
    names, counts = np.unique(labels, return_counts=True)
    if len(labels) < MIN_CELLS or len(names) < 2:
        msg = (
            f"cell_type_metrics needs at least {MIN_CELLS} cells and 2 labels; "
            f"got {len(labels)} cells, {len(names)} labels"
        )
        raise ValueError(msg)
    dropped = sorted(names[counts < 2].tolist())
    kept = ~np.isin(labels, dropped)
    if len(names) - len(dropped) < 2:
        msg = (
            f"k-NN needs 2 labels with at least 2 cells each; got label counts "
            f"{dict(zip(names.tolist(), counts.tolist(), strict=True))}"
        )
        raise ValueError(msg)
    x, y = embedding[kept], labels[kept]
    folds_used = max(2, min(folds, int(counts[counts >= 2].min())))
    splitter = StratifiedKFold(n_splits=folds_used, shuffle=True, random_state=seed)
    predicted = np.empty_like(y)
    fold_accuracy = []
    for train, test in splitter.split(x, y):
        # Euclidean distance on the embedding as given (scanpy / scib practice): standardising would give a PCA
        # baseline's noise components the weight of its leading ones
        model = KNeighborsClassifier(n_neighbors=min(k, len(train)))
        predicted[test] = model.fit(x[train], y[train]).predict(x[test])
        fold_accuracy.append(accuracy_score(y[test], predicted[test]))
    clusters = KMeans(n_clusters=len(names), n_init=10, random_state=seed).fit_predict(embedding)
    return {
        "n_cells": len(labels),
        "n_labels": len(names),
        "knn_accuracy": float(np.mean(fold_accuracy)),
        "knn_accuracy_sd": float(np.std(fold_accuracy, ddof=1)),
        "knn_macro_f1": float(f1_score(y, predicted, average="macro")),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "k": k,
        "folds": folds_used,
        "dropped_labels": dropped,
    }


def map_2d(embedding: np.ndarray, *, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """A 2-D map: UMAP of the embedding if umap-learn is installed (or asked for), else its first 2 PCs."""
    if method not in MAP_METHODS:
        msg = f"map method {method!r} is not one of {MAP_METHODS}"
        raise ValueError(msg)
    embedding = np.asarray(embedding, dtype=np.float64)
    if embedding.ndim != 2 or embedding.shape[0] < 3:
        msg = f"map_2d needs a 2-D (n_cells, dim) array with at least 3 cells; got shape {embedding.shape}"
        raise ValueError(msg)
    if method in ("auto", "umap"):
        try:
            import umap  # lazy: importing it costs ~15 s of numba set-up
        except ImportError as err:
            if method == "umap":
                msg = "method='umap' needs umap-learn: `pip install umap-learn`, or pass method='pca'"
                raise ValueError(msg) from err
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
                reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(embedding) - 1))
                return reducer.fit_transform(embedding).astype(np.float32), "umap"
    # unscaled: standardising would whiten an already-PCA embedding and leave its first 2 PCs arbitrary
    coords = PCA(n_components=min(2, embedding.shape[1]), random_state=seed).fit_transform(embedding)
    coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))  # a 1-D embedding gets a flat second axis
    return coords.astype(np.float32), "pca"


def plot_cell_maps(maps: dict[str, np.ndarray], labels: np.ndarray, path: Path, *, title: str, method: str) -> Path:
    """One PNG with a panel per map, cells coloured by type (tab20, sorted) and unlabelled ("") cells in grey."""
    labels = np.asarray(labels).astype(str)
    for name, coords in maps.items():
        if np.shape(coords) != (len(labels), 2):
            msg = f"map {name!r} has shape {np.shape(coords)}; expected ({len(labels)}, 2) to match the labels"
            raise ValueError(msg)
    if not maps:
        msg = "plot_cell_maps needs at least one map"
        raise ValueError(msg)
    path = Path(path)
    figure = Figure(figsize=(4.5 * len(maps) + 2.5, 4.5), dpi=120, layout="constrained")
    axes = figure.subplots(1, len(maps), squeeze=False)[0]
    palette = colormaps["tab20"]
    cell_types = sorted(set(labels.tolist()) - {""})
    groups = ([("unlabelled", labels == "", "#d9d9d9")] if (labels == "").any() else []) + [
        (name, labels == name, palette(hue)) for name, hue in zip(cell_types, _TAB20_ORDER, strict=False)
    ]
    size = float(np.clip(4000 / max(len(labels), 1), 0.5, 12.0))
    for ax, (panel, coords) in zip(axes, maps.items(), strict=True):
        coords = np.asarray(coords)
        for name, mask, colour in groups:
            ax.scatter(coords[mask, 0], coords[mask, 1], s=size, color=colour, label=name, linewidths=0)
        ax.set(title=panel, xlabel=f"{method.upper()} 1", ylabel=f"{method.upper()} 2", xticks=[], yticks=[])
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside right center", markerscale=max(1.0, 30 / size) ** 0.5, frameon=False)
    figure.suptitle(title)
    _save_atomic(figure, path)
    return path
