"""`scgrn shard --part I/N`: one machine's slice of a corpus, and the partial corpus it writes (see SPEC.md).

Every part computes the same global plan as a single-machine run (vocab from all inputs' gene names, or the
given one; shard `k` = the same input + row range) and writes only its *contiguous block* of shard indices:

    part I of N writes shards  [I·S // N, (I+1)·S // N)       (S = number of shards of the whole corpus)

Contiguous, not round-robin (`k % N`): a block touches few inputs, so a part reads, hashes and (for gene-major
inputs) transposes only those, and a SLURM array task's I/O stays on its own files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import CorpusError, InputError
from data_prep.io_utils import atomic_write_text

PART_MAGIC = "scgrn-corpus-part"
PART_FORMAT_VERSION = 3  # 2: the shards inside are corpus format 2; 3: the header carries measured-gene panels
PART_NAME = "part.json"
PART_STATS_DIR = "gene_stats"  # per-shard gene statistics, summed in shard order by the merge
PART_RULE = "contiguous: part I of N holds shards [I*S//N, (I+1)*S//N)"
_PART_SYNTAX = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Part:
    index: int  # 0-based, < count
    count: int  # number of parts (machines / array tasks)

    @classmethod
    def parse(cls, text: str) -> Part:
        """`"I/N"` -> Part(I, N); one message naming the value and the expected form otherwise."""
        match = _PART_SYNTAX.match(str(text))
        problem = None
        if match is None:
            problem = "is not of the form I/N"
        else:
            index, count = int(match[1]), int(match[2])
            if count < 1:
                problem = f"has part count N={count}; N must be >= 1"
            elif not 0 <= index < count:
                problem = f"has part index I={index}; I must be in 0..{count - 1} (0-based)"
        if problem:
            msg = (
                f"--part {text!r} {problem}. Expected I/N with 0 <= I < N, e.g. --part 0/4 ... --part 3/4 "
                "(SLURM: --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)."
            )
            raise InputError(msg)
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def shard_range(self, n_shards: int) -> range:
        return range(self.index * n_shards // self.count, (self.index + 1) * n_shards // self.count)


def stats_path(directory: Path, shard_index: int) -> Path:
    return Path(directory) / PART_STATS_DIR / f"shard-{shard_index:06d}.npz"


def write_part(directory: Path, part_manifest: dict) -> Path:
    path = Path(directory) / PART_NAME
    atomic_write_text(path, json.dumps(part_manifest, indent=1))
    return path


def read_part(directory: Path) -> dict:
    """Load and check a part's `part.json`; every problem names the directory and what to do."""
    directory = Path(directory)
    path = directory / PART_NAME
    if not path.exists():
        if (directory / "manifest.json").exists():
            problem = "holds a whole corpus (manifest.json), not a part written by `scgrn shard --part I/N`"
        elif (directory / ".progress" / "plan.json").exists():
            problem = (
                "is an unfinished part (no part.json yet); re-run its `scgrn shard ... --part I/N` command "
                "with --resume to finish it"
            )
        elif not directory.is_dir():
            problem = "does not exist or is not a directory"
        else:
            problem = f"has no {PART_NAME}; not a part written by `scgrn shard --part I/N`"
        msg = f"part directory {directory} {problem}."
        raise CorpusError(msg)
    try:
        part = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        msg = f"{path}: not valid JSON ({err}); re-run this part's `scgrn shard ... --part I/N --resume`."
        raise CorpusError(msg) from None
    if not isinstance(part, dict) or part.get("magic") != PART_MAGIC:
        got = part.get("magic") if isinstance(part, dict) else type(part).__name__
        msg = f"{path}: magic {got!r} is not {PART_MAGIC!r}; this is not an scgrn partial corpus."
        raise CorpusError(msg)
    if part.get("format_version") != PART_FORMAT_VERSION:
        msg = (
            f"{path}: partial-corpus format version {part.get('format_version')!r} is unknown; this scgrn reads "
            f"version {PART_FORMAT_VERSION}. Merge with the scgrn version that wrote the parts, or re-shard them."
        )
        raise CorpusError(msg)
    return part
