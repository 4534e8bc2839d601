"""A test module with a classic lost-update race, run through pytester by the plugin's
replay and bisect tests: ``a`` reads, yields, writes; ``b`` yields first, then does the
same. Whether ``b``'s read falls between ``a``'s read and write depends on the order of one
round's decisions.  ``race_main`` is the same race as a root task for a Runner, for the
bisect and picture tests that drive runs themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

RACE = """
import asyncio
import pytest

counter = 0

async def bump(ctx, delay):
    global counter
    for _ in range(delay):
        await asyncio.sleep(0)
    value = counter
    await asyncio.sleep(0)          # the await between read and write
    counter = value + 1

@pytest.mark.commonware(seeds=8)
async def test_race(deterministic_context):
    global counter
    counter = 0
    a = deterministic_context.with_label("a").spawn(lambda ctx: bump(ctx, 0))
    b = deterministic_context.with_label("b").spawn(lambda ctx: bump(ctx, 1))
    await a
    await b
    assert counter == 2, "lost update"
"""


def race_main(workers: int = 2) -> Callable[[Any], Awaitable[None]]:
    """The lost update as a root task: worker ``i`` (labelled ``a``, ``b``, ...) yields ``i``
    times, then reads, yields, writes; ``workers`` updates are expected."""
    state = {"counter": 0}

    async def bump(delay: int) -> None:
        for _ in range(delay):
            await asyncio.sleep(0)
        value = state["counter"]
        await asyncio.sleep(0)
        state["counter"] = value + 1

    async def main(ctx: Any) -> None:
        handles = [ctx.with_label(chr(ord("a") + d)).spawn(lambda _, d=d: bump(d)) for d in range(workers)]
        for handle in handles:
            await handle
        assert state["counter"] == workers, "lost update"

    return main
