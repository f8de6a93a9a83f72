"""Errors raised for bad user input.

Every message says what was received, what is allowed, where (file / row / gene / field) and what to do.
They subclass ValueError so callers that only know the standard library still catch them.
"""

from __future__ import annotations


class DataPrepError(ValueError):
    """A user-facing problem with an input, a corpus or an option. `str(err)` is the whole story."""


class InputError(DataPrepError):
    """An input file (h5ad / 10x / CSV) cannot be read as asked."""


class CorpusError(DataPrepError):
    """A corpus directory (manifest, shards, vocab) is missing, damaged or of an unknown version."""
