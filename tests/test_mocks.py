"""mocks.Channel: an in-memory byte pipe with network Sink/Stream semantics."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from commonware_runtime.errors import Closed, Error, RecvFailed, SendFailed
from commonware_runtime.mocks import Channel, Sink, Stream
from commonware_runtime.pipe import Pipe

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


async def spin(times: int = 5) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


def test_init_returns_sink_and_stream_outside_a_loop() -> None:
    sink, stream = Channel.init()
    assert isinstance(sink, Sink) and isinstance(stream, Stream)

    async def main() -> bytes:
        await sink.send(b"hello")
        return await stream.recv(5)

    assert run(main) == b"hello"


def test_exact_recv_across_many_small_sends() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        payload = bytes(range(256)) * 8
        for i in range(len(payload)):
            await sink.send(payload[i : i + 1])
        got = b"".join([await stream.recv(n) for n in (1, 7, 100, 1000, 940)])
        assert got == payload
        assert stream.peek(10) == b""

    run(main)


def test_recv_waits_until_enough_bytes() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        task = asyncio.create_task(stream.recv(6))
        await sink.send(b"abc")
        await spin()
        assert not task.done()
        await sink.send(bytearray(b"defg"))
        assert await task == b"abcdef"
        assert await stream.recv(1) == b"g"

    run(main)


def test_bytes_like_inputs_and_copy_on_send() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        buf = bytearray(b"xyz")
        await sink.send(buf)
        buf[:] = b"___"  # mutating after send must not change what was sent
        await sink.send(memoryview(b"0123456789")[2:5])
        await sink.send(memoryview(array("H", [1, 2])))  # multi-byte items are sent as raw bytes
        with pytest.raises(TypeError):
            await sink.send(array("H", [1, 2]))  # type: ignore[arg-type]  # like production: bytes/bytearray/memoryview only
        assert await stream.recv(3) == b"xyz"
        assert await stream.recv(3) == b"234"
        assert await stream.recv(4) == array("H", [1, 2]).tobytes()

    run(main)


def test_peek_does_not_consume() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        assert stream.peek(4) == b""
        await sink.send(b"abcdef")
        assert stream.peek(4) == b"abcd"
        assert stream.peek(100) == b"abcdef"
        assert stream.peek(0) == b""
        assert await stream.recv(2) == b"ab"
        assert stream.peek(100) == b"cdef"

    run(main)


def test_empty_send_and_zero_recv() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        await sink.send(b"")
        assert await stream.recv(0) == b""
        assert stream.peek(10) == b""

    run(main)


def test_validation_errors_before_any_effect() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        with pytest.raises(TypeError):
            await sink.send("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await sink.send(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await stream.recv(-1)
        with pytest.raises(TypeError):
            await stream.recv(1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await stream.recv(True)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            stream.peek(-3)
        # Nothing was poisoned and nothing moved.
        await sink.send(b"ok")
        assert await stream.recv(2) == b"ok"

    run(main)
    with pytest.raises(ValueError):
        Channel.init(capacity=0)
    with pytest.raises(ValueError):
        Channel.init(capacity=-1)


def test_recv_fails_after_sink_close_once_buffer_drained() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        await sink.send(b"12345")
        sink.close()
        sink.close()  # idempotent
        assert await stream.recv(3) == b"123"
        with pytest.raises(RecvFailed, match="mock channel"):
            await stream.recv(3)  # only 2 left: the peer is gone
        with pytest.raises(Closed):
            await stream.recv(1)  # poisoned
        with pytest.raises(Closed):
            stream.peek(1)

    run(main)


def test_pending_recv_fails_when_sink_closes() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        task = asyncio.create_task(stream.recv(4))
        await spin()
        await sink.send(b"ab")
        sink.close()
        with pytest.raises(RecvFailed):
            await task

    run(main)


def test_send_fails_after_stream_close_then_poisoned() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        await sink.send(b"abc")
        stream.close()
        stream.close()
        with pytest.raises(SendFailed):
            await sink.send(b"more")
        with pytest.raises(Closed):
            await sink.send(b"again")

    run(main)


def test_calls_after_own_close_raise_closed() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        sink.close()
        stream.close()
        with pytest.raises(Closed):
            await sink.send(b"x")
        with pytest.raises(Closed):
            await stream.recv(1)
        with pytest.raises(Closed):
            stream.peek(1)
        assert issubclass(Closed, Error)

    run(main)


def test_closing_stream_wakes_pending_recv_with_closed() -> None:
    async def main() -> None:
        _sink, stream = Channel.init()
        task = asyncio.create_task(stream.recv(1))
        await spin()
        stream.close()
        with pytest.raises(Closed):
            await task

    run(main)


def test_cancelled_recv_loses_no_bytes() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        await sink.send(b"abc")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stream.recv(5), 0.001)
        await sink.send(b"de")
        assert await stream.recv(5) == b"abcde"

    run(main)


def test_concurrent_recv_is_rejected() -> None:
    async def main() -> None:
        sink, stream = Channel.init()
        first = asyncio.create_task(stream.recv(2))
        await spin()
        with pytest.raises(RuntimeError, match="concurrent"):
            await stream.recv(1)
        await sink.send(b"xy")
        assert await first == b"xy"

    run(main)


def test_bounded_capacity_backpressure() -> None:
    async def main() -> None:
        sink, stream = Channel.init(capacity=8)
        payload = bytes(range(30))
        task = asyncio.create_task(sink.send(payload))
        await spin()
        assert not task.done()
        assert stream.peek(100) == payload[:8]
        got = bytearray()
        while len(got) < len(payload):
            got += await stream.recv(min(3, len(payload) - len(got)))
        await task
        assert bytes(got) == payload

    run(main)


def test_bounded_capacity_recv_larger_than_capacity() -> None:
    async def main() -> None:
        sink, stream = Channel.init(capacity=4)
        payload = b"0123456789abcdef"
        task = asyncio.create_task(sink.send(payload))
        assert await stream.recv(16) == payload
        await task

    run(main)


def test_concurrent_sends_stay_contiguous_under_backpressure() -> None:
    async def main() -> None:
        sink, stream = Channel.init(capacity=5)
        tasks = [asyncio.create_task(sink.send(bytes([c]) * 12)) for c in b"abc"]
        got = await stream.recv(36)
        await asyncio.gather(*tasks)
        assert got == b"a" * 12 + b"b" * 12 + b"c" * 12

    run(main)


def test_blocked_send_raises_closed_when_own_sink_closed() -> None:
    async def main() -> None:
        sink, stream = Channel.init(capacity=2)
        task = asyncio.create_task(sink.send(b"abcdef"))
        await spin()
        sink.close()
        with pytest.raises(Closed):
            await task
        # What was admitted before the close is still delivered, then EOF.
        assert await stream.recv(2) == b"ab"
        with pytest.raises(RecvFailed):
            await stream.recv(1)

    run(main)


def test_blocked_send_fails_when_reader_closes() -> None:
    async def main() -> None:
        sink, stream = Channel.init(capacity=2)
        task = asyncio.create_task(sink.send(b"abcdef"))
        await spin()
        stream.close()
        with pytest.raises(SendFailed):
            await task

    run(main)


def test_many_small_recvs_are_linear() -> None:
    # 200k one-byte receives from one big buffer: quadratic copying would take minutes.
    async def main() -> float:
        sink, stream = Channel.init()
        await sink.send(bytes(200_000))
        start = time.perf_counter()
        for _ in range(200_000):
            await stream.recv(1)
        return time.perf_counter() - start

    assert run(main) < 5.0


def test_pipe_rejects_bad_capacity_type() -> None:
    with pytest.raises(TypeError):
        Pipe("p", "big")  # type: ignore[arg-type]


def test_works_on_different_loops() -> None:
    sink, stream = Channel.init()

    async def write() -> None:
        await sink.send(b"abc")

    async def read() -> Any:
        return await stream.recv(3)

    run(write)
    assert run(read) == b"abc"
