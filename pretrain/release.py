"""Release checkpoints: `scgrn export RUN_DIR --out RELEASE` and `load_release(RELEASE)`.

A release is what finetuning reads, with no pickle and no DeepSpeed:
    model.safetensors        fp32 weights (ZeRO shards consolidated with DeepSpeed's zero_to_fp32)
    config.json              {"format": "scgrn-release", "version": 1, family, model config, vocab_sha256, value_kind,
                              model_sha256}
    vocab.json               the corpus vocabulary (its sha256 must match config.json)
    training_summary.json    corpus manifest hash, steps, tokens, final losses
    README.md                model card

`model_sha256` (sha256 of model.safetensors) is checked by `load_release`, which refuses weights that were damaged or
modified. Releases written before the field existed (still version 1) load without that check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data_prep.io_utils import atomic_write_text, out_dir_problem, published_mode, sha256_file
from data_prep.vocab import GeneVocab
from pretrain import checkpointing as ckpt
from pretrain.config import ConfigError
from pretrain.model_factory import build_model, families, model_config

RELEASE_FORMAT = "scgrn-release"
RELEASE_VERSION = 1


def export_release(run_dir: Path, out: Path, tag: str | None = None) -> Path:
    """Consolidate the latest complete checkpoint of `run_dir` (or `tag`) into a release directory."""
    from pretrain.parallel.engine import consolidated_fp32_state_dict

    run_dir, out = Path(run_dir), Path(out)
    if (why := out_dir_problem(out.parent)) is not None or (out.exists() and not out.is_dir()):
        msg = f"--out {out}: {why or 'exists and is not a directory'}."
        raise ConfigError(msg)
    complete = ckpt.complete_checkpoints(run_dir)
    if tag is None:
        if not complete:
            msg = f"{run_dir}: no complete checkpoint to export (looked in {ckpt.checkpoint_root(run_dir)})."
            raise ConfigError(msg)
        chosen = complete[-1]
    else:
        chosen = ckpt.checkpoint_root(run_dir) / tag
        if chosen not in complete:
            msg = f"{chosen}: not a complete checkpoint; complete ones: {[p.name for p in complete]}."
            raise ConfigError(msg)
    summary_path = run_dir / "run_summary.json"
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        msg = f"{run_dir}: no config.yaml; not a pretraining run directory."
        raise ConfigError(msg)
    import yaml

    run_cfg = yaml.safe_load(config_path.read_text())
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    corpus = Path(run_cfg["data"]["corpus"])
    vocab = GeneVocab.load(corpus / "vocab.json")
    manifest = json.loads((corpus / "manifest.json").read_text())
    state = consolidated_fp32_state_dict(chosen.parent, chosen.name)
    family = run_cfg["family"]
    model_cfg = model_config(family, run_cfg["model"], vocab.size)  # model.init_from: the release's config
    build_model(family, model_cfg).load_state_dict(state)  # fails loudly if the weights do not fit the config

    training = {
        "corpus": str(corpus),
        "corpus_manifest_sha256": sha256_file(corpus / "manifest.json"),
        "checkpoint": chosen.name,
        "steps": summary.get("steps"),
        "tokens": summary.get("tokens"),
        "final_losses": summary.get("final_losses"),
        "world_size": summary.get("world_size"),
    }
    return write_release(out, family, model_cfg, state, vocab, manifest, training, checkpoint=chosen.name)


def write_release(
    out: Path,
    family: str,
    model_cfg,
    state: dict[str, torch.Tensor],
    vocab: GeneVocab,
    manifest: dict,
    training: dict,
    checkpoint: str | None = None,
    card: str | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a release directory atomically (built in a temp dir, renamed into place).

    `manifest` is the training corpus's manifest (value kind, totals, vocab); `training` goes to training_summary.json;
    `card` replaces the model card written from them (an imported checkpoint has no scgrn training run);
    `extra_files` ({name: text}) are written into the release too.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(tmp / "model.safetensors"),
        metadata={"format": RELEASE_FORMAT, "family": family},
    )
    (tmp / "model.safetensors").chmod(published_mode())  # safetensors writes 0600; a release is shared
    config = {
        "format": RELEASE_FORMAT,
        "version": RELEASE_VERSION,
        "family": family,
        "model": dataclasses.asdict(model_cfg),
        "vocab_sha256": vocab.sha256,
        "value_kind": manifest["value_kind"],
        "checkpoint": checkpoint,
        "model_sha256": sha256_file(tmp / "model.safetensors"),
    }
    atomic_write_text(tmp / "config.json", json.dumps(config, indent=1))
    vocab.save(tmp / "vocab.json")
    atomic_write_text(tmp / "training_summary.json", json.dumps(training, indent=1))
    n_params = sum(v.numel() for v in state.values())
    atomic_write_text(tmp / "README.md", card or _model_card(family, model_cfg, training, n_params, manifest))
    for name, text in (extra_files or {}).items():  # e.g. an imported checkpoint's gene-name table
        atomic_write_text(tmp / name, text)
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def _model_card(family, model_cfg, training, n_params, manifest) -> str:
    paper = {
        "scbert": "scBERT (Yang et al. 2022, Nat. Mach. Intell.)",
        "exceiver": "Exceiver (Connell et al. 2022), a Perceiver IO expression model",
        "geneformer": "Geneformer (Theodoris et al. 2023, Nature), a BERT over rank-value encoded cells",
        "scgpt": "scGPT (Cui et al. 2024, Nature Methods)",
    }[family]
    losses = training.get("final_losses") or {}
    return (
        f"# scgrn {family} release\n\n"
        f"Architecture: {paper}; {n_params:,} parameters.\n\n"
        f"Trained by scgrn pretraining for {training.get('steps')} steps ({training.get('tokens')} tokens) "
        "on a corpus of "
        f"{manifest['totals']['n_cells']:,} cells ({manifest['value_kind']} values, vocab of "
        f"{manifest['vocab']['size']:,} tokens, sha256 {manifest['vocab']['sha256'][:16]}…).\n\n"
        f"Final losses: train {losses.get('train')}, validation {losses.get('val')}.\n\n"
        "Load: `from pretrain import load_release; model, vocab = load_release(PATH)` (safetensors, no pickle).\n\n"
        "Intended use: gene and cell embeddings for GRN inference (scgrn finetune) and research. Inputs must be "
        "sharded with this release's vocab.json (`scgrn shard ... --vocab vocab.json`) and raw counts.\n\n"
        "Config:\n```json\n" + json.dumps(dataclasses.asdict(model_cfg), indent=1) + "\n```\n"
    )


def load_release(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, GeneVocab]:
    """A ready model (eval mode) and its vocabulary from a release directory; no pickle involved."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        msg = f"{path}: no config.json; not an scgrn release (make one with `scgrn export`)."
        raise ConfigError(msg)
    config = json.loads(cfg_path.read_text())
    if config.get("format") != RELEASE_FORMAT or config.get("version") != RELEASE_VERSION:
        msg = (
            f"{cfg_path}: format {config.get('format')!r} v{config.get('version')!r} is not "
            f"{RELEASE_FORMAT!r} v{RELEASE_VERSION}; upgrade scgrn or re-export."
        )
        raise ConfigError(msg)
    missing = [name for name in ("vocab.json", "model.safetensors") if not (path / name).is_file()]
    if missing:
        msg = (
            f"{path}: release is incomplete, {' and '.join(str(path / m) for m in missing)} missing (a release holds "
            "config.json, model.safetensors and vocab.json). Re-export it with `scgrn export CHECKPOINT_RUN --out DIR`."
        )
        raise ConfigError(msg)
    vocab = GeneVocab.load(path / "vocab.json")
    if vocab.sha256 != config["vocab_sha256"]:
        msg = f"{path}: vocab.json does not match config.json (sha256 differs); the release is damaged."
        raise ConfigError(msg)
    weights = path / "model.safetensors"
    if not weights.exists():
        msg = f"{weights}: missing; the release is incomplete. Re-export it with `scgrn export RUN_DIR --out {path}`."
        raise ConfigError(msg)
    expected = config.get("model_sha256")  # absent in releases written before the check existed: accepted
    if expected is not None:
        actual = sha256_file(weights)
        if actual != expected:
            msg = (
                f"{weights}: sha256 {actual[:16]}… does not match config.json's model_sha256 {str(expected)[:16]}…; "
                "the release is damaged or was modified; re-export it with `scgrn export`."
            )
            raise ConfigError(msg)
    config_cls, _ = families()[config["family"]]
    model = build_model(config["family"], config_cls(**config["model"]))
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval(), vocab


def release_sha256(path: Path) -> str:
    return sha256_file(Path(path) / "model.safetensors")
