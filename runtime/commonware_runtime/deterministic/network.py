"""The simulated network of the deterministic runtime (docs/SPEC.md sections 2 and 6).

No sockets, no threads, no wall clock: connections are pairs of in-memory pipes
(:mod:`commonware_runtime.pipe`) and every delay is a timer on the running loop, so under
the deterministic ``EventLoop`` everything happens on virtual time.

Model
-----
* **Hosts** are plain strings (IP addresses).  A context placed on a host with
  ``context.with_host(ip)`` binds and dials from it.
* **Listeners** live on a host: the one named by the ip they bind, or, bound on the
  wildcard ``0.0.0.0`` or ``::``, the host of the context that bound it; that host is the
  far end for latency, partitions and crashes.  Each host has its own ports, so every host
  of a simulated cluster can bind ``0.0.0.0:9000``.  On one host a port is taken as on
  Linux: by the same address, and between a wildcard and a specific address of its family
  (``0.0.0.0:P`` and ``10.0.0.1:P`` on host ``10.0.0.1`` conflict, whichever came first),
  so a bind the simulation accepts is one a real machine accepts.  A dial to
  ``(ip, port)`` finds the listener bound on exactly that ip, else a wildcard one on host
  ``ip`` with that port; a dial to a wildcard address (a wildcard listener's own
  ``local_addr()``) or to loopback reaches the dialing host's own listeners.
* **Ports**: ``port 0`` and dialer source ports are allocated per host, counting up from
  49152 (wrapping at 65535), skipping ports bound or in use by a live connection.
* **Window**: each direction of a connection admits at most ``buffer_size`` unread bytes
  (buffered at the receiver plus in flight); ``send`` waits while it is full.
* **Latency** (``set_link``, symmetric by default): bytes of one ``send`` become readable
  ``latency + U{0..jitter}`` after they are admitted, the jitter drawn once per send from
  the fault RNG (no draw when jitter is 0).  Delivery stays FIFO per direction: a chunk is
  never readable before an earlier one.  With no delay and nothing in flight, bytes are
  readable at once (no timer hop).  Connection setup (dial) takes no simulated time.
* **Partitions** (``partition(a, b)``, symmetric): dials across fail with
  ``ConnectionFailed``; bytes (and EOFs) of established connections across are held at
  arrival and delivered, in order, by ``heal``.  Held bytes still count against the window,
  so senders eventually block, as on a real stalled link.
* **Crash** (``crash_host(h)``): every listener of ``h`` closes (pending ``accept`` raises
  ``Closed``) and every connection touching ``h`` breaks at once: bytes in flight are
  lost, the crashed side's buffers are dropped, the surviving side can still read what had
  already arrived, then its ``recv`` raises ``RecvFailed``; ``send`` on either side raises
  ``SendFailed``.  The crash is an instant: the host may bind and dial again afterwards
  (a restart).
* **Auditing**: every operation and fault decision is folded into the auditor
  (``net.bind``, ``net.dial``, ``net.accept``, ``net.send``/``net.recv`` with payloads,
  ``net.close``, ``net.delay``, ``net.hold``, ``net.link``, ``net.partition``, ``net.heal``,
  ``net.crash``, and the failures ``net.bind_failed``/``net.dial_failed``).

Auditing and faults
-------------------
The code here moves bytes and manages connections.  The fault plan (links and partitions)
lives in the network's seam (:class:`.faults.NetworkSeam`, with the auditor and the fault
stream); operations ask it (``seam.delay`` per send, ``seam.partitioned`` at dial and at
arrival) and report to it (``seam.event``), and ``set_link``, ``partition`` and ``heal``
validate their arguments and hand the change to it.  Each flow keeps the seam at hand, so
a send or a receive costs one call per report, as calling the auditor directly did.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..arguments import NS_PER_SECOND, Address, Duration, duration_ns, format_address, parse_address
from ..auditor import Auditor
from ..completed import COMPLETED, Completed
from ..errors import BindFailed, Closed, ConnectionFailed
from ..metrics import RuntimeCounters
from ..pipe import Pipe, PipeSink, PipeStream
from .faults import NetworkSeam

__all__ = ["Network", "Listener", "Sink", "Stream", "EPHEMERAL_FIRST", "EPHEMERAL_LAST"]

EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535
_WILDCARDS = ("0.0.0.0", "::")
_EOF = None  # marker travelling through a flow after the last chunk


def _wildcards_for(ip: str) -> tuple[str, str]:
    """The wildcards a dial to ``ip`` may reach, its own family's first."""
    return ("::", "0.0.0.0") if ":" in ip else ("0.0.0.0", "::")


