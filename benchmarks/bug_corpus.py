"""A corpus of small buggy asyncio programs, the kinds the concurrency-testing literature uses.

Each entry is a :class:`Bug`: ``main(context)`` runs under the deterministic runtime and
raises ``AssertionError`` (or ends in ``RuntimeStalled``, for the deadlocks) exactly when
the bug manifests.  Most programs are plain asyncio (``body()``, no argument) wrapped into a
``main(context)``, so other harnesses (detangle, in ``bench_bugs.py``) run the very same
code; the network and storage ones need our ``Context`` and have no ``body``.

Depth is the PCT bug depth (Burckhardt et al., ASPLOS 2010): the number of ordering
constraints a schedule must meet for the bug to show, counting only constraints that are
not already forced by synchronisation or program order.  For a priority scheduler, a
depth-d bug needs a suitable initial priority order plus d-1 priority change points.

Most programs are *correct under the canonical schedule* (asyncio's FIFO order: ready
callbacks run in the order they became ready), and every such program is offset so that a
schedule that advances every task one step per round (whatever the order inside a round)
cannot reach the bug either: the bug needs a task to be *held back* (or run ahead) for many
steps.  ``fifo_reachable`` is True only for a program whose bug stock asyncio can hit under
some timing (e.g. a timer that fires late).

Conventions: ``await asyncio.sleep(0)`` is a yield point (``steps(n)`` is n of them); every
task a program creates is awaited, so its failure reaches ``main``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from commonware_runtime import deterministic

__all__ = ["BUGS", "Bug", "by_name", "steps"]


@dataclass(frozen=True)
class Bug:
    """One buggy program.  ``execute(config)`` runs it once and raises when the bug shows."""

    name: str
    kind: str
    depth: int
    main: Callable[[Any], Awaitable[Any]]
    description: str
    fifo_reachable: bool
    depth_reason: str = ""
    #: The plain-asyncio program (no argument) ``main`` runs, for other harnesses; None when
    #: the program needs the runtime's Context (simulated network or storage).
    body: Callable[[], Awaitable[Any]] | None = None
    #: A custom harness: ``run(config)`` runs the program once and raises on the bug
    #: (default: ``deterministic.Runner(config).start(main)``).
    run: Callable[[deterministic.Config], Any] | None = None
    #: SimConfig options a detangle port needs (e.g. timer jitter for a timer race).
    detangle_options: dict[str, Any] = field(default_factory=dict)

    def execute(self, config: deterministic.Config) -> Any:
        if self.run is not None:
            return self.run(config)
        return deterministic.Runner(config).start(self.main)


async def steps(n: int) -> None:
    """``n`` yield points: e.g. a computation or a fast I/O round-trip."""
    for _ in range(n):
        await asyncio.sleep(0)


def _on_context(body: Callable[[], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    async def main(context: Any) -> Any:
        return await body()

    main.__name__ = main.__qualname__ = f"main_{body.__name__}"
    return main


# ---------------------------------------------------------------------------------------------
# lost update


async def lost_update() -> None:
    """Two workers increment a shared counter with a read-yield-write.  They are phased so
    that under FIFO one's write always lands before the other's read (worker 1 starts a step
    later and both pause between increments), but the phases touch: in every round where one
    writes the other reads, so running the reader first in that round loses an update."""
    state = {"n": 0}

    async def worker(delay: int) -> None:
        await steps(delay)
        for _ in range(3):
            value = state["n"]
            await asyncio.sleep(0)  # e.g. a round-trip to a store
            state["n"] = value + 1
            await steps(3)

    await asyncio.gather(worker(0), worker(1))
    assert state["n"] == 6, f"lost update: the counter is {state['n']}, expected 6"


# ---------------------------------------------------------------------------------------------
# check-then-act


async def check_then_act() -> None:
    """Two requests for one key; the cache is checked, then filled after a slow load.  Under
    FIFO the second request comes 8 steps later and finds the value; if it checks while the
    first is loading, the value is loaded twice."""
    cache: dict[str, str] = {}
    loads: list[str] = []

    async def get(key: str, delay: int) -> str:
        await steps(delay)
        if key not in cache:  # check ...
            loads.append(key)
            await steps(3)  # load from the backend
            cache[key] = "value"  # ... then act
        return cache[key]

    await asyncio.gather(get("k", 0), get("k", 8))
    assert len(loads) == 1, f"the value was loaded {len(loads)} times"


# ---------------------------------------------------------------------------------------------
# atomicity violations


async def atomicity_d1() -> None:
    """``main`` snapshots the configuration, then builds a request from it over 5 steps; a
    hot reload bumps the version 8 steps after it starts.  Under FIFO the request is done
    first; if the reloader runs ahead, the request is built from a stale snapshot."""
    config = {"version": 1}

    async def reloader() -> None:
        await steps(8)
        config["version"] = 2

    task = asyncio.create_task(reloader())
    snapshot = config["version"]  # read (before the reloader has run at all)
    await steps(5)  # build the request
    assert config["version"] == snapshot, "request built from a stale configuration snapshot"
    await task


async def atomicity_d2() -> None:
    """A reader takes ``len(items)`` and then walks the list one element per step; a remover
    pops an element.  Under FIFO the pop is long done when the reader starts (step 3 against
    step 9); if the reader runs ahead and is preempted inside its walk, it reads past the end."""
    items = list(range(4))

    async def reader() -> None:
        await steps(8)
        n = len(items)
        for i in range(n):
            await asyncio.sleep(0)
            assert i < len(items), "the list shrank while it was being walked"

    async def remover() -> None:
        await steps(2)
        items.pop()

    await asyncio.gather(reader(), remover())


async def atomicity_d3() -> None:
    """A client submits a request and, when its wait times out, cancels it, freeing its buffer
    if the server is already processing it; the server takes the request and fills the buffer
    one step later.  The server's take-and-fill must be atomic with respect to the cancel.
    Under FIFO the server is done (step 4) long before the time-out (step 11)."""
    req = {"state": "idle", "freed": False}

    async def client() -> None:
        req["state"] = "queued"  # a1: submit
        await steps(10)  # wait for the reply ... time out
        if req["state"] == "queued":
            req["state"] = "cancelled"  # never taken: just withdraw it
        elif req["state"] == "processing":  # a2: in flight: free its buffer (the bug)
            req["freed"] = True

    async def server() -> None:
        await steps(2)
        if req["state"] == "queued":  # b1: take the request
            req["state"] = "processing"
            await asyncio.sleep(0)
            assert not req["freed"], "the server filled a buffer the client had freed"  # b2
            req["state"] = "done"

    await asyncio.gather(client(), server())


# ---------------------------------------------------------------------------------------------
# order violations


async def order_violation_d1() -> None:
    """Use before initialisation: the database connects after 10 steps, the first request
    comes after 15.  The request handler must not run 5+ steps ahead of the initialiser."""
    service: dict[str, str | None] = {"db": None}

    async def init() -> None:
        await steps(10)  # connect
        service["db"] = "connection"

    async def handler() -> None:
        await steps(15)  # the first request arrives
        assert service["db"] is not None, "request served before the database was initialised"

    await asyncio.gather(init(), handler())


async def order_violation_d2() -> None:
    """Two-phase initialisation observed between its phases: ``connected`` is set at step 3,
    ``schema`` at step 13; a client checks the wrong flag at step 16.  The client must run
    after phase 1 and before phase 2."""
    st = {"connected": False, "schema": False}

    async def init() -> None:
        await steps(2)
        st["connected"] = True  # phase 1
        await steps(10)
        st["schema"] = True  # phase 2

    async def client() -> None:
        await steps(15)
        if st["connected"]:  # checks the wrong flag
            assert st["schema"], "query ran on a connected database that has no schema yet"

    await asyncio.gather(init(), client())


async def order_violation_d3() -> None:
    """Three long tasks: two replicas each rotate their key once (a 4-step window, at steps
    2-5 and 7-10) and a quorum reader reads at step 13.  The read must come after (or before)
    each rotation; it fails only when it lands inside both windows: both replicas held back
    mid-rotation while the reader runs ahead."""
    rotating = [False, False]

    async def replica(i: int, delay: int) -> None:
        await steps(delay)
        rotating[i] = True  # rotation starts
        await steps(4)
        rotating[i] = False  # rotation ends

    async def reader() -> None:
        await steps(12)
        assert not all(rotating), "quorum read while both replicas were rotating their keys"

    await asyncio.gather(replica(0, 1), replica(1, 6), reader())


# ---------------------------------------------------------------------------------------------
# deadlocks


async def deadlock_narrow() -> None:
    """Lock-order inversion.  The writer takes ``index`` then ``accounts`` right away; the
    compactor takes ``accounts`` then ``index`` after 20 steps of other work.  Under FIFO the
    writer is long done; the deadlock needs the writer held exactly between its two
    acquisitions while the compactor runs its 20 steps (or the mirror image)."""
    accounts, index = asyncio.Lock(), asyncio.Lock()

    # acquire/release without ``async with``: a deadlocked coroutine abandoned by the runner
    # has nothing to release when it is garbage collected.
    async def compactor() -> None:
        await steps(20)
        await accounts.acquire()
        await asyncio.sleep(0)
        await index.acquire()
        index.release()
        accounts.release()

    async def writer() -> None:
        await index.acquire()
        await asyncio.sleep(0)
        await accounts.acquire()
        accounts.release()
        index.release()

    await asyncio.gather(compactor(), writer())


async def lost_wakeup() -> None:
    """The consumer checks ``ready``, logs, then clears the event and waits on it; the
    producer sets ``ready`` and the event at step 4.  Under FIFO the consumer checks at step 7
    and sees ``ready``; a set() between its check and its clear() is lost and it waits
    forever (the run stalls)."""
    st = {"ready": False}
    event = asyncio.Event()

    async def consumer() -> None:
        await steps(6)
        if not st["ready"]:  # check ...
            await asyncio.sleep(0)  # (log "waiting")
            event.clear()  # ... clear: a set() in between is lost
            await event.wait()

    async def producer() -> None:
        await steps(3)
        st["ready"] = True
        event.set()

    await asyncio.gather(consumer(), producer())


# ---------------------------------------------------------------------------------------------
# invariants, starvation, queues


async def invariant_auditor() -> None:
    """A mover moves 10 units from ``a`` to ``b`` across one await, once, at step 38 of 60; an
    auditor checks ``a + b == 100`` every 3 steps.  Under FIFO (and under any lockstep order)
    no audit lands in the one broken step; the auditor must be shifted against the mover."""
    ledger = {"a": 60, "b": 40}

    async def mover() -> None:
        for i in range(60):
            if i == 37:
                ledger["a"] -= 10
                await asyncio.sleep(0)  # money in flight for one step
                ledger["b"] += 10
            await asyncio.sleep(0)

    async def auditor() -> None:
        for _ in range(20):
            assert ledger["a"] + ledger["b"] == 100, "the audit saw money in flight"
            await steps(3)

    await asyncio.gather(mover(), auditor())


async def starvation_window() -> None:
    """A heartbeat task beats once a step, 40 times; the worker's watchdog, armed while the
    worker is between its steps 20 and 30, fires when the heartbeat has fallen more than 6
    beats behind the worker.  Under FIFO it is never behind by more than one; the heartbeat
    must be starved (a heartbeat that runs ahead is fine)."""
    beats = {"n": 0}

    async def heartbeat() -> None:
        for _ in range(40):
            beats["n"] += 1
            await asyncio.sleep(0)

    async def worker() -> None:
        for n in range(1, 41):
            if 20 <= n <= 30:
                assert n - beats["n"] <= 6, f"heartbeat starved: {beats['n']} beats at worker step {n}"
            await asyncio.sleep(0)

    await asyncio.gather(heartbeat(), worker())


async def producer_consumer() -> None:
    """The producer offers 20 items to a queue of 3 with ``put_nowait`` and silently drops
    an item when the queue is full; the consumer takes one item per step.  Under FIFO the
    queue never holds more than one item; a consumer held back for 3+ steps loses items."""
    queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=3)
    got: list[int] = []

    async def producer() -> None:
        for i in range(20):
            try:
                queue.put_nowait(i)
            except asyncio.QueueFull:
                pass  # the bug: the item is dropped
            await asyncio.sleep(0)
        await queue.put(None)

    async def consumer() -> None:
        while (item := await queue.get()) is not None:
            got.append(item)
            await asyncio.sleep(0)

    await asyncio.gather(producer(), consumer())
    assert got == list(range(20)), f"the consumer got {len(got)} of 20 items"


# ---------------------------------------------------------------------------------------------
# timers


async def timer_race() -> None:
    """A token refresher wakes at 10 ms and needs one more step to store the token; a request
    wakes at 10.5 ms and uses it.  On time, the refresh is done early; if the loop wakes
    late (busy) so that both timers are due together, the request runs between the
    refresher's two steps and uses the old token.  Stock asyncio does this under load."""
    state = {"token": "stale"}

    async def refresher() -> None:
        await asyncio.sleep(0.010)
        await asyncio.sleep(0)  # decode the response
        state["token"] = "fresh"

    async def request() -> None:
        await asyncio.sleep(0.0105)
        assert state["token"] == "fresh", "request sent with the stale token"

    await asyncio.gather(refresher(), request())


