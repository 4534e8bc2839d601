"""Task handles and the driver coroutine that every spawned task runs inside.

The driver records the outcome *in the handle itself* and wakes the handle's waiters
directly, so joining a task costs one scheduler hop (like awaiting an asyncio Task)
while cancelling a joiner never cancels the task it joins ("dropping a handle cancels
nothing").  Exceptions are captured rather than left in the asyncio Task, so asyncio
never logs "exception was never retrieved" for a failure the runtime already reported.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import Closed, Exited, RuntimeStalled, RuntimeTimeout

if TYPE_CHECKING:
    from .core import RuntimeCore
    from .signal import Signal

T = TypeVar("T")
logger = logging.getLogger("commonware_runtime")

_PENDING, _OK, _ERR, _ABORTED = 0, 1, 2, 3


class Handle(Generic[T]):
    """Awaitable handle to a spawned task.

    ``await handle`` returns the task's value, raises ``Closed`` if the task was aborted
    and ``Exited`` (``__cause__`` = the original exception) if it raised.
    """

    __slots__ = ("name", "children", "signals", "_task", "_state", "_value", "_waiters", "_pending")

    def __init__(self, name: str) -> None:
        # The handle is also the runtime's record of its task (one object per spawn, not
        # two: every object a spawn creates is work for the cyclic garbage collector).
        self.name = name
        self.children: list[Handle[Any]] | None = None  # spawn_child handles, aborted with this task
        self.signals: list[Signal] | None = None  # stop signals this task holds
        self._task: asyncio.Task[Any] | None = None
        self._state = _PENDING
        self._value: Any = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._pending: Any = None  # the task's awaitable until the task first runs

    def adopt(self, child: Handle[Any]) -> None:
        children = self.children
        if children is None:
            self.children = [child]
            return
        # Long-lived parents spawn many short children: drop finished ones now and then
        # so the list stays proportional to the live children.
        if len(children) >= 64 and len(children) & (len(children) - 1) == 0:
            children[:] = [c for c in children if not c.done()]
        children.append(child)

    def abort_children(self) -> None:
        children, self.children = self.children, None
        if children:
            for child in children:
                child.abort()

    def done(self) -> bool:
        return self._state != _PENDING

    def abort(self) -> None:
        """Abort the task and, recursively, its children. Idempotent and synchronous."""
        if self._state != _PENDING:
            return
        self._finish(_ABORTED, None)
        task = self._task
        if task is not None:
            task.cancel()
        discard(self._pending)
        self._pending = None
        self.abort_children()

    def _finish(self, state: int, value: Any) -> None:
        if self._state != _PENDING:
            return
        self._state = state
        self._value = value
        waiters, self._waiters = self._waiters, None
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _outcome(self) -> T:
        state = self._state
        if state == _OK:
            value: T = self._value
            return value
        if state == _ABORTED:
            raise Closed(f"task {shown_label(self.name)} was aborted")
        exc = self._value
        raise Exited(f"task {shown_label(self.name)} raised {type(exc).__name__}: {exc}") from exc

    def __await__(self) -> Generator[Any, None, T]:
        if self._state == _PENDING:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = [fut]
            else:
                self._waiters.append(fut)
            yield from fut
        return self._outcome()

    def __repr__(self) -> str:
        state = ("pending", "ok", "raised", "aborted")[self._state]
        return f"<Handle {self.name!r} {state}>"


async def drive(core: RuntimeCore, handle: Handle[Any], awaitable: Awaitable[Any]) -> None:
    """Run one spawned task to its end and record the outcome in its handle."""
    handle._pending = None
    name = handle.name
    # RuntimeCounters.task_started/task_finished inlined: two calls less per task.
    counters = core.counters
    running = counters.tasks_running
    spawned = counters.tasks_spawned
    spawned[name] = spawned.get(name, 0) + 1
    running[name] = running.get(name, 0) + 1
    finalizing = False
    try:
        value = await awaitable
    except GeneratorExit:
        # The coroutine of an abandoned run is being garbage-collected: its loop is gone,
        # so there is nobody to notify and nothing may be scheduled.
        finalizing = True
        raise
    except asyncio.CancelledError:
        handle._finish(_ABORTED, None)
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, none is swallowed
        handle._finish(_ERR, exc)
        core.task_failed(handle, exc)
        if not isinstance(exc, Exception):
            raise
    else:
        handle._finish(_OK, value)
    finally:
        running[name] -= 1
        if not finalizing:
            if handle.children is not None:
                handle.abort_children()
            if handle.signals is not None:
                core.release_signals(handle)
            if handle is core.root:
                core.root_finished()


def shown_label(label: str | None) -> str:
    """A task's label as messages quote it; an unlabeled task says so rather than ``''``."""
    return repr(label or "<unlabeled>")


