"""TCP echo benchmark: the production network layer against asyncio streams and protocols.

Run: ``python benchmarks/bench_tcp.py [--rounds 5] [--quick]``.

Every measurement runs in its own subprocess (a fresh interpreter and event loop), and the
variants are interleaved round by round so that drift of the machine (thermal, other load)
hits all of them alike.  Client and server live in the same process on one event loop,
talking over 127.0.0.1: a round trip therefore pays for both ends of the layer under test.

Scenarios: ``size`` bytes per message, ``conns`` concurrent connections, each client sends
one message, waits for the whole echo, repeats.  The "window" scenario keeps 32 messages in
flight per connection (send 32, then read 32 echoes): system calls are then shared by many
messages and the per-message cost of the layer itself shows.  Reported:
median round trips per second, median MB/s of payload (one direction), and the ratio to
asyncio streams on the default loop.

Caveat: asyncio streams read with ``sock.recv(256 KiB)``; whether glibc serves that buffer
from mmap (mmap + mremap + munmap on every read) or from the heap depends on the process's
allocation history (glibc's adaptive mmap threshold), so the 64-KiB streams baseline is
bimodal, about 3x apart here: it flipped between the x1 and x16 scenarios across edits of
this harness that did not touch the streams code.

Variants:
  streams/asyncio    asyncio.start_server/open_connection, write+drain, readexactly
  streams-tuned/asyncio
                     the same in a process where glibc is told to keep large buffers on the
                     heap (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_): streams at their best
  streams/uvloop     the same on uvloop
  protocol/asyncio   hand-written asyncio.BufferedProtocol, callback driven, no tasks:
                     a ceiling for anything that exposes ``await recv(n)`` to tasks
  runtime/asyncio    commonware_runtime.production.network (Sink.send / Stream.recv)
  runtime/uvloop     the same on uvloop
  floor/sockets      no event loop at all: blocking sockets, one thread, the fewest system
                     calls that move the same bytes (the window's messages in one sendall).
                     What the kernel alone costs; no event loop can beat it, and a target
                     above it cannot be met by any asyncio layer on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "runtime"))

VARIANTS = [
    "streams/asyncio",
    "streams-tuned/asyncio",
    "protocol/asyncio",
    "runtime/asyncio",
    "streams/uvloop",
    "runtime/uvloop",
    "floor/sockets",
]
BASELINE = "streams/asyncio"
# Environment of a variant's process on top of ours.
ENVIRON = {"streams-tuned/asyncio": {"MALLOC_MMAP_THRESHOLD_": str(4 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 20)}}
WARMUP = 200


# --- variants: each returns seconds for `rounds` round trips on each of `conns` connections ----


async def _timed(client: Callable[[int], Awaitable[None]], conns: int, rounds: int, window: int) -> float:
    """Warm up every connection's client, then time ``rounds`` round trips on each."""
    await asyncio.gather(*(client(WARMUP * window) for _ in range(conns)))
    start = time.perf_counter()
    await asyncio.gather(*(client(rounds) for _ in range(conns)))
    return time.perf_counter() - start


async def bench_streams(size: int, conns: int, rounds: int, window: int) -> float:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.readexactly(size)
                writer.write(data)
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    msg = os.urandom(size)

    async def client(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count // window):
            for _ in range(window):
                writer.write(msg)
                await writer.drain()
            for _ in range(window):
                if await reader.readexactly(size) != msg:
                    raise AssertionError("echo mismatch")
        writer.close()

    elapsed = await _timed(client, conns, rounds, window)
    server.close()
    return elapsed


class _EchoServerProtocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(256 * 1024)
        self.view = memoryview(self.buf)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.view[:nbytes].tobytes())


class _EchoClientProtocol(asyncio.BufferedProtocol):
    def __init__(self, msg: bytes, count: int, window: int, done: asyncio.Future[None]) -> None:
        self.msg = msg
        self.size = len(msg)
        self.window = window
        self.pending = window  # echoes outstanding in the current batch
        self.left = count // window  # batches left
        self.done = done
        self.buf = bytearray(max(2 * window * len(msg), 256 * 1024))
        self.view = memoryview(self.buf)
        self.start = 0  # unconsumed bytes are buf[start:end]
        self.end = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        for _ in range(self.window):
            transport.write(self.msg)

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buf) - self.end < 64 * 1024:
            kept = self.end - self.start
            self.view[:kept] = self.view[self.start : self.end]
            self.start, self.end = 0, kept
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        size = self.size
        while self.end - self.start >= size:
            # bytearray slice compare is a memcmp (comparing a memoryview is ~30x slower).
            if self.buf[self.start : self.start + size] != self.msg:
                raise AssertionError("echo mismatch")
            self.start += size
            self.pending -= 1
            if self.pending:
                continue
            self.left -= 1
            if not self.left:
                self.transport.close()
                self.done.set_result(None)
                return
            self.pending = self.window
            for _ in range(self.window):
                self.transport.write(self.msg)
        if self.start == self.end:
            self.start = self.end = 0


async def bench_protocol(size: int, conns: int, rounds: int, window: int) -> float:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoServerProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    msg = os.urandom(size)

    async def client(count: int) -> None:
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda: _EchoClientProtocol(msg, count, window, done), "127.0.0.1", port)
        await done

    elapsed = await _timed(client, conns, rounds, window)
    server.close()
    return elapsed


