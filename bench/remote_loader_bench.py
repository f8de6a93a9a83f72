"""`scgrn bench loader --remote`: cells/s streaming a corpus from a loopback HTTP server and a loopback S3 server
(moto) against the same corpus on local disk, in one run, same batch size, same shuffle.

Both servers run on 127.0.0.1, so the ratio measures what the remote path costs in software (fsspec, HTTP, whole-tar
streaming, whole-file zarr reads, sha256 on the way), not network bandwidth or latency: on a real bucket the
figure also depends on the link. Every row reads whole shards as its units (local included, so the partition is
the same). Goal (issue 15): remote >= 0.5 x local at the same batch size.

With obstore installed, a second table compares raw GET throughput of the shard files through fsspec (what the
loader uses: aiohttp / s3fs, 8 files at a time) and through obstore (Rust object_store), same files, same servers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.corpus import build_pbmc_replicas
from bench.loopback import FileServer, corpus_in_a_bucket
from data_prep import remote
from data_prep.config import ShardConfig
from data_prep.corpus import Corpus
from data_prep.loader import StreamingCellDataset
from data_prep.sharder import shard

PBMC = Path(__file__).resolve().parents[2] / "shared" / "data" / "counts" / "human_pbmc3k_10x.h5ad"
GOAL = 0.5


def _corpus(args) -> Path:
    out = Path(args.workdir) / f"remote_{args.cells}"
    if not (out / "manifest.json").exists():
        h5ad = Path(args.workdir) / f"pbmc_{args.cells}.h5ad"
        if not h5ad.exists():
            if not PBMC.exists():
                msg = f"bench source {PBMC} not found (../shared/data/counts); it is needed to build the corpus."
                raise SystemExit(msg)
            build_pbmc_replicas(PBMC, args.cells, h5ad)
        shard(ShardConfig(inputs=[h5ad], out=out, format="both", cells_per_shard=args.cells_per_shard), progress=False)
    return out


def _epoch(location, fmt: str, args) -> tuple[int, float]:
    ds = StreamingCellDataset(
        location, fmt=fmt, split="all", seed=args.seed, batch_size=args.batch_size, block_cells=args.block_cells,
        obs_columns=[], verify_shards=True, whole_shards=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    cells = sum(b.n_cells for b in ds)
    return cells, time.perf_counter() - t0


def run(args) -> dict:
    local = _corpus(args)
    n = Corpus(local).n_cells
    rows = []
    with FileServer(local.parent) as http, corpus_in_a_bucket(local, "scgrn-bench") as s3:
        where = {"local disk": local, "HTTP (loopback)": f"{http.url}/{local.name}", "S3 (moto, loopback)": s3}
        for fmt in ("zarr", "webdataset"):
            for name, location in where.items():
                best = None
                for _ in range(args.repeats):
                    cells, seconds = _epoch(location, fmt, args)
                    if cells != n:
                        msg = f"{name} {fmt}: streamed {cells} cells, the corpus has {n}."
                        raise RuntimeError(msg)
                    best = seconds if best is None else min(best, seconds)
                rows.append({"format": fmt, "source": name, "cells": n, "seconds": best, "cells_per_s": n / best})
        clients = _client_rows(local, where, args.repeats)
    return {"rows": rows, "cells": n, "clients": clients}


def _obstore_store(source: str, location: str):
    from obstore.store import HTTPStore, S3Store

    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        return S3Store(
            bucket, prefix=prefix, endpoint=os.environ["AWS_ENDPOINT_URL"], region=os.environ["AWS_DEFAULT_REGION"],
            access_key_id=os.environ["AWS_ACCESS_KEY_ID"], secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            virtual_hosted_style_request=False, client_options={"allow_http": True},
        )  # fmt: skip
    return HTTPStore.from_url(location, client_options={"allow_http": True})


def _client_rows(local: Path, where: dict, repeats: int) -> list[dict]:
    """MB/s fetching every shard file whole, fsspec vs obstore, best of `repeats` (empty without obstore)."""
    try:
        import obstore
    except ImportError:
        return []
    names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and "shard-" in p.as_posix())
    total = sum((local / n).stat().st_size for n in names)
    rows = []
    for source, location in where.items():
        if source == "local disk":
            continue
        store = _obstore_store(source, location)
        clients = {
            "fsspec": lambda n, location=location: len(remote.read_bytes(remote.join(location, n))),
            "obstore": lambda n, store=store: len(obstore.get(store, n).bytes()),
        }
        for client, fetch in clients.items():
            best = None
            for _ in range(repeats):
                t0 = time.perf_counter()
                with ThreadPoolExecutor(max_workers=remote.READ_THREADS) as pool:
                    got = sum(pool.map(fetch, names))
                if got != total:
                    msg = f"{source} {client}: fetched {got} bytes, the files hold {total}."
                    raise RuntimeError(msg)
                seconds = time.perf_counter() - t0
                best = seconds if best is None else min(best, seconds)
            rows.append({"source": source, "client": client, "files": len(names), "bytes": total, "seconds": best})
    return rows


def report(out: dict, args) -> str:
    lines = [
        f"# scgrn bench loader --remote ({out['cells']:,} cells, batch {args.batch_size}, best of {args.repeats})",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}.",
        "",
        "| format | source | cells/s | vs local disk |",
        "|---|---|---:|---:|",
    ]
    ratios = []
    for row in out["rows"]:
        base = next(r for r in out["rows"] if r["format"] == row["format"] and r["source"] == "local disk")
        ratio = row["cells_per_s"] / base["cells_per_s"]
        lines.append(f"| {row['format']} | {row['source']} | {row['cells_per_s']:,.0f} | {ratio:.2f}x |")
        if not row["source"].startswith("local disk"):
            ratios.append((row, ratio))
    lines.append("")
    for row, ratio in ratios:
        met = "met" if ratio >= GOAL else "MISSED"
        lines.append(f"{row['source']} {row['format']} / local disk: {ratio:.2f}x (goal >= {GOAL}x: {met})")
    if out.get("clients"):
        first = out["clients"][0]
        lines += ["", f"Raw GETs of the {first['files']} shard files ({first['bytes'] / 1e6:.0f} MB), 8 at a time:", "",
                  "| source | client | MB/s | vs fsspec |", "|---|---|---:|---:|"]  # fmt: skip
        for row in out["clients"]:
            base = next(r for r in out["clients"] if r["source"] == row["source"] and r["client"] == "fsspec")
            rate = row["bytes"] / row["seconds"] / 1e6
            lines.append(
                f"| {row['source']} | {row['client']} | {rate:,.0f} | {base['seconds'] / row['seconds']:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scgrn bench loader --remote", description=__doc__)
    p.add_argument("--remote", action="store_true", help="(this benchmark)")
    p.add_argument("--cells", type=int, default=50_000, help="PBMC replicas in the bench corpus")
    p.add_argument("--cells-per-shard", type=int, default=10_000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/scgrn-bench"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--block-cells", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    out = run(args)
    text = report(out, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **out}, indent=1))
    return 0
