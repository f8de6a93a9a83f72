"""pretrain.models.exceiver: shapes, masking, objectives, packed == alone, config errors, checkpointing, learning."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pretrain.models.exceiver import Exceiver, ExceiverConfig, sample_mask
from pretrain.models.objectives import normalize_log1p

N_GENES = 60
VOCAB = 4 + N_GENES


def tiny_config(**overrides) -> ExceiverConfig:
    fields = dict(
        vocab_size=VOCAB, d_model=32, n_latents=8, n_heads=4, n_self_layers=2, d_ff=64, attention="sdpa", max_genes=64
    )
    return ExceiverConfig(**{**fields, **overrides})


def packed_cells(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Cells of the given lengths with distinct ascending gene ids and counts in 1..50, packed."""
    g = torch.Generator().manual_seed(seed)
    gene_ids = [torch.randperm(N_GENES, generator=g)[:n].sort().values + 4 for n in lengths]
    values = torch.randint(1, 51, (sum(lengths),), generator=g).float()
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return {"gene_ids": torch.cat(gene_ids), "values": values, "cu_seqlens": cu}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_and_outputs():
    torch.manual_seed(0)
    model = Exceiver(tiny_config())
    batch = packed_cells([5, 17, 2, 30])
    out = model(batch, generator=gen(0))
    n = out["n_masked"]
    assert isinstance(n, int) and n == int(out["mask"].sum()) > 0
    assert out["pred"].shape == out["target"].shape == out["masked_gene_ids"].shape == (n,)
    assert out["mask"].shape == batch["gene_ids"].shape and out["loss"].shape == ()
    torch.testing.assert_close(out["masked_gene_ids"], batch["gene_ids"][out["mask"]])
    assert model.encode(batch["gene_ids"], batch["values"], batch["cu_seqlens"]).shape == (4, 8, 32)
    assert model.gene_embeddings().shape == (VOCAB, 32)
    assert model.num_parameters() - model.num_parameters(exclude_embeddings=True) == VOCAB * 32
    # the same generator seed gives the same step
    again = model(batch, generator=gen(0))
    assert torch.equal(again["mask"], out["mask"]) and torch.equal(again["loss"], out["loss"])


def test_masking_statistics():
    lengths = [1, 2, 3, 5, 7, 10, 25, 50, 100, 400] * 30
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    mask = sample_mask(cu, sum(lengths), 0.15, gen(0))
    per_cell = torch.stack([mask[a:b].sum() for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)])
    n = torch.tensor(lengths)
    assert (per_cell[n == 1] == 0).all()  # a lone gene is never hidden: the encoder would see nothing
    assert (per_cell[n >= 2] >= 1).all() and (per_cell <= torch.clamp(n - 1, min=0)).all()
    long = n >= 50
    fraction = per_cell[long].sum().item() / n[long].sum().item()
    assert abs(fraction - 0.15) < 0.01, fraction
    assert torch.equal(mask, sample_mask(cu, sum(lengths), 0.15, gen(0)))
    assert not torch.equal(mask, sample_mask(cu, sum(lengths), 0.15, gen(1)))


@pytest.mark.parametrize("objective", ["mse", "poisson", "nb"])
def test_each_objective_runs_forward_and_backward(objective):
    torch.manual_seed(0)
    model = Exceiver(tiny_config(objective=objective))
    out = model(packed_cells([12, 30, 4, 9]), generator=gen(1))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        k for k, g in grads.items() if g is None
    ]
    assert grads["gene_embedding.weight"].abs().sum() > 0 and grads["latents"].abs().sum() > 0
    if objective == "nb":
        assert grads["log_theta.weight"].abs().sum() > 0
    if objective == "mse":  # mse targets are log1p(CP10k) of the masked genes; the others are the raw counts
        assert (out["target"] > 0).all() and (out["target"] < torch.log1p(torch.tensor(1e4))).all()
    else:
        assert torch.equal(out["target"], out["target"].round())


@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_packed_batch_equals_each_cell_alone(attention):
    torch.manual_seed(0)
    model = Exceiver(tiny_config(attention=attention)).eval()
    lengths = [6, 23, 2, 11, 40]
    batch = packed_cells(lengths, seed=3)
    cu = batch["cu_seqlens"]
    mask = sample_mask(cu, int(cu[-1]), 0.3, gen(2))
    with torch.no_grad():
        packed = model({**batch, "mask": mask})
        latents = model.encode(batch["gene_ids"], batch["values"], cu)
        alone_pred, alone_latents = [], []
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
            cell = {"gene_ids": batch["gene_ids"][a:b], "values": batch["values"][a:b]}
            cell["cu_seqlens"] = torch.tensor([0, b - a], dtype=torch.int32)
            alone_pred.append(model({**cell, "mask": mask[a:b]})["pred"])
            alone_latents.append(model.encode(cell["gene_ids"], cell["values"], cell["cu_seqlens"]))
    torch.testing.assert_close(packed["pred"], torch.cat(alone_pred), rtol=0, atol=1e-5)
    torch.testing.assert_close(latents, torch.cat(alone_latents), rtol=0, atol=1e-5)


def test_config_lists_every_bad_field():
    with pytest.raises(ValueError) as err:
        ExceiverConfig(
            vocab_size=3,
            d_model=30,
            n_heads=4,
            dropout=1.5,
            mask_prob=0.0,
            max_genes=0,
            gene_sampling="first",
            objective="l1",
            attention="xformers",
        )
    text = str(err.value)
    for field in (
        "vocab_size",
        "d_model",
        "dropout",
        "mask_prob",
        "max_genes",
        "gene_sampling",
        "objective",
        "attention",
    ):
        assert f"{field}=" in text, (field, text)
    assert "8 problem(s)" in text and "'topk'" in text and "'nb'" in text  # the allowed values are listed
    ExceiverConfig(vocab_size=VOCAB)  # the defaults are valid


