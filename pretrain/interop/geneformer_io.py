"""`scgrn import geneformer HF_DIR ...` -> a release; `scgrn export RELEASE --format hf` -> a Hugging Face folder.

Import reads a `BertForMaskedLM` folder (config.json + model.safetensors, or pytorch_model.bin through
`torch.load(weights_only=True)`), the token dictionary (gene id -> token id) and, optionally, the gene-median
dictionary (gene id -> non-zero median of CP10k values: the rank-value normaliser), and writes a Geneformer-family
release (model.safetensors + config.json + vocab.json). The layout follows the dictionary: `<cls>` and `<eos>` in
it -> V2 (`<cls>` first, `<eos>` last), else V1. Export writes the folder `BertForMaskedLM.from_pretrained` loads,
with the dictionaries beside it (JSON, and the pickled form Geneformer's own code reads).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data_prep.io_utils import atomic_write_bytes, atomic_write_text, out_dir_problem, published_mode
from data_prep.vocab import GeneVocab
from pretrain.config import ConfigError
from pretrain.interop import hf_bert
from pretrain.interop.dictionaries import pickled_dict_bytes, read_dictionary

FAMILY = "geneformer"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
GENE_MAP = "gene_map.tsv"  # symbol -> token, for `scgrn shard --gene-map`


def import_geneformer(
    hf_dir: Path,
    token_dictionary: Path,
    out: Path,
    gene_medians: Path | None = None,
    gene_names: Path | None = None,
) -> Path:
    """A Geneformer-family release from a Hugging Face BertForMaskedLM folder and its dictionaries. `gene_names`
    (gene symbol -> Ensembl id, Geneformer's gene-name dictionary) becomes `gene_map.tsv` in the release, the table
    `scgrn shard --gene-map` takes to map an input named by symbols onto the checkpoint's Ensembl ids."""
    from pretrain.models.geneformer import Geneformer, GeneformerConfig
    from pretrain.release import write_release

    hf_dir, out = Path(hf_dir), Path(out)
    _check_out(out)
    config_path = hf_dir / "config.json"
    weights = next((hf_dir / n for n in WEIGHT_FILES if (hf_dir / n).is_file()), None)
    if not config_path.is_file() or weights is None:
        missing = [n for n in ("config.json",) if not (hf_dir / n).is_file()] + (
            [f"{WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]})"] if weights is None else []
        )
        msg = (
            f"{hf_dir}: missing {', '.join(missing)}. Give the checkpoint folder as saved by "
            "`BertForMaskedLM.save_pretrained` (e.g. a Geneformer model folder from the Hugging Face hub)."
        )
        raise ConfigError(msg)
    try:
        hf = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f"{config_path}: not valid JSON ({err}); re-download the checkpoint's config.json."
        raise ConfigError(msg) from None
    fields = hf_bert.config_fields(hf, str(config_path))
    tokens = read_dictionary(token_dictionary, "int", "--token-dictionary")
    fields.update(_special_tokens(tokens, fields["vocab_size"], Path(token_dictionary)))
    try:
        config = GeneformerConfig(**fields)
    except ValueError as err:
        msg = f"{config_path}: {err}"
        raise ConfigError(msg) from None
    state = _load_weights(weights)
    ours = hf_bert.from_hf(state, config.n_layers, str(weights))
    ours["gene_median"] = _medians(gene_medians, tokens, config.vocab_size)
    model = Geneformer(config)
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as err:
        msg = f"{weights}: the weights do not fit {config_path}: {str(err).splitlines()[0]} … Check both files."
        raise ConfigError(msg) from None
    vocab = GeneVocab.from_ids(dict(tokens), source=str(token_dictionary))
    n_medians = int((ours["gene_median"] > 0).sum())
    training = {
        "imported_from": str(hf_dir.resolve()),
        "weights_file": weights.name,
        "token_dictionary": str(Path(token_dictionary).resolve()),
        "gene_medians": None if gene_medians is None else str(Path(gene_medians).resolve()),
        "genes_with_median": n_medians,
    }
    card = (
        f"# scgrn geneformer release (imported)\n\nImported from the Hugging Face checkpoint {hf_dir.resolve()} "
        f"({weights.name}); layout {config.layout}, {config.n_layers} layers x {config.d_model}, context "
        f"{config.max_len}, vocabulary {config.vocab_size:,} tokens; {n_medians:,} genes with a median.\n\n"
        "Architecture: Geneformer (Theodoris et al. 2023, Nature), a BERT over rank-value encoded cells.\n\n"
        "Load: `from pretrain import load_release; model, vocab = load_release(PATH)`. Export back: "
        "`scgrn export PATH --format hf --out DIR`.\n"
    )
    extra = {}
    if gene_names is not None:
        names = read_dictionary(gene_names, "str", "--gene-names")
        rows = [f"{symbol}\t{gene}" for symbol, gene in names.items() if gene in tokens]
        if not rows:
            msg = f"--gene-names {gene_names}: none of its ids is in the token dictionary; give the checkpoint's file."
            raise ConfigError(msg)
        extra[GENE_MAP] = "symbol\ttoken\n" + "\n".join(rows) + "\n"
    manifest = {"value_kind": "counts"}
    return write_release(
        out, FAMILY, config, model.state_dict(), vocab, manifest, training, card=card, extra_files=extra
    )


def export_hf(release: Path, out: Path) -> Path:
    """A Hugging Face BertForMaskedLM folder from a Geneformer-family release, with its dictionaries."""
    from pretrain.release import load_release

    release, out = Path(release), Path(out)
    _check_out(out)
    family = (
        json.loads((release / "config.json").read_text()).get("family") if (release / "config.json").is_file() else None
    )
    if family is not None and family != FAMILY:
        msg = (
            f"{release}: a {family!r} release; `--format hf` writes Hugging Face BertForMaskedLM folders, which "
            f"only the {FAMILY!r} family maps onto. Export scBERT / Exceiver releases as scgrn releases."
        )
        raise ConfigError(msg)
    model, vocab = load_release(release)
    config = model.config
    state = hf_bert.to_hf(model.state_dict(), config.n_layers)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "model.safetensors").chmod(published_mode())
    extra = {"scgrn_layout": config.layout, "mask_token_id": config.mask_token}
    atomic_write_text(tmp / "config.json", json.dumps(hf_bert.hf_config(config, extra), indent=1))
    tokens = {t: i for i, t in enumerate(vocab.tokens) if i < config.vocab_size}
    medians = {t: float(model.gene_median[i]) for t, i in tokens.items() if model.gene_median[i] > 0}
    for name, table in (("token_dictionary", tokens), ("gene_median_dictionary", medians)):
        atomic_write_text(tmp / f"{name}.json", json.dumps(table))
        atomic_write_bytes(tmp / f"{name}.pkl", pickled_dict_bytes(table))  # plain dicts: what Geneformer reads
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def _check_out(out: Path) -> None:
    if (why := out_dir_problem(out.parent)) is not None or (out.exists() and not out.is_dir()):
        msg = f"--out {out}: {why or 'exists and is not a directory'}."
        raise ConfigError(msg)


