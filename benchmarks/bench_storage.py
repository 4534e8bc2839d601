"""Storage benchmark: the production Blob (both backends) against run_in_executor(os.pread/pwrite) and aiofiles.

Run: ``python benchmarks/bench_storage.py [--rounds 5] [--quick] [--dir PATH] [--loop uvloop] [--ab RUNTIME_DIR]``.

Workloads (one outstanding operation at a time unless ``cN`` says N concurrent tasks):
  warm_read      random 4-KiB reads over a 256 MiB file that is entirely in the page cache
  warm_read_c16  the same with 16 concurrent reader tasks
  cold_read      random 4-KiB reads after dropping the file from the page cache
                 (posix_fadvise(POSIX_FADV_DONTNEED) at the start of every round)
  cold_read_c16  the same with 16 concurrent reader tasks
  cold_read_c64  the same with 64 concurrent reader tasks
  seq_write      1-MiB sequential writes into a fresh file, fsync (fdatasync) at the end

Variants:
  blob           commonware_runtime.production.storage.Blob, default backend (RWF_NOWAIT inline,
                 else executor)
  uring          the same Blob on storage_backend="io_uring" (RWF_NOWAIT inline, else the ring)
  blob-pool      the default backend with the RWF_NOWAIT paths off: every read and write in the
                 executor, as on a platform with neither io_uring nor RWF_NOWAIT (macOS...)
  executor       loop.run_in_executor(None, os.pread / os.pwrite / os.fdatasync): the baseline
  aiofiles       aiofiles.open(..., buffering=0): seek + read (it has no positional read),
                 write + fdatasync through the same default executor

Every measurement runs in a fresh interpreter; variants are interleaved and rotated round by
round (see harness.py).  The tables give medians (wall and CPU time of the process, kernel
io_uring workers included) and the speed ratio to ``executor``.  ``--variants`` picks a subset.
Targets: blob: warm reads >= 5x executor, cold reads and sequential writes >= 0.9x executor;
uring against blob: cold reads with 16 and 64 tasks >= 2x, warm reads and writes >= 0.9x
(no slower within noise).
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
VARIANTS = ["blob", "uring", "blob-pool", "executor", "aiofiles"]
BASELINE = "executor"
TARGETS = {"warm_read": 5.0, "warm_read_c16": 5.0, "cold_read": 0.9, "cold_read_c16": 0.9, "cold_read_c64": 0.9,
           "seq_write": 0.9}
#: io_uring backend against the default backend (issue 11).
URING_TARGETS = {"warm_read": 0.9, "warm_read_c16": 0.9, "cold_read_c16": 2.0, "cold_read_c64": 2.0, "seq_write": 0.9}
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


def make_storage(variant: str, directory: str) -> tuple[Any, concurrent.futures.ThreadPoolExecutor]:
    """The production Storage of a blob variant, with the executor size run_in_executor(None) gets."""
    from commonware_runtime.metrics import RuntimeCounters
    from commonware_runtime.production.storage import Storage

    executor = concurrent.futures.ThreadPoolExecutor()
    storage: Any
    if variant == "uring":
        from commonware_runtime.production import iouring

        storage = iouring.UringStorage(directory, counters=RuntimeCounters(), executor=executor, ring=iouring.open_ring())
    else:
        storage = Storage(directory, counters=RuntimeCounters(), executor=executor)
        if variant == "blob-pool":
            storage.nowait_reads = storage.nowait_writes = False
    return storage, executor


def close_storage(storage: Any, executor: concurrent.futures.ThreadPoolExecutor) -> None:
    if hasattr(storage, "close"):
        storage.close()
    executor.shutdown()


BLOB_VARIANTS = ("blob", "uring", "blob-pool")


async def read_variant(variant: str, directory: str, offs: list[int], tasks: int) -> tuple[float, float]:
    """Wall and CPU seconds of the reads (the process's CPU: threads and io_uring workers too)."""
    loop = asyncio.get_running_loop()
    path = blob_path(directory, READ_NAME)
    shards = [offs[i::tasks] for i in range(tasks)]
    cleanup: list[Any] = []
    if variant in BLOB_VARIANTS:
        storage, executor = make_storage(variant, directory)
        blob, size = await storage.open(PARTITION, READ_NAME)
        assert size == FILE_SIZE

        async def reader(shard: list[int]) -> None:
            for off in shard:
                await blob.read_at(READ_SIZE, off)

        async def close() -> None:
            await blob.close()
            close_storage(storage, executor)

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
    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(reader(shard) for shard in shards))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    for fn in cleanup:
        await fn()
    return seconds, cpu


