"""What both runtimes share: per-runner state and the runtime-independent half of ``Context``.

``RuntimeCore`` holds the registry, counters, stop state and panic policy of one
runner.  ``BaseContext`` implements the spawner, shutdown, labels and metrics once, on
plain asyncio tasks; ``deterministic.Context`` and ``production.Context`` add the
clock, network, storage and randomness that differ (the runtime isolation rule:
protocol code sees one API).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from .arguments import Duration, check_label, duration_seconds, join_label, optional_duration_ns
from .errors import Closed, Timeout
from .metrics import Metrics, RuntimeCounters
from .signal import Signal, _State
from .tasks import _ABORTED, _ERR, _OK, Handle, drive

T = TypeVar("T")
_CoroutineType = types.CoroutineType
logger = logging.getLogger("commonware_runtime")


class Storage(Protocol):
    """What each runtime's storage offers its contexts (the blobs themselves: interfaces.Blob)."""

    async def open(self, partition: str, name: bytes) -> Any: ...

    async def remove(self, partition: str, name: bytes | None = None) -> None: ...

    async def scan(self, partition: str) -> list[bytes]: ...


class RuntimeCore:
    """State shared by every context of one runner."""

    @property
    def storage(self) -> Storage:
        """Each runtime's core provides its own (the simulation builds it on first use)."""
        raise NotImplementedError

    def __init__(self, *, catch_panics: bool, deterministic: bool) -> None:
        self.catch_panics = catch_panics
        self.metrics = Metrics(deterministic=deterministic, on_register=self._on_register)
        self.counters: RuntimeCounters = self.metrics.counters
        self.stop_state = _State()
        self.holds = 0
        self.stop_waiters: list[asyncio.Future[None]] = []
        self.panic: BaseException | None = None
        self.root: Handle[Any] | None = None

    def _on_register(self, name: str, kind: str) -> None:
        """Hook for the auditor (deterministic runtime)."""

    def new_task(self, handle: Handle[Any], awaitable: Awaitable[Any]) -> None:
        handle._pending = awaitable
        handle._task = asyncio.get_running_loop().create_task(drive(self, handle, awaitable), name=handle.name)

    def task_failed(self, handle: Handle[Any], exc: BaseException) -> None:
        name = handle.name or "<unlabeled>"
        if handle is self.root:
            return  # the root's failure propagates from start(); nothing to log or stop here
        if self.catch_panics and isinstance(exc, Exception):
            logger.error("task %r raised %s: %s", name, type(exc).__name__, exc, exc_info=exc)
            return
        if self.panic is None:
            self.panic = exc
            self.on_panic()

    def root_finished(self) -> None:
        """Called once, in the root task's last step (the deterministic runtime fingerprints here)."""

    def on_panic(self) -> None:
        """Stop the run so start() can raise the panic (both runtimes stop their loop)."""
        asyncio.get_running_loop().stop()

    def run_root(self, loop: asyncio.AbstractEventLoop, main: Callable[[Any], Awaitable[T]], context: BaseContext) -> T:
        """Run the root task to its end on ``loop``; return its value or raise what ended the run."""
        handle = self.root
        assert handle is not None
        awaitable = main(context)
        if not inspect.isawaitable(awaitable):
            raise TypeError(f"main {main!r} must return an awaitable, got {type(awaitable).__name__}")
        task = loop.create_task(drive(self, handle, awaitable), name="root")
        handle._task = task
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            if handle._state != _ABORTED:  # the root was aborted (production: a second signal)
                raise
        except RuntimeError:
            if self.panic is None or task.done():  # on_panic stopped the loop before the root finished
                raise
        if self.panic is not None:
            raise self.panic
        if handle._state == _ERR:
            raise handle._value
        if handle._state == _ABORTED:
            raise Closed("the root task was cancelled")
        assert handle._state == _OK
        value: T = handle._value
        return value

    # -- shutdown -------------------------------------------------------------------------

    def hold(self, record: Handle[Any] | None) -> Signal:
        signal = Signal(self.stop_state, self._release)
        if self.stop_state.value is not None and record is None:
            return signal
        self.holds += 1
        if record is not None:
            if record.signals is None:
                record.signals = [signal]
            else:
                record.signals.append(signal)
        return signal

    def _release(self, signal: Signal) -> None:
        self.holds -= 1
        if self.stop_waiters:
            waiters, self.stop_waiters = self.stop_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def release_signals(self, record: Handle[Any]) -> None:
        signals, record.signals = record.signals, None
        for signal in signals or ():
            signal.release()

    async def stop(self, value: int, timeout: Duration | None, caller: Handle[Any] | None) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"stop value must be an int, got {type(value).__name__} {value!r}")
        deadline = None if timeout is None else duration_seconds(timeout, "timeout")
        self.stop_state.resolve(value)

        def own_holds() -> int:
            # The caller may hold a signal itself; waiting for its own release would deadlock.
            if caller is None or caller.signals is None:
                return 0
            return sum(1 for s in caller.signals if not s.released)

        async def drained() -> None:
            loop = asyncio.get_running_loop()
            while self.holds - own_holds() > 0:
                fut: asyncio.Future[None] = loop.create_future()
                self.stop_waiters.append(fut)
                await fut

        if deadline is None:
            await drained()
            return
        try:
            async with asyncio.timeout(deadline):
                await drained()
        except TimeoutError:
            raise Timeout(
                f"stop({value}) timed out after {deadline}s with {self.holds - own_holds()} signal(s) still held"
            ) from None


