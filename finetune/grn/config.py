"""`GrnConfig`: every option of `scgrn grn`, typed, documented and validated at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_prep.io_utils import out_dir_problem
from finetune.errors import GrnInputError

GNNS = ("gcn", "sage", "gat")
POOLING_CHOICES = ("auto", "mean", "attention", "static")
NEGATIVE_MODES = ("genelink", "degree-aware")
TREE_METHODS = ("grnboost2", "genie3", "none")
LEARNED_BASELINES = (
    "genelink-gat",
    "expression-gcn",
    "random-embedding",
    "random-init",
    "no-gnn",
    "evidence-logreg",
    "attention-heads",
    "random-init-attention-heads",
)
UNSUPERVISED_BASELINES = (
    "pretrained-isd",
    "random-init-isd",
    "pretrained-probe",
    "random-init-probe",
    "pretrained-attention",
    "random-init-attention",
    "pearson",
    "spearman",
    "partial",
    "regression",
    "trees",
)
# Shortcuts read the training labels but nothing about the scored pair's data (shortcuts.py): references that show
# what a benchmark can be passed with, never the method that writes edges.tsv.
SHORTCUT_BASELINES = ("degree", "topology", "label-knn")
BASELINES = LEARNED_BASELINES + UNSUPERVISED_BASELINES + SHORTCUT_BASELINES
EVIDENCE = ("pearson", "regression", "partial", "trees", "isd", "probe", "attention")
SPLITS = ("genelink", "cold-start", "held-out-genes")
GENELINK_RECIPES = ("published", "extended")


@dataclass
class GrnConfig:
    release: Path
    """An scgrn release directory (`scgrn export`): the pretrained model whose gene embeddings are used."""
    out: Path
    """Output directory: edges.tsv, metrics.json, results.md, roc.png, pr.png."""
    benchmark: Path | None = None
    """Benchmark mode: a GENELink-layout BEELINE folder (<network>/<cell>/TFs+N) with expression."""
    expression: Path | None = None
    """Inference mode: the user's cells (.h5ad / 10x / CSV; raw counts unless --values says otherwise)."""
    prior: Path | None = None
    """Inference mode: known TF → target edges (TSV, first two columns; e.g. TRRUST or DoRothEA)."""
    truth: Path | None = None
    """Evaluation on your data: with --expression, a ground-truth network (TSV of TF, target; e.g. the simulator's
    <stem>.edges.tsv) scored with the benchmark protocol (the GENELink split of the "prior" kind) instead of ranking
    new edges."""
    values: str = "counts"
    """Inference mode: value kind of --expression (counts or log1p)."""
    max_genes: int = 1000
    """Inference mode: genes kept as graph nodes: the prior's genes present in the data, then the most variable."""
    gnn: str = "gcn"
    """Graph encoder of the joint model: gcn, sage or gat."""
    layers: int = 2
    """Depth of the graph encoder."""
    hidden: int = 128
    """Width of the first encoder layer (halved at each further layer)."""
    decoder: str = "mlp"
    """Pair decoder of the joint model and its ablations: "mlp" (interaction MLP on [tf ‖ target ‖ tf ⊙ target]) or
    "dot"."""
    evidence: list[str] | None = None
    """Pair evidence the learned models' decoders see (evidence.py): pearson (|r|), regression (|t| of the TF's
    coefficient when the target is regressed on all TFs), partial (|partial correlation| given all genes), trees (the
    tree baseline's importance), isd (the release's in-silico deletion effect), probe (the release's response to a
    TF's input moved from low to high, probe.py), attention (the target's attention to the TF, mean over layers and
    heads, attention_readout.py; left out for releases without attention over genes). Empty: none. Default: all of
    them, without trees when --tree-method is none."""
    tuning_budget: int = 3
    """Hyper-parameter configurations every learned method tries per seed (chosen on that seed's validation set)."""
    supervision_fraction: float = 0.3
    """Training rows held out of message passing each epoch as the loss's targets (fit.py)."""
    isd_cells: int = 600
    """Cells streamed through the release for the in-silico deletion evidence."""
    probe_cells: int = 100
    """Metacells (each a cell and its 19 nearest neighbours) in which the perturbation probe moves TFs."""
    attention_cells: int = 600
    """Cells whose queries and keys are averaged for the attention readout."""
    adapt_steps: int = 0
    """Steps of masked pretraining on the dataset's own cells before any readout or embedding (adaptation.py), for
    the release and, the same number, for its random-init twin (then a model trained from scratch on these cells);
    0 = none."""
    method: str | None = None
    """Which method writes edges.tsv; default: the one with the best validation AUROC (named in the output)."""
    pooling: str = "auto"
    """How gene states are pooled over cells: mean, attention, static (token embedding), or auto = part of each
    seed's hyper-parameter choice on that seed's validation set (never by test)."""
    seeds: int = 5
    """Independent splits + initialisations; metrics are reported as mean ± sd over them."""
    first_seed: int = 0
    """Seeds run are first_seed .. first_seed + seeds - 1: a long benchmark can be run in pieces (more seeds later)
    and merged (`scgrn bench grn --from-summaries`)."""
    split: str = "genelink"
    """genelink (GENELink's per-TF assignment of the positives, one split per seed), cold-start (held-out TFs: no
    edge touching a validation or test TF, in either direction, is in training), held-out-genes (genes partitioned: a
    test pair's genes have no training edge at all) or a split file / directory (run as given; the count of test
    pairs whose reverse pair is in training is reported). Every built-in protocol keeps a pair and its reverse in
    one set."""
    split_repair: bool = False
    """With a split file: move every pair whose reverse pair is in a later set into that set (splits.repair_reverse)
    instead of running the file as given."""
    negatives: str = "degree-aware"
    """degree-aware negatives (Stock et al. 2025; node degree carries no signal), or genelink (GENELink's own, kept
    for comparison with published numbers: node degree leaks into the labels)."""
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    """Methods run beside the joint model on the same splits."""
    tree_method: str = "grnboost2"
    """The tree-ensemble baseline: grnboost2 (arboreto), genie3 (scikit-learn) or none."""
    genelink_recipe: str = "extended"
    """How the genelink-gat baseline trains. extended (default): GENELink's architecture, Adam and batch 256, trained
    like every learned method here (up to `epochs`, stopping after `patience` epochs without a better validation
    AUROC), the recipe of every bench/GRN_RESULTS.md piece. published: GENELink's `Code/main.py` (20 epochs, lr
    ×0.99 after every mini-batch), ~3.5× faster but 0.03 AUROC lower on STRING mESC TFs+500 (bench/RESULTS.md), so
    not the default: a baseline gets the training budget our model gets. Both keep the best validation epoch."""
    epochs: int = 300
    lr: float = 1e-2
    """The first learning rate of the scgrn recipe's grid (then lr / 3, lr × 3)."""
    patience: int = 40
    min_vocab_coverage: float = 0.5
    """Refuse a release whose vocabulary knows fewer of the dataset's genes than this fraction."""
    cache_dir: Path | None = None
    """Where gene embeddings and tree-baseline scores are cached (default OUT/cache)."""
    workers: int = 2
    """Processes that fit the learned methods (one thread each, fit_pool.py; the numbers do not depend on it), and
    CPU threads for the tree baseline and the release's forward passes."""
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        benchmark_mode = self.benchmark is not None
        inference_mode = self.expression is not None or self.prior is not None or self.truth is not None
        if benchmark_mode == inference_mode:
            problems.append(
                "give either --benchmark DIR (BEELINE evaluation), --expression X --truth EDGES (evaluation on your "
                f"data) or --expression X --prior PRIOR (inference), not {'both' if benchmark_mode else 'neither'}"
            )
        if inference_mode and (self.expression is None or (self.prior is None) == (self.truth is None)):
            problems.append("with --expression give exactly one of --prior (inference) or --truth (evaluation)")
        for name, allowed in (
            ("gnn", GNNS),
            ("pooling", POOLING_CHOICES),
            ("negatives", NEGATIVE_MODES),
            ("tree_method", TREE_METHODS),
            ("genelink_recipe", GENELINK_RECIPES),
            ("decoder", ("mlp", "dot")),
            ("values", ("counts", "log1p")),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"--{name.replace('_', '-')} {getattr(self, name)!r}: allowed {allowed}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            problems.append(f"--baselines {unknown}: unknown; allowed {BASELINES}")
        if self.evidence is None:
            self.evidence = [e for e in EVIDENCE if e != "trees" or self.tree_method != "none"]
        unknown = sorted(set(self.evidence) - set(EVIDENCE))
        if unknown:
            problems.append(f"--evidence {unknown}: unknown; allowed {EVIDENCE} (or none)")
        if "trees" in self.evidence and self.tree_method == "none":
            problems.append("--evidence trees needs a tree method; drop trees from --evidence or set --tree-method")
        if not 0.0 <= self.supervision_fraction < 1.0:
            problems.append(f"--supervision-fraction {self.supervision_fraction}: must be within [0, 1)")
        if self.method is not None and self.method in SHORTCUT_BASELINES:
            problems.append(
                f"--method {self.method!r}: a shortcut reads only the training labels' structure and is a reference, "
                f"never the ranking written to edges.tsv; allowed joint-{self.gnn} or one of "
                f"{LEARNED_BASELINES + UNSUPERVISED_BASELINES}"
            )
        elif self.method is not None and self.method not in (*BASELINES, f"joint-{self.gnn}"):
            allowed = LEARNED_BASELINES + UNSUPERVISED_BASELINES
            problems.append(f"--method {self.method!r}: allowed joint-{self.gnn} or one of {allowed}")
        if self.split_repair and self.split in SPLITS:
            problems.append(
                f"--split-repair applies to a split file; --split {self.split} already keeps every pair and its "
                "reverse in one set (drop --split-repair)"
            )
        positive = ("seeds", "layers", "hidden", "epochs", "patience", "workers", "max_genes")
        positive += ("tuning_budget", "isd_cells", "probe_cells", "attention_cells")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} {getattr(self, name)!r}: must be an int >= 1")
        if not isinstance(self.adapt_steps, int) or self.adapt_steps < 0:
            problems.append(f"--adapt-steps {self.adapt_steps!r}: must be an int >= 0 (0 = no adaptation)")
        if not isinstance(self.first_seed, int) or self.first_seed < 0:
            problems.append(f"--first-seed {self.first_seed!r}: must be an int >= 0")
        if not 0.0 <= self.min_vocab_coverage <= 1.0:
            problems.append(f"--min-vocab-coverage {self.min_vocab_coverage}: must be within [0, 1]")
        if not self.lr > 0:
            problems.append(f"--lr {self.lr}: must be > 0")
        if (why := out_dir_problem(self.out)) is not None:
            problems.append(f"--out {self.out}: {why}")
        for name in ("release", "benchmark", "expression", "prior", "truth"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                problems.append(f"--{name} {path}: no such file or directory")
        if self.split not in SPLITS and not Path(self.split).exists():
            problems.append(f"--split {self.split!r}: neither one of {SPLITS} nor an existing split file or directory")
        if problems:
            msg = "invalid scgrn grn options:\n  - " + "\n  - ".join(problems)
            raise GrnInputError(msg)
        self.release, self.out = Path(self.release), Path(self.out)
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else self.out / "cache"

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
