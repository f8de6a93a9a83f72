"""pretrain.models.objectives: normalization by hand, likelihoods against torch.distributions, finite gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import NegativeBinomial, Poisson

from pretrain.models.objectives import (
    cell_library_size,
    log1mexp,
    mse_loss,
    negative_binomial_nll,
    normalize_log1p,
    poisson_nll,
    token_cell_index,
)


def _random_tokens(n: int = 500, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, generator=g, dtype=torch.float64) * 2.0  # log expression per 1e4
    library = torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * 8.0 + 4.0)  # 55 .. 160k counts
    mu = torch.exp(pred) * library / 1e4
    counts = torch.poisson(mu, generator=g)
    log_theta = torch.randn(n, generator=g, dtype=torch.float64) * 2.0
    return pred, counts, library, log_theta


def test_normalize_log1p_by_hand():
    # cell 0: counts 1, 3 (total 4); cell 1: counts 10 (total 10); cell 2: counts 2, 2, 6 (total 10)
    cu = torch.tensor([0, 2, 3, 6], dtype=torch.int32)
    values = torch.tensor([1.0, 3.0, 10.0, 2.0, 2.0, 6.0])
    expected = torch.tensor([2500.0, 7500.0, 10000.0, 2000.0, 2000.0, 6000.0]).log1p()
    torch.testing.assert_close(normalize_log1p(values, cu), expected)
    torch.testing.assert_close(
        normalize_log1p(values, cu, target_sum=10.0), torch.tensor([2.5, 7.5, 10, 2, 2, 6]).log1p()
    )
    torch.testing.assert_close(cell_library_size(values, cu), torch.tensor([4.0, 10.0, 10.0]))
    assert token_cell_index(cu, 6).tolist() == [0, 0, 1, 2, 2, 2]


def test_normalize_log1p_with_full_cell_totals_and_empty_cells():
    # a subset of a cell's genes is normalized by the full cell's total when `library_size` is passed
    cu = torch.tensor([0, 1, 1, 2], dtype=torch.int32)  # cell 1 is empty
    values = torch.tensor([5.0, 0.0])
    out = normalize_log1p(values, cu, library_size=torch.tensor([50.0, 0.0, 0.0]))
    torch.testing.assert_close(out, torch.tensor([math.log1p(1000.0), 0.0]))
    assert torch.isfinite(normalize_log1p(values, cu)).all()


def test_mse_is_the_mean_squared_error_and_zero_without_tokens():
    pred, target = torch.randn(40), torch.randn(40)
    torch.testing.assert_close(mse_loss(pred, target), torch.nn.functional.mse_loss(pred, target))
    assert mse_loss(torch.empty(0), torch.empty(0)).item() == 0.0


def test_poisson_nll_matches_torch_distributions():
    pred, counts, library, _ = _random_tokens()
    expected = -Poisson(torch.exp(pred) * library / 1e4).log_prob(counts).mean()
    torch.testing.assert_close(poisson_nll(pred, counts, library).double(), expected, rtol=1e-5, atol=1e-5)


def test_negative_binomial_nll_matches_torch_distributions():
    pred, counts, library, log_theta = _random_tokens()
    mu, theta = torch.exp(pred) * library / 1e4, torch.exp(log_theta)
    # torch's NB counts successes before `total_count` failures: mean = total_count · p / (1 − p) = μ for
    # total_count = θ and logit(p) = log μ − log θ (scVI's mean / inverse-dispersion form).
    expected = -NegativeBinomial(total_count=theta, logits=torch.log(mu) - torch.log(theta)).log_prob(counts).mean()
    got = negative_binomial_nll(pred, log_theta, counts, library).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_negative_binomial_tends_to_poisson_for_large_theta():
    pred, counts, library, _ = _random_tokens(seed=1)
    big_theta = torch.full_like(pred, 12.0)  # θ = e^12 ≈ 1.6e5
    nb = negative_binomial_nll(pred, big_theta, counts, library)
    torch.testing.assert_close(nb, poisson_nll(pred, counts, library), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("loss_name", ["mse", "poisson", "nb"])
def test_gradients_are_finite_even_for_extreme_inputs(loss_name):
    pred = torch.tensor([-30.0, -5.0, 0.0, 5.0, 15.0], requires_grad=True)
    counts = torch.tensor([0.0, 1.0, 7.0, 300.0, 5000.0])
    library = torch.tensor([10.0, 1e3, 1e4, 1e5, 1e6])
    log_theta = torch.tensor([-8.0, -1.0, 0.0, 3.0, 20.0], requires_grad=True)
    if loss_name == "mse":
        loss = mse_loss(pred, counts.log1p())
    elif loss_name == "poisson":
        loss = poisson_nll(pred, counts, library)
    else:
        loss = negative_binomial_nll(pred, log_theta, counts, library)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all()
    if loss_name == "nb":
        assert torch.isfinite(log_theta.grad).all()


# ---------------------------------------------------------------------------------------------------------------------
# zero truncation: the corpus stores expressed genes only, so targets are k >= 1


def test_log1mexp_is_accurate_at_both_ends():
    a = torch.tensor([1e-30, 1e-8, 1e-3, 0.5, math.log(2.0), 1.0, 30.0, 800.0], dtype=torch.float64)
    from decimal import Decimal, getcontext

    getcontext().prec = 60  # the reference in 60-digit decimal arithmetic
    expected = [float((1 - (-Decimal(x)).exp()).ln()) for x in a.tolist()]
    torch.testing.assert_close(log1mexp(a), torch.tensor(expected, dtype=torch.float64), rtol=1e-13, atol=0.0)


def test_zero_truncated_likelihoods_match_torch_distributions_conditioned_on_k_positive():
    pred, counts, library, log_theta = _random_tokens(seed=3)
    keep = counts > 0
    pred, counts, library, log_theta = pred[keep], counts[keep], library[keep], log_theta[keep]
    mu, theta = torch.exp(pred) * library / 1e4, torch.exp(log_theta)
    poisson = Poisson(mu)
    expected = -(poisson.log_prob(counts) - torch.log1p(-torch.exp(poisson.log_prob(torch.zeros_like(counts)))))
    got = poisson_nll(pred, counts, library, zero_truncated=True).double()
    torch.testing.assert_close(got, expected.mean(), rtol=1e-5, atol=1e-5)
    nb = NegativeBinomial(total_count=theta, logits=torch.log(mu) - torch.log(theta))
    expected = -(nb.log_prob(counts) - torch.log1p(-torch.exp(nb.log_prob(torch.zeros_like(counts)))))
    got = negative_binomial_nll(pred, log_theta, counts, library, zero_truncated=True).double()
    torch.testing.assert_close(got, expected.mean(), rtol=1e-5, atol=1e-4)


def test_zero_truncated_probabilities_sum_to_one_over_k_positive():
    mu, theta = torch.tensor([0.05, 1.3, 20.0], dtype=torch.float64), torch.tensor([0.3, 2.0, 50.0])
    k = torch.arange(1, 4000, dtype=torch.float64)[:, None].expand(-1, 3)  # (K, 3)
    pred = torch.log(mu * 1e4 / 100.0).expand_as(k)  # library size 100
    for nll in (
        lambda kk, pp, i: poisson_nll(pp[:, i], kk[:, i], 100.0, zero_truncated=True),
        lambda kk, pp, i: negative_binomial_nll(
            pp[:, i], theta.log()[i].expand(kk.shape[0]), kk[:, i], 100.0, zero_truncated=True
        ),
    ):
        for i in range(3):
            per_k = torch.stack([nll(k[j : j + 1], pred[j : j + 1], i) for j in range(0, 400)])
            total = torch.exp(-per_k.double()).sum()
            assert 0.97 < float(total) <= 1.0 + 1e-4, float(total)


@pytest.mark.parametrize("loss_name", ["poisson", "nb"])
def test_zero_truncated_gradients_match_finite_differences(loss_name):
    """Analytic gradients of the truncated likelihoods (w.r.t. ŷ and log θ) against central differences, in
    float64, including small means (μ ~ 1e-3) where the truncation term dominates."""
    g = torch.Generator().manual_seed(5)
    pred = (torch.randn(12, generator=g, dtype=torch.float64) * 3.0).requires_grad_()
    log_theta = (torch.randn(12, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    counts = torch.randint(1, 30, (12,), generator=g).double()
    library = torch.full((12,), 100.0, dtype=torch.float64)

    if loss_name == "poisson":
        assert torch.autograd.gradcheck(
            lambda p: poisson_nll(p, counts, library, zero_truncated=True), (pred,), eps=1e-6, atol=1e-7
        )
    else:
        assert torch.autograd.gradcheck(
            lambda p, t: negative_binomial_nll(p, t, counts, library, zero_truncated=True),
            (pred, log_theta),
            eps=1e-6,
            atol=1e-7,
        )
