"""Property tests: whatever the chunking of sends and receives, every byte stream arrives
intact and in order, over the in-memory channel, the simulated network and real TCP."""

from __future__ import annotations

import random
import tempfile
from typing import Any

import pytest
from commonware_runtime import deterministic, mocks, production
from hypothesis import HealthCheck, given, settings, strategies as st

try:
    import uvloop  # noqa: F401
except ImportError:  # pragma: no cover - uvloop is an optional extra
    HAVE_UVLOOP = False
else:
    HAVE_UVLOOP = True
LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed"))]

chunks = st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=30)
reads = st.lists(st.integers(1, 400), min_size=1, max_size=30)
# Real TCP also gets parts and reads far larger than a socket read or the initial receive
# buffer, so reads that grow the buffer while woken inside the protocol callback are drawn.
_sized = st.tuples(st.integers(0, 2**32 - 1), st.one_of(st.integers(0, 300), st.integers(20_000, 600_000)))
big_chunks = st.lists(_sized, min_size=1, max_size=12).map(
    lambda specs: [random.Random(seed).randbytes(size) for seed, size in specs]
)
big_reads = st.lists(st.one_of(st.integers(1, 400), st.integers(10_000, 2_000_000)), min_size=1, max_size=12)


def read_plan(total: int, sizes: list[int]) -> list[int]:
    """Receive sizes that add up to exactly ``total`` (the last one takes the rest)."""
    plan, left = [], total
    for size in sizes:
        if left == 0:
            break
        take = min(size, left)
        plan.append(take)
        left -= take
    if left:
        plan.append(left)
    return plan


async def exchange(context: Any, sink: Any, stream: Any, parts: list[bytes], sizes: list[int]) -> bytes:
    payload = b"".join(parts)

    async def writer(_: Any) -> None:
        for part in parts:
            await sink.send(part)

    handle = context.spawn(writer)
    received = bytearray()
    for n in read_plan(len(payload), sizes):
        assert len(stream.peek(n)) <= n
        received += await stream.recv(n)
    await handle
    return bytes(received)


@settings(max_examples=50, deadline=None)
@given(parts=chunks, sizes=reads, seed=st.integers(0, 2**32))
def test_channel_delivers_every_byte_in_order(parts: list[bytes], sizes: list[int], seed: int) -> None:
    async def main(context: Any) -> bytes:
        sink, stream = mocks.Channel.init()
        return await exchange(context, sink, stream, parts, sizes)

    assert deterministic.Runner.seeded(seed).start(main) == b"".join(parts)


@settings(max_examples=50, deadline=None)
@given(parts=chunks, sizes=reads, seed=st.integers(0, 2**32), latency=st.floats(0, 0.05), jitter=st.floats(0, 0.05))
def test_simulated_network_delivers_every_byte_in_order(
    parts: list[bytes], sizes: list[int], seed: int, latency: float, jitter: float
) -> None:
    async def main(context: Any) -> bytes:
        context.network.set_link("10.0.0.1", "10.0.0.2", latency=latency, jitter=jitter)
        listener = await context.with_host("10.0.0.2").bind(("10.0.0.2", 4000))
        sink, _ = await context.with_host("10.0.0.1").dial(("10.0.0.2", 4000))
        _addr, _peer_sink, stream = await listener.accept()
        return await exchange(context, sink, stream, parts, sizes)

    assert deterministic.Runner.seeded(seed).start(main) == b"".join(parts)


@pytest.mark.parametrize("event_loop", LOOPS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=big_chunks, sizes=big_reads)
def test_real_tcp_delivers_every_byte_in_order(parts: list[bytes], sizes: list[int], event_loop: str) -> None:
    async def main(context: Any) -> bytes:
        listener = await context.bind(("127.0.0.1", 0))
        sink, _ = await context.dial(listener.local_addr())
        _addr, _peer_sink, stream = await listener.accept()
        return await exchange(context, sink, stream, parts, sizes)

    with tempfile.TemporaryDirectory() as directory:
        runner = production.Runner(production.Config(storage_directory=directory, event_loop=event_loop))
        assert runner.start(main) == b"".join(parts)
