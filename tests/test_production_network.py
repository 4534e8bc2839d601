"""The production network layer on real sockets (127.0.0.1), on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import contextvars
import random
import resource
import selectors
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from commonware_runtime.errors import BindFailed, Closed, ConnectionFailed, RecvFailed, SendFailed, Timeout
from commonware_runtime.metrics import RuntimeCounters
from commonware_runtime.production.network import Listener, NetworkConfig, Sink, Stream, bind, dial

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is an optional extra
    uvloop = None

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(uvloop is None, reason="uvloop not installed"))]
LOCAL = ("127.0.0.1", 0)

Run = Callable[[Callable[[], Awaitable[Any]]], Any]

# Everything a test opens, closed (idempotently) when its run ends so no transport leaks.
_OPENED: list[Listener | Sink | Stream] = []


def track(*objects: Any) -> None:
    _OPENED.extend(objects)


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    """Run ``fn()`` on a fresh loop of the parametrized kind, bounded in time."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(fn: Callable[[], Awaitable[Any]], limit: float = 10.0) -> Any:
        async def bounded() -> Any:
            try:
                return await asyncio.wait_for(fn(), limit)
            finally:
                while _OPENED:
                    _OPENED.pop().close()
                await asyncio.sleep(0.01)  # let the transports finish closing

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


async def pair(
    config: NetworkConfig | None = None, counters: RuntimeCounters | None = None
) -> tuple[Listener, tuple[Sink, Stream], tuple[Sink, Stream]]:
    """A listener and one connection: (listener, (dialer sink, stream), (acceptor sink, stream))."""
    config = config or NetworkConfig()
    counters = counters or RuntimeCounters()
    listener = await bind(LOCAL, config, counters)
    accepting = asyncio.ensure_future(listener.accept())
    dialed = await dial(listener.local_addr(), config, counters)
    peer, sink, stream = await accepting
    track(listener, *dialed, sink, stream)
    assert peer[0] == "127.0.0.1"
    return listener, dialed, (sink, stream)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exchange_and_counters(run: Run) -> None:
    async def main() -> None:
        counters = RuntimeCounters()
        listener, (csink, cstream), (ssink, sstream) = await pair(counters=counters)
        await csink.send(b"hello")
        assert await sstream.recv(5) == b"hello"
        await ssink.send(bytearray(b"world!"))
        await ssink.send(memoryview(b"--"))
        assert await cstream.recv(8) == b"world!--"
        assert await cstream.recv(0) == b""
        assert counters.network == {
            "inbound_connections": 1,
            "outbound_connections": 1,
            "bytes_sent": 13,
            "bytes_received": 13,
        }
        assert csink.peer_addr == listener.local_addr()
        for half in (csink, cstream, ssink, sstream):
            half.close()
        listener.close()

    run(main)


def test_exact_recv_over_many_small_sends(run: Run) -> None:
    async def main() -> None:
        listener, (csink, _), (_, sstream) = await pair()
        rng = random.Random(1)
        payload = rng.randbytes(200_000)
        pos = 0

        async def writer() -> None:
            nonlocal pos
            while pos < len(payload):
                step = rng.randint(1, 700)
                await csink.send(payload[pos : pos + step])
                pos += step

        task = asyncio.ensure_future(writer())
        got = bytearray()
        read_rng = random.Random(2)
        while len(got) < len(payload):
            n = min(read_rng.randint(1, 3000), len(payload) - len(got))
            chunk = await sstream.recv(n)
            assert len(chunk) == n and isinstance(chunk, bytes)
            got += chunk
        await task
        assert bytes(got) == payload
        listener.close()

    run(main)


def test_big_send_and_big_recv(run: Run) -> None:
    async def main() -> None:
        listener, (csink, cstream), (ssink, sstream) = await pair()
        big = random.Random(3).randbytes(8 << 20)
        sender = asyncio.ensure_future(csink.send(big))
        assert await sstream.recv(8 << 20) == big
        await sender
        # And the other way round, read in uneven pieces.
        sender = asyncio.ensure_future(ssink.send(big))
        assert await cstream.recv(1) == big[:1]
        assert await cstream.recv(5_000_000) == big[1:5_000_001]
        assert await cstream.recv(len(big) - 5_000_001) == big[5_000_001:]
        await sender
        listener.close()

    run(main)


