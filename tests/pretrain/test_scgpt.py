"""`scgrn import scgpt`: a checkpoint folder in scGPT's layout (best_model.pt state dict, vocab.json, args.json),
made here with scGPT's parameter names, imports into a release whose forward equals a reference implementation of
scGPT's published layer stack, written below from its architecture (padded batch, key-padding mask, post-norm
layers with a fused Wqkv, ReLU; the expression decoder). Bad folders get one error each."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkpoints import LAYERS, N_BINS, E, scgpt_state

from pretrain.config import ConfigError
from pretrain.interop.scgpt_io import import_scgpt
from pretrain.models.scgpt import bin_cell_values
from pretrain.release import load_release

H, D_HID = 4, 48


def _folder(root, style="continuous", vocab_size=40):
    genes = {"<pad>": 0, "<cls>": 1, "<eoc>": 2} | {f"GENE{j}": 3 + j for j in range(vocab_size - 3)}
    root.mkdir(parents=True, exist_ok=True)
    state = scgpt_state(vocab_size, style)
    torch.save(state, root / "best_model.pt")
    (root / "vocab.json").write_text(json.dumps(genes))
    args = {"embsize": E, "nheads": H, "d_hid": D_HID, "nlayers": LAYERS, "n_bins": N_BINS, "dropout": 0.2,
            "input_emb_style": style, "pad_token": "<pad>", "mask_value": -1, "pad_value": -2}  # fmt: skip
    (root / "args.json").write_text(json.dumps(args))
    return state, genes


def _reference(state, style, ids, values, pad_mask):
    """scGPT's forward, from its published architecture: (B, L) ids and input values, pad_mask True = padding."""

    def ln(x, name):
        return F.layer_norm(x, (E,), state[name + ".weight"], state[name + ".bias"], eps=1e-5)

    def lin(x, name):
        return F.linear(x, state[name + ".weight"], state[name + ".bias"])

    src = ln(F.embedding(ids, state["encoder.embedding.weight"]), "encoder.enc_norm")
    if style == "continuous":
        v = lin(F.relu(lin(values.clamp(max=512).unsqueeze(-1), "value_encoder.linear1")), "value_encoder.linear2")
        v = ln(v, "value_encoder.norm")
    else:
        v = ln(F.embedding(values.long(), state["value_encoder.embedding.weight"]), "value_encoder.enc_norm")
    x = src + v
    b, length, _ = x.shape
    for i in range(LAYERS):
        p = f"transformer_encoder.layers.{i}."
        q, k, vv = lin(x, p + "self_attn.Wqkv").view(b, length, 3, H, E // H).unbind(2)
        scores = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(E // H)
        scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        attn = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), vv).reshape(b, length, E)
        x = ln(x + lin(attn, p + "self_attn.out_proj"), p + "norm1")
        x = ln(x + lin(F.relu(lin(x, p + "linear1")), p + "linear2"), p + "norm2")
    h = F.leaky_relu(lin(F.leaky_relu(lin(x, "decoder.fc.0")), "decoder.fc.2"))
    return x, lin(h, "decoder.fc.4").squeeze(-1)


@pytest.mark.parametrize("style", ["continuous", "category"])
def test_import_gives_the_reference_stack_forward(tmp_path, style):
    state, genes = _folder(tmp_path / "ckpt", style)
    release = import_scgpt(tmp_path / "ckpt", tmp_path / "release")
    model, _ = load_release(release)
    model.eval()
    training = json.loads((release / "training_summary.json").read_text())
    assert training["left_out"] == ["cls_decoder.out_layer.weight", "mvc_decoder.gene2query.weight"]
    rng = np.random.default_rng(0)
    lengths = [7, 12, 4]
    ids = [torch.from_numpy(rng.choice(np.arange(3, 40), n, replace=False)) for n in lengths]
    counts = [torch.from_numpy(rng.integers(0, 30, n).astype(np.float32)) for n in lengths]
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    bins = bin_cell_values(torch.cat(counts), cu, N_BINS)
    packed_ids, packed_values, packed_cu = model.with_cls(torch.cat(ids), bins, cu)
    with torch.no_grad():
        hidden = model.encode(packed_ids, packed_values, packed_cu)
        pred = model.predict(hidden)
    # the same cells padded, as scGPT runs them
    longest = max(lengths) + 1
    pad_ids = torch.zeros(3, longest, dtype=torch.long)
    pad_values = torch.full((3, longest), -2.0)
    pad_mask = torch.ones(3, longest, dtype=torch.bool)
    cu_list = packed_cu.tolist()
    for c in range(3):
        n = cu_list[c + 1] - cu_list[c]
        pad_ids[c, :n], pad_values[c, :n] = (
            packed_ids[cu_list[c] : cu_list[c + 1]],
            packed_values[cu_list[c] : cu_list[c + 1]],
        )
        pad_mask[c, :n] = False
    if style == "category":
        pad_values = pad_values.clamp(min=0)
    with torch.no_grad():
        ref_hidden, ref_pred = _reference(state, style, pad_ids, pad_values, pad_mask)
    ours_h = torch.cat([hidden[cu_list[c] : cu_list[c + 1]] for c in range(3)])
    theirs_h = torch.cat([ref_hidden[c, : cu_list[c + 1] - cu_list[c]] for c in range(3)])
    assert torch.allclose(ours_h, theirs_h, atol=1e-5), (ours_h - theirs_h).abs().max()
    theirs_p = torch.cat([ref_pred[c, : cu_list[c + 1] - cu_list[c]] for c in range(3)])
    assert torch.allclose(pred, theirs_p, atol=1e-5)
    assert packed_ids[cu_list[0]].item() == genes["<cls>"] and bins.max() <= N_BINS - 1 and bins.min() >= 0
    states = model.gene_states(torch.cat(ids), torch.cat(counts), cu)
    assert states.shape == (sum(lengths), E)  # one state per given gene, <cls> dropped


def test_bad_scgpt_folders_are_refused_with_the_file_named(tmp_path):
    _folder(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "args.json").rename(tmp_path / "args.bak")
    with pytest.raises(ConfigError, match=r"missing \['args.json'\]"):
        import_scgpt(tmp_path / "ckpt", tmp_path / "out")
    args = json.loads((tmp_path / "args.bak").read_text())
    (tmp_path / "ckpt" / "args.json").write_text(json.dumps({**args, "nlayers": 3}))
    with pytest.raises(
        ConfigError, match=r"args\.json disagrees with best_model\.pt: nlayers 3 but the state dict has 2"
    ):
        import_scgpt(tmp_path / "ckpt", tmp_path / "out")
    (tmp_path / "ckpt" / "args.json").write_text(json.dumps({**args, "embsize": 64}))
    with pytest.raises(ConfigError, match="embsize 64 but the gene embedding is"):
        import_scgpt(tmp_path / "ckpt", tmp_path / "out")
    (tmp_path / "ckpt" / "args.json").write_text(json.dumps(args))

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"encoder.embedding.weight": Evil()}, tmp_path / "ckpt" / "best_model.pt")
    with pytest.raises(ConfigError, match="cannot read it as a state dict with weights_only=True"):
        import_scgpt(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