async def write_variant(variant: str, directory: str, total: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    name = f"write-{os.getpid()}".encode()
    path = blob_path(directory, name)
    chunk = os.urandom(WRITE_SIZE)
    count = total // WRITE_SIZE
    if variant in BLOB_VARIANTS:
        storage, executor = make_storage(variant, directory)
        blob, _ = await storage.open(PARTITION, name)  # creation is not timed for any variant
        cpu = time.process_time()
        started = time.perf_counter()
        for i in range(count):
            await blob.write_at(chunk, i * WRITE_SIZE)
        await blob.sync()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        await blob.close()
        close_storage(storage, executor)
    elif variant == "executor":
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        cpu = time.process_time()
        started = time.perf_counter()
        for i in range(count):
            await loop.run_in_executor(None, os.pwrite, fd, chunk, i * WRITE_SIZE)
        await loop.run_in_executor(None, os.fdatasync, fd)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        os.close(fd)
    elif variant == "aiofiles":
        import aiofiles

        f = await aiofiles.open(path, "wb", buffering=0)
        cpu = time.process_time()
        started = time.perf_counter()
        for _ in range(count):
            await f.write(chunk)
        await loop.run_in_executor(None, os.fdatasync, f.fileno())
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        await f.close()
    else:
        raise ValueError(variant)
    os.unlink(path)
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # commit the unlink here, untimed, not in the next measurement
    finally:
        os.close(dir_fd)
    return seconds, cpu


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
    tasks = int(workload.rsplit("_c", 1)[1]) if "_c" in workload else 1
    if workload.startswith(("warm_read", "cold_read")):
        path = blob_path(directory, READ_NAME)
        if workload.startswith("warm"):
            warm_cache(path)
        else:
            drop_cache(path)
        seconds, cpu = run_loop(loop, read_variant(variant, directory, offsets(n, seed), tasks))
        return {"seconds": seconds, "cpu": cpu, "ops": n, "bytes": n * READ_SIZE}
    if workload == "seq_write":
        # Start from the same memory and disk state for every variant.  In a VM, the first
        # process to fill fresh page-cache memory (e.g. right after a cold-read round dropped
        # 256 MiB) pays the host's first-touch cost, several times the write itself, so
        # every variant first writes and deletes an untimed scratch file of the same size.
        # Then os.sync(): earlier dirty pages and freed blocks would otherwise be written
        # back inside this measurement's fdatasync.
        prefault(directory, n * WRITE_SIZE)
        os.sync()
        seconds, cpu = run_loop(loop, write_variant(variant, directory, n * WRITE_SIZE))
        return {"seconds": seconds, "cpu": cpu, "ops": n, "bytes": n * WRITE_SIZE}
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
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--ab", metavar="RUNTIME_DIR", help="also run the blob variant on the package in RUNTIME_DIR ('blob [B]')")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    sizes = {
        "warm_read": 20_000 // scale,
        "warm_read_c16": 20_000 // scale,
        "cold_read": 3_000 // scale,
        "cold_read_c16": 6_000 // scale,
        "cold_read_c64": 12_000 // scale,
        "seq_write": 256 // scale,
    }
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in TARGETS:
            raise SystemExit(f"unknown workload {w!r}; known: {', '.join(TARGETS)}")
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    if BASELINE not in variants:
        variants.append(BASELINE)
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
            for variant in variants
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

        headers, rows = summarize(group, BASELINE, also=[("cpu", "median cpu")], per=per, per_unit=unit)
        print()
        print(f"### {workload} ({sizes[workload]} ops of {'1 MiB' if workload == 'seq_write' else '4 KiB'} per round)")
        print(markdown_table(headers, rows))
        by_label = {r.case.label: r for r in group}
        base = by_label[BASELINE]
        if "blob" in by_label:
            blob = by_label["blob"]
            verdicts.append((workload, "blob vs executor", base.median() / blob.median(),
                             base.median("cpu") / blob.median("cpu"), TARGETS[workload]))
            if "uring" in by_label and workload in URING_TARGETS:
                uring = by_label["uring"]
                verdicts.append((workload, "uring vs blob", blob.median() / uring.median(),
                                 blob.median("cpu") / uring.median("cpu"), URING_TARGETS[workload]))
        if "blob-pool" in by_label and "aiofiles" in by_label:
            pool, aio = by_label["blob-pool"], by_label["aiofiles"]
            verdicts.append((workload, "aiofiles vs blob-pool", pool.median() / aio.median(),
                             pool.median("cpu") / aio.median("cpu"), None))
    print()
    print("| workload | comparison | speed (wall) | speed (cpu) | target | met |")
    print("|---|---|---|---|---|---|")
    for workload, what, ratio, cpu_ratio, target in verdicts:
        met = "" if target is None else ("yes" if ratio >= target else "NO")
        shown = "" if target is None else f">= {target}x"
        print(f"| {workload} | {what} | {ratio:.2f}x | {cpu_ratio:.2f}x | {shown} | {met} |")


if __name__ == "__main__":
    main_or_worker(WORKERS, parent)
