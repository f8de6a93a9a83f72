"""The architecture holds: data flows data_prep -> pretrain -> finetune; model/data code is single-device."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package -> modules it must never import (directly or as a prefix)
FORBIDDEN = {
    "data_prep": ("torch.distributed", "deepspeed", "pretrain", "finetune", "launch", "bench"),
    "pretrain": ("finetune", "launch", "bench"),
    "finetune": ("launch", "bench"),
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_data_flow(package):
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)


def test_deepspeed_is_imported_in_at_most_one_module():
    # the packages only: local run directories hold DeepSpeed's own zero_to_fp32.py copies
    users = [
        p
        for pkg in ("data_prep", "pretrain", "finetune", "launch", "bench")
        for p in (REPO / pkg).rglob("*.py")
        if any(n.split(".")[0] == "deepspeed" for n in _imports(p))
    ]
    assert len(users) <= 1, users
