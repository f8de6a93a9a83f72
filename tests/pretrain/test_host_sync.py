"""No micro step reads a value back from the device (issue 13, item 4).

On a GPU, a read of a device value by the host (`.item()`, `.tolist()`, `nonzero`, a boolean index, a length taken
with `max()`) stalls the host until the device has caught up, and the next kernels start late. CPU tensors never
stall, so on CPU the *meta* device plays the GPU: it has shapes but no values, and every such read raises on it.
A micro step that runs on meta tensors reads nothing back. The `gpu` test runs real steps on a GPU under
`torch.cuda.set_sync_debug_mode("error")`.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_adata
from test_scbert import _random_cells

from data_prep.loader import StatefulCellLoader, StreamingCellDataset
from pretrain.models.exceiver import OBJECTIVES, Exceiver, ExceiverConfig
from pretrain.models.scbert import ScBert, ScBertConfig

VOCAB = 300


def _scbert(attention: str = "reference") -> ScBert:
    config = ScBertConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64, n_bins=7, max_genes=40,
                          attention=attention)  # fmt: skip
    return ScBert(config)


def _exceiver(objective: str, attention: str = "reference") -> Exceiver:
    config = ExceiverConfig(vocab_size=VOCAB, d_model=32, n_heads=2, d_ff=64, max_genes=40, attention=attention,
                            objective=objective)  # fmt: skip
    return Exceiver(config)


MODELS = [("scbert", _scbert)] + [(f"exceiver-{o}", lambda o=o: _exceiver(o)) for o in OBJECTIVES]


def _on(device: str, batch: dict) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.parametrize(("name", "build"), MODELS, ids=[m[0] for m in MODELS])
def test_a_prepared_micro_step_reads_nothing_back_from_the_device(name, build):
    raw = _random_cells(6, VOCAB, seed=1, max_genes=80)  # cells longer than max_genes=40: sampling happens
    model = build()
    prepared = model.batch_preparer()(raw, torch.Generator().manual_seed(0))
    assert isinstance(prepared["n_targets"], int) and prepared["n_targets"] > 0
    model.to("meta")
    out = model(_on("meta", prepared))
    out["loss_sum"].backward()  # forward and backward ran with no value on the host side
    assert out["loss_sum"].device.type == "meta"
    assert sum(p.grad is not None for p in model.parameters()) >= len(list(model.parameters())) - 2
    # The check can fail: raw cells make the model sample and mask on the device, which reads lengths back.
    with pytest.raises((RuntimeError, NotImplementedError)):
        model(_on("meta", raw), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("name", "build"), MODELS, ids=[m[0] for m in MODELS])
def test_prepared_and_raw_batches_give_the_same_loss(name, build):
    """The loader-side preparation is the model's own: the same generator seed gives the same step either way."""
    torch.manual_seed(0)
    model = build()
    raw = _random_cells(5, VOCAB, seed=2, max_genes=70)
    prepared = model.batch_preparer()(raw, torch.Generator().manual_seed(3))
    direct = model(raw, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model(prepared)["loss_sum"], direct["loss_sum"])


def test_loader_prepared_batches_repeat_on_every_run_and_after_a_stop_and_go(tmp_path, cli):
    """Batches prepared in the loader's workers carry the same masks on every run and after a stop-and-go, with no
    generator state saved: the draws are seeded by (seed, epoch, consumer, cursor). A new epoch draws anew."""
    make_adata(240, 60, seed=4).write_h5ad(tmp_path / "a.h5ad")
    cli("shard", tmp_path / "a.h5ad", "--out", tmp_path / "corpus", "--quiet", check=True)
    prepare = _scbert().batch_preparer()

    def loader(workers: int, epoch: int = 0) -> StatefulCellLoader:
        data = StreamingCellDataset(tmp_path / "corpus", batch_size=16, block_cells=32, window_blocks=2, seed=7,
                                    obs_columns=[], prepare=prepare)  # fmt: skip
        data.set_epoch(epoch)
        return StatefulCellLoader(data, num_workers=workers)

    def key(batch):
        p = batch.prepared
        return tuple(batch.cell_ids.tolist()), tuple(p["labels"].tolist()), tuple(p["input_bins"].tolist())

    for workers in (0, 2):
        run = [key(b) for b in loader(workers)]
        assert len(run) >= 8 and len({k[1] for k in run}) == len(run)  # every batch has its own draws
        assert [key(b) for b in loader(workers)] == run
        first = loader(workers)
        it = iter(first)
        head = [key(next(it)) for _ in range(3)]
        state = first.state_dict()
        del it
        resumed = loader(workers)
        resumed.load_state_dict(state)
        assert head + [key(b) for b in resumed] == run

    def masks_by_cell(epoch: int) -> dict:
        out = {}
        for batch in loader(0, epoch):
            cu, labels = batch.prepared["cu_seqlens"].tolist(), batch.prepared["labels"]
            out.update({c: tuple(labels[cu[i] : cu[i + 1]].tolist()) for i, c in enumerate(batch.cell_ids.tolist())})
        return out

    zero, one = masks_by_cell(0), masks_by_cell(1)
    assert zero.keys() == one.keys()
    same = sum(zero[c] == one[c] for c in zero)
    assert same < 0.2 * len(zero), f"{same} of {len(zero)} cells got the same masks in epochs 0 and 1"


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["scbert", "exceiver"])
def test_gpu_micro_steps_under_sync_debug_error(tmp_path, cli, family):
    """Real steps on a GPU (bf16, torch's varlen kernels): loader workers prepare pinned batches, the step copies
    them asynchronously, runs forward, backward, clipping and AdamW, and nothing synchronises."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    make_adata(200, 80, seed=5).write_h5ad(tmp_path / "a.h5ad")
    cli("shard", tmp_path / "a.h5ad", "--out", tmp_path / "corpus", "--quiet", check=True)
    model = (_scbert("varlen") if family == "scbert" else _exceiver("nb", "varlen")).to("cuda", torch.bfloat16)
    data = StreamingCellDataset(tmp_path / "corpus", batch_size=16, block_cells=32, seed=0, obs_columns=[],
                                prepare=model.batch_preparer())  # fmt: skip
    loader = StatefulCellLoader(data, num_workers=2, pin_memory=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)
    batches = iter(loader)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            batch = next(batches)
            out = model(_on_async(batch.prepared))
            (out["loss_sum"] / max(batch.prepared["n_targets"], 1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(out["loss_sum"]).item()


def _on_async(batch: dict) -> dict:
    return {k: v.to("cuda", non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
