"""Blocking functions on the deterministic runtime end with an error when they wait on the
loop (issue 9): ``spawn_blocking``, ``run_in_executor`` and ``asyncio.to_thread`` run at the
call, the loop waiting for them at most ``blocking_timeout`` seconds of wall-clock time."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from commonware_runtime import BlockingStalled, Error, Exited, RuntimeStalled, deterministic
from commonware_runtime.deterministic import EventLoop, UnsupportedOperation
from commonware_runtime.deterministic.blocking import DEFAULT_BLOCKING_TIMEOUT, describe

BOUND = 0.3
SLACK = 5.0  # generous: a loaded machine may be slow to wake the waiting thread


def run(main: Any, **config: Any) -> Any:
    return deterministic.Runner(deterministic.Config(seed=3, **config)).start(main)


def filled_later(ctx: Any) -> queue.Queue[int]:
    """A queue.Queue that a task fills a little later: a blocking get waits on the loop."""
    q: queue.Queue[int] = queue.Queue()

    async def filler(c: Any) -> None:
        await c.sleep(0.1)
        q.put(1)

    ctx.spawn(filler)
    return q


@pytest.mark.parametrize("how", ["to_thread", "run_in_executor", "spawn_blocking"])
def test_a_blocking_get_filled_by_a_task_ends_with_an_error(how: str) -> None:
    async def main(ctx: Any) -> tuple[str, float]:
        q = filled_later(ctx)
        began = time.monotonic()
        with pytest.raises((BlockingStalled, Exited)) as info:
            if how == "to_thread":
                await asyncio.to_thread(q.get)
            elif how == "run_in_executor":
                await asyncio.get_running_loop().run_in_executor(None, q.get)
            else:
                await ctx.spawn_blocking(lambda c: q.get())
        error = info.value
        if how == "spawn_blocking":  # a panic of the spawned task, caught: Exited from its cause
            assert isinstance(error, Exited) and isinstance(error.__cause__, BlockingStalled)
            error = error.__cause__
        assert isinstance(error, BlockingStalled)
        return str(error), time.monotonic() - began

    message, elapsed = run(main, blocking_timeout=BOUND, catch_panics=True)
    assert BOUND * 0.9 <= elapsed < BOUND + SLACK
    assert "appears to wait on the event loop" in message
    assert "0.3 s" in message and "blocking_timeout" in message
    if how == "spawn_blocking":
        assert "test_a_blocking_get_filled_by_a_task_ends_with_an_error.<locals>.main.<locals>.<lambda>()" in message
    else:
        assert "queue.Queue.get()" in message


def test_the_error_is_a_stall_and_fails_the_run_when_not_caught() -> None:
    assert issubclass(BlockingStalled, RuntimeStalled) and issubclass(BlockingStalled, Error)

    async def main(ctx: Any) -> None:
        q = filled_later(ctx)
        await asyncio.to_thread(q.get)

    began = time.monotonic()
    with pytest.raises(BlockingStalled, match="queue.Queue.get"):
        run(main, blocking_timeout=timedelta(milliseconds=200))
    assert time.monotonic() - began < 0.2 + SLACK


def test_run_coroutine_threadsafe_result_from_a_blocking_function() -> None:
    # The classic: a thread submits a coroutine to the loop and waits for its result.
    async def main(ctx: Any) -> str:
        loop = asyncio.get_running_loop()

        async def answer() -> int:
            return 42

        def wait_for_the_loop() -> int:
            return asyncio.run_coroutine_threadsafe(answer(), loop).result()

        with pytest.raises(BlockingStalled, match="wait_for_the_loop") as info:
            await asyncio.to_thread(wait_for_the_loop)
        return str(info.value)

    assert "appears to wait on the event loop" in run(main, blocking_timeout=BOUND)


class SyncAsyncQueue:
    """A minimal janus-style queue: a sync side for threads, an async side for tasks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[int] = []
        self._cond = threading.Condition()
        self._async_waiters: list[asyncio.Future[None]] = []

    def sync_put(self, item: int) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()
        self._loop.call_soon_threadsafe(self._wake_async)

    def sync_get(self) -> int:
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.pop(0)

    def _wake_async(self) -> None:
        for fut in self._async_waiters:
            if not fut.done():
                fut.set_result(None)
        self._async_waiters.clear()

    async def async_put(self, item: int) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    async def async_get(self) -> int:
        while True:
            with self._cond:
                if self._items:
                    return self._items.pop(0)
            fut = self._loop.create_future()
            self._async_waiters.append(fut)
            await fut


