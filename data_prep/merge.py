"""`scgrn shard merge PART_DIR... --out DIR`: join the parts written by `scgrn shard --part I/N` into one corpus.

The merged corpus equals a single-machine run's: the same shard files (moved or copied, byte for byte), the same
records, and gene statistics summed from every shard's saved partial stats in shard order (so even float sums
round the same). Only the run-specific fields (`RUN_SPECIFIC_KEYS`: created, command, seconds) differ.

Order of work, so an interrupted merge never leaves a directory that looks complete:
  1. read every part.json and check them all (same inputs, options, vocab, N; every part exactly once; every
     shard and gene-stats file in place); report every problem at once and touch nothing if there is one;
  2. write `.merge.json` in DIR (what is being merged: a re-run may continue only the same merge);
  3. move (rename; copy where the parts are on another filesystem) or `--copy` every shard file into DIR;
  4. write vocab.json, the mapping report, then `manifest.json` atomically, last; remove `.merge.json`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from data_prep.errors import CorpusError
from data_prep.io_utils import atomic_write_bytes, atomic_write_text, sha256_file, sha256_tree
from data_prep.manifest import (
    CORPUS_FORMAT_VERSION,
    CORPUS_MAGIC,
    HEADER_KEYS,
    MANIFEST_NAME,
    complete_manifest,
    write_manifest,
)
from data_prep.parts import Part, read_part

log = logging.getLogger(__name__)
MERGE_MARKER = ".merge.json"
COPIED_FILES = ("vocab.json", "mapping_report.json", "unmapped_genes.tsv")  # identical in every part
# Besides `options` (which fix formats, value kind and split): fields every part must agree on.
AGREED_KEYS = ("scgrn_version", "vocab")
INPUT_KEYS = ("path", "kind", "n_cells", "n_genes", "layer", "mapping")


def merge_parts(
    part_dirs: list[Path], out: Path, *, copy: bool = False, command: str = "", progress: bool = True
) -> dict:
    """Check, move/copy, combine; returns the merged manifest (written last)."""
    t0 = time.perf_counter()
    parts = _read_and_check(part_dirs)
    ref_dir, ref = parts[0]
    out = Path(out)
    resuming = _check_out(out, ref)
    _check_files(parts, out, resuming)
    if not resuming:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / MERGE_MARKER, json.dumps(_merge_identity(ref)))
    for fmt in ref["formats"]:
        (out / fmt).mkdir(exist_ok=True)
    n_files = sum(len(r["files"]) for _, doc in parts for r in doc["shards"])
    with tqdm(total=n_files, unit="file", desc="merge", disable=not progress) as bar:
        for part_dir, doc in parts:
            for record in doc["shards"]:
                for info in record["files"].values():
                    src, dst = part_dir / info["path"], out / info["path"]
                    if not dst.exists():
                        _transfer(src, dst, copy=copy)
                    bar.update()
    for name in COPIED_FILES:
        atomic_write_bytes(out / name, (ref_dir / name).read_bytes())

    records = [r for _, doc in parts for r in doc["shards"]]
    stats_files = [part_dir / s["path"] for part_dir, doc in parts for s in doc["gene_stats"]]
    header = {k: ref[k] for k in HEADER_KEYS}
    header.update(
        magic=CORPUS_MAGIC,
        format_version=CORPUS_FORMAT_VERSION,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=command,
        inputs=_merged_inputs(parts),
    )
    # seconds of a merged corpus: the parts' wall times plus the merge's (the compute spent, not the elapsed time).
    seconds = sum(doc["seconds"] for _, doc in parts) + time.perf_counter() - t0
    manifest = complete_manifest(header, records, stats_files, seconds)
    write_manifest(out, manifest)
    (out / MERGE_MARKER).unlink(missing_ok=True)
    log.info("%s: merged %d parts, %d shards", out, len(parts), len(records))
    return manifest


def _read_and_check(part_dirs: list[Path]) -> list[tuple[Path, dict]]:
    """Every part's part.json, sorted by part index; all disagreements reported in one error."""
    problems, parts = [], []
    for d in map(Path, part_dirs):
        try:
            parts.append((d, read_part(d)))
        except CorpusError as err:
            problems.append(str(err))
    if not parts:
        _refuse(problems, _SAME_COMMAND)
    ref_dir, ref = parts[0]
    for d, doc in parts[1:]:
        problems += _disagreements(ref_dir, ref, d, doc)
    if not problems:  # coverage is only meaningful for parts of one plan, all readable
        problems += _input_hash_problems(parts) + _coverage(parts)
    if problems:
        _refuse(problems, _SAME_COMMAND)
    return sorted(parts, key=lambda p: p[1]["part"]["index"])


