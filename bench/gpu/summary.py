"""Last step of the device check: one table from what the steps wrote under OUT, printed and saved as
OUT/summary.md. A step that did not run (a dry run on CPU, a failure, a timeout) shows as such, never as a number.

    backend parity     the `gpu` test marker's pytest line
    MFU                measured per config x backend (bench train gpu) beside the cost model's prediction
    tokens/s           varlen and sdpa against padded SDPA on the same cells
    stop-and-go        straight vs stopped-and-resumed ZeRO-2 losses
    peak memory        per config x backend
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _pytest_line(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError:
        return "not run"
    found = re.findall(r"=+ (.*(?:passed|failed|skipped|error).*?) =+", text)
    return found[-1] if found else "no pytest summary (see gpu_tests.log)"


def render(out: Path, dry_run: bool) -> str:
    missing = "not run (dry run: needs CUDA)" if dry_run else "not run (see its log)"
    device = (out / "device.txt").read_text().strip() if (out / "device.txt").exists() else "unknown"
    lines = [f"# Device check summary{' (DRY RUN on CPU)' if dry_run else ''}", "", f"device: {device}", ""]
    lines += ["| check | result |", "|---|---|"]
    lines.append(f"| backend parity (`-m gpu`) | {_pytest_line(out / 'gpu_tests.log') if not dry_run else missing} |")
    predicted = {r["config"]: r for r in (_read_json(out / "model.json") or [])}
    measured = _read_json(out / "train_gpu.json")
    runs = measured["results"] if measured else []
    for config, p in predicted.items():
        got = [r for r in runs if r["config"] == config and r.get("mfu") is not None]
        shown = ", ".join(f"{r['backend']} {100 * r['mfu']:.1f} %" for r in got) or missing
        lines.append(f"| MFU {config} (predicted {100 * p['predicted_mfu']:.1f} % on {p['gpu']}) | {shown} |")
    for config in sorted({r["config"] for r in runs}):
        padded = next((r for r in runs if r["config"] == config and r["backend"] == "padded-sdpa"), None)
        for r in runs:
            if r["config"] == config and r["backend"] != "padded-sdpa":
                ratio = f" = {r['tokens_per_s'] / padded['tokens_per_s']:.2f} x padded SDPA" if padded else ""
                rate = f"{r['tokens_per_s']:,.0f}{ratio} (goal varlen >= 2 x)"
                lines.append(f"| tokens/s {config} {r['backend']} | {rate} |")
                lines.append(f"| peak memory {config} {r['backend']} | {r['peak_memory_gib']:.1f} GiB |")
    if not runs:
        lines.append(f"| tokens/s varlen vs padded SDPA | {missing} |")
        lines.append(f"| peak memory | {missing} |")
    stop = out / "stopgo.txt"
    lines.append(f"| stop-and-go | {stop.read_text().strip() if stop.exists() else 'not run (see its log)'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    text = render(out, dry_run="--dry-run" in argv)
    print(text)
    (out / "summary.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
