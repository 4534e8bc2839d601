"""A leader replicates a log to three followers over a faulty simulated network.

Links get seeded latency and jitter, one follower is partitioned away for a while and
then healed; the leader must still collect an acknowledgement for every entry from
every follower, in order. Deterministic runtime only (it uses the fault controls).
"""

from __future__ import annotations

import functools

from commonware_runtime import deterministic
from commonware_runtime.interfaces import Context, Listener

LEADER = "10.0.0.10"
FOLLOWERS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
PORT = 9000
ENTRIES = 25


async def follower(context: Context, listener: Listener) -> None:
    _peer, sink, stream = await listener.accept()
    log: list[bytes] = []
    while True:
        size = int.from_bytes(await stream.recv(2), "big")
        if size == 0:
            return
        log.append(await stream.recv(size))
        await sink.send(len(log).to_bytes(4, "big"))


async def replicate(context: Context, host: str, entries: list[bytes]) -> int:
    sink, stream = await context.dial((host, PORT))
    for index, entry in enumerate(entries, start=1):
        await sink.send(len(entry).to_bytes(2, "big") + entry)
        acked = int.from_bytes(await stream.recv(4), "big")
        assert acked == index, f"follower {host} acknowledged {acked}, expected {index}"
    await sink.send((0).to_bytes(2, "big"))
    return len(entries)


async def main(context: deterministic.Context) -> int:
    # Deterministic-only: the simulated network's controls and hosts (not in the Context contract).
    network = context.network
    for host in FOLLOWERS:
        network.set_link(LEADER, host, latency=context.rng.uniform(0.001, 0.02), jitter=0.005)
        follower_ctx = context.with_host(host).with_label("follower")
        listener = await follower_ctx.bind((host, PORT))
        follower_ctx.spawn(functools.partial(follower, listener=listener))

    entries = [context.rng.randbytes(context.rng.randint(1, 48)) for _ in range(ENTRIES)]
    leader = context.with_host(LEADER).with_label("leader")
    handles = [leader.spawn(functools.partial(replicate, host=host, entries=entries)) for host in FOLLOWERS]

    # Cut the last follower off mid-stream, then heal: its connection stalls, nothing is lost.
    await context.sleep(context.rng.uniform(0.01, 0.1))
    network.partition([LEADER], [FOLLOWERS[-1]])
    await context.sleep(context.rng.uniform(0.1, 1.0))
    network.heal()

    replicated = 0
    for handle in handles:
        replicated += await handle
    assert replicated == ENTRIES * len(FOLLOWERS)
    return replicated
