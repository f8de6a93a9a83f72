"""Nothing scgrn reads can run code: no pickle, no unsafe torch/numpy/yaml loads, no tar path tricks, no tampered
release weights.

1. An `ast` scan of every package (data_prep, pretrain, finetune, launch, bench) refuses `import pickle` (and dill,
   cloudpickle, shelve, joblib), `torch.load` without `weights_only=True`, `np.load(..., allow_pickle=True)`,
   `pd.read_pickle`, and `yaml.load` without a safe loader (`yaml.unsafe_load` / `full_load` too). The scanner is
   itself tested on a bad snippet, so the scan can fail.
2. A webdataset shard holding a member with an absolute path, a `..` part or a link is refused, naming the tar and
   the member, by the shard reader, the corpus and `scgrn validate`.
3. A release whose model.safetensors does not match config.json's `model_sha256` is refused by `load_release`.
"""

from __future__ import annotations

import ast
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import REPO, make_adata

from data_prep.corpus import Corpus
from data_prep.errors import CorpusError
from data_prep.io_utils import sha256_tree
from data_prep.wds_shard import WdsShard
from pretrain.config import ConfigError

PACKAGES = ("data_prep", "pretrain", "finetune", "launch", "bench")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "joblib"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str = "<snippet>") -> list[str]:
    """Every unsafe-deserialization site in `source`, as 'file:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in ("torch.load", "th.load") and not _is_true(_kw(node, "weights_only")):
                found.append(f"{where}: {name} without weights_only=True")
            elif last == "load" and name.split(".")[0] in ("np", "numpy") and _is_true(_kw(node, "allow_pickle")):
                found.append(f"{where}: {name}(allow_pickle=True)")
            elif last in ("read_pickle", "unsafe_load", "full_load", "unsafe_load_all", "full_load_all"):
                found.append(f"{where}: {name}")
            elif name in ("yaml.load", "yaml.load_all"):
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                    found.append(f"{where}: {name} without a safe Loader (use yaml.safe_load)")
    return found


def test_scanner_catches_each_unsafe_pattern():
    bad = (
        "import pickle\nfrom dill import loads\nimport joblib\nimport torch, numpy as np, yaml, pandas as pd\n"
        # assembled from parts: this is the scanner's test input, and the project's own grep must not mistake it
        + "torch."
        + "load('m.pt')\ntorch."
        + "load('m.pt', weights_"
        + "only=False)\n"
        + "np.load('a.npy', allow_"
        + "pickle=True)\n"
        "yaml.load(text)\nyaml.load(text, Loader=yaml.Loader)\nyaml.unsafe_load(text)\npd.read_pickle('x')\n"
    )
    hits = unsafe_loads(bad)
    assert len(hits) == 10, hits
    good = (
        "import torch, numpy as np, yaml\ntorch.load('m.pt', weights_only=True)\nnp.load('a.npy')\n"
        "np.load('a.npy', allow_pickle=False)\nyaml.safe_load(text)\nyaml.load(text, Loader=yaml.SafeLoader)\n"
    )
    assert unsafe_loads(good) == []


def test_no_unsafe_deserialization_in_the_code():
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 20, files  # the walk found the packages
    found = [hit for p in files for hit in unsafe_loads(p.read_text(), str(p.relative_to(REPO)))]
    assert not found, "unsafe deserialization (see tests/test_no_unsafe_loading.py):\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------------------
# tar members


@pytest.fixture(scope="module")
def wds_corpus(tmp_path_factory):
    from data_prep.config import ShardConfig
    from data_prep.sharder import shard

    root = tmp_path_factory.mktemp("wds")
    make_adata(60, 20, seed=3).write_h5ad(root / "a.h5ad")
    out = root / "corpus"
    shard(ShardConfig(inputs=[root / "a.h5ad"], out=out, cells_per_shard=30, format="webdataset"), progress=False)
    return out


def _tampered_corpus(wds_corpus: Path, tmp_path: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    """A copy of the corpus whose first tar gains `member`; the manifest's sha256 is updated to match, as an
    attacker who rewrote both would."""
    out = tmp_path / "corpus"
    shutil.copytree(wds_corpus, out)
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["shards"][0]["files"]["webdataset"]
    tar_path = out / info["path"]
    with tarfile.open(tar_path, "a") as tar:
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    info["sha256"] = sha256_tree(tar_path)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/passwd"
    return info


BAD_MEMBERS = {
    "absolute": (_file("/tmp/000000_000009.values.npy"), "absolute path"),
    "dotdot": (_file("../../000000_000009.values.npy"), "'..' path part"),
    "nested-dotdot": (_file("a/../../evil.json"), "'..' path part"),
    "symlink": (_link("000000_000009.meta.json", tarfile.SYMTYPE), "symbolic link"),
    "hardlink": (_link("000000_000009.split.npy", tarfile.LNKTYPE), "hard link"),
}


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_tar_member_escaping_the_shard_is_refused_by_the_reader(wds_corpus, tmp_path, case):
    member, problem = BAD_MEMBERS[case]
    corpus = _tampered_corpus(wds_corpus, tmp_path, member)
    tar_path = corpus / json.loads((corpus / "manifest.json").read_text())["shards"][0]["files"]["webdataset"]["path"]
    with pytest.raises(CorpusError) as info:
        WdsShard(tar_path)
    msg = str(info.value)
    assert str(tar_path) in msg and repr(member.name) in msg and problem in msg, msg
    with pytest.raises(CorpusError, match="member"):
        Corpus(corpus, fmt="webdataset").shard(0)


def test_tar_member_escaping_the_shard_fails_validate(wds_corpus, tmp_path, cli):
    corpus = _tampered_corpus(wds_corpus, tmp_path, _file("../evil.npy"))
    proc = cli("validate", corpus)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    text = proc.stdout + proc.stderr
    assert "'../evil.npy'" in text and "shard-000000.tar" in text and "Traceback" not in text, text


# ---------------------------------------------------------------------------------------------------------
# release checksum


def tiny_release(directory: Path) -> Path:
    import torch

    from data_prep.vocab import GeneVocab
    from pretrain.models.scbert import ScBert, ScBertConfig
    from pretrain.release import write_release

    vocab = GeneVocab.from_genes([[f"G{i}" for i in range(8)]])
    torch.manual_seed(0)
    cfg = ScBertConfig(vocab_size=vocab.size, d_model=8, n_layers=1, n_heads=2, d_ff=16, n_bins=5, attention="sdpa")
    manifest = {"value_kind": "counts", "totals": {"n_cells": 0}, "vocab": {"size": vocab.size, "sha256": vocab.sha256}}
    return write_release(directory / "release", "scbert", cfg, ScBert(cfg).state_dict(), vocab, manifest, {})


def test_release_with_modified_weights_is_refused(tmp_path):
    from pretrain.release import load_release, release_sha256

    release = tiny_release(tmp_path)
    config = json.loads((release / "config.json").read_text())
    assert config["model_sha256"] == release_sha256(release)
    load_release(release)  # intact: loads
    weights = release / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as info:
        load_release(release)
    msg = str(info.value)
    assert str(weights) in msg and "does not match config.json's model_sha256" in msg and "re-export" in msg, msg


def test_release_written_before_the_checksum_still_loads(tmp_path):
    from pretrain.release import load_release

    release = tiny_release(tmp_path)
    config = json.loads((release / "config.json").read_text())
    del config["model_sha256"]
    (release / "config.json").write_text(json.dumps(config))
    _model, vocab = load_release(release)
    assert vocab.size == config["model"]["vocab_size"]
