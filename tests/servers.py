"""The loopback servers the remote-corpus tests start and stop themselves (shared with `scgrn bench loader --remote`,
so they live in bench/loopback.py)."""

from bench.loopback import (
    FaultyProxy,
    FileServer,
    GcsServer,
    MotoServer,
    corpus_in_a_bucket,
    corpus_in_a_gcs_bucket,
    free_port,
)

__all__ = [
    "FaultyProxy",
    "FileServer",
    "GcsServer",
    "MotoServer",
    "corpus_in_a_bucket",
    "corpus_in_a_gcs_bucket",
    "free_port",
]
