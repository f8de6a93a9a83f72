"""A damaged corpus gives a clear error naming the shard, from `scgrn validate` and from the training loader.

Each case damages a fresh copy of one finished corpus (both formats, 4 shards), then runs the real
`scgrn validate` (exit 1, the shard's file named) and iterates `StreamingCellDataset` over every cell as training
does (a `CorpusError` naming the shard, never a bare zarr / numcodecs / tarfile traceback).

Without `verify_shards` the loader does not hash shards; it catches what fails to decode, a truncated tar, a missing
file, and a manifest record that disagrees with the shard's own header. A bit flip that still decodes (an lz4 payload
byte) or an edited checksum needs a hash: training turns on `verify_shards` (`data.verify_shards`, default true), which
hashes each shard the first time a process opens it, and `scgrn validate` hashes everything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_adata, run_cli

from data_prep.errors import CorpusError
from data_prep.loader import StreamingCellDataset

K = 2  # the damaged shard
N_CELLS = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corruption")
    make_adata(N_CELLS, 40, seed=5).write_h5ad(root / "a.h5ad")
    args = ["--cells-per-shard", "30", "--format", "both", "--obs-columns", "cell_type", "--quiet"]
    run_cli("shard", root / "a.h5ad", *args, "--out", root / "corpus", check=True)
    return root / "corpus"


@pytest.fixture
def damaged(tmp_path, corpus) -> Path:
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    return copy


ZARR = f"zarr/shard-{K:06d}.zarr"
TAR = f"webdataset/shard-{K:06d}.tar"


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=1))


def _read_everything(directory: Path, fmt: str, verify: bool = False) -> int:
    """Iterate every cell once, as a training epoch does; returns the number of cells."""
    dataset = StreamingCellDataset(directory, split="all", fmt=fmt, batch_size=16, block_cells=16, verify_shards=verify)
    return sum(batch.n_cells for batch in dataset)


def _assert_validate_names(directory: Path, *needles: str) -> str:
    result = run_cli("validate", directory)
    assert result.returncode == 1, result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in:\n{result.stderr}"
    return result.stderr


def _assert_loader_names(directory: Path, fmt: str, *needles: str) -> None:
    with pytest.raises(CorpusError) as err:
        _read_everything(directory, fmt)
    for needle in needles:
        assert needle in str(err.value), f"{needle!r} not in: {err.value}"


def test_flipped_byte_in_blosc_header_of_zarr_chunk(damaged):
    _flip_byte(damaged / ZARR / "values" / "c" / "0", 5)  # blosc header: decompression fails
    _assert_validate_names(damaged, ZARR, "sha256 does not match")
    _assert_loader_names(damaged, "zarr", ZARR, "cannot be decoded", "scgrn validate")
    assert _read_everything(damaged, "webdataset") == N_CELLS  # the other format is untouched


def test_flipped_byte_in_string_chunk(damaged):
    _flip_byte(damaged / ZARR / "cell_id" / "c" / "0", 40)  # decodes to invalid UTF-8 (was a bare UnicodeDecodeError)
    _assert_validate_names(damaged, ZARR, "sha256 does not match")
    _assert_loader_names(damaged, "zarr", ZARR, "cannot be decoded")


def test_flipped_byte_in_lz4_payload_needs_the_hash(damaged):
    # A payload byte that lz4 still decodes: wrong numbers, no decoding error. Without hashing the loader streams the
    # cells; with verify_shards (what training uses) it refuses the shard, as `scgrn validate` does.
    _flip_byte(damaged / ZARR / "values" / "c" / "0", 20)
    _assert_validate_names(damaged, ZARR, "sha256 does not match")
    assert _read_everything(damaged, "zarr") == N_CELLS
    with pytest.raises(CorpusError, match=rf"{ZARR}: shard {K}'s sha256 does not match manifest.json"):
        _read_everything(damaged, "zarr", verify=True)


def test_truncated_tar(damaged):
    tar = damaged / TAR
    with tar.open("r+b") as f:
        f.truncate(tar.stat().st_size // 2)
    _assert_validate_names(damaged, TAR, "sha256 does not match")
    _assert_loader_names(damaged, "webdataset", TAR, "truncated", "scgrn validate")
    assert _read_everything(damaged, "zarr") == N_CELLS


def test_deleted_shard(damaged):
    shutil.rmtree(damaged / ZARR)
    (damaged / TAR).unlink()
    _assert_validate_names(damaged, f"{ZARR}: missing (shard {K}, zarr)", f"{TAR}: missing (shard {K}, webdataset)")
    for fmt, name in (("zarr", ZARR), ("webdataset", TAR)):
        _assert_loader_names(damaged, fmt, name, "missing", "scgrn validate")


def test_manifest_not_json(damaged):
    path = damaged / "manifest.json"
    path.write_text(path.read_text()[:-40])
    _assert_validate_names(damaged, "manifest.json", "not valid JSON")
    for fmt in ("zarr", "webdataset"):
        _assert_loader_names(damaged, fmt, "manifest.json", "not valid JSON")


def test_manifest_cell_count_edited(damaged):
    def edit(manifest):
        manifest["shards"][K]["n_cells"] += 5

    _edit_manifest(damaged, edit)
    stderr = _assert_validate_names(damaged, ZARR, TAR, "manifest says")
    assert f"shard {K + 1}: cell_offset" in stderr
    for fmt, name in (("zarr", ZARR), ("webdataset", TAR)):
        _assert_loader_names(damaged, fmt, name, f"shard {K} does not match manifest.json", "n_cells")


def test_manifest_checksum_edited(damaged):
    def edit(manifest):
        manifest["shards"][K]["files"]["zarr"]["sha256"] = "0" * 64

    _edit_manifest(damaged, edit)
    _assert_validate_names(damaged, ZARR, "sha256 does not match")
    assert _read_everything(damaged, "zarr") == N_CELLS  # the data are intact; only a hash notices
    with pytest.raises(CorpusError, match=r"sha256 does not match manifest\.json"):
        _read_everything(damaged, "zarr", verify=True)
