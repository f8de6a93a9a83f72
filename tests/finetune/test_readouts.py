"""Readouts of a release for GRN inference: the perturbation probe (a TF's input moved from low to high, the masked
genes' predictions read) and the attention readout, on a planted network a small scBERT learns in a few seconds; and
the one loaded release every readout of a run shares."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import roc_auc_score

from finetune.errors import GrnInputError
from finetune.grn.attention_readout import attention_scores, has_gene_attention, latent_rollout, mean_queries_keys
from finetune.grn.probe import ProbeConfig, level_bins, metacells, perturbation_probe, tf_levels
from pretrain.models.scbert import ScBert, ScBertConfig

N_TFS, PER_TF, N_OTHER = 8, 2, 8
N_GENES = N_TFS + N_TFS * PER_TF + N_OTHER
VOCAB = N_GENES + 4  # ids 0-3 are the special tokens
TF_IDS = np.arange(4, 4 + N_TFS)


def planted_counts(n_cells: int, seed: int) -> np.ndarray:
    """(cells, genes) counts: each TF is off (0 counts, so absent from the cell) in 40 % of cells and varies when on;
    its two targets are on exactly when it is and follow its level; 8 genes vary on their own."""
    rng = np.random.default_rng(seed)
    on = rng.random((n_cells, N_TFS)) < 0.6
    level = rng.normal(size=(n_cells, N_TFS))
    regulator = np.repeat(np.arange(N_TFS), PER_TF)
    target = 1.2 * level[:, regulator] + 3.5 + 0.3 * rng.normal(size=(n_cells, len(regulator)))
    log_rate = np.concatenate(
        [
            np.where(on, level + 3.5, -np.inf),
            np.where(on[:, regulator], target, -np.inf),
            rng.normal(size=(n_cells, N_OTHER)) + 3.5,
        ],
        axis=1,
    )
    return rng.poisson(np.exp(log_rate))


def packed(counts: np.ndarray) -> dict:
    rows, cols = np.nonzero(counts)
    cu = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=counts.shape[0]))]).astype(np.int32)
    return {
        "gene_ids": torch.from_numpy(cols + 4),
        "values": torch.from_numpy(counts[rows, cols].astype(np.float32)),
        "cu_seqlens": torch.from_numpy(cu),
    }


def by_vocab_id(counts: np.ndarray) -> sp.csr_matrix:
    return sp.hstack([sp.csr_matrix((counts.shape[0], 4)), sp.csr_matrix(counts.astype(np.float32))]).tocsr()


def truth_and_candidates() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((N_GENES, N_GENES), dtype=bool)
    truth[np.repeat(np.arange(N_TFS), PER_TF), N_TFS + np.arange(N_TFS * PER_TF)] = True
    candidate = np.zeros_like(truth)
    candidate[:N_TFS] = True
    np.fill_diagonal(candidate, val=False)
    return truth, candidate


CONFIG = ScBertConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64, n_bins=11, mask_prob=0.3)
ROW_OF_ID = np.concatenate([np.full(4, -1), np.arange(N_GENES)])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model's kernels are too small for a second thread to help (and a busy machine makes two much slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> ScBert:
    """A small scBERT trained by masked-bin prediction on the planted cells (about 5 s)."""
    torch.manual_seed(0)
    model = ScBert(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(300):
        loss = model(packed(planted_counts(64, seed=step)), generator=generator)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def probe_auroc(model, metacell_size: int) -> float:
    counts = by_vocab_id(planted_counts(400, seed=10_000))
    config = ProbeConfig(max_cells=200, metacell_size=metacell_size, tfs_per_cell=N_TFS)
    contexts = metacells(counts, config.metacell_size, config.max_cells, config.seed)
    levels = tf_levels(contexts, TF_IDS, config.low_quantile, config.high_quantile)
    stats = perturbation_probe(model, contexts, ROW_OF_ID, TF_IDS, levels, N_GENES, config)
    truth, candidate = truth_and_candidates()
    return roc_auc_score(truth[candidate], np.abs(stats["probe_mean"])[candidate])


@pytest.mark.parametrize("metacell_size", [1, 20])
def test_the_probe_of_a_trained_model_finds_the_planted_edges_and_its_random_init_twin_does_not(trained, metacell_size):
    pretrained = probe_auroc(trained, metacell_size)
    twins = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        twins.append(probe_auroc(ScBert(CONFIG).eval(), metacell_size))
    # measured: pretrained 1.00 (single cells and metacells); random-init twins 0.44-0.52
    assert pretrained > 0.9, pretrained
    assert abs(np.mean(twins) - 0.5) < 0.1 and max(abs(t - 0.5) for t in twins) < 0.15, twins


def test_the_attention_readout_of_a_trained_model_finds_the_planted_edges_and_its_random_init_twin_does_not(trained):
    truth, candidate = truth_and_candidates()
    batch = packed(planted_counts(400, seed=10_000))

    def auroc(model) -> float:
        q_mean, k_mean, count = mean_queries_keys(model, [batch], ROW_OF_ID, N_GENES, max_cells=400)
        scores = attention_scores(q_mean, k_mean, count, np.arange(N_TFS))
        assert scores["attention_heads"].shape == (CONFIG.n_layers * CONFIG.n_heads, N_GENES, N_GENES)
        assert (scores["attention_mean"][N_TFS:] == 0).all()  # only TF rows are scored
        return roc_auc_score(truth[candidate], scores["attention_mean"][candidate])

    pretrained = auroc(trained)
    twins = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        twins.append(auroc(ScBert(CONFIG).eval()))
    # measured: pretrained 0.99; random-init twins 0.48-0.60
    assert pretrained > 0.9, pretrained
    assert abs(np.mean(twins) - 0.5) < 0.1 and max(abs(t - 0.5) for t in twins) < 0.15, twins


def test_max_cells_bounds_the_attention_readout_and_an_exceiver_has_no_gene_self_attention(trained):
    from pretrain.models.exceiver import Exceiver, ExceiverConfig

    batch = packed(planted_counts(50, seed=3))
    _, _, count = mean_queries_keys(trained, [batch], ROW_OF_ID, N_GENES, max_cells=7)
    assert count.max() <= 7 and count.max() > 0
    exceiver = Exceiver(ExceiverConfig(vocab_size=VOCAB, d_model=16, n_latents=4, n_heads=2, d_ff=32))
    with pytest.raises(GrnInputError, match="no self-attention over a cell's genes"):
        mean_queries_keys(exceiver, [batch], ROW_OF_ID, N_GENES, max_cells=7)
    assert has_gene_attention(exceiver) and has_gene_attention(trained)  # the Exceiver's is read through latents


def test_the_exceivers_attention_maps_are_the_weights_its_forward_uses():
    """Each map, applied to its values, gives the attention output the model computes."""
    from pretrain.models.exceiver import Exceiver, ExceiverConfig

    torch.manual_seed(0)
    model = Exceiver(ExceiverConfig(vocab_size=VOCAB, d_model=16, n_latents=4, n_heads=2, d_ff=32,
                                    n_self_layers=2)).eval()  # fmt: skip
    batch = packed(planted_counts(5, seed=4))
    query_ids = torch.arange(4, VOCAB)
    maps = model.attention_maps(batch["gene_ids"], batch["values"], batch["cu_seqlens"], query_ids)
    captured = {}

    def keep(name):
        def hook(_module, _args, kwargs, output) -> None:
            captured[name] = (kwargs, output)

        return hook

    model.encoder.attn.register_forward_hook(keep("enc"), with_kwargs=True)
    model.decoder.attn.register_forward_hook(keep("dec"), with_kwargs=True)
    latents = model.encode(batch["gene_ids"], batch["values"], batch["cu_seqlens"])  # (B, L, D)
    kwargs, enc_out = captured["enc"]
    context, cu_k = kwargs["context"], kwargs["cu_seqlens_context"]
    enc = model.encoder.attn
    v = enc.kv_proj(context)[:, 16:].view(-1, 2, 8)  # (T, H, d)
    bounds = cu_k.tolist()
    mixed = torch.cat([torch.einsum("hlt,thd->lhd", maps["encoder"][c], v[bounds[c] : bounds[c + 1]])
                       for c in range(5)]).reshape(-1, 16)  # fmt: skip
    torch.testing.assert_close(enc.out_proj(mixed), enc_out, rtol=1e-4, atol=1e-5)
    for attention in [maps["decoder"], *maps["latent"]]:
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    # decoder: every query gene of cell 0 through the model's own decoder
    cu = torch.tensor([0, len(query_ids)], dtype=torch.int32)
    model.gene_states(query_ids, torch.ones(len(query_ids)), cu, latents=latents[:1])
    kwargs, dec_out = captured["dec"]
    dv = model.decoder.attn.kv_proj(kwargs["context"])[:, 16:].view(-1, 2, 8)  # (L, H, d)
    mixed = torch.einsum("hql,lhd->qhd", maps["decoder"][0], dv).reshape(-1, 16)
    torch.testing.assert_close(model.decoder.attn.out_proj(mixed), dec_out, rtol=1e-4, atol=1e-5)


def test_the_latent_rollout_spreads_each_query_gene_over_its_cells_genes():
    """P_c = D R E is row-stochastic over the cell's genes: with every gene a TF and one cell, a gene the cell does
    not express (nothing on the diagonal to zero) gets scores summing to 1 over the cell's genes, 0 elsewhere."""
    from pretrain.models.exceiver import Exceiver, ExceiverConfig

    torch.manual_seed(1)
    model = Exceiver(ExceiverConfig(vocab_size=VOCAB, d_model=16, n_latents=4, n_heads=2, d_ff=32,
                                    n_self_layers=2)).eval()  # fmt: skip
    counts = planted_counts(40, seed=5)
    cell = counts[:1]
    scores = latent_rollout(model, [packed(cell)], ROW_OF_ID, N_GENES, np.arange(N_GENES), max_cells=1)
    assert scores["attention_heads"].shape == (2 * 2, N_GENES, N_GENES)
    expressed = cell[0] > 0
    for channel in [scores["attention_mean"], *scores["attention_heads"]]:
        silent = np.flatnonzero(~expressed)
        np.testing.assert_allclose(channel[:, silent].sum(0), 1.0, rtol=1e-5)
        assert (channel[~expressed] == 0).all()  # a TF the cell does not express is read by no gene
    more = latent_rollout(model, [packed(counts)], ROW_OF_ID, N_GENES, np.arange(N_TFS), max_cells=40)
    assert (more["attention_mean"][N_TFS:] == 0).all() and (more["attention_mean"][:N_TFS] > 0).any()