# ---------------------------------------------------------------------------------------------
# the simulated network and storage (need the runtime's Context)


async def message_overtaking(context: Any) -> None:
    """A client sends ``create`` on one connection and, 8 steps later, ``update`` on a second
    one; the server handles each connection in its own task and needs 3 steps to apply a
    create.  Nothing orders the two connections: if the create handler is held back, the
    update overtakes the create it depends on."""
    listener = await context.bind(("127.0.0.1", 3000))
    sink1, _stream1 = await context.dial(("127.0.0.1", 3000))
    _, _sink_s1, recv1 = await listener.accept()
    sink2, _stream2 = await context.dial(("127.0.0.1", 3000))
    _, _sink_s2, recv2 = await listener.accept()
    objects: set[bytes] = set()

    async def create_handler() -> None:
        msg = await recv1.recv(8)
        assert msg == b"create:x"
        await steps(3)  # validate and allocate
        objects.add(b"x")

    async def update_handler() -> None:
        msg = await recv2.recv(8)
        assert msg == b"update:x"
        assert b"x" in objects, "the update overtook the create it depends on"

    async def client() -> None:
        await sink1.send(b"create:x")
        await steps(8)  # think time
        await sink2.send(b"update:x")

    await asyncio.gather(create_handler(), update_handler(), client())


