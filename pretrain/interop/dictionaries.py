"""Gene dictionaries of published checkpoints (Geneformer's token, gene-median and gene-name dictionaries), read
without executing anything, and written in the same pickled form.

The published files are pickled dicts: str -> int (token ids) or str -> float (medians), with numpy scalars among
the values. They are **not unpickled**: `read_pickled_dict` walks the opcodes (`pickletools.genops` only decodes
them) on a small stack machine that builds dicts, tuples, str, int, float, bytes, and a numpy scalar from its dtype
and bytes; the only globals it knows are `numpy(._core|.core).multiarray.scalar`, `numpy.dtype` and
`_codecs.encode` (how protocol 2 spells bytes), each rebuilt by its own small rule, never called. Any other global
(os.system, builtins.eval, a class of any package) or opcode is refused by name, so a crafted pickle runs no code.
The result must be a plain dict of str keys to the asked value type. TSV (two columns, no header) and JSON (an
object) forms are read too. `pickled_dict_bytes` writes a plain dict as protocol-2 opcodes (what Geneformer's own
code reads with `pickle.load`).
"""

from __future__ import annotations

import json
import math
import pickletools
import struct
from pathlib import Path

import numpy as np

from pretrain.config import ConfigError

SCALAR_GLOBALS = {"numpy.core.multiarray scalar", "numpy._core.multiarray scalar"}
DTYPE_GLOBAL = "numpy dtype"
CODECS_GLOBAL = "_codecs encode"
VALUE_KINDS = ("int", "float", "str")
_PUSH = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BININT", "BININT1", "BININT2", "LONG1",
         "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BINSTRING",
         "SHORT_BINSTRING"}  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}


class _Refused(ValueError):
    pass


class _Global(str):
    """A global the machine knows, by its 'module name' string."""


class _DType:
    def __init__(self, code: str) -> None:
        self.dtype = np.dtype(code)

    def build(self, state) -> None:  # BUILD: the byte order is the state's second field
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def read_pickled_dict(data: bytes):
    """The object a pickle of a plain dict describes, rebuilt opcode by opcode (module docstring); _Refused names
    the first global or opcode outside what a dict of numbers and str needs."""
    stack: list = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            return stack.pop()
        if name in _PUSH:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo[int(arg)])
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name in ("TUPLE", "DICT", "SETITEMS"):
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
            if name == "TUPLE":
                stack.append(tuple(items))
            elif name == "DICT":
                stack.append(_set_items({}, items))
            else:
                _set_items(stack[-1], items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            _set_items(stack[-1], [key, value])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                arg = f"{module} {attr}"
            if arg not in SCALAR_GLOBALS | {DTYPE_GLOBAL, CODECS_GLOBAL}:
                msg = f"global {str(arg).replace(' ', '.')} is not allowed"
                raise _Refused(msg)
            stack.append(_Global(arg))
        elif name == "REDUCE":
            args, function = stack.pop(), stack.pop()
            stack.append(_reduce(function, args))
        elif name == "BUILD":
            state = stack.pop()
            if not isinstance(stack[-1], _DType):
                msg = "BUILD on something other than a numpy dtype is not allowed"
                raise _Refused(msg)
            stack[-1].build(state)
        else:
            msg = f"pickle opcode {name} is not allowed"
            raise _Refused(msg)
    msg = "the pickle ends without STOP"
    raise _Refused(msg)


def _set_items(target, items: list) -> dict:
    if not isinstance(target, dict) or len(items) % 2:
        msg = "items set on something other than a dict"
        raise _Refused(msg)
    for key, value in zip(items[0::2], items[1::2], strict=True):
        target[key] = value
    return target


def _reduce(function, args):
    if not isinstance(function, _Global) or not isinstance(args, tuple):
        msg = "a call of something other than an allowed global"
        raise _Refused(msg)
    if function == DTYPE_GLOBAL and args and isinstance(args[0], str):
        return _DType(args[0])
    if function in SCALAR_GLOBALS and len(args) == 2 and isinstance(args[0], _DType) and isinstance(args[1], bytes):
        if args[0].dtype.kind not in "biuf" or len(args[1]) != args[0].dtype.itemsize:
            msg = f"a numpy scalar of dtype {args[0].dtype} is not allowed (numbers only)"
            raise _Refused(msg)
        return np.frombuffer(args[1], dtype=args[0].dtype)[0]
    if function == CODECS_GLOBAL and len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1":
        return args[0].encode("latin-1")
    msg = f"{function.replace(' ', '.')} with these arguments is not allowed"
    raise _Refused(msg)


def pickled_dict_bytes(table: dict[str, int | float | str]) -> bytes:
    """A plain dict of str to int / float / str as protocol-2 pickle opcodes (pickle.load gives the same dict)."""
    out = bytearray(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            msg = f"{key!r}: {value!r} is not an int, float or str"
            raise TypeError(msg)
        out += _unicode(key)
        if isinstance(value, str):
            out += _unicode(value)
        elif isinstance(value, float):
            out += b"G" + struct.pack(">d", value)  # BINFLOAT
        elif -(2**31) <= value < 2**31:
            out += b"J" + struct.pack("<i", value)  # BININT
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            out += b"\x8a" + bytes([len(raw)]) + raw  # LONG1
    return bytes(out + b"u.")  # SETITEMS, STOP


def _unicode(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


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
            loaded = read_pickled_dict(data)
        except _Refused as err:
            msg = (
                f"{what} {path}: refused: {err}. A gene dictionary pickle may hold only a dict of str to numbers or "
                "str; convert it to JSON or TSV if it is yours, and do not use a file of unknown origin."
            )
            raise ConfigError(msg) from None
        except Exception as err:  # truncated or not a pickle at all (pickletools' decoding errors vary)
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
