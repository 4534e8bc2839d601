"""A producer/worker pipeline on asyncio primitives, with shutdown through ``stop``.

Workers hold the stop signal while they drain their queue; ``stop`` returns only after
every worker has released it, so no accepted job is lost.
"""

from __future__ import annotations

import asyncio
from commonware_runtime.interfaces import Context

from commonware_runtime import Timeout

WORKERS = 3
JOBS = 60


async def worker(context: Context, jobs: "asyncio.Queue[int]", done: list[int]) -> None:
    async with context.stopped() as stopped:
        while True:
            if stopped.done() and jobs.empty():
                return
            try:
                job = await context.timeout(0.05, jobs.get())
            except Timeout:  # look at the stop signal again
                continue
            await context.sleep(context.rng.random() * 0.002)
            done.append(job)


async def main(context: Context) -> int:
    jobs: asyncio.Queue[int] = asyncio.Queue(maxsize=8)
    done: list[int] = []
    for i in range(WORKERS):
        context.with_label(f"worker{i}").spawn(lambda ctx: worker(ctx, jobs, done))
    for job in range(JOBS):
        await jobs.put(job)
    await context.stop(0, timeout=30.0)
    assert sorted(done) == list(range(JOBS)), f"lost jobs: {sorted(set(range(JOBS)) - set(done))}"
    return len(done)
