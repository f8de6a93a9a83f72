"""The joint model and its training loop: shapes on a hand-made graph, message passing, leak-free training."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from finetune.grn.fit import TrainConfig, auroc_torch, fit_link_model, predict, training_graph
from finetune.grn.fit_pool import keep_freed_memory
from finetune.grn.link_model import ENCODERS, LinkModelConfig, LinkPredictor


def tiny_graph():
    # 5 genes: 0 → 1, 0 → 2 are known edges; 3 and 4 are isolated
    expression = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    train = np.array([[0, 1, 1], [0, 2, 1], [0, 3, 0], [0, 4, 0]])
    return expression, train


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("decoder", ["mlp", "dot"])
def test_forward_shapes_on_a_hand_made_graph(encoder, decoder):
    torch.manual_seed(0)
    expression, train = tiny_graph()
    emb = torch.randn(5, 6)
    model = LinkPredictor(7, LinkModelConfig(encoder=encoder, decoder=decoder, hidden_dims=[8, 4], heads=2), emb)
    edge_index = training_graph(train, 5)
    pairs = torch.tensor([[0, 1], [0, 3], [1, 4]])
    logits = model(expression, edge_index, pairs)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    tf_view, target_view = model.encode(expression, edge_index)
    assert tf_view.shape == target_view.shape == (5, model.config.out_dim)


def test_training_graph_holds_training_positives_only_in_both_directions():
    train = np.array([[0, 1, 1], [0, 2, 1], [0, 3, 0], [2, 2, 1]])
    edge_index = training_graph(train, 5)
    edges = {tuple(e) for e in edge_index.T.tolist()}
    assert edges == {(0, 1), (1, 0), (0, 2), (2, 0)}  # negatives and self loops left out


@pytest.mark.parametrize("encoder", ["gcn", "sage", "gat"])
def test_message_passing_reaches_neighbours_only(encoder):
    """Changing gene 1's features moves gene 0 (its neighbour) but not the isolated gene 4."""
    torch.manual_seed(0)
    expression, train = tiny_graph()
    model = LinkPredictor(7, LinkModelConfig(encoder=encoder, hidden_dims=[8], heads=2, skip=False))
    model.eval()
    edge_index = training_graph(train, 5)
    before = model.encode(expression, edge_index)[0]
    changed = expression.clone()
    changed[1] += 5.0
    after = model.encode(changed, edge_index)[0]
    assert not torch.allclose(before[0], after[0])
    assert torch.allclose(before[4], after[4])


def test_unmapped_genes_use_one_learned_vector():
    emb = torch.randn(4, 3)
    mapped = torch.tensor([True, False, True, False])
    model = LinkPredictor(0, LinkModelConfig(encoder="mlp"), emb, mapped)
    with torch.no_grad():
        model.unmapped_vector.fill_(2.0)
    x = model.node_features(None)
    assert torch.allclose(x[1], x[3])  # both unmapped rows get the same (learned) vector
    assert not torch.allclose(x[0], x[1])
    assert model.unmapped_vector.requires_grad


def test_auroc_torch_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = rng.integers(0, 10, 500).astype(np.float32)  # many ties
    got = auroc_torch(torch.from_numpy(labels).float(), torch.from_numpy(scores))
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_fit_learns_a_planted_rule_and_keeps_the_best_validation_epoch():
    """Targets of TF 0 are the genes whose first feature is positive: learnable from features alone."""
    rng = np.random.default_rng(0)
    n = 60
    expression = torch.from_numpy(rng.standard_normal((n, 10)).astype(np.float32))
    tfs = np.arange(4)
    pairs = np.array([(t, g) for t in tfs for g in range(4, n)])
    labels = (expression[pairs[:, 1], 0] > 0).numpy().astype(np.int64)
    rows = np.column_stack([pairs, labels])
    order = rng.permutation(len(rows))
    train, val, test = rows[order[:150]], rows[order[150:190]], rows[order[190:]]
    model = LinkPredictor(10, LinkModelConfig(encoder="gcn", hidden_dims=[16]))
    result = fit_link_model(model, expression, train, val, n, TrainConfig(epochs=150, patience=40, lr=1e-2), seed=0)
    scores = predict(result.model, expression, training_graph(train, n), test)
    assert roc_auc_score(test[:, 2], scores) > 0.9
    assert result.val_auroc == pytest.approx(
        roc_auc_score(val[:, 2], predict(result.model, expression, training_graph(train, n), val)), abs=1e-6
    )  # the kept parameters are exactly the ones that scored best on validation
    assert 0 <= result.best_epoch <= result.epochs_run


