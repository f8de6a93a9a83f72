"""grn.beeline: GENELink/BEELINE folders load with PROVENANCE.md's counts, discover() separates complete folders
from those missing their expression matrix, the density reproduces GENELink's table and the published test sets, and
every bad input gets one GrnInputError naming the file and the problem."""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import require_shared

from finetune.errors import GrnInputError
from finetune.grn.beeline import NETWORKS, GrnDataset, discover, load_benchmark, network_density

CELLS = ("hESC", "hHEP", "mDC", "mESC", "mHSC-E", "mHSC-GM", "mHSC-L")

# PROVENANCE.md: ground-truth edges (TFs+500, TFs+1000) per network and cell type.
EDGES = {
    "Specific": {
        "hESC": (4545, 7084),
        "hHEP": (9939, 15558),
        "mDC": (756, 1193),
        "mESC": (29613, 42795),
        "mHSC-E": (11557, 21975),
        "mHSC-GM": (7364, 14135),
        "mHSC-L": (4398, 5180),
    },
    "Non-Specific": {
        "hESC": (3441, 4617),
        "hHEP": (4129, 5351),
        "mDC": (3067, 3918),
        "mESC": (6893, 8030),
        "mHSC-E": (1425, 1960),
        "mHSC-GM": (743, 1358),
        "mHSC-L": (279, 317),
    },
    "STRING": {
        "hESC": (4257, 5149),
        "hHEP": (7523, 9003),
        "mDC": (4815, 5898),
        "mESC": (7762, 8479),
        "mHSC-E": (1371, 1826),
        "mHSC-GM": (748, 1311),
        "mHSC-L": (137, 154),
    },
    "Lofgof": {"mESC": (4169, 5742)},
}
# PROVENANCE.md: expression matrices present in the snapshot, genes x cells (same for every network).
SHAPES = {
    ("hHEP", 500): (948, 425),
    ("hHEP", 1000): (1448, 425),
    ("mDC", 500): (821, 383),
    ("mDC", 1000): (1321, 383),
    ("mESC", 500): (1120, 421),
    ("mHSC-GM", 500): (632, 889),
    ("mHSC-L", 500): (560, 847),
    ("mHSC-L", 1000): (692, 847),
}
# PROVENANCE.md "MISSING": (cell, size) without an expression matrix in Specific, Non-Specific and STRING.
MISSING = {("hESC", 500), ("hESC", 1000), ("mESC", 1000), ("mHSC-E", 500), ("mHSC-E", 1000), ("mHSC-GM", 1000)}
# GENELink utils.Network_Statistic: the densities it hard-codes (data, quoted to check `network_density` against).
GENELINK_DENSITY = {
    "STRING": (0.024, 0.021, 0.028, 0.024, 0.038, 0.032, 0.024, 0.021, 0.029, 0.027, 0.040, 0.037, 0.048, 0.045),
    "Non-Specific": (0.016, 0.014, 0.015, 0.013, 0.019, 0.016, 0.015, 0.013, 0.022, 0.020, 0.030, 0.029, 0.048, 0.043),
    "Specific": (0.164, 0.165, 0.379, 0.377, 0.085, 0.082, 0.345, 0.347, 0.578, 0.566, 0.543, 0.565, 0.525, 0.507),
}  # per network: hESC500, hESC1000, hHEP500, hHEP1000, ... mHSC-L1000 (CELLS order)
GENELINK_DENSITY_LOFGOF = {500: 0.158, 1000: 0.154}


def _benchmark() -> Path:
    return require_shared("beeline", "benchmark")


def _label_pairs(folder: Path) -> np.ndarray:
    return pd.read_csv(folder / "Label.csv", index_col=0)[["TF", "Target"]].to_numpy()


