"""The Geneformer family and its Hugging Face interop, on tiny checkpoints made here in the real on-disk layouts.

- rank-value encoding equals a direct numpy implementation of Geneformer's tokenizer (V1 and V2 layouts);
- import: `BertForMaskedLM(...).save_pretrained` + pickled dictionaries -> release -> logits equal transformers'
  forward on the same tokenised cells to 1e-5 (fp32); export -> `from_pretrained` -> equal logits;
- a crafted pickle is refused without running anything; bad folders, configs and dictionaries get one error each.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency (pip install -e .[dev])")

from pretrain.config import ConfigError  # noqa: E402
from pretrain.interop.dictionaries import read_dictionary  # noqa: E402
from pretrain.interop.geneformer_io import export_hf, import_geneformer  # noqa: E402
from pretrain.models.geneformer import prepare_batch, rank_value_encode  # noqa: E402
from pretrain.release import load_release  # noqa: E402

N_GENES = 60


def _dictionaries(root, layout):
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if layout == "v2" else [])
    genes = [f"ENSG{j:011d}" for j in range(N_GENES)]
    tokens = {t: i for i, t in enumerate(specials + genes)}
    rng = np.random.default_rng(1)
    medians = {g: np.float32(rng.uniform(0.5, 5.0)) for g in genes[:-5]}  # 5 genes without a median; numpy scalars
    (root / "token_dictionary.pkl").write_bytes(pickle.dumps(tokens))
    (root / "gene_median_dictionary.pkl").write_bytes(pickle.dumps(medians))
    return tokens, medians


def _checkpoint(root, layout, act="relu", seed=0):
    """A tiny BertForMaskedLM saved by transformers, with Geneformer's dictionaries beside it."""
    tokens, medians = _dictionaries(root, layout)
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=24, hidden_act=act, pad_token_id=0,
    )  # fmt: skip
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms, so a mapping error cannot hide behind BERT's init
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if "attention.self.query.weight" in name or "attention.self.key.weight" in name:
                p.mul_(20)  # peaked attention: a swapped or mis-scaled projection changes the logits clearly
    model.save_pretrained(root / "hf")
    return model, tokens, medians


def _cells(tokens, n_cells=7, seed=3):
    """Raw counts of genes (vocab ids of the token dictionary), packed; some cells longer than the context."""
    rng = np.random.default_rng(seed)
    gene_ids = [t for g, t in tokens.items() if g.startswith("ENSG")]
    ids, values, lengths = [], [], []
    for _ in range(n_cells):
        chosen = np.sort(rng.choice(gene_ids, size=int(rng.integers(5, 40)), replace=False))
        ids.append(chosen)
        values.append(rng.integers(1, 50, chosen.size))
        lengths.append(chosen.size)
    return {
        "gene_ids": torch.from_numpy(np.concatenate(ids)),
        "values": torch.from_numpy(np.concatenate(values).astype(np.float32)),
        "cu_seqlens": torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
    }


def _reference_tokens(cells, tokens, medians, max_len, layout):
    """Geneformer's tokenizer, written plainly: CP10k / median, genes with a median, sorted descending, truncated."""
    by_id = {t: medians.get(g) for g, t in tokens.items()}
    cu = cells["cu_seqlens"].tolist()
    out = []
    for c in range(len(cu) - 1):
        ids = cells["gene_ids"][cu[c] : cu[c + 1]].numpy()
        x = cells["values"][cu[c] : cu[c + 1]].numpy().astype(np.float64)
        x = x / x.sum() * 1e4
        keep = [i for i in range(len(ids)) if by_id[int(ids[i])] is not None]
        norm = np.array([x[i] / float(by_id[int(ids[i])]) for i in keep])
        ranked = [int(ids[keep[i]]) for i in np.lexsort((ids[keep], -norm))]
        if layout == "v2":
            out.append([tokens["<cls>"], *ranked[: max_len - 2], tokens["<eos>"]])
        else:
            out.append(ranked[:max_len])
    return out


def _hf_logits(model, input_ids, cu):
    """transformers' own forward on the same cells, padded, -> packed (T, V) logits."""
    cu = cu.tolist()
    lengths = [cu[c + 1] - cu[c] for c in range(len(cu) - 1)]
    padded = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    attention = torch.zeros_like(padded)
    for c, n in enumerate(lengths):
        padded[c, :n] = input_ids[cu[c] : cu[c + 1]]
        attention[c, :n] = 1
    with torch.no_grad():
        logits = model(input_ids=padded, attention_mask=attention).logits
    return torch.cat([logits[c, :n] for c, n in enumerate(lengths)])


