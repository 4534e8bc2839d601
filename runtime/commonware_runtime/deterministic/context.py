"""The deterministic runtime's ``Context``: virtual clock, simulated network and storage."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..arguments import NS_PER_SECOND, Address, Duration, duration_ns, timestamp_ns
from ..auditor import Auditor
from ..core import BaseContext, RuntimeCore
from ..tasks import Handle, drive
from .blocking import run_blocking
from .loop import EventLoop, derive_seed
from .rng import AuditedRandom

if TYPE_CHECKING:
    from .network import Listener, Network, Sink, Stream
    from .storage import Storage, StorageFaults

T = TypeVar("T")
_Future = asyncio.Future
DEFAULT_HOST = "127.0.0.1"


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class DeterministicCore(RuntimeCore):
    """Per-run state of the deterministic runtime."""

    def __init__(
        self,
        *,
        loop: EventLoop,
        seed: int,
        catch_panics: bool,
        start_ns: int,
        user_rng_state: Any = None,
        fault_rng_state: Any = None,
        storage_image: Any = None,
    ) -> None:
        self.loop = loop
        self.auditor: Auditor = loop.auditor
        self.final_auditor: Auditor | None = None  # set when the root finishes
        self.start_ns = start_ns
        super().__init__(catch_panics=catch_panics, deterministic=True)
        self.rng = AuditedRandom(derive_seed(seed, "user"), self.auditor)
        if user_rng_state is not None:
            random.Random.setstate(self.rng, user_rng_state)
        self.fault_rng = random.Random(derive_seed(seed, "faults"))
        if fault_rng_state is not None:
            self.fault_rng.setstate(fault_rng_state)
        self._network: Network | None = None
        self._storage: Storage | None = None
        self._storage_image = storage_image

    # Built on first use: most runs touch neither, and building costs a little per run.
    @property
    def network(self) -> Network:
        if self._network is None:
            from .network import Network

            self._network = Network(auditor=self.auditor, counters=self.counters, rng=self.fault_rng)
        return self._network

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            from .storage import Storage

            self._storage = Storage(
                auditor=self.auditor, counters=self.counters, rng=self.fault_rng, image=self._storage_image
            )
        return self._storage

    def _on_register(self, name: str, kind: str) -> None:
        self.auditor.event("metric", name, kind)

    def on_panic(self) -> None:
        self.loop.stop()

    def root_finished(self) -> None:
        # The run's fingerprint is the auditor as the root leaves it: what runs afterwards
        # (the loop's own stop callback, unwinding leftover tasks) is teardown, not the run.
        self.final_auditor = self.auditor.fork()

    def new_task(self, handle: Handle[Any], awaitable: Awaitable[Any]) -> None:
        # The loop is known: no get_running_loop(), no Handle.name property.
        handle._pending = awaitable
        handle._task = self.loop.create_task(drive(self, handle, awaitable), name=handle.name)


class Context(BaseContext):
    """Everything a task of the deterministic runtime can do."""

    __slots__ = ("_host",)
    _core: DeterministicCore

    def __init__(self, core: DeterministicCore, label: str = "", record: Handle[Any] | None = None, host: str = DEFAULT_HOST) -> None:
        super().__init__(core, label, record)
        self._host = host

    def _derive(self, label: str, record: Handle[Any] | None) -> Context:
        # BaseContext._derive inlined: one frame less per spawn.
        clone = object.__new__(type(self))
        clone._core = self._core
        clone._label = label
        clone._record = record
        clone._host = self._host
        return clone

    def with_label(self, label: str) -> Context:
        return super().with_label(label)  # type: ignore[return-value]

    # -- simulated hosts ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    def with_host(self, ip: str) -> Context:
        """The same context placed on simulated host ``ip``: dials originate there."""
        if not isinstance(ip, str) or not ip:
            raise TypeError(f"host must be a non-empty str (an IP address), got {ip!r}")
        clone = self._derive(self._label, self._record)
        clone._host = ip
        return clone

    # -- spawner --------------------------------------------------------------------------

    async def _run_blocking(self, fn: Callable[[Any], T], ctx: BaseContext, dedicated: bool) -> T:
        # At the task's first step, the loop waiting (bounded, see blocking.py): blocking work
        # is ordered by the scheduler like any other.
        return run_blocking(self._core.loop, fn, (ctx,))  # type: ignore[no-any-return]

    # -- clock ----------------------------------------------------------------------------

    def current(self) -> float:
        core = self._core
        return (core.start_ns + core.loop._now_ns) / NS_PER_SECOND

    async def sleep(self, duration: Duration) -> None:
        # _sleep_until_ns inlined: one coroutine less per sleep.
        loop = self._core.loop
        when_ns = loop._now_ns + duration_ns(duration, "duration")
        if when_ns <= loop._now_ns:
            return
        fut: asyncio.Future[None] = _Future(loop=loop)
        loop.wake_at_ns(when_ns, fut)
        await fut

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the wall-clock instant ``deadline`` (seconds since the epoch)."""
        await self._sleep_until_ns(timestamp_ns(deadline, "deadline") - self._core.start_ns)

    async def _sleep_until_ns(self, when_ns: int) -> None:
        loop = self._core.loop
        if when_ns <= loop._now_ns:
            return
        fut: asyncio.Future[None] = _Future(loop=loop)
        loop.wake_at_ns(when_ns, fut)
        await fut

    # -- randomness -----------------------------------------------------------------------

    @property
    def rng(self) -> random.Random:
        """Seeded from the run's seed on its own stream: scheduling changes never shift it."""
        return self._core.rng

    # -- network --------------------------------------------------------------------------

    async def bind(self, addr: Address) -> Listener:
        return await self._core.network.bind(self._host, addr)

    async def dial(self, addr: Address) -> tuple[Sink, Stream]:
        return await self._core.network.dial(self._host, addr)

    @property
    def network(self) -> Network:
        """Fault controls of the simulated network (latency, partitions, crashes)."""
        return self._core.network

    @property
    def storage_faults(self) -> StorageFaults:
        """Live storage fault controls: per-operation failure rates, partial writes, crash mode."""
        return self._core.storage.faults

    @storage_faults.setter
    def storage_faults(self, faults: StorageFaults) -> None:
        self._core.storage.faults = faults

    # -- audit ----------------------------------------------------------------------------

    def auditor(self) -> Auditor:
        return self._core.auditor

    def storage_audit(self) -> str:
        return self._core.storage.audit()


_ = Awaitable