def test_a_tf_absent_from_a_context_is_inserted_and_every_probed_pair_is_counted(trained):
    counts = planted_counts(60, seed=5)
    counts[:, 0] = 0  # TF 0 is off in every cell: only insertion can probe it
    contexts = by_vocab_id(counts)
    levels = np.tile([[0.001, 0.02]], (N_TFS, 1))
    config = ProbeConfig(max_cells=60, metacell_size=1, tfs_per_cell=N_TFS)
    first = perturbation_probe(trained, contexts, ROW_OF_ID, TF_IDS, levels, N_GENES, config)
    second = perturbation_probe(trained, contexts, ROW_OF_ID, TF_IDS, levels, N_GENES, config)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    count = first["probe_count"]
    assert count[0].sum() > 0  # the silent TF was probed through its inserted token
    assert count[N_TFS:].sum() == 0 and (np.diag(count) == 0).all()  # only TFs are moved; never their own target
    assert (first["probe_abs"] >= np.abs(first["probe_mean"]) - 1e-6).all()


def test_levels_are_quantiles_of_the_expressing_contexts_and_nan_for_a_silent_tf():
    contexts = sp.csr_matrix(np.array([[1.0, 0.0, 9.0], [3.0, 0.0, 7.0], [0.0, 0.0, 10.0]], dtype=np.float32))
    levels = tf_levels(contexts, np.array([0, 1]), 0.0, 1.0)
    np.testing.assert_allclose(levels[0], [0.1, 0.3])  # shares 1/10 and 3/10; the context without the TF ignored
    assert np.isnan(levels[1]).all()
    bins = level_bins(np.array([[1e-6, 2e-6], [0.1, 0.3]]), n_bins=11)
    assert (bins[:, 0] >= 1).all() and (bins[:, 1] > bins[:, 0]).all() and (bins <= 10).all()