def test_back_to_back_sends_keep_order_and_close_flushes(run: Run) -> None:
    async def main() -> None:
        listener, (csink, cstream), (ssink, sstream) = await pair()
        rng = random.Random(4)
        # A burst of small sends (coalesced) mixed with large ones (written through), then a
        # close in the same iteration: every byte arrives, in order, before the end of stream.
        pieces = [rng.randbytes(rng.choice([1, 10, 300, 70_000, 200_000])) for _ in range(300)]
        expected = b"".join(pieces)
        receiving = asyncio.ensure_future(sstream.recv(len(expected)))
        for piece in pieces:
            await csink.send(piece)
        csink.close()
        assert await receiving == expected
        with pytest.raises(RecvFailed):
            await sstream.recv(1)
        # Two tasks sending bursts concurrently: each send's bytes stay contiguous.
        async def burst(tag: bytes) -> None:
            for i in range(200):
                await ssink.send(tag + bytes([i]) * 7)
                if i % 50 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(burst(b"A"), burst(b"B"))
        seen: dict[bytes, int] = {b"A": 0, b"B": 0}
        for _ in range(400):
            record = await cstream.recv(8)
            tag, body = record[:1], record[1:]
            assert body == bytes([seen[tag]]) * 7
            seen[tag] += 1
        assert seen == {b"A": 200, b"B": 200}

    run(main)


def test_peek(run: Run) -> None:
    async def main() -> None:
        listener, (csink, _), (_, sstream) = await pair()
        assert sstream.peek(10) == b""
        await csink.send(b"abcdef")
        assert await sstream.recv(1) == b"a"  # waits until bytes are there
        assert sstream.peek(3) == b"bcd"
        assert sstream.peek(100) == b"bcdef"
        assert sstream.peek(0) == b""
        assert await sstream.recv(5) == b"bcdef"
        assert sstream.peek(10) == b""
        with pytest.raises(ValueError):
            sstream.peek(-1)
        listener.close()

    run(main)


def test_bind_failed_on_used_port(run: Run) -> None:
    async def main() -> None:
        listener = await bind(LOCAL, NetworkConfig(), RuntimeCounters())
        host, port = listener.local_addr()
        with pytest.raises(BindFailed, match=f"127.0.0.1:{port}"):
            await bind((host, port), NetworkConfig(), RuntimeCounters())
        listener.close()

    run(main)


def test_connection_failed_on_closed_port(run: Run) -> None:
    async def main() -> None:
        port = free_port()
        counters = RuntimeCounters()
        with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{port}"):
            await dial(("127.0.0.1", port), NetworkConfig(), counters)
        assert counters.network["outbound_connections"] == 0

    run(main)


def test_string_addresses(run: Run) -> None:
    async def main() -> None:
        listener = await bind("127.0.0.1:0", NetworkConfig(), RuntimeCounters())
        host, port = listener.local_addr()
        assert host == "127.0.0.1" and port > 0
        accepting = asyncio.ensure_future(listener.accept())
        sink, stream = await dial(f"127.0.0.1:{port}", NetworkConfig(), RuntimeCounters())
        _, ssink, sstream = await accepting
        track(listener, sink, stream, ssink, sstream)
        await ssink.send(b"ok")
        assert await stream.recv(2) == b"ok"
        listener.close()

    run(main)