def test_lr_decay_shrinks_every_step_as_genelink_steplr():
    """GENELink's schedule: lr × gamma after every mini-batch step. With gamma tiny, training stops moving after the
    first step, so the decayed run ends far closer to its first-step state than the constant-lr run does."""
    expression, train = tiny_graph()
    val = np.array([[0, 1, 1], [0, 3, 0], [1, 2, 1], [1, 4, 0]])

    def trained(decay: float, epochs: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = LinkPredictor(7, LinkModelConfig(encoder="mlp", hidden_dims=[8]))
        cfg = TrainConfig(epochs=epochs, patience=epochs, lr=1e-2, batch_size=2, lr_decay=decay, min_delta=-1.0)
        fit_link_model(model, expression, train, val, 5, cfg, seed=0)  # min_delta -1: every epoch counts as best
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    one_step = trained(1e-6, 1)  # one epoch (several steps, the first at full lr)
    assert torch.allclose(trained(1e-6, 30), one_step, atol=1e-5)
    assert not torch.allclose(trained(1.0, 30), trained(1.0, 1), atol=1e-3)
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(lr_decay=0.0)


def test_validation_without_both_classes_is_refused():
    expression, train = tiny_graph()
    model = LinkPredictor(7, LinkModelConfig(encoder="mlp"))
    val = np.array([[0, 1, 1], [0, 2, 1]])
    with pytest.raises(ValueError, match="both classes"):
        fit_link_model(model, expression, train, val, 5, TrainConfig(epochs=2), seed=0)


def test_bad_model_config_lists_every_problem():
    with pytest.raises(ValueError) as err:
        LinkModelConfig(encoder="transformer", decoder="cosine", hidden_dims=[], dropout=1.5)
    for field in ("encoder", "decoder", "hidden_dims", "dropout"):
        assert field in str(err.value)


@pytest.mark.parametrize("decoder", ["mlp", "dot"])
def test_pair_evidence_starts_the_ranking_and_training_keeps_its_quality(decoder):
    """With pair evidence the untrained model ranks pairs by the (mean) evidence score, and training (early-stopped
    on validation, held-out supervision) keeps at least that ranking's quality on held-out pairs of a planted
    co-expression network."""
    from finetune.grn.evidence import evidence_tensor

    rng = np.random.default_rng(0)
    n_genes, n_cells = 60, 300
    latent = rng.normal(size=(n_genes, n_cells)).astype(np.float32)
    pairs = np.array([(t, g) for t in range(10) for g in range(10, n_genes)])
    true = rng.random(len(pairs)) < 0.3
    expression = latent.copy()
    for (t, g), on in zip(pairs, true, strict=True):
        if on:
            expression[g] += 0.35 * latent[t]  # regulated targets co-vary with their TF
    z = (expression - expression.mean(1, keepdims=True)) / expression.std(1, keepdims=True)
    features = torch.from_numpy(z)
    r = np.abs(z @ z.T / n_cells)  # (G, G) |Pearson r|
    evidence = evidence_tensor({"pearson": r}, np.arange(10))  # (1, G, G) normal scores
    table = np.column_stack([pairs, true.astype(np.int64)])
    order = rng.permutation(len(table))
    train, val, test = table[order[:250]], table[order[250:330]], table[order[330:]]
    model = LinkPredictor(n_cells, LinkModelConfig(encoder="gcn", decoder=decoder), evidence=evidence)
    untrained = predict(model, features, training_graph(train, n_genes), test, logits=True)
    r_test = r[test[:, 0], test[:, 1]]
    assert np.argsort(untrained).tolist() == np.argsort(r_test).tolist()  # epoch 0 = the evidence's ranking
    train_cfg = TrainConfig(epochs=200, lr=1e-2, patience=30, supervision_fraction=0.3)
    result = fit_link_model(model, features, train, val, n_genes, train_cfg, 0)
    trained = predict(result.model, features, training_graph(train, n_genes), test)
    assert roc_auc_score(test[:, 2], trained) >= roc_auc_score(test[:, 2], r_test) - 0.02
    assert roc_auc_score(test[:, 2], trained) > 0.8


def test_evidence_must_be_a_stack_of_square_pair_matrices():
    with pytest.raises(ValueError, match=r"evidence must be \(F >= 1, N, N\)"):
        LinkPredictor(4, LinkModelConfig(), evidence=torch.zeros(2, 5, 4))


def test_held_out_supervision_keeps_the_supervised_pairs_out_of_the_message_passing_graph(monkeypatch):
    """Each epoch the loss's positives are missing from the graph the encoder sees (PyG's disjoint_train_ratio)."""
    from finetune.grn import fit

    torch.manual_seed(0)
    expression = torch.randn(30, 8)
    rng = np.random.default_rng(0)
    train = np.array([(t, g, int(rng.random() < 0.5)) for t in range(5) for g in range(5, 30)])
    val = np.array([[0, 5, 1], [1, 6, 0], [2, 7, 1], [3, 8, 0]])
    seen = []
    decode = LinkPredictor.decode

    def spy(self, views, pairs):
        if self.training:
            seen.append((self._graph, pairs.clone()))
        return decode(self, views, pairs)

    encode = LinkPredictor.encode_features

    def remember(self, x, edge_index):
        self._graph = edge_index
        return encode(self, x, edge_index)

    monkeypatch.setattr(LinkPredictor, "decode", spy)
    monkeypatch.setattr(LinkPredictor, "encode_features", remember)
    model = LinkPredictor(8, LinkModelConfig(encoder="gcn", hidden_dims=[8]))
    config = TrainConfig(epochs=3, lr=1e-2, patience=5, supervision_fraction=0.3)
    fit.fit_link_model(model, expression, train, val, 30, config, 0)
    assert seen
    labels = {(int(a), int(b)): int(c) for a, b, c in train}
    for graph, pairs in seen:
        in_graph = {tuple(e) for e in graph.T.tolist()}
        supervised_positives = [tuple(p) for p in pairs.tolist() if labels[tuple(p)] == 1]
        assert supervised_positives and not set(supervised_positives) & in_graph
        assert len(pairs) < 0.5 * len(train)  # about 30 % of the rows are supervised per epoch


def test_message_passing_graph_of_pairs_equals_the_row_unique_reference():
    from finetune.grn.fit import _graph_of

    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        pairs = torch.randint(0, 30, (120, 2), generator=generator)
        both = torch.cat([pairs, pairs.flip(1)])
        reference = torch.unique(both[both[:, 0] != both[:, 1]], dim=0).T.contiguous()
        assert torch.equal(_graph_of(pairs), reference)
    assert _graph_of(torch.tensor([[3, 3]])).shape == (2, 0)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_fit_processes_keep_freed_memory_in_the_heap():
    """Each accepted mallopt value is within glibc's bounds (an out-of-range one is silently refused: returns 0)."""
    assert keep_freed_memory() is True