def _our_logits(model, input_ids, positions, cu):
    with torch.no_grad():
        return model.logits(model.encode(input_ids, positions, cu))


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_import_gives_transformers_logits_and_export_loads_back_with_the_same(tmp_path, layout):
    hf_model, tokens, medians = _checkpoint(tmp_path, layout, act="relu" if layout == "v1" else "gelu")
    release = import_geneformer(tmp_path / "hf", tmp_path / "token_dictionary.pkl", tmp_path / "release",
                                gene_medians=tmp_path / "gene_median_dictionary.pkl")  # fmt: skip
    model, vocab = load_release(release)
    model.eval()
    assert model.config.layout == layout and list(vocab.tokens[: len(tokens)]) == list(tokens)
    cells = _cells(tokens)
    input_ids, positions, cu = rank_value_encode(
        model.config, model.gene_median, cells["gene_ids"], cells["values"], cells["cu_seqlens"]
    )
    cu_list = cu.tolist()
    got = [input_ids[cu_list[c] : cu_list[c + 1]].tolist() for c in range(len(cu_list) - 1)]
    assert got == _reference_tokens(cells, tokens, medians, 24, layout)
    assert max(len(t) for t in got) == 24  # some cells were truncated to the context
    ours = _our_logits(model, input_ids, positions, cu)
    theirs = _hf_logits(hf_model, input_ids, cu)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()

    exported = export_hf(release, tmp_path / "exported")
    back = transformers.BertForMaskedLM.from_pretrained(exported).eval()
    assert torch.allclose(_hf_logits(back, input_ids, cu), ours, atol=1e-5, rtol=1e-5)
    assert read_dictionary(exported / "token_dictionary.pkl", "int", "t") == tokens
    assert read_dictionary(exported / "gene_median_dictionary.json", "float", "m") == pytest.approx(
        {g: float(v) for g, v in medians.items()}
    )


def test_masked_training_batches_follow_bert_and_the_loss_is_the_tied_heads(tmp_path):
    _checkpoint(tmp_path, "v2")
    release = import_geneformer(tmp_path / "hf", tmp_path / "token_dictionary.pkl", tmp_path / "release",
                                gene_medians=tmp_path / "gene_median_dictionary.pkl")  # fmt: skip
    model, _ = load_release(release)
    tokens = json.loads((release / "vocab.json").read_text())["tokens"]
    cells = _cells({t: i for i, t in enumerate(tokens)}, n_cells=300)
    prepared = prepare_batch(model.config, model.gene_median, cells, torch.Generator().manual_seed(0))
    labels, inputs = prepared["labels"], prepared["input_ids"]
    selected = labels != -100
    specials = torch.isin(labels.clamp_min(0), torch.tensor(model.config.special_ids)) & selected
    assert not specials.any()  # <cls>, <eos> are never targets
    fraction = (
        selected.sum() / (~torch.isin(inputs, torch.tensor([model.config.cls_token, model.config.eos_token]))).sum()
    )
    assert abs(float(fraction) - 0.15) < 0.02
    as_mask = (inputs[selected] == model.config.mask_token).float().mean()
    unchanged = (inputs[selected] == labels[selected]).float().mean()
    assert abs(float(as_mask) - 0.8) < 0.04 and abs(float(unchanged) - 0.1) < 0.04
    model.train()
    out = model(prepared)
    assert out["n_masked"] == prepared["n_targets"] and torch.isfinite(out["loss"])
    out["loss"].backward()  # the tied matrix gets the gradient of both the input and the output side
    assert model.token_embedding.weight.grad.abs().sum() > 0 and "decoder" not in dict(model.named_parameters())


