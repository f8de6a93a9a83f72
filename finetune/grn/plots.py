"""ROC and precision-recall figures comparing GRN methods on one labelled edge set.

Drawn on `matplotlib.figure.Figure` with the Agg canvas, so no pyplot state or global backend is touched.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from data_prep.io_utils import publish
from finetune.errors import GrnInputError
from finetune.grn import metrics


def _save_atomic(figure: Figure, path: Path) -> None:
    """Render to a temp file beside `path`, then rename, so a killed run never leaves a half-written PNG."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}.", suffix=".png.tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            FigureCanvasAgg(figure).print_png(tmp)
        except BaseException:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise
    publish(tmp_path, path)


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: Path, title: str) -> list[Path]:
    """Write `roc.png` and `pr.png` into out_dir, one curve per method, and return their paths.

    `curves` maps method name -> (labels, scores) on the same edge set. The ROC legend gives each AUROC and the
    chance diagonal; the PR legend gives each AUPRC (average precision) and the positive rate, which is the
    precision of a random scorer (BEELINE, Pratapa et al. 2020, normalizes AUPRC by it).
    """
    if not curves:
        msg = "plot_curves: received no curves; pass {method name: (labels, scores)}"
        raise GrnInputError(msg)
    first_name, (first_labels, _) = next(iter(curves.items()))
    reference = np.asarray(first_labels)
    for name, (labels, _) in curves.items():
        if not np.array_equal(np.asarray(labels), reference):
            msg = (
                f"plot_curves: labels of {name!r} differ from those of {first_name!r}; every method must be scored "
                "on the same edge set, in the same order"
            )
            raise GrnInputError(msg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    roc_fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    roc_ax = roc_fig.add_subplot()
    pr_fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    pr_ax = pr_fig.add_subplot()
    positive_rate = 0.0
    for name, (labels, scores) in curves.items():
        row = metrics.edge_metrics(labels, scores)  # validates labels and scores
        positive_rate = float(row["positive_rate"])
        fpr, tpr, _ = roc_curve(labels, scores)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUROC {row['auroc']:.3f})")
        precision, recall, _ = precision_recall_curve(labels, scores)
        # Step plot: average precision is the step-wise area, so this is the curve it measures.
        pr_ax.plot(recall, precision, drawstyle="steps-post", label=f"{name} (AUPRC {row['auprc']:.3f})")

    roc_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    roc_ax.legend(loc="lower right", fontsize="small")
    pr_ax.axhline(positive_rate, linestyle="--", color="grey", label=f"random (positive rate {positive_rate:.3f})")
    pr_ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    pr_ax.legend(loc="upper right", fontsize="small")

    paths = [out_dir / "roc.png", out_dir / "pr.png"]
    _save_atomic(roc_fig, paths[0])
    _save_atomic(pr_fig, paths[1])
    return paths