def discard(awaitable: Any) -> None:
    """Close a coroutine that will never run, so Python does not warn it was never awaited."""
    if inspect.iscoroutine(awaitable) and inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED:
        awaitable.close()


def discard_unstarted(task: asyncio.Task[Any], *, abandon: bool = False) -> None:
    """For a task about to be cancelled: if its driver never started, close what it would
    have run.  ``abandon=True`` (the loop will never run again) closes the driver too."""
    coro = task.get_coro()
    if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
        discard(spawned_awaitable(task))
        if abandon:
            coro.close()


# -- recognising the runtime's tasks and code ------------------------------------------------
#
# Three different questions, one helper each (every module asks these, none re-derives them):
#   is_runtime_task     is this asyncio task one the runtime spawned, or a plain asyncio task?
#   spawned_awaitable   what did the spawner hand the runtime to run (the user's coroutine)?
#   is_runtime_plumbing is this frame machinery every task runs through (asyncio, this
#                       package), so that a report should name the frame below it instead?
# Naming a blocking function (deterministic.blocking.describe) and finding the test
# project's own line in a traceback (the plugin's summary: it also skips pytest and installed
# packages) are other questions again.

_DRIVE_CODE = drive.__code__
_PLUMBING_DIRS = (
    os.path.dirname(asyncio.__file__) + os.sep,
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
)


def is_runtime_task(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is one of the runtime's (its coroutine is the ``drive`` wrapper every
    spawn and the root run in), not a task created with plain asyncio."""
    return getattr(task.get_coro(), "cr_code", None) is _DRIVE_CODE


def spawned_awaitable(task: asyncio.Task[Any]) -> Any:
    """What the spawner handed the runtime to run in ``task`` (for ``spawn(fn)``: ``fn``'s
    coroutine), or None for a task that is not the runtime's or whose driver has finished."""
    coro: Any = task.get_coro()
    if getattr(coro, "cr_code", None) is not _DRIVE_CODE or coro.cr_frame is None:
        return None
    return coro.cr_frame.f_locals.get("awaitable")


def is_runtime_plumbing(filename: str) -> bool:
    """Whether code in ``filename`` is asyncio's or this package's: frames every task passes
    through, which say little about where the task's own code is."""
    return filename.startswith(_PLUMBING_DIRS)


# -- the end of a run ------------------------------------------------------------------------
#
# Both runners end a run here, whether the root returned or the run failed (a panic, a
# stall, a timeout, a replay divergence): what is left is cancelled and unwound on the loop,
# so its finally blocks never run later inside the garbage collector, against a closed loop,
# in someone else's code.

#: Seconds of the run's clock (real on production, virtual in the simulation) the leftover
#: tasks get to unwind after each cancellation.
CANCEL_GRACE = 1.0
#: Cancellations a task that swallows them gets before its coroutine is closed.
CANCEL_ATTEMPTS = 3
#: Cancellation rounds (a cancelled task may spawn another) before the rest is closed.
CANCEL_ROUNDS = 100


