"""Waking many waiters: 100,000 tasks wait on one asyncio.Event (and one Condition), then
all are woken; the time from set()/notify_all() to the last waiter done, on stock asyncio
and on the deterministic loop in every ordering and strategy (issue 9: within 3x stock).

Run: ``.venv/bin/python benchmarks/bench_waiters.py [--n 100000] [--rounds 3]``.  Each
variant runs in the same process, rounds interleaved; medians of wall time are printed
with their ratio to stock asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime"))

from commonware_runtime import deterministic  # noqa: E402

VARIANTS: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [("stock asyncio", asyncio.new_event_loop)]
for ordering, strategies in (("fifo", ("random",)), ("any", ("random", "walk", "pct", "pos", "swarm"))):
    for name in strategies:
        VARIANTS.append((f"ours {ordering}/{name}",
                         lambda o=ordering, s=name: deterministic.EventLoop(seed=1, ordering=o, strategy=s)))


async def event_workload(n: int) -> float:
    event = asyncio.Event()

    async def waiter() -> None:
        await event.wait()

    tasks = [asyncio.create_task(waiter()) for _ in range(n)]
    await asyncio.sleep(0)
    start = time.perf_counter()
    event.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


async def condition_workload(n: int) -> float:
    condition = asyncio.Condition()

    async def waiter() -> None:
        async with condition:
            await condition.wait()

    tasks = [asyncio.create_task(waiter()) for _ in range(n)]
    while len(condition._waiters) < n:  # type: ignore[attr-defined]
        await asyncio.sleep(0)
    start = time.perf_counter()
    async with condition:
        condition.notify_all()
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for workload in (event_workload, condition_workload):
        times: dict[str, list[float]] = {label: [] for label, _ in VARIANTS}
        for _ in range(args.rounds):
            for label, factory in VARIANTS:
                gc.collect()
                with asyncio.Runner(loop_factory=factory) as runner:
                    times[label].append(runner.run(workload(args.n)))
        base = statistics.median(times["stock asyncio"])
        print(f"\n{workload.__name__.split('_')[0]}: {args.n:,} waiters woken at once")
        print("| variant | median wall | vs stock asyncio |\n|---|---|---|")
        for label, samples in times.items():
            median = statistics.median(samples)
            print(f"| {label} | {median:.3f} s | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