def test_recv_failed_after_peer_close_buffered_bytes_first(run: Run) -> None:
    async def main() -> None:
        listener, (csink, cstream), (ssink, sstream) = await pair()
        await ssink.send(b"0123456789")
        ssink.close()
        sstream.close()
        assert await cstream.recv(4) == b"0123"
        await asyncio.sleep(0.05)  # let the FIN arrive: buffered bytes must still be readable
        assert await cstream.recv(6) == b"456789"
        with pytest.raises(RecvFailed, match="127.0.0.1"):
            await cstream.recv(1)
        with pytest.raises(Closed):
            await cstream.recv(1)
        with pytest.raises(Closed):
            cstream.peek(1)
        csink.close()
        listener.close()

    run(main)


def test_recv_failed_wakes_a_waiting_recv(run: Run) -> None:
    async def main() -> None:
        listener, (_, cstream), (ssink, _) = await pair()
        waiting = asyncio.ensure_future(cstream.recv(100))
        await ssink.send(b"x" * 10)
        await asyncio.sleep(0.01)
        assert not waiting.done()
        ssink.close()  # half-close: the peer's recv fails, this side's stream still works
        with pytest.raises(RecvFailed):
            await waiting
        listener.close()

    run(main)


def test_half_close_keeps_other_direction(run: Run) -> None:
    async def main() -> None:
        listener, (csink, cstream), (ssink, sstream) = await pair()
        await csink.send(b"last words")
        csink.close()
        assert await sstream.recv(10) == b"last words"
        with pytest.raises(RecvFailed):
            await sstream.recv(1)
        # The acceptor can still answer over its sink and the dialer can still read.
        await ssink.send(b"reply")
        assert await cstream.recv(5) == b"reply"
        with pytest.raises(Closed):
            await csink.send(b"more")
        listener.close()

    run(main)


def test_send_failed_after_peer_reset(run: Run) -> None:
    async def main() -> None:
        listener, (csink, _), (ssink, sstream) = await pair()
        ssink.close()
        sstream.close()  # both halves closed: the transport closes, later bytes get a reset
        with pytest.raises(SendFailed, match="127.0.0.1"):
            for _ in range(200):
                await csink.send(b"x" * 1024)
                await asyncio.sleep(0.005)
        with pytest.raises(Closed):
            await csink.send(b"x")
        listener.close()

    run(main)


def test_close_and_poisoning(run: Run) -> None:
    async def main() -> None:
        listener, (csink, cstream), (ssink, sstream) = await pair()
        cstream.close()
        cstream.close()  # idempotent
        with pytest.raises(Closed):
            await cstream.recv(1)
        with pytest.raises(Closed):
            cstream.peek(1)
        # The sink of a connection whose stream is closed still works.
        await csink.send(b"abc")
        assert await sstream.recv(3) == b"abc"
        csink.close()
        with pytest.raises(Closed):
            await csink.send(b"x")
        # Both halves closed: the peer sees the end of the stream.
        with pytest.raises(RecvFailed):
            await sstream.recv(1)
        with pytest.raises(Closed):  # poisoned by the failure
            await sstream.recv(1)
        listener.close()

    run(main)


def test_read_timeout_poisons(run: Run) -> None:
    async def main() -> None:
        listener, (csink, cstream), (ssink, _) = await pair(NetworkConfig(read_timeout=0.05))
        await ssink.send(b"ab")
        assert await cstream.recv(2) == b"ab"  # no wait, no timeout
        began = time.monotonic()
        with pytest.raises(Timeout, match="timed out"):
            await cstream.recv(1)
        assert 0.04 <= time.monotonic() - began < 2.0
        await ssink.send(b"c")
        with pytest.raises(Closed):
            await cstream.recv(1)
        await csink.send(b"sink still fine")
        listener.close()

    run(main)


