"""`scgrn bench loader --remote` on a small corpus: every source streams the whole corpus (the bench refuses a short
epoch), the ratios are printed against the goal, and, with obstore installed, both clients fetch every byte."""

from __future__ import annotations

import json

import pytest
from conftest import require_shared

from bench import remote_loader_bench

pytest.importorskip("moto", reason="the S3 rows need moto[server] (pip install 'scgrn[dev]')")


def test_remote_loader_bench_on_a_small_corpus(tmp_path, capsys):
    require_shared("counts", "human_pbmc3k_10x.h5ad")  # the bench corpus is built from it
    out = tmp_path / "remote.json"
    args = ["--remote", "--cells", "3000", "--cells-per-shard", "1000", "--repeats", "1", "--workdir", str(tmp_path),
            "--json", str(out)]  # fmt: skip
    assert remote_loader_bench.main(args) == 0
    text = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert [(r["format"], r["source"]) for r in figures["rows"]] == [
        (fmt, source)
        for fmt in ("zarr", "webdataset")
        for source in ("local disk", "HTTP (loopback)", "S3 (moto, loopback)")
    ]
    assert all(r["cells"] == figures["cells"] and r["cells_per_s"] > 0 for r in figures["rows"])
    assert text.count("(goal >= 0.5x: ") == 4
    try:
        import obstore  # noqa: F401
    except ImportError:
        assert figures["clients"] == []
    else:
        assert {(r["source"], r["client"]) for r in figures["clients"]} == {
            (s, c) for s in ("HTTP (loopback)", "S3 (moto, loopback)") for c in ("fsspec", "obstore")
        }
        assert "| obstore |" in text
