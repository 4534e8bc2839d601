"""Production network: real TCP on asyncio (or uvloop) through ``asyncio.BufferedProtocol``.

Why not StreamReader/StreamWriter: the streams layer copies every chunk several times
(``recv`` into fresh ``bytes``, ``extend`` into the reader's buffer, slice, ``bytes()``),
wakes the reading task once per arriving chunk and makes every write pay for a ``drain``
coroutine.  Here one protocol object per connection keeps a single preallocated receive
buffer that the transport fills in place (``get_buffer``/``buffer_updated``), the one waiting
``recv(n)`` is woken only when ``n`` bytes are present (and resumes inside the protocol
callback that delivered them, see ``_Waiter``), and ``send`` awaits only while the
transport is above its high-water mark.

Semantics (docs/SPEC.md section 2, Network):

* ``Stream.recv(n)`` returns exactly ``n`` bytes.  Bytes that arrived before the peer went
  away stay readable; a ``recv`` that cannot be satisfied any more raises ``RecvFailed``.
  ``read_timeout`` bounds each ``recv`` call that has to wait and raises ``Timeout``.
* ``Sink.send(data)`` hands all bytes to the transport and waits (up to ``write_timeout``)
  only while the transport's write buffer is above its high-water mark; a dead peer raises
  ``SendFailed``.  Returning from ``send`` means "queued", not "delivered", as with a
  socket write.  A send is written at once unless it follows another send with no wait
  for incoming data in between; such bursts are coalesced (up to 64 KiB) and written
  together at the next loop iteration: one system call instead of one per message, and no
  added latency for request/response traffic.
* A half that raised ``RecvFailed``/``SendFailed``/``Timeout`` is poisoned: every later call
  raises ``Closed``; so does every call after ``close()``.  Cancelling a waiting ``recv`` or
  ``send`` (e.g. ``asyncio.wait_for``) does not poison: nothing was consumed.
* ``Sink.close()`` half-closes the connection (``write_eof`` once queued bytes are flushed),
  like dropping a tokio write half: the peer's pending and later ``recv`` calls fail with
  ``RecvFailed`` after it has read every byte sent before the close, while the other
  direction keeps working.  ``Stream.close()`` stops reading (and discards what is
  buffered); once both halves are closed or poisoned the transport is closed.  ``close()``
  is synchronous and returns an awaitable that has already finished, so ``await
  sink.close()`` works too.
* ``recv(n)`` takes ``0 <= n <= MAX_RECV`` (64 GiB; anything else is a ``ValueError`` at the
  call, as on the deterministic runtime).  Memory follows the bytes that arrived, never
  ``n``: the receive buffer grows (doubling, see ``get_buffer``) only as bytes come in, so a
  peer announcing 16 GiB and sending 1 KB costs 1 KB; a stream that is closed or poisoned
  (e.g. by ``read_timeout``) drops its buffer at once.
* Only one ``recv`` may wait at a time on a stream (a second concurrent one raises
  ``RuntimeError``); any number of concurrent ``send`` calls are fine (each one's bytes are
  written contiguously).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..arguments import (
    MAX_RECV,
    Address,
    check_count,
    check_data,
    check_recv_length,
    duration_seconds,
    format_address,
    parse_address,
)
from ..completed import COMPLETED, Completed
from ..errors import BindFailed, Closed, ConnectionFailed, RecvFailed, SendFailed, Timeout
from ..metrics import RuntimeCounters

__all__ = ["NetworkConfig", "Listener", "Sink", "Stream", "bind", "dial"]

_current_task = asyncio.current_task

# Receive buffer sizing.  A connection starts with _INITIAL_BUFFER bytes; the transport is
# always offered at least _MIN_READ free bytes (compacting or doubling as needed), so the
# buffer grows with the bytes that arrived (at most about twice them), never with the length
# a recv asks for.  A buffer that grew past _SHRINK_ABOVE (for one large recv) is replaced by
# a fresh small one as soon as it is empty, so thousands of idle connections stay cheap.
_INITIAL_BUFFER = 16 * 1024
_MIN_READ = 8 * 1024
_SHRINK_ABOVE = 4 * 1024 * 1024

# Outcomes a waiting recv can be woken with (plain ints: no exception objects on the hot path).
_READY = 0
_EOF = 1
_TIMED_OUT = 2

# Write buffer limits for the transport.  asyncio's default high-water mark (64 KiB) makes
# every 64-KiB send that the kernel cannot take at once pause; a larger window keeps the
# socket busy while the sender is woken less often.
_WRITE_HIGH = 256 * 1024
_WRITE_LOW = 64 * 1024
# At most this many bytes are coalesced before they are handed to the transport, so the
# transport's flow control (above) still bounds what a sender can queue.
_CORK_LIMIT = 64 * 1024


_PENDING, _DONE, _CANCELLED = 0, 1, 2  # _Waiter states


class _Waiter:
    """What a waiting ``recv`` awaits: a minimal future that can wake its task at once.

    An ``asyncio.Future`` always wakes its task through ``call_soon``: the task runs one loop
    iteration later, after another ``epoll_wait``.  For request/response traffic that is
    one extra loop iteration per message on each side (``strace`` shows twice the polls of
    a plain protocol).  When data arrives in a protocol callback (no task is running), this
    waiter resumes the task right there, as a hand-written protocol would handle the bytes.
    From inside a task, and for cancellation, it schedules like an ordinary future.

    asyncio's Task (C and Python) accepts any object with ``_asyncio_future_blocking``,
    ``get_loop``, ``add_done_callback``, ``result`` and ``cancel``; this implements exactly
    the part of the Future protocol that tasks and ``asyncio.timeout`` use.
    """

    __slots__ = ("_asyncio_future_blocking", "_loop", "_callback", "_context", "_state", "_value", "_cancel_message")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._asyncio_future_blocking = False
        self._loop = loop
        self._callback: Any = None
        self._context: Any = None
        self._state = _PENDING
        self._value = 0
        self._cancel_message: Any = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> int:
        if self._state == _CANCELLED:
            raise asyncio.CancelledError(self._cancel_message)
        if self._state == _PENDING:
            raise asyncio.InvalidStateError("result is not set")
        return self._value

    def exception(self) -> BaseException | None:
        if self._state == _CANCELLED:
            raise asyncio.CancelledError(self._cancel_message)
        return None

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        if self._state:
            self._loop.call_soon(fn, self, context=context)
        elif self._callback is not None:
            # Only the awaiting task ever registers; a second party is a misuse.
            raise RuntimeError("a recv waiter has a single owner")
        else:
            self._callback = fn
            self._context = context

    def remove_done_callback(self, fn: Any) -> int:
        if self._callback is not None and self._callback == fn:
            self._callback = self._context = None
            return 1
        return 0

    def cancel(self, msg: Any = None) -> bool:
        if self._state:
            return False
        self._state = _CANCELLED
        self._cancel_message = msg
        self._schedule()
        return True

    def set_result(self, value: int, now: bool = False) -> None:
        """Complete.  ``now``: resume the awaiting task before returning, unless a task is
        running (only protocol callbacks pass it: user code never sees a task resumed in
        the middle of one of its own calls)."""
        if self._state:
            return
        self._state = _DONE
        self._value = value
        callback = self._callback
        if callback is None:
            return
        if now and _current_task(self._loop) is None:
            self._callback = None
            context = self._context
            self._context = None
            if context is None:
                callback(self)
            else:
                context.run(callback, self)
        else:
            self._schedule()

    def _schedule(self) -> None:
        callback = self._callback
        if callback is not None:
            self._callback = None
            self._loop.call_soon(callback, self, context=self._context)
            self._context = None

    def __await__(self) -> Any:
        if not self._state:
            self._asyncio_future_blocking = True
            yield self
        return self.result()

    __iter__ = __await__


@dataclass(frozen=True)
class NetworkConfig:
    """Settings of the production network (all durations in seconds)."""

    tcp_nodelay: bool = True
    connect_timeout: float | None = 10.0  # also accepts a timedelta
    read_timeout: float | None = None  # per recv call that has to wait
    write_timeout: float | None = None  # per send call that has to wait for the transport to drain
    read_buffer: int = 1 << 20

    def __post_init__(self) -> None:
        if not isinstance(self.tcp_nodelay, bool):
            raise TypeError(f"tcp_nodelay must be a bool, got {self.tcp_nodelay!r}")
        for name in ("connect_timeout", "read_timeout", "write_timeout"):
            value = getattr(self, name)
            if value is None:
                continue
            seconds = duration_seconds(value, name)
            if seconds <= 0:
                raise ValueError(f"{name} must be positive (or None for no limit), got {value!r}")
            # Normalise timedelta to float seconds (frozen dataclass: bypass __setattr__).
            object.__setattr__(self, name, seconds)
        check_count(self.read_buffer, "read_buffer")
        if self.read_buffer == 0:
            raise ValueError("read_buffer must be positive, got 0")


class _Connection(asyncio.BufferedProtocol):
    """Protocol state shared by the two halves of one TCP connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: NetworkConfig, counters: RuntimeCounters) -> None:
        self._loop = loop
        self._config = config
        self._net = counters.network
        self._limit = config.read_buffer
        self._transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.name = "?"
        # Receive buffer: valid bytes are _buf[_start:_end]; _view is a memoryview of _buf
        # kept for zero-copy hand-outs to the transport and cheap slicing.
        self._buf = bytearray(_INITIAL_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._waiter: _Waiter | None = None
        self._want = 0
        self._reading_paused = False
        self._eof = False  # peer will send nothing more (FIN or connection lost)
        self._lost = False  # connection_lost was called
        self._lost_exc: BaseException | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[bool]] = []
        # Write coalescing: a send goes straight to the transport unless it follows another
        # send with no wait for incoming data in between; such back-to-back sends are
        # collected in _cork and written together by _flush at the next loop iteration.
        self._cork: bytearray | None = None
        # A send happened since the stream last had to wait: further sends are likely part
        # of a burst, so they go to the cork (request/response traffic never gets here).
        self._hot = False
        self._sink_done = False  # closed or poisoned
        self._stream_done = False
        self._on_made: Any = None  # listener callback for inbound connections

    # --- protocol callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport interface without subclassing it.
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if self._config.tcp_nodelay else 0)
            except OSError:
                # Not a TCP socket (cannot happen through bind/dial); nothing to tune.
                pass
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (str(peer[0]), int(peer[1]))
            self.name = format_address(self.peer)
        if self._on_made is not None:
            self._on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Always a fresh slice, never _view itself: the transport may still hold the buffer
        # it got while buffer_updated resumes a task that grows (and releases) _view.
        if len(self._buf) - self._end < _MIN_READ:
            self._make_room(_MIN_READ)
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self._net["bytes_received"] += nbytes
        if self._stream_done:
            # Nobody will read: drop the bytes, stay bounded.
            self._start = self._end = 0
            return
        buffered = self._end - self._start
        waiter = self._waiter
        if waiter is not None and buffered < self._want:
            # A recv larger than the limit is waiting: keep reading until it is satisfied.
            return
        if buffered > self._limit and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
        if waiter is not None:
            self._waiter = None
            # Last: this may run the reading task's code right here (see _Waiter).
            waiter.set_result(_READY, now=True)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader(_EOF, now=True)
        # Keep the transport open: our sink may still send (TCP half-close).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = True
        self._lost_exc = exc
        self._write_paused = False
        self._wake_writers(False)
        self._wake_reader(_EOF, now=True)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writers(True)

    # --- helpers ------------------------------------------------------------------------

    def _wake_reader(self, outcome: int, now: bool = False) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set_result(outcome, now)

    def _wake_writers(self, ok: bool) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(ok)

    def _make_room(self, need: int) -> None:
        """Ensure ``need`` free bytes after ``_end``: compact first, grow if still short."""
        buffered = self._end - self._start
        size = len(self._buf)
        if size - buffered < need:
            new_size = size * 2
            while new_size - buffered < need:
                new_size *= 2
            new_buf = bytearray(new_size)
            new_buf[:buffered] = self._view[self._start : self._end]
            self._view.release()
            self._buf = new_buf
            self._view = memoryview(new_buf)
        elif self._start:
            # Overlapping memoryview assignment is a memmove.
            self._view[:buffered] = self._view[self._start : self._end]
        self._start = 0
        self._end = buffered

    def _gave_up(self) -> None:
        """A waiting recv was cancelled: what arrived stays buffered (it is the stream's
        data), but past the read limit the peer must stop filling it, as when nobody waits."""
        if self._end - self._start > self._limit and not self._reading_paused and self._transport is not None and not self._eof:
            self._reading_paused = True
            self._transport.pause_reading()

    def _consumed(self) -> None:
        """Bookkeeping after a recv emptied or drained the buffer."""
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buf) > _SHRINK_ABOVE:
                self._view.release()
                self._buf = bytearray(_INITIAL_BUFFER)
                self._view = memoryview(self._buf)
        if self._reading_paused and self._end - self._start <= self._limit // 2 and not self._eof:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()

    def _flush(self) -> None:
        """Write what sends coalesced during the last loop iteration; end the cork."""
        cork = self._cork
        self._cork = None
        self._hot = False
        if cork and not self._lost:
            transport = self._transport
            if transport is not None and not transport.is_closing():
                try:
                    transport.write(cork)
                except RuntimeError:
                    # uvloop: the transport is shutting down; connection_lost reports it and
                    # the next send raises SendFailed.
                    pass

    def _half_closed(self) -> None:
        """Called when a half becomes closed or poisoned."""
        transport = self._transport
        if transport is None:
            return
        if self._sink_done:
            # Bytes accepted by send are written before the half-close/close.
            self._flush()
        if self._stream_done:
            # Reading is over: release the memory and stop the peer from filling it.
            self._start = self._end = 0
            if len(self._buf) > _INITIAL_BUFFER:
                # The transport may still hold a slice of the old buffer: that slice keeps
                # it alive until the transport lets go; nothing else refers to it.
                self._view.release()
                self._buf = bytearray(_MIN_READ)
                self._view = memoryview(self._buf)
            self._wake_reader(_EOF)
            if not self._reading_paused and not self._eof:
                self._reading_paused = True
                transport.pause_reading()
        if self._sink_done and self._stream_done:
            transport.close()
            self._wake_writers(False)
        elif self._sink_done and not self._lost and not transport.is_closing():
            if transport.can_write_eof():
                # Flushes what is queued, then shuts down the write side.
                transport.write_eof()

    def _abort(self) -> None:
        """Close without ever handing the connection to the user (listener shut down)."""
        self._sink_done = self._stream_done = True
        if self._transport is not None:
            self._transport.close()


