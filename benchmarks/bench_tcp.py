"""TCP echo benchmark: the production network layer against asyncio streams and protocols.

Run: ``python benchmarks/bench_tcp.py [--rounds 5] [--quick] [--variants a,b] [--ab RUNTIME_DIR]``.

Every measurement runs in its own subprocess (a fresh interpreter and event loop), and the
variants are interleaved round by round so that drift of the machine (thermal, other load)
hits all of them alike.  Client and server live in the same process on one event loop,
talking over 127.0.0.1: a round trip therefore pays for both ends of the layer under test.

Scenarios: ``size`` bytes per message, ``conns`` concurrent connections, each client sends
one message, waits for the whole echo, repeats.  The "server:" scenarios measure the echo
server alone: the variant serves, and a fixed load generator (the hand-written protocol
client on uvloop, writing each window of messages at once) runs in another process.  The "window" scenario keeps 32 messages in
flight per connection (send 32, then read 32 echoes): system calls are then shared by many
messages and the per-message cost of the layer itself shows.  Reported:
median round trips per second, median MB/s of payload (one direction), and the ratio to
asyncio streams on the default loop.

The allocator: see DEFAULT_MALLOC below.  Ratios are printed against asyncio streams as a
minimal program runs them and against streams with a tuned allocator (their best case).

Variants:
  streams/asyncio    asyncio.start_server/open_connection, write+drain, readexactly
  streams-tuned/asyncio
                     the same in a process where glibc is told to keep large buffers on the
                     heap (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_): streams at their best;
                     every other variant runs with glibc's default threshold held fixed
  streams/uvloop     the same on uvloop
  protocol/asyncio   hand-written asyncio.BufferedProtocol, callback driven, no tasks:
                     a ceiling for anything that exposes ``await recv(n)`` to tasks
  protocol/uvloop    the same on uvloop
  tasks-minimal/uvloop
                     the least any layer letting tasks ``await recv(n)`` must do (a
                     BufferedProtocol and a future per wait; no checks, errors or flow
                     control): the ceiling for a task-facing API, on uvloop
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
# COMMONWARE_BENCH_RUNTIME=/path/to/runtime measures another copy of the package (--ab).
sys.path.insert(0, os.environ.get("COMMONWARE_BENCH_RUNTIME") or os.path.join(ROOT, "runtime"))

VARIANTS = [
    "streams/asyncio",
    "streams-tuned/asyncio",
    "protocol/asyncio",
    "runtime/asyncio",
    "streams/uvloop",
    "protocol/uvloop",
    "tasks-minimal/uvloop",
    "runtime/uvloop",
    "floor/sockets",
]
BASELINE = "streams/asyncio"
# glibc's allocator, held in one mode per variant.  By default glibc serves blocks above a
# threshold (128 KiB) with mmap and *raises* the threshold when such a block is freed, so a
# process's mode depends on its allocation history.  asyncio streams read with
# sock.recv(256 KiB): below the threshold that buffer is mmap'ed, shrunk and unmapped on
# every read (3 extra system calls).  A minimal streams program is in that mode (a 20-line
# echo script runs at the "streams/asyncio" rate below); a process that once freed a big
# block is not, and this harness's own imports could flip it either way.  So every variant
# runs with the default threshold held fixed, and "streams-tuned" with a raised one.
DEFAULT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
ENVIRON = {"streams-tuned/asyncio": {"MALLOC_MMAP_THRESHOLD_": str(4 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 20)}}
TUNED = "streams-tuned/asyncio"
WARMUP = 200


# --- variants: each returns seconds for `rounds` round trips on each of `conns` connections ----


async def _timed(client: Callable[[int], Awaitable[None]], conns: int, rounds: int, window: int) -> float:
    """Warm up every connection's client, then time ``rounds`` round trips on each."""
    await asyncio.gather(*(client(WARMUP * window) for _ in range(conns)))
    start = time.perf_counter()
    await asyncio.gather(*(client(rounds) for _ in range(conns)))
    return time.perf_counter() - start


