"""The deterministic runtime's simulated network (SPEC sections 2 and 6)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import pytest
from commonware_runtime.auditor import Auditor
from commonware_runtime.deterministic.network import EPHEMERAL_FIRST, Network
from commonware_runtime.errors import BindFailed, Closed, ConnectionFailed, RecvFailed, SendFailed
from commonware_runtime.metrics import RuntimeCounters

T = TypeVar("T")
A = "10.0.0.1"
B = "10.0.0.2"
C = "10.0.0.3"


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def make(buffer_size: int = 1 << 16, seed: int = 1, audit: bool = True) -> Network:
    return Network(
        auditor=Auditor() if audit else None, counters=RuntimeCounters(), rng=random.Random(seed), buffer_size=buffer_size
    )


async def spin(times: int = 5) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def connect(net: Network, src: str = B, dst: str = A, port: int = 9000):  # type: ignore[no-untyped-def]
    listener = await net.bind(dst, (dst, port))
    dial_sink, dial_stream = await net.dial(src, (dst, port))
    peer, acc_sink, acc_stream = await listener.accept()
    return listener, peer, (dial_sink, dial_stream), (acc_sink, acc_stream)


# -- bind / dial / accept --------------------------------------------------------------


def test_bind_dial_accept_exchange_both_ways() -> None:
    async def main() -> None:
        net = make()
        listener = await net.bind(A, f"{A}:9000")
        assert listener.local_addr() == (A, 9000)
        sink, stream = await net.dial(B, (A, 9000))
        peer, acc_sink, acc_stream = await listener.accept()
        assert peer == (B, EPHEMERAL_FIRST)
        assert sink.local_addr() == peer and sink.peer_addr() == (A, 9000)
        await sink.send(b"ping")
        assert await acc_stream.recv(4) == b"ping"
        await acc_sink.send(b"pong!")
        assert await stream.recv(5) == b"pong!"
        c = net.counters.network
        assert c["outbound_connections"] == 1 and c["inbound_connections"] == 1
        assert c["bytes_sent"] == 9 and c["bytes_received"] == 9

    run(main)


def test_accept_waits_for_a_dial_and_backlog_keeps_order() -> None:
    async def main() -> None:
        net = make()
        listener = await net.bind(A, (A, 1))
        pending = asyncio.create_task(listener.accept())
        await spin()
        assert not pending.done()
        await net.dial(B, (A, 1))
        first_peer, _, _ = await pending
        await net.dial(C, (A, 1))
        await net.dial(B, (A, 1))
        peers = [(await listener.accept())[0] for _ in range(2)]
        assert first_peer == (B, EPHEMERAL_FIRST)
        assert peers == [(C, EPHEMERAL_FIRST), (B, EPHEMERAL_FIRST + 1)]

    run(main)


def test_ephemeral_ports_are_distinct_and_deterministic() -> None:
    async def main() -> list[tuple[str, int]]:
        net = make()
        await net.bind(B, (B, EPHEMERAL_FIRST + 1))  # a bound port is skipped
        listener = await net.bind(A, (A, 80))
        peers = []
        for _ in range(4):
            await net.dial(B, (A, 80))
            peers.append((await listener.accept())[0])
        auto = await net.bind(A, (A, 0))
        assert auto.local_addr() == (A, EPHEMERAL_FIRST)
        auto2 = await net.bind(A, f"{A}:0")
        assert auto2.local_addr() == (A, EPHEMERAL_FIRST + 1)
        return peers

    peers = run(main)
    assert peers == [(B, EPHEMERAL_FIRST), (B, EPHEMERAL_FIRST + 2), (B, EPHEMERAL_FIRST + 3), (B, EPHEMERAL_FIRST + 4)]
    assert run(main) == peers


def test_bind_twice_fails_naming_address() -> None:
    async def main() -> None:
        net = make()
        await net.bind(A, (A, 7000))
        with pytest.raises(BindFailed, match="10.0.0.1:7000"):
            await net.bind(A, (A, 7000))
        await net.bind(A, (B, 7000))  # another ip: fine

    run(main)


def test_dial_nobody_listening_fails_naming_address() -> None:
    async def main() -> None:
        net = make()
        with pytest.raises(ConnectionFailed, match="10.0.0.1:1234"):
            await net.dial(B, (A, 1234))
        assert net.counters.network["outbound_connections"] == 0

    run(main)


def test_wildcard_listener_and_exact_match_precedence() -> None:
    async def main() -> None:
        net = make()
        wild = await net.bind(A, ("0.0.0.0", 500))
        exact = await net.bind(C, (C, 500))
        await net.dial(B, (A, 500))
        await net.dial(B, (C, 500))
        assert (await wild.accept())[0][0] == B
        assert (await exact.accept())[0][0] == B
        # The wildcard listener belongs to the binding host, A.
        assert wild.host == A
        net.partition([A], [B])
        with pytest.raises(ConnectionFailed, match="partitioned"):
            await net.dial(B, (A, 500))
        # A wildcard listens on its own host's addresses only.
        with pytest.raises(ConnectionFailed, match="nobody is listening"):
            await net.dial(B, ("10.9.9.9", 500))

    run(main)


def test_loopback_and_wildcard_dials_reach_the_dialing_hosts_own_listeners() -> None:
    async def main() -> None:
        net = make()
        own = await net.bind(A, ("0.0.0.0", 7000))
        await net.dial(A, ("127.0.0.1", 7000))
        await net.dial(A, ("0.0.0.0", 7000))
        assert (await own.accept())[0][0] == A and (await own.accept())[0][0] == A
        with pytest.raises(ConnectionFailed, match="nobody is listening"):
            await net.dial(B, ("0.0.0.0", 7000))  # B's own wildcard address: nobody listens on B

    run(main)


def test_every_host_has_its_own_ports() -> None:
    async def main() -> None:
        net = make()
        on_a = await net.bind(A, ("0.0.0.0", 9000))
        on_b = await net.bind(B, ("0.0.0.0", 9000))
        await net.dial(C, (B, 9000))
        await net.dial(C, (A, 9000))
        assert (await on_a.accept())[0][0] == C and (await on_b.accept())[0][0] == C
        assert (on_a.host, on_b.host) == (A, B)

    run(main)


@pytest.mark.parametrize("first, second", [(("0.0.0.0", 700), (A, 700)), ((A, 700), ("0.0.0.0", 700)),
                                           (("0.0.0.0", 700), ("0.0.0.0", 700))])
def test_a_wildcard_and_an_address_of_one_host_conflict_as_on_linux(first: tuple[str, int],
                                                                      second: tuple[str, int]) -> None:
    async def main() -> None:
        net = make()
        await net.bind(A, first)
        with pytest.raises(BindFailed, match="already in use"):
            await net.bind(A, second)
        # Another host's address, and the other family's wildcard, are free.
        await net.bind(B, second if second[0] != A else (B, 700))
        await net.bind(A, ("::", 700))

    run(main)


def test_listener_close_fails_pending_accept_and_frees_port() -> None:
    async def main() -> None:
        net = make()
        listener = await net.bind(A, (A, 80))
        pending = asyncio.create_task(listener.accept())
        await spin()
        listener.close()
        listener.close()
        with pytest.raises(Closed, match="10.0.0.1:80"):
            await pending
        with pytest.raises(Closed):
            await listener.accept()
        with pytest.raises(ConnectionFailed):
            await net.dial(B, (A, 80))
        again = await net.bind(A, (A, 80))
        assert again.local_addr() == (A, 80)

    run(main)


def test_listener_close_refuses_unaccepted_connections() -> None:
    async def main() -> None:
        net = make()
        listener = await net.bind(A, (A, 80))
        sink, stream = await net.dial(B, (A, 80))
        listener.close()
        with pytest.raises(RecvFailed):
            await stream.recv(1)
        with pytest.raises(SendFailed):
            await sink.send(b"x")
        with pytest.raises(Closed):
            await sink.send(b"x")

    run(main)


def test_cancelled_accept_does_not_lose_connection() -> None:
    async def main() -> None:
        net = make()
        listener = await net.bind(A, (A, 80))
        task = asyncio.create_task(listener.accept())
        await spin()
        await net.dial(B, (A, 80))  # hands the connection to the waiting accept...
        task.cancel()  # ...which is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await task
        peer, _, _ = await asyncio.wait_for(listener.accept(), 1)
        assert peer == (B, EPHEMERAL_FIRST)

    run(main)


# -- streams ---------------------------------------------------------------------------


def test_exact_recv_across_many_small_sends_and_peek() -> None:
    async def main() -> None:
        net = make()
        _, _, (sink, _), (_, stream) = await connect(net)
        payload = bytes(range(256)) * 4
        for i in range(0, len(payload), 3):
            await sink.send(payload[i : i + 3])
        assert stream.peek(5) == payload[:5]
        assert stream.peek(5) == payload[:5]
        got = b"".join([await stream.recv(n) for n in (1, 500, 523)])
        assert got == payload
        assert stream.peek(4) == b""

    run(main)


def test_backpressure_blocks_sender_until_recv() -> None:
    async def main() -> None:
        net = make(buffer_size=16)
        _, _, (sink, _), (_, stream) = await connect(net)
        payload = bytes(range(50))
        sender = asyncio.create_task(sink.send(payload))
        await spin()
        assert not sender.done()
        assert stream.peek(100) == payload[:16]
        assert await stream.recv(10) == payload[:10]
        await spin()
        assert not sender.done()
        assert await stream.recv(40) == payload[10:]  # larger than the window: still completes
        await sender

    run(main)


def test_recv_failed_after_peer_sink_close_with_buffered_bytes_first() -> None:
    async def main() -> None:
        net = make()
        _, _, (sink, dstream), (asink, stream) = await connect(net)
        await sink.send(b"abcdef")
        sink.close()
        sink.close()
        assert await stream.recv(4) == b"abcd"
        with pytest.raises(RecvFailed, match="10.0.0.2:49152 -> 10.0.0.1:9000"):
            await stream.recv(4)
        with pytest.raises(Closed):
            await stream.recv(1)
        with pytest.raises(Closed):
            stream.peek(1)
        # The other direction still works after a half-close.
        await asink.send(b"ok")
        assert await dstream.recv(2) == b"ok"

    run(main)


def test_send_failed_after_peer_stream_close_then_poisoned() -> None:
    async def main() -> None:
        net = make()
        _, _, (sink, _), (_, stream) = await connect(net)
        stream.close()
        with pytest.raises(SendFailed):
            await sink.send(b"hello")
        with pytest.raises(Closed):
            await sink.send(b"hello")

    run(main)


def test_calls_after_close_raise_closed() -> None:
    async def main() -> None:
        net = make()
        _, _, (sink, stream), _ = await connect(net)
        sink.close()
        stream.close()
        with pytest.raises(Closed):
            await sink.send(b"x")
        with pytest.raises(Closed):
            await stream.recv(1)
        with pytest.raises(Closed):
            stream.peek(1)

    run(main)


def test_validation_errors_have_no_effect() -> None:
    async def main() -> None:
        net = make()
        _, _, (sink, _), (_, stream) = await connect(net)
        assert net.auditor is not None
        before = net.auditor.state()
        with pytest.raises(TypeError):
            await sink.send("str")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await stream.recv(-1)
        with pytest.raises(TypeError):
            await stream.recv("1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            stream.peek(-1)
        with pytest.raises(TypeError):
            await net.bind(A, 80)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await net.bind(A, (A, 70000))
        with pytest.raises(ValueError):
            await net.dial(B, "nocolon")
        with pytest.raises(TypeError):
            await net.dial(7, (A, 9000))  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            net.set_link(A, B, latency=-1)
        with pytest.raises(TypeError):
            net.set_link(A, B, latency="1s")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            net.partition(A, [B])  # a bare str is not a group
        with pytest.raises(TypeError):
            net.heal([A])
        with pytest.raises(TypeError):
            net.crash_host(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            make(buffer_size=0)
        assert net.auditor.state() == before
        await sink.send(b"")
        assert await stream.recv(0) == b""
        assert net.auditor.state() == before
        await sink.send(b"still fine")
        assert await stream.recv(10) == b"still fine"

    run(main)


def test_concurrent_recv_rejected_and_cancelled_recv_keeps_bytes() -> None:
    async def main() -> None:
        net = make()
        _, _, (sink, _), (_, stream) = await connect(net)
        await sink.send(b"ab")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stream.recv(3), 0.001)
        first = asyncio.create_task(stream.recv(3))
        await spin()
        with pytest.raises(RuntimeError, match="concurrent"):
            await stream.recv(1)
        await sink.send(b"c")
        assert await first == b"abc"

    run(main)


# -- latency ---------------------------------------------------------------------------


def test_latency_delays_delivery() -> None:
    async def main() -> None:
        net = make()
        net.set_link(A, B, latency=timedelta(milliseconds=10))
        assert net.link(B, A) == (0.01, 0.0)  # symmetric by default
        _, _, (sink, _), (_, stream) = await connect(net)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await sink.send(b"hello")
        assert stream.peek(5) == b""  # still in flight
        assert await stream.recv(5) == b"hello"
        assert loop.time() - start >= 0.01 - 1e-3
        # EOF travels behind the data, with the same latency.
        await sink.send(b"xy")
        sink.close()
        assert await stream.recv(2) == b"xy"
        with pytest.raises(RecvFailed):
            await stream.recv(1)

    run(main)


def test_asymmetric_link() -> None:
    async def main() -> None:
        net = make()
        net.set_link(B, A, latency=0.01, symmetric=False)
        assert net.link(A, B) == (0.0, 0.0)
        _, _, (sink, dstream), (asink, stream) = await connect(net)
        await asink.send(b"fast")
        assert dstream.peek(4) == b"fast"  # A -> B has no delay: readable at once
        await sink.send(b"slow")
        assert stream.peek(4) == b""

    run(main)


def test_jitter_keeps_fifo_order() -> None:
    async def main() -> None:
        net = make(seed=3)
        net.set_link(A, B, latency=0.001, jitter=0.01)
        _, _, (sink, _), (_, stream) = await connect(net)
        for i in range(100):
            await sink.send(bytes([i]))
        assert await stream.recv(100) == bytes(range(100))

    run(main)


def test_auditor_state_depends_on_fault_seed_only_through_draws() -> None:
    async def scenario(seed: int, jitter: float) -> str:
        net = make(seed=seed)
        net.set_link(A, B, latency=0.001, jitter=jitter)
        _, _, (sink, _), (_, stream) = await connect(net)
        for i in range(5):
            await sink.send(bytes([i]) * 3)
        await stream.recv(15)
        assert net.auditor is not None
        return net.auditor.state()

    a1 = asyncio.run(scenario(1, 0.002))
    a2 = asyncio.run(scenario(1, 0.002))
    b = asyncio.run(scenario(2, 0.002))
    assert a1 == a2
    assert a1 != b  # different drawn delays are different executions
    assert asyncio.run(scenario(1, 0)) == asyncio.run(scenario(2, 0))  # no jitter: no draws


# -- partitions ------------------------------------------------------------------------


def test_partition_blocks_dials_and_stalls_connections_until_heal() -> None:
    async def main() -> None:
        net = make()
        listener, _, (sink, dstream), (asink, stream) = await connect(net)
        net.partition([A], [B, C])
        assert net.partitioned(B, A) and net.partitioned(A, C) and not net.partitioned(B, C)
        with pytest.raises(ConnectionFailed, match="partitioned"):
            await net.dial(B, (A, 9000))
        await sink.send(b"held")
        await asink.send(b"back")
        await asyncio.sleep(0.02)
        assert stream.peek(4) == b"" and dstream.peek(4) == b""
        waiting = asyncio.create_task(stream.recv(4))
        await spin()
        assert not waiting.done()
        net.heal()
        assert await waiting == b"held"
        assert await dstream.recv(4) == b"back"
        await net.dial(B, (A, 9000))
        await listener.accept()

    run(main)


def test_partition_holds_bytes_in_flight_and_preserves_order() -> None:
    async def main() -> None:
        net = make()
        net.set_link(A, B, latency=0.005)
        _, _, (sink, _), (_, stream) = await connect(net)
        await sink.send(b"one")
        net.partition([B], [A])  # arrives during the partition: held
        await asyncio.sleep(0.01)
        await sink.send(b"two")
        await asyncio.sleep(0.01)
        assert stream.peek(10) == b""
        net.heal([B], [A])
        assert not net.partitioned(A, B)
        assert stream.peek(10) == b"onetwo"
        await sink.send(b"three")
        assert await stream.recv(11) == b"onetwothree"

    run(main)


def test_partition_stall_fills_window_and_blocks_sender() -> None:
    async def main() -> None:
        net = make(buffer_size=8)
        _, _, (sink, _), (_, stream) = await connect(net)
        net.partition([A], [B])
        sender = asyncio.create_task(sink.send(bytes(20)))
        await asyncio.sleep(0.005)
        assert not sender.done()
        net.heal()
        assert await stream.recv(20) == bytes(20)
        await sender

    run(main)


# -- crashes ---------------------------------------------------------------------------


def test_crash_host_breaks_connections_and_closes_listeners() -> None:
    async def main() -> None:
        net = make()
        listener, _, (sink, dstream), (asink, astream) = await connect(net)
        await asink.send(b"arrived")  # A -> B, already buffered at B
        pending_accept = asyncio.create_task(listener.accept())
        pending_recv = asyncio.create_task(dstream.recv(100))
        await spin()
        net.crash_host(A)
        with pytest.raises(Closed):
            await pending_accept
        # The survivor reads what had arrived, then fails.
        with pytest.raises(RecvFailed, match="crashed"):
            await pending_recv
        with pytest.raises(Closed):
            await dstream.recv(1)
        with pytest.raises(SendFailed, match="crashed"):
            await sink.send(b"x")
        # The crashed side fails too.
        with pytest.raises(RecvFailed):
            await astream.recv(1)
        with pytest.raises(SendFailed):
            await asink.send(b"x")
        with pytest.raises(ConnectionFailed):
            await net.dial(B, (A, 9000))
        # A restart may bind again.
        await net.bind(A, (A, 9000))

    run(main)


def test_crash_keeps_delivered_bytes_for_survivor_and_drops_in_flight() -> None:
    async def main() -> None:
        net = make()
        net.set_link(A, B, latency=0.01)
        _, _, (_, dstream), (asink, _) = await connect(net)
        await asink.send(b"lost")
        net.crash_host(A)
        await asyncio.sleep(0.02)
        assert dstream.peek(10) == b""
        with pytest.raises(RecvFailed):
            await dstream.recv(4)

    run(main)


def test_crash_of_unrelated_host_has_no_effect() -> None:
    async def main() -> None:
        net = make()
        _, _, (sink, _), (_, stream) = await connect(net)
        net.crash_host(C)
        await sink.send(b"fine")
        assert await stream.recv(4) == b"fine"

    run(main)


# -- under the deterministic loop (virtual time) -----------------------------------------


def test_on_deterministic_event_loop_virtual_time() -> None:
    loop_mod = pytest.importorskip("commonware_runtime.deterministic.loop")

    async def main() -> float:
        net = make()
        net.set_link(A, B, latency=5.0, jitter=1.0)
        _, _, (sink, _), (_, stream) = await connect(net)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await sink.send(b"slow")
        assert await stream.recv(4) == b"slow"
        return loop.time() - start

    with asyncio.Runner(loop_factory=lambda: loop_mod.EventLoop(seed=7)) as runner:
        elapsed = runner.run(main())
    assert 5.0 <= elapsed <= 6.0


def test_connection_released_when_all_halves_closed() -> None:
    async def main() -> None:
        net = make()
        _, _, (sink, stream), (asink, astream) = await connect(net)
        assert "connections=1" in repr(net)
        for half in (sink, stream, asink):
            half.close()
        assert "connections=1" in repr(net)
        astream.close()
        assert "connections=0" in repr(net)

    run(main)


# -- the fault/audit seam ---------------------------------------------------------------


def _every_fault(seed: int) -> tuple[str, list[str], float]:
    """A run that takes every network audit and fault path: jittered links, a failed bind,
    failed dials (nobody listening, partitioned), bytes held by a partition and delivered by
    heal, a crashed host, closes.  On the deterministic loop (fifo), so timers are virtual.
    Returns the network's auditor state, what was received or raised, and the fault
    stream's next draw."""
    from commonware_runtime.deterministic.loop import EventLoop

    rng = random.Random(seed)
    net = Network(auditor=Auditor(), counters=RuntimeCounters(), rng=rng, buffer_size=64)
    seen: list[str] = []

    async def main() -> None:
        net.set_link(A, B, latency=0.01, jitter=0.005)
        net.set_link(B, C, latency=0.002, symmetric=False)
        listener = await net.bind(A, (A, 7000))
        with pytest.raises(BindFailed):
            await net.bind(A, (A, 7000))
        with pytest.raises(ConnectionFailed):
            await net.dial(B, (A, 7001))

        async def echo() -> None:
            _, sink, stream = await listener.accept()
            for _ in range(8):
                await sink.send(await stream.recv(5))
            sink.close()

        server = asyncio.get_running_loop().create_task(echo())
        sink, stream = await net.dial(B, (A, 7000))
        for i in range(8):
            if i == 3:
                net.partition([A], [B, C])
                with pytest.raises(ConnectionFailed):
                    await net.dial(C, (A, 7000))
            await sink.send(b"hello"[: 1 + i % 5].ljust(5, b"."))
            if i == 3:
                await asyncio.sleep(0.05)
                net.heal()
            seen.append((await stream.recv(5)).decode())
        await server
        net.partition([A], [C])
        net.heal([A], [C])
        other = await net.bind(C, (C, 0))
        far_sink, _ = await net.dial(B, other.local_addr())
        net.crash_host(C)
        try:
            await far_sink.send(b"x")
        except SendFailed as exc:
            seen.append(type(exc).__name__)
        sink.close()
        stream.close()
        listener.close()

    with asyncio.Runner(loop_factory=lambda: EventLoop(seed=seed, ordering="fifo")) as runner:
        runner.run(main())
    assert net.auditor is not None
    return net.auditor.state(), seen, rng.random()


# Recorded before the seam (issue 10) existed: the seam must fold the same events, in the
# same order, with the same bytes, and draw the same delays from the same stream.
_EVERY_FAULT_PINNED = {
    1: ("736ae79f60e35c01e0a2d248fb70bb378706608abe27d3e4b46defc205670a2f", 0.6958328667684435),
    2: ("a5228c7f7262acee73581752276f338322e798147b7279def6d72245868d72e7", 0.9357116851572259),
}


@pytest.mark.parametrize("seed", sorted(_EVERY_FAULT_PINNED))
def test_every_fault_path_audits_and_draws_as_pinned(seed: int) -> None:
    state, seen, next_draw = _every_fault(seed)
    assert seen == ["h....", "he...", "hel..", "hell.", "hello", "h....", "he...", "hel..", "SendFailed"]
    assert (state, next_draw) == _EVERY_FAULT_PINNED[seed]
