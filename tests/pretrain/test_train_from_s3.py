"""Two ranks (deepspeed launcher, gloo) train from a corpus in an S3 bucket (moto's server on 127.0.0.1): the same
losses and the same cells per rank as from the local copy."""

from __future__ import annotations

import json

import pytest
from servers import corpus_in_a_bucket
from test_step_semantics import _corpus, _train

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
pytest.importorskip("s3fs", reason="s3:// needs the s3fs package (pip install 'scgrn[remote]')")
pytest.importorskip("moto", reason="the S3 tests need moto[server] (pip install 'scgrn[dev]')")


def test_two_ranks_train_from_a_bucket_as_from_disk(tmp_path):
    local = _corpus(tmp_path, 96, val_fraction=0.1, seed=8)
    common = ("train.steps=4", "train.save_every=4", "train.eval_every=4", "data.block_cells=8")
    # by block, as from disk (one shard: read whole, it would be a single unit for two ranks)
    common += ("train.log_cell_ids=true", "train.precision=fp32", "data.whole_shards=false")
    _train(tmp_path / "local", local, 2, *common)
    with corpus_in_a_bucket(local, "scgrn-train") as url:
        _train(tmp_path / "s3", url, 2, *common)
    there = json.loads((tmp_path / "s3" / "run_summary.json").read_text())
    here = json.loads((tmp_path / "local" / "run_summary.json").read_text())
    assert there["corpus"] == url and there["world_size"] == 2 and there["steps"] == 4
    assert there["loss_history"] == pytest.approx(here["loss_history"], rel=1e-6)
    for rank in (0, 1):
        log = f"cell_ids/rank{rank}.jsonl"
        assert (tmp_path / "s3" / log).read_text() == (tmp_path / "local" / log).read_text()