def test_a_sync_async_queue() -> None:
    # Putting from a blocking function (it notifies the loop with call_soon_threadsafe)
    # works and is deterministic; getting what only a task will put ends with the error.
    async def main(ctx: Any) -> tuple[list[int], str]:
        q = SyncAsyncQueue(asyncio.get_running_loop())
        await asyncio.to_thread(q.sync_put, 1)
        await ctx.spawn_blocking(lambda c: q.sync_put(2))
        got = [await q.async_get(), await q.async_get()]

        async def producer(c: Any) -> None:
            await c.sleep(0.5)
            await q.async_put(3)

        ctx.spawn(producer)
        with pytest.raises(BlockingStalled):
            await asyncio.to_thread(q.sync_get)
        return got, ctx.auditor().state()

    first = run(main, blocking_timeout=BOUND)
    assert first[0] == [1, 2]
    assert run(main, blocking_timeout=BOUND) == first  # the same schedule, run after run


def test_an_abandoned_function_cannot_reach_the_loop_later() -> None:
    late: list[BaseException] = []
    release = threading.Event()

    async def main(ctx: Any) -> None:
        loop = asyncio.get_running_loop()

        def slow() -> None:
            release.wait(10)
            try:
                loop.call_soon_threadsafe(lambda: None)
            except BaseException as exc:  # noqa: BLE001 - recorded for the test
                late.append(exc)

        with pytest.raises(BlockingStalled):
            await asyncio.to_thread(slow)
        release.set()
        for _ in range(200):  # the loop's thread waits (wall clock) for the straggler
            if late:
                break
            time.sleep(0.01)

    run(main, blocking_timeout=0.1)
    assert len(late) == 1 and isinstance(late[0], UnsupportedOperation)


def test_results_and_exceptions_come_back_through_the_helper() -> None:
    async def main(ctx: Any) -> list[Any]:
        def boom() -> None:
            raise KeyError("from the thread")

        with pytest.raises(KeyError, match="from the thread"):
            await asyncio.to_thread(boom)
        handle = ctx.spawn_blocking(lambda c: c.label)
        return [await asyncio.to_thread(sum, [1, 2, 3]), await handle, asyncio.get_running_loop().blocking_timeout]

    assert run(main) == [6, "", DEFAULT_BLOCKING_TIMEOUT]


def test_blocking_timeout_none_runs_inline_on_the_loop_thread() -> None:
    async def main(ctx: Any) -> bool:
        loop_thread = threading.get_ident()
        return await asyncio.to_thread(lambda: threading.get_ident() == loop_thread)

    assert run(main, blocking_timeout=None) is True
    assert run(main) is False


def test_blocking_timeout_on_a_bare_event_loop() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        assert getattr(loop, "blocking_timeout", DEFAULT_BLOCKING_TIMEOUT) == DEFAULT_BLOCKING_TIMEOUT
        loop.blocking_timeout = BOUND  # type: ignore[attr-defined]
        q: queue.Queue[int] = queue.Queue()
        loop.call_later(0.1, q.put, 1)
        with pytest.raises(BlockingStalled, match="queue.Queue.get") as info:
            await asyncio.to_thread(q.get)
        return str(info.value)

    with asyncio.Runner(loop_factory=lambda: EventLoop(seed=1)) as runner:
        assert "appears to wait on the event loop" in runner.run(main())


def test_config_validates_blocking_timeout() -> None:
    assert deterministic.Config().blocking_timeout == DEFAULT_BLOCKING_TIMEOUT == 10.0
    assert deterministic.Config().with_blocking_timeout(None).blocking_timeout is None
    deterministic.Config(blocking_timeout=timedelta(seconds=2))
    with pytest.raises(ValueError, match="blocking_timeout"):
        deterministic.Config(blocking_timeout=0)
    with pytest.raises(ValueError, match="blocking_timeout"):
        deterministic.Config(blocking_timeout=-1.0)
    with pytest.raises(TypeError, match="blocking_timeout"):
        deterministic.Config(blocking_timeout="10")  # type: ignore[arg-type]


def test_describe_names_the_function() -> None:
    import contextvars
    import functools

    def work(x: int) -> int:
        return x

    assert describe(work).startswith("test_blocking.test_describe_names_the_function.<locals>.work() at test_blocking.py:")
    wrapped = functools.partial(contextvars.copy_context().run, functools.partial(work, 1))
    assert describe(wrapped).startswith("test_blocking.test_describe_names_the_function.<locals>.work()")
    assert describe(queue.Queue().get).startswith("queue.Queue.get() at queue.py:")
    assert describe(len) == "len()"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads (3.12+)
def test_a_forked_child_starts_its_own_helper_threads() -> None:
    async def main(ctx: Any) -> int:
        return await asyncio.to_thread(lambda: 7)

    assert run(main) == 7  # the parent now has an idle helper thread
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            code = 0 if run(main, blocking_timeout=5.0) == 7 else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
