"""Expression-value normalization and the reconstruction losses of masked-expression pretraining.

Inputs are packed cells (see `data_prep.loader.CellBatch.to_torch`): `values` (T,) holds the raw counts of each
cell's expressed genes and `cu_seqlens` (B+1,) int32 marks where each cell starts and ends.

Three objectives for a masked gene with observed count k in a cell with library size s (total counts):

- ``mse``: squared error on x = log1p(k / s · 1e4), the log-normalized value Exceiver regresses
  (Connell et al. 2022, "A single-cell gene expression language model", arXiv:2210.14330).
- ``poisson``: k ~ Poisson(μ) with μ = exp(ŷ) · s / 1e4; ŷ is the log expression per 1e4 counts, so the network's
  output lives on the same scale for deep and shallow cells and library size enters as a fixed offset.
- ``nb``: k ~ NB(μ, θ) with the same μ and a learned per-gene inverse dispersion θ, as in scVI
  (Lopez et al. 2018, "Deep generative modeling for single-cell transcriptomics", Nat. Methods 15:1053).

Every loss is the mean over the tokens it is given (the masked ones) and includes all normalizing constants, so the
likelihood losses equal `-torch.distributions.*.log_prob(k).mean()`. Zero masked tokens give a loss of 0, not NaN.

Zero truncation. The corpus stores expressed genes only, so every target count is >= 1 and the right likelihood is
the zero-truncated one, p(k | k > 0) = p(k) / (1 − p(0)) (Cohen, 1960, for the Poisson; the hurdle / truncated NB
of count regression). Without the 1 − p(0) term, the full likelihood of only positive counts rewards pushing μ up
(no mass is ever asked for at 0), which biases the predicted expression of lowly expressed genes. Pass
`zero_truncated=True` (the Exceiver does for its masked, hence expressed, genes), or a (N,) bool mask of the tokens
to truncate: the Exceiver passes `counts > 0`, so the unexpressed measured genes that `model.mask_unexpressed`
adds (k = 0, known zeros) get the full likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

TARGET_SUM = 1e4  # counts per cell after normalization ("CP10k"), scanpy's `normalize_total(target_sum=1e4)`


def token_cell_index(cu_seqlens: Tensor, total: int) -> Tensor:
    """(B+1,) offsets -> (T,) int64 index of the cell each token belongs to (no device sync: `output_size` given)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (B,)
    cells = torch.arange(lengths.numel(), device=cu_seqlens.device)  # (B,)
    return torch.repeat_interleave(cells, lengths, output_size=total)  # (T,)


def cell_library_size(values: Tensor, cu_seqlens: Tensor) -> Tensor:
    """(T,) counts, (B+1,) offsets -> (B,) total counts per cell (a segment sum; fp32 or wider)."""
    cell_of_token = token_cell_index(cu_seqlens, values.shape[0])  # (T,)
    totals = values.new_zeros(cu_seqlens.numel() - 1, dtype=torch.promote_types(values.dtype, torch.float32))
    return totals.index_add_(0, cell_of_token, values.to(totals.dtype))  # (B,)


def normalize_log1p(
    values: Tensor, cu_seqlens: Tensor, target_sum: float = TARGET_SUM, library_size: Tensor | None = None
) -> Tensor:
    """log1p(k / s · target_sum) per token, s the total counts of the token's cell.

    Args:
        values: (T,) raw counts, packed.
        cu_seqlens: (B+1,) cell boundaries into `values`.
        target_sum: counts per cell after scaling (1e4 = CP10k).
        library_size: (B,) optional per-cell totals to divide by instead of the sum of `values`; pass the totals of
            the full cells when `values` holds only a subset of each cell's genes (gene sampling, masking).

    Returns:
        (T,) float tensor. Cells whose total is 0 give 0 (not NaN).
    """
    if library_size is None:
        library_size = cell_library_size(values, cu_seqlens)  # (B,)
    per_token = library_size[token_cell_index(cu_seqlens, values.shape[0])]  # (T,)
    scaled = values.to(per_token.dtype) / per_token.clamp_min(torch.finfo(per_token.dtype).tiny) * target_sum
    return torch.log1p(scaled).to(torch.promote_types(values.dtype, torch.float32))  # (T,)


def log1mexp(a: Tensor) -> Tensor:
    """log(1 − exp(−a)) for a > 0, accurate at both ends (Mächler, 2012, "Accurately computing log(1 − exp(−|a|))"):
    log(−expm1(−a)) for a <= log 2, log1p(−exp(−a)) above."""
    small = a <= math.log(2.0)
    safe_small = torch.where(small, a, torch.ones_like(a))  # keep both branches finite for autograd
    safe_large = torch.where(small, torch.ones_like(a), a)
    return torch.where(small, torch.log(-torch.expm1(-safe_small)), torch.log1p(-torch.exp(-safe_large)))