def test_activation_checkpointing_gives_identical_loss_and_grads():
    torch.manual_seed(0)
    plain = Exceiver(tiny_config(objective="nb"))
    ckpt = Exceiver(tiny_config(objective="nb", activation_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    batch = packed_cells([9, 31, 3, 14], seed=5)
    losses = []
    for model in (plain, ckpt):
        out = model(batch, generator=gen(4))
        out["loss"].backward()
        losses.append(out["loss"])
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


def test_cells_longer_than_max_genes_are_subsampled():
    torch.manual_seed(0)
    model = Exceiver(tiny_config(max_genes=8, gene_sampling="topk"))
    batch = packed_cells([20, 5, 30])
    out = model(batch, generator=gen(0))
    assert out["mask"].numel() == 8 + 5 + 8
    # cell 0 keeps its 8 highest counts, normalized by the whole cell's library size (taken before the cut)
    counts0 = batch["values"][:20]
    allowed = torch.log1p(counts0.sort(descending=True).values[:8] / counts0.sum() * 1e4)  # (8,)
    targets0 = out["target"][: int(out["mask"][:8].sum())]
    assert len(targets0) >= 1
    assert ((targets0[:, None] - allowed[None, :]).abs().min(dim=1).values < 1e-5).all()


def test_value_kind_and_empty_cells_are_refused():
    model = Exceiver(tiny_config(objective="mse"))
    assert model.required_value_kind == "counts"
    model.check_value_kind("counts")
    with pytest.raises(ValueError, match=r"needs values of kind 'counts'.*holds 'log1p'"):
        model.check_value_kind("log1p")
    batch = packed_cells([4, 0, 3])
    with pytest.raises(ValueError, match=r"cell\(s\) \[1\]"):
        model(batch, generator=gen(0))


def test_flops_per_token_matches_a_flop_counter():
    torch.manual_seed(0)
    config = tiny_config(mask_prob=0.25, n_self_layers=2)
    model = Exceiver(config)
    n_cells, n_genes = 3, 20  # 20 · 0.25 = 5 masked genes in every cell, exactly
    batch = packed_cells([n_genes] * n_cells)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():  # the math backend's matmuls are counted on CPU
        out = model(batch, generator=gen(0))
    assert out["n_masked"] == 5 * n_cells
    estimate = model.flops_per_token(n_genes) / 3 * n_genes * n_cells  # forward only
    assert abs(counter.get_total_flops() - estimate) / estimate < 0.01


# ----------------------------------------------------------------------------------------------------------------------
# learning: gene B copies gene A, so a model that reads the cell must beat the per-gene mean


def coexpressed_cells(n_cells: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Genes 4, 5: A ~ Poisson(e^l) + 1 with l ~ U(0, 5) per cell, B = A + Poisson(1) noise; genes 6, 7:
    independent of everything; gene 8: a bulky gene (~5000 counts) so CP10k values are not dominated by A and B."""
    level = torch.rand(n_cells, generator=g) * 5.0
    a = torch.poisson(level.exp(), generator=g) + 1
    b = a + torch.poisson(torch.ones(n_cells), generator=g)
    noise = torch.poisson((torch.rand(n_cells, 2, generator=g) * 5.0).exp(), generator=g) + 1
    bulk = torch.poisson(torch.full((n_cells,), 5000.0), generator=g)
    counts = torch.cat([a[:, None], b[:, None], noise, bulk[:, None]], dim=1)  # (cells, 5)
    return {
        "gene_ids": (torch.arange(5) + 4).repeat(n_cells),
        "values": counts.flatten(),
        "cu_seqlens": torch.arange(n_cells + 1, dtype=torch.int32) * 5,
    }


@pytest.fixture
def one_thread():
    """Tiny matrices gain nothing from intra-op threads, and on a busy 2-core box the thread handoffs dominate."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_learns_coexpression_beyond_the_per_gene_mean(one_thread):
    torch.manual_seed(0)
    g = gen(0)
    config = ExceiverConfig(
        vocab_size=9, d_model=32, n_latents=8, n_heads=4, n_self_layers=1, d_ff=64, mask_prob=0.25, attention="sdpa"
    )
    model = Exceiver(config)
    train = [coexpressed_cells(64, g) for _ in range(20)]
    x_train = torch.cat([normalize_log1p(b["values"], b["cu_seqlens"]) for b in train])
    genes_train = torch.cat([b["gene_ids"] for b in train])
    gene_mean = torch.zeros(9).index_add_(0, genes_train, x_train) / torch.bincount(genes_train, minlength=9).clamp(
        min=1
    )
    with torch.no_grad():
        model.value_bias.fill_(x_train.mean().item())  # output-bias init at the mean target

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(150):
        loss = model(train[step % len(train)], generator=g)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    model.eval()
    with torch.no_grad():
        out = model(coexpressed_cells(512, gen(123)), generator=gen(7))  # held-out cells
    baseline_err = (gene_mean[out["masked_gene_ids"]] - out["target"]).square()
    model_err = (out["pred"] - out["target"]).square()
    pair = out["masked_gene_ids"] <= 5  # A and B, the predictable genes
    assert out["loss"].item() == pytest.approx(model_err.mean().item(), rel=1e-5)
    assert model_err.mean() < baseline_err.mean(), (model_err.mean(), baseline_err.mean())
    assert model_err[pair].mean() < 0.5 * baseline_err[pair].mean(), (model_err[pair].mean(), baseline_err[pair].mean())
