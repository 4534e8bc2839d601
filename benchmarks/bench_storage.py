"""Storage benchmark: the production Blob against run_in_executor(os.pread/pwrite) and aiofiles.

Run: ``python benchmarks/bench_storage.py [--rounds 5] [--quick] [--dir PATH] [--loop uvloop] [--ab RUNTIME_DIR]``.

Workloads (one outstanding operation at a time unless ``cN`` says N concurrent tasks):
  warm_read      random 4-KiB reads over a 256 MiB file that is entirely in the page cache
  warm_read_c16  the same with 16 concurrent reader tasks
  cold_read      random 4-KiB reads after dropping the file from the page cache
                 (posix_fadvise(POSIX_FADV_DONTNEED) at the start of every round)
  cold_read_c16  the same with 16 concurrent reader tasks
  seq_write      1-MiB sequential writes into a fresh file, fsync (fdatasync) at the end

Variants:
  blob           commonware_runtime.production.storage.Blob (RWF_NOWAIT inline, else executor)
  executor       loop.run_in_executor(None, os.pread / os.pwrite / os.fdatasync): the baseline
  aiofiles       aiofiles.open(..., buffering=0): seek + read (it has no positional read),
                 write + fdatasync through the same default executor

Every measurement runs in a fresh interpreter; variants are interleaved and rotated round by
round (see harness.py).  The tables give medians and the speed ratio to ``executor``.
Targets: warm reads >= 5x executor; cold reads and sequential writes >= 0.9x executor.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# COMMONWARE_BENCH_RUNTIME=/path/to/runtime measures another copy of the package (--ab).
sys.path.insert(0, os.environ.get("COMMONWARE_BENCH_RUNTIME") or os.path.join(ROOT, "runtime"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Case, machine_info, main_or_worker, markdown_table, run_cases, summarize  # noqa: E402

FILE_SIZE = 256 << 20
READ_SIZE = 4096
WRITE_SIZE = 1 << 20
VARIANTS = ["blob", "executor", "aiofiles"]
BASELINE = "executor"
TARGETS = {"warm_read": 5.0, "warm_read_c16": 5.0, "cold_read": 0.9, "cold_read_c16": 0.9, "seq_write": 0.9}
PARTITION = "bench"
READ_NAME = b"data"


def blob_path(directory: str, name: bytes) -> str:
    return os.path.join(directory, PARTITION, name.hex())


def offsets(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    pages = FILE_SIZE // READ_SIZE
    return [rng.randrange(pages) * READ_SIZE for _ in range(n)]


def warm_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while os.pread(fd, 8 << 20, offset):
            offset += 8 << 20
    finally:
        os.close(fd)


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def read_variant(variant: str, directory: str, offs: list[int], tasks: int) -> float:
    loop = asyncio.get_running_loop()
    path = blob_path(directory, READ_NAME)
    shards = [offs[i::tasks] for i in range(tasks)]
    cleanup: list[Any] = []
    if variant == "blob":
        from commonware_runtime.metrics import RuntimeCounters
        from commonware_runtime.production.storage import Storage

        executor = concurrent.futures.ThreadPoolExecutor()  # the size run_in_executor(None) gets
        storage = Storage(directory, counters=RuntimeCounters(), executor=executor)
        blob, size = await storage.open(PARTITION, READ_NAME)
        assert size == FILE_SIZE

        async def reader(shard: list[int]) -> None:
            for off in shard:
                await blob.read_at(READ_SIZE, off)

        async def close() -> None:
            await blob.close()
            executor.shutdown()

        cleanup.append(close)
    elif variant == "executor":
        fd = os.open(path, os.O_RDONLY)

        async def reader(shard: list[int]) -> None:
            for off in shard:
                await loop.run_in_executor(None, os.pread, fd, READ_SIZE, off)

        async def close() -> None:
            os.close(fd)

        cleanup.append(close)
    elif variant == "aiofiles":
        import aiofiles

        # One file object per task: seek + read on a shared one would race.
        files = [await aiofiles.open(path, "rb", buffering=0) for _ in range(tasks)]
        it = iter(files)

        async def reader(shard: list[int]) -> None:
            f = next(it)
            for off in shard:
                await f.seek(off)
                await f.read(READ_SIZE)

        async def close() -> None:
            for f in files:
                await f.close()

        cleanup.append(close)
    else:
        raise ValueError(variant)
    started = time.perf_counter()
    await asyncio.gather(*(reader(shard) for shard in shards))
    seconds = time.perf_counter() - started
    for fn in cleanup:
        await fn()
    return seconds


async def write_variant(variant: str, directory: str, total: int) -> float:
    loop = asyncio.get_running_loop()
    name = f"write-{os.getpid()}".encode()
    path = blob_path(directory, name)
    chunk = os.urandom(WRITE_SIZE)
    count = total // WRITE_SIZE
    if variant == "blob":
        from commonware_runtime.metrics import RuntimeCounters
        from commonware_runtime.production.storage import Storage

        executor = concurrent.futures.ThreadPoolExecutor()
        storage = Storage(directory, counters=RuntimeCounters(), executor=executor)
        blob, _ = await storage.open(PARTITION, name)  # creation is not timed for any variant
        started = time.perf_counter()
        for i in range(count):
            await blob.write_at(chunk, i * WRITE_SIZE)
        await blob.sync()
        seconds = time.perf_counter() - started
        await blob.close()
        executor.shutdown()
    elif variant == "executor":
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        started = time.perf_counter()
        for i in range(count):
            await loop.run_in_executor(None, os.pwrite, fd, chunk, i * WRITE_SIZE)
        await loop.run_in_executor(None, os.fdatasync, fd)
        seconds = time.perf_counter() - started
        os.close(fd)
    elif variant == "aiofiles":
        import aiofiles

        f = await aiofiles.open(path, "wb", buffering=0)
        started = time.perf_counter()
        for _ in range(count):
            await f.write(chunk)
        await loop.run_in_executor(None, os.fdatasync, f.fileno())
        seconds = time.perf_counter() - started
        await f.close()
    else:
        raise ValueError(variant)
    os.unlink(path)
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # commit the unlink here, untimed, not in the next measurement
    finally:
        os.close(dir_fd)
    return seconds


def prefault(directory: str, total: int) -> None:
    path = os.path.join(directory, f"scratch-{os.getpid()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        chunk = b"\x5a" * WRITE_SIZE
        for offset in range(0, total, WRITE_SIZE):
            os.pwrite(fd, chunk, offset)
    finally:
        os.close(fd)
        os.unlink(path)


def run_loop(loop_name: str, coro: Any) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def work(variant: str, workload: str, directory: str, n: int, seed: int, loop: str) -> dict[str, Any]:
    tasks = 16 if workload.endswith("_c16") else 1
    if workload.startswith(("warm_read", "cold_read")):
        path = blob_path(directory, READ_NAME)
        if workload.startswith("warm"):
            warm_cache(path)
        else:
            drop_cache(path)
        seconds = run_loop(loop, read_variant(variant, directory, offsets(n, seed), tasks))
        return {"seconds": seconds, "ops": n, "bytes": n * READ_SIZE}
    if workload == "seq_write":
        # Start from the same memory and disk state for every variant.  In a VM, the first
        # process to fill fresh page-cache memory (e.g. right after a cold-read round dropped
        # 256 MiB) pays the host's first-touch cost, several times the write itself, so
        # every variant first writes and deletes an untimed scratch file of the same size.
        # Then os.sync(): earlier dirty pages and freed blocks would otherwise be written
        # back inside this measurement's fdatasync.
        prefault(directory, n * WRITE_SIZE)
        os.sync()
        seconds = run_loop(loop, write_variant(variant, directory, n * WRITE_SIZE))
        return {"seconds": seconds, "ops": n, "bytes": n * WRITE_SIZE}
    raise ValueError(workload)


WORKERS = {"storage": work}


def make_data_file(directory: str) -> None:
    path = blob_path(directory, READ_NAME)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path) and os.path.getsize(path) == FILE_SIZE:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        block = os.urandom(8 << 20)
        for offset in range(0, FILE_SIZE, len(block)):
            os.pwrite(fd, block, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def parent(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer operations per round (a smoke run)")
    parser.add_argument("--dir", help="directory for the data files (default: a fresh temp dir, removed after)")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--workloads", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--ab", metavar="RUNTIME_DIR", help="also run the blob variant on the package in RUNTIME_DIR ('blob [B]')")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    sizes = {
        "warm_read": 20_000 // scale,
        "warm_read_c16": 20_000 // scale,
        "cold_read": 3_000 // scale,
        "cold_read_c16": 6_000 // scale,
        "seq_write": 256 // scale,
    }
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in TARGETS:
            raise SystemExit(f"unknown workload {w!r}; known: {', '.join(TARGETS)}")
    own_dir = args.dir is None
    directory = tempfile.mkdtemp(prefix="bench_storage_") if own_dir else os.path.abspath(args.dir)
    try:
        print(f"creating the {FILE_SIZE >> 20} MiB data file in {directory} ...", file=sys.stderr)
        make_data_file(directory)
        cases = [
            Case(
                label=f"{workload}/{variant}",
                worker="storage",
                params={"variant": variant, "workload": workload, "directory": directory,
                        "n": sizes[workload], "seed": 1, "loop": args.loop},
                group=workload,
            )
            # Variant-major: the harness rotates this list, so a case's predecessor is fixed;
            # in this order every variant of a workload follows the same workload (the one
            # listed before it), and none inherits, say, a cold-read cache drop alone.
            for variant in VARIANTS
            for workload in workloads
        ]
        if args.ab:
            env = {"COMMONWARE_BENCH_RUNTIME": os.path.abspath(args.ab)}
            cases += [dataclasses.replace(c, label=c.label.replace("/blob", "/blob [B]"), env=env)
                      for c in cases if c.params["variant"] == "blob"]
        results = run_cases(os.path.abspath(__file__), cases, args.rounds)
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=False)
    info = machine_info()
    print()
    print(f"Storage benchmark, {args.rounds} rounds, event loop {args.loop}, directory filesystem as above")
    print("; ".join(f"{k}: {v}" for k, v in info.items()))
    verdicts = []
    for workload in workloads:
        group = [r for r in results if r.case.group == workload]
        for r in group:
            r.case = Case(r.case.label.split("/", 1)[1], r.case.worker, r.case.params, r.case.group, r.case.env)
        unit = "MB/s" if workload == "seq_write" else "ops/s"

        def per(res: Any, workload: str = workload) -> float:
            med = res.median()
            sample = res.samples[0]
            return (sample["bytes"] / 1e6 if workload == "seq_write" else sample["ops"]) / med

        headers, rows = summarize(group, BASELINE, per=per, per_unit=unit)
        print()
        print(f"### {workload} ({sizes[workload]} ops of {'1 MiB' if workload == 'seq_write' else '4 KiB'} per round)")
        print(markdown_table(headers, rows))
        blob = next(r for r in group if r.case.label == "blob")
        base = next(r for r in group if r.case.label == BASELINE)
        ratio = base.median() / blob.median()
        verdicts.append((workload, ratio, TARGETS[workload]))
    print()
    print("| workload | blob vs executor | target | met |")
    print("|---|---|---|---|")
    for workload, ratio, target in verdicts:
        print(f"| {workload} | {ratio:.2f}x | >= {target}x | {'yes' if ratio >= target else 'NO'} |")


if __name__ == "__main__":
    main_or_worker(WORKERS, parent)
