"""`scgrn shard`: inputs -> vocab + mapping report -> shards (parallel, resumable) -> manifest (last).

With `--part I/N` the same plan is computed but only part I's block of shards is written, with a `part.json`
instead of the manifest; `scgrn shard merge` (merge.py) joins the parts into the corpus a single run writes.

Peak memory is bounded by `workers x cells_per_shard x non-zeros per cell` (each task holds one shard's
rows) plus the per-gene histograms (vocab x ~530 int64) in the parent, whatever the number of input cells.
Gene-major inputs (CSC h5ad, Matrix Market, CSV) are first transposed through a disk spill in bounded chunks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep.cell_block import CellBlock
from data_prep.config import ShardConfig
from data_prep.errors import CorpusError, InputError
from data_prep.gene_mapping import check_unique_names, input_keys, load_gene_map, map_genes
from data_prep.gene_stats import GeneStats
from data_prep.io_utils import atomic_write_text, out_dir_problem, pause_point, sha256_file, sha256_tree
from data_prep.manifest import (
    CORPUS_FORMAT_VERSION,
    CORPUS_MAGIC,
    MANIFEST_NAME,
    complete_manifest,
    measured_panels,
    write_manifest,
)
from data_prep.parts import (
    PART_FORMAT_VERSION,
    PART_MAGIC,
    PART_NAME,
    PART_RULE,
    PART_STATS_DIR,
    stats_path,
    write_part,
)
from data_prep.readers import InputSpec, detect_kind, open_reader
from data_prep.shard_task import PROGRESS_DIR, ShardTask, TaskContext, close_readers, run_task
from data_prep.vocab import GeneVocab
from data_prep.wds_shard import WdsShard
from data_prep.zarr_shard import ZarrShard

log = logging.getLogger(__name__)
PLAN_NAME = "plan.json"
SPILL_DIR = ".spill"


def _check_out_dir(cfg: ShardConfig, identity: dict) -> str:
    """Refuse to touch a directory that holds something else; nothing already written is ever overwritten.

    Returns the state of `--out`: "fresh", "unfinished" (a run to resume) or "finished" (a manifest exists).
    """
    out = cfg.out
    if (why := out_dir_problem(out)) is not None:
        msg = f"--out {out}: {why}."
        raise CorpusError(msg)
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    plan = out / PROGRESS_DIR / PLAN_NAME
    manifest = out / MANIFEST_NAME
    part_file = out / PART_NAME
    existing, existing_part = None, None
    if plan.exists():
        plan_doc = json.loads(plan.read_text())
        existing, existing_part = plan_doc.get("identity"), plan_doc.get("part")
    elif manifest.exists() or part_file.exists():
        try:
            doc = json.loads((manifest if manifest.exists() else part_file).read_text())
            existing = doc.get("options")
            if "part" in doc:
                existing_part = f"{doc['part']['index']}/{doc['part']['count']}"
        except (json.JSONDecodeError, KeyError, TypeError):
            existing = None
    if existing is None:
        msg = (
            f"--out {out}: directory is not empty and holds no scgrn corpus; refusing to write into it. "
            "Choose an empty or new directory."
        )
        raise CorpusError(msg)
    if existing != identity:
        diff = sorted(k for k in set(existing) | set(identity) if existing.get(k) != identity.get(k))
        msg = (
            f"--out {out}: directory holds a different corpus (options differ in: {', '.join(diff)}). "
            "Choose another --out, or delete that directory if it is no longer needed."
        )
        raise CorpusError(msg)
    wanted_part = str(cfg.part) if cfg.part else None
    if existing_part != wanted_part:
        held = f"part {existing_part}" if existing_part else "the whole corpus"
        wanted = f"part {wanted_part}" if wanted_part else "the whole corpus (no --part)"
        msg = (
            f"--out {out}: directory holds {held} of this corpus, but this run writes {wanted}. "
            "Give every part its own --out directory (e.g. PARTS/part-I), and pass the same --part to resume one."
        )
        raise CorpusError(msg)
    state = "finished" if manifest.exists() or part_file.exists() else "unfinished"
    if not cfg.resume:
        msg = (
            f"--out {out}: directory already holds {'a' if state == 'finished' else 'an'} {state} run of this corpus; "
            "pass --resume to verify it and complete what is missing."
        )
        raise CorpusError(msg)
    return state


def _check_same_content(out: Path, input_hashes: list[str | None], vocab_sha256: str, source: Path) -> None:
    """Input files or vocab changed in place since `source` (plan, manifest or part.json) was written: resuming
    would mix two corpora. A part hashes only the inputs it reads (None for the others), on both sides alike."""
    old = json.loads(source.read_text())
    if source.name == PLAN_NAME:
        old_inputs, old_vocab = old["input_sha256"], old["vocab_sha256"]
    else:
        old_inputs, old_vocab = [i["sha256"] for i in old["inputs"]], old["vocab"]["sha256"]
    changed = [str(i) for i, (a, b) in enumerate(zip(old_inputs, input_hashes, strict=True)) if a != b]
    if changed or old_vocab != vocab_sha256:
        what = f"input(s) #{', #'.join(changed)}" if changed else "the vocabulary"
        msg = (
            f"--out {out}: {what} changed since this corpus was written (sha256 differs), so it cannot be resumed; "
            "nothing was modified. Shard into another --out, or delete this one to rebuild it."
        )
        raise CorpusError(msg)


def _records_from_manifest(out: Path, vocab_size: int, kind) -> None:
    """Re-create `.progress` records of a finished corpus so a resume keeps its verified shards."""
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    for shard_meta in manifest["shards"]:
        name = f"shard-{shard_meta['index']:06d}"
        record = {k: v for k, v in shard_meta.items() if k != "cell_offset"}
        if not _shard_ok(out, record, need_stats=False):
            continue
        fmt, info = next(iter(record["files"].items()))
        path = out / info["path"]
        if fmt == "zarr":
            block = ZarrShard(path).read_block(0, record["n_cells"], with_obs=False)
        else:
            shard_file = WdsShard(path)
            block = CellBlock.concat([shard_file.read_sample(i) for i in range(len(shard_file.sample_keys))])
            shard_file.close()
        np.savez(
            out / PROGRESS_DIR / f"{name}.stats.npz",
            **GeneStats(vocab_size, kind).partial(block.gene_ids, block.values, block.indptr, block.library_size),
        )
        atomic_write_text(out / PROGRESS_DIR / f"{name}.json", json.dumps(record))


def _records_from_part(out: Path, part_doc: dict) -> None:
    """Re-create `.progress` records of a finished part (its shards' records + saved gene stats) for a resume."""
    for record in part_doc["shards"]:
        saved = stats_path(out, record["index"])
        if not saved.exists() or not _shard_ok(out, record, need_stats=False):
            continue
        name = f"shard-{record['index']:06d}"
        shutil.copyfile(saved, out / PROGRESS_DIR / f"{name}.stats.npz")
        atomic_write_text(out / PROGRESS_DIR / f"{name}.json", json.dumps(record))


def _remove_stale_temporaries(out: Path) -> None:
    """Delete what a killed run left under temporary names (shard writes, atomic JSON writes). Their writer is
    dead: the directory holds this corpus (checked) and one run at a time writes it."""
    stale = [*out.glob(".*.tmp"), *out.glob("zarr/.shard-*.tmp-*"), *out.glob("webdataset/.shard-*.tmp-*")]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        log.info("resume: removed %d temporary file(s) left by an interrupted run", len(stale))


def _build_vocab(cfg: ShardConfig, readers, gene_map) -> GeneVocab:
    if cfg.vocab is not None:
        return GeneVocab.load(cfg.vocab)
    lists = []
    for spec, reader in zip(cfg_specs(cfg), readers, strict=True):
        keys = input_keys(reader.gene_names, reader.gene_ids, cfg.mapping, str(spec.path))
        keys = [gene_map.get(k, k) for k in keys] if gene_map else keys
        lists.append([k.upper() for k in keys] if cfg.mapping.case_insensitive else keys)
    return GeneVocab.from_genes(lists)


def cfg_specs(cfg: ShardConfig) -> list[InputSpec]:
    return [
        InputSpec(
            path=p,
            layer=cfg.layer,
            obs_columns=tuple(cfg.obs_columns),
            csv_orientation=cfg.csv_orientation,
            spill_dir=cfg.out / SPILL_DIR / f"input-{i:03d}",
            spill_cells=min(cfg.cells_per_shard, 8192),
        )
        for i, p in enumerate(cfg.inputs)
    ]


def _shard_ok(out: Path, record: dict, need_stats: bool = True) -> bool:
    for info in record["files"].values():
        path = out / info["path"]
        if not path.exists() or sha256_tree(path) != info["sha256"]:
            return False
    return not need_stats or (out / PROGRESS_DIR / f"shard-{record['index']:06d}.stats.npz").exists()


def plan_tasks(n_cells_per_input: list[int], cells_per_shard: int) -> list[ShardTask]:
    """The global plan: shard k = rows [a, b) of one input, inputs in order; identical on every machine."""
    tasks = [
        ShardTask(0, i, lo, min(lo + cells_per_shard, n))
        for i, n in enumerate(n_cells_per_input)
        for lo in range(0, n, cells_per_shard)
    ]
    return [replace(t, shard_index=k) for k, t in enumerate(tasks)]


def shard(
    cfg: ShardConfig,
    progress: bool = True,
    *,
    on_shard: Callable[[dict], None] | None = None,
    kept_elsewhere: Callable[[dict], bool] | None = None,
) -> dict:
    """Run the whole sharding job (or part `cfg.part` of it); returns the manifest (or the part's part.json).

    on_shard(record) runs in this process after each shard is written (its files and `.progress` record are
    final); `scgrn shard --out s3://...` uses it to copy the shard to the bucket at once. kept_elsewhere(record),
    asked on `--resume` for a recorded shard whose files are not (intact) in `--out`, says whether they are
    safely elsewhere (that bucket) so the shard is kept, not written again.
    """
    t0 = time.perf_counter()
    identity = cfg.identity()
    state = _check_out_dir(cfg, identity)
    specs = cfg_specs(cfg)
    kinds = [detect_kind(s.path) for s in specs]
    readers = [open_reader(s) for s in specs]
    gene_map = load_gene_map(cfg.mapping.gene_map) if cfg.mapping.gene_map else None
    for spec, reader in zip(specs, readers, strict=True):
        check_unique_names(
            input_keys(reader.gene_names, reader.gene_ids, cfg.mapping, str(spec.path)), str(spec.path), cfg.mapping
        )
    vocab = _build_vocab(cfg, readers, gene_map)
    mappings = [
        map_genes(
            input_keys(r.gene_names, r.gene_ids, cfg.mapping, str(s.path)), vocab, cfg.mapping, str(s.path), gene_map
        )
        for s, r in zip(specs, readers, strict=True)
    ]
    if cfg.unmapped == "refuse":
        for m in mappings:
            if m.unmapped:
                msg = (
                    f"{m.source}: {len(m.unmapped)} gene(s) are not in the vocabulary ({vocab.source}), e.g. "
                    f"{m.unmapped[:5]}. Pass --unmapped drop to drop them (listed in unmapped_genes.tsv)."
                )
                raise InputError(msg)
    out = cfg.out
    tasks = plan_tasks([r.n_cells for r in readers], cfg.cells_per_shard)
    # A part writes only its block of the global plan, and hashes only the inputs that block reads: with many
    # machines, hashing every input on each would read the whole data set N times.
    mine = [tasks[k] for k in cfg.part.shard_range(len(tasks))] if cfg.part else tasks
    read_inputs = {t.input_index for t in mine} if cfg.part else set(range(len(specs)))
    input_hashes = [sha256_tree(s.path) if i in read_inputs else None for i, s in enumerate(specs)]
    plan_path = out / PROGRESS_DIR / PLAN_NAME
    finished_path = out / (PART_NAME if cfg.part else MANIFEST_NAME)
    if state != "fresh":
        _check_same_content(out, input_hashes, vocab.sha256, plan_path if plan_path.exists() else finished_path)
    if state == "finished":
        done = json.loads(finished_path.read_text())
        stats_ok = not cfg.part or all(stats_path(out, s["index"]).exists() for s in done["shards"])
        if stats_ok and all(_shard_ok(out, s, need_stats=False) for s in done["shards"]):
            log.info("%s: already complete; every shard verified, nothing to do", out)
            for r in readers:
                r.close()
            return done
        (out / PROGRESS_DIR).mkdir(exist_ok=True)
        if cfg.part:
            _records_from_part(out, done)
        else:
            _records_from_manifest(out, vocab.size, cfg.value_kind)
    (out / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    for fmt in cfg.formats:
        (out / fmt).mkdir(exist_ok=True)
    if state != "fresh":
        _remove_stale_temporaries(out)
    atomic_write_text(
        plan_path,
        json.dumps(
            {
                "identity": identity,
                "part": str(cfg.part) if cfg.part else None,
                "input_sha256": input_hashes,
                "vocab_sha256": vocab.sha256,
            }
        ),
    )
    vocab.save(out / "vocab.json")
    _write_mapping_report(out, mappings)

    records: dict[int, dict] = {}
    for t in mine:
        rec_path = out / PROGRESS_DIR / f"{t.name}.json"
        if cfg.resume and rec_path.exists():
            record = json.loads(rec_path.read_text())
            if record["rows"] != [t.row_start, t.row_stop]:
                continue
            stats_here = (out / PROGRESS_DIR / f"{t.name}.stats.npz").exists()
            if _shard_ok(out, record) or (stats_here and kept_elsewhere is not None and kept_elsewhere(record)):
                records[t.shard_index] = record
    todo = [t for t in mine if t.shard_index not in records]
    if records:
        log.info("resume: %d shard(s) verified and kept, %d to write", len(records), len(todo))
    for spec, reader in zip(specs, readers, strict=True):
        if any(t.input_index == specs.index(spec) for t in todo):
            reader.prepare()  # one-time transposes (CSC / mtx / CSV) before workers read cell ranges
        reader.close()
    ctx = TaskContext(
        out=out,
        specs=tuple(specs),
        column_to_id=tuple(m.column_to_id for m in mappings),
        vocab_size=vocab.size,
        vocab_sha256=vocab.sha256,
        value_kind=cfg.value_kind,
        formats=tuple(cfg.formats),
        min_genes=cfg.min_genes,
        zero_cells=cfg.zero_cells,
        val_fraction=cfg.val_fraction,
        cells_per_sample=cfg.cells_per_sample,
        codec=cfg.codec,
        codec_level=cfg.codec_level,
    )
    bar = tqdm(
        total=sum(t.row_stop - t.row_start for t in mine),
        unit="cell",
        unit_scale=True,
        desc=f"shard part {cfg.part}" if cfg.part else "shard",
        disable=not progress,
        initial=sum(t.row_stop - t.row_start for t in mine if t.shard_index in records),
    )
    try:
        _run_tasks(ctx, todo, cfg.workers, records, bar, on_shard)
    finally:
        bar.close()
        close_readers()
    header = _manifest_header(cfg, identity, vocab, kinds, readers, specs, input_hashes, mappings)
    ordered = [records[t.shard_index] for t in mine]
    if cfg.part:
        result = _finish_part(cfg, header, len(tasks), ordered, time.perf_counter() - t0)
    else:
        stats_files = [out / PROGRESS_DIR / f"{t.name}.stats.npz" for t in tasks]
        result = complete_manifest(header, ordered, stats_files, time.perf_counter() - t0)
        pause_point("before-manifest")
        write_manifest(out, result)
    shutil.rmtree(out / SPILL_DIR, ignore_errors=True)
    shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
    return result


def _run_tasks(ctx: TaskContext, todo: list[ShardTask], workers: int, records: dict, bar, on_shard=None) -> None:
    def finished(t: ShardTask, record: dict) -> None:
        records[t.shard_index] = record
        if on_shard is not None:
            on_shard(record)
        bar.update(t.row_stop - t.row_start)

    if workers == 1 or len(todo) <= 1:
        for t in todo:
            finished(t, run_task(ctx, t))
        return
    # spawn, not fork: workers open their own HDF5 handles (h5py is not fork-safe with open files).
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_task, ctx, t): t for t in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                finished(futures[f], f.result())  # re-raises a worker's InputError with its message


def _write_mapping_report(out: Path, mappings) -> None:
    rows = [(m.source, g) for m in mappings for g in m.unmapped]
    table = pd.DataFrame(rows, columns=["input", "gene"])  # quoted: a name with a tab or newline stays one field
    atomic_write_text(out / "unmapped_genes.tsv", table.to_csv(sep="\t", index=False, lineterminator="\n"))
    atomic_write_text(out / "mapping_report.json", json.dumps([m.summary() for m in mappings], indent=1))


def _manifest_header(cfg, identity, vocab, kinds, readers, specs, input_hashes, mappings) -> dict:
    """Manifest fields `magic` .. `panels` (HEADER_KEYS); a part's input hashes are None for inputs it did not read."""
    import data_prep

    panels, panel_of_input = measured_panels([m.column_to_id for m in mappings])
    return {
        "magic": CORPUS_MAGIC,
        "format_version": CORPUS_FORMAT_VERSION,
        "scgrn_version": data_prep.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": cfg.command,
        "formats": cfg.formats,
        "value_kind": cfg.value_kind.value,
        "vocab": {"file": "vocab.json", "sha256": vocab.sha256, "size": vocab.size, "source": vocab.source},
        "split": {
            "val_fraction": cfg.val_fraction,
            "rule": "blake2b-64(input file name + NUL + cell id) / 2^64 < val_fraction",
        },
        "options": identity,
        "inputs": [
            {
                "path": str(s.path),
                "kind": k,
                "sha256": h,
                "n_cells": r.n_cells,
                "n_genes": len(r.gene_names),
                "layer": s.layer,
                "mapping": m.summary(),
                "panel": p,
            }
            for s, k, h, r, m, p in zip(specs, kinds, input_hashes, readers, mappings, panel_of_input, strict=True)
        ],
        "panels": panels,
    }


def _finish_part(cfg: ShardConfig, header: dict, n_shards_total: int, records: list[dict], seconds: float) -> dict:
    """Keep each shard's gene stats (the merge sums them in shard order), then write part.json last."""
    out = cfg.out
    (out / PART_STATS_DIR).mkdir(exist_ok=True)
    stats = []
    for record in records:
        target = stats_path(out, record["index"])
        os.replace(out / PROGRESS_DIR / f"shard-{record['index']:06d}.stats.npz", target)
        stats.append({"index": record["index"], "path": str(target.relative_to(out)), "sha256": sha256_file(target)})
    shard_range = cfg.part.shard_range(n_shards_total)
    part_doc = {
        **header,
        "magic": PART_MAGIC,
        "format_version": PART_FORMAT_VERSION,
        "part": {
            "index": cfg.part.index,
            "count": cfg.part.count,
            "rule": PART_RULE,
            "n_shards_total": n_shards_total,
            "shard_range": [shard_range.start, shard_range.stop],
        },
        "shards": records,
        "gene_stats": stats,
        "seconds": round(seconds, 3),
    }
    write_part(out, part_doc)
    return part_doc