async def bench_runtime(size: int, conns: int, rounds: int, window: int) -> float:
    from commonware_runtime.errors import RecvFailed
    from commonware_runtime.metrics import RuntimeCounters
    from commonware_runtime.production.network import NetworkConfig, bind, dial

    config = NetworkConfig()
    counters = RuntimeCounters()
    listener = await bind(("127.0.0.1", 0), config, counters)

    async def handle(sink: Any, stream: Any) -> None:
        try:
            while True:
                await sink.send(await stream.recv(size))
        except RecvFailed:
            sink.close()
            stream.close()

    async def accept_loop() -> None:
        while True:
            _, sink, stream = await listener.accept()
            asyncio.ensure_future(handle(sink, stream))

    acceptor = asyncio.ensure_future(accept_loop())
    msg = os.urandom(size)

    async def client(count: int) -> None:
        sink, stream = await dial(listener.local_addr(), config, counters)
        for _ in range(count // window):
            for _ in range(window):
                await sink.send(msg)
            for _ in range(window):
                if await stream.recv(size) != msg:
                    raise AssertionError("echo mismatch")
        sink.close()
        stream.close()

    elapsed = await _timed(client, conns, rounds, window)
    acceptor.cancel()
    listener.close()
    return elapsed


def bench_floor(size: int, conns: int, rounds: int, window: int) -> float:
    listener = socket.create_server(("127.0.0.1", 0), backlog=conns)
    pairs = []
    for _ in range(conns):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pairs.append((client, server))
    burst = os.urandom(size) * window
    buf = bytearray(len(burst))
    view = memoryview(buf)

    def receive(sock: socket.socket) -> None:
        got = 0
        while got < len(buf):
            got += sock.recv_into(view[got:])

    def batches(count: int) -> None:
        for _ in range(count // window):
            for client, server in pairs:
                client.sendall(burst)
            for client, server in pairs:
                receive(server)
                server.sendall(view)
            for client, server in pairs:
                receive(client)
                if buf != burst:
                    raise AssertionError("echo mismatch")

    batches(WARMUP * window)
    start = time.perf_counter()
    batches(rounds)
    elapsed = time.perf_counter() - start
    for client, server in pairs:
        client.close()
        server.close()
    listener.close()
    return elapsed


async def bench_floor_async(size: int, conns: int, rounds: int, window: int) -> float:
    return bench_floor(size, conns, rounds, window)


BENCHES: dict[str, Callable[[int, int, int, int], Awaitable[float]]] = {
    "floor": bench_floor_async,
    "streams": bench_streams,
    "streams-tuned": bench_streams,
    "protocol": bench_protocol,
    "runtime": bench_runtime,
}


def worker(variant: str, size: int, conns: int, rounds: int, window: int) -> None:
    kind, loop_name = variant.split("/")
    coro = BENCHES[kind](size, conns, rounds, window)
    if loop_name == "uvloop":
        import uvloop

        elapsed = uvloop.run(coro)
    else:
        elapsed = asyncio.run(coro)
    print(json.dumps({"seconds": elapsed}))


# --- driver -------------------------------------------------------------------------------


def measure(variant: str, size: int, conns: int, rounds: int, window: int) -> float:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", variant, str(size), str(conns), str(rounds), str(window)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **ENVIRON.get(variant, {})},
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of every measurement (default 5)")
    parser.add_argument("--quick", action="store_true", help="fewer round trips (smoke run)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of variants")
    parser.add_argument("--worker", nargs=5, metavar=("VARIANT", "SIZE", "CONNS", "ROUNDS", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        variant, size, conns, rounds, window = args.worker
        worker(variant, int(size), int(conns), int(rounds), int(window))
        return

    scale = 5 if args.quick else 1
    # (label, message size, connections, messages per connection, messages in flight per connection)
    scenarios = [
        ("64 B x1", 64, 1, 20_000 // scale, 1),
        ("64 KiB x1", 64 * 1024, 1, 3_000 // scale, 1),
        ("64 B x16", 64, 16, 2_500 // scale, 1),
        ("64 KiB x16", 64 * 1024, 16, 250 // scale, 1),
        ("64 B x1 window 32", 64, 1, 64_000 // scale, 32),
    ]
    variants = args.variants.split(",")
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for label, size, conns, rounds, window in scenarios:
            # Rotate the order each round so no variant always runs first or last.
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for variant in order:
                seconds = measure(variant, size, conns, rounds, window)
                results.setdefault((label, variant), []).append(conns * rounds / seconds)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    print(f"TCP echo, 127.0.0.1, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"median of {args.rounds} interleaved runs (each in its own process)\n")
    print(f"| scenario | variant | round trips/s (median) | min - max | MB/s | vs {BASELINE} |")
    print("|---|---|---:|---:|---:|---:|")
    for label, size, _, _, _ in scenarios:
        base = statistics.median(results[(label, BASELINE)]) if BASELINE in variants else None
        for variant in variants:
            runs = results[(label, variant)]
            rate = statistics.median(runs)
            ratio = f"{rate / base:.2f}x" if base else "-"
            spread = f"{min(runs):,.0f} - {max(runs):,.0f}"
            print(f"| {label} | {variant} | {rate:,.0f} | {spread} | {rate * size / 1e6:,.1f} | {ratio} |")


if __name__ == "__main__":
    main()