def test_recv_buffer_grows_with_arrival_not_with_n(run: Run) -> None:
    # Issue 9: recv(n) allocates nothing for n; the buffer follows the bytes that arrive
    # (at most about twice them), is kept for the stream's data after a cancellation, and
    # is dropped when the stream is poisoned by read_timeout or closed.
    async def main() -> None:
        listener, (_, cstream), (ssink, _) = await pair(NetworkConfig(read_timeout=0.5))
        conn = cstream._conn
        initial = len(conn._buf)
        waiting = asyncio.ensure_future(cstream.recv(16 << 30))
        await asyncio.sleep(0.02)
        assert len(conn._buf) == initial  # waiting for 16 GiB allocated nothing
        sent = 3 << 20
        await ssink.send(bytes(sent))
        for _ in range(200):
            if conn._end - conn._start >= sent:
                break
            await asyncio.sleep(0.005)
        assert conn._end - conn._start == sent
        assert sent <= len(conn._buf) <= 2 * sent + 64 * 1024
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert cstream.peek(10) == bytes(10)  # a cancellation keeps the stream's bytes
        # Waiting again past read_timeout poisons the stream and drops its buffer.
        with pytest.raises(Timeout):
            await cstream.recv(16 << 30)
        assert len(conn._buf) <= 64 * 1024
        with pytest.raises(Closed):
            await cstream.recv(1)
        listener.close()

    run(main)


def test_recv_buffer_released_on_close(run: Run) -> None:
    async def main() -> None:
        listener, (_, cstream), (ssink, _) = await pair()
        conn = cstream._conn
        waiting = asyncio.ensure_future(cstream.recv(1 << 30))
        await ssink.send(bytes(2 << 20))
        for _ in range(200):
            if conn._end - conn._start >= 2 << 20:
                break
            await asyncio.sleep(0.005)
        assert len(conn._buf) >= 2 << 20
        cstream.close()
        with pytest.raises(Closed):
            await waiting
        assert len(conn._buf) <= 64 * 1024
        listener.close()

    run(main)


def test_cancelled_recv_does_not_poison(run: Run) -> None:
    async def main() -> None:
        listener, (_, cstream), (ssink, _) = await pair()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cstream.recv(4), 0.02)
        await ssink.send(b"abcd")
        assert await cstream.recv(4) == b"abcd"
        listener.close()

    run(main)


def test_waiting_recv_keeps_task_context_and_cancels_cleanly(run: Run) -> None:
    # A recv woken by arriving bytes resumes in its own task, with its own contextvars,
    # whatever way it is cancelled: Task.cancel, asyncio.timeout, wait_for.
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")

    async def main() -> None:
        listener, (csink, _), (_, sstream) = await pair()

        async def reader() -> tuple[bytes, str, str | None]:
            var.set("reader")
            data = await sstream.recv(3)
            task = asyncio.current_task()
            return data, var.get(), task.get_name() if task else None

        task = asyncio.ensure_future(reader())
        task.set_name("reader-task")
        await asyncio.sleep(0.01)
        var.set("main")
        await csink.send(b"abc")
        assert await task == (b"abc", "reader", "reader-task")

        waiting = asyncio.ensure_future(sstream.recv(2))
        await asyncio.sleep(0.01)
        waiting.cancel("stop")
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await sstream.recv(2)
        await csink.send(b"xy")
        assert await sstream.recv(2) == b"xy"
        listener.close()

    run(main)


@pytest.mark.parametrize("cancel_first", [True, False])
def test_cancel_and_arrival_in_one_callback(run: Run, cancel_first: bool) -> None:
    # The two orders of a cancellation and the bytes a waiting recv wants, both inside one
    # loop callback (where the wake-up resumes the task at once): cancelled first, the recv
    # raises CancelledError and the bytes stay for the next recv; bytes first, the recv has
    # already returned them and the cancel finds the task done.
    async def main() -> None:
        listener, _, (_, sstream) = await pair()
        conn = sstream._conn
        loop = asyncio.get_running_loop()
        waiting = asyncio.ensure_future(sstream.recv(3))
        await asyncio.sleep(0.01)

        def arrive() -> None:
            conn.get_buffer(-1)[:3] = b"abc"
            conn.buffer_updated(3)

        def both() -> None:
            if cancel_first:
                assert waiting.cancel()
                arrive()
            else:
                arrive()
                assert waiting.done() and not waiting.cancel()

        loop.call_soon(both)
        if cancel_first:
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await sstream.recv(3) == b"abc"
        else:
            assert await waiting == b"abc"
            assert sstream.peek(10) == b""
        listener.close()

    run(main)


