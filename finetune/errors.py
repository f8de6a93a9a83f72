"""Errors raised for bad GRN inputs (benchmark folders, split files, priors, releases, options).

Every message names the file, row or field, what was received, what is allowed and what to do next. They subclass
ValueError (like data_prep's errors) so callers that only know the standard library still catch them.
"""

from __future__ import annotations


class GrnInputError(ValueError):
    """A user-facing problem with a GRN input or option. `str(err)` is the whole story."""