def _listener_host(host: str, ip: str) -> str:
    """The host a listener on ``ip`` bound from ``host`` lives on."""
    return host if ip in _WILDCARDS else ip


def _now_ns(loop: asyncio.AbstractEventLoop) -> int:
    now = getattr(loop, "now_ns", None)
    if isinstance(now, int):
        return now
    return round(loop.time() * NS_PER_SECOND)


def _call_at_ns(loop: asyncio.AbstractEventLoop, when_ns: int, callback: Any, tie: bool = False) -> asyncio.TimerHandle:
    # The deterministic loop schedules on exact integer nanoseconds; others take float seconds.
    exact = getattr(loop, "call_at_ns", None)
    if exact is not None:
        timer: asyncio.TimerHandle = exact(when_ns, callback, tie=tie)
        return timer
    return loop.call_at(when_ns / NS_PER_SECOND, callback)


def _parse(addr: Address) -> tuple[str, int]:
    """``parse_address`` plus the one name every resolver knows: ``localhost`` is the
    loopback address, as it is for the production runtime's sockets."""
    host, port = parse_address(addr)
    return ("127.0.0.1" if host.lower() == "localhost" else host), port


def _check_host(host: object, what: str = "host") -> str:
    if not isinstance(host, str):
        raise TypeError(f"{what} must be a str (an IP address), got {type(host).__name__} {host!r}")
    if not host:
        raise ValueError(f"{what} must not be empty")
    return host


def _check_hosts(group: object, what: str) -> list[str]:
    if isinstance(group, str) or not isinstance(group, Iterable):
        raise TypeError(f"{what} must be an iterable of host strings, got {group!r}")
    return [_check_host(h, f"host in {what}") for h in group]


class _Flow:
    """One direction of a connection: admitted chunks travel through latency and partitions."""

    __slots__ = ("net", "seam", "conn", "pipe", "src_addr", "dst_addr", "src", "dst", "src_host", "dst_host", "inflight", "held", "last_due_ns")

    def __init__(self, net: Network, conn: _Connection, src: tuple[str, int], dst: tuple[str, int], src_host: str, dst_host: str) -> None:
        self.net = net
        self.seam = net._seam
        self.conn = conn
        self.src_addr = src
        self.dst_addr = dst
        self.src = format_address(src)
        self.dst = format_address(dst)
        self.src_host = src_host
        self.dst_host = dst_host
        self.pipe = Pipe(f"connection {self.src} -> {self.dst}", net.buffer_size)
        # (chunk or _EOF, timer): one timer per entry; each firing delivers the head, so
        # order is FIFO even if the loop fires equal-time timers in another order.
        self.inflight: deque[tuple[bytes | None, asyncio.TimerHandle]] = deque()
        self.held: deque[bytes | None] = deque()  # arrived during a partition
        self.last_due_ns = 0

    def transmit(self, item: bytes | None, delay_ns: int) -> None:
        if self.conn.broken:
            if item is not None:
                self.pipe.unreserve(len(item))
            return
        if delay_ns == 0 and not self.inflight:
            self._arrive_item(item)
            return
        loop = self.conn.loop
        due = _now_ns(loop) + delay_ns
        if due < self.last_due_ns:
            due = self.last_due_ns
        # Deliveries on different connections due at one instant may arrive in either order
        # on a real network (the loop lets the strategy choose under fifo); a chunk due with
        # an earlier one of this flow is not another choice: the flow delivers its head.
        tie = not (self.inflight and due == self.last_due_ns)
        self.last_due_ns = due
        self.inflight.append((item, _call_at_ns(loop, due, self._arrive, tie)))

    def _arrive(self) -> None:
        item, _ = self.inflight.popleft()
        self._arrive_item(item)

    def _arrive_item(self, item: bytes | None) -> None:
        if self.held or self.seam.partitioned(self.src_host, self.dst_host):
            self.held.append(item)
            self.seam.event("net.hold", self.src, self.dst, -1 if item is None else len(item))
            return
        self._land(item)

    def _land(self, item: bytes | None) -> None:
        if item is None:
            self.pipe.feed_eof()
        else:
            self.pipe.feed(item)

    def flush(self) -> None:
        """Deliver what a partition held, in order (called by heal)."""
        if not self.held or self.seam.partitioned(self.src_host, self.dst_host):
            return
        held = self.held
        while held:
            self._land(held.popleft())

    def break_(self, reason: str, drop_buffer: bool) -> None:
        lost = 0
        for item, timer in self.inflight:
            timer.cancel()
            if item is not None:
                lost += len(item)
        for item in self.held:
            if item is not None:
                lost += len(item)
        self.inflight.clear()
        self.held.clear()
        self.pipe.break_(reason, drop_buffer=drop_buffer)
        if lost:
            self.pipe.unreserve(lost)


