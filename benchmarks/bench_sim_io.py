"""The deterministic runtime's simulated storage and network hot paths, A/B against a copy.

Run: ``python benchmarks/bench_sim_io.py [--rounds 5] [--quick] [--ab RUNTIME_DIR]``.

Workloads (one deterministic ``Runner`` each, seed 1, timed inside the root task):
  write_4k     sequential 4 KiB ``write_at`` into one blob, ``sync`` every 64 writes
  read_4k      random 4 KiB ``read_at`` over a 16 MiB blob
  net_64b      ping-pong of 64-byte messages over one simulated connection
  net_64k      ping-pong of 64 KiB messages over one simulated connection

Each sample is the fastest of 3 runs in one interpreter (other load on a shared machine
only ever slows a run down).  ``--ab DIR`` runs every workload again on the package found in ``DIR`` (e.g. a copy of
``runtime/`` from before a change: ``git archive HEAD runtime | tar -x -C /tmp/base``);
its rows end in ``[B]`` and the ratio column compares each workload with it.  Every sample
runs in a fresh interpreter and the cases are interleaved round by round (``harness.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.environ.get("COMMONWARE_BENCH_RUNTIME") or os.path.join(ROOT, "runtime"))

from harness import Case, machine_info, main_or_worker, markdown_table, run_cases  # noqa: E402

SCRIPT = os.path.abspath(__file__)
WORKLOADS = ("write_4k", "read_4k", "net_64b", "net_64k")


REPEAT = 3  # runs of the workload per sample (each a fresh Runner); the sample is the fastest


def _run(root: Any) -> dict[str, Any]:
    from commonware_runtime import deterministic

    async def main(ctx: Any) -> dict[str, Any]:
        result: dict[str, Any] = await root(ctx)
        return result

    runs = [deterministic.Runner(deterministic.Config(seed=1, timeout=None)).start(main) for _ in range(REPEAT)]
    return min(runs, key=lambda out: out["cpu"])


def work_write(n: int) -> dict[str, Any]:
    async def root(ctx: Any) -> dict[str, Any]:
        blob, _ = await ctx.open("bench", b"w")
        data = bytes(4096)
        t0, c0 = time.perf_counter(), time.process_time()
        offset = 0
        for i in range(n):
            await blob.write_at(data, offset)
            offset += 4096
            if i % 64 == 63:
                await blob.sync()
        await blob.sync()
        return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}

    return _run(root)


def work_read(n: int) -> dict[str, Any]:
    async def root(ctx: Any) -> dict[str, Any]:
        blob, _ = await ctx.open("bench", b"r")
        size = 16 << 20
        await blob.write_at(bytes(range(256)) * (size // 256), 0)
        await blob.sync()
        rng = random.Random(7)
        offsets = [rng.randrange(size // 4096) * 4096 for _ in range(n)]
        t0, c0 = time.perf_counter(), time.process_time()
        for offset in offsets:
            await blob.read_at(4096, offset)
        return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}

    return _run(root)


def work_net(n: int, size: int) -> dict[str, Any]:
    async def root(ctx: Any) -> dict[str, Any]:
        listener = await ctx.bind(("127.0.0.1", 9000))

        async def echo(c: Any) -> None:
            _, sink, stream = await listener.accept()
            for _ in range(n):
                await sink.send(await stream.recv(size))

        handle = ctx.spawn(echo)
        sink, stream = await ctx.dial(("127.0.0.1", 9000))
        msg = bytes(size)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            await sink.send(msg)
            await stream.recv(size)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        await handle
        return {"seconds": elapsed, "cpu": cpu}

    return _run(root)


def build_cases(quick: bool, only: set[str]) -> list[Case]:
    scale = 10 if quick else 1
    table = {
        "write_4k": Case("write_4k", "write", {"n": 40_000 // scale}, group="write_4k"),
        "read_4k": Case("read_4k", "read", {"n": 40_000 // scale}, group="read_4k"),
        "net_64b": Case("net_64b", "net", {"n": 20_000 // scale, "size": 64}, group="net_64b"),
        "net_64k": Case("net_64k", "net", {"n": 4_000 // scale, "size": 65536}, group="net_64k"),
    }
    return [table[w] for w in WORKLOADS if w in only]


def parent(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a tenth of the operations (a smoke run)")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument("--ab", metavar="RUNTIME_DIR", help="also run every workload on the package in RUNTIME_DIR ([B])")
    args = ap.parse_args(argv)
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = only - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}")
    cases = build_cases(args.quick, only)
    if args.ab:
        path = os.path.abspath(args.ab)
        if not os.path.isdir(os.path.join(path, "commonware_runtime")):
            ap.error(f"--ab {args.ab!r}: no commonware_runtime package in that directory")
        cases += [dataclasses.replace(c, label=c.label + " [B]", env={"COMMONWARE_BENCH_RUNTIME": path}) for c in cases]
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()), flush=True)
    results = run_cases(SCRIPT, cases, args.rounds)
    headers = ["workload", "ops", "median wall", "median cpu", "ops/s (cpu)", "spread (cpu)"]
    if args.ab:
        headers.append("cpu vs [B]")
    by_label = {r.case.label: r for r in results}
    rows = []
    for res in results:
        n = res.case.params["n"]
        cpu = res.median("cpu")
        row = [res.case.label, f"{n:,}", f"{res.median('seconds') * 1e3:.1f} ms", f"{cpu * 1e3:.1f} ms", f"{n / cpu:,.0f}", f"{res.spread('cpu') * 100:.0f}%"]
        if args.ab:
            other = by_label.get(res.case.label + " [B]")
            row.append(f"{other.median('cpu') / cpu:.2f}x" if other is not None else "")
        rows.append(row)
    print()
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main_or_worker({"write": work_write, "read": work_read, "net": work_net}, parent)