class BaseContext:
    """The runtime-independent half of ``Context``."""

    __slots__ = ("_core", "_label", "_record")

    def __init__(self, core: RuntimeCore, label: str, record: Handle[Any] | None) -> None:
        self._core = core
        self._label = label
        self._record = record

    def _derive(self, label: str, record: Handle[Any] | None) -> BaseContext:
        clone = object.__new__(type(self))
        clone._core = self._core
        clone._label = label
        clone._record = record
        return clone

    # -- labels ---------------------------------------------------------------------------

    @property
    def label(self) -> str:
        return self._label

    def with_label(self, label: str) -> BaseContext:
        return self._derive(join_label(self._label, check_label(label)), self._record)

    # -- spawner --------------------------------------------------------------------------

    def _spawn(self, fn: Callable[[Any], Awaitable[T]], parent: Handle[Any] | None) -> Handle[T]:
        if not callable(fn):
            raise TypeError(f"spawn expects a callable taking the context, got {fn!r}")
        handle: Handle[T] = Handle(self._label)
        awaitable = fn(self._derive(self._label, handle))
        if type(awaitable) is not _CoroutineType and not inspect.isawaitable(awaitable):
            raise TypeError(f"spawned function {fn!r} must return an awaitable, got {type(awaitable).__name__}")
        if parent is not None:
            parent.adopt(handle)
        self._core.new_task(handle, awaitable)
        return handle

    def spawn(self, fn: Callable[[Any], Awaitable[T]]) -> Handle[T]:
        """Start ``fn(ctx)`` as a new task with its own context; it runs even if never awaited."""
        return self._spawn(fn, None)

    def spawn_child(self, fn: Callable[[Any], Awaitable[T]]) -> Handle[T]:
        """Like ``spawn``, but aborted when the spawning task finishes or is aborted."""
        return self._spawn(fn, self._record)

    def spawn_blocking(self, fn: Callable[[Any], T], dedicated: bool = False) -> Handle[T]:
        """Run the plain function ``fn(ctx)`` off the event loop; returns a Handle."""
        if not callable(fn):
            raise TypeError(f"spawn_blocking expects a callable taking the context, got {fn!r}")
        if not isinstance(dedicated, bool):
            raise TypeError(f"dedicated must be a bool, got {dedicated!r}")
        handle: Handle[T] = Handle(self._label)
        ctx = self._derive(self._label, handle)
        self._core.new_task(handle, self._run_blocking(fn, ctx, dedicated))
        return handle

    async def _run_blocking(self, fn: Callable[[Any], T], ctx: BaseContext, dedicated: bool) -> T:
        raise NotImplementedError

    def spawn_ref(self) -> Callable[[Awaitable[T]], Handle[T]]:
        """A one-shot spawner taking an awaitable; a second use raises RuntimeError."""
        used = False

        def spawner(awaitable: Awaitable[T]) -> Handle[T]:
            nonlocal used
            if used:
                raise RuntimeError("spawn_ref() spawner was already used; take a new one for each task")
            if not inspect.isawaitable(awaitable):
                raise TypeError(f"spawn_ref spawner expects an awaitable, got {type(awaitable).__name__}")
            handle = self._spawn(lambda _ctx: awaitable, None)
            used = True  # only a spawn that happened uses the spawner up
            return handle

        return spawner

    def spawn_blocking_ref(self, dedicated: bool = False) -> Callable[[Callable[[], T]], Handle[T]]:
        """A one-shot spawner taking a zero-argument function; a second use raises RuntimeError."""
        if not isinstance(dedicated, bool):
            raise TypeError(f"dedicated must be a bool, got {dedicated!r}")
        used = False

        def spawner(fn: Callable[[], T]) -> Handle[T]:
            nonlocal used
            if used:
                raise RuntimeError("spawn_blocking_ref() spawner was already used; take a new one for each task")
            if not callable(fn):
                raise TypeError(f"spawn_blocking_ref spawner expects a callable, got {fn!r}")
            handle = self.spawn_blocking(lambda _ctx: fn(), dedicated)
            used = True
            return handle

        return spawner

    # -- shutdown -------------------------------------------------------------------------

    async def stop(self, value: int, timeout: Duration | None = None) -> None:
        """Resolve every ``stopped()`` signal with ``value`` and wait until all are released."""
        if timeout is not None:
            optional_duration_ns(timeout, "timeout")
        await self._core.stop(value, timeout, self._record)

    def stopped(self) -> Signal:
        """A signal resolving to the stop value, held until released or its task ends."""
        return self._core.hold(self._record)

    # -- clock (shared parts) -------------------------------------------------------------

    def current(self) -> float:
        raise NotImplementedError

    async def sleep(self, duration: Duration) -> None:
        await asyncio.sleep(duration_seconds(duration, "duration"))

    async def timeout(self, duration: Duration, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``; raise ``Timeout`` if it takes longer than ``duration``."""
        if not inspect.isawaitable(awaitable):
            raise TypeError(f"timeout expects an awaitable, got {type(awaitable).__name__}")
        try:
            seconds = duration_seconds(duration, "duration")
        except (TypeError, ValueError):
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # refused before it started: no "never awaited" warning
            raise
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await awaitable
        except TimeoutError:
            if not deadline.expired():
                raise  # the awaited code's own TimeoutError, not our deadline
            raise Timeout(f"operation did not finish within {seconds}s") from None

    # -- storage (each runtime's core has a ``storage`` with open/remove/scan) ---------------

    async def open(self, partition: str, name: bytes) -> Any:
        """Open (or create) blob ``name`` of ``partition``; returns ``(blob, size)``."""
        return await self._core.storage.open(partition, name)

    async def remove(self, partition: str, name: bytes | None = None) -> None:
        """Remove one blob, or the whole partition when ``name`` is None."""
        await self._core.storage.remove(partition, name)

    async def scan(self, partition: str) -> list[bytes]:
        """The sorted names of the blobs of ``partition``."""
        return await self._core.storage.scan(partition)

    # -- metrics --------------------------------------------------------------------------

    def register(self, name: str, help: str, kind: type, **kwargs: Any) -> Any:
        """Register a prometheus_client metric named ``<label>_<name>`` in the runner's registry."""
        return self._core.metrics.register(self._label, name, help, kind, **kwargs)

    def encode(self) -> str:
        """Prometheus text exposition of every metric of this runner."""
        return self._core.metrics.encode()

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} label={self._label!r}>"
