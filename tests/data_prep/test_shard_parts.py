"""`scgrn shard --part I/N` on several machines + `scgrn shard merge` == one single-machine run.

Two inputs, 5 shards (a: 130 cells -> 45+45+40, b: 90 cells -> 45+45), both formats. Part 0/2 writes shards 0..1,
part 1/2 shards 2..4; the merged corpus must equal the single run except the run-specific manifest fields.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_adata, run_cli

import data_prep.merge
from data_prep.config import ShardConfig
from data_prep.errors import CorpusError, InputError
from data_prep.io_utils import sha256_tree
from data_prep.loader import Corpus
from data_prep.manifest import RUN_SPECIFIC_KEYS
from data_prep.merge import MERGE_MARKER, merge_parts
from data_prep.parts import Part
from data_prep.sharder import shard

OPTIONS = ("--cells-per-shard", "45", "--obs-columns", "cell_type", "--quiet")


def _comparable(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in RUN_SPECIFIC_KEYS}


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _config(inputs: list[Path], out: Path, part: str | None = None, **overrides) -> ShardConfig:
    """The in-process equivalent of OPTIONS (same identity, so in-process parts merge with CLI ones)."""
    options = {"cells_per_shard": 45, "obs_columns": ["cell_type"], **overrides}
    return ShardConfig(inputs=inputs, out=out, part=part, **options)


def _assert_same_corpus(got: Path, ref: Path) -> None:
    assert _comparable(_manifest(got)) == _comparable(_manifest(ref))
    for name in ("vocab.json", "mapping_report.json", "unmapped_genes.tsv"):
        assert (got / name).read_bytes() == (ref / name).read_bytes(), name
    for shard_meta in _manifest(ref)["shards"]:
        for fmt, info in shard_meta["files"].items():
            if fmt == "webdataset":
                assert (got / info["path"]).read_bytes() == (ref / info["path"]).read_bytes()
            assert sha256_tree(got / info["path"]) == sha256_tree(ref / info["path"]) == info["sha256"]
    assert not (got / MERGE_MARKER).exists()


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """Inputs, a single-machine corpus, and the same corpus from two parts + merge, all through the real CLI."""
    root = tmp_path_factory.mktemp("parts")
    inputs = [root / "a.h5ad", root / "b.h5ad"]
    make_adata(130, 40, seed=11).write_h5ad(inputs[0])
    make_adata(90, 50, seed=12).write_h5ad(inputs[1])
    run_cli("shard", *inputs, *OPTIONS, "--out", root / "single", check=True)
    for i in range(2):
        run_cli("shard", *inputs, *OPTIONS, "--out", root / f"part-{i}", "--part", f"{i}/2", check=True)
    parts = {f"part-{i}": json.loads((root / f"part-{i}" / "part.json").read_text()) for i in range(2)}
    # Keep the parts' documents before the merge moves their shard files away.
    for name in parts:
        shutil.copytree(root / name, root / f"{name}-copy")
    run_cli("shard", "merge", root / "part-1", root / "part-0", "--out", root / "merged", "--quiet", check=True)
    return {"root": root, "a": inputs[0], "b": inputs[1], "parts": parts}


def test_parts_then_merge_equal_a_single_run(corpora):
    root = corpora["root"]
    assert [p["part"]["shard_range"] for p in corpora["parts"].values()] == [[0, 2], [2, 5]]
    # part 0's block reads only input a: it neither hashes nor prepares b
    assert [i["sha256"] is None for i in corpora["parts"]["part-0"]["inputs"]] == [False, True]
    _assert_same_corpus(root / "merged", root / "single")
    assert _manifest(root / "merged")["formats"] == ["zarr", "webdataset"]
    assert run_cli("validate", root / "merged").returncode == 0
    assert not any((root / "part-0" / "zarr").iterdir()), "the default merge moves the shards"
    for fmt in ("zarr", "webdataset"):
        ref, got = Corpus(root / "single", fmt), Corpus(root / "merged", fmt)
        a, b = ref.read_cells(0, ref.n_cells), got.read_cells(0, got.n_cells)
        assert list(a.cell_ids) == list(b.cell_ids) and len(a.cell_ids) == 220
        for field in ("indptr", "gene_ids", "values", "split"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(a.obs["cell_type"], b.obs["cell_type"])


def test_loader_and_validate_refuse_a_part(corpora):
    part = corpora["root"] / "part-1-copy"
    with pytest.raises(CorpusError, match=r"part 1/2 .*scgrn shard merge"):
        Corpus(part)
    proc = run_cli("validate", part)
    assert proc.returncode == 1 and "scgrn shard merge" in proc.stderr


def test_merge_refuses_missing_duplicate_and_foreign_parts(corpora, tmp_path):
    root = corpora["root"]
    p0, p1 = root / "part-0-copy", root / "part-1-copy"
    proc = run_cli("shard", "merge", p0, "--out", tmp_path / "m1")
    assert proc.returncode == 2
    assert "part 1/2 (shards 2..4) is missing" in proc.stderr and "--part 1/2" in proc.stderr
    assert not (tmp_path / "m1").exists(), "nothing is written when the parts do not fit"

    with pytest.raises(CorpusError, match=r"part 0/2 given 2 times: .*part-0-copy, .*part-0-copy"):
        merge_parts([p0, p1, p0], tmp_path / "m2", progress=False)

    other_options = tmp_path / "other-options"
    shard(_config([corpora["a"], corpora["b"]], other_options, "1/2", cells_per_shard=60), progress=False)
    with pytest.raises(CorpusError) as err:
        merge_parts([p0, other_options], tmp_path / "m3", progress=False)
    assert f"{other_options}: options differ from {p0}'s in cells_per_shard (60 vs 45)" in str(err.value)

    other_inputs = tmp_path / "other-inputs"
    shard(_config([corpora["a"]], other_inputs, "1/2"), progress=False)
    with pytest.raises(CorpusError, match=rf"{other_inputs}: options differ .* in inputs"):
        merge_parts([p0, other_inputs], tmp_path / "m4", progress=False)

    with pytest.raises(CorpusError, match=r"holds a whole corpus \(manifest.json\), not a part"):
        merge_parts([p0, root / "single"], tmp_path / "m5", progress=False)
    assert not any((tmp_path / m).exists() for m in ("m2", "m3", "m4", "m5"))

    merge_parts([p1, p0], tmp_path / "copied", copy=True, progress=False)  # --copy leaves the parts intact
    _assert_same_corpus(tmp_path / "copied", root / "single")
    assert (p0 / "zarr" / "shard-000000.zarr").is_dir() and (p1 / "webdataset" / "shard-000004.tar").is_file()


@pytest.mark.parametrize("value", ["2/2", "0/0", "-1/2", "a/b", "1", "1/2/3", ""])
def test_bad_part_values_are_refused(value):
    with pytest.raises(InputError, match=r"Expected I/N with 0 <= I < N") as err:
        ShardConfig(inputs=[Path("x.h5ad")], out=Path("out"), part=value)
    assert f"--part {value!r}" in str(err.value)


def test_bad_part_value_through_the_cli(corpora, tmp_path):
    proc = run_cli("shard", corpora["a"], "--out", tmp_path / "c", "--part", "2/2")
    assert proc.returncode == 2
    assert "--part '2/2' has part index I=2; I must be in 0..1" in proc.stderr and "I/N" in proc.stderr
    assert not (tmp_path / "c").exists()


def test_contiguous_blocks_cover_every_shard_once():
    for n_shards in (0, 1, 5, 17):
        for count in (1, 2, 3, 8):
            blocks = [list(Part(i, count).shard_range(n_shards)) for i in range(count)]
            assert [k for block in blocks for k in block] == list(range(n_shards))


def test_more_parts_than_shards_and_interrupted_merge(corpora, tmp_path, monkeypatch):
    """7 parts for 5 shards (two parts are empty); a merge killed before its manifest is continued by a re-run."""
    inputs = [corpora["a"], corpora["b"]]
    dirs = [tmp_path / f"p{i}" for i in range(7)]
    for i, d in enumerate(dirs):
        shard(_config(inputs, d, f"{i}/7"), progress=False)
    assert sum(not json.loads((d / "part.json").read_text())["shards"] for d in dirs) == 2

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "merged"
    monkeypatch.setattr(data_prep.merge, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        merge_parts(dirs, out, progress=False)
    monkeypatch.undo()
    assert not (out / "manifest.json").exists() and (out / MERGE_MARKER).exists()
    with pytest.raises(CorpusError, match=r"no manifest\.json"):
        Corpus(out)
    merge_parts(dirs, out, progress=False)  # the shards were already moved: verified in place and kept
    _assert_same_corpus(out, corpora["root"] / "single")


def test_resume_within_a_part(corpora, tmp_path):
    inputs, out = [corpora["a"], corpora["b"]], tmp_path / "part-1"
    first = shard(_config(inputs, out, "1/2"), progress=False)
    victim = out / first["shards"][1]["files"]["zarr"]["path"]
    shutil.rmtree(victim)
    with pytest.raises(CorpusError, match="--resume"):
        shard(_config(inputs, out, "1/2"), progress=False)
    with pytest.raises(CorpusError, match=r"holds part 1/2 of this corpus, but this run writes part 0/2"):
        shard(_config(inputs, out, "0/2", resume=True), progress=False)
    again = shard(_config(inputs, out, "1/2", resume=True), progress=False)
    assert _comparable(again) == _comparable(first)
    assert sha256_tree(victim) == first["shards"][1]["files"]["zarr"]["sha256"]
    assert not (out / ".progress").exists()
    assert _comparable(again) == _comparable(corpora["parts"]["part-1"])
