"""Test-only environment hooks (`SCGRN_TEST_*`): fault injection and stop points that the kill / NaN tests use.

Never set in real runs. Whenever one is set the process says so loudly on stderr (once per variable), and a
malformed value is an error naming the variable, not a crash deep inside a run.
"""

from __future__ import annotations

import os
import sys

from data_prep.errors import DataPrepError

PREFIX = "SCGRN_TEST_"
_announced: set[str] = set()


class TestHookError(DataPrepError, ValueError):
    """A `SCGRN_TEST_*` variable holds a value its hook cannot use."""

    __test__ = False  # not a pytest test class, whatever its name


def read_hook(name: str) -> str | None:
    """The variable's value (None when unset); announced on stderr the first time it is seen set."""
    value = os.environ.get(name)
    if value is not None and name not in _announced:
        _announced.add(name)
        print(
            f"scgrn: WARNING: test-only hook {name}={value!r} is set; it stalls or corrupts this run on purpose. "
            "Unset it unless a test set it.",
            file=sys.stderr,
            flush=True,
        )
    return value


def read_step_hook(name: str) -> tuple[int, int | None] | None:
    """A "STEP" or "STEP:RANK" hook as (step, rank or None); None when unset or empty."""
    value = read_hook(name)
    if not value:
        return None
    step, sep, rank = value.partition(":")
    try:
        parsed = (int(step), int(rank) if sep else None)
    except ValueError:
        parsed = None
    if parsed is None or parsed[0] < 0 or (parsed[1] is not None and parsed[1] < 0):
        msg = (
            f"{name}={value!r}: this test-only hook takes STEP or STEP:RANK (non-negative integers, e.g. 5 or 5:1). "
            "Unset it outside tests."
        )
        raise TestHookError(msg)
    return parsed
