"""Step 2 of the device check: every package the check needs imports, at a version the project works with.

Stops at the first failure with the package, the reason and what to carry (exit 3), so a missing wheel costs seconds
of device time, not a failed benchmark minutes later. Prints one line per package and writes them to OUT/imports.txt.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# (import name, distribution, requirement checked here, why)
REQUIRED = [
    ("torch", "torch", None, "the models"),
    ("numpy", "numpy", None, "everything"),
    ("typing_extensions", "typing_extensions", (4, 16), "pydantic 2.14 (DeepSpeed's config) needs >= 4.16"),
    ("pandas", "pandas", "<3", "anndata 0.12 needs pandas < 3"),
    ("scipy", "scipy", None, "sparse counts"),
    ("anndata", "anndata", None, "reading .h5ad"),
    ("zarr", "zarr", (3, 0), "the corpus format (zarr v3)"),
    ("webdataset", "webdataset", None, "the corpus loader"),
    ("pydantic", "pydantic", None, "DeepSpeed's config"),
    ("deepspeed", "deepspeed", None, "ZeRO training"),
    ("safetensors", "safetensors", None, "releases"),
    ("yaml", "PyYAML", None, "configs"),
]


def _version(dist: str) -> tuple[str, tuple[int, ...]]:
    """(the installed distribution's version, its leading numbers); ("?", ()) when no metadata is found."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version(dist)
    except PackageNotFoundError:
        return "?", ()
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return text, tuple(parts)


def check(out: Path) -> int:
    lines = []
    status = 0
    for name, dist, requirement, why in REQUIRED:
        try:
            module = importlib.import_module(name)
        except Exception as err:  # an ImportError, or a broken build raising anything at import
            lines.append(f"FAIL {name}: {type(err).__name__}: {err}. Carry a wheel of {dist} in .whl ({why}).")
            status = 3
            break
        del module
        shown, version = _version(dist)
        if isinstance(requirement, tuple) and version < requirement:
            need = ".".join(map(str, requirement))
            lines.append(f"FAIL {name} {shown}: need >= {need} ({why}); carry {dist}>={need} in .whl")
            status = 3
            break
        if requirement == "<3" and version >= (3,):
            lines.append(f"FAIL {name} {shown}: need < 3 ({why}); carry {dist} 2.x in .whl")
            status = 3
            break
        lines.append(f"ok   {name} {shown}")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "imports.txt").write_text(text + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(check(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/gpu/out")))
