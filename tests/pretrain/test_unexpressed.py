"""`model.mask_unexpressed`: masked targets drawn from genes the cell's input measured but the cell did not express.

Unit: the asked fraction of the masked set is unexpressed, every such gene is measured and unexpressed in its cell,
targets are bin 0 / count 0, cells stay within max_genes, the draw is deterministic, and nothing changes without
panels. The Exceiver scores count-0 targets with the full likelihood. End to end: a corpus without panels is
refused; a trainer run with it resumes exactly (tests/pretrain/test_resume_anywhere.py, the one-rank stop-and-go).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from test_step_semantics import DEBUG, REPO

from pretrain.models.exceiver import ExceiverConfig
from pretrain.models.exceiver import prepare_batch as exceiver_prepare
from pretrain.models.objectives import negative_binomial_nll, poisson_nll
from pretrain.models.scbert import IGNORE_INDEX, ScBertConfig
from pretrain.models.scbert import prepare_batch as scbert_prepare

N_GENES = 200  # vocab ids 4..203 (ids 0-3 are special tokens)


def _batch(n_cells: int = 400, seed: int = 0):
    """Cells of 5..60 expressed genes out of two panels: ids 4..123 (panel 0) and 84..203 (panel 1)."""
    rng = np.random.default_rng(seed)
    panels = (np.arange(4, 124), np.arange(84, 204))
    panel = rng.integers(0, 2, n_cells)
    ids, values, lengths = [], [], []
    for c in range(n_cells):
        genes = np.sort(rng.choice(panels[panel[c]], size=int(rng.integers(5, 61)), replace=False))
        ids.append(genes)
        values.append(rng.integers(1, 30, genes.size))
        lengths.append(genes.size)
    cu = np.concatenate([[0], np.cumsum(lengths)])
    batch = {
        "cu_seqlens": torch.from_numpy(cu.astype(np.int32)),
        "gene_ids": torch.from_numpy(np.concatenate(ids)),
        "values": torch.from_numpy(np.concatenate(values).astype(np.float32)),
        "panel": torch.from_numpy(panel),
    }
    return batch, panels, ids


def _cells(cu, *arrays):
    cu = cu.tolist()
    return [[a[cu[c] : cu[c + 1]] for a in arrays] for c in range(len(cu) - 1)]


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_scbert_masks_the_asked_fraction_of_unexpressed_measured_genes(fraction):
    batch, panels, expressed = _batch()
    config = ScBertConfig(vocab_size=4 + N_GENES, n_bins=7, max_genes=48, mask_prob=0.15, mask_unexpressed=fraction)
    out = scbert_prepare(config, batch, torch.Generator().manual_seed(0), panels)
    n_zero = n_masked = n_mask_input = 0
    for c, (genes, labels, inputs) in enumerate(_cells(out["cu_seqlens"], out["gene_ids"], out["labels"],
                                                       out["input_bins"])):  # fmt: skip
        assert len(genes) <= config.max_genes and len(set(genes.tolist())) == len(genes)
        off = ~np.isin(genes.numpy(), expressed[c])
        measured = np.isin(genes.numpy(), panels[int(batch["panel"][c])])
        assert measured.all()  # every token, expressed or not, is a gene the cell's input measured
        assert (labels[off] == 0).all() and (labels[~off] != 0).all()  # only an unexpressed gene's target is bin 0
        n_zero += int(off.sum())
        n_masked += int((labels != IGNORE_INDEX).sum())
        n_mask_input += int((inputs[off] == config.mask_token).sum())
    assert abs(n_zero / n_masked - fraction) < 0.03, (n_zero, n_masked)
    assert abs(n_mask_input / n_zero - config.mask_replace_prob) < 0.05  # [MASK] as input, else bin 0
    again = scbert_prepare(config, batch, torch.Generator().manual_seed(0), panels)
    assert all(torch.equal(out[k], again[k]) for k in ("gene_ids", "input_bins", "labels", "cu_seqlens"))


def test_without_panels_or_at_zero_the_objective_is_the_expressed_genes_one():
    batch, panels, _ = _batch(60)
    base = ScBertConfig(vocab_size=4 + N_GENES, n_bins=7, max_genes=48)
    asked = ScBertConfig(vocab_size=4 + N_GENES, n_bins=7, max_genes=48, mask_unexpressed=0.3)
    reference = scbert_prepare(base, batch, torch.Generator().manual_seed(3), panels)
    for config, given in ((asked, None), (base, panels)):
        out = scbert_prepare(config, batch, torch.Generator().manual_seed(3), given)
        assert all(torch.equal(out[k], reference[k]) for k in ("gene_ids", "input_bins", "labels", "cu_seqlens"))


def test_exceiver_adds_count_zero_targets_scored_with_the_full_likelihood():
    batch, panels, expressed = _batch(300)
    config = ExceiverConfig(vocab_size=4 + N_GENES, max_genes=48, objective="nb", mask_unexpressed=0.4)
    out = exceiver_prepare(config, batch, torch.Generator().manual_seed(1), panels)
    cells = _cells(out["cu_query"], out["query_gene_ids"], out["target"])
    n_zero = 0
    for c, (genes, target) in enumerate(cells):
        off = ~np.isin(genes.numpy(), expressed[c])
        assert (target[off] == 0).all() and (target[~off] >= 1).all()
        assert np.isin(genes.numpy(), panels[int(batch["panel"][c])]).all()
        n_zero += int(off.sum())
    assert abs(n_zero / out["n_targets"] - 0.4) < 0.04
    for c, (genes,) in enumerate(_cells(out["cu_encoder"], out["encoder_gene_ids"])):
        assert np.isin(genes.numpy(), expressed[c]).all()  # the encoder sees expressed genes only; zeros are queries
    # per token: the zero-truncated likelihood for k >= 1, the full one for k = 0
    k = torch.tensor([0.0, 0.0, 3.0, 1.0])
    pred, log_theta, library = torch.tensor([0.5, -1.0, 1.0, 2.0]), torch.tensor([0.2, 0.0, -0.3, 0.1]), 1e4
    mu, theta = torch.exp(pred), torch.exp(log_theta)
    nb = torch.distributions.NegativeBinomial(total_count=theta, probs=mu / (mu + theta))
    expected = -torch.where(k > 0, nb.log_prob(k) - torch.log1p(-nb.log_prob(torch.zeros(4)).exp()), nb.log_prob(k))
    got = negative_binomial_nll(pred, log_theta, k, library, 1e4, zero_truncated=k > 0)
    assert got.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    poisson = torch.distributions.Poisson(mu)
    expected = -torch.where(k > 0, poisson.log_prob(k) - torch.log1p(-torch.exp(-mu)), poisson.log_prob(k))
    assert poisson_nll(pred, k, library, 1e4, zero_truncated=k > 0).item() == pytest.approx(expected.mean().item())


def test_a_corpus_without_panels_is_refused_with_the_fix(tmp_path):
    old = REPO / "tests" / "data" / "archives" / "v2" / "corpus"
    args = ["--config", str(DEBUG), f"data.corpus={old}", f"train.out_dir={tmp_path / 'run'}",
            "model.mask_unexpressed=0.3", "train.steps=2"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "pretrain", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "model.mask_unexpressed = 0.3" in proc.stderr and "corpus format 2" in proc.stderr
    assert "Re-shard" in proc.stderr and "model.mask_unexpressed=0" in proc.stderr


def test_a_fraction_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"mask_unexpressed=1\.0 must be a float in \[0, 1\)"):
        ScBertConfig(vocab_size=10, mask_unexpressed=1.0)
    with pytest.raises(ValueError, match=r"mask_unexpressed=-0\.1"):
        ExceiverConfig(vocab_size=10, mask_unexpressed=-0.1)