def _special_tokens(tokens: dict[str, int], vocab_size: int, path: Path) -> dict:
    ids = list(tokens.values())
    if len(set(ids)) != len(ids):
        msg = f"--token-dictionary {path}: {len(ids) - len(set(ids))} token id(s) are used twice; ids must be unique."
        raise ConfigError(msg)
    if max(ids) >= vocab_size:
        msg = (
            f"--token-dictionary {path}: token id {max(ids)} does not fit the checkpoint's vocab_size {vocab_size}; "
            "give the dictionary this checkpoint was trained with."
        )
        raise ConfigError(msg)
    missing = [t for t in ("<pad>", "<mask>") if t not in tokens]
    if missing:
        msg = f"--token-dictionary {path}: no {missing}; a Geneformer token dictionary has <pad> and <mask>."
        raise ConfigError(msg)
    v2 = "<cls>" in tokens and "<eos>" in tokens
    return {
        "pad_token": tokens["<pad>"],
        "mask_token": tokens["<mask>"],
        "cls_token": tokens["<cls>"] if v2 else -1,
        "eos_token": tokens["<eos>"] if v2 else -1,
        "layout": "v2" if v2 else "v1",
    }


def _medians(path: Path | None, tokens: dict[str, int], vocab_size: int) -> torch.Tensor:
    median = torch.zeros(vocab_size)
    if path is None:
        return median
    table = read_dictionary(path, "float", "--gene-medians")
    shared = [g for g in table if g in tokens]
    if not shared:
        msg = f"--gene-medians {path}: none of its genes is in the token dictionary; give the checkpoint's own file."
        raise ConfigError(msg)
    for gene in shared:
        median[tokens[gene]] = table[gene]
    return median


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = f"{path}: cannot read the weights ({type(err).__name__}: {err}); re-download the file."
        raise ConfigError(msg) from None
