"""The production runtime's ``Context``: system clock, real TCP, real files, a thread pool.

Mirror image of ``deterministic.Context``: the spawner, shutdown, labels and metrics come
from ``core.BaseContext``; this module adds what differs (blocking work on real threads,
the wall clock, ``random.SystemRandom``, ``production.network`` and ``production.storage``).

Deterministic-only members (``auditor``, ``storage_audit``, ``network``,
``storage_faults``, ``with_host``, ``host``) do not exist here; touching one raises an
``AttributeError`` that says so, rather than silently doing nothing: a simulated host or
fault control has no meaning on a real machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..arguments import Address, Duration, duration_seconds, timestamp_ns
from ..core import BaseContext, RuntimeCore
from ..tasks import Handle
from .network import NetworkConfig, bind, dial
from .process import ProcessCollector
from .storage import Storage

if TYPE_CHECKING:
    from .network import Listener, Sink, Stream

T = TypeVar("T")
logger = logging.getLogger("commonware_runtime")

# Which runtime task a blocking function belongs to, for log records written from a
# pool or dedicated thread (see telemetry).  Set only while the function runs.
_blocking = threading.local()
_dedicated_ids = itertools.count(1)

_DETERMINISTIC_ONLY = {
    "auditor": "auditor() hashes the deterministic schedule",
    "storage_audit": "storage_audit() hashes simulated storage",
    "network": "network holds the simulated network's fault controls",
    "storage_faults": "storage_faults injects simulated storage failures",
    "with_host": "with_host() places a context on a simulated host",
    "host": "host names a simulated host",
}


def blocking_label() -> str | None:
    """The label of the runtime task whose blocking function runs on this thread, if any."""
    return getattr(_blocking, "label", None)


class ProductionCore(RuntimeCore):
    """Per-run state of the production runtime."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.ThreadPoolExecutor,
        catch_panics: bool,
        network: NetworkConfig,
        storage_directory: str,
        storage_backend: str = "default",
    ) -> None:
        super().__init__(catch_panics=catch_panics, deterministic=False)
        self.loop = loop
        self.executor = executor
        self.network_config = network
        self.storage_directory = storage_directory
        self.rng: random.Random = random.SystemRandom()
        # Resources that live as long as the run (e.g. the telemetry server): the runner
        # calls each after the tasks are cancelled, newest first; a returned awaitable is
        # awaited on the loop.
        self.closers: list[Callable[[], Awaitable[None] | None]] = []
        if storage_backend == "io_uring":
            from .iouring import UringStorage, open_storage  # loaded only when chosen

            storage = open_storage(storage_directory, counters=self.counters, executor=executor)
            if isinstance(storage, UringStorage):
                self.closers.append(storage.close)  # the ring goes before the pool
            self._storage = storage
        else:
            self._storage = Storage(storage_directory, counters=self.counters, executor=executor)
        self.metrics.registry.register(ProcessCollector())

    @property
    def storage(self) -> Storage:
        return self._storage

    def on_panic(self) -> None:
        self.loop.stop()


class Context(BaseContext):
    """Everything a task of the production runtime can do."""

    __slots__ = ()
    _core: ProductionCore

    def __init__(self, core: ProductionCore, label: str = "", record: Handle[Any] | None = None) -> None:
        super().__init__(core, label, record)

    def with_label(self, label: str) -> Context:
        return super().with_label(label)  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: give deterministic-only members a clear message.
        why = _DETERMINISTIC_ONLY.get(name)
        if why is not None:
            raise AttributeError(
                f"production.Context has no {name!r}: {why}, which exists only in the deterministic runtime"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- spawner --------------------------------------------------------------------------

    async def _run_blocking(self, fn: Callable[[Any], T], ctx: BaseContext, dedicated: bool) -> T:
        label = ctx.label

        def call() -> T:
            _blocking.label = label
            try:
                return fn(ctx)
            finally:
                _blocking.label = None

        loop = asyncio.get_running_loop()
        if not dedicated:
            return await loop.run_in_executor(self._core.executor, call)
        return await _on_own_thread(loop, call, label)

    # -- clock ----------------------------------------------------------------------------

    def current(self) -> float:
        """Seconds since the UNIX epoch (the system clock)."""
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the wall-clock instant ``deadline``; a past deadline returns at once."""
        timestamp_ns(deadline, "deadline")
        # Loops round timers (uvloop to whole milliseconds): sleep again until it has passed.
        while (delay := deadline - time.time()) > 0:
            await asyncio.sleep(delay)

    async def sleep(self, duration: Duration) -> None:
        """Sleep at least ``duration``, measured on the monotonic clock."""
        seconds = duration_seconds(duration, "duration")
        end = time.monotonic() + seconds
        await asyncio.sleep(seconds)
        # uvloop rounds a timer to whole milliseconds and may wake up to one early.
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(left)

    # -- randomness -----------------------------------------------------------------------

    @property
    def rng(self) -> random.Random:
        """A ``random.SystemRandom`` (os.urandom underneath); shared by the run's contexts."""
        return self._core.rng

    # -- network --------------------------------------------------------------------------

    async def bind(self, addr: Address) -> Listener:
        return await bind(addr, self._core.network_config, self._core.counters)

    async def dial(self, addr: Address) -> tuple[Sink, Stream]:
        return await dial(addr, self._core.network_config, self._core.counters)

async def _on_own_thread(loop: asyncio.AbstractEventLoop, call: Callable[[], T], label: str) -> T:
    """Run ``call`` on a new daemon thread; its outcome comes back through the loop."""
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, outcome: Any) -> None:
        if fut.done():  # the awaiting task was cancelled: nobody wants the outcome
            if not ok and isinstance(outcome, Exception):
                logger.error("dedicated thread of cancelled task %r raised", label or "<unlabeled>", exc_info=outcome)
            return
        if ok:
            fut.set_result(outcome)
        else:
            fut.set_exception(outcome)

    def body() -> None:
        try:
            value = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            post(False, exc)
        else:
            post(True, value)

    def post(ok: bool, outcome: Any) -> None:
        try:
            loop.call_soon_threadsafe(deliver, ok, outcome)
        except RuntimeError:
            # The run is over (loop closed); the task was cancelled long ago.  Do not lose a failure.
            if not ok:
                logger.error(
                    "dedicated thread of task %r raised after the runtime ended", label or "<unlabeled>", exc_info=outcome
                )

    # Daemon: like a detached std::thread, a dedicated thread never keeps the process alive.
    name = f"commonware-dedicated-{next(_dedicated_ids)}"
    if label:
        name += f"-{label}"
    threading.Thread(target=body, name=name, daemon=True).start()
    return await fut