def test_metacells_average_the_nearest_cells_and_size_one_keeps_cells():
    rng = np.random.default_rng(0)
    group = np.repeat([0, 1], 30)
    counts = rng.poisson(np.where(group[:, None] == 0, [20.0, 1.0, 5.0, 5.0], [1.0, 20.0, 5.0, 5.0])).astype(np.float32)
    cells = sp.csr_matrix(counts)
    same = metacells(cells, 1, 100, seed=0)
    assert same.shape == (60, 4) and np.allclose(same.toarray(), counts)
    averaged = metacells(cells, 10, 8, seed=0).toarray()
    assert averaged.shape == (8, 4)
    assert ((averaged[:, 0] > 10) ^ (averaged[:, 1] > 10)).all()  # each metacell stays within its cell group


def test_probe_config_reports_every_bad_field():
    with pytest.raises(GrnInputError) as err:
        ProbeConfig(max_cells=0, mask_fraction=0.0, low_quantile=0.9, high_quantile=0.1)
    text = str(err.value)
    assert "max_cells=0" in text and "mask_fraction=0.0" in text and "low_quantile=0.9" in text


def _cells_file(tmp_path, genes, counts):
    import anndata as ad

    adata = ad.AnnData(counts.astype(np.float32))
    adata.var_names = genes
    adata.obs_names = [f"c{i}" for i in range(counts.shape[0])]
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def test_one_run_loads_and_shards_the_release_once_for_every_readout(tmp_path, monkeypatch, caplog):
    """Embeddings, deletion and probe of both model kinds share one loaded release and one sharded corpus; a TF
    never expressed is named in one warning and not probed; when no TF is expressed the error says what to do."""
    from test_embeddings import tiny_release

    from finetune.grn import release_inputs
    from finetune.grn.embeddings import gene_embeddings
    from finetune.grn.evidence import DeletionConfig, release_deletion_evidence
    from finetune.grn.probe import release_probe_evidence

    genes = [f"G{i}" for i in range(12)]
    release, _ = tiny_release(tmp_path, genes)
    counts = np.random.default_rng(0).poisson(3.0, size=(40, 12))
    counts[:, 1] = 0  # TF G1 is never expressed
    path = _cells_file(tmp_path, genes, counts)
    calls = {"load_release": 0, "release_corpus": 0}
    for name in calls:
        original = getattr(release_inputs, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(release_inputs, name, counted)
    tfs = np.array([0, 1, 2])
    with release_inputs.open_release_inputs(release, genes, path, value_kind="counts", work_dir=tmp_path) as rel:
        assert rel.model("random-init") is rel.model("random-init") is not rel.model("pretrained")
        for kind in ("pretrained", "random-init"):
            gene_embeddings(rel, kind)
            release_deletion_evidence(rel, tfs, kind, DeletionConfig(max_cells=10))
            with caplog.at_level("WARNING"):
                stats = release_probe_evidence(rel, tfs, kind, ProbeConfig(max_cells=10, metacell_size=5))
            assert stats["probe_count"][0].sum() > 0 and stats["probe_count"][1].sum() == 0
        assert calls == {"load_release": 1, "release_corpus": 1}, calls
        assert "['G1']" in caplog.text and "not probed" in caplog.text
        with pytest.raises(GrnInputError, match=r"none of the 1 TFs .* expressed .*leave the probe out"):
            release_probe_evidence(rel, np.array([1]), "pretrained", ProbeConfig(max_cells=10))


def test_head_weights_are_fitted_on_training_edges_only_and_find_the_informative_head():
    """Six attention 'heads' over 40 genes: head 0 carries the planted edges, head 1 their opposite, the rest noise.
    The head weighting ranks held-out edges far better than the mean over heads, and poisoning the validation labels
    changes none of its weights (they are fitted on the training pairs alone; test pairs never reach the fit)."""
    from finetune.grn.config import GrnConfig
    from finetune.grn.methods import GrnInputs, fit_config, learned_methods

    rng = np.random.default_rng(0)
    n_genes, tfs = 40, np.arange(8)
    truth = np.zeros((n_genes, n_genes), dtype=bool)
    truth[rng.choice(tfs, 40), rng.integers(8, n_genes, 40)] = True
    noise = rng.normal(size=(6, n_genes, n_genes))
    heads = noise.copy()
    heads[0] += 1.5 * truth
    heads[1] -= 1.5 * truth
    pairs = np.array([(t, g) for t in tfs for g in range(n_genes) if g != t])
    labels = truth[pairs[:, 0], pairs[:, 1]].astype(np.int64)
    order = rng.permutation(len(pairs))
    rows = np.column_stack([pairs, labels])[order]
    train, val, test = rows[:150], rows[150:220], rows[220:]
    cfg = GrnConfig.__new__(GrnConfig)  # only the fields the method reads
    cfg.baselines, cfg.evidence, cfg.gnn, cfg.tuning_budget = ["attention-heads"], [], "gcn", 3
    method = next(m for m in learned_methods(cfg) if m.name == "attention-heads")
    inputs = GrnInputs(
        features=torch.zeros(n_genes, 1),
        embeddings=None,
        evidence=None,
        attention_heads={"pretrained": torch.from_numpy(heads.astype(np.float32))},
    )
    fitted = fit_config(method, cfg, inputs, train, val, seed=0, params={"C": 1.0})
    coef = fitted.state["coef"].numpy()
    assert coef.argmax() == 0 and coef.argmin() == 1, coef
    from finetune.grn.methods import scorer

    scores = scorer(method, cfg, inputs, train, 0, fitted)(test)
    weighted = roc_auc_score(test[:, 2], scores)
    mean_of_heads = roc_auc_score(test[:, 2], heads.mean(0)[test[:, 0], test[:, 1]])
    assert weighted > mean_of_heads + 0.2, (weighted, mean_of_heads)

    poisoned_val = val.copy()
    poisoned_val[:, 2] = 1 - val[:, 2]
    again = fit_config(method, cfg, inputs, train, poisoned_val, seed=0, params={"C": 1.0})
    np.testing.assert_array_equal(again.state["coef"].numpy(), coef)


def _planted_release(tmp_path, family: str = "scbert", **model_options):
    """An untrained release over the planted genes, and an .h5ad of planted cells."""
    from data_prep.vocab import GeneVocab
    from pretrain.model_factory import build_model, families
    from pretrain.release import write_release

    genes = [f"G{i:02d}" for i in range(N_GENES)]
    vocab = GeneVocab.from_genes([genes])
    config_cls, _ = families()[family]
    options = {"d_model": 32, "n_heads": 2, "d_ff": 64}
    if family == "scbert":
        options.update(n_layers=2, n_bins=11, mask_prob=0.3)
    config = config_cls(vocab_size=vocab.size, **options, **model_options)
    torch.manual_seed(0)
    model = build_model(family, config)
    manifest = {"value_kind": "counts", "totals": {"n_cells": 0}, "vocab": {"size": vocab.size, "sha256": vocab.sha256}}
    release = write_release(tmp_path / "release", family, config, model.state_dict(), vocab, manifest, {"steps": 0})
    return release, genes, _cells_file(tmp_path, genes, planted_counts(400, seed=10_000))


def test_adaptation_trains_both_kinds_on_the_cells_is_cached_and_zero_steps_change_nothing(tmp_path):
    from finetune.grn.adaptation import AdaptConfig
    from finetune.grn.probe import release_probe_evidence
    from finetune.grn.release_inputs import open_release_inputs

    release, genes, cells = _planted_release(tmp_path)
    truth, candidate = truth_and_candidates()
    tfs = np.arange(N_TFS)
    probe = ProbeConfig(max_cells=100, tfs_per_cell=N_TFS)
    with open_release_inputs(release, genes, cells, value_kind="counts") as plain:
        before = {kind: plain.model(kind).state_dict() for kind in ("pretrained", "random-init")}
        untrained = release_probe_evidence(plain, tfs, "pretrained", probe)
        plain_key = plain.cache_key("x", "pretrained")
    with open_release_inputs(release, genes, cells, value_kind="counts", adapt=AdaptConfig(steps=0)) as zero:
        assert zero.cache_key("x", "pretrained") == plain_key
        for name, value in zero.model("pretrained").state_dict().items():
            assert torch.equal(value, before["pretrained"][name])

    adapt = AdaptConfig(steps=300, lr=3e-3, batch_cells=32)
    cache = tmp_path / "cache"
    with open_release_inputs(release, genes, cells, value_kind="counts", adapt=adapt, cache_dir=cache) as rel:
        assert rel.cache_key("x", "pretrained") != plain_key
        adapted = {kind: rel.model(kind).state_dict() for kind in ("pretrained", "random-init")}
        trained = release_probe_evidence(rel, tfs, "pretrained", probe)
    for kind in ("pretrained", "random-init"):  # the twin gets the same steps
        assert any(not torch.equal(v, before[kind][k]) for k, v in adapted[kind].items()), kind
    assert len(list(cache.glob("adapted-*.safetensors"))) == 2

    def auroc(stats):
        return roc_auc_score(truth[candidate], np.abs(stats["probe_mean"])[candidate])

    # measured: 0.5 untrained, 1.0 after 300 steps on the planted cells
    assert auroc(untrained) < 0.7 and auroc(trained) > 0.9, (auroc(untrained), auroc(trained))
    with open_release_inputs(release, genes, cells, value_kind="counts", adapt=adapt, cache_dir=cache) as again:
        for name, value in again.model("pretrained").state_dict().items():  # loaded from the cache, not retrained
            assert torch.equal(value, adapted["pretrained"][name])


def test_adaptation_refuses_a_count_likelihood_on_log_normalised_values(tmp_path):
    from finetune.grn.adaptation import AdaptConfig
    from finetune.grn.release_inputs import open_release_inputs

    release, genes, cells = _planted_release(tmp_path, "exceiver", n_latents=4, objective="nb")
    refused = r"'nb' count likelihood.*log-normalised.*--adapt-steps at 0"
    with (
        pytest.raises(GrnInputError, match=refused),
        open_release_inputs(release, genes, cells, value_kind="log1p", adapt=AdaptConfig(steps=5)),
    ):
        pass
    with pytest.raises(GrnInputError, match=r"steps=-1"):
        AdaptConfig(steps=-1)