def cancel_leftovers(
    loop: asyncio.AbstractEventLoop,
    core: RuntimeCore | None,
    *,
    unfinished: Callable[[], list[asyncio.Task[Any]]] | None = None,
    grace: float = CANCEL_GRACE,
    attempts: int = CANCEL_ATTEMPTS,
    rounds: int = CANCEL_ROUNDS,
) -> None:
    """Cancel every unfinished task of ``loop``, in rounds (a cancelled task may spawn
    another), until none is left, running the loop while they unwind.

    A task that swallows ``attempts`` cancellations (it catches ``CancelledError`` and waits
    again) has its coroutine closed, so that the run ends instead of hanging; so does
    whatever still runs after ``rounds`` rounds.  ``unfinished`` lists the tasks in the
    order they are cancelled (the simulation passes its stable-id order: cancelling wakes
    tasks, so the order is part of the schedule); by default asyncio's.  A task that panics
    while unwinding (``catch_panics=False``) is left in ``core.panic`` for the runner to raise.
    """
    if unfinished is None:
        unfinished = lambda: [t for t in asyncio.all_tasks(loop) if not t.done()]  # noqa: E731
    tried: dict[asyncio.Task[Any], int] = {}
    closed: set[asyncio.Task[Any]] = set()
    for _ in range(rounds):
        pending = [t for t in unfinished() if t not in closed]
        if not pending:
            return
        for task in pending:
            count = tried.get(task, 0)
            if count >= attempts:
                _close_stubborn(task, count)
                closed.add(task)
                continue
            tried[task] = count + 1
            discard_unstarted(task)
            task.cancel()
        panic = None if core is None else core.panic
        try:
            _wait_done(loop, pending, grace)
        except (RuntimeStalled, RuntimeTimeout):
            # The simulation's loop says nothing more can happen (or its deadline passed):
            # the wait is over, as when the grace period runs out.
            pass
        except RuntimeError:
            # A task panicked while unwinding (catch_panics=False) and stopped the loop.
            if core is None or core.panic is None or core.panic is panic:
                raise
            continue
        for task in pending:
            if task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    # Runtime tasks report their own failures; only foreign tasks land here.
                    loop.call_exception_handler(
                        {"message": "task raised while the runtime shut down", "exception": error, "task": task}
                    )
    # Still spawning after every round: close what is left (closing may spawn again, once
    # more per round; a task never started is closed without running any of its code).
    for _ in range(rounds):
        left = [t for t in unfinished() if t not in closed]
        if not left:
            return
        logger.warning("%d task(s) still running after %d cancellation rounds: closing their coroutines (%s)",
                       len(left), rounds, ", ".join(repr(t.get_name()) for t in left[:10]))
        for task in left:
            _close_stubborn(task, None)
            closed.add(task)


def _wait_done(loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[Any]], timeout: float) -> None:
    """Run the loop until every task in ``tasks`` is done or ``timeout`` seconds of its clock
    passed (without creating a task of its own, which would outlive a stopped loop)."""
    remaining = {t for t in tasks if not t.done()}
    if not remaining:
        return
    waiter = loop.create_future()

    def done(task: asyncio.Task[Any]) -> None:
        remaining.discard(task)
        if not remaining and not waiter.done():
            waiter.set_result(None)

    def expire() -> None:
        if not waiter.done():
            waiter.set_result(None)

    for task in tasks:  # the list, not the set: the simulation's callbacks keep their order
        if task in remaining:
            task.add_done_callback(done)
    timer = loop.call_later(timeout, expire)
    try:
        loop.run_until_complete(waiter)
    finally:
        timer.cancel()
        for task in tasks:
            task.remove_done_callback(done)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _close_stubborn(task: asyncio.Task[Any], cancellations: int | None) -> None:
    """Close the coroutine of a task that swallowed ``cancellations`` cancellations (or that
    is left after every cancellation round): its ``finally`` blocks run now, and the task,
    which can never finish, is dropped with the loop without a word (should what it awaits
    still complete, the error of resuming a closed coroutine is retrieved, not logged)."""
    if cancellations is not None:
        logger.warning("task %r ignored %d cancellations at the end of the run: closing its coroutine",
                       task.get_name(), cancellations)
    task._log_destroy_pending = False  # type: ignore[attr-defined]
    task.add_done_callback(_retrieve)
    discard_unstarted(task, abandon=True)  # never started: closed without running its code
    coro: Any = task.get_coro()
    try:
        coro.close()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - reported: nothing is dropped silently
        logger.warning("closing task %r that ignored cancellation raised %r", task.get_name(), exc)