def test_a_crafted_pickle_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "token_dictionary.pkl"
    evil.write_bytes(pickle.dumps({"<pad>": 0, "<mask>": Exploit()}))
    with pytest.raises(ConfigError, match=r"refused: global (posix|os|nt)\.system is not allowed"):
        read_dictionary(evil, "int", "--token-dictionary")
    assert not marker.exists()
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([("a", 1)]))
    with pytest.raises(ConfigError, match="refused: pickle opcode EMPTY_LIST is not allowed"):
        read_dictionary(tmp_path / "list.pkl", "int", "--token-dictionary")
    (tmp_path / "tuple.pkl").write_bytes(pickle.dumps(("a", 1)))
    with pytest.raises(ConfigError, match="holds a tuple, not a dict"):
        read_dictionary(tmp_path / "tuple.pkl", "int", "--token-dictionary")
    (tmp_path / "float_ids.pkl").write_bytes(pickle.dumps({"<pad>": 0, "G": 1.5}))
    with pytest.raises(ConfigError, match=r"the value of 'G' is 1\.5; each value must be a non-negative integer id"):
        read_dictionary(tmp_path / "float_ids.pkl", "int", "--token-dictionary")
    (tmp_path / "d.tsv").write_text("<pad>\t0\n<mask>\t1\nG\t2\n")
    assert read_dictionary(tmp_path / "d.tsv", "int", "x") == {"<pad>": 0, "<mask>": 1, "G": 2}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickled_dictionaries_are_read_opcode_by_opcode_and_written_for_pickle(tmp_path, protocol):
    """Real pickles of dicts with numpy scalars (every protocol Geneformer's files may use) read back equal, without
    the pickle module; what scgrn writes, pickle.load reads as the same dict."""
    from pretrain.interop.dictionaries import pickled_dict_bytes, read_pickled_dict

    table = {"<pad>": 0, "ENSG1": np.int64(7), "ENSG2": np.float32(1.25), "ENSG3": np.float64(-2.5), "big": 2**40}
    assert read_pickled_dict(pickle.dumps(table, protocol=protocol)) == table
    plain = {"a": 1, "b": 2.5, "c": "ENSG", "é": -(2**35)}
    written = pickled_dict_bytes(plain)
    assert read_pickled_dict(written) == plain
    # standard protocol-2 opcodes end to end (pickletools decodes and checks them; nothing is loaded)
    ops = [op.name for op, _, _ in pickletools.genops(written)]
    assert ops[0] == "PROTO" and ops[-1] == "STOP" and "GLOBAL" not in ops and "REDUCE" not in ops
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"G": np.float64(3.0)}, protocol=protocol))
    assert read_dictionary(tmp_path / "m.pkl", "float", "--gene-medians") == {"G": 3.0}
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps({"G": np.array([1.0, 2.0])}, protocol=protocol))
    with pytest.raises(ConfigError, match="refused: global numpy"):  # an array is rebuilt by another global
        read_dictionary(tmp_path / "obj.pkl", "float", "--gene-medians")