async def _drive(
    client: Callable[[int], Awaitable[None]], port: int, size: int, conns: int, rounds: int, window: int, external: bool
) -> float:
    """Time the variant's own clients in this process, or the fixed load generator (the
    protocol client on uvloop) in another process: then only the server is measured."""
    if not external:
        return await _timed(client, conns, rounds, window)
    args = [str(v) for v in (port, size, conns, rounds, window)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--load", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"the load generator failed with exit code {proc.returncode}")
    return float(json.loads(out.decode().strip().splitlines()[-1])["seconds"])


async def load(port: int, size: int, conns: int, rounds: int, window: int) -> float:
    """The load generator of the external scenarios (see _drive)."""
    loop = asyncio.get_running_loop()
    msg = os.urandom(size)

    async def client(count: int) -> None:
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda: _EchoClientProtocol(msg, count, window, done, batch=True), "127.0.0.1", port)
        await done

    return await _timed(client, conns, rounds, window)


async def bench_streams(size: int, conns: int, rounds: int, window: int, external: bool) -> float:
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

    elapsed = await _drive(client, port, size, conns, rounds, window, external)
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
    def __init__(self, msg: bytes, count: int, window: int, done: asyncio.Future[None], batch: bool = False) -> None:
        self.msg = msg
        # batch: write a window's messages with one write (the external load generator, so
        # that it is not the bottleneck); otherwise one write per message, like the others.
        self.burst = [msg * window] if batch else [msg] * window
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
        for data in self.burst:
            transport.write(data)

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
            for data in self.burst:
                self.transport.write(data)
        if self.start == self.end:
            self.start = self.end = 0


async def bench_protocol(size: int, conns: int, rounds: int, window: int, external: bool) -> float:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoServerProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    msg = os.urandom(size)

    async def client(count: int) -> None:
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda: _EchoClientProtocol(msg, count, window, done), "127.0.0.1", port)
        await done

    elapsed = await _drive(client, port, size, conns, rounds, window, external)
    server.close()
    return elapsed