class _Half:
    """What the two halves of a connection share: closing, poisoning, naming the peer."""

    __slots__ = ("_conn", "_closed", "_poisoned")
    _DONE = ""  # the _Connection flag this half sets when it is over
    _WHAT = ""  # how messages name this half

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._closed = False
        self._poisoned = False

    @property
    def peer_addr(self) -> tuple[str, int]:
        return self._conn.peer

    def _unusable(self) -> Closed:
        what = "closed" if self._closed else "poisoned by an earlier error"
        return Closed(f"{self._WHAT} {self._conn.name} is {what}")

    def _over(self) -> None:
        conn = self._conn
        if not getattr(conn, self._DONE):
            setattr(conn, self._DONE, True)
            conn._half_closed()

    def _poison(self, error: Exception) -> Exception:
        self._poisoned = True
        self._over()
        return error

    def close(self) -> Completed:
        """Idempotent and synchronous; the result may be awaited (see ``completed``)."""
        if not self._closed:
            self._closed = True
            self._over()
        return COMPLETED


class Stream(_Half):
    """The receiving half of a connection."""

    __slots__ = ("_read_timeout",)
    _DONE = "_stream_done"
    _WHAT = "stream from"

    def __init__(self, conn: _Connection) -> None:
        super().__init__(conn)
        self._read_timeout = conn._config.read_timeout

    async def recv(self, n: int) -> bytes:
        """Return exactly ``n`` bytes (``0 <= n <= MAX_RECV``), waiting until they have
        arrived.  Waiting allocates nothing: the buffer grows only with arriving bytes."""
        if n.__class__ is not int or not 0 <= n <= MAX_RECV:
            check_recv_length(n)
        if self._closed or self._poisoned:
            raise self._unusable()
        conn = self._conn
        start = conn._start
        if conn._end - start < n:
            if conn._eof:
                raise self._poison(self._peer_gone(n))
            if conn._waiter is not None:
                raise RuntimeError(f"another recv is already waiting on the stream from {conn.name}")
            # No room is made for n here: get_buffer grows the buffer as bytes arrive.
            waiter = _Waiter(conn._loop)
            conn._waiter = waiter
            conn._want = n
            conn._hot = False
            if conn._reading_paused:
                conn._reading_paused = False
                assert conn._transport is not None
                conn._transport.resume_reading()
            timer = None
            if self._read_timeout is not None:
                timer = conn._loop.call_later(self._read_timeout, conn._wake_reader, _TIMED_OUT)
            try:
                outcome = await waiter
            finally:
                if conn._waiter is waiter:
                    # Cancelled: nothing consumed, the stream stays usable.
                    conn._waiter = None
                    conn._gave_up()
                if timer is not None:
                    timer.cancel()
            if self._closed or self._poisoned:
                raise self._unusable()
            if outcome:
                if outcome == _TIMED_OUT:
                    raise self._poison(Timeout(f"recv of {n} bytes from {conn.name} timed out after {self._read_timeout} s"))
                raise self._poison(self._peer_gone(n))
            start = conn._start
        end = start + n
        data = conn._view[start:end].tobytes()
        if end == conn._end and len(conn._buf) <= _SHRINK_ABOVE and not conn._reading_paused:
            conn._start = conn._end = 0  # the usual case of _consumed, without the call
        else:
            conn._start = end
            if end == conn._end or conn._reading_paused:
                conn._consumed()
        return data

    def _peer_gone(self, n: int) -> RecvFailed:
        conn = self._conn
        have = conn._end - conn._start
        how = f"connection lost ({conn._lost_exc})" if conn._lost_exc is not None else "peer closed the connection"
        return RecvFailed(f"recv of {n} bytes from {conn.name} failed: {how} with {have} bytes buffered")

    def peek(self, max_n: int) -> bytes:
        """Return up to ``max_n`` buffered bytes without consuming them (never waits)."""
        check_count(max_n, "max_n")
        if self._closed or self._poisoned:
            raise self._unusable()
        conn = self._conn
        start = conn._start
        return conn._view[start : min(conn._end, start + max_n)].tobytes()

    def close(self) -> Completed:
        """Stop reading (buffered bytes are dropped); the connection closes once the sink
        is closed too.  See ``_Half.close``."""
        return super().close()


