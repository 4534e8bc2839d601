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
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import Closed, Exited

if TYPE_CHECKING:
    from .core import RuntimeCore
    from .signal import Signal

T = TypeVar("T")

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
            raise Closed(f"task {self.name or '<unlabeled>'!r} was aborted")
        exc = self._value
        raise Exited(f"task {self.name or '<unlabeled>'!r} raised {type(exc).__name__}: {exc}") from exc

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


def discard(awaitable: Any) -> None:
    """Close a coroutine that will never run, so Python does not warn it was never awaited."""
    if inspect.iscoroutine(awaitable) and inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED:
        awaitable.close()


def discard_unstarted(task: asyncio.Task[Any], *, abandon: bool = False) -> None:
    """For a task about to be cancelled: if its driver never started, close what it would
    have run.  ``abandon=True`` (the loop will never run again) closes the driver too."""
    coro = task.get_coro()
    if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
        if coro.cr_code is drive.__code__ and coro.cr_frame is not None:
            discard(coro.cr_frame.f_locals.get("awaitable"))
        if abandon:
            coro.close()
