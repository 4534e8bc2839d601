"""The shared runtime contract (SPEC sections 2 and 3), checked on every runtime.

A port of commonware-runtime's shared runtime tests: each test runs a full Runner of the
parametrized runtime (``runner_factory``), so the same protocol code is exercised on the
deterministic simulation and on real asyncio/TCP/files.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import os
import socket
import time
import warnings
from datetime import timedelta
from typing import Any

import pytest
from commonware_runtime import (
    BindFailed,
    BlobInsufficientLength,
    BlobMissing,
    BlobSyncFailed,
    Closed,
    ConnectionFailed,
    Error,
    Exited,
    OffsetOverflow,
    PartitionMissing,
    PartitionNameInvalid,
    RecvFailed,
    Signaler,
    Timeout,
    reschedule,
)
from prometheus_client import Counter, Gauge, Histogram

LOCALHOST = "127.0.0.1"

# Aborting a task before its first step currently leaves its coroutine never awaited (a
# library bug pinned by test_abort_before_first_step_leaves_no_warning below); keep that
# noise out of the other tests' summaries.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")


# -- helpers ---------------------------------------------------------------------------


async def forever(ctx: Any) -> None:
    await ctx.sleep(1_000_000)


def unused_port() -> int:
    """A port nobody listens on (the OS hands out a free one; we release it at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


async def wait_until(ctx: Any, predicate: Any, what: str, limit: int = 2000) -> None:
    """Poll ``predicate`` with short sleeps (bounded), for conditions with no awaitable."""
    for _ in range(limit):
        if predicate():
            return
        await ctx.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


# -- runner and root -------------------------------------------------------------------


def test_root_return_value(runner_factory: Any) -> None:
    async def main(ctx: Any) -> tuple[str, int]:
        return ("done", 42)

    assert runner_factory.run(main) == ("done", 42)


def test_root_exception_propagates(runner_factory: Any) -> None:
    class Boom(Exception):
        pass

    async def main(ctx: Any) -> None:
        await ctx.sleep(0.001)
        raise Boom("root failed")

    with pytest.raises(Boom, match="root failed"):
        runner_factory.run(main)
    # Whatever catch_panics says, the root's own exception is not swallowed.
    with pytest.raises(Boom):
        runner_factory.run(main, catch_panics=True)


def test_runner_is_used_once(runner_factory: Any) -> None:
    async def main(ctx: Any) -> int:
        return 1

    runner = runner_factory()
    assert runner.start(main) == 1
    with pytest.raises(RuntimeError):
        runner.start(main)


def test_start_cancels_tasks_still_running(runner_factory: Any) -> None:
    cancelled: list[str] = []

    async def lingering(ctx: Any) -> None:
        try:
            await ctx.sleep(1_000)
        except asyncio.CancelledError:
            cancelled.append("lingering")
            raise

    async def main(ctx: Any) -> str:
        ctx.spawn(lingering)
        await ctx.sleep(0.01)
        return "root"

    assert runner_factory.run(main) == "root"
    assert cancelled == ["lingering"]


class EndOfRun:
    """What a run leaves for the garbage collector: ``check()`` collects and asserts that
    nothing was printed to stderr (Python's default unraisable hook, reinstated here because
    pytest's own would turn it into a warning), logged by asyncio or the runtime, or warned."""

    NOISE = ("Exception ignored", "Task was destroyed but it is pending", "was never awaited")

    def __init__(self, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
        self._capfd = capfd
        self._caplog = caplog

    def check(self) -> None:
        import sys
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            previous = sys.unraisablehook
            sys.unraisablehook = sys.__unraisablehook__
            try:
                gc.collect()
            finally:
                sys.unraisablehook = previous
        err = self._capfd.readouterr().err
        logged = [r.getMessage() for r in self._caplog.records if r.name == "asyncio"]
        assert [word for word in self.NOISE if word in err] == [], err
        assert logged == []
        assert [str(w.message) for w in caught] == []


@pytest.fixture
def end_of_run(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> EndOfRun:
    gc.collect()  # what earlier tests left is not this test's
    capfd.readouterr()
    return EndOfRun(capfd, caplog)


def _noted(coroutine_function: Any, coros: list[Any]) -> Any:
    """A spawnable running ``coroutine_function()``, its coroutine kept in ``coros``."""

    def spawnable(ctx: Any) -> Any:
        coro = coroutine_function()
        coros.append(coro)
        return coro

    return spawnable


def blocked_forever(events: list[str], coros: list[Any]) -> Any:
    """A spawnable that waits on an Event nobody sets, noting its ``finally``."""

    async def blocked() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            events.append("finally")

    return _noted(blocked, coros)


def swallowing(events: list[str], coros: list[Any]) -> Any:
    """A spawnable that swallows every cancellation (it waits again), noting each one and
    its ``finally``."""

    async def stubborn() -> None:
        try:
            while True:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    events.append("swallowed")
        finally:
            events.append("finally")

    return _noted(stubborn, coros)


def spawning_as_it_unwinds(events: list[str], coros: list[Any]) -> Any:
    """A spawnable that waits forever and, when cancelled, spawns ``blocked_forever``."""

    async def spawner(c: Any) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            c.spawn(blocked_forever(events, coros))

    return spawner


def test_leftover_task_is_unwound_when_root_returns(runner_factory: Any, end_of_run: EndOfRun) -> None:
    events: list[str] = []
    coros: list[Any] = []

    async def main(ctx: Any) -> str:
        ctx.spawn(blocked_forever(events, coros))
        await ctx.sleep(0.01)
        return "root"

    assert runner_factory.run(main) == "root"
    # Unwound before start() returned, not later by the garbage collector.
    assert events == ["finally"]
    assert [c.cr_frame for c in coros] == [None]
    end_of_run.check()


def test_leftover_task_is_unwound_when_root_raises(runner_factory: Any, end_of_run: EndOfRun) -> None:
    events: list[str] = []
    coros: list[Any] = []

    async def main(ctx: Any) -> None:
        ctx.spawn(blocked_forever(events, coros))
        await ctx.sleep(0.01)
        ctx.spawn(blocked_forever(events, coros))  # spawned as the root fails
        raise LookupError("root failed")

    with pytest.raises(LookupError, match="root failed"):
        runner_factory.run(main)
    # The second task may or may not have taken its first step before the run ended: either
    # way its coroutine is closed (a started one ran its finally).
    assert events[:1] == ["finally"]
    assert [c.cr_frame for c in coros] == [None, None]
    end_of_run.check()


def test_leftover_task_that_swallows_cancellation_is_closed(
    runner_factory: Any, end_of_run: EndOfRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    from commonware_runtime import production

    monkeypatch.setattr(production.Runner, "CANCEL_GRACE", 0.05)  # three grace periods, not three seconds
    events: list[str] = []
    coros: list[Any] = []

    async def main(ctx: Any) -> str:
        ctx.spawn(swallowing(events, coros))
        # Unwinding spawns another task: it is ended too, not left behind.
        ctx.spawn(spawning_as_it_unwinds(events, coros))
        await ctx.sleep(0.01)
        return "root"

    assert runner_factory.run(main) == "root"
    assert events.count("finally") == 2 and "swallowed" in events
    assert [c.cr_frame for c in coros] == [None, None]
    end_of_run.check()


def test_runtime_tasks_are_recognised(runner_factory: Any) -> None:
    from commonware_runtime.tasks import is_runtime_task, spawned_awaitable

    given: list[Any] = []

    async def child() -> tuple[bool, bool]:
        me = asyncio.current_task()
        assert me is not None
        return is_runtime_task(me), spawned_awaitable(me) is given[0]

    def spawnable(ctx: Any) -> Any:
        given.append(child())
        return given[0]

    async def plain() -> None:
        await asyncio.sleep(0)

    async def main(ctx: Any) -> tuple[Any, ...]:
        root = asyncio.current_task()
        assert root is not None
        foreign = asyncio.get_running_loop().create_task(plain())
        outcome = (is_runtime_task(root), is_runtime_task(foreign), spawned_awaitable(foreign))
        await foreign
        return outcome + await ctx.spawn(spawnable)

    assert runner_factory.run(main) == (True, False, None, True, True)


# -- spawn family ----------------------------------------------------------------------


def test_spawn_returns_value(runner_factory: Any) -> None:
    async def main(ctx: Any) -> Any:
        async def task(c: Any) -> str:
            await c.sleep(0.001)
            return "value"

        handle = ctx.spawn(task)
        return await handle

    assert runner_factory.run(main) == "value"


def test_spawn_runs_without_await(runner_factory: Any) -> None:
    ran: list[int] = []

    async def main(ctx: Any) -> list[int]:
        async def task(c: Any) -> None:
            ran.append(1)

        handle = ctx.spawn(task)
        del handle  # dropping the handle cancels nothing
        await ctx.sleep(0.01)
        return list(ran)

    assert runner_factory.run(main) == [1]


def test_spawn_gets_its_own_context(runner_factory: Any) -> None:
    async def main(ctx: Any) -> tuple[bool, str]:
        seen: list[Any] = []

        async def task(c: Any) -> None:
            seen.append(c)

        await ctx.with_label("worker").spawn(task)
        return seen[0] is not ctx, seen[0].label

    assert runner_factory.run(main) == (True, "worker")


def test_spawn_rejects_non_callable_and_non_awaitable(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(TypeError):
            ctx.spawn(42)
        with pytest.raises(TypeError):
            ctx.spawn(lambda c: 42)

    runner_factory.run(main)


def test_abort_gives_closed_idempotent_done(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        handle = ctx.spawn(forever)
        await ctx.sleep(0.001)
        assert not handle.done()
        handle.abort()
        assert handle.done()
        handle.abort()  # idempotent
        with pytest.raises(Closed):
            await handle
        with pytest.raises(Closed):  # the outcome is sticky
            await handle

    runner_factory.run(main)


def test_abort_before_first_step(runner_factory: Any) -> None:
    started: list[int] = []

    async def main(ctx: Any) -> None:
        async def task(c: Any) -> None:
            started.append(1)

        handle = ctx.spawn(task)
        handle.abort()
        with pytest.raises(Closed):
            await handle
        await ctx.sleep(0.01)

    runner_factory.run(main)
    assert started == []


def test_abort_before_first_step_leaves_no_warning(runner_factory: Any) -> None:
    import gc
    import warnings

    async def main(ctx: Any) -> None:
        async def task(c: Any) -> None:
            await c.sleep(1)

        handle = ctx.spawn(task)
        handle.abort()
        await ctx.sleep(0.01)

    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner_factory.run(main)
        gc.collect()
    assert [str(w.message) for w in caught] == []


def test_abort_of_finished_task_keeps_value(runner_factory: Any) -> None:
    async def main(ctx: Any) -> int:
        async def task(c: Any) -> int:
            return 5

        handle = ctx.spawn(task)
        value = await handle
        handle.abort()
        assert handle.done()
        return value + await handle

    assert runner_factory.run(main) == 10


def test_spawn_child_aborted_when_parent_finishes(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        async def parent(c: Any) -> Any:
            child = c.spawn_child(forever)
            await c.sleep(0.001)
            assert not child.done()
            return child

        child = await ctx.spawn(parent)
        assert child.done()
        with pytest.raises(Closed):
            await child

    runner_factory.run(main)


def test_spawn_child_aborted_when_parent_aborted(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        children: list[Any] = []

        async def parent(c: Any) -> None:
            children.append(c.spawn_child(forever))
            await forever(c)

        handle = ctx.spawn(parent)
        await ctx.sleep(0.005)
        assert len(children) == 1 and not children[0].done()
        handle.abort()
        with pytest.raises(Closed):
            await children[0]

    runner_factory.run(main)


def test_spawn_child_aborted_when_parent_raises(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        children: list[Any] = []

        async def parent(c: Any) -> None:
            children.append(c.spawn_child(forever))
            await c.sleep(0.001)
            raise ValueError("parent failed")

        with pytest.raises(Exited):
            await ctx.spawn(parent)
        with pytest.raises(Closed):
            await children[0]

    runner_factory.run(main, catch_panics=True)


def test_spawn_child_abort_is_recursive(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        grandchildren: list[Any] = []
        children: list[Any] = []

        async def child(c: Any) -> None:
            grandchildren.append(c.spawn_child(forever))
            await forever(c)

        async def parent(c: Any) -> None:
            children.append(c.spawn_child(child))
            await forever(c)

        handle = ctx.spawn(parent)
        await ctx.sleep(0.005)
        assert len(grandchildren) == 1 and not grandchildren[0].done()
        handle.abort()
        with pytest.raises(Closed):
            await children[0]
        with pytest.raises(Closed):
            await grandchildren[0]

    runner_factory.run(main)


def test_spawn_child_grandchild_aborted_when_parent_finishes(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        grandchildren: list[Any] = []

        async def child(c: Any) -> None:
            grandchildren.append(c.spawn_child(forever))
            await forever(c)

        async def parent(c: Any) -> Any:
            kid = c.spawn_child(child)
            await c.sleep(0.005)
            return kid

        kid = await ctx.spawn(parent)
        with pytest.raises(Closed):
            await kid
        with pytest.raises(Closed):
            await grandchildren[0]

    runner_factory.run(main)


def test_spawn_child_siblings_independent(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        async def worker(c: Any) -> str:
            await c.sleep(0.01)
            return "sibling done"

        async def parent(c: Any) -> str:
            first = c.spawn_child(forever)
            second = c.spawn_child(worker)
            await c.sleep(0.001)
            first.abort()
            with pytest.raises(Closed):
                await first
            # Aborting one child neither aborts its sibling nor the parent.
            return await second

        assert await ctx.spawn(parent) == "sibling done"

    runner_factory.run(main)


def test_spawn_child_finishing_does_not_affect_parent(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        async def quick(c: Any) -> int:
            return 1

        async def parent(c: Any) -> int:
            value = await c.spawn_child(quick)
            await c.sleep(0.001)
            return value + 1

        assert await ctx.spawn(parent) == 2

    runner_factory.run(main)


def test_plain_spawn_outlives_its_spawner(runner_factory: Any) -> None:
    async def main(ctx: Any) -> str:
        async def survivor(c: Any) -> str:
            await c.sleep(0.01)
            return "survived"

        async def parent(c: Any) -> Any:
            return c.spawn(survivor)

        handle = await ctx.spawn(parent)
        return await handle

    assert runner_factory.run(main) == "survived"


def test_panic_caught_gives_exited_with_cause(runner_factory: Any) -> None:
    async def main(ctx: Any) -> str:
        async def bad(c: Any) -> None:
            await c.sleep(0.001)
            raise ValueError("task failed")

        handle = ctx.spawn(bad)
        with pytest.raises(Exited) as info:
            await handle
        assert isinstance(info.value.__cause__, ValueError)
        assert str(info.value.__cause__) == "task failed"
        assert handle.done()
        return "root continues"

    assert runner_factory.run(main, catch_panics=True) == "root continues"


def test_panic_uncaught_raises_original_from_start(runner_factory: Any) -> None:
    class Boom(Exception):
        pass

    async def main(ctx: Any) -> str:
        async def bad(c: Any) -> None:
            await c.sleep(0.001)
            raise Boom("task failed")

        ctx.spawn(bad)
        await ctx.sleep(1.0)
        return "unreachable"

    with pytest.raises(Boom, match="task failed"):
        runner_factory.run(main, catch_panics=False)


def test_production_catches_panics_by_default(runner_factory: Any) -> None:
    if runner_factory.deterministic:
        pytest.skip("production only: the deterministic runtime defaults to catch_panics=False")

    async def main(ctx: Any) -> str:
        async def bad(c: Any) -> None:
            raise KeyError("x")

        with pytest.raises(Exited) as info:
            await ctx.spawn(bad)
        assert isinstance(info.value.__cause__, KeyError)
        return "ok"

    assert runner_factory.run(main) == "ok"


def test_spawn_blocking_returns_value(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[Any]:
        seen: list[str] = []

        def work(c: Any) -> int:
            seen.append(c.label)
            return sum(range(1000))

        shared = await ctx.with_label("blocking").spawn_blocking(work)
        dedicated = await ctx.spawn_blocking(work, dedicated=True)
        return [shared, dedicated, seen]

    assert runner_factory.run(main) == [499500, 499500, ["blocking", ""]]


def test_spawn_blocking_exception(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        def work(c: Any) -> None:
            raise RuntimeError("blocking failed")

        with pytest.raises(Exited) as info:
            await ctx.spawn_blocking(work)
        assert isinstance(info.value.__cause__, RuntimeError)

    runner_factory.run(main, catch_panics=True)


def test_spawn_ref_is_one_shot(runner_factory: Any) -> None:
    async def main(ctx: Any) -> int:
        async def value(v: int) -> int:
            await ctx.sleep(0.001)
            return v

        spawner = ctx.spawn_ref()
        handle = spawner(value(7))
        second = value(8)
        with pytest.raises(RuntimeError):
            spawner(second)
        second.close()
        # The context itself stays usable.
        other = ctx.spawn_ref()(value(1))
        return await handle + await other

    assert runner_factory.run(main) == 8


def test_spawn_blocking_ref_is_one_shot(runner_factory: Any) -> None:
    async def main(ctx: Any) -> int:
        spawner = ctx.spawn_blocking_ref()
        handle = spawner(lambda: 21)
        with pytest.raises(RuntimeError):
            spawner(lambda: 22)
        dedicated = ctx.spawn_blocking_ref(dedicated=True)(lambda: 21)
        # A bad argument fails at the call; a failed use does not use the spawner up.
        with pytest.raises(TypeError, match="dedicated"):
            ctx.spawn_blocking_ref(dedicated="yes")
        fresh = ctx.spawn_blocking_ref()
        with pytest.raises(TypeError):
            fresh(42)
        again = fresh(lambda: 0)
        one_shot = ctx.spawn_ref()
        with pytest.raises(TypeError):
            one_shot(42)
        async def zero() -> int:
            return 0
        later = one_shot(zero())
        return await handle + await dedicated + await again + await later

    assert runner_factory.run(main) == 42


# -- shutdown ----------------------------------------------------------------------------


def test_stop_resolves_stopped_with_value(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[int]:
        async def waiter(c: Any) -> int:
            return await c.stopped()

        handles = [ctx.spawn(waiter) for _ in range(3)]
        await ctx.sleep(0.005)
        assert not any(h.done() for h in handles)
        await ctx.stop(9)
        return [await h for h in handles]

    assert runner_factory.run(main) == [9, 9, 9]


def test_stop_first_value_wins_and_is_idempotent(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[int]:
        await ctx.stop(1)
        await ctx.stop(2)
        await ctx.stop(1, timeout=1.0)
        signal = ctx.stopped()
        return [await signal, await ctx.stopped()]

    assert runner_factory.run(main) == [1, 1]


def test_stopped_after_stop_resolves_at_once(runner_factory: Any) -> None:
    async def main(ctx: Any) -> tuple[int, int]:
        await ctx.stop(3)

        async def late(c: Any) -> int:
            signal = c.stopped()
            assert signal.done()
            return await signal

        return await ctx.stopped(), await ctx.spawn(late)

    assert runner_factory.run(main) == (3, 3)


def test_stop_waits_for_explicit_release(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[str]:
        events: list[str] = []

        async def holder(c: Any) -> None:
            signal = c.stopped()
            value = await signal
            events.append(f"stopped {value}")
            await c.sleep(0.02)  # cleanup while holding the signal
            events.append("released")
            signal.release()
            await c.sleep(0.05)  # still running, but no longer holding
            events.append("holder end")

        ctx.spawn(holder)
        await ctx.sleep(0.01)  # let the holders take their signals first
        await ctx.stop(4)
        events.append("stop returned")
        return events

    assert runner_factory.run(main) == ["stopped 4", "released", "stop returned"]


def test_stop_waits_for_async_with_exit(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[str]:
        events: list[str] = []

        async def holder(c: Any) -> None:
            async with c.stopped() as signal:
                events.append(f"stopped {await signal}")
                await c.sleep(0.02)
                events.append("leaving")
            await c.sleep(0.05)
            events.append("holder end")

        ctx.spawn(holder)
        await ctx.sleep(0.01)  # let the holders take their signals first
        await ctx.stop(5)
        events.append("stop returned")
        return events

    assert runner_factory.run(main) == ["stopped 5", "leaving", "stop returned"]


def test_stop_waits_for_holder_task_end(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[str]:
        events: list[str] = []

        async def holder(c: Any, name: str, delay: float) -> None:
            signal = c.stopped()
            await signal
            await c.sleep(delay)
            events.append(name)  # the task ends without releasing: its end releases

        ctx.spawn(lambda c: holder(c, "slow", 0.03))
        ctx.spawn(lambda c: holder(c, "fast", 0.01))
        await ctx.sleep(0.01)  # let the holders take their signals first
        await ctx.stop(0)
        events.append("stop returned")
        return events

    assert runner_factory.run(main) == ["fast", "slow", "stop returned"]


def test_stop_timeout_while_held(runner_factory: Any) -> None:
    async def main(ctx: Any) -> str:
        async def stubborn(c: Any) -> None:
            signal = c.stopped()
            await signal
            await c.sleep(1_000)  # never releases in time

        ctx.spawn(stubborn)
        await ctx.sleep(0.01)
        with pytest.raises(Timeout):
            await ctx.stop(1, timeout=0.05)
        with pytest.raises(Timeout):
            await ctx.stop(1, timeout=timedelta(milliseconds=20))
        return "timed out"

    assert runner_factory.run(main) == "timed out"


def test_stop_by_a_holder_does_not_wait_for_itself(runner_factory: Any) -> None:
    async def main(ctx: Any) -> int:
        signal = ctx.stopped()
        await ctx.timeout(1.0, ctx.stop(6))
        return await signal

    assert runner_factory.run(main) == 6


def test_stop_rejects_bad_arguments(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(TypeError):
            await ctx.stop("0")
        with pytest.raises(ValueError):
            await ctx.stop(0, timeout=-1.0)
        assert not ctx.stopped().done()  # nothing happened

    runner_factory.run(main)


# -- labels ----------------------------------------------------------------------------


def test_with_label_joins(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[str]:
        a = ctx.with_label("a")
        ab = a.with_label("b")
        labels: list[str] = []

        async def task(c: Any) -> None:
            labels.append(c.label)
            labels.append(c.with_label("c").label)

        await ab.spawn(task)
        return [ctx.label, a.label, ab.label, *labels]

    assert runner_factory.run(main) == ["", "a", "a_b", "a_b", "a_b_c"]


@pytest.mark.parametrize("bad", ["", "1a", "a-b", "a b", "_a", "é", "runtime"])
def test_invalid_labels_raise_value_error(runner_factory: Any, bad: str) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(ValueError):
            ctx.with_label(bad)

    runner_factory.run(main)


def test_non_str_label_raises_type_error(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(TypeError):
            ctx.with_label(3)

    runner_factory.run(main)


# -- clock -----------------------------------------------------------------------------


def test_clock_sleep_advances(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        start = ctx.current()
        assert isinstance(start, float)
        await ctx.sleep(0.05)
        assert ctx.current() - start >= 0.05 - 1e-3  # wall clocks may disagree by a hair
        before = ctx.current()
        await ctx.sleep(timedelta(milliseconds=20))
        assert ctx.current() - before >= 0.02 - 1e-3

    runner_factory.run(main)


def test_clock_sleep_until(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        target = ctx.current() + 0.03
        await ctx.sleep_until(target)
        assert ctx.current() >= target - 1e-3
        before = ctx.current()
        await ctx.sleep_until(before - 100.0)  # a past deadline returns at once
        assert ctx.current() - before < 0.02

    runner_factory.run(main)


def test_clock_sleeps_never_end_early(runner_factory: Any) -> None:
    # uvloop rounds timers to whole milliseconds; the context still sleeps at least as asked.
    async def main(ctx: Any) -> None:
        for _ in range(20):
            target = ctx.current() + 0.0013
            await ctx.sleep_until(target)
            # Virtual time is whole nanoseconds: the float target may lie a hair past it.
            assert ctx.current() >= target - (1e-9 if runner_factory.deterministic else 0.0)
            start = time.monotonic() if not runner_factory.deterministic else ctx.current()
            await ctx.sleep(0.0013)
            elapsed = (time.monotonic() if not runner_factory.deterministic else ctx.current()) - start
            assert elapsed >= 0.0013 - (1e-9 if runner_factory.deterministic else 0.0)

    runner_factory.run(main)


def test_clock_timeout_refusing_its_arguments_leaves_no_coroutine_behind(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        async def work() -> None:
            pass

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a "never awaited" RuntimeWarning would fail here
            for bad in ("1s", -1.0):
                coro = work()
                with pytest.raises((TypeError, ValueError), match="duration"):
                    await ctx.timeout(bad, coro)
                assert coro.cr_frame is None  # closed
            gc.collect()

    runner_factory.run(main)


def test_clock_timeout(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        async def quick() -> str:
            await ctx.sleep(0.001)
            return "quick"

        assert await ctx.timeout(1.0, quick()) == "quick"
        assert await ctx.timeout(timedelta(seconds=1), quick()) == "quick"
        start = ctx.current()
        with pytest.raises(Timeout):
            await ctx.timeout(0.02, ctx.sleep(10))
        elapsed = ctx.current() - start
        assert 0.02 - 1e-3 <= elapsed < 5
        with pytest.raises(Timeout):
            await ctx.timeout(timedelta(milliseconds=10), ctx.sleep(10))
        # The deadline interrupts the awaitable itself, and a non-timeout error passes through.
        async def fails() -> None:
            raise KeyError("inner")

        with pytest.raises(KeyError):
            await ctx.timeout(1.0, fails())

        # Timeout means our deadline passed; the awaited code's own TimeoutError is its own.
        async def times_out_itself() -> None:
            raise TimeoutError("inner")

        with pytest.raises(TimeoutError, match="inner") as caught:
            await ctx.timeout(10.0, times_out_itself())
        assert not isinstance(caught.value, Timeout)

    runner_factory.run(main)


def test_clock_rejects_bad_durations(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(ValueError):
            await ctx.sleep(-1.0)
        with pytest.raises(TypeError):
            await ctx.sleep("1")
        with pytest.raises(ValueError):
            await ctx.sleep(float("nan"))

    runner_factory.run(main)


def test_rng_is_a_random(runner_factory: Any) -> None:
    import random

    async def main(ctx: Any) -> None:
        assert isinstance(ctx.rng, random.Random)
        values = [ctx.rng.random() for _ in range(10)]
        assert all(0.0 <= v < 1.0 for v in values)
        assert len(set(values)) == 10

    runner_factory.run(main)


# -- metrics ---------------------------------------------------------------------------


def test_metrics_register_and_encode(runner_factory: Any) -> None:
    async def main(ctx: Any) -> str:
        ab = ctx.with_label("a").with_label("b")
        requests = ab.register("requests", "Requests handled", Counter)
        requests.inc(3)
        depth = ab.register("depth", "Queue depth", Gauge)
        depth.set(7)
        latency = ctx.with_label("net").register("latency", "Latency", Histogram, buckets=(0.1, 1.0))
        latency.observe(0.5)

        async def task(c: Any) -> None:
            await c.sleep(0.001)

        await ab.spawn(task)
        return ctx.encode()

    text = runner_factory.run(main)
    lines = text.splitlines()
    assert "a_b_requests_total 3.0" in lines
    assert "a_b_depth 7.0" in lines
    assert 'net_latency_bucket{le="1.0"} 1.0' in lines
    assert "net_latency_count 1.0" in lines
    assert "# HELP a_b_requests_total Requests handled" in lines
    assert any(line.startswith('runtime_tasks_spawned_total{name="a_b"} 1.0') for line in lines), text
    assert "runtime_tasks_running" in text


def test_metrics_same_name(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        first = ctx.with_label("m").register("hits", "Hits", Counter)
        again = ctx.with_label("m").register("hits", "Hits", Counter)
        assert first is again
        with pytest.raises(ValueError):
            ctx.with_label("m").register("hits", "Hits", Gauge)
        # The same name under another prefix is another metric.
        other = ctx.with_label("n").register("hits", "Hits", Counter)
        assert other is not first

    runner_factory.run(main)


def test_metrics_bad_registrations(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(ValueError):
            ctx.register("bad name", "x", Counter)
        with pytest.raises(TypeError):
            ctx.register(3, "x", Counter)
        with pytest.raises(ValueError):
            ctx.register("runtime_tasks", "reserved", Counter)
        # A kind that is not a prometheus_client metric class is refused at the call,
        # naming what was given (not "int() takes at most 2 arguments").
        instance = Counter("loose", "an instance, not a class", registry=None)
        for kind, named in ((int, "got int"), (dict, "got dict"), ("Counter", "got str 'Counter'"), (instance, "got Counter")):
            with pytest.raises(TypeError, match="prometheus_client metric class") as info:
                ctx.register("z", "h", kind)
            assert named in str(info.value)

    runner_factory.run(main)


def test_metrics_are_per_runner(runner_factory: Any) -> None:
    async def main(ctx: Any) -> str:
        ctx.with_label("solo").register("count", "Count", Counter).inc()
        return ctx.encode()

    # A second runner has a fresh registry: registering the same name again works.
    assert "solo_count_total 1.0" in runner_factory.run(main)
    assert "solo_count_total 1.0" in runner_factory.run(main)


# -- Signaler / Signal / reschedule --------------------------------------------------------


def test_signaler_signal(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[Any]:
        signaler, signal = Signaler.new()

        async def waiter(c: Any) -> int:
            return await signal

        handles = [ctx.spawn(waiter) for _ in range(3)]
        await ctx.sleep(0.005)
        assert not signal.done() and not any(h.done() for h in handles)
        assert signaler.signal(11) is True
        assert signaler.signal(12) is False  # one-shot: the first value stays
        values = [await h for h in handles]
        return [values, await signal, signal.done()]

    assert runner_factory.run(main) == [[11, 11, 11], 11, True]


def test_reschedule_lets_others_run(runner_factory: Any) -> None:
    async def main(ctx: Any) -> int:
        ran: list[int] = []

        async def task(c: Any) -> None:
            ran.append(1)

        ctx.spawn(task)
        yields = 0
        while not ran:
            assert yields < 10, "reschedule never let the spawned task run"
            assert await reschedule() is None
            yields += 1
        return yields

    assert 1 <= runner_factory.run(main) <= 2


# -- storage ---------------------------------------------------------------------------


@pytest.mark.storage_runtimes
def test_storage_write_read_resize_sync(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        blob, size = await ctx.open("partition", b"blob")
        assert size == 0 and blob.size == 0
        await blob.write_at(b"hello", 0)
        assert await blob.read_at(5, 0) == b"hello"
        await blob.write_at(b"xy", 10)  # the gap reads as zeros
        assert blob.size == 12
        assert await blob.read_at(12, 0) == b"hello\x00\x00\x00\x00\x00xy"
        assert await blob.read_at(3, 1) == b"ell"
        buffer = bytearray(4)
        result = await blob.read_at(buffer, 1)
        assert result is buffer and buffer == bytearray(b"ello")
        await blob.write_at(bytearray(b"HE"), 0)
        await blob.write_at(memoryview(b"LLO"), 2)
        assert await blob.read_at(5, 0) == b"HELLO"
        await blob.resize(3)
        assert blob.size == 3
        assert await blob.read_at(3, 0) == b"HEL"
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(4, 0)
        await blob.resize(6)
        assert await blob.read_at(6, 0) == b"HEL\x00\x00\x00"
        await blob.sync()
        await blob.close()
        again, size = await ctx.open("partition", b"blob")
        assert size == 6
        assert await again.read_at(6, 0) == b"HEL\x00\x00\x00"
        await again.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_read_bounds(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        blob, _ = await ctx.open("bounds", b"b")
        await blob.write_at(b"0123456789", 0)
        assert await blob.read_at(0, 10) == b""
        assert await blob.read_at(1, 9) == b"9"
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(1, 10)
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(11, 0)
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(bytearray(2), 9)
        await blob.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_handles_share_contents(runner_factory: Any, request: pytest.FixtureRequest) -> None:
    async def main(ctx: Any) -> None:
        first, _ = await ctx.open("shared", b"b")
        second, _ = await ctx.open("shared", b"b")
        await first.write_at(b"abc", 0)
        assert await second.read_at(3, 0) == b"abc"
        assert second.size == 3
        await second.write_at(b"Z", 1)
        assert await first.read_at(3, 0) == b"aZc"
        await first.close()
        await second.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_scan_sorted_and_remove(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        for name in [b"c", b"a", b"\x00\xff", b"b", b"aa"]:
            blob, _ = await ctx.open("scan", name)
            await blob.close()
        assert await ctx.scan("scan") == [b"\x00\xff", b"a", b"aa", b"b", b"c"]
        await ctx.remove("scan", b"a")
        assert await ctx.scan("scan") == [b"\x00\xff", b"aa", b"b", b"c"]
        with pytest.raises(BlobMissing):
            await ctx.remove("scan", b"a")
        await ctx.remove("scan")
        with pytest.raises(PartitionMissing):
            await ctx.scan("scan")
        with pytest.raises(PartitionMissing):
            await ctx.remove("scan")
        with pytest.raises(PartitionMissing):
            await ctx.remove("scan", b"b")
        # Partitions are independent.
        blob, _ = await ctx.open("one", b"x")
        await blob.close()
        blob, _ = await ctx.open("two", b"y")
        await blob.close()
        assert await ctx.scan("one") == [b"x"]
        assert await ctx.scan("two") == [b"y"]

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_scan_missing_partition(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(PartitionMissing):
            await ctx.scan("never_created")

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_removed_blob_reopens_empty(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        blob, _ = await ctx.open("p", b"gone")
        await blob.write_at(b"data", 0)
        await blob.sync()
        await blob.close()
        await ctx.remove("p", b"gone")
        blob, size = await ctx.open("p", b"gone")
        assert size == 0
        await blob.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
@pytest.mark.parametrize("bad", ["", "a/b", "..", "a b", "name.ext", "é"])
def test_storage_partition_name_invalid(runner_factory: Any, bad: str) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(PartitionNameInvalid):
            await ctx.open(bad, b"blob")
        with pytest.raises(PartitionNameInvalid):
            await ctx.scan(bad)
        with pytest.raises(PartitionNameInvalid):
            await ctx.remove(bad)

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_partition_names_allowed(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        for partition in ["a", "A-b_9", "-", "0"]:
            blob, _ = await ctx.open(partition, b"x")
            await blob.close()
            assert await ctx.scan(partition) == [b"x"]

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_bad_arguments(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(TypeError):
            await ctx.open("p", "not-bytes")
        blob, _ = await ctx.open("p", b"b")
        await blob.write_at(b"abc", 0)
        with pytest.raises(ValueError):
            await blob.write_at(b"x", -1)
        with pytest.raises(ValueError):
            await blob.read_at(1, -1)
        with pytest.raises(ValueError):
            await blob.read_at(-1, 0)
        with pytest.raises(ValueError):
            await blob.resize(-1)
        with pytest.raises(TypeError):
            await blob.write_at("text", 0)
        with pytest.raises(TypeError):
            await blob.write_at([1, 2], 0)
        with pytest.raises(TypeError):
            await blob.read_at(b"immutable", 0)
        # Nothing above had an effect.
        assert blob.size == 3
        assert await blob.read_at(3, 0) == b"abc"
        await blob.close()

    runner_factory.run(main)


class _Two(enum.IntEnum):
    TWO = 2


# Bad ``read_at`` arguments and the error every runtime raises for them, message and all
# (one helper, ``arguments.read_at_args``, parses them for both).
_READ_AT_BAD = [
    ((1, -1), ValueError, "offset must not be negative, got -1"),
    ((1, True), TypeError, "offset must be an int, got bool True"),
    ((1, 1.0), TypeError, "offset must be an int, got float 1.0"),
    ((1, "0"), TypeError, "offset must be an int, got str '0'"),
    ((-1, 0), ValueError, "read_at byte count must not be negative, got -1"),
    ((-1, -1), ValueError, "read_at byte count must not be negative, got -1"),  # the count first
    ((1.0, 0), TypeError, "read_at takes a byte count (int) or a writable buffer (bytearray, memoryview), got float 1.0"),
    ((True, 0), TypeError, "read_at takes a byte count (int) or a writable buffer (bytearray, memoryview), got bool True"),
    ((None, 0), TypeError, "read_at takes a byte count (int) or a writable buffer (bytearray, memoryview), got NoneType None"),
    (("3", 0), TypeError, "read_at takes a byte count (int) or a writable buffer (bytearray, memoryview), got str '3'"),
    (([0, 0], 0), TypeError, "read_at takes a byte count (int) or a writable buffer (bytearray, memoryview), got list [0, 0]"),
    ((b"immutable", 0), TypeError, "read_at buffer must be writable (a bytearray or a writable memoryview), got bytes of length 9"),
    ((memoryview(b"ro"), 0), TypeError, "read_at buffer must be writable, got a read-only memoryview"),
    ((memoryview(bytearray(4)).toreadonly(), 0), TypeError, "read_at buffer must be writable, got a read-only memoryview"),
    ((memoryview(bytearray(8))[::2], 0), TypeError, "read_at buffer must be C-contiguous, got a memoryview with shape (4,) and strides (2,)"),
    ((2, (1 << 64) - 1), OffsetOverflow, f"read of 2 bytes at offset {(1 << 64) - 1} overflows u64 in blob b'args' in partition 'p'"),
    ((bytearray(1), 1 << 64), OffsetOverflow, f"read of 1 bytes at offset {1 << 64} overflows u64 in blob b'args' in partition 'p'"),
]


@pytest.mark.storage_runtimes
def test_storage_read_at_arguments_fail_alike(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[tuple[str, str]]:
        blob, _ = await ctx.open("p", b"args")
        await blob.write_at(b"abcd", 0)
        raised = []
        for (n_or_buffer, offset), _, _ in _READ_AT_BAD:
            with pytest.raises(Exception) as info:
                await blob.read_at(n_or_buffer, offset)
            raised.append((type(info.value).__name__, str(info.value)))
        # Nothing above had an effect: the blob and the read counters are as they were.
        assert blob.size == 4
        assert await blob.read_at(4, 0) == b"abcd"
        # An int subclass is a count; a writable view of any C-contiguous shape is a buffer.
        assert await blob.read_at(_Two.TWO, 1) == b"bc"
        grid = memoryview(bytearray(4)).cast("B", (2, 2))
        assert await blob.read_at(grid, 0) is grid and grid.tobytes() == b"abcd"
        # Arguments are checked before the handle's state: a bad one on a closed blob is
        # still the argument's error, a good one meets Closed.
        await blob.close()
        with pytest.raises(TypeError, match="got float 1.0"):
            await blob.read_at(1.0, 0)
        with pytest.raises(Closed):
            await blob.read_at(1, 0)
        return raised

    expected = [(error.__name__, message) for _, error, message in _READ_AT_BAD]
    assert runner_factory.run(main) == expected


@pytest.mark.storage_runtimes
def test_storage_errors_are_runtime_errors(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(Error) as info:
            await ctx.scan("missing_partition")
        assert "missing_partition" in str(info.value)
        blob, _ = await ctx.open("named", b"blob")
        with pytest.raises(Error) as info2:
            await blob.read_at(1, 0)
        assert "named" in str(info2.value)
        await blob.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_closed_blob_raises_closed(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        blob, _ = await ctx.open("closing", b"b")
        await blob.write_at(b"abc", 0)
        await blob.close()
        await blob.close()  # idempotent
        with pytest.raises(Closed):
            await blob.read_at(1, 0)
        with pytest.raises(Closed):
            await blob.write_at(b"x", 0)
        with pytest.raises(Closed):
            blob.size  # noqa: B018 - the property access is the test

    runner_factory.run(main)


# -- network ---------------------------------------------------------------------------


def test_network_exchange_exact_lengths(runner_factory: Any) -> None:
    big = bytes(range(256)) * 256  # 64 KiB each way, sent concurrently

    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))
        host, port = listener.local_addr()
        assert host == LOCALHOST and port > 0

        async def server(c: Any) -> bytes:
            addr, sink, stream = await listener.accept()
            assert isinstance(addr, tuple) and addr[0] == LOCALHOST and isinstance(addr[1], int)
            first = await stream.recv(5)
            await sink.send(b"pong:" + first)
            sender = c.spawn(lambda _c: sink.send(big))
            received = await stream.recv(len(big))
            await sender
            tail = await stream.recv(3)
            return first + received + tail

        server_handle = ctx.spawn(server)
        sink, stream = await ctx.dial(f"{LOCALHOST}:{port}")
        # Fragmented send, one exact receive on the other side.
        await sink.send(b"pi")
        await sink.send(b"n")
        await sink.send(b"g!")
        assert await stream.recv(10) == b"pong:ping!"
        sender = ctx.spawn(lambda _c: sink.send(big))
        # Many small exact receives reassemble the stream in order.
        parts = [await stream.recv(4096) for _ in range(len(big) // 4096)]
        assert b"".join(parts) == big
        await sender
        await sink.send(b"end")
        assert await server_handle == b"ping!" + big + b"end"
        assert await stream.recv(0) == b""

    runner_factory.run(main)


def test_network_multiple_connections(runner_factory: Any) -> None:
    async def main(ctx: Any) -> list[bytes]:
        listener = await ctx.bind((LOCALHOST, 0))
        addr = listener.local_addr()

        async def server(c: Any) -> None:
            for _ in range(3):
                _, sink, stream = await listener.accept()

                async def echo(_c: Any, sink: Any = sink, stream: Any = stream) -> None:
                    data = await stream.recv(4)
                    await sink.send(data[::-1])

                c.spawn(echo)

        ctx.spawn(server)

        async def client(c: Any, i: int) -> bytes:
            sink, stream = await c.dial(addr)
            await sink.send(b"abc" + str(i).encode())
            return await stream.recv(4)

        handles = [ctx.spawn(lambda c, i=i: client(c, i)) for i in range(3)]
        return [await h for h in handles]

    assert runner_factory.run(main) == [b"0cba", b"1cba", b"2cba"]


def test_network_peek(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))
        done_signaler, done = Signaler.new()

        async def client(c: Any) -> None:
            sink, stream = await c.dial(listener.local_addr())
            await sink.send(b"hello")
            await done

        ctx.spawn(client)
        _, sink, stream = await listener.accept()
        assert stream.peek(10) == b"" or stream.peek(10) == b"hello"[: len(stream.peek(10))]
        await wait_until(ctx, lambda: len(stream.peek(10)) >= 5, "5 buffered bytes")
        assert stream.peek(10) == b"hello"
        assert stream.peek(2) == b"he"
        assert stream.peek(10) == b"hello"  # peeking consumes nothing
        assert await stream.recv(2) == b"he"
        assert stream.peek(10) == b"llo"
        assert await stream.recv(3) == b"llo"
        assert stream.peek(10) == b""
        done_signaler.signal(0)

    runner_factory.run(main)


def test_network_bind_failed(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))
        with pytest.raises(BindFailed) as info:
            await ctx.bind(listener.local_addr())
        assert str(listener.local_addr()[1]) in str(info.value)

    runner_factory.run(main)


def test_network_a_wildcard_listener_is_reached_at_its_own_and_the_loopback_address(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        listener = await ctx.bind(("0.0.0.0", 0))
        port = listener.local_addr()[1]

        async def serve(c: Any) -> None:
            for _ in range(2):
                _, sink, stream = await listener.accept()
                await sink.send(await stream.recv(1))

        server = ctx.spawn(serve)
        for addr in (listener.local_addr(), (LOCALHOST, port)):
            sink, stream = await ctx.dial(addr)
            await sink.send(b"!")
            assert await stream.recv(1) == b"!"
        await server
        listener.close()

    runner_factory.run(main)


def test_network_a_wildcard_and_the_hosts_address_share_no_port(runner_factory: Any) -> None:
    # What one runtime accepts the other accepts: a port held on 0.0.0.0 is taken on 127.0.0.1.
    async def main(ctx: Any) -> None:
        wild = await ctx.bind(("0.0.0.0", 0))
        port = wild.local_addr()[1]
        with pytest.raises(BindFailed, match=str(port)):
            await ctx.bind((LOCALHOST, port))
        wild.close()
        exact = await ctx.bind((LOCALHOST, port))
        with pytest.raises(BindFailed, match=str(port)):
            await ctx.bind(("0.0.0.0", port))
        exact.close()

    runner_factory.run(main)


def test_network_connection_failed(runner_factory: Any) -> None:
    port = unused_port()

    async def main(ctx: Any) -> None:
        with pytest.raises(ConnectionFailed) as info:
            await ctx.dial((LOCALHOST, port))
        assert str(port) in str(info.value)

    runner_factory.run(main)


def test_network_bad_addresses(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        with pytest.raises(ValueError):
            await ctx.dial("no-port")
        with pytest.raises(ValueError):
            await ctx.dial((LOCALHOST, 70000))
        with pytest.raises(TypeError):
            await ctx.dial(12345)
        with pytest.raises(ValueError):
            await ctx.bind((LOCALHOST, -1))

    runner_factory.run(main)


def test_network_recv_failed_after_peer_close_then_poisoned(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))

        async def server(c: Any) -> None:
            _, sink, stream = await listener.accept()
            await sink.send(b"abc")
            sink.close()
            stream.close()

        ctx.spawn(server)
        sink, stream = await ctx.dial(listener.local_addr())
        # Bytes sent before the close still arrive; asking for more than was sent fails.
        assert await stream.recv(2) == b"ab"
        with pytest.raises(RecvFailed):
            await stream.recv(5)
        # After an error the half is poisoned.
        with pytest.raises(Closed):
            await stream.recv(1)
        with pytest.raises(Closed):
            await stream.recv(1)

    runner_factory.run(main)


def test_network_closed_halves_raise_closed(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))

        accepted = Signaler.new()

        async def server(c: Any) -> None:
            _, sink, stream = await listener.accept()
            accepted[0].signal(1)
            await c.sleep(1_000)

        ctx.spawn(server)
        sink, stream = await ctx.dial(listener.local_addr())
        await accepted[1]
        sink.close()
        with pytest.raises(Closed):
            await sink.send(b"x")
        stream.close()
        with pytest.raises(Closed):
            await stream.recv(1)
        # close() is synchronous and its result may be awaited, like blob.close().
        other_sink, other_stream = await ctx.dial(listener.local_addr())
        await other_sink.close()
        await other_stream.close()
        await other_sink.close()
        with pytest.raises(Closed):
            await other_sink.send(b"x")
        await listener.close()
        await listener.close()

    runner_factory.run(main)


def test_network_localhost_is_the_loopback(runner_factory: Any) -> None:
    async def main(ctx: Any) -> bytes:
        listener = await ctx.bind("localhost:0")
        host, port = listener.local_addr()
        assert host == LOCALHOST

        async def server(c: Any) -> None:
            _, sink, stream = await listener.accept()
            await sink.send(await stream.recv(2))

        ctx.spawn(server)
        sink, stream = await ctx.dial(f"localhost:{port}")
        await sink.send(b"hi")
        return bytes(await stream.recv(2))

    assert runner_factory.run(main) == b"hi"


@pytest.mark.storage_runtimes
def test_storage_partition_name_length_limit(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        longest = "p" * 255
        blob, _ = await ctx.open(longest, b"x")
        await blob.close()
        assert await ctx.scan(longest) == [b"x"]
        with pytest.raises(PartitionNameInvalid, match="256 characters"):
            await ctx.open("p" * 256, b"x")

    runner_factory.run(main)


def test_network_peer_sees_sink_close_as_recv_failed(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))

        async def client(c: Any) -> None:
            sink, stream = await c.dial(listener.local_addr())
            await sink.send(b"bye")
            sink.close()
            await c.sleep(1_000)

        ctx.spawn(client)
        _, sink, stream = await listener.accept()
        assert await stream.recv(3) == b"bye"
        with pytest.raises(RecvFailed):
            await ctx.timeout(5.0, stream.recv(1))

    runner_factory.run(main)


def test_network_send_rejects_non_bytes(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))

        async def server(c: Any) -> None:
            _, sink, stream = await listener.accept()
            assert await stream.recv(2) == b"ok"

        handle = ctx.spawn(server)
        sink, stream = await ctx.dial(listener.local_addr())
        with pytest.raises(TypeError):
            await sink.send("text")
        await sink.send(b"ok")  # the bad call did not poison the half
        await handle

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_runtime_metrics_count_io(runner_factory: Any) -> None:
    async def main(ctx: Any) -> str:
        listener = await ctx.bind((LOCALHOST, 0))

        async def server(c: Any) -> None:
            _, sink, stream = await listener.accept()
            await sink.send(await stream.recv(10))

        ctx.spawn(server)
        sink, stream = await ctx.dial(listener.local_addr())
        await sink.send(b"0123456789")
        await stream.recv(10)
        blob, _ = await ctx.open("metrics", b"b")
        await blob.write_at(b"abcd", 0)
        await blob.read_at(4, 0)
        await blob.sync()
        await blob.close()
        return ctx.encode()

    samples: dict[str, float] = {}
    for line in runner_factory.run(main).splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples["runtime_inbound_connections_total"] == 1
    assert samples["runtime_outbound_connections_total"] == 1
    assert samples["runtime_bandwidth_sent_bytes_total"] == 20  # both directions of one process
    assert samples["runtime_bandwidth_received_bytes_total"] == 20
    assert samples["runtime_storage_writes_total"] >= 1
    assert samples["runtime_storage_written_bytes_total"] >= 4
    assert samples["runtime_storage_read_bytes_total"] >= 4
    assert samples["runtime_storage_syncs_total"] >= 1


def test_error_hierarchy() -> None:
    import commonware_runtime

    names = [
        "Exited", "Closed", "Timeout", "BindFailed", "ConnectionFailed", "SendFailed", "RecvFailed",
        "ReadFailed", "WriteFailed", "PartitionNameInvalid", "PartitionCreationFailed", "PartitionMissing",
        "PartitionCorrupt", "BlobOpenFailed", "BlobMissing", "BlobResizeFailed", "BlobSyncFailed",
        "BlobInsufficientLength", "BlobCorrupt", "OffsetOverflow", "RuntimeStalled", "RuntimeTimeout",
    ]
    assert issubclass(commonware_runtime.Error, Exception)
    for name in names:
        cls = getattr(commonware_runtime, name)
        assert issubclass(cls, commonware_runtime.Error), name
        assert cls is not commonware_runtime.Error


# -- ported from commonware-runtime's shared runtime tests (lib.rs, storage, network) ------


def test_root_finishes_while_a_task_busy_loops(runner_factory: Any) -> None:
    # commonware test_root_finishes / test_spawn_abort: a task that only ever yields
    # (never sleeps) neither keeps the run alive nor resists an abort.
    spins: list[int] = [0, 0]

    async def main(ctx: Any) -> str:
        async def spin(c: Any, slot: int) -> None:
            while True:
                spins[slot] += 1
                await reschedule()

        aborted = ctx.spawn(lambda c: spin(c, 0))
        aborted.abort()
        with pytest.raises(Closed):
            await aborted
        ctx.spawn(lambda c: spin(c, 1))
        while spins[1] < 3:
            await reschedule()
        return "root done"

    assert runner_factory.run(main) == "root done"
    assert spins[0] == 0  # aborted before its first step


def test_root_returning_an_error_value_is_not_raised(runner_factory: Any) -> None:
    # commonware test_error_future: the root's value is returned as is, even an error value.
    failure = ValueError("an error occurred")

    async def main(ctx: Any) -> ValueError:
        return failure

    assert runner_factory.run(main) is failure


def test_multiple_panics_caught_each_handle_exited(runner_factory: Any) -> None:
    # commonware test_multiple_panics_caught.
    async def main(ctx: Any) -> list[str]:
        async def bad(c: Any, i: int) -> None:
            raise RuntimeError(f"boom {i}")

        handles = [ctx.spawn(lambda c, i=i: bad(c, i)) for i in range(3)]
        causes: list[str] = []
        for handle in handles:
            with pytest.raises(Exited) as info:
                await handle
            causes.append(str(info.value.__cause__))
        return causes

    assert runner_factory.run(main, catch_panics=True) == [f"boom {i}" for i in range(3)]


def test_multiple_panics_uncaught_raise_one_from_start(runner_factory: Any) -> None:
    # commonware test_multiple_panics: with panics not caught, the first failure ends the run.
    class Boom(Exception):
        pass

    async def main(ctx: Any) -> str:
        async def bad(c: Any, i: int) -> None:
            raise Boom(f"boom {i}")

        for i in range(3):
            ctx.spawn(lambda c, i=i: bad(c, i))
        while True:
            await ctx.sleep(0.1)

    with pytest.raises(Boom, match=r"^boom [012]$"):
        runner_factory.run(main, catch_panics=False)


def test_timeout_loop_loses_no_messages(runner_factory: Any) -> None:
    # commonware test_select_loop: racing a receive against a timer, again and again, must
    # not lose messages when the timer wins.
    async def main(ctx: Any) -> list[int]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for _ in range(2):
            with pytest.raises(Timeout):
                await ctx.timeout(0.1, queue.get())
        queue.put_nowait(0)
        queue.put_nowait(1)
        # A branch that is ready at once wins without consuming the queue.
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(ctx.sleep(0)), asyncio.ensure_future(ctx.sleep(1_000))],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for fut in pending:
            fut.cancel()
        assert len(done) == 1 and queue.qsize() == 2
        return [await ctx.timeout(0.1, queue.get()) for _ in range(2)]

    assert runner_factory.run(main) == [0, 1]


def test_clock_timeout_ready_pending_and_in_time(runner_factory: Any) -> None:
    # commonware test_clock_timeout.
    async def main(ctx: Any) -> None:
        async def ready() -> str:
            return "success"

        assert await ctx.timeout(0.1, ready()) == "success"
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        start = ctx.current()
        with pytest.raises(Timeout):
            await ctx.timeout(0.05, never)
        assert ctx.current() - start >= 0.05 - 1e-3
        assert await ctx.timeout(0.5, ctx.sleep(0.05)) is None

    runner_factory.run(main)


def test_spawn_child_cascading_abort_tree(runner_factory: Any) -> None:
    # commonware test_spawn_child_cascading_abort: root task -> 3 children -> 2 grandchildren
    # each; aborting the top aborts all nine.
    async def main(ctx: Any) -> None:
        handles: list[Any] = []

        async def child(c: Any) -> None:
            for _ in range(2):
                handles.append(c.spawn_child(forever))
            await forever(c)

        async def top(c: Any) -> None:
            for _ in range(3):
                handles.append(c.spawn_child(child))
            await forever(c)

        root_task = ctx.spawn(top)
        await wait_until(ctx, lambda: len(handles) == 9, "nine descendants")
        assert not any(h.done() for h in handles)
        root_task.abort()
        with pytest.raises(Closed):
            await root_task
        for handle in handles:
            with pytest.raises(Closed):
                await handle

    runner_factory.run(main)


@pytest.mark.parametrize("use_spawn_ref", [False, True], ids=["spawn", "spawn_ref"])
def test_spawn_child_survives_sibling_completion(runner_factory: Any, use_spawn_ref: bool) -> None:
    # commonware test_child_survives_sibling_completion and
    # test_clone_context_no_child_inheritance: plain spawns (from the parent's context, by
    # spawn or spawn_ref, or from the root) finishing leave the parent's child alive.
    async def main(ctx: Any) -> list[str]:
        child_go = asyncio.Event()
        sibling_go = asyncio.Event()
        parent_go = asyncio.Event()
        handles: dict[str, Any] = {}

        async def child(c: Any) -> str:
            await child_go.wait()
            return "child"

        async def sibling() -> str:
            await sibling_go.wait()
            return "sibling"

        async def parent(c: Any) -> str:
            handles["child"] = c.spawn_child(child)
            handles["sibling"] = c.spawn_ref()(sibling()) if use_spawn_ref else c.spawn(lambda _c: sibling())
            await parent_go.wait()
            return "parent"

        parent_handle = ctx.spawn(parent)
        other = ctx.spawn(lambda c: sibling())
        await wait_until(ctx, lambda: len(handles) == 2, "parent spawned both")
        sibling_go.set()
        results = [await handles["sibling"], await other]
        await ctx.sleep(0.01)
        assert not handles["child"].done()
        child_go.set()
        results.append(await handles["child"])
        parent_go.set()
        results.append(await parent_handle)
        return results

    assert runner_factory.run(main) == ["sibling", "sibling", "child", "parent"]


@pytest.mark.parametrize("dedicated", [False, True], ids=["shared", "dedicated"])
def test_spawn_blocking_panic_uncaught_raises_from_start(runner_factory: Any, dedicated: bool) -> None:
    # commonware test_spawn_blocking_panic.
    class Boom(Exception):
        pass

    async def main(ctx: Any) -> None:
        def work(c: Any) -> None:
            raise Boom("blocking task panicked")

        handle = ctx.spawn_blocking(work, dedicated=dedicated)
        await handle

    with pytest.raises(Boom, match="blocking task panicked"):
        runner_factory.run(main, catch_panics=False)


@pytest.mark.parametrize("dedicated", [False, True], ids=["shared", "dedicated"])
def test_spawn_blocking_abort_gives_closed(runner_factory: Any, dedicated: bool) -> None:
    # commonware test_spawn_blocking_abort (current form): aborting a blocking task's handle
    # resolves it to Closed at once, like any other handle.
    async def main(ctx: Any) -> None:
        handle = ctx.spawn_blocking(lambda c: 42, dedicated=dedicated)
        handle.abort()
        assert handle.done()
        with pytest.raises(Closed):
            await handle
        # The context still spawns blocking work normally afterwards.
        assert await ctx.spawn_blocking(lambda c: 7, dedicated=dedicated) == 7

    runner_factory.run(main)


def test_stop_concurrent_calls_all_wait_and_first_value_wins(runner_factory: Any) -> None:
    # commonware test_shutdown_multiple_stop_calls.
    async def main(ctx: Any) -> None:
        cleaned: list[int] = []
        started = asyncio.Event()
        resolved = asyncio.Event()

        async def holder(c: Any) -> None:
            signal = c.stopped()
            started.set()
            value = await signal
            resolved.set()
            await c.sleep(0.05)
            cleaned.append(value)
            signal.release()

        task = ctx.with_label("blocking_task").spawn(holder)
        await started.wait()
        first = ctx.spawn(lambda c: c.stop(42))
        # Spawned tasks start in any order: let the first stop take effect before the second.
        # (The root must not take stop signals itself here: stop would wait for it.)
        await asyncio.wait_for(resolved.wait(), 5.0)
        second = ctx.spawn(lambda c: c.stop(43))
        await ctx.sleep(0.01)
        assert not first.done() and not second.done()  # both wait for the holder
        await first
        await second
        assert cleaned == [42]
        assert await ctx.stopped() == 42
        await task
        # A stop after completion returns at once (nothing is held any more).
        await ctx.timeout(1.0, ctx.stop(43))
        assert await ctx.stopped() == 42

    runner_factory.run(main)


def test_stop_waits_for_every_holders_cleanup(runner_factory: Any) -> None:
    # commonware test_shutdown_multiple_signals: three holders with different cleanup times.
    async def main(ctx: Any) -> None:
        counter: list[int] = []
        started: list[int] = []

        async def holder(c: Any, delay: float) -> None:
            signal = c.stopped()
            started.append(1)
            assert await signal == 42
            await c.sleep(delay)
            counter.append(1)
            signal.release()

        handles = [ctx.spawn(lambda c, d=d: holder(c, d)) for d in (0.01, 0.02, 0.03)]
        await wait_until(ctx, lambda: len(started) == 3, "holders started")
        await ctx.stop(42)
        assert len(counter) == 3
        for handle in handles:
            await handle

    runner_factory.run(main)


def test_unfulfilled_shutdown_root_returns(runner_factory: Any) -> None:
    # commonware test_unfulfilled_shutdown: a task holding an unresolved stop signal does not
    # keep the run alive (and is not mistaken for a stall); it never sees a stop value.
    seen: list[int] = []

    async def main(ctx: Any) -> str:
        async def waiter(c: Any) -> None:
            signal = c.stopped()
            seen.append(await signal)

        ctx.with_label("before").spawn(waiter)
        await reschedule()
        return "done"

    assert runner_factory.run(main) == "done"
    assert seen == []


def test_metrics_register_at_root_and_nested(runner_factory: Any) -> None:
    # commonware test_metrics: the root context has the empty label, so its metrics carry no
    # prefix; a nested context's carry its label.
    async def main(ctx: Any) -> str:
        assert ctx.label == ""
        ctx.register("test", "test", Counter).inc()
        assert "test_total 1.0" in ctx.encode().splitlines()
        nested = ctx.with_label("nested")
        nested.register("test", "test", Counter).inc()
        return nested.encode()

    lines = runner_factory.run(main).splitlines()
    assert "nested_test_total 1.0" in lines
    assert "test_total 1.0" in lines


def test_metrics_reserved_prefix_unreachable_through_labels(runner_factory: Any) -> None:
    # commonware test_metrics_label: the runtime's metric prefix cannot be borrowed by a label.
    async def main(ctx: Any) -> None:
        with pytest.raises(ValueError):
            ctx.with_label("runtime")
        with pytest.raises(ValueError):
            ctx.with_label("runtime_extra").register("count", "Count", Counter)

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_rewrite_keeps_length_and_overlaps(runner_factory: Any) -> None:
    # commonware test_blob_read_write / test_overlapping_writes / test_read_beyond_bound.
    async def main(ctx: Any) -> None:
        blob, _ = await ctx.open("test_partition", b"test_blob_rw")
        await blob.write_at(b"Hello", 0)
        await blob.write_at(b"World", 5)
        assert await blob.read_at(10, 0) == b"HelloWorld"
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(10, 10)
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(10, 6)
        await blob.write_at(b"Store", 5)
        assert blob.size == 10
        assert await blob.read_at(10, 0) == b"HelloStore"
        await blob.write_at(b"overlap", 0)
        await blob.write_at(b"map", 4)
        assert await blob.read_at(7, 0) == b"overmap"
        assert blob.size == 10
        await blob.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_read_from_empty_blob_raises(runner_factory: Any) -> None:
    # commonware test_blob_read_past_length / test_read_empty_blob.
    async def main(ctx: Any) -> None:
        blob, size = await ctx.open("test_partition", b"empty")
        assert size == 0
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(10, 0)
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(bytearray(1), 0)
        assert await blob.read_at(0, 0) == b""
        await blob.write_at(b"Hello, Storage!", 0)
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(20, 0)
        assert await blob.read_at(7, 7) == b"Storage"
        await blob.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_same_name_in_many_partitions(runner_factory: Any) -> None:
    # commonware test_many_partition_read_write.
    partitions = ["partition1", "partition2", "partition3"]

    async def main(ctx: Any) -> None:
        for extra, partition in enumerate(partitions):
            blob, _ = await ctx.open(partition, b"test_blob_rw")
            await blob.write_at(b"Hello", 0)
            await blob.write_at(b"World", 5 + extra)
            await blob.sync()
            await blob.close()
        for extra, partition in enumerate(partitions):
            blob, size = await ctx.open(partition, b"test_blob_rw")
            assert size == 10 + extra
            data = await blob.read_at(10 + extra, 0)
            assert data == b"Hello" + b"\x00" * extra + b"World"
            await blob.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_resize_extend_truncate_across_reopen(runner_factory: Any) -> None:
    # commonware test_blob_resize: every resize, once synced, is what a reopen sees.
    async def main(ctx: Any) -> None:
        data = b"some data"
        blob, _ = await ctx.open("test_partition_resize", b"test_blob_resize")
        await blob.write_at(data, 0)
        await blob.sync()
        await blob.close()
        blob, size = await ctx.open("test_partition_resize", b"test_blob_resize")
        assert size == len(data)
        await blob.resize(2 * len(data))
        await blob.sync()
        await blob.close()
        blob, size = await ctx.open("test_partition_resize", b"test_blob_resize")
        assert size == 2 * len(data)
        assert await blob.read_at(len(data), 0) == data
        assert await blob.read_at(len(data), len(data)) == bytes(len(data))
        await blob.resize(len(data))
        await blob.sync()
        await blob.close()
        blob, size = await ctx.open("test_partition_resize", b"test_blob_resize")
        assert size == len(data)
        assert await blob.read_at(len(data), 0) == data
        await blob.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_concurrent_access_and_open_blobs_gauge(runner_factory: Any) -> None:
    # commonware test_blob_clone_and_concurrent_read / test_concurrent_access: tasks share one
    # blob object; once every handle is closed the open-blob gauge is back to zero.
    def open_blobs(text: str) -> float:
        for line in text.splitlines():
            if line.startswith("runtime_open_blobs "):
                return float(line.split()[1])
        raise AssertionError("runtime_open_blobs missing")

    async def main(ctx: Any) -> None:
        data = b"Hello, Storage!"
        blob, _ = await ctx.open("test_partition", b"test_blob_rw")
        await blob.write_at(data, 0)
        await blob.sync()
        assert open_blobs(ctx.encode()) == 1

        async def reader(c: Any) -> bytes:
            return await blob.read_at(len(data), 0)

        async def writer(c: Any) -> None:
            await blob.write_at(data, 0)

        handles = [
            ctx.with_label("check1").spawn(reader),
            ctx.with_label("write").spawn(writer),
            ctx.with_label("check2").spawn(reader),
        ]
        assert await handles[0] == data
        await handles[1]
        assert await handles[2] == data
        assert await blob.read_at(len(data), 0) == data
        await blob.close()
        assert open_blobs(ctx.encode()) == 0

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_large_blob_in_chunks(runner_factory: Any) -> None:
    # commonware test_large_data / test_sequential_chunk_read_write (scaled down to stay fast).
    chunk = bytes(range(256)) * 256  # 64 KiB
    chunks = 16

    async def main(ctx: Any) -> None:
        blob, _ = await ctx.open("large", b"large_blob")
        for i in range(chunks):
            await blob.write_at(chunk, i * len(chunk))
        assert blob.size == chunks * len(chunk)
        for i in range(chunks):
            assert await blob.read_at(len(chunk), i * len(chunk)) == chunk
        assert await blob.read_at(chunks * len(chunk), 0) == chunk * chunks
        await blob.sync()
        await blob.close()
        again, size = await ctx.open("large", b"large_blob")
        assert size == chunks * len(chunk)
        assert await again.read_at(3, 123_457) == (chunk * 2)[123_457 % len(chunk) :][:3]
        await again.close()

    runner_factory.run(main)


@pytest.mark.storage_runtimes
def test_storage_open_handle_reads_after_remove(runner_factory: Any) -> None:
    async def main(ctx: Any) -> None:
        data = bytes(range(256))
        blob, _ = await ctx.open("read_after_remove", b"by_name")
        await blob.write_at(data, 0)
        await blob.sync()
        await ctx.remove("read_after_remove", b"by_name")
        assert await ctx.scan("read_after_remove") == []
        assert await blob.read_at(len(data), 0) == data
        fresh, size = await ctx.open("read_after_remove", b"by_name")
        assert size == 0
        await fresh.write_at(b"new contents", 0)
        assert await blob.read_at(12, 0) == data[:12]  # the old handle keeps the old bytes
        other, _ = await ctx.open("read_after_remove_partition", b"victim")
        await other.write_at(b"unsynced", 0)
        await ctx.remove("read_after_remove_partition")
        assert await other.read_at(8, 0) == b"unsynced"

    runner_factory.run(main)


def test_network_large_data_echo(runner_factory: Any) -> None:
    # commonware test_network_large_data: many 8 KiB chunks echoed one round trip at a time.
    chunk_size = 8 * 1024
    chunks = 128
    pattern = bytes(i % 256 for i in range(chunk_size))

    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))

        async def server(c: Any) -> int:
            _, sink, stream = await listener.accept()
            for _ in range(chunks):
                await sink.send(await stream.recv(chunk_size))
            return chunks

        server_handle = ctx.spawn(server)
        sink, stream = await ctx.dial(listener.local_addr())
        for _ in range(chunks):
            await sink.send(pattern)
            assert await stream.recv(chunk_size) == pattern
        assert await server_handle == chunks

    runner_factory.run(main)


def test_network_sequential_clients_on_one_listener(runner_factory: Any) -> None:
    # commonware test_network_multiple_clients: one accept loop serving clients one by one.
    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))

        async def server(c: Any) -> None:
            for _ in range(3):
                _, sink, stream = await listener.accept()
                assert await stream.recv(16) == b"client_send_data"
                await sink.send(b"server_send_data")

        server_handle = ctx.spawn(server)
        for _ in range(3):
            sink, stream = await ctx.dial(listener.local_addr())
            await sink.send(b"client_send_data")
            assert await stream.recv(16) == b"server_send_data"
        await server_handle

    runner_factory.run(main)


# -- recv: memory follows what arrived (issue 9) -----------------------------------------


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``, Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
def test_network_recv_of_a_hostile_length_costs_what_arrived(runner_factory: Any) -> None:
    # A peer announces 16 GiB and sends 1 KB: waiting for the 16 GiB must cost about the
    # 1 KB that arrived, during the wait and after the timeout, and lose nothing.
    announced = 16 << 30
    payload = bytes(range(256)) * 4
    limit = 8 << 20  # "a few MB": interpreter noise, never gigabytes

    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))

        async def peer(c: Any) -> None:
            _, sink, stream = await listener.accept()
            await sink.send(b"warm")
            await sink.send(announced.to_bytes(8, "big") + payload)
            await stream.recv(4)  # hold the connection open until told

        ctx.spawn(peer)
        sink, stream = await ctx.dial(listener.local_addr())
        assert await stream.recv(4) == b"warm"
        gc.collect()
        before = resident_bytes()
        length = int.from_bytes(await stream.recv(8), "big")
        assert length == announced
        during: list[int] = []

        async def sample(c: Any) -> None:
            for _ in range(5):
                await c.sleep(0.05)
                during.append(resident_bytes())

        sampler = ctx.spawn(sample)
        with pytest.raises(Timeout):
            await ctx.timeout(0.5, stream.recv(length))
        await sampler
        gc.collect()
        after = resident_bytes()
        assert max(during) - before < limit, f"resident memory grew by {max(during) - before} bytes while waiting"
        assert after - before < limit, f"resident memory grew by {after - before} bytes after the timeout"
        # A cancelled recv consumed nothing: the bytes that did arrive are still there.
        assert stream.peek(2048) == payload
        assert await stream.recv(len(payload)) == payload
        await sink.send(b"done")

    runner_factory.run(main)


def test_network_recv_rejects_impossible_lengths_at_the_call(runner_factory: Any) -> None:
    from commonware_runtime import MAX_RECV

    assert MAX_RECV == 1 << 36

    async def main(ctx: Any) -> None:
        listener = await ctx.bind((LOCALHOST, 0))

        async def peer(c: Any) -> None:
            _, sink, stream = await listener.accept()
            await sink.send(b"xy")
            await stream.recv(1)

        ctx.spawn(peer)
        sink, stream = await ctx.dial(listener.local_addr())
        for bad in (-1, MAX_RECV + 1, 1 << 40, 1 << 63, 1 << 64):
            with pytest.raises(ValueError, match=str(bad)):
                await stream.recv(bad)
        with pytest.raises(ValueError, match="MAX_RECV"):
            await stream.recv(1 << 40)
        for wrong in (1.0, "2", None, True):
            with pytest.raises(TypeError):
                await stream.recv(wrong)
        # Refused before any effect: the stream is not poisoned and its bytes are intact.
        assert await stream.recv(2) == b"xy"
        await sink.send(b"!")

    runner_factory.run(main)


# -- a failed sync poisons the blob (issue 9) ---------------------------------------------


def failing_syncs(runner_factory: Any, monkeypatch: pytest.MonkeyPatch, ctx: Any) -> Any:
    """A context manager under which every sync fails: an injected fault in the simulation,
    a failing ``fdatasync`` (EIO) in production."""
    import contextlib
    import errno

    @contextlib.contextmanager
    def failing() -> Any:
        if runner_factory.deterministic:
            ctx.storage_faults.sync_rate = 1.0
            try:
                yield
            finally:
                ctx.storage_faults.sync_rate = 0.0
        else:
            def fail(fd: int) -> None:
                raise OSError(errno.EIO, "injected fdatasync error")

            with monkeypatch.context() as m:
                m.setattr(os, "fdatasync", fail)
                if runner_factory.kind == "production-iouring":
                    from commonware_runtime.production import iouring, storage

                    async def fail_on_ring(blob: Any, driver: Any, fd: int) -> None:
                        # A real ring fsync whose completion is an error (EBADF).
                        await driver.start(blob, driver.ring.submit_fsync, (-1, True))

                    m.setitem(iouring._RING_OPS, storage._datasync, fail_on_ring)
                yield

    return failing()


@pytest.mark.storage_runtimes
def test_storage_failed_sync_poisons_until_reopened(runner_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(ctx: Any) -> None:
        blob, _ = await ctx.open("poison", b"log")
        await blob.write_at(b"synced", 0)
        await blob.sync()
        other, _ = await ctx.open("poison", b"log")
        await blob.write_at(b"+unsynced", 6)
        with failing_syncs(runner_factory, monkeypatch, ctx):
            with pytest.raises(BlobSyncFailed, match=r"blob b'log' in partition 'poison'") as first:
                await blob.sync()
        assert "poisoned" in str(first.value)
        # Syncing works again, but a retry must not report success for writes the failed
        # sync may have dropped: the blob refuses everything until it is reopened, through
        # every handle, on both runtimes alike.
        for handle in (blob, other):
            with pytest.raises(BlobSyncFailed, match=r"sync on blob b'log' in partition 'poison': an earlier sync failed"):
                await handle.sync()
            with pytest.raises(BlobSyncFailed, match="earlier sync failed"):
                await handle.read_at(6, 0)
            with pytest.raises(BlobSyncFailed, match="earlier sync failed"):
                await handle.write_at(b"x", 0)
            with pytest.raises(BlobSyncFailed, match="earlier sync failed"):
                await handle.resize(3)
        # A handle opened while the blob is poisoned is poisoned too.
        third, _ = await ctx.open("poison", b"log")
        with pytest.raises(BlobSyncFailed, match="earlier sync failed"):
            await third.sync()
        # Closing reports the failure again, and closes.
        for handle in (blob, other, third):
            with pytest.raises(BlobSyncFailed, match="closed, but a sync failed"):
                await handle.close()
            with pytest.raises(Closed):
                await handle.read_at(1, 0)
        # Reopened: usable again.  The synced bytes are there; whether the unsynced ones
        # are is up to the file system (the simulation drops them).
        fresh, size = await ctx.open("poison", b"log")
        assert size in (6, 15)
        assert await fresh.read_at(6, 0) == b"synced"
        await fresh.write_at(b"!", size)
        await fresh.sync()
        await fresh.close()

    runner_factory.run(main)
