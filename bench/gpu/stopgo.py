"""Step 6 of the device check: a run stopped at step K and resumed must log the straight run's losses after K.

    python bench/gpu/stopgo.py STRAIGHT_RUN RESUMED_RUN K OUT
Writes OUT/stopgo.txt (one line) and exits 1 when the losses differ by more than 1e-3 or a run is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    straight_dir, resumed_dir, split, out = Path(argv[0]), Path(argv[1]), int(argv[2]), Path(argv[3])
    try:
        straight = json.loads((straight_dir / "run_summary.json").read_text())
        resumed = json.loads((resumed_dir / "run_summary.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        line = f"FAILED: no run summary ({err})"
        ok = False
    else:
        a, b = straight["loss_history"][split:], resumed["loss_history"]
        diff = max((abs(x - y) for x, y in zip(a, b, strict=False)), default=float("inf"))
        ok = len(a) == len(b) > 0 and diff < 1e-3
        line = (
            f"{'equal' if ok else 'DIFFERENT'}: straight final loss {a[-1]:.4f}, resumed {b[-1]:.4f}, steps "
            f"{split + 1}-{split + len(b)} largest difference {diff:.2e} ({len(b)} of {len(a)} steps logged after "
            "resume)"
        )
    print(line)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stopgo.txt").write_text(line + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