class _CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    polls = 0

    def select(self, timeout: float | None = None) -> Any:
        type(self).polls += 1
        return super().select(timeout)


def test_request_response_costs_one_poll_per_hop() -> None:
    # A recv woken by the bytes it waits for resumes inside the protocol callback, as a
    # hand-written protocol would handle them: one poll of the selector per hop, not two.
    rounds = 200

    async def main() -> int:
        listener, (csink, cstream), (ssink, sstream) = await pair()

        async def echo() -> None:
            for _ in range(rounds):
                await ssink.send(await sstream.recv(8))

        server = asyncio.ensure_future(echo())
        await asyncio.sleep(0.01)
        before = _CountingSelector.polls
        for i in range(rounds):
            await csink.send(i.to_bytes(8, "big"))
            assert await cstream.recv(8) == i.to_bytes(8, "big")
        polls = _CountingSelector.polls - before
        await server
        while _OPENED:
            _OPENED.pop().close()
        await asyncio.sleep(0.01)
        return polls

    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(_CountingSelector())) as r:
        polls = r.run(main())
    # Two hops per round trip; a scheduled wake-up would add a poll per hop (4 per round).
    assert polls <= 2 * rounds + 10, polls


def test_one_recv_at_a_time(run: Run) -> None:
    async def main() -> None:
        listener, (_, cstream), (ssink, _) = await pair()
        first = asyncio.ensure_future(cstream.recv(3))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="another recv"):
            await cstream.recv(1)
        await ssink.send(b"xyz")
        assert await first == b"xyz"
        listener.close()

    run(main)


def test_flow_control_pauses_reader_and_write_timeout(run: Run) -> None:
    async def main() -> None:
        config = NetworkConfig(read_buffer=64 * 1024, write_timeout=timedelta(milliseconds=200))
        listener, (csink, _), (_, sstream) = await pair(config)
        chunk = b"z" * (1 << 20)
        sent = 0
        # Nobody reads: the receiver stops reading, the kernel buffers fill, send waits, then times out.
        with pytest.raises(Timeout, match="timed out"):
            while sent < 1 << 30:
                await csink.send(chunk)
                sent += len(chunk)
        assert sent < 1 << 30
        with pytest.raises(Closed):
            await csink.send(b"x")
        buffered = len(sstream.peek(1 << 30))
        assert 0 < buffered <= 64 * 1024 + (1 << 20)
        # Reading resumes once the buffer drains: everything that was accepted arrives.
        got = 0
        while got < sent:
            n = min(1 << 20, sent - got)
            assert await sstream.recv(n) == chunk[:n]
            got += n
        listener.close()

    run(main, limit=15.0)


def test_connect_timeout(run: Run) -> None:
    # A listener that never accepts, with its accept queue full: Linux drops further SYNs,
    # so a connect hangs until our timeout (non-routable addresses are answered by some
    # sandboxes, so they are not a reliable way to get a hanging connect).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    addr = server.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            filler = socket.socket()
            filler.settimeout(0.2)
            fillers.append(filler)
            try:
                filler.connect(addr)
            except (TimeoutError, OSError):
                break
        else:
            pytest.skip("the accept queue never filled up: cannot provoke a hanging connect")

        async def main() -> None:
            config = NetworkConfig(connect_timeout=0.1)
            began = time.monotonic()
            with pytest.raises(Timeout, match=f"127.0.0.1:{addr[1]}"):
                await dial(addr, config, RuntimeCounters())
            assert 0.09 <= time.monotonic() - began < 2.0

        run(main)
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def test_listener_close(run: Run) -> None:
    async def main() -> None:
        listener = await bind(LOCAL, NetworkConfig(), RuntimeCounters())
        addr = listener.local_addr()
        waiting = asyncio.ensure_future(listener.accept())
        await asyncio.sleep(0)
        listener.close()
        listener.close()
        with pytest.raises(Closed, match="127.0.0.1"):
            await waiting
        with pytest.raises(Closed):
            await listener.accept()
        with pytest.raises(ConnectionFailed):
            await dial(addr, NetworkConfig(), RuntimeCounters())

    run(main)