_SAME_COMMAND = (
    "Every part of one corpus comes from the same `scgrn shard INPUT... --part I/N` command (same inputs and "
    "options, I = 0..N-1), each with its own --out; pass every part directory once."
)


def _refuse(problems: list[str], advice: str) -> None:
    msg = (
        f"cannot merge: {len(problems)} problem(s); nothing was moved or written.\n  - "
        + "\n  - ".join(problems)
        + f"\n{advice}"
    )
    raise CorpusError(msg)


def _disagreements(ref_dir: Path, ref: dict, d: Path, doc: dict) -> list[str]:
    out = []
    if doc["part"]["count"] != ref["part"]["count"]:
        out.append(
            f"{d}: is part {doc['part']['index']}/{doc['part']['count']} but {ref_dir} is part "
            f"{ref['part']['index']}/{ref['part']['count']}: the parts come from runs with different N"
        )
    if doc["options"] != ref["options"]:
        keys = sorted(
            k for k in set(doc["options"]) | set(ref["options"]) if doc["options"].get(k) != ref["options"].get(k)
        )
        diffs = ", ".join(f"{k} ({doc['options'].get(k)!r} vs {ref['options'].get(k)!r})" for k in keys)
        out.append(f"{d}: options differ from {ref_dir}'s in {diffs}")
    for key in AGREED_KEYS:
        if doc[key] != ref[key]:
            what = "vocab sha256" if key == "vocab" else key
            a, b = (doc[key]["sha256"][:16], ref[key]["sha256"][:16]) if key == "vocab" else (doc[key], ref[key])
            out.append(f"{d}: {what} differs from {ref_dir}'s ({a!r} vs {b!r})")
    if doc["options"]["inputs"] == ref["options"]["inputs"]:  # else already reported with the options
        for j, (a, b) in enumerate(zip(doc["inputs"], ref["inputs"], strict=True)):
            fields = [k for k in INPUT_KEYS if a.get(k) != b.get(k)]
            if fields:
                out.append(f"{d}: input #{j} ({a['path']}) differs from {ref_dir}'s in {', '.join(fields)}")
    if doc["part"]["n_shards_total"] != ref["part"]["n_shards_total"]:
        out.append(
            f"{d}: plans {doc['part']['n_shards_total']} shards in all, {ref_dir} plans {ref['part']['n_shards_total']}"
        )
    return out


def _input_hash_problems(parts: list[tuple[Path, dict]]) -> list[str]:
    """A part hashes only the inputs it reads; the parts that read the same input must agree on its sha256."""
    problems = []
    for j, entry in enumerate(parts[0][1]["inputs"]):
        by_hash: dict[str, list[str]] = {}
        for d, doc in parts:
            if doc["inputs"][j]["sha256"]:
                by_hash.setdefault(doc["inputs"][j]["sha256"], []).append(str(d))
        if len(by_hash) > 1:
            seen = "; ".join(f"{h[:16]}… in {', '.join(dirs)}" for h, dirs in by_hash.items())
            problems.append(
                f"input #{j} ({entry['path']}) changed between the parts' runs (sha256 {seen}); "
                "re-run the parts from unchanged inputs"
            )
    return problems


def _coverage(parts: list[tuple[Path, dict]]) -> list[str]:
    """Parts 0..N-1 each exactly once, each holding exactly its block of shards (parts.Part.shard_range)."""
    problems = []
    count, n_shards = parts[0][1]["part"]["count"], parts[0][1]["part"]["n_shards_total"]
    by_index: dict[int, list[Path]] = {}
    for d, doc in parts:
        by_index.setdefault(doc["part"]["index"], []).append(d)
        expected = list(Part(doc["part"]["index"], count).shard_range(n_shards))
        held = [r["index"] for r in doc["shards"]]
        stats = [s["index"] for s in doc["gene_stats"]]
        if held != expected or stats != expected:
            problems.append(
                f"{d}: part {doc['part']['index']}/{count} should hold shards {_span(expected)}, "
                f"its part.json lists {_span(held)} (gene stats for {_span(stats)}); re-run this part"
            )
    for index, dirs in sorted(by_index.items()):
        if len(dirs) > 1:
            problems.append(f"part {index}/{count} given {len(dirs)} times: {', '.join(map(str, dirs))}")
    for index in range(count):
        if index not in by_index:
            block = _span(list(Part(index, count).shard_range(n_shards)))
            problems.append(
                f"part {index}/{count} (shards {block}) is missing: pass its directory, or run "
                f"`scgrn shard INPUT... --out PART_DIR --part {index}/{count}` first"
            )
    return problems


