"""An in-memory, one-directional byte pipe, and the Sink/Stream halves built on it.

Shared by :mod:`commonware_runtime.mocks` (``Channel``) and the deterministic runtime's
simulated network.  Everything runs on whichever asyncio loop is running when a call has
to wait: futures are created lazily, never at construction, so a pipe can be built
outside any loop.

Design notes (why it looks like this):

* The buffer is one ``bytearray``; bytes are taken off its front with ``memoryview``
  slicing and ``del buf[:n]``, which CPython implements by moving the buffer's start
  offset (amortised O(1)), so many small sends followed by many small receives stay
  linear.
* A waiting ``recv(n)`` is woken only once ``n`` bytes are present (or the pipe ended),
  not on every arriving chunk.  It consumes on resumption, so cancelling it never loses
  bytes.
* Backpressure: ``capacity`` bounds the bytes admitted but not yet consumed (buffered plus
  "reserved": accepted by ``send`` but still in flight, e.g. under simulated latency).
  While a ``recv(n)`` waits for more than ``capacity`` bytes the bound grows to ``n``,
  otherwise a receive larger than the window could never complete.  A blocked writer is
  woken when a reasonable amount of space is free (half the window, or what it still has
  to write), or at once when the reader is itself waiting, so the two can never wait on
  each other.
* Only one ``recv`` may wait at a time (a second concurrent one raises ``RuntimeError``),
  as in the production runtime.  Concurrent ``send`` calls are serialised first come first
  served, so each call's bytes stay contiguous.
"""

from __future__ import annotations

import asyncio

from .arguments import MAX_RECV, check_count, check_recv_length
from .completed import COMPLETED, Completed
from .errors import Closed, RecvFailed, SendFailed

__all__ = ["Pipe", "PipeSink", "PipeStream", "as_byte_view"]


