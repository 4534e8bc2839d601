"""Plain asyncio code on ``deterministic.EventLoop``: primitives work, on exact virtual time.

The timing model (loop.py docstring): the loop runs in rounds like asyncio's own
``_run_once``; the virtual clock stands still while callbacks are ready and jumps straight
to the next timer when nothing is; a loop that never goes idle sees it move by one ``cycle``
every ``SPIN_ROUNDS`` rounds.  Hence a sleep or timeout wakes its task at exactly its
deadline, and wake-ups through futures (events, queues, joins, gather) cost no time.
The helper ``run`` uses ``strategy="canonical"`` (asyncio's order, timers on time) so the
expected values below are exact.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from commonware_runtime import RuntimeStalled, deterministic

T = TypeVar("T")
C = 0.001  # the default cycle
HOP = 0.0  # what a wake-up through another task's future costs: nothing (the clock moves only when idle)
EXACT = 1e-9


def run(main: Callable[[], Awaitable[T]], seed: int = 7, **kw: Any) -> T:
    """Run ``main()`` under ``asyncio.Runner`` on a deterministic loop (by default asyncio's
    own order with timers on time, so the times below are exact)."""
    kw.setdefault("strategy", "canonical")
    with asyncio.Runner(loop_factory=lambda: deterministic.EventLoop(seed=seed, **kw)) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def now() -> float:
    return asyncio.get_running_loop().time()


def approx(value: float) -> Any:
    return pytest.approx(value, abs=EXACT)


# -- the loop itself ------------------------------------------------------------------------


def test_is_a_real_asyncio_loop() -> None:
    loop = deterministic.EventLoop(seed=1)
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert loop.time() == 0.0

        async def main() -> tuple[Any, float]:
            return asyncio.get_running_loop(), now()

        running, t = loop.run_until_complete(main())
        assert running is loop and t == 0.0
    finally:
        loop.close()


def test_runner_loop_factory_and_run_until_complete() -> None:
    async def main() -> str:
        await asyncio.sleep(0.5)
        return f"{now():.3f}"

    assert run(main) == "0.500"
    loop = deterministic.EventLoop(seed=3)
    try:
        assert loop.run_until_complete(main()) == "0.500"
        # The clock goes on across calls on the same loop: the first run's completion
        # callback costs a hop and the new task's first step a cycle.
        assert loop.run_until_complete(main()) == f"{0.5 + 2 * HOP + 0.5:.3f}"
    finally:
        loop.close()


def test_sleep_is_exact_and_costs_no_wall_time() -> None:
    async def main() -> list[float]:
        times = [now()]
        await asyncio.sleep(3600)
        times.append(now())
        await asyncio.sleep(0.25)
        times.append(now())
        await asyncio.sleep(0)  # one round
        times.append(now())
        await asyncio.sleep(1e6)
        times.append(now())
        return times

    start = time.monotonic()
    times = run(main)
    assert time.monotonic() - start < 0.5
    assert times == [0.0, 3600.0, approx(3600.25), approx(3600.25 + HOP), approx(1e6 + 3600.25 + HOP)]


def test_busy_loop_moves_the_clock_by_one_cycle_every_spin_rounds() -> None:
    from commonware_runtime.deterministic.loop import SPIN_ROUNDS

    async def main() -> float:
        for _ in range(10 * SPIN_ROUNDS):
            await asyncio.sleep(0)
        return now()

    assert run(main, cycle=0.005) == approx(10 * 0.005)
    assert run(main) == approx(10 * C)


def test_a_loop_polling_the_clock_ends() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.5
        while loop.time() < deadline:
            await asyncio.sleep(0)
        return now()

    for ordering in ("fifo", "any"):
        assert run(main, ordering=ordering) == approx(0.5)


def test_call_later_order_and_times() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []

        def record(name: str) -> None:
            fired.append((name, loop.time()))

        loop.call_later(0.3, record, "c")
        loop.call_later(0.1, record, "a")
        loop.call_later(0.2, record, "b")
        loop.call_later(0.1, record, "a2")  # same deadline: creation order
        loop.call_at(0.15, record, "at")
        cancelled = loop.call_later(0.05, record, "never")
        cancelled.cancel()
        await asyncio.sleep(1.0)
        return fired

    assert run(main) == [
        ("a", approx(0.1)),
        ("a2", approx(0.1)),
        ("at", approx(0.15)),
        ("b", approx(0.2)),
        ("c", approx(0.3)),
    ]


def test_call_soon_order_is_seeded() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        order: list[int] = []
        for i in range(8):
            loop.call_soon(order.append, i)
        await asyncio.sleep(0.01)
        return order

    orders = {seed: run(main, seed=seed, ordering="any", strategy="random") for seed in range(10)}
    for seed, order in orders.items():
        assert sorted(order) == list(range(8))
        assert run(main, seed=seed, ordering="any", strategy="random") == order  # same seed, same order
    assert len({tuple(o) for o in orders.values()}) > 1  # the seed chooses among ready callbacks
    # ordering="fifo" (the loop's default): registration order, as asyncio documents, on every seed
    assert {tuple(run(main, seed=seed, strategy="random")) for seed in range(10)} == {tuple(range(8))}


def test_task_start_and_join_cost_one_cycle_each() -> None:
    async def main() -> list[float]:
        started: list[float] = []

        async def child() -> str:
            started.append(now())
            await asyncio.sleep(1.0)
            return "child"

        task = asyncio.create_task(child())
        assert await task == "child"
        return [started[0], now()]

    # Created at 0, first step at HOP, sleeps until 1 + HOP, the join hop resumes main at 1 + 2C.
    assert run(main) == [approx(HOP), approx(1.0 + 2 * HOP)]


# -- primitives ---------------------------------------------------------------------------


def test_event() -> None:
    async def main() -> list[float]:
        event = asyncio.Event()
        woke: list[float] = []

        async def waiter() -> None:
            await event.wait()
            woke.append(now())

        tasks = [asyncio.create_task(waiter()) for _ in range(3)]
        await asyncio.sleep(0.5)
        event.set()
        await asyncio.gather(*tasks)
        return [*woke, now()]

    # set() at 0.5 wakes every waiter one hop later; gather adds two hops after the last.
    assert run(main) == [approx(0.5 + HOP)] * 3 + [approx(0.5 + 3 * HOP)]


def test_queue() -> None:
    async def main() -> list[tuple[int, float]]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        got: list[tuple[int, float]] = []

        async def consumer() -> None:
            for _ in range(3):
                got.append((await queue.get(), now()))
                queue.task_done()

        task = asyncio.create_task(consumer())
        await asyncio.sleep(0.01)  # the consumer is now blocked in get()
        for item in range(3):
            await queue.put(item)
            await asyncio.sleep(0.1)
        await queue.join()
        await task
        return got

    assert run(main) == [(0, approx(0.01)), (1, approx(0.11)), (2, approx(0.21))]


def test_bounded_queue_backpressure() -> None:
    async def main() -> list[float]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        put_times: list[float] = []

        async def producer() -> None:
            for item in range(3):
                await queue.put(item)
                put_times.append(now())

        task = asyncio.create_task(producer())
        await asyncio.sleep(1.0)
        # Only the first put completed; the second waits for room.
        assert put_times == [approx(HOP)]
        assert await queue.get() == 0
        await asyncio.sleep(1.0)
        assert await queue.get() == 1
        assert await queue.get() == 2
        await task
        return put_times

    # get() at 1.0 frees room: the producer's put resumes at 1 + HOP; likewise at 2.0.
    assert run(main) == [approx(HOP), approx(1.0 + HOP), approx(2.0 + HOP)]


def test_lock() -> None:
    async def main() -> list[float]:
        lock = asyncio.Lock()
        acquired: list[float] = []

        async def contender() -> None:
            async with lock:
                acquired.append(now())

        await lock.acquire()
        task = asyncio.create_task(contender())
        await asyncio.sleep(1.0)
        assert acquired == [] and lock.locked()
        lock.release()
        await task
        return [acquired[0], now()]

    assert run(main) == [approx(1.0 + HOP), approx(1.0 + 2 * HOP)]


def test_semaphore() -> None:
    async def main() -> tuple[list[float], float]:
        semaphore = asyncio.Semaphore(2)
        starts: list[float] = []

        async def worker() -> None:
            async with semaphore:
                starts.append(now())
                await asyncio.sleep(1.0)

        await asyncio.gather(*(worker() for _ in range(4)))
        return starts, now()

    starts, end = run(main)
    # Two enter at HOP; they leave at 1 + HOP, and the other two enter one hop later.
    assert starts == [approx(HOP), approx(HOP), approx(1.0 + 2 * HOP), approx(1.0 + 2 * HOP)]
    assert end == approx(2.0 + 4 * HOP)


def test_condition() -> None:
    async def main() -> list[Any]:
        condition = asyncio.Condition()
        items: list[int] = []
        seen: list[Any] = []

        async def consumer() -> None:
            async with condition:
                await condition.wait_for(lambda: bool(items))
                seen.append((items[0], now()))

        task = asyncio.create_task(consumer())
        await asyncio.sleep(0.5)
        async with condition:
            items.append(42)
            condition.notify()
        await task
        return seen

    assert run(main) == [(42, approx(0.5 + HOP))]


def test_gather() -> None:
    async def main() -> tuple[list[str], float]:
        values = await asyncio.gather(asyncio.sleep(1.0, "a"), asyncio.sleep(2.0, "b"), asyncio.sleep(0.5, "c"))
        return values, now()

    values, end = run(main)
    assert values == ["a", "b", "c"]
    assert end == approx(2.0 + 3 * HOP)


def test_gather_exceptions() -> None:
    async def main() -> list[Any]:
        async def fails() -> None:
            await asyncio.sleep(0.1)
            raise ValueError("bad")

        results = await asyncio.gather(fails(), asyncio.sleep(0.2, "ok"), return_exceptions=True)
        with pytest.raises(ValueError):
            await asyncio.gather(fails(), asyncio.sleep(0.2))
        return results

    results = run(main)
    assert isinstance(results[0], ValueError) and results[1] == "ok"


def test_wait() -> None:
    async def main() -> list[Any]:
        slow = asyncio.create_task(asyncio.sleep(2.0, "slow"))
        fast = asyncio.create_task(asyncio.sleep(1.0, "fast"))
        done, pending = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
        first = (sorted(t.result() for t in done), now())
        done, pending = await asyncio.wait({slow}, timeout=0.25)
        timed_out = (len(done), len(pending), now())
        done, pending = await asyncio.wait({slow})
        return [first, timed_out, (len(done), now())]

    first, timed_out, last = run(main)
    # fast finishes at 1 + HOP; wait's done-callback runs a hop later and wakes main a hop after.
    assert first == (["fast"], approx(1.0 + 3 * HOP))
    # A timeout wakes main exactly at its deadline.
    assert timed_out == (0, 1, approx(1.25 + 3 * HOP))
    assert last == (1, approx(2.0 + 3 * HOP))


def test_wait_for() -> None:
    async def main() -> list[Any]:
        value = await asyncio.wait_for(asyncio.sleep(0.2, "value"), timeout=1.0)
        after_value = now()
        start = now()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), timeout=0.5)
        return [value, after_value, now() - start]

    value, after_value, timed_out = run(main)
    assert value == "value"
    # On 3.11 wait_for wraps the coroutine in a task and waits through a done-callback
    # (hops of one cycle each) and, on timeout, for the inner task's cancellation; from
    # 3.12 it awaits the coroutine under asyncio.timeout, which is exact.
    if sys.version_info < (3, 12):
        assert after_value == approx(0.2 + 3 * HOP)
        assert timed_out == approx(0.5 + 3 * HOP)
    else:
        assert after_value == approx(0.2)
        assert timed_out == approx(0.5)


def test_timeout_context_manager() -> None:
    async def main() -> list[float]:
        times = []
        start = now()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.25):
                await asyncio.sleep(10)
        times.append(now() - start)
        start = now()
        async with asyncio.timeout(1.0):
            await asyncio.sleep(0.5)
        times.append(now() - start)
        start = now()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout_at(now() + 0.125):
                await asyncio.Event().wait()
        times.append(now() - start)
        return times

    # A timeout cancels its own task at the deadline: no hop.
    assert run(main) == [approx(0.25), approx(0.5), approx(0.125)]


def test_task_group() -> None:
    async def main() -> tuple[list[str], float]:
        async with asyncio.TaskGroup() as group:
            a = group.create_task(asyncio.sleep(1.0, "a"))
            b = group.create_task(asyncio.sleep(2.0, "b"))
        return [a.result(), b.result()], now()

    values, end = run(main)
    assert values == ["a", "b"]
    assert end == approx(2.0 + 3 * HOP)


def test_task_group_failure_cancels_siblings() -> None:
    async def main() -> tuple[list[str], float]:
        cancelled: list[str] = []

        async def sibling() -> None:
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                cancelled.append("sibling")
                raise

        async def fails() -> None:
            await asyncio.sleep(1.0)
            raise ValueError("group member failed")

        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as group:
                group.create_task(sibling())
                group.create_task(fails())
        assert [type(e) for e in info.value.exceptions] == [ValueError]
        return cancelled, now()

    cancelled, end = run(main)
    assert cancelled == ["sibling"]
    assert end == approx(1.0)


def test_cancellation() -> None:
    async def main() -> list[Any]:
        async def sleeper() -> None:
            await asyncio.sleep(100)

        task = asyncio.create_task(sleeper())
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [task.cancelled(), now()]

    assert run(main) == [True, approx(1.0 + 2 * HOP)]


def test_shield() -> None:
    async def main() -> list[Any]:
        inner = asyncio.create_task(asyncio.sleep(1.0, "inner"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await asyncio.shield(inner)
        return [await inner, inner.cancelled()]

    assert run(main) == ["inner", False]


def test_run_in_executor_runs_at_the_call() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        main_thread = threading.get_ident()
        calls: list[int] = []

        def work(x: int) -> tuple[int, bool]:
            calls.append(x)
            return x * 2, threading.get_ident() == main_thread

        future = loop.run_in_executor(None, work, 21)
        assert calls == [21]  # at the call, the loop waiting: ordered deterministically
        value = await future
        to_thread = await asyncio.to_thread(work, 5)

        def fails() -> None:
            raise KeyError("executor")

        with pytest.raises(KeyError):
            await loop.run_in_executor(None, fails)
        # In a helper thread (bounded by blocking_timeout), unless the bound is off: then
        # on the loop's own thread.
        loop.blocking_timeout = None
        inline = await loop.run_in_executor(None, work, 1)
        return [value, to_thread, inline, now()]

    assert run(main) == [(42, False), (10, False), (2, True), 0.0]


def test_async_generators_and_contextvars() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def main() -> list[Any]:
        async def ticks() -> Any:
            for i in range(3):
                await asyncio.sleep(0.1)
                yield i

        values = [i async for i in ticks()]
        var.set("main")

        async def child() -> str:
            return var.get()

        return [values, await asyncio.create_task(child()), now()]

    assert run(main) == [[0, 1, 2], "main", approx(0.3 + 2 * HOP)]


def test_same_seed_same_interleaving() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def worker(name: str) -> None:
            for i in range(5):
                await asyncio.sleep(0)
                log.append(f"{name}{i}")
                await queue.put(name)

        await asyncio.gather(*(worker(n) for n in "abcd"))
        while not queue.empty():
            log.append(queue.get_nowait())
        return log

    for strategy in ("random", "pct", "pos", "swarm"):
        runs = {seed: run(main, seed=seed, ordering="any", strategy=strategy) for seed in range(8)}
        for seed, log in runs.items():
            assert run(main, seed=seed, ordering="any", strategy=strategy) == log
        assert len({tuple(log) for log in runs.values()}) > 1, strategy


# -- what the deterministic loop refuses ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("create_connection", lambda loop: asyncio.open_connection("127.0.0.1", 9)),
        ("create_server", lambda loop: asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)),
        ("subprocess_exec", lambda loop: asyncio.create_subprocess_exec("true")),
        ("subprocess_shell", lambda loop: asyncio.create_subprocess_shell("true")),
        ("getaddrinfo", lambda loop: loop.getaddrinfo("localhost", 80)),
        ("add_reader", lambda loop: loop.add_reader(0, lambda: None)),
        ("add_writer", lambda loop: loop.add_writer(1, lambda: None)),
        ("add_signal_handler", lambda loop: loop.add_signal_handler(signal.SIGUSR1, lambda: None)),
        ("sock_connect", lambda loop: loop.sock_connect(None, ("127.0.0.1", 9))),
        ("create_datagram_endpoint", lambda loop: loop.create_datagram_endpoint(asyncio.DatagramProtocol)),
    ],
)
def test_real_io_is_unsupported(name: str, call: Callable[[Any], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(deterministic.UnsupportedOperation) as info:
            result = call(loop)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result
        assert f"{name}()" in str(info.value)

    run(main)


def test_call_soon_threadsafe_from_another_thread_is_refused() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []

        def other() -> None:
            try:
                loop.call_soon_threadsafe(lambda: None)
            except BaseException as exc:  # noqa: BLE001 - inspected below
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1 and isinstance(errors[0], deterministic.UnsupportedOperation)
        # From the loop's own thread it works.
        done = asyncio.Event()
        loop.call_soon_threadsafe(done.set)
        await done.wait()
        return "ok"

    assert run(main) == "ok"


# -- stalls ----------------------------------------------------------------------------


def test_stalled_program_raises_runtime_stalled() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    start = time.monotonic()
    with pytest.raises(RuntimeStalled) as info:
        run(main)
    assert time.monotonic() - start < 1.0  # detected at once, not by a wall-clock timeout
    message = str(info.value)
    assert "stalled" in message
    assert "wait" in message


def test_stalled_report_uses_asyncio_task_names() -> None:
    async def main() -> None:
        event = asyncio.Event()

        async def waiter() -> None:
            await event.wait()

        await asyncio.create_task(waiter(), name="waiter")

    with pytest.raises(RuntimeStalled) as info:
        run(main)
    assert "'waiter'" in str(info.value)


def test_stalled_report_uses_loop_create_task_names() -> None:
    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        await loop.create_task(queue.get(), name="consumer")

    with pytest.raises(RuntimeStalled) as info:
        run(main)
    message = str(info.value)
    assert "'consumer'" in message
    assert "get" in message


def test_create_task_names_a_task_factory_task() -> None:
    """As BaseEventLoop.create_task (CPython's test_bare_create_named_task on 3.13)."""

    async def noop() -> None:
        pass

    for factory in (lambda loop, coro: asyncio.Task(coro, loop=loop), None):
        loop = deterministic.EventLoop(seed=1)
        try:
            if factory is not None:
                loop.set_task_factory(factory)
            task = loop.create_task(noop(), name="No-op")
            assert task.get_name() == "No-op"
            loop.run_until_complete(task)
        finally:
            loop.close()


def test_polling_the_clock_with_tiny_sleeps_ends() -> None:
    """A positive delay is never 0 ns (found by aiometer's rate limiter: sleep(t - loop.time())
    could round to 0 and spin at one instant forever)."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            target = loop.time() + 1 / 30
            while loop.time() < target:
                await asyncio.sleep(target - loop.time())
        await asyncio.sleep(3e-10)  # under a nanosecond: still moves the clock
        return loop.time()

    for ordering in ("fifo", "any"):
        assert 0.1 <= run(main, ordering=ordering) < 0.1 + 1e-6


# -- what plain asyncio code does on stock asyncio, it does here (found by running a battery on both) --


@pytest.mark.parametrize("ordering", ["fifo", "any"])
def test_awaiting_an_executor_lets_other_tasks_run(ordering: str) -> None:
    # On stock asyncio a worker thread's result arrives by a callback: the await suspends.
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def stopper() -> None:
            await asyncio.sleep(0)
            stop.set()

        task = asyncio.create_task(stopper())
        calls = 0
        while not stop.is_set():
            calls += await loop.run_in_executor(None, lambda: 1)
            if calls > 1000:
                raise AssertionError("the executor loop starved the other task")
        await task
        return calls

    for seed in range(5):
        assert run(main, seed=seed, ordering=ordering) >= 1


def test_infinite_delays_never_fire_and_cancel_cleanly() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        seen = []
        sleeper = asyncio.create_task(asyncio.sleep(math.inf))
        await asyncio.sleep(1)
        sleeper.cancel()
        try:
            await sleeper
        except asyncio.CancelledError:
            seen.append("sleep(inf) cancelled")
        seen.append(await asyncio.wait_for(asyncio.sleep(2, "waited"), math.inf))
        async with asyncio.timeout(math.inf):
            await asyncio.sleep(1)
        seen.append("timeout(inf)")
        handle = loop.call_at(math.inf, seen.append, "never")
        handle.cancel()
        loop.call_later(math.inf, seen.append, "never either")
        await asyncio.sleep(5)
        return seen

    assert run(main) == ["sleep(inf) cancelled", "waited", "timeout(inf)"]


def test_waiting_only_for_infinity_is_a_stall() -> None:
    async def main() -> None:
        await asyncio.sleep(math.inf)

    with pytest.raises(RuntimeStalled):
        run(main)


def test_negative_delays_are_due_before_zero_ones() -> None:
    loop = deterministic.EventLoop(seed=1)
    try:
        seen: list[str] = []
        loop.call_later(0, seen.append, "zero")
        loop.call_later(-1, seen.append, "negative")
        loop.call_at(loop.time() - 0.5, seen.append, "past")
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == ["negative", "past", "zero"]
    finally:
        loop.close()


@pytest.mark.parametrize("ordering", ["fifo", "any"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_in_a_callback_leaves_the_rest_of_its_round_queued(ordering: str, exc: type) -> None:
    loop = deterministic.EventLoop(seed=3, ordering=ordering)
    try:
        seen: list[str] = []

        def boom() -> None:
            seen.append("boom")
            raise exc

        loop.call_soon(boom)
        for name in ("a", "b", "c"):
            loop.call_soon(seen.append, name)
        loop.call_soon(loop.stop)
        with pytest.raises(exc):
            loop.run_forever()
        if "a" not in seen or "b" not in seen or "c" not in seen:
            loop.run_forever()  # what had not run yet runs now, as on asyncio
        assert sorted(seen) == ["a", "b", "boom", "c"]
    finally:
        loop.close()


def test_stop_before_run_forever_polls_once_without_waiting_for_timers() -> None:
    loop = deterministic.EventLoop(seed=1)
    try:
        seen: list[str] = []
        loop.call_later(0.05, seen.append, "timer")
        loop.stop()
        loop.run_forever()  # nothing ready: one poll, which finds the timer not due
        assert seen == [] and loop.time() == 0.0
        loop.call_later(0.1, loop.stop)
        loop.run_forever()
        assert seen == ["timer"]
    finally:
        loop.close()


def test_tasks_read_as_asyncios_own() -> None:
    async def main() -> str:
        task = asyncio.create_task(asyncio.sleep(0))
        await task
        return repr(task)

    assert run(main).startswith("<Task finished ")


def test_debug_mode_refuses_coroutine_functions_as_timer_callbacks() -> None:
    async def coroutine_function() -> None:
        pass

    loop = deterministic.EventLoop(seed=1)
    loop.set_debug(True)
    try:
        for schedule in (lambda: loop.call_later(1, coroutine_function), lambda: loop.call_at(1, coroutine_function)):
            with pytest.raises(TypeError, match="coroutines cannot be used"):
                schedule()
    finally:
        loop.close()


def test_an_interrupt_among_timers_that_look_alike_runs_each_once() -> None:
    # TimerHandles with the same time, callback and arguments compare equal: the round must
    # find the one that raised by identity.
    loop = deterministic.EventLoop(seed=1)
    try:
        calls: list[str] = []

        def cb(name: str) -> None:
            calls.append(name)
            if len(calls) == 2:
                raise KeyboardInterrupt

        when = loop.time() + 1.0
        for name in ("x", "x", "y"):
            loop.call_at(when, cb, name)
        loop.call_at(when + 1, loop.stop)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        loop.run_forever()
        assert calls == ["x", "x", "y"]
    finally:
        loop.close()
