"""Build a model of a family from its config fields, and check it fits a corpus (value kind, vocab)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pretrain.config import ConfigError


def families() -> dict[str, tuple[type, type]]:
    from pretrain.models.exceiver import Exceiver, ExceiverConfig
    from pretrain.models.geneformer import Geneformer, GeneformerConfig
    from pretrain.models.scbert import ScBert, ScBertConfig
    from pretrain.models.scgpt import ScGPT, ScGPTConfig

    return {
        "scbert": (ScBertConfig, ScBert),
        "exceiver": (ExceiverConfig, Exceiver),
        "geneformer": (GeneformerConfig, Geneformer),
        "scgpt": (ScGPTConfig, ScGPT),  # imported checkpoints (scgrn import scgpt); not pretrained here
    }


def model_config(family: str, fields: dict, vocab_size: int):
    """The family's typed config from the run's `model` fields and the corpus's vocabulary size. With
    `model.init_from = RELEASE` the release's config is the base (its vocab_size included) and the given fields
    override it (training fields such as dropout, mask_prob, attention; changing the architecture then fails when
    the weights are loaded)."""
    fields = dict(fields)
    init_from = fields.pop("init_from", None)
    if init_from:
        release = release_config(init_from, family)
        fields = {**release["model"], **{k: v for k, v in fields.items() if k != "vocab_size"}}
        vocab_size = release["model"]["vocab_size"]
    config_cls, _ = families()[family]
    allowed = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        msg = f"model: unknown field(s) {unknown} for family {family!r}; allowed: {sorted(allowed)}"
        raise ConfigError(msg)
    values = {**fields, "vocab_size": vocab_size}
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as err:
        msg = f"model ({family}): {err}"
        raise ConfigError(msg) from None


def release_config(path: str, family: str) -> dict:
    """config.json of the release `model.init_from` names, checked against the run's family."""
    import json
    from pathlib import Path

    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        msg = (
            f"model.init_from = {path!r}: no release there (no config.json). Give a folder written by `scgrn export` "
            "or `scgrn import`."
        )
        raise ConfigError(msg)
    config = json.loads(config_path.read_text())
    if config.get("family") != family:
        msg = (
            f"model.init_from = {path!r} is a {config.get('family')!r} release but the run's family is {family!r}; "
            f"set family={config.get('family')} (or start from a {family!r} release)."
        )
        raise ConfigError(msg)
    return config


def init_from_release(model: nn.Module, fields: dict) -> str | None:
    """Load the weights of `model.init_from` (checked by `load_release`: hash, vocab) into `model`; returns the
    release's vocab sha256, which the corpus must share, or None without `init_from`."""
    path = fields.get("init_from")
    if not path:
        return None
    from pretrain.release import load_release

    released, vocab = load_release(path)
    try:
        model.load_state_dict(released.state_dict(), strict=True)
    except RuntimeError as err:
        msg = (
            f"model.init_from = {path!r}: its weights do not fit the configured model ({str(err).splitlines()[0]}). "
            "Leave the architecture fields (d_model, n_layers, ...) to the release."
        )
        raise ConfigError(msg) from None
    return vocab.sha256


def build_model(family: str, config) -> nn.Module:
    _, model_cls = families()[family]
    return model_cls(config)


def required_value_kind(model: nn.Module) -> str:
    return str(getattr(model, "required_value_kind", "counts"))


def check_corpus(model: nn.Module, value_kind: str, vocab_sha256: str, expected_vocab_sha256: str | None) -> None:
    """Refuse a corpus the model was not built for: wrong value kind, or another vocabulary."""
    problems = []
    need = required_value_kind(model)
    if str(value_kind) != need:
        problems.append(
            f"the corpus holds {value_kind!r} values but this model needs {need!r}; re-shard raw counts "
            "(scgrn shard ... without --values), or pick a model/objective for this kind"
        )
    if expected_vocab_sha256 and expected_vocab_sha256 != vocab_sha256:
        problems.append(
            f"the corpus vocabulary (sha256 {vocab_sha256[:12]}…) differs from the model's "
            f"({expected_vocab_sha256[:12]}…); shard the corpus with --vocab set to the model's vocab.json"
        )
    if problems:
        raise ConfigError("corpus does not fit the model:\n  - " + "\n  - ".join(problems))


def check_compile(model_cfg, backends: dict[str, str], device: torch.device | str) -> None:
    """Refuse `model.compile` where the attention it would compile cannot be traced: on CPU the `sdpa` backend
    loops over the cells on the host (`pretrain.models.attention._sdpa_per_sequence`), a graph break per cell.
    `backends` is `common.resolve_attention`'s answer for this device and precision."""
    if not getattr(model_cfg, "compile", False) or torch.device(device).type != "cpu":
        return
    looped = sorted(name for name, chosen in backends.items() if "sdpa" in chosen)
    if looped:
        msg = (
            f"model.compile = true with model.attention = {model_cfg.attention!r}, which runs 'sdpa' on CPU in "
            f"{looped[0]}{' and others' if len(looped) > 1 else ''}: that path loops over the cells on the host and "
            "would break the compiled graph at every cell. Set model.attention=reference (it compiles on CPU) or "
            "model.compile=false."
        )
        raise ConfigError(msg)
