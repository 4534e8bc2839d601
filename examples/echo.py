"""An echo service: clients send length-prefixed messages, the server echoes them back.

Runs unchanged on both runtimes; under the deterministic runtime every seed explores
a different interleaving of the clients.
"""

from __future__ import annotations

import functools

from commonware_runtime.interfaces import Context, Listener, Sink, Stream

PORT = 0  # any free port: the example also runs on real TCP
CLIENTS = 4
MESSAGES = 20


async def serve_one(context: Context, sink: Sink, stream: Stream) -> None:
    while True:
        header = await stream.recv(4)
        size = int.from_bytes(header, "big")
        if size == 0:
            sink.close()
            return
        payload = await stream.recv(size)
        await sink.send(header + payload)


async def server(context: Context, listener: Listener) -> None:
    while True:
        _addr, sink, stream = await listener.accept()
        context.with_label("conn").spawn_child(lambda ctx: serve_one(ctx, sink, stream))


async def client(context: Context, index: int, addr: tuple[str, int]) -> int:
    sink, stream = await context.dial(addr)
    checked = 0
    for _ in range(MESSAGES):
        payload = context.rng.randbytes(context.rng.randint(1, 64))
        await sink.send(len(payload).to_bytes(4, "big") + payload)
        echoed = await stream.recv(4 + len(payload))
        assert echoed[4:] == payload, f"client {index} got a corrupted echo"
        checked += len(payload)
        await context.sleep(context.rng.random() * 0.01)
    await sink.send((0).to_bytes(4, "big"))
    return checked


async def main(context: Context) -> int:
    listener = await context.bind(("127.0.0.1", PORT))
    context.with_label("server").spawn(lambda ctx: server(ctx, listener))
    addr = listener.local_addr()
    handles = [
        context.with_label(f"client{i}").spawn(functools.partial(client, index=i, addr=addr)) for i in range(CLIENTS)
    ]
    total = 0
    for handle in handles:
        total += await handle
    return total