def test_bad_checkpoint_folders_are_refused_by_name_and_nothing_is_left_under_out(tmp_path):
    _checkpoint(tmp_path, "v1")
    dictionary = tmp_path / "token_dictionary.pkl"
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "weights.bak")
    with pytest.raises(ConfigError, match=r"missing model\.safetensors \(or pytorch_model\.bin\)"):
        import_geneformer(tmp_path / "hf", dictionary, tmp_path / "out")
    (tmp_path / "weights.bak").rename(tmp_path / "hf" / "model.safetensors")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="not a BERT masked-language model"):
        import_geneformer(tmp_path / "hf", dictionary, tmp_path / "out")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "vocab_size": 30}))
    with pytest.raises(ConfigError, match="does not fit the checkpoint's vocab_size 30"):
        import_geneformer(tmp_path / "hf", dictionary, tmp_path / "out")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(ConfigError, match="the weights do not fit"):
        import_geneformer(tmp_path / "hf", dictionary, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp*"))


def test_the_cli_imports_and_exports_a_checkpoint(tmp_path):
    from conftest import run_cli

    hf_model, _, _ = _checkpoint(tmp_path, "v2")
    dictionaries = ("--token-dictionary", tmp_path / "token_dictionary.pkl",
                    "--gene-medians", tmp_path / "gene_median_dictionary.pkl")  # fmt: skip
    proc = run_cli("import", "geneformer", tmp_path / "hf", *dictionaries, "--out", tmp_path / "release")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("export", tmp_path / "release", "--format", "hf", "--out", tmp_path / "hf-out")
    assert proc.returncode == 0, proc.stderr
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf-out").eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids).logits, hf_model(input_ids=ids).logits, atol=1e-5)
    proc = run_cli("import", "geneformer", tmp_path / "nowhere", "--token-dictionary", tmp_path / "x.pkl",
                   "--out", tmp_path / "r2")  # fmt: skip
    assert proc.returncode == 2 and "scgrn import: error:" in proc.stderr and "missing config.json" in proc.stderr


def test_token_deletion_is_the_embedding_shift_when_the_tf_token_is_removed(tmp_path):
    """Geneformer's deletion readout on one cell equals 1 − cos of the target's state with and without the TF's
    token (the genes after it move up one rank), computed here by hand."""
    from finetune.grn.evidence import DeletionConfig
    from finetune.grn.token_deletion import token_deletion

    _checkpoint(tmp_path, "v2")
    release = import_geneformer(tmp_path / "hf", tmp_path / "token_dictionary.pkl", tmp_path / "release",
                                gene_medians=tmp_path / "gene_median_dictionary.pkl")  # fmt: skip
    model, _ = load_release(release)
    model.eval()
    ids = torch.tensor([10, 12, 15, 20, 33, 41])
    cell = {"gene_ids": ids, "values": torch.tensor([5.0, 9, 1, 30, 2, 7]), "cu_seqlens": torch.tensor([0, 6])}
    row_of_id = np.full(len(json.loads((release / "vocab.json").read_text())["tokens"]), -1)
    row_of_id[ids.numpy()] = np.arange(6)  # dataset rows 0..5; row 3 (id 20) is the TF
    stats = token_deletion(model, [cell], row_of_id, np.array([3]), 6, DeletionConfig(max_cells=1))
    tokens, states, _ = model.token_states(ids, cell["values"], cell["cu_seqlens"])
    without = tokens[tokens != 20]
    with torch.no_grad():
        moved = model.encode(without, torch.arange(len(without)), torch.tensor([0, len(without)], dtype=torch.int32))
    for g, gene in enumerate(ids.tolist()):
        if gene == 20:
            continue
        before = states[(tokens == gene).nonzero().item()]
        after = moved[(without == gene).nonzero().item()]
        expected = 1 - torch.nn.functional.cosine_similarity(before, after, dim=0)
        assert stats["isd_mean"][3, g] == pytest.approx(float(expected), abs=1e-5)
        assert stats["isd_count"][3, g] == 1
    assert stats["isd_count"][:3].sum() == 0  # only the TF's row is filled


@pytest.mark.slow
def test_a_geneformer_trained_from_scratch_on_our_shards_learns(tmp_path):
    """No checkpoint: the rank-value normaliser comes from the corpus (gene_stats.nonzero_median_cp10k). Cells of
    four gene modules (each cell expresses 10-15 of its module's 20 genes): the genes in view tell which module a
    masked gene is from: 120 steps of 32 cells on one rank bring the masked-token loss from log(vocab) toward
    log(20), which a model that learns nothing would not (it stays within ~0.05 of its start)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    from test_step_semantics import REPO, _train

    from data_prep.config import ShardConfig
    from data_prep.sharder import shard

    rng = np.random.default_rng(9)
    x = np.zeros((200, 80), dtype=np.int32)
    for c in range(200):
        module = rng.integers(4)
        genes = 20 * module + rng.choice(20, size=int(rng.integers(10, 16)), replace=False)
        x[c, genes] = rng.integers(1, 40, genes.size)
    obs, var = pd.DataFrame(index=[f"c{i}" for i in range(200)]), pd.DataFrame(index=[f"G{j}" for j in range(80)])
    ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=var).write_h5ad(tmp_path / "cells.h5ad")
    shard(ShardConfig(inputs=[tmp_path / "cells.h5ad"], out=tmp_path / "corpus", val_fraction=0.0), progress=False)
    config = REPO / "launch" / "configs" / "pretrain" / "geneformer-debug.yaml"
    _train(tmp_path / "run", tmp_path / "corpus", 1, "train.steps=120", "train.lr=6e-3", "train.eval_every=1000",
           "train.save_every=1000", "data.block_cells=16", "data.micro_batch_cells=32", config=config)  # fmt: skip
    losses = json.loads((tmp_path / "run" / "run_summary.json").read_text())["loss_history"]
    assert len(losses) == 120 and np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.4, losses