CRASH_RECORD = b"record-v1"


async def crash_ordering(context: Any) -> None:
    """A writer appends a record to ``data`` and a header (the record's length) to ``index``,
    then syncs the index *before* the data and updates its cache (2 steps) before syncing the
    data; the power fails 12 steps after the writer starts.  Under FIFO the writer is done by
    then; a crash between the two syncs leaves a header pointing at lost bytes."""

    async def writer(ctx: Any) -> None:
        data, _ = await ctx.open("db", b"data")
        index, _ = await ctx.open("db", b"index")
        await data.write_at(CRASH_RECORD, 0)
        await index.write_at(len(CRASH_RECORD).to_bytes(4, "big"), 0)
        await index.sync()  # the bug: the header is durable before the data it points at
        await steps(2)  # update the in-memory cache
        await data.sync()

    context.spawn(writer)
    await steps(12)  # ... and the power fails


async def crash_ordering_check(context: Any) -> None:
    index, size = await context.open("db", b"index")
    if size < 4:
        return  # nothing committed: a consistent state
    length = int.from_bytes(bytes(await index.read_at(4, 0)), "big")
    data, data_size = await context.open("db", b"data")
    assert data_size >= length, f"the index points at {length} bytes but only {data_size} survived the crash"
    assert bytes(await data.read_at(length, 0)) == CRASH_RECORD, "the index points at a torn record"


