"""Kinds of expression values and their validation.

Raw integer counts are the default (Exceiver's count likelihoods and scBERT's binning both start from them).
Already-normalized inputs (BEELINE ships log-normalized values) are accepted only when declared, and the
kind travels in the manifest so a model configured for counts can refuse a log1p corpus.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from data_prep.errors import InputError


class ValueKind(StrEnum):
    COUNTS = "counts"  # non-negative integers (UMI / read counts)
    LOG1P = "log1p"  # log(1 + normalized counts), any base; non-negative floats
    NORMALIZED = "normalized"  # any finite floats (e.g. z-scores); zeros are still implicit in CSR

    @classmethod
    def parse(cls, value: str) -> ValueKind:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(k.value for k in cls)
            msg = f"--values {value!r} is not a known value kind; allowed: {allowed}."
            raise InputError(msg) from None


MAX_COUNT = float(2**64)  # counts are stored in the narrowest unsigned integer that holds them, at most uint64


def validate_values(
    kind: ValueKind,
    data: np.ndarray,
    *,
    source: str,
    row_of: np.ndarray,
    col_of: np.ndarray,
    row_offset: int,
    gene_names: np.ndarray,
) -> None:
    """Check the stored (non-zero) values of a chunk; raise on the first bad one, naming file, row and gene.

    `row_of`/`col_of` give, for each entry of `data`, its row within the chunk and its column (gene index).
    """
    if data.dtype.kind in "ui" and (data.dtype.kind == "u" or not (data < 0).any()):
        return  # integers are finite and integral: only the sign can be wrong
    bad = ~np.isfinite(data)
    problem = "is NaN or infinite"
    if not bad.any():
        if kind is ValueKind.COUNTS:
            bad = (data < 0) | (data != np.floor(data))
            problem = "is not a non-negative integer count"
            if not bad.any():
                bad = data >= MAX_COUNT
                problem = "is above the largest count a shard stores (2**64 - 1, the uint64 maximum)"
        elif kind is ValueKind.LOG1P:
            bad = data < 0
            problem = "is negative, which log1p-normalized values cannot be"
    if not bad.any():
        return
    first = int(np.flatnonzero(bad)[0])
    row = row_offset + int(row_of[first])
    gene = gene_names[int(col_of[first])]
    hint = (
        "Remove or impute non-finite values before sharding."
        if problem == "is NaN or infinite"
        else {
            ValueKind.COUNTS: (
                "If the input is already normalized, declare it with --values log1p or --values normalized; "
                "if it holds raw counts in a layer, pick it with --layer NAME."
            ),
            ValueKind.LOG1P: "Declare --values normalized for values that may be negative (e.g. z-scores).",
            ValueKind.NORMALIZED: "Remove or impute non-finite values before sharding.",
        }[kind]
    )
    n_bad = int(bad.sum())
    msg = (
        f"{source}: cell row {row}, gene {gene!r}: value {float(data[first])!r} {problem} "
        f"(--values {kind.value}; {n_bad} such value(s) in this chunk). {hint}"
    )
    raise InputError(msg)


def smallest_value_dtype(kind: ValueKind, max_value: float) -> np.dtype:
    """The narrowest dtype that holds every value of a shard exactly (counts) or at float32 precision."""
    if kind is ValueKind.COUNTS:
        for dtype in (np.uint8, np.uint16, np.uint32):
            if max_value <= np.iinfo(dtype).max:
                return np.dtype(dtype)
        return np.dtype(np.uint64)
    return np.dtype(np.float32)


def smallest_index_dtype(vocab_size: int) -> np.dtype:
    """Gene ids are vocab ids; uint16 covers Geneformer (25k) and scGPT (48k) vocabularies."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)