def as_byte_view(data: object) -> memoryview:
    """A flat byte view of ``data``; ``TypeError`` for anything not bytes-like."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like (bytes, bytearray, memoryview), got {type(data).__name__}")
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1 or view.format not in ("B", "b", "c"):
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        else:
            view = view.cast("B")
    return view


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class Pipe:
    """One direction of a byte stream: a buffer, one waiting reader, one waiting writer.

    The writer side calls :meth:`reserve` / :meth:`wait_writable` (space accounting) and
    :meth:`feed` / :meth:`feed_eof` (arrival); these are separate so a transport can admit
    bytes now and deliver them later.  The reader side calls :meth:`take`, :meth:`peek`
    and :meth:`wait_readable`.
    """

    __slots__ = (
        "name",
        "_buf",
        "_capacity",
        "_reserved",
        "_eof",
        "_broken",
        "_reader_closed",
        "_want",
        "_reader",
        "_writer",
        "_writer_want",
    )

    def __init__(self, name: str, capacity: int | None = None) -> None:
        if capacity is not None:
            check_count(capacity, "capacity")
            if capacity == 0:
                raise ValueError("capacity must be positive (or None for unbounded)")
        self.name = name
        self._buf = bytearray()
        self._capacity = capacity
        self._reserved = 0  # admitted by the writer, not yet fed into the buffer
        self._eof = False  # the writer finished; set when its EOF *arrives*
        self._broken: str | None = None  # the connection failed (reason), e.g. host crash
        self._reader_closed = False
        self._want = 0  # bytes the waiting reader needs (0: nobody waits)
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._writer_want = 0

    # -- state -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def capacity(self) -> int | None:
        return self._capacity

    @property
    def reader_closed(self) -> bool:
        return self._reader_closed

    def ended(self) -> bool:
        """No more bytes will ever arrive (EOF delivered or connection broken)."""
        return self._eof or self._broken is not None

    def end_reason(self) -> str:
        if self._broken is not None:
            return self._broken
        return "the peer closed its sink"

    def write_error(self) -> str | None:
        """Why a write can no longer succeed, or None if it can."""
        if self._broken is not None:
            return self._broken
        if self._reader_closed:
            return "the peer closed its stream"
        return None

    # -- writer side -----------------------------------------------------------------

    def _space(self) -> int:
        if self._capacity is None:
            return 1 << 62
        limit = self._capacity if self._capacity >= self._want else self._want
        return limit - len(self._buf) - self._reserved

    def reserve(self, n: int) -> int:
        """Admit up to ``n`` bytes now; returns how many (0 when the window is full)."""
        space = self._space()
        if space <= 0:
            return 0
        k = n if n <= space else space
        self._reserved += k
        return k

    async def wait_writable(self, remaining: int) -> None:
        """Wait until writing is worthwhile again, or the pipe failed (callers re-check)."""
        if self._writer is not None and not self._writer.done():
            raise RuntimeError(f"{self.name}: concurrent writers on one pipe")
        cap = self._capacity if self._capacity is not None else 1
        half = cap // 2 if cap >= 2 else 1
        self._writer_want = remaining if remaining < half else half
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writer = fut
        self._maybe_wake_writer()
        try:
            await fut
        finally:
            if self._writer is fut:
                self._writer = None

    def _maybe_wake_writer(self) -> None:
        writer = self._writer
        if writer is None or writer.done():
            return
        space = self._space()
        reader_waits = self._want > len(self._buf)
        if space >= self._writer_want or (reader_waits and space > 0) or self.write_error() is not None:
            writer.set_result(None)

    def wake_writer(self) -> None:
        """Wake a blocked writer so it re-checks its own state (e.g. its sink was closed)."""
        _wake(self._writer)

    def feed(self, chunk: bytes, reserved: bool = True) -> None:
        """Bytes arrive at the reader's end (``reserved``: they were admitted via reserve)."""
        if reserved:
            self._reserved -= len(chunk)
        if self._reader_closed or self._broken is not None or self._eof:
            # Nobody will ever read them: dropping keeps the window accounting honest.
            self._maybe_wake_writer()
            return
        self._buf += chunk
        if self._reader is not None and len(self._buf) >= self._want:
            _wake(self._reader)

    def unreserve(self, n: int) -> None:
        """Admitted bytes that will never arrive (dropped in flight)."""
        self._reserved -= n
        self._maybe_wake_writer()

    def feed_eof(self) -> None:
        self._eof = True
        _wake(self._reader)

    def break_(self, reason: str, *, drop_buffer: bool) -> None:
        """The connection failed: the reader fails once its buffer is drained (or at once)."""
        if self._broken is None:
            self._broken = reason
        if drop_buffer:
            del self._buf[:]
        _wake(self._reader)
        _wake(self._writer)

    # -- reader side -----------------------------------------------------------------

    def take(self, n: int) -> bytes:
        """Consume exactly ``n`` buffered bytes (caller checked ``len(self) >= n``)."""
        buf = self._buf
        if n == len(buf):
            data = bytes(buf)
            del buf[:]
        else:
            with memoryview(buf) as view:
                data = view[:n].tobytes()
            del buf[:n]
        if self._writer is not None:
            self._maybe_wake_writer()
        return data

    def peek(self, max_n: int) -> bytes:
        with memoryview(self._buf) as view:
            return view[:max_n].tobytes()

    async def wait_readable(self, n: int) -> None:
        """Wait until ``n`` bytes are buffered or the pipe ended (callers re-check)."""
        self.check_no_reader()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = fut
        self._want = n
        # The window may have just grown to n: a writer blocked on it can proceed.
        self._maybe_wake_writer()
        try:
            await fut
        finally:
            if self._reader is fut:
                self._reader = None
                self._want = 0

    def check_no_reader(self) -> None:
        # A waiting recv (even one woken but not yet resumed) owns the next bytes.
        if self._reader is not None:
            raise RuntimeError(f"{self.name}: concurrent recv calls on one stream are not supported")

    def close_reader(self) -> None:
        """The reading half went away: drop buffered bytes, fail the writer."""
        self._reader_closed = True
        del self._buf[:]
        _wake(self._reader)
        _wake(self._writer)