def run_crash_ordering(config: deterministic.Config) -> None:
    _, checkpoint = deterministic.Runner(config).start_and_recover(crash_ordering)
    deterministic.Runner.from_checkpoint(checkpoint).start(crash_ordering_check)


# ---------------------------------------------------------------------------------------------
# the corpus


def _portable(body: Callable[[], Awaitable[Any]], kind: str, depth: int, description: str, reason: str,
              fifo_reachable: bool = False, **extra: Any) -> Bug:
    return Bug(
        name=body.__name__, kind=kind, depth=depth, main=_on_context(body), description=description,
        fifo_reachable=fifo_reachable, depth_reason=reason, body=body, **extra,
    )


BUGS: list[Bug] = [
    _portable(lost_update, "lost update", 2,
              "Two phased workers increment a counter with read-yield-write; one round's reorder loses an update.",
              "one worker's read before the other's write, and the other's read before that write"),
    _portable(check_then_act, "check-then-act", 2,
              "A cache checked, then filled after a slow load: a second request inside the load loads again.",
              "the second request runs 5+ steps ahead to its check, and that check falls inside the first's load"),
    _portable(atomicity_d1, "atomicity violation", 1,
              "A request built from a config snapshot while a hot reload, running ahead, bumps the version.",
              "the read is forced first by program order; only the reload must precede the use"),
    _portable(atomicity_d2, "atomicity violation", 2,
              "A list walked after taking its length, while a remover pops an element.",
              "the reader's len() before the pop (reader 6+ steps ahead), the pop before the reader's last access"),
    _portable(atomicity_d3, "atomicity violation", 3,
              "A cancel frees the buffer of a request the server has taken but not yet filled.",
              "submit before take, take before the cancel (client held back), cancel before the fill (server held back)"),
    _portable(order_violation_d1, "order violation", 1,
              "A request handler runs ahead of the initialiser and uses the database before it is set.",
              "the handler's use before the initialiser's store (handler 5+ steps ahead)"),
    _portable(order_violation_d2, "order violation", 2,
              "A client checks the wrong flag of a two-phase init and queries between the phases.",
              "phase 1 before the client's check, the check before phase 2 (initialiser held back mid-way)"),
    _portable(order_violation_d3, "order violation", 3,
              "A quorum read lands inside the rotation windows of both replicas.",
              "each replica held back inside its rotation window, the reader's read inside both"),
    _portable(deadlock_narrow, "deadlock", 2,
              "Lock-order inversion whose window opens only after 20 steps of the compactor.",
              "writer's first acquire before the compactor's, compactor's first before the writer's second"),
    _portable(lost_wakeup, "lost wakeup (deadlock)", 2,
              "An event set between the consumer's check and its clear() is lost; the consumer waits forever.",
              "the consumer's check before the set (consumer 3+ steps ahead), the set before its clear"),
    _portable(invariant_auditor, "invariant violation", 2,
              "An auditor checks a + b == 100 during the one step in 60 where money is in flight.",
              "the mover's break before an audit, that audit before the mover's repair one step later"),
    _portable(starvation_window, "starvation", 1,
              "The heartbeat starved for 6+ worker steps while the watchdog is armed.",
              "6+ worker steps inside its steps 20-30 before the heartbeat's next step"),
    _portable(producer_consumer, "producer/consumer drops", 1,
              "A producer drops items on a full queue when the consumer is held back.",
              "3+ producer offers before the consumer's next take"),
    _portable(timer_race, "timer race", 1,
              "A late wake-up makes two timers due together; the request uses the token before its refresh.",
              "the request's wake-up before the refresher's second step (a late wake-up makes both due)",
              fifo_reachable=True, detangle_options={"timer_jitter": 0.002}),
    Bug("message_overtaking", "message overtaking", 1, message_overtaking,
        "A create on one connection overtaken by an update on a second connection.", False,
        "the update handler's check before the create handler's store (create handler held back 6+ steps)"),
    Bug("crash_ordering", "crash consistency", 2, crash_ordering,
        "A header synced before the data it points at, then a crash.", False,
        "the index sync before the crash, the crash before the data sync (writer held back between them)",
        run=run_crash_ordering),
]


def by_name(name: str) -> Bug:
    for bug in BUGS:
        if bug.name == name:
            return bug
    raise KeyError(f"no bug named {name!r}; known: {', '.join(b.name for b in BUGS)}")
