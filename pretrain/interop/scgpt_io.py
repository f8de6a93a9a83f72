"""`scgrn import scgpt DIR --out RELEASE`: a published scGPT checkpoint folder -> a release of the scgpt family.

The folder holds `best_model.pt` (a state dict, read with `torch.load(weights_only=True)`: no pickle code runs),
`vocab.json` (gene -> token id) and `args.json` (embsize, nheads, d_hid, nlayers, n_bins, input_emb_style, ...).
Everything the GRN stage uses is mapped: gene encoder, value encoder, the transformer layers (`Wqkv` of the flash
layers, or `in_proj_*` of torch's, onto the fused `qkv_proj`) and the expression decoder. Heads the GRN stage does
not read (cell-type classifier, MVC decoder, adversarial discriminator, zero-probability head) are left out and
listed in training_summary.json; a checkpoint with batch norm over the embeddings (dsbn / bn) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from data_prep.vocab import GeneVocab
from pretrain.config import ConfigError
from pretrain.interop.dictionaries import read_dictionary
from pretrain.interop.geneformer_io import _check_out

FAMILY = "scgpt"
FILES = ("best_model.pt", "vocab.json", "args.json")
LEFT_OUT = ("cls_decoder.", "mvc_decoder.", "grad_reverse_discriminator.", "decoder.zero_logit.", "flag_encoder.",
            "batch_encoder.", "sim.")  # fmt: skip
REFUSED = ("dsbn.", "bn.")


def import_scgpt(folder: Path, out: Path) -> Path:
    from pretrain.models.scgpt import ScGPT
    from pretrain.release import write_release

    folder, out = Path(folder), Path(out)
    _check_out(out)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        msg = f"{folder}: missing {missing}. An scGPT checkpoint folder holds {list(FILES)} (e.g. scGPT_human)."
        raise ConfigError(msg)
    try:
        args = json.loads((folder / "args.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f"{folder / 'args.json'}: not valid JSON ({err}); re-download the checkpoint's args.json."
        raise ConfigError(msg) from None
    tokens = read_dictionary(folder / "vocab.json", "int", "vocab.json")
    try:
        state = torch.load(folder / "best_model.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickling refusal or a damaged file
        msg = f"{folder / 'best_model.pt'}: cannot read it as a state dict with weights_only=True ({err})."
        raise ConfigError(msg) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"{folder / 'best_model.pt'}: not a state dict of tensors (a whole pickled model is not read)."
        raise ConfigError(msg)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    refused = sorted(k for k in state if k.startswith(REFUSED))
    if refused:
        msg = f"{folder / 'best_model.pt'}: batch norm over the embeddings ({refused[:3]}) is not supported."
        raise ConfigError(msg)
    config = _config(args, tokens, state, folder)
    ours, left_out = _map_state(state, config.n_layers, folder / "best_model.pt")
    model = ScGPT(config)
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as err:
        msg = (
            f"{folder / 'best_model.pt'}: the weights do not fit args.json ({str(err).splitlines()[0]} …); "
            "check that the two files belong to the same checkpoint."
        )
        raise ConfigError(msg) from None
    vocab = GeneVocab.from_ids(dict(tokens), source=str(folder / "vocab.json"))
    training = {"imported_from": str(folder.resolve()), "args": args, "left_out": left_out}
    card = (
        f"# scgrn scgpt release (imported)\n\nImported from the scGPT checkpoint {folder.resolve()}: "
        f"{config.n_layers} layers x {config.d_model}, {config.n_heads} heads, {config.n_bins} value bins "
        f"({config.input_emb_style}), vocabulary {config.vocab_size:,} tokens.\n\n"
        "Architecture: scGPT (Cui et al. 2024, Nature Methods). Heads not used by the GRN stage were left out: "
        f"{', '.join(sorted({k.split('.')[0] for k in left_out})) or 'none'}.\n"
    )
    return write_release(out, FAMILY, config, model.state_dict(), vocab, {"value_kind": "counts"}, training, card=card)


def _config(args: dict, tokens: dict[str, int], state: dict, folder: Path):
    from pretrain.models.scgpt import ScGPTConfig

    need = ("embsize", "nheads", "d_hid", "nlayers")
    missing = [k for k in need if k not in args]
    if missing:
        msg = f"{folder / 'args.json'}: missing {missing}; an scGPT args.json has {list(need)}."
        raise ConfigError(msg)
    embedding = state.get("encoder.embedding.weight")
    if embedding is None:
        msg = f"{folder / 'best_model.pt'}: no encoder.embedding.weight; not an scGPT TransformerModel state dict."
        raise ConfigError(msg)
    layers = {int(k.split(".")[2]) for k in state if k.startswith("transformer_encoder.layers.")}
    problems = []
    if embedding.shape[1] != args["embsize"]:
        problems.append(f"embsize {args['embsize']} but the gene embedding is {tuple(embedding.shape)}")
    if len(layers) != args["nlayers"]:
        problems.append(f"nlayers {args['nlayers']} but the state dict has {len(layers)} layers")
    if max(tokens.values()) >= embedding.shape[0]:
        problems.append(f"vocab.json ids reach {max(tokens.values())} but the embedding has {embedding.shape[0]} rows")
    if problems:
        msg = f"{folder}: args.json disagrees with best_model.pt: " + "; ".join(problems) + "."
        raise ConfigError(msg)
    style = args.get("input_emb_style", "continuous")
    try:
        return ScGPTConfig(
            vocab_size=int(embedding.shape[0]), d_model=args["embsize"], n_heads=args["nheads"], d_ff=args["d_hid"],
            n_layers=args["nlayers"], n_bins=int(args.get("n_bins", 51)), input_emb_style=style,
            cls_token=tokens.get("<cls>", 0), pad_token=tokens.get(args.get("pad_token", "<pad>"), 0),
            mask_value=float(args.get("mask_value", -1)),
        )  # fmt: skip
    except ValueError as err:
        msg = f"{folder / 'args.json'}: {err}"
        raise ConfigError(msg) from None


def _map_state(state: dict, n_layers: int, source: Path) -> tuple[dict, list[str]]:
    names = {
        "encoder.embedding.weight": "gene_embedding.weight",
        "encoder.enc_norm.weight": "gene_norm.weight",
        "encoder.enc_norm.bias": "gene_norm.bias",
        "value_encoder.linear1.weight": "value_fc1.weight",
        "value_encoder.linear1.bias": "value_fc1.bias",
        "value_encoder.linear2.weight": "value_fc2.weight",
        "value_encoder.linear2.bias": "value_fc2.bias",
        "value_encoder.norm.weight": "value_norm.weight",
        "value_encoder.norm.bias": "value_norm.bias",
        "value_encoder.embedding.weight": "value_embedding.weight",
        "value_encoder.enc_norm.weight": "value_norm.weight",
        "value_encoder.enc_norm.bias": "value_norm.bias",
    }
    for i in (0, 2, 4):
        for kind in ("weight", "bias"):
            names[f"decoder.fc.{i}.{kind}"] = f"decoder.{i}.{kind}"
    layer = {"self_attn.Wqkv": "attn.qkv_proj", "self_attn.in_proj": "attn.qkv_proj",
             "self_attn.out_proj": "attn.out_proj", "linear1": "fc_in", "linear2": "fc_out", "norm1": "norm1",
             "norm2": "norm2"}  # fmt: skip
    for i in range(n_layers):
        for theirs, ours in layer.items():
            for kind in ("weight", "bias"):
                key = f"transformer_encoder.layers.{i}.{theirs}{'_' if theirs.endswith('in_proj') else '.'}{kind}"
                names[key] = f"blocks.{i}.{ours}.{kind}"
    out, left_out, unknown = {}, [], []
    for key, tensor in state.items():
        if key in names:
            out[names[key]] = tensor
        elif key.startswith(LEFT_OUT):
            left_out.append(key)
        else:
            unknown.append(key)
    if unknown:
        msg = f"{source}: tensors this importer does not know: {sorted(unknown)[:6]}; not an scGPT state dict it reads."
        raise ConfigError(msg)
    return out, sorted(left_out)