class Sink(_Half):
    """The sending half of a connection."""

    __slots__ = ("_write_timeout",)
    _DONE = "_sink_done"
    _WHAT = "sink to"

    def __init__(self, conn: _Connection) -> None:
        super().__init__(conn)
        self._write_timeout = conn._config.write_timeout

    def _failed(self, detail: str) -> SendFailed:
        conn = self._conn
        if conn._lost_exc is not None:
            detail = f"connection lost ({conn._lost_exc})"
        return SendFailed(f"send to {conn.name} failed: {detail}")

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send every byte of ``data``; waits only while the transport is backed up."""
        if data.__class__ is not bytes:
            check_data(data)
            if data.__class__ is not bytearray:
                data = memoryview(data).cast("B")
        if self._closed or self._poisoned:
            raise self._unusable()
        conn = self._conn
        if conn._lost:
            raise self._poison(self._failed("connection lost"))
        transport = conn._transport
        assert transport is not None
        size = len(data)
        if not size:
            return
        cork = conn._cork
        try:
            if cork is None and not conn._hot:
                # First send since this connection's reader last waited: write at once.
                conn._hot = True
                transport.write(data)
            else:
                # Back-to-back sends: coalesce them into one write at the next iteration.
                if cork is None:
                    conn._cork = cork = bytearray()
                    conn._loop.call_soon(conn._flush)
                if len(cork) + size <= _CORK_LIMIT:
                    cork += data
                    conn._net["bytes_sent"] += size
                    return
                # Too much to coalesce: keep the order, write what is corked first.
                if cork:
                    conn._cork = bytearray()
                    transport.write(cork)
                transport.write(data)
        except RuntimeError as exc:
            # uvloop refuses writes on a transport that is already shutting down.
            raise self._poison(self._failed(f"transport closed ({exc})")) from exc
        if transport.is_closing():
            # The write itself failed (reset by peer): the transport closed under us.
            raise self._poison(self._failed("connection reset"))
        conn._net["bytes_sent"] += size
        if conn._write_paused:
            await self._drain()

    async def _drain(self) -> None:
        conn = self._conn
        waiter: asyncio.Future[bool] = conn._loop.create_future()
        conn._drain_waiters.append(waiter)
        timer = None
        if self._write_timeout is not None:
            timer = conn._loop.call_later(self._write_timeout, _expire, waiter)
        try:
            ok = await waiter
        finally:
            if timer is not None:
                timer.cancel()
        if self._closed or self._poisoned:
            raise self._unusable()
        if ok is None:
            raise self._poison(Timeout(f"send to {conn.name} timed out after {self._write_timeout} s waiting for the peer to read"))
        if not ok:
            raise self._poison(self._failed("connection lost"))

    def close(self) -> Completed:
        """Flush what is queued, then half-close (the peer's recv fails after reading it).
        See ``_Half.close``."""
        return super().close()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Listener:
    """A bound TCP socket; ``accept`` hands out connections in arrival order."""

    def __init__(self, counters: RuntimeCounters) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._addr: tuple[str, int] = ("", 0)
        self._counters = counters
        self._ready: deque[_Connection] = deque()
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    def _started(self, server: asyncio.AbstractServer, addr: tuple[str, int]) -> None:
        self._server = server
        self._addr = addr

    def _arrived(self, conn: _Connection) -> None:
        if self._closed:
            conn._abort()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._ready.append(conn)

    def local_addr(self) -> tuple[str, int]:
        return self._addr

    async def accept(self) -> tuple[tuple[str, int], Sink, Stream]:
        """Wait for the next inbound connection: ``(peer_addr, sink, stream)``."""
        if self._closed:
            raise Closed(f"listener on {format_address(self._addr)} is closed")
        if self._ready:
            conn = self._ready.popleft()
        else:
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                got = await waiter
            except BaseException:
                # Cancelled: a connection delivered at the same moment must not be lost.
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._ready.appendleft(waiter.result())  # type: ignore[arg-type]
                raise
            if got is None:
                raise Closed(f"listener on {format_address(self._addr)} is closed")
            conn = got
        self._counters.network["inbound_connections"] += 1
        return conn.peer, Sink(conn), Stream(conn)

    def close(self) -> Completed:
        """Stop listening; connections not yet accepted are closed.  Idempotent.
        Synchronous; the result may be awaited (see ``completed``)."""
        if self._closed:
            return COMPLETED
        self._closed = True
        if self._server is not None:
            self._server.close()
        while self._ready:
            self._ready.popleft()._abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        return COMPLETED


async def bind(addr: Address, config: NetworkConfig, counters: RuntimeCounters) -> Listener:
    """Listen on ``addr`` (port 0 picks a free port; see ``Listener.local_addr``)."""
    host, port = parse_address(addr)
    loop = asyncio.get_running_loop()
    # The listener exists before the server: create_server may accept a connection while
    # it is still settling, and the protocol factory must have somewhere to deliver it.
    listener = Listener(counters)

    def factory() -> _Connection:
        conn = _Connection(loop, config, counters)
        conn._on_made = listener._arrived
        return conn

    try:
        server = await loop.create_server(factory, host, port, backlog=1024)
    except OSError as exc:
        raise BindFailed(f"cannot bind {format_address((host, port))}: {exc}") from exc
    name = server.sockets[0].getsockname()
    listener._started(server, (str(name[0]), int(name[1])))
    return listener


async def dial(addr: Address, config: NetworkConfig, counters: RuntimeCounters) -> tuple[Sink, Stream]:
    """Connect to ``addr``; ``ConnectionFailed`` if refused, ``Timeout`` past ``connect_timeout``."""
    host, port = parse_address(addr)
    loop = asyncio.get_running_loop()
    name = format_address((host, port))
    conn = _Connection(loop, config, counters)
    try:
        async with asyncio.timeout(config.connect_timeout):
            await loop.create_connection(lambda: conn, host, port)
    except TimeoutError as exc:
        # Either our deadline or the kernel's own connect timeout (ETIMEDOUT).
        detail = f": {exc}" if str(exc) else ""
        raise Timeout(f"connecting to {name} timed out (connect_timeout {config.connect_timeout} s){detail}") from exc
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {name}: {exc}") from exc
    counters.network["outbound_connections"] += 1
    return Sink(conn), Stream(conn)
