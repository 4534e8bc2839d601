"""One-shot broadcast signals: ``Signaler`` / ``Signal`` and the runtime's stop signal.

A ``Signal`` resolves once to an int and can be awaited any number of times by any
number of tasks.  It is not bound to a loop until somebody waits on it, so signals can
be created before a runtime starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any


class _State:
    __slots__ = ("value", "waiters")

    def __init__(self) -> None:
        self.value: int | None = None
        self.waiters: list[asyncio.Future[int]] = []

    def resolve(self, value: int) -> bool:
        if self.value is not None:
            return False
        self.value = value
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(value)
        return True


class Signal:
    """Awaitable resolving to the signalled value.

    A signal from ``context.stopped()`` is *held* until ``release()`` (or leaving
    ``async with``), or until the task that created it finishes; ``context.stop``
    waits for every hold to end.  Signals from ``Signaler.new()`` hold nothing, so
    their ``release()`` only marks them released.
    """

    __slots__ = ("_state", "_on_release", "_released")

    def __init__(self, state: _State, on_release: Callable[[Signal], None] | None = None) -> None:
        self._state = state
        self._on_release = on_release
        self._released = False

    def done(self) -> bool:
        return self._state.value is not None

    @property
    def value(self) -> int | None:
        return self._state.value

    def __await__(self) -> Generator[Any, None, int]:
        state = self._state
        if state.value is None:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            state.waiters.append(fut)
            return (yield from fut)
        return state.value

    def release(self) -> None:
        """Stop holding this signal (idempotent)."""
        if not self._released:
            self._released = True
            if self._on_release is not None:
                self._on_release(self)

    @property
    def released(self) -> bool:
        return self._released

    async def __aenter__(self) -> Signal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        status = "pending" if self._state.value is None else f"value={self._state.value}"
        return f"<Signal {status}{' released' if self._released else ''}>"


class Signaler:
    """The sending side of a one-shot signal."""

    __slots__ = ("_state",)

    def __init__(self, state: _State) -> None:
        self._state = state

    @classmethod
    def new(cls) -> tuple[Signaler, Signal]:
        state = _State()
        return cls(state), Signal(state)

    def signal(self, value: int) -> bool:
        """Resolve every waiter with ``value``; returns False if already signalled."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"signal value must be an int, got {type(value).__name__} {value!r}")
        return self._state.resolve(value)

    def signal_handle(self) -> Signal:
        """Another signal bound to the same state (the ``clone`` of the Rust API)."""
        return Signal(self._state)


async def reschedule() -> None:
    """Yield to the scheduler once."""
    await asyncio.sleep(0)
