"""A test module with a classic lost-update race, run through pytester by the plugin's
replay and bisect tests: ``a`` reads, yields, writes; ``b`` yields first, then does the
same. Whether ``b``'s read falls between ``a``'s read and write depends on the order of one
round's decisions."""

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
