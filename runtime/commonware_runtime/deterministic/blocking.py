"""Blocking functions on the deterministic runtime: run at the call, bounded in wall-clock time.

``context.spawn_blocking``, ``loop.run_in_executor`` and ``asyncio.to_thread`` run their
function at once, the event loop waiting for it, so its effects are ordered like any other
step of the schedule.  A function that waits for something only the loop can produce (a
``queue.Queue`` a task fills, a janus-style sync/async queue, ``run_coroutine_threadsafe(...)
.result()``) would therefore wait forever, silently.  So the function runs in a helper
thread and the loop thread waits for it at most ``blocking_timeout`` seconds of wall-clock
time (default ``DEFAULT_BLOCKING_TIMEOUT``, 10 s); past it the caller gets
``BlockingStalled``, naming the function and saying that it appears to wait on the event
loop.  The loop does nothing while it waits, so determinism is kept: the thread only moves
the work off the loop's stack, never in parallel with it.

* Set the bound with ``deterministic.Config(blocking_timeout=...)``, or on a bare
  ``EventLoop`` with ``loop.blocking_timeout = seconds``; ``None`` runs the function inline
  on the loop's thread with no bound (the behaviour before the bound existed).
* While the function runs, the helper thread counts as the loop's own for
  ``call_soon_threadsafe`` (the loop's thread is parked, so the call is as safe as from a
  callback); ``asyncio.get_running_loop()`` finds no loop there, as in the executor
  threads of the production runtime.  A function that really needs the loop's thread can be
  run with ``blocking_timeout=None``.
* A function abandoned at the timeout keeps its thread (a daemon) until it returns; from
  then on it no longer counts as the loop's own, so a late ``call_soon_threadsafe`` from it
  fails instead of slipping into the schedule.
* Helper threads are reused (a few idle ones are kept): a call costs two thread switches,
  a few microseconds.
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
from collections.abc import Callable
from typing import Any

from ..errors import BlockingStalled

__all__ = ["DEFAULT_BLOCKING_TIMEOUT", "run_blocking", "check_blocking_timeout", "set_blocking_timeout"]

#: Seconds of wall-clock time a blocking function may take on the deterministic runtime.
DEFAULT_BLOCKING_TIMEOUT = 10.0
_MAX_IDLE = 4  # idle helper threads kept for reuse


def check_blocking_timeout(value: object) -> float | None:
    """``None`` or positive seconds (an int, float or timedelta); else TypeError/ValueError."""
    if value is None:
        return None
    from ..arguments import NS_PER_SECOND, duration_ns

    ns = duration_ns(value, "blocking_timeout")  # type: ignore[arg-type]
    if ns == 0:
        raise ValueError(f"blocking_timeout must be positive (or None for no bound), got {value!r}")
    return ns / NS_PER_SECOND


def set_blocking_timeout(loop: Any, value: object) -> None:
    """Bound the blocking functions of ``loop`` (an ``EventLoop``): see the module docs."""
    loop.blocking_timeout = check_blocking_timeout(value)


class _Worker:
    """A helper thread that runs one function at a time for a waiting loop thread."""

    __slots__ = ("thread", "_go", "done", "job", "result", "error")

    def __init__(self) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.job: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="commonware-sim-blocking", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        while True:
            self._go.acquire()
            job = self.job
            if job is None:
                return  # retired
            self.job = None
            fn, args = job
            try:
                self.result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                self.error = exc
            del fn, args, job
            self.done.release()

    def start(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.job = (fn, args)
        self._go.release()

    def retire(self) -> None:
        self.job = None
        self._go.release()


_idle: list[_Worker] = []
_idle_lock = threading.Lock()


def _forget_workers() -> None:
    # A forked child has none of its parent's threads: it starts its own when it needs them.
    global _idle_lock
    _idle.clear()
    _idle_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _take() -> _Worker:
    with _idle_lock:
        if _idle:
            return _idle.pop()
    return _Worker()


def _give_back(worker: _Worker) -> None:
    with _idle_lock:
        if len(_idle) < _MAX_IDLE:
            _idle.append(worker)
            return
    worker.retire()


def run_blocking(loop: Any, fn: Callable[..., Any], args: tuple[Any, ...] = ()) -> Any:
    """``fn(*args)``, run while the loop thread waits at most ``loop.blocking_timeout``
    seconds (see the module documentation); ``BlockingStalled`` past it."""
    timeout = getattr(loop, "blocking_timeout", DEFAULT_BLOCKING_TIMEOUT)
    if timeout is None:
        return fn(*args)
    worker = _take()
    owner = loop._thread_id
    loop._thread_id = worker.thread.ident  # call_soon_threadsafe from the job is the loop's own
    try:
        worker.start(fn, args)
        finished = worker.done.acquire(timeout=timeout)
    except BaseException:
        # Interrupted while waiting (KeyboardInterrupt): the worker is abandoned.
        loop._thread_id = owner
        raise
    loop._thread_id = owner
    if not finished:
        raise BlockingStalled(
            f"blocking function {describe(fn, args)} did not return within {timeout:g} s of wall-clock time: "
            "it appears to wait on the event loop, which cannot run while a blocking function runs on the "
            "deterministic runtime (spawn_blocking, run_in_executor and to_thread run at the call, the loop "
            "waiting for them).  Make it wait for nothing a task produces, or raise blocking_timeout "
            "(deterministic.Config(blocking_timeout=...)) if it is only slow"
        )
    result, error = worker.result, worker.error
    worker.result = worker.error = None
    _give_back(worker)
    if error is not None:
        try:
            raise error
        finally:
            del error
    return result


def describe(fn: Callable[..., Any], args: tuple[Any, ...] = ()) -> str:
    """How an error names a blocking function: ``module.qualname() at file:line``, looking
    through ``functools.partial`` and the ``Context.run`` wrapper of ``asyncio.to_thread``."""
    for _ in range(16):
        if isinstance(fn, functools.partial):
            args = fn.args + tuple(args)
            fn = fn.func
        elif getattr(fn, "__self__", None).__class__ is contextvars.Context and getattr(fn, "__name__", "") == "run" and args:
            fn, args = args[0], tuple(args[1:])
        else:
            break
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str):
        return repr(fn)
    module = getattr(fn, "__module__", None)
    if isinstance(module, str) and module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__func__", None), "__code__", None)
    where = f" at {os.path.basename(code.co_filename)}:{code.co_firstlineno}" if code is not None else ""
    return f"{name}(){where}"