def _span(indices: list[int]) -> str:
    if not indices:
        return "none"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}..{indices[-1]}"
    return str(indices)


def _merge_identity(ref: dict) -> dict:
    return {
        "options": ref["options"],
        "vocab_sha256": ref["vocab"]["sha256"],
        "part_count": ref["part"]["count"],
        "n_shards_total": ref["part"]["n_shards_total"],
    }


def _check_out(out: Path, ref: dict) -> bool:
    """DIR must be new or empty, or hold an interrupted merge of the same corpus; True when continuing one."""
    if out.exists() and not out.is_dir():
        msg = f"--out {out}: exists and is not a directory; choose a directory path for the merged corpus."
        raise CorpusError(msg)
    if (out / MANIFEST_NAME).exists():
        msg = f"--out {out}: already holds a finished corpus (manifest.json); choose another --out."
        raise CorpusError(msg)
    identity = _merge_identity(ref)
    marker = out / MERGE_MARKER
    if marker.exists():
        if json.loads(marker.read_text()) != identity:
            msg = (
                f"--out {out}: holds an interrupted merge of another corpus ({MERGE_MARKER} differs: other "
                "options, vocab or part count); choose another --out."
            )
            raise CorpusError(msg)
        log.info("%s: continuing an interrupted merge", out)
        return True
    if out.exists() and any(out.iterdir()):
        msg = f"--out {out}: directory is not empty and holds no interrupted merge; choose an empty or new directory."
        raise CorpusError(msg)
    return False


def _check_files(parts: list[tuple[Path, dict]], out: Path, resuming: bool) -> None:
    """Before moving anything: every shard file and gene-stats file is where its part.json says.

    When continuing an interrupted merge, a shard already in DIR is kept if its checksum matches (its source was
    moved away), and removed to be transferred again otherwise.
    """
    problems, stale = [], []
    for part_dir, doc in parts:
        which = f"part {doc['part']['index']}/{doc['part']['count']}"
        missing, n_files = [], 0
        for record in doc["shards"]:
            for info in record["files"].values():
                n_files += 1
                src, dst = part_dir / info["path"], out / info["path"]
                if resuming and dst.exists():
                    if sha256_tree(dst) == info["sha256"]:
                        continue
                    stale.append(dst)
                if not src.exists():
                    missing.append(src)
        if missing:
            problems.append(
                f"{part_dir}: {len(missing)} of the {n_files} shard files of {which} are missing (first: "
                f"{missing[0]}); if an earlier merge moved them, they are in its --out (re-run that merge with the "
                "same --out if it was interrupted); else re-run this part with --resume to rewrite them"
            )
        for s in doc["gene_stats"]:
            path = part_dir / s["path"]
            if not path.exists() or sha256_file(path) != s["sha256"]:
                problems.append(
                    f"{part_dir}: gene stats of shard {s['index']} ({path}) missing or damaged; "
                    f"re-run {which} with --resume"
                )
        for name in COPIED_FILES:
            if not (part_dir / name).exists():
                problems.append(f"{part_dir}: {name} is missing; re-run {which} with --resume")
    if problems:
        _refuse(problems, "Fix the parts named above, then run the same merge again.")
    for dst in stale:
        _remove(dst)


def _transfer(src: Path, dst: Path, *, copy: bool) -> None:
    """Rename when moving on one filesystem; else copy to a temp name in DIR and rename, so a shard in DIR is
    always whole. A cross-filesystem move removes the source after the copy is in place."""
    if not copy:
        try:
            src.rename(dst)
            return
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        _remove(tmp)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    if not copy:
        _remove(src)


def _remove(path: Path) -> None:
    """A shard is a file (webdataset tar) or a directory (zarr store)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _merged_inputs(parts: list[tuple[Path, dict]]) -> list[dict]:
    """Inputs as a single run records them: each input's sha256 from the parts that read it (they agree)."""
    inputs = [dict(i) for i in parts[0][1]["inputs"]]
    for j, entry in enumerate(inputs):
        # Every input has >= 1 cell (empty inputs are refused), so some part read and hashed it.
        entry["sha256"] = next(doc["inputs"][j]["sha256"] for _, doc in parts if doc["inputs"][j]["sha256"])
    return inputs