def test_bad_arguments_raise_before_effect(run: Run) -> None:
    async def main() -> None:
        counters = RuntimeCounters()
        with pytest.raises(TypeError):
            await bind(1234, NetworkConfig(), counters)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await bind("127.0.0.1", NetworkConfig(), counters)
        with pytest.raises(ValueError):
            await dial(("127.0.0.1", 70000), NetworkConfig(), counters)
        listener, (csink, cstream), (ssink, _) = await pair(counters=counters)
        with pytest.raises(TypeError):
            await csink.send("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await cstream.recv(2.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await cstream.recv(True)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await cstream.recv(-1)
        # Nothing was poisoned by the bad calls.
        await ssink.send(b"fine")
        assert await cstream.recv(4) == b"fine"
        await csink.send(b"")
        listener.close()

    run(main)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        NetworkConfig(read_timeout=0)
    with pytest.raises(ValueError):
        NetworkConfig(connect_timeout=-1.0)
    with pytest.raises(TypeError):
        NetworkConfig(write_timeout="1s")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        NetworkConfig(read_buffer=0)
    with pytest.raises(TypeError):
        NetworkConfig(tcp_nodelay=1)  # type: ignore[arg-type]
    assert NetworkConfig(read_timeout=timedelta(seconds=2)).read_timeout == 2.0


def test_tcp_nodelay_setting(run: Run) -> None:
    async def main() -> None:
        for nodelay in (True, False):
            config = NetworkConfig(tcp_nodelay=nodelay)
            listener, (csink, _), _ = await pair(config)
            transport = csink._conn._transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            assert bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is nodelay
            listener.close()

    run(main)


def test_load_1000_connections_echo_100_messages(run: Run) -> None:
    """1,000 concurrent connections each echo 100 length-prefixed messages, every byte checked."""
    connections, messages = 1000, 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * connections + 200
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"file descriptor limit {hard} is below {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))

    async def main() -> None:
        counters = RuntimeCounters()
        config = NetworkConfig()
        listener = await bind(LOCAL, config, counters)
        header = struct.Struct(">I")

        async def echo(sink: Sink, stream: Stream) -> None:
            try:
                while True:
                    (size,) = header.unpack(await stream.recv(4))
                    body = await stream.recv(size)
                    await sink.send(header.pack(size) + body)
            except RecvFailed:
                sink.close()
                stream.close()

        servers: list[asyncio.Future[None]] = []

        async def acceptor() -> None:
            for _ in range(connections):
                _, sink, stream = await listener.accept()
                servers.append(asyncio.ensure_future(echo(sink, stream)))

        accepting = asyncio.ensure_future(acceptor())

        async def client(i: int) -> int:
            rng = random.Random(i)
            sink, stream = await dial(listener.local_addr(), config, counters)
            total = 0
            for _ in range(messages):
                body = rng.randbytes(rng.randint(1, 2048))
                await sink.send(header.pack(len(body)) + body)
                assert header.unpack(await stream.recv(4))[0] == len(body)
                assert await stream.recv(len(body)) == body
                total += len(body)
            sink.close()
            stream.close()
            return total

        began = time.monotonic()
        totals = await asyncio.gather(*(client(i) for i in range(connections)))
        await accepting
        await asyncio.gather(*servers)
        elapsed = time.monotonic() - began
        listener.close()
        payload = sum(totals)
        assert counters.network["inbound_connections"] == connections
        assert counters.network["outbound_connections"] == connections
        expected = 2 * (payload + 4 * connections * messages)  # both directions, headers included
        assert counters.network["bytes_sent"] == expected
        assert counters.network["bytes_received"] == expected
        assert elapsed < 100.0  # what is checked is that nothing is lost; the bound only catches a hang

    run(main, limit=120.0)
