"""Memory per GPU for a pretraining run, before it starts: ZeRO model states (exact formulas) + activations (estimate).

Model states follow the ZeRO paper (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", Sec. 3 and Fig. 1). With Ψ parameters, Nd data-parallel ranks and Adam:

    precision    params  grads  optimizer states K                      stage 0  stage 1      stage 2      stage 3
    bf16 mixed   2Ψ      2Ψ     12Ψ (fp32 master weights + Adam m, v)   16Ψ      4Ψ + 12Ψ/Nd  2Ψ + 14Ψ/Nd  16Ψ/Nd
    fp32         4Ψ      4Ψ     8Ψ  (Adam m, v)                         16Ψ      8Ψ + 8Ψ/Nd   4Ψ + 12Ψ/Nd  16Ψ/Nd

Stage 1 partitions the optimizer states, stage 2 also the gradients, stage 3 also the parameters. ZeRO-Offload
(Ren et al. 2021) moves the optimizer states' partition to CPU RAM (`offload_optimizer`), and with stage 3 the
parameters' partition too (`offload_param`); those bytes leave the GPU and are counted as CPU RAM instead.

Activations are not model states: they come on top, scale with the micro batch, and are only estimated here, from
Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", Sec. 4.1): one pre-LN
transformer layer keeps about 34 bytes per token per unit of width in 16-bit (32 in 2-byte tensors + 2 in 1-byte
dropout masks), for a d_ff = 4·d_model MLP and an attention kernel that does not store the L×L scores (flash / SDPA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 2**30

# (params, grads, optimizer states) bytes per parameter, by train.precision. bf16 is mixed precision: 16-bit params
# and grads, fp32 master weights + Adam moments (the paper's K = 12).
STATE_BYTES = {"bf16": (2, 2, 12), "fp32": (4, 4, 8)}
# Korthikanti et al. 2022: bytes kept per token, per unit of d_model, per layer. fp32 doubles the 2-byte tensors.
ACTIVATION_BYTES_PER_TOKEN_WIDTH_LAYER = {"bf16": 34, "fp32": 66}
ACTIVATION_BYTES_PER_ELEMENT = {"bf16": 2, "fp32": 4}


@dataclass(frozen=True)
class ParameterStats:
    """What ZeRO needs to know about a model's parameters (counted on the meta device: no memory, no init cost)."""

    total: int  # Ψ
    sizes: tuple[int, ...]  # numel of every parameter tensor
    largest_name: str  # ZeRO-3 gathers a whole tensor on every rank while its module runs
    largest_numel: int
    zero_dim: tuple[str, ...]  # DeepSpeed cannot broadcast 0-dim parameters (see pretrain/models/exceiver.py)

    def persistent_numel(self, threshold: int) -> int:
        """Elements in tensors ZeRO-3 keeps whole on every rank (numel <= stage3_param_persistence_threshold)."""
        return sum(n for n in self.sizes if n <= threshold)


def count_parameters(family: str, model_fields: dict, vocab_size: int) -> ParameterStats:
    """Build the model of `family` on the meta device and count its parameters.

    Raises pretrain's ConfigError (with every problem) when the model fields are invalid.
    """
    import torch

    from pretrain.model_factory import build_model, model_config

    config = model_config(family, model_fields, vocab_size)
    with torch.device("meta"):
        model = build_model(family, config)
    named = [(name, p.numel(), p.ndim) for name, p in model.named_parameters()]
    name, largest = max(((n, k) for n, k, _ in named), key=lambda item: item[1])
    return ParameterStats(
        total=sum(k for _, k, _ in named),
        sizes=tuple(k for _, k, _ in named),
        largest_name=name,
        largest_numel=largest,
        zero_dim=tuple(n for n, _, ndim in named if ndim == 0),
    )


@dataclass(frozen=True)
class ModelStates:
    """Bytes of model states per rank, on the GPU and in CPU RAM (offload), with the formula that gave them."""

    gpu_params: float
    gpu_grads: float
    gpu_optimizer: float
    cpu_params: float
    cpu_optimizer: float
    formula: str  # e.g. "2Ψ + 14Ψ/Nd"

    @property
    def gpu(self) -> float:
        return self.gpu_params + self.gpu_grads + self.gpu_optimizer

    @property
    def cpu(self) -> float:
        return self.cpu_params + self.cpu_optimizer