class _MinimalStream(asyncio.BufferedProtocol):
    """The least a layer must do to let tasks ``await recv(n)`` / ``send``: no checks, no
    errors, no flow control, no timeouts.  A ceiling for any task-facing API."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 20)
        self.view = memoryview(self.buf)
        self.start = self.end = self.want = 0
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.start == self.end:
            self.start = self.end = 0
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        waiter = self.waiter
        if waiter is not None and self.end - self.start >= self.want:
            self.waiter = None
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None:
            self.waiter.set_exception(ConnectionError("closed"))

    async def recv(self, n: int) -> bytes:
        if self.end - self.start < n:
            self.want = n
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        start = self.start
        self.start = start + n
        return self.view[start : start + n].tobytes()

    async def send(self, data: bytes) -> None:
        self.transport.write(data)


async def bench_minimal(size: int, conns: int, rounds: int, window: int, external: bool) -> float:
    loop = asyncio.get_running_loop()

    async def serve(stream: _MinimalStream) -> None:
        try:
            while True:
                await stream.send(await stream.recv(size))
        except ConnectionError:
            stream.transport.close()

    def factory() -> _MinimalStream:
        stream = _MinimalStream()
        loop.create_task(serve(stream))
        return stream

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    msg = os.urandom(size)

    async def client(count: int) -> None:
        _, stream = await loop.create_connection(_MinimalStream, "127.0.0.1", port)
        for _ in range(count // window):
            for _ in range(window):
                await stream.send(msg)
            for _ in range(window):
                if await stream.recv(size) != msg:
                    raise AssertionError("echo mismatch")
        stream.transport.close()

    elapsed = await _drive(client, port, size, conns, rounds, window, external)
    server.close()
    return elapsed


async def bench_runtime(size: int, conns: int, rounds: int, window: int, external: bool) -> float:
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

    elapsed = await _drive(client, listener.local_addr()[1], size, conns, rounds, window, external)
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


async def bench_floor_async(size: int, conns: int, rounds: int, window: int, external: bool) -> float:
    if external:
        raise ValueError("the floor has no server to load from another process")
    return bench_floor(size, conns, rounds, window)


BENCHES: dict[str, Callable[[int, int, int, int, bool], Awaitable[float]]] = {
    "floor": bench_floor_async,
    "streams": bench_streams,
    "streams-tuned": bench_streams,
    "protocol": bench_protocol,
    "tasks-minimal": bench_minimal,
    "runtime": bench_runtime,
}


def worker(variant: str, size: int, conns: int, rounds: int, window: int, external: bool) -> None:
    kind, loop_name = variant.split("/")
    kind = kind.removesuffix("[B]")  # --ab: the same layer, from the other copy of the package
    coro = BENCHES[kind](size, conns, rounds, window, external)
    if loop_name == "uvloop":
        import uvloop

        elapsed = uvloop.run(coro)
    else:
        elapsed = asyncio.run(coro)
    print(json.dumps({"seconds": elapsed}))


# --- driver -------------------------------------------------------------------------------


AB_RUNTIME: list[str] = []  # --ab: the other copy of the package


def measure(variant: str, size: int, conns: int, rounds: int, window: int, external: bool) -> float:
    args = [variant, str(size), str(conns), str(rounds), str(window), "1" if external else "0"]
    env = {**os.environ, **ENVIRON.get(variant, DEFAULT_MALLOC)}
    if "[B]/" in variant:
        env["COMMONWARE_BENCH_RUNTIME"] = AB_RUNTIME[0]
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of every measurement (default 5)")
    parser.add_argument("--quick", action="store_true", help="fewer round trips (smoke run)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of variants")
    parser.add_argument(
        "--ab", metavar="RUNTIME_DIR",
        help="also run runtime/asyncio and runtime/uvloop on the package in RUNTIME_DIR (as runtime[B]/...)",
    )
    parser.add_argument("--worker", nargs=6, metavar=("VARIANT", "SIZE", "CONNS", "ROUNDS", "WINDOW", "EXTERNAL"), help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=5, type=int, metavar=("PORT", "SIZE", "CONNS", "ROUNDS", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        variant, size, conns, rounds, window, external = args.worker
        worker(variant, int(size), int(conns), int(rounds), int(window), external == "1")
        return
    if args.load:
        import uvloop

        print(json.dumps({"seconds": uvloop.run(load(*args.load))}))
        return

    scale = 5 if args.quick else 1
    # (label, message size, connections, messages per connection, messages in flight per connection)
    # (label, message size, connections, messages per connection, messages in flight per
    # connection, load from another process)
    scenarios = [
        ("64 B x1", 64, 1, 20_000 // scale, 1, False),
        ("64 KiB x1", 64 * 1024, 1, 3_000 // scale, 1, False),
        ("64 B x16", 64, 16, 2_500 // scale, 1, False),
        ("64 KiB x16", 64 * 1024, 16, 250 // scale, 1, False),
        ("64 B x1 window 32", 64, 1, 64_000 // scale, 32, False),
        ("server: 64 B x64, load in another process", 64, 64, 1_000 // scale, 1, True),
        ("server: 64 B x16 window 32, load in another process", 64, 16, 16_000 // scale, 32, True),
    ]
    variants = args.variants.split(",")
    if args.ab:
        AB_RUNTIME.append(os.path.abspath(args.ab))
        variants += [v.replace("runtime/", "runtime[B]/") for v in variants if v.startswith("runtime/")]
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for label, size, conns, rounds, window, external in scenarios:
            # Rotate the order each round so no variant always runs first or last.
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for variant in order:
                if external and variant.startswith("floor/"):
                    continue  # the floor has no server to load
                seconds = measure(variant, size, conns, rounds, window, external)
                results.setdefault((label, variant), []).append(conns * rounds / seconds)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    print(f"TCP echo, 127.0.0.1, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"median of {args.rounds} interleaved runs (each in its own process)\n")
    print(f"| scenario | variant | round trips/s (median) | min - max | MB/s | vs {BASELINE} | vs {TUNED} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, size, *_ in scenarios:
        bases = [statistics.median(results[(label, b)]) if b in variants else None for b in (BASELINE, TUNED)]
        for variant in variants:
            runs = results.get((label, variant))
            if runs is None:
                continue
            rate = statistics.median(runs)
            ratios = " | ".join(f"{rate / base:.2f}x" if base else "-" for base in bases)
            spread = f"{min(runs):,.0f} - {max(runs):,.0f}"
            print(f"| {label} | {variant} | {rate:,.0f} | {spread} | {rate * size / 1e6:,.1f} | {ratios} |")


if __name__ == "__main__":
    main()
