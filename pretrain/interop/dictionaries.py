"""Gene dictionaries of published checkpoints (Geneformer's token, gene-median and gene-name dictionaries), read
without executing anything.

The published files are pickled dicts: str -> int (token ids) or str -> float (medians), with numpy scalars among
the values. `read_dictionary` reads them with an unpickler whose `find_class` allows only the few numpy globals that
rebuild a scalar (`numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar` and `numpy.dtype`); any other
global (os.system, builtins.eval, a class of any package) is refused *before* it is looked up, so a crafted pickle
runs no code. The result must then be a plain dict of str keys to the asked value type. TSV (two columns, no
header) and JSON (an object) forms are read too.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import numpy as np

from pretrain.config import ConfigError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
}
VALUE_KINDS = ("int", "float", "str")


class _DictUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            msg = f"global {module}.{name} is not allowed (only plain dicts of str to numbers or str)"
            raise pickle.UnpicklingError(msg)
        if name == "scalar":
            return _numpy_scalar()
        return np.dtype


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


def read_dictionary(path: Path | str, values: str, what: str) -> dict[str, int | float | str]:
    """A str -> `values` ("int", "float" or "str") dictionary from a .pkl / .pickle, .json or .tsv file.

    `what` names the dictionary in errors (e.g. "--token-dictionary"). Every problem is one ConfigError naming the
    file and the fix; nothing is executed.
    """
    path = Path(path)
    if values not in VALUE_KINDS:
        msg = f"values={values!r}: must be one of {VALUE_KINDS}"
        raise ValueError(msg)
    if not path.is_file():
        msg = f"{what} {path}: no such file. Give the dictionary file of the checkpoint (.pkl, .json or .tsv)."
        raise ConfigError(msg)
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        try:
            loaded = _DictUnpickler(io.BytesIO(data)).load()
        except pickle.UnpicklingError as err:
            msg = (
                f"{what} {path}: refused: {err}. A gene dictionary pickle may hold only a dict of str to numbers or "
                "str; convert it to JSON or TSV if it is yours, and do not use a file of unknown origin."
            )
            raise ConfigError(msg) from None
        except Exception as err:  # truncated or not a pickle at all
            msg = f"{what} {path}: not a readable pickle ({type(err).__name__}: {err}); re-download the file."
            raise ConfigError(msg) from None
    elif suffix == ".json":
        try:
            loaded = json.loads(data.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            msg = f"{what} {path}: not valid JSON ({err}); give a JSON object of gene -> value."
            raise ConfigError(msg) from None
    elif suffix in (".tsv", ".txt"):
        loaded = _read_tsv(path, data, what)
    else:
        msg = f"{what} {path}: unknown suffix {suffix!r}; allowed: .pkl / .pickle, .json, .tsv."
        raise ConfigError(msg)
    return _checked(loaded, values, path, what)


def _read_tsv(path: Path, data: bytes, what: str) -> dict[str, str]:
    out = {}
    for row, line in enumerate(data.decode(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            msg = f"{what} {path}, row {row}: {len(fields)} tab-separated fields; each row must be KEY<TAB>VALUE."
            raise ConfigError(msg)
        out[fields[0]] = fields[1]
    return out


def _checked(loaded: object, values: str, path: Path, what: str) -> dict:
    if not isinstance(loaded, dict):
        msg = f"{what} {path}: holds a {type(loaded).__name__}, not a dict of gene -> {values}."
        raise ConfigError(msg)
    out: dict[str, int | float | str] = {}
    for key, value in loaded.items():
        if not isinstance(key, str):
            msg = f"{what} {path}: key {key!r} is a {type(key).__name__}; keys must be str (gene ids or names)."
            raise ConfigError(msg)
        out[key] = _value(value, values, key, path, what)
    if not out:
        msg = f"{what} {path}: the dictionary is empty."
        raise ConfigError(msg)
    return out


def _value(value: object, kind: str, key: str, path: Path, what: str) -> int | float | str:
    if isinstance(value, np.generic):
        value = value.item()
    if kind == "str":
        if isinstance(value, str):
            return value
    elif isinstance(value, str):
        try:
            value = float(value) if kind == "float" else int(value)
        except ValueError:
            value = None
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if kind == "int" and isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    allowed = {"int": "a non-negative integer id", "float": "a finite number", "str": "a str"}[kind]
    msg = f"{what} {path}: the value of {key!r} is {value!r}; each value must be {allowed}."
    raise ConfigError(msg)