# ---------------------------------------------------------------------------------------------------------------
# real data


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("network", "cell", "n_tfs"), [("Specific", "mDC", 323), ("Non-Specific", "hHEP", 448), ("Lofgof", "mESC", None)]
)
def test_load_real_folder_matches_provenance(network, cell, n_tfs):
    folder = _benchmark() / network / cell / "TFs+500"
    data = load_benchmark(folder)
    assert data.name == f"{network}/{cell}/TFs+500"
    assert data.network == network
    assert data.source == folder
    assert data.expression.shape == SHAPES[(cell, 500)] == (data.n_genes, data.n_cells)
    assert data.expression.dtype == np.float32
    assert data.n_edges == EDGES[network][cell][0]
    assert data.positives.dtype == np.int64 and data.positives.shape == (data.n_edges, 2)
    assert np.array_equal(data.positives, np.unique(data.positives, axis=0))  # unique rows, sorted
    assert data.tf_index.dtype == np.int64 and np.array_equal(data.tf_index, np.unique(data.tf_index))
    if n_tfs is not None:
        assert data.n_tfs == n_tfs
    # Every Label.csv TF is listed in TF.csv, and row i of the matrix is genes[i] with BEELINE's values.
    assert np.isin(data.positives[:, 0], data.tf_index).all()
    raw = pd.read_csv(folder / "BL--ExpressionData.csv.gz", index_col=0)
    assert data.genes == list(raw.index)
    np.testing.assert_allclose(data.expression[5], raw.iloc[5].to_numpy(), rtol=1e-6)


@pytest.mark.real_data
def test_load_is_fast():
    folder = _benchmark() / "Specific" / "mESC" / "TFs+500"  # the largest gzip matrix of the 500-gene sets
    load_benchmark(folder)  # warm the page cache
    start = time.perf_counter()
    load_benchmark(folder)
    assert time.perf_counter() - start < 1.0


@pytest.mark.real_data
def test_every_available_folder_loads_with_provenance_counts():
    available, _ = discover(_benchmark())
    for folder in available:
        data = load_benchmark(folder)
        network, cell, size = folder.parts[-3], folder.parts[-2], int(folder.parts[-1].removeprefix("TFs+"))
        assert data.expression.shape == SHAPES[(cell, size)], folder
        assert data.n_edges == EDGES[network][cell][size == 1000], folder


@pytest.mark.real_data
def test_row_order_differs_between_networks_but_genes_and_values_agree():
    specific = load_benchmark(_benchmark() / "Specific" / "mDC" / "TFs+500")
    non_specific = load_benchmark(_benchmark() / "Non-Specific" / "mDC" / "TFs+500")
    assert specific.genes != non_specific.genes
    assert sorted(specific.genes) == sorted(non_specific.genes)
    row = {gene: i for i, gene in enumerate(non_specific.genes)}
    order = [row[gene] for gene in specific.genes]
    np.testing.assert_array_equal(specific.expression, non_specific.expression[order])


@pytest.mark.real_data
def test_discover_real_root_lists_available_and_skipped():
    beeline = require_shared("beeline")
    available, skipped = discover(beeline)
    assert len(available) == 25
    assert available == sorted(available)
    expected_missing = {(network, cell, size) for network in NETWORKS[:3] for cell, size in MISSING}
    expected_missing.add(("Lofgof", "mESC", 1000))
    got_missing = {(f.parts[-3], f.parts[-2], int(f.parts[-1].removeprefix("TFs+"))) for f, _ in skipped}
    assert got_missing == expected_missing
    for _, reason in skipped:
        assert "BL--ExpressionData.csv" in reason and "PROVENANCE.md" in reason
    # The same folders from the benchmark/ folder, one network, one folder.
    assert discover(beeline / "benchmark") == (available, skipped)
    specific, _ = discover(beeline / "benchmark" / "Specific")
    assert len(specific) == 8 and all(f.parts[-3] == "Specific" for f in specific)
    single = beeline / "benchmark" / "STRING" / "mDC" / "TFs+500"
    assert discover(single) == ([single], [])