class _Connection:
    """Both directions of one dialed connection, and the four halves using them."""

    __slots__ = (
        "net",
        "cid",
        "loop",
        "dialer_addr",
        "acceptor_addr",
        "dialer_host",
        "acceptor_host",
        "acceptor_owner",
        "forward",
        "backward",
        "dialer_sink",
        "dialer_stream",
        "acceptor_sink",
        "acceptor_stream",
        "halves_done",
        "broken",
    )

    def __init__(
        self,
        net: Network,
        cid: int,
        loop: asyncio.AbstractEventLoop,
        dialer_addr: tuple[str, int],
        acceptor_addr: tuple[str, int],
        acceptor_host: str,
        acceptor_owner: str,
    ) -> None:
        self.net = net
        self.cid = cid
        self.loop = loop
        self.dialer_addr = dialer_addr
        self.acceptor_addr = acceptor_addr
        self.dialer_host = dialer_addr[0]
        self.acceptor_host = acceptor_host
        self.acceptor_owner = acceptor_owner
        self.broken = False
        self.halves_done = 0
        self.forward = _Flow(net, self, dialer_addr, acceptor_addr, self.dialer_host, acceptor_host)
        self.backward = _Flow(net, self, acceptor_addr, dialer_addr, acceptor_host, self.dialer_host)
        self.dialer_sink = Sink(self, self.forward)
        self.dialer_stream = Stream(self, self.backward)
        self.acceptor_sink = Sink(self, self.backward)
        self.acceptor_stream = Stream(self, self.forward)

    def touches(self, host: str) -> bool:
        return host == self.dialer_host or host == self.acceptor_host or host == self.acceptor_owner

    def half_done(self) -> None:
        self.halves_done += 1
        if self.halves_done == 4:
            self.net._release(self)

    def break_(self, reason: str, crashed_host: str | None = None) -> None:
        if self.broken:
            return
        self.broken = True
        # A crashed host loses what it had buffered; the survivor keeps what had arrived.
        self.forward.break_(reason, drop_buffer=crashed_host is not None and self.acceptor_side_crashed(crashed_host))
        self.backward.break_(reason, drop_buffer=crashed_host is not None and crashed_host == self.dialer_host)
        self.net._release(self)

    def acceptor_side_crashed(self, host: str) -> bool:
        return host == self.acceptor_host or host == self.acceptor_owner


class _Half:
    """What the two halves share: their connection, their flow, their ends.

    A sink's flow runs from its own end, a stream's towards it (``_OUTBOUND``)."""

    _KIND = ""
    _OUTBOUND = True
    _closed: bool

    def __init__(self, conn: _Connection, flow: _Flow) -> None:
        super().__init__(flow.pipe)  # type: ignore[call-arg]
        self._conn = conn
        self._flow = flow

    def _ends(self) -> tuple[str, str]:
        flow = self._flow
        return (flow.src, flow.dst) if self._OUTBOUND else (flow.dst, flow.src)

    def _on_done(self) -> None:
        self._flow.seam.event("net.close", self._KIND, *self._ends(), 1 if self._closed else 0)
        self._conn.half_done()

    def local_addr(self) -> tuple[str, int]:
        flow = self._flow
        return flow.src_addr if self._OUTBOUND else flow.dst_addr

    def peer_addr(self) -> tuple[str, int]:
        flow = self._flow
        return flow.dst_addr if self._OUTBOUND else flow.src_addr

    def __repr__(self) -> str:
        local, peer = self._ends()
        arrow = "->" if self._OUTBOUND else "<-"
        return f"<deterministic.{type(self).__name__} {local} {arrow} {peer}{' closed' if self._closed else ''}>"


