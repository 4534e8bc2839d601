"""The contract as types: what every runtime's ``Context`` and its network and storage
objects provide.

Protocol code is written against these, not against one runtime's classes, so that it
runs unchanged on the deterministic simulation and in production (the "runtime isolation
rule" of commonware).  They are ``typing.Protocol``s: a class conforms by having the
members, and mypy checks that both runtimes' classes do (``tests/test_interfaces.py``)::

    from commonware_runtime.interfaces import Context

    async def main(context: Context) -> bytes:
        listener = await context.bind(("127.0.0.1", 0))
        ...

``deterministic.Context`` adds the simulation's controls (``auditor()``,
``storage_audit()``, ``network``, ``storage_faults``, ``with_host``); code that uses them
is deterministic-only and annotates with that class instead.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

from .deterministic.strategies import Strategy
from .signal import Signal
from .tasks import Handle

__all__ = ["Blob", "Context", "Listener", "Sink", "Strategy", "Stream"]

T = TypeVar("T")
Duration = float | timedelta
Address = tuple[str, int] | str
Buffer = bytes | bytearray | memoryview


class Closing(Protocol):
    """``close()`` is synchronous and returns an awaitable, so ``x.close()`` and
    ``await x.close()`` both work."""

    def close(self) -> Awaitable[None]: ...


@runtime_checkable
class Sink(Closing, Protocol):
    """The sending half of a connection."""

    async def send(self, data: Buffer) -> None:
        """Send every byte of ``data`` (or raise ``SendFailed``; the sink is then poisoned:
        later calls raise ``Closed``)."""
        ...


@runtime_checkable
class Stream(Closing, Protocol):
    """The receiving half of a connection."""

    async def recv(self, n: int) -> bytes:
        """Exactly ``n`` bytes, waiting for as many as it takes (``RecvFailed`` when the
        peer is gone first).  Memory follows the bytes that arrived, not ``n``;
        ``n`` above ``MAX_RECV`` or negative is a ``ValueError`` at the call."""
        ...

    def peek(self, max_n: int) -> bytes:
        """Up to ``max_n`` bytes already received, without consuming them."""
        ...


@runtime_checkable
class Listener(Closing, Protocol):
    """A bound address accepting connections."""

    async def accept(self) -> tuple[tuple[str, int], Sink, Stream]:
        """The next connection: the peer's address and the two halves."""
        ...

    def local_addr(self) -> tuple[str, int]:
        """The bound address (the real port when bound to port 0)."""
        ...


@runtime_checkable
class Blob(Protocol):
    """A named byte array in a partition: reads and writes at offsets, durable on ``sync``."""

    @property
    def size(self) -> int:
        """The current length (``Closed`` after ``close()``)."""
        ...

    async def read_at(self, n_or_buffer: Any, offset: int) -> Any:
        """Exactly ``n`` bytes at ``offset`` (as ``bytes``), or fill the given writable buffer
        and return it; past the end raises ``BlobInsufficientLength``."""
        ...

    async def write_at(self, data: Buffer, offset: int) -> None:
        """Write ``data`` at ``offset`` (a gap is zero-filled).  Not durable until ``sync``."""
        ...

    async def resize(self, length: int) -> None:
        """Truncate or extend (with zeros) to ``length``."""
        ...

    async def sync(self) -> None:
        """Make every earlier write durable.  A failed sync poisons the blob until reopened."""
        ...

    async def close(self) -> None:
        """Release the blob; every later member raises ``Closed``."""
        ...


@runtime_checkable
class Context(Protocol):
    """What a task gets: spawning, clock, network, storage, metrics and shutdown."""

    # -- spawning -----------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """This context's label (labels join with ``_``: ``"a"`` then ``"b"`` is ``a_b``)."""
        ...

    def with_label(self, label: str) -> Context:
        """A context whose tasks and metrics carry ``label`` (``[A-Za-z][A-Za-z0-9_]*``)."""
        ...

    def spawn(self, fn: Callable[[Any], Awaitable[T]]) -> Handle[T]:
        """Run ``fn(child_context)`` as a task; it starts even if the handle is dropped."""
        ...

    def spawn_child(self, fn: Callable[[Any], Awaitable[T]]) -> Handle[T]:
        """As ``spawn``, but aborted when the spawning task ends (recursively)."""
        ...

    def spawn_blocking(self, fn: Callable[[Any], T], dedicated: bool = False) -> Handle[T]:
        """Run the plain function ``fn(child_context)`` off the loop (a thread in production)."""
        ...

    def spawn_ref(self) -> Callable[[Awaitable[T]], Handle[T]]:
        """A one-shot spawner taking an awaitable; a second use raises."""
        ...

    def spawn_blocking_ref(self, dedicated: bool = False) -> Callable[[Callable[[], T]], Handle[T]]:
        """A one-shot spawner taking a zero-argument function; a second use raises."""
        ...

    async def stop(self, value: int, timeout: Duration | None = None) -> None:
        """Resolve every ``stopped()`` signal with ``value`` (the first call's wins), then wait
        until every held signal is released; ``Timeout`` past ``timeout``."""
        ...

    def stopped(self) -> Signal:
        """Resolves to the stop value; also an async context manager releasing itself."""
        ...

    # -- clock ---------------------------------------------------------------------------------
    def current(self) -> float:
        """Seconds since the UNIX epoch (virtual in the simulation)."""
        ...

    async def sleep(self, duration: Duration) -> None: ...

    async def sleep_until(self, deadline: float) -> None:
        """Until ``current() >= deadline`` (a past deadline returns at once)."""
        ...

    async def timeout(self, duration: Duration, awaitable: Awaitable[T]) -> T:
        """The awaitable's value, or ``Timeout`` when ``duration`` passes first."""
        ...

    @property
    def rng(self) -> random.Random:
        """Seeded from the run's seed in the simulation (its own stream), system randomness
        in production."""
        ...

    # -- network -------------------------------------------------------------------------------
    async def bind(self, addr: Address) -> Listener: ...

    async def dial(self, addr: Address) -> tuple[Sink, Stream]: ...

    # -- storage -------------------------------------------------------------------------------
    async def open(self, partition: str, name: bytes) -> tuple[Blob, int]:
        """Open or create a blob; returns it and its size."""
        ...

    async def remove(self, partition: str, name: bytes | None = None) -> None:
        """Remove a blob, or the whole partition when ``name`` is None."""
        ...

    async def scan(self, partition: str) -> list[bytes]:
        """The partition's blob names, sorted."""
        ...

    # -- metrics -------------------------------------------------------------------------------
    def register(self, name: str, help: str, kind: type, **kwargs: Any) -> Any:
        """A prometheus_client metric named with the label prefix (same name and kind: the
        same metric; another kind: ``ValueError``)."""
        ...

    def encode(self) -> str:
        """The Prometheus text exposition of everything registered."""
        ...