class PipeSink:
    """The sending half over a :class:`Pipe`.  Subclasses hook transport and accounting."""

    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe
        self._closed = False
        self._poisoned = False
        self._done = False
        self._lock: asyncio.Lock | None = None

    # Hooks -------------------------------------------------------------------------

    def _transmit(self, chunk: bytes, token: int) -> None:
        """Deliver an admitted chunk (``token``: what ``_on_send`` returned for this send)."""
        self._pipe.feed(chunk)

    def _transmit_eof(self) -> None:
        self._pipe.feed_eof()

    def _on_send(self, view: memoryview) -> int:
        """Called once per non-empty send, after validation, before any byte moves.

        Its result travels with every chunk of this send (the network uses it for the
        send's drawn delay: concurrent sends must not share one)."""
        return 0

    def _on_done(self) -> None:
        """Called once, when the half is first closed or poisoned."""

    # API ---------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise Closed(f"sink of {self._pipe.name} is closed")
        if self._poisoned:
            raise Closed(f"sink of {self._pipe.name} failed earlier and is poisoned")

    def _poison(self) -> None:
        self._poisoned = True
        if not self._done:
            self._done = True
            self._on_done()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send every byte of ``data``; waits while the peer's window is full."""
        view = as_byte_view(data)
        self._check_usable()
        if not view.nbytes:
            return
        token = self._on_send(view)
        lock = self._lock
        if lock is None:
            lock = self._lock = asyncio.Lock()
        async with lock:
            await self._send_all(view, token)

    async def _send_all(self, view: memoryview, token: int) -> None:
        pipe = self._pipe
        total = view.nbytes
        offset = 0
        while offset < total:
            self._check_usable()
            reason = pipe.write_error()
            if reason is not None:
                self._poison()
                raise SendFailed(f"send on {pipe.name} failed: {reason} ({offset} of {total} bytes sent)")
            k = pipe.reserve(total - offset)
            if k == 0:
                await pipe.wait_writable(total - offset)
                continue
            self._transmit(view[offset : offset + k].tobytes(), token)
            offset += k

    def close(self) -> Completed:
        """Half-close: the peer reads what was sent, then its recv fails. Idempotent.
        Synchronous; the result may be awaited (see ``completed``)."""
        if self._closed:
            return COMPLETED
        self._closed = True
        if not self._poisoned:
            self._transmit_eof()
        self._pipe.wake_writer()
        if not self._done:
            self._done = True
            self._on_done()
        return COMPLETED


class PipeStream:
    """The receiving half over a :class:`Pipe`."""

    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe
        self._closed = False
        self._poisoned = False
        self._done = False

    def _on_recv(self, data: bytes) -> None:
        """Called with every non-empty result of ``recv``."""

    def _on_done(self) -> None:
        """Called once, when the half is first closed or poisoned."""

    def _check_usable(self) -> None:
        if self._closed:
            raise Closed(f"stream of {self._pipe.name} is closed")
        if self._poisoned:
            raise Closed(f"stream of {self._pipe.name} failed earlier and is poisoned")

    def _poison(self) -> None:
        self._poisoned = True
        if not self._done:
            self._done = True
            self._on_done()

    async def recv(self, n: int) -> bytes:
        """Exactly ``n`` bytes; bytes buffered before the peer went away are read first.

        ``n`` is at most ``MAX_RECV``; waiting for it allocates nothing: the buffer holds
        only bytes that arrived."""
        if n.__class__ is not int or not 0 <= n <= MAX_RECV:
            check_recv_length(n)
        self._check_usable()
        if n == 0:
            return b""
        pipe = self._pipe
        pipe.check_no_reader()
        while True:
            if len(pipe) >= n:
                data = pipe.take(n)
                self._on_recv(data)
                return data
            if pipe.ended():
                have = len(pipe)
                self._poison()
                raise RecvFailed(f"recv of {n} bytes on {pipe.name} failed: {pipe.end_reason()} ({have} bytes buffered)")
            await pipe.wait_readable(n)
            self._check_usable()

    def peek(self, max_n: int) -> bytes:
        """Up to ``max_n`` buffered bytes, without consuming them."""
        check_count(max_n, "max_n")
        self._check_usable()
        return self._pipe.peek(max_n)

    def close(self) -> Completed:
        """Stop reading: buffered bytes are dropped and the peer's sends fail. Idempotent.
        Synchronous; the result may be awaited (see ``completed``)."""
        if self._closed:
            return COMPLETED
        self._closed = True
        self._pipe.close_reader()
        if not self._done:
            self._done = True
            self._on_done()
        return COMPLETED