class Sink(_Half, PipeSink):
    """Sending half of a simulated connection."""

    _KIND = "sink"

    def _on_send(self, view: memoryview) -> int:
        flow = self._flow
        seam = flow.seam
        seam.event("net.send", flow.src, flow.dst, view)
        return seam.delay(flow)

    def _transmit(self, chunk: bytes, token: int) -> None:
        self._flow.net.counters.network["bytes_sent"] += len(chunk)
        self._flow.transmit(chunk, token)

    def _transmit_eof(self) -> None:
        flow = self._flow
        flow.transmit(_EOF, flow.seam.latency(flow))


class Stream(_Half, PipeStream):
    """Receiving half of a simulated connection."""

    _KIND = "stream"
    _OUTBOUND = False

    def _on_recv(self, data: bytes) -> None:
        flow = self._flow
        flow.net.counters.network["bytes_received"] += len(data)
        flow.seam.event("net.recv", flow.src, flow.dst, data)


class Listener:
    """A bound simulated address; ``accept`` yields connections dialed to it in order."""

    def __init__(self, net: Network, addr: tuple[str, int], host: str, owner: str) -> None:
        self._net = net
        self._addr = addr
        self._host = host  # the host this listener lives on (for links, partitions, crashes)
        self._owner = owner  # the host of the context that bound it
        self._closed = False
        self._backlog: deque[_Connection] = deque()
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    @property
    def host(self) -> str:
        return self._host

    def local_addr(self) -> tuple[str, int]:
        return self._addr

    def _offer(self, conn: _Connection, *, first: bool = False) -> None:
        """Hand ``conn`` to the oldest waiting ``accept``, else queue it (at the front when
        it goes back after an accept that was cancelled while holding it)."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        if first:
            self._backlog.appendleft(conn)
        else:
            self._backlog.append(conn)

    async def accept(self) -> tuple[tuple[str, int], Sink, Stream]:
        """The next connection: ``(peer_addr, sink, stream)``; ``Closed`` once closed."""
        conn: _Connection | None
        while True:
            if self._closed:
                raise Closed(f"listener on {format_address(self._addr)} is closed")
            backlog = self._backlog
            while backlog:
                conn = backlog.popleft()
                if not conn.broken:
                    return self._accepted(conn)
            fut: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                conn = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.result() is not None:
                    # Handed a connection just as we were cancelled: pass it on, don't lose it.
                    handed = fut.result()
                    assert handed is not None
                    if self._closed:
                        handed.break_(f"listener on {format_address(self._addr)} closed before accept")
                    else:
                        self._offer(handed, first=True)
                else:
                    try:
                        self._waiters.remove(fut)
                    except ValueError:
                        pass
                raise
            if conn is not None and not conn.broken:
                return self._accepted(conn)

    def _accepted(self, conn: _Connection) -> tuple[tuple[str, int], Sink, Stream]:
        net = self._net
        net.counters.network["inbound_connections"] += 1
        net._seam.event("net.accept", format_address(conn.acceptor_addr), format_address(conn.dialer_addr))
        return conn.dialer_addr, conn.acceptor_sink, conn.acceptor_stream

    def close(self) -> Completed:
        """Stop listening (idempotent): pending accepts raise ``Closed``, the port is freed,
        and connections dialed but not yet accepted are refused (their dialer's calls fail).
        Synchronous; the result may be awaited (see ``completed``)."""
        if self._closed:
            return COMPLETED
        self._closed = True
        net = self._net
        key = (self._host, *self._addr)
        if net._listeners.get(key) is self:
            del net._listeners[key]
        net._seam.event("net.unbind", format_address(self._addr))
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        reason = f"listener on {format_address(self._addr)} closed before accepting the connection"
        backlog = self._backlog
        while backlog:
            backlog.popleft().break_(reason)
        return COMPLETED

    def __repr__(self) -> str:
        return f"<deterministic.Listener {format_address(self._addr)}{' closed' if self._closed else ''}>"


class Network:
    """The simulated network of one deterministic run (``context.network``)."""

    def __init__(self, *, auditor: Auditor | None, counters: RuntimeCounters, rng: random.Random, buffer_size: int = 1 << 16) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int):
            raise TypeError(f"buffer_size must be an int, got {type(buffer_size).__name__} {buffer_size!r}")
        if buffer_size <= 0:
            raise ValueError(f"buffer_size must be positive, got {buffer_size}")
        # Every audited event and fault decision of this network goes through its seam,
        # which also holds the fault plan: links (latency, jitter) and partitions.
        self._seam = NetworkSeam(auditor, rng)
        self.counters = counters
        self.buffer_size = buffer_size
        # Keyed by (the host it lives on, the ip it binds, port); insertion order is bind order.
        self._listeners: dict[tuple[str, str, int], Listener] = {}
        self._conns: dict[int, _Connection] = {}  # insertion (= creation) order: deterministic
        self._next_cid = 0
        self._source_ports: dict[tuple[str, int], _Connection] = {}
        self._next_port: dict[str, int] = {}

    @property
    def auditor(self) -> Auditor | None:
        return self._seam.auditor

    @property
    def rng(self) -> random.Random:
        """The fault stream (link jitter draws)."""
        return self._seam.rng

    # -- ports ------------------------------------------------------------------------

    def _allocate_port(self, host: str, ip: str) -> int:
        """Next free ephemeral port of ``host`` for use on ``ip``."""
        listeners = self._listeners
        sources = self._source_ports
        port = self._next_port.get(host, EPHEMERAL_FIRST)
        for _ in range(EPHEMERAL_LAST - EPHEMERAL_FIRST + 1):
            candidate = port
            port = port + 1 if port < EPHEMERAL_LAST else EPHEMERAL_FIRST
            if self._taken(host, ip, candidate) or (host, candidate) in sources or (ip, candidate) in sources:
                continue
            self._next_port[host] = port
            return candidate
        raise ConnectionFailed(f"no free ephemeral port on host {host}")

    def _taken(self, host: str, ip: str, port: int) -> bool:
        """Whether binding ``ip:port`` on ``host`` conflicts with a listener there: the same
        address, or a wildcard and a specific address of one family (Linux, no SO_REUSEPORT)."""
        listeners = self._listeners
        if (host, ip, port) in listeners:
            return True
        if ip in _WILDCARDS:
            return (":" in host) == (":" in ip) and (host, host, port) in listeners
        return (host, _wildcards_for(ip)[0], port) in listeners

    def _release(self, conn: _Connection) -> None:
        if self._conns.pop(conn.cid, None) is not None:
            if self._source_ports.get(conn.dialer_addr) is conn:
                del self._source_ports[conn.dialer_addr]

    # -- bind / dial --------------------------------------------------------------------

    async def bind(self, host: str, addr: Address) -> Listener:
        """Listen on ``addr`` from ``host`` (port 0 picks an ephemeral port)."""
        _check_host(host)
        ip, port = _parse(addr)
        lives_on = _listener_host(host, ip)
        if port == 0:
            try:
                port = self._allocate_port(lives_on, ip)
            except ConnectionFailed as exc:
                raise BindFailed(f"cannot bind {format_address((ip, 0))}: {exc}") from None
        key = (ip, port)
        if self._taken(lives_on, ip, port) or key in self._source_ports:
            self._seam.event("net.bind_failed", host, format_address(key))
            raise BindFailed(f"cannot bind {format_address(key)}: address already in use")
        listener = Listener(self, key, lives_on, host)
        self._listeners[(lives_on, ip, port)] = listener
        self._seam.event("net.bind", host, format_address(key))
        return listener

    def _lookup(self, source_host: str, ip: str, port: int) -> Listener | None:
        """The listener a dial from ``source_host`` to ``ip:port`` reaches: bound on exactly
        that ip, else a wildcard one on host ``ip``.  A wildcard target (a wildcard listener's
        own ``local_addr()``) and a loopback one mean the dialing host itself, as on a real
        machine."""
        listeners = self._listeners
        listener = listeners.get((ip, ip, port))
        if listener is not None:
            return listener
        machines = [ip]
        if ip in _WILDCARDS or ip == "::1" or ip.startswith("127."):
            machines.append(source_host)
        for machine in machines:
            if machine != ip:
                listener = listeners.get((machine, machine, port))
                if listener is not None:
                    return listener
            for wildcard in _wildcards_for(ip):
                listener = listeners.get((machine, wildcard, port))
                if listener is not None:
                    return listener
        return None

    async def dial(self, source_host: str, addr: Address) -> tuple[Sink, Stream]:
        """Connect from ``source_host`` (an ephemeral source port) to ``addr``."""
        _check_host(source_host, "source_host")
        target = _parse(addr)
        loop = asyncio.get_running_loop()
        listener = self._lookup(source_host, *target)
        reason = None
        if listener is None:
            reason = "nobody is listening"
        elif self._seam.partitioned(source_host, listener.host):
            reason = f"host {source_host} is partitioned from {listener.host}"
        if listener is None or reason is not None:
            self._seam.event("net.dial_failed", source_host, format_address(target), reason or "")
            raise ConnectionFailed(f"cannot connect to {format_address(target)} from {source_host}: {reason}")
        source = (source_host, self._allocate_port(source_host, source_host))
        cid = self._next_cid
        self._next_cid += 1
        conn = _Connection(self, cid, loop, source, target, listener.host, listener._owner)
        self._conns[cid] = conn
        self._source_ports[source] = conn
        self.counters.network["outbound_connections"] += 1
        self._seam.event("net.dial", format_address(source), format_address(target))
        listener._offer(conn)
        return conn.dialer_sink, conn.dialer_stream

    # -- faults -----------------------------------------------------------------------

    def set_link(self, a: str, b: str, *, latency: Duration = 0, jitter: Duration = 0, symmetric: bool = True) -> None:
        """Delay bytes from ``a`` to ``b`` (and ``b`` to ``a`` when ``symmetric``) by
        ``latency`` plus a uniform ``0..jitter`` drawn per send.  Zeros remove the delay."""
        _check_host(a, "a")
        _check_host(b, "b")
        latency_ns = duration_ns(latency, "latency")
        jitter_ns = duration_ns(jitter, "jitter")
        if not isinstance(symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {symmetric!r}")
        self._seam.set_link(a, b, latency_ns, jitter_ns, symmetric)

    def link(self, a: str, b: str) -> tuple[float, float]:
        """``(latency, jitter)`` in seconds from ``a`` to ``b``."""
        latency_ns, jitter_ns = self._seam.links.get((a, b), (0, 0))
        return latency_ns / NS_PER_SECOND, jitter_ns / NS_PER_SECOND

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Cut every host of ``group_a`` from every host of ``group_b`` (both directions)."""
        self._seam.cut(_check_hosts(group_a, "group_a"), _check_hosts(group_b, "group_b"))

    def partitioned(self, a: str, b: str) -> bool:
        return self._seam.partitioned(a, b)

    def heal(self, group_a: Iterable[str] | None = None, group_b: Iterable[str] | None = None) -> None:
        """Remove partitions (all of them, or only between two groups) and deliver, in
        order, what they held."""
        if (group_a is None) != (group_b is None):
            raise TypeError("heal() takes no groups (heal everything) or both group_a and group_b")
        if group_a is None or group_b is None:
            self._seam.mend(None, None)
        else:
            self._seam.mend(_check_hosts(group_a, "group_a"), _check_hosts(group_b, "group_b"))
        for conn in list(self._conns.values()):
            conn.forward.flush()
            conn.backward.flush()

    def crash_host(self, host: str) -> None:
        """Crash ``host``: its listeners close and every connection touching it breaks."""
        _check_host(host)
        self._seam.event("net.crash", host)
        for listener in list(self._listeners.values()):
            if listener._host == host or listener._owner == host:
                listener.close()
        reason = f"host {host} crashed"
        for conn in list(self._conns.values()):
            if conn.touches(host):
                conn.break_(reason, crashed_host=host)

    def __repr__(self) -> str:
        return f"<deterministic.Network listeners={len(self._listeners)} connections={len(self._conns)}>"
