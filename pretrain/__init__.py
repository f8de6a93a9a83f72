"""scgrn pretrain: scBERT- and Exceiver-family models, DeepSpeed ZeRO training over streamed shards, releases."""

from __future__ import annotations


def load_release(path, device="cpu"):
    """(model, vocab) from a release written by `scgrn export` (safetensors + JSON, no pickle)."""
    from pretrain.release import load_release as _load

    return _load(path, device)


__all__ = ["load_release"]