def _mean(per_token: Tensor) -> Tensor:
    # sum / count with a Python-int count: no device sync, and 0 (not NaN) when no token is masked.
    return per_token.sum() / max(per_token.numel(), 1)


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean_i (ŷ_i − x_i)², over the N masked tokens. pred, target: (N,). Computed in fp32."""
    return _mean((pred.float() - target.float()).square())


def _log_mean(pred_log_mean: Tensor, library_size: Tensor | float, target_sum: float) -> Tensor:
    """log μ = ŷ + log(s / target_sum), in fp32 (fp64 for fp64 inputs)."""
    dtype = torch.promote_types(pred_log_mean.dtype, torch.float32)
    library = torch.as_tensor(library_size, dtype=dtype, device=pred_log_mean.device)
    return pred_log_mean.to(dtype) + torch.log(library) - math.log(target_sum)


def poisson_nll(
    pred_log_rate: Tensor,
    counts: Tensor,
    library_size: Tensor | float,
    target_sum: float = TARGET_SUM,
    *,
    zero_truncated: bool | Tensor = False,
) -> Tensor:
    """Poisson negative log-likelihood, mean over the N masked tokens.

    With μ = exp(ŷ) · s / target_sum (ŷ the predicted log expression per `target_sum` counts, s the cell's library
    size):  −log p(k) = μ − k · log μ + lgamma(k + 1);  zero-truncated (k >= 1): add log(1 − e^−μ).

    Args:
        pred_log_rate: (N,) ŷ.
        counts: (N,) observed counts k.
        library_size: (N,) library size s of each token's cell (or a scalar).
        target_sum: the scale ŷ is expressed on (1e4).
    """
    log_mu = _log_mean(pred_log_rate, library_size, target_sum)  # (N,)
    k = counts.to(log_mu.dtype)
    mu = torch.exp(log_mu)
    nll = mu - k * log_mu + torch.lgamma(k + 1.0)
    if zero_truncated is not False:
        truncation = log1mexp(mu.clamp_min(torch.finfo(mu.dtype).tiny))  # − log p(k) + log(1 − p(0))
        nll = nll + _where(zero_truncated, truncation)
    return _mean(nll)


def negative_binomial_nll(
    pred_log_mean: Tensor,
    log_theta: Tensor,
    counts: Tensor,
    library_size: Tensor | float,
    target_sum: float = TARGET_SUM,
    *,
    zero_truncated: bool | Tensor = False,
) -> Tensor:
    """Negative-binomial negative log-likelihood in scVI's mean / inverse-dispersion form, mean over N tokens.

    Lopez et al. 2018 (scVI): k ~ NB(μ, θ) with mean μ and inverse dispersion θ > 0, Var[k] = μ + μ²/θ
    (θ → ∞ is Poisson). Here μ = exp(ŷ) · s / target_sum and θ = exp(log_theta), learned per gene:

        log p(k) = θ (log θ − log(θ + μ)) + k (log μ − log(θ + μ))
                   + lgamma(k + θ) − lgamma(θ) − lgamma(k + 1)

    Written with softplus, log(1 + e^x), so no ratio of θ and μ is formed and nothing overflows for large μ or θ:
    log θ − log(θ + μ) = −softplus(log μ − log θ) and log μ − log(θ + μ) = −softplus(log θ − log μ).
    Zero-truncated (k >= 1): add log(1 − p(0)), with −log p(0) = θ · softplus(log μ − log θ).

    Args:
        pred_log_mean: (N,) ŷ, log expression per `target_sum` counts.
        log_theta: (N,) log inverse dispersion of each token's gene (e.g. `Embedding(vocab_size, 1)(gene_ids)`).
        counts: (N,) observed counts k.
        library_size: (N,) library size s of each token's cell (or a scalar).
        target_sum: the scale ŷ is expressed on (1e4).
    """
    log_mu = _log_mean(pred_log_mean, library_size, target_sum)  # (N,)
    log_theta = log_theta.to(log_mu.dtype)
    theta = torch.exp(log_theta)
    k = counts.to(log_mu.dtype)
    neg_log_p0 = theta * F.softplus(log_mu - log_theta)  # −θ (log θ − log(θ + μ)) = −log p(0)
    log_prob = (
        -neg_log_p0
        - k * F.softplus(log_theta - log_mu)  # k (log μ − log(θ + μ))
        + torch.lgamma(k + theta)
        - torch.lgamma(theta)
        - torch.lgamma(k + 1.0)
    )
    if zero_truncated is not False:
        truncation = log1mexp(neg_log_p0.clamp_min(torch.finfo(neg_log_p0.dtype).tiny))
        log_prob = log_prob - _where(zero_truncated, truncation)
    return _mean(-log_prob)


def _where(zero_truncated: bool | Tensor, truncation: Tensor) -> Tensor:
    """The truncation term where asked: everywhere (True) or on the tokens of a (N,) bool mask (e.g. counts > 0)."""
    if isinstance(zero_truncated, Tensor):
        return torch.where(zero_truncated, truncation, torch.zeros_like(truncation))
    return truncation


__all__ = [
    "TARGET_SUM",
    "cell_library_size",
    "log1mexp",
    "mse_loss",
    "negative_binomial_nll",
    "normalize_log1p",
    "poisson_nll",
    "token_cell_index",
]