@pytest.mark.real_data
def test_density_formula_reproduces_genelink_table():
    """|edges| / (|TFs with an edge| x |genes in an edge| - |TFs with an edge|), rounded to 3 decimals, is every
    entry of GENELink's Network_Statistic table (44 of 44)."""
    benchmark = _benchmark()
    for network, values in GENELINK_DENSITY.items():
        keys = [(cell, size) for cell in CELLS for size in (500, 1000)]
        for (cell, size), expected in zip(keys, values, strict=True):
            pairs = _label_pairs(benchmark / network / cell / f"TFs+{size}")
            assert network_density(pairs) == pytest.approx(expected, abs=1e-12), (network, cell, size)
    for size, expected in GENELINK_DENSITY_LOFGOF.items():
        pairs = _label_pairs(benchmark / "Lofgof" / "mESC" / f"TFs+{size}")
        assert network_density(pairs) == pytest.approx(expected, abs=1e-12)


@pytest.mark.real_data
def test_density_reproduces_published_test_sets_exactly():
    """bridge-grn's Non-Specific/STRING test sets have floor(n_pos / density) - n_pos negatives (GENELink's
    `int(count // density - count)`) for all 28 configurations; simpler formulas do not fit."""
    benchmark = _benchmark()
    splits = require_shared("beeline", "splits", "bridge_grn_sample1")
    naive_hits = 0
    for network in ("Non-Specific", "STRING"):
        for cell in CELLS:
            for size in (500, 1000):
                folder = benchmark / network / cell / f"TFs+{size}"
                pairs = _label_pairs(folder)
                density = network_density(pairs)
                labels = pd.read_csv(splits / network / f"{cell} {size}" / "Test_set.csv.gz", usecols=["Label"])
                n_pos = int(labels["Label"].sum())
                n_neg = len(labels) - n_pos
                assert n_neg == int(n_pos // density - n_pos), (network, cell, size)
                assert n_pos / len(labels) == pytest.approx(density, abs=1e-4)
                # The textbook density over TF.csv x all genes is off by a factor ~1.5-10.
                n_tfs = len(pd.read_csv(folder / "TF.csv"))
                n_genes = len(pd.read_csv(folder / "Target.csv"))
                naive_hits += round(len(pairs) / (n_tfs * n_genes), 3) == density
    assert naive_hits == 0


def test_network_density_of_a_small_graph():
    # 2 TFs (1, 3), nodes {0..5}: 5 edges / (2 * 6 - 2) = 0.5
    pairs = np.array([[1, 0], [1, 2], [3, 4], [3, 5], [3, 1]])
    assert network_density(pairs) == 0.5
    assert network_density(np.array([[0, 1], [0, 2], [0, 3]]), genelink_rounding=False) == pytest.approx(3 / 3)
    with pytest.raises(GrnInputError, match="undefined"):
        network_density(np.zeros((0, 2), dtype=np.int64))


# ---------------------------------------------------------------------------------------------------------------
# a tiny synthetic folder (6 genes, 8 cells) and its bad variants

GENES = ["G0", "TF1", "G2", "TF3", "G4", "G5"]
CELL_IDS = [f"cell{i}" for i in range(8)]


def make_folder(root: Path, network: str = "Specific", *, gz: bool = False) -> Path:
    """<root>/<network>/toy/TFs+500 in GENELink layout: TFs TF1, TF3 and five edges."""
    folder = root / network / "toy" / "TFs+500"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    expression = pd.DataFrame(rng.gamma(1.0, 1.0, (6, 8)).round(4), index=GENES, columns=CELL_IDS)
    if gz:
        with gzip.open(folder / "BL--ExpressionData.csv.gz", "wt") as handle:
            expression.to_csv(handle)
    else:
        expression.to_csv(folder / "BL--ExpressionData.csv")
    pd.DataFrame({"Gene": GENES, "index": range(6)}).to_csv(folder / "Target.csv")
    pd.DataFrame({"TF": ["TF1", "TF3"], "index": [1, 3]}).to_csv(folder / "TF.csv")
    pd.DataFrame({"TF": [3, 1, 1, 3, 3], "Target": [5, 0, 2, 4, 1]}).to_csv(folder / "Label.csv")
    (folder / "BL--network.csv").write_text("Gene1,Gene2\nTF1,G0\n")
    return folder


def _edit_csv(path: Path, edit) -> None:
    frame = pd.read_csv(path, index_col=0)
    frame = edit(frame)
    frame.to_csv(path)


def test_toy_folder_loads(tmp_path):
    data = load_benchmark(make_folder(tmp_path, gz=True))
    assert (data.name, data.network) == ("Specific/toy/TFs+500", "Specific")
    assert data.genes == GENES and data.cell_ids == CELL_IDS
    assert data.expression.shape == (6, 8) and data.expression.dtype == np.float32
    np.testing.assert_array_equal(data.tf_index, [1, 3])
    np.testing.assert_array_equal(data.positives, [[1, 0], [1, 2], [3, 1], [3, 4], [3, 5]])
    assert (data.n_genes, data.n_cells, data.n_tfs, data.n_edges) == (6, 8, 2, 5)
    assert data.density == 0.5


def test_toy_folder_network_spellings(tmp_path):
    genelink_name = make_folder(tmp_path, "Non-Specific Dataset")  # GENELink's own folder names
    assert load_benchmark(genelink_name).network == "Non-Specific"
    elsewhere = tmp_path / "mine"
    shutil.copytree(genelink_name, elsewhere)
    with pytest.raises(GrnInputError, match="pass network="):
        load_benchmark(elsewhere)
    data = load_benchmark(elsewhere, network="prior", name="my prior")
    assert (data.network, data.name) == ("prior", "my prior")


def test_duplicate_and_self_loop_labels_are_dropped(tmp_path):
    folder = make_folder(tmp_path)
    _edit_csv(folder / "Label.csv", lambda f: pd.concat([f, pd.DataFrame({"TF": [1, 3], "Target": [0, 3]})]))
    data = load_benchmark(folder)
    np.testing.assert_array_equal(data.positives, [[1, 0], [1, 2], [3, 1], [3, 4], [3, 5]])


def test_target_names_compare_case_insensitively(tmp_path):
    folder = make_folder(tmp_path)
    _edit_csv(folder / "Target.csv", lambda f: f.assign(Gene=f["Gene"].str.lower()))
    assert load_benchmark(folder).genes == GENES


def _set(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.astype({column: object})
    frame.iloc[row, frame.columns.get_loc(column)] = value
    return frame


BAD_INPUTS = {
    "missing Label.csv": (lambda f: (f / "Label.csv").unlink(), ["Label.csv", "missing", "TF.csv"]),
    "missing expression": (
        lambda f: (f / "BL--ExpressionData.csv").unlink(),
        ["BL--ExpressionData.csv", "missing", "PROVENANCE.md", "discover()"],
    ),
    "label past gene list": (
        lambda f: _edit_csv(f / "Label.csv", lambda t: _set(t, 2, "Target", 6)),
        ["Label.csv line 4", "labels indexing past the gene list", "is 6", "6 genes", "0..5"],
    ),
    "negative label index": (
        lambda f: _edit_csv(f / "Label.csv", lambda t: _set(t, 0, "TF", -1)),
        ["Label.csv line 2", "past the gene list", "-1"],
    ),
    "label not an integer": (
        lambda f: _edit_csv(f / "Label.csv", lambda t: _set(t, 1, "Target", "G2")),
        ["Label.csv line 3", "'G2'", "whole-number"],
    ),
    "empty label set": (
        lambda f: _edit_csv(f / "Label.csv", lambda t: t.iloc[:0]),
        ["Label.csv", "no edges", "empty label set"],
    ),
    "malformed Label columns": (
        lambda f: _edit_csv(f / "Label.csv", lambda t: t.rename(columns={"TF": "Source"})),
        ["Label.csv", "malformed columns", "'Source'", ",TF,Target"],
    ),
    "TF index past gene list": (
        lambda f: _edit_csv(f / "TF.csv", lambda t: _set(t, 1, "index", 9)),
        ["TF.csv line 3", "is 9", "6 genes"],
    ),
    "TF name mismatch": (
        lambda f: _edit_csv(f / "TF.csv", lambda t: _set(t, 0, "index", 2)),
        ["TF.csv line 2", "'TF1'", "'G2'"],
    ),
    "Target names mismatch": (
        lambda f: _edit_csv(f / "Target.csv", lambda t: _set(t, 2, "Gene", "GX")),
        ["Target.csv line 4", "'GX'", "'G2'", "BL--ExpressionData.csv", "same folder"],
    ),
    "Target index not a permutation": (
        lambda f: _edit_csv(f / "Target.csv", lambda t: _set(t, 5, "index", 4)),
        ["Target.csv", "permutation of 0..5"],
    ),
    "Target row missing": (
        lambda f: _edit_csv(f / "Target.csv", lambda t: t.iloc[:5]),
        ["Target.csv", "permutation of 0..5", "5 rows"],
    ),
    "NaN expression": (
        lambda f: _edit_csv(f / "BL--ExpressionData.csv", lambda t: _set(t, 4, "cell3", np.nan)),
        ["BL--ExpressionData.csv", "gene 'G4'", "cell 'cell3'", "nan", "finite"],
    ),
    "inf expression": (
        lambda f: _edit_csv(f / "BL--ExpressionData.csv", lambda t: _set(t, 0, "cell7", np.inf)),
        ["BL--ExpressionData.csv", "gene 'G0'", "cell 'cell7'", "inf"],
    ),
    "text in expression": (
        lambda f: _edit_csv(f / "BL--ExpressionData.csv", lambda t: _set(t, 2, "cell1", "n/a?")),
        ["BL--ExpressionData.csv", "gene 'G2'", "cell 'cell1'", "'n/a?'", "numbers"],
    ),
    "duplicate gene": (
        lambda f: _edit_csv(f / "BL--ExpressionData.csv", lambda t: t.rename(index={"G5": "g2"})),
        ["BL--ExpressionData.csv", "'G2' appears more than once", "lines [4, 7]", "case-insensitively"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_file_and_problem(tmp_path, case):
    folder = make_folder(tmp_path)
    breaker, expected = BAD_INPUTS[case]
    breaker(folder)
    with pytest.raises(GrnInputError) as err:
        load_benchmark(folder)
    message = str(err.value)
    for part in expected:
        assert part in message, f"{case}: {part!r} not in {message!r}"


def test_not_a_folder_and_no_benchmark_root(tmp_path):
    with pytest.raises(GrnInputError, match="not a directory"):
        load_benchmark(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GrnInputError, match="no benchmark folder"):
        discover(tmp_path / "empty")
    with pytest.raises(GrnInputError, match="not a directory"):
        discover(tmp_path / "nope")


def test_discover_synthetic_tree(tmp_path):
    complete = make_folder(tmp_path, "Specific")
    partial = make_folder(tmp_path, "STRING")
    (partial / "BL--ExpressionData.csv").unlink()
    (partial / "TF.csv").unlink()
    available, skipped = discover(tmp_path)
    assert available == [complete]
    assert len(skipped) == 1 and skipped[0][0] == partial
    assert "no TF.csv" in skipped[0][1] and "BL--ExpressionData.csv.gz" in skipped[0][1]


def test_dataset_checks_programmatic_inputs():
    base = {
        "name": "x",
        "network": "prior",
        "genes": ["A", "B", "C"],
        "expression": np.zeros((3, 2)),
        "cell_ids": ["c0", "c1"],
        "tf_index": [0],
        "positives": [[0, 1], [0, 2]],
    }
    assert GrnDataset(**base).density_exact == pytest.approx(2 / (1 * 3 - 1))
    for change, pattern in (
        ({"network": "Specfic"}, "network 'Specfic' is not one of"),
        ({"expression": np.zeros((2, 2))}, r"shape \(2, 2\) but there are 3 genes"),
        ({"tf_index": [5]}, "outside the gene list"),
        ({"positives": [[0, 3]]}, "indexes past the gene list"),
        ({"positives": [0, 1, 2]}, r"shape \(n_edges, 2\)"),
    ):
        with pytest.raises(GrnInputError, match=pattern):
            GrnDataset(**{**base, **change})