def model_states(
    n_params: int,
    stage: int,
    world_size: int,
    precision: str,
    *,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> ModelStates:
    """ZeRO model-state bytes per rank (see the module docstring for the table); Nd = world_size."""
    p, g, k = STATE_BYTES[precision]
    psi, nd = float(n_params), float(world_size)
    # which of the three terms are divided by Nd at each stage
    split_params, split_grads, split_optim = {0: (0, 0, 0), 1: (0, 0, 1), 2: (0, 1, 1), 3: (1, 1, 1)}[stage]
    params = p * psi / (nd if split_params else 1)
    grads = g * psi / (nd if split_grads else 1)
    optim = k * psi / (nd if split_optim else 1)
    terms = []
    whole = (p if not split_params else 0) + (g if not split_grads else 0) + (k if not split_optim else 0)
    split = (p if split_params else 0) + (g if split_grads else 0) + (k if split_optim else 0)
    if whole:
        terms.append(f"{whole}Ψ")
    if split:
        terms.append(f"{split}Ψ/Nd")
    formula = " + ".join(terms)
    cpu_params = cpu_optim = 0.0
    if offload_optimizer:
        cpu_optim, optim = optim, 0.0
    if offload_params:
        cpu_params, params = params, 0.0
    if offload_optimizer or offload_params:
        moved = [f"{k}Ψ/Nd optimizer"] if offload_optimizer else []
        moved += [f"{p}Ψ/Nd params"] if offload_params else []
        formula += f", minus {' and '.join(moved)} offloaded to CPU"
    return ModelStates(params, grads, optim, cpu_params, cpu_optim, formula)


@dataclass(frozen=True)
class ActivationEstimate:
    bytes: float
    formula: str  # the expression with its numbers, for the printout


def activation_estimate(family: str, model, micro_batch_cells: int, precision: str) -> ActivationEstimate:
    """Activation bytes per rank for one micro batch, an upper-bound *estimate* (every cell at max_genes tokens).

    scBERT: tokens = micro × max_genes, n_layers blocks over them. Exceiver: the encoder and decoder cross-attend
    over the genes (counted as 2 blocks over micro × max_genes tokens) and n_self_layers blocks run over
    micro × n_latents latent tokens. With activation checkpointing, a block keeps only its input between the
    forward and the backward pass, plus one block's full activations while it is recomputed.
    """
    c = ACTIVATION_BYTES_PER_TOKEN_WIDTH_LAYER[precision]
    e = ACTIVATION_BYTES_PER_ELEMENT[precision]
    width = model.d_model
    if family == "exceiver":
        streams = [
            (micro_batch_cells * model.max_genes, 2, "max_genes"),
            (micro_batch_cells * model.n_latents, model.n_self_layers, "n_latents"),
        ]
    else:
        streams = [(micro_batch_cells * model.max_genes, model.n_layers, "max_genes")]
    total, parts = 0.0, []
    for tokens, layers, what in streams:
        if layers == 0:
            continue
        head = f"{micro_batch_cells} cells × {what} {tokens // micro_batch_cells} × d_model {width}"
        if model.activation_checkpointing:
            total += tokens * width * (e * layers + c)
            parts.append(f"{head} × ({e} B × {layers} checkpointed layer inputs + {c} B for the layer recomputed)")
        else:
            total += tokens * width * layers * c
            parts.append(f"{head} × {layers} layers × {c} B")
    return ActivationEstimate(total, " + ".join(parts))


def gib(n_bytes: float) -> str:
    """Bytes as GiB, three significant figures below 10 (0.00473 GiB), else one decimal."""
    value = n_bytes / GIB
    if value == 0:
        return "0 GiB"
    if value >= 10:
        return f"{value:,.1f} GiB"
    digits = max(0, 2 - math.floor(math.log10(value)))
    return f"{value:.{digits}f} GiB"
