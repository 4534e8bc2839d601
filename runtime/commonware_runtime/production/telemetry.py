"""Telemetry for the production runtime: structured logs and a Prometheus ``/metrics`` endpoint.

>>> async def main(context):
...     t = telemetry.init(context, metrics=("127.0.0.1", 0))
...     host, port = t.address          # curl http://host:port/metrics

``init`` is synchronous (like commonware's ``telemetry::init``) and everything it sets up
ends with the run: the runner closes the server and removes the log handler when ``start``
returns, restoring the root logger's level.  Call ``close()`` to end them earlier.

The HTTP endpoint is deliberately tiny: a non-blocking listening socket watched with
``loop.add_reader``; each connection's request head is read, answered with
``Connection: close`` and the connection closed.  Nothing runs as a task, so the server
never shows up among the run's tasks, and closing it is synchronous.  It needs a loop with
``add_reader`` (the selector loops and uvloop; not Windows' proactor loop).

JSON log lines carry ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, and when
known ``task`` (the label of the runtime task that logged: for a blocking function, the task
it belongs to; ``root`` for the root task, ``<unlabeled>`` for an unlabeled one),
``thread`` (when not the main thread), ``exception`` (the formatted traceback), ``stack``
and every ``extra={...}`` field.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import json as _json
import logging
import os
import socket
import sys
import threading
from typing import IO, Any

from ..arguments import Address, format_address, parse_address
from ..errors import BindFailed
from ..tasks import is_runtime_task
from .context import Context, blocking_label

__all__ = ["Telemetry", "JsonFormatter", "TextFormatter", "TaskFilter", "init", "CONTENT_TYPE"]

logger = logging.getLogger("commonware_runtime")

#: The Prometheus text format that ``context.encode()`` produces.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MAX_HEAD = 16 * 1024
_CONN_TIMEOUT = 10.0
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "task"}


# -- logging --------------------------------------------------------------------------------


def current_task_label() -> str | None:
    """The label of the runtime task running on this thread, or None outside one."""
    label = blocking_label()
    if label is not None:
        return label or "<unlabeled>"
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop on this thread
        return None
    if task is None:
        return None
    if not is_runtime_task(task):
        return None  # a plain asyncio task, not one of the runtime's
    return task.get_name() or "<unlabeled>"


class TaskFilter(logging.Filter):
    """Attaches ``record.task`` (the runtime task label or None) in the logging thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task"):
            record.task = current_task_label()
        return True


def _rfc3339(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task = getattr(record, "task", None)
        if task is not None:
            out["task"] = task
        if record.threadName and record.thread != threading.main_thread().ident:
            out["thread"] = record.threadName
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        return _json.dumps(out, default=repr, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [task]: message`` plus the traceback, if any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(task_part)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        task = getattr(record, "task", None)
        record.task_part = f" [{task}]" if task is not None else ""
        try:
            return super().format(record)
        finally:
            del record.task_part  # type: ignore[attr-defined]  # set just above, as a LogRecord extra


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """Writes to whatever ``sys.stderr`` is at emit time (pytest and others swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


# -- /metrics over HTTP ---------------------------------------------------------------------


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", *, head: bool = False,
              extra: str = "") -> bytes:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode("ascii")
    return header if head else header + body


class _Connection:
    """One HTTP connection: read the request head, answer, half-close, drain, close."""

    __slots__ = ("server", "sock", "buf", "out", "timer", "answered", "writing")

    def __init__(self, server: _MetricsServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.buf = bytearray()
        self.out: memoryview | None = None
        self.answered = False
        self.writing = False
        self.timer = server.loop.call_later(_CONN_TIMEOUT, self.close)
        server.loop.add_reader(sock, self.on_readable)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        if self.answered:
            return  # draining whatever the client still sends before it closes
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            end = self.buf.find(b"\n\n")
        if (end < 0 and len(self.buf) > _MAX_HEAD) or end > _MAX_HEAD:
            self.answer(_response("431 Request Header Fields Too Large", b"request head too large\n"))
            return
        if end < 0:
            return
        self.answer(self.server.respond(bytes(self.buf[:end])))

    def answer(self, payload: bytes) -> None:
        self.answered = True
        self.buf.clear()
        self.out = memoryview(payload)
        self.on_writable()

    def on_writable(self) -> None:
        out = self.out
        assert out is not None
        try:
            sent = self.sock.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        rest = out[sent:]
        loop = self.server.loop
        if rest:
            self.out = rest
            if not self.writing:
                self.writing = True
                loop.add_writer(self.sock, self.on_writable)
            return
        self.out = None
        if self.writing:
            self.writing = False
            loop.remove_writer(self.sock)
        # Half-close and let the client close first: closing with unread input would reset
        # the connection and could destroy the response in flight.
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        loop = self.server.loop
        self.timer.cancel()
        loop.remove_reader(self.sock)
        loop.remove_writer(self.sock)
        self.server.connections.discard(self)
        self.sock.close()


class _MetricsServer:
    def __init__(self, context: Context, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.context = context
        self.loop = loop
        self.sock = sock
        self.connections: set[_Connection] = set()
        loop.add_reader(sock, self.on_accept)

    def on_accept(self) -> None:
        for _ in range(64):  # a burst of connections, without starving the loop
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED):
                    logger.warning("metrics endpoint could not accept a connection: %s", exc)
                    return
                raise
            conn.setblocking(False)
            self.connections.add(_Connection(self, conn))

    def respond(self, head: bytes) -> bytes:
        line = head.split(b"\n", 1)[0].strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response("400 Bad Request", b"bad request\n")
        method, target = parts[0], parts[1]
        path = target.split(b"?", 1)[0]
        if path != b"/metrics":
            return _response("404 Not Found", b"not found; metrics are at /metrics\n")
        if method not in (b"GET", b"HEAD"):
            return _response("405 Method Not Allowed", b"method not allowed\n", extra="Allow: GET, HEAD\r\n")
        try:
            body = self.context.encode().encode("utf-8")
        except Exception as exc:  # noqa: BLE001 - logged and answered with 500
            logger.error("encoding metrics for /metrics failed", exc_info=exc)
            return _response("500 Internal Server Error", b"encoding metrics failed\n")
        return _response("200 OK", body, CONTENT_TYPE, head=method == b"HEAD")

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock)
            self.sock.close()
        for conn in list(self.connections):
            conn.close()


def _listen(addr: Address) -> socket.socket:
    host, port = parse_address(addr)
    name = format_address((host, port))
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise BindFailed(f"cannot bind the metrics endpoint {name}: {exc}") from exc
    family, kind, proto, _canon, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindFailed(f"cannot bind the metrics endpoint {name}: {exc}") from exc
    return sock


# -- init -----------------------------------------------------------------------------------


class Telemetry:
    """What ``init`` set up: the log handler and, if asked for, the metrics endpoint."""

    def __init__(self, handler: logging.Handler, previous_level: int, server: _MetricsServer | None) -> None:
        self.handler = handler
        self._previous_level = previous_level
        self._server = server
        self._closed = False
        self.address: tuple[str, int] | None = None
        if server is not None:
            name = server.sock.getsockname()
            self.address = (str(name[0]), int(name[1]))

    def close(self) -> None:
        """Stop serving ``/metrics`` and remove the log handler (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        root = logging.getLogger()
        if self.handler in root.handlers:
            root.removeHandler(self.handler)
            root.setLevel(self._previous_level)
        self.handler.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Telemetry address={self.address!r} {state}>"


_installed: list[Telemetry] = []


def _check_level(level: object) -> int:
    if isinstance(level, bool):
        raise TypeError(f"level must be a logging level (int or name), got {level!r}")
    if isinstance(level, int):
        if level < 0:
            raise ValueError(f"level must not be negative, got {level}")
        return level
    if isinstance(level, str):
        value = logging.getLevelName(level.upper())
        if not isinstance(value, int):
            raise ValueError(f"level {level!r} is not a logging level name")
        return value
    raise TypeError(f"level must be a logging level (int or name), got {type(level).__name__} {level!r}")


def init(
    context: Context,
    level: int | str = logging.INFO,
    json: bool = True,
    metrics: Address | None = ("127.0.0.1", 9090),
    *,
    stream: IO[str] | None = None,
) -> Telemetry:
    """Configure logging on the root logger and serve ``GET /metrics`` until the run ends.

    ``json=True`` writes one JSON object per line, otherwise plain text; ``stream``
    defaults to (the current) ``sys.stderr``.  ``metrics=None`` serves nothing; port 0
    picks a free port (read it from ``.address``).  A later ``init`` replaces the log
    handler of an earlier one.  Bind errors raise ``BindFailed``.
    """
    if not isinstance(context, Context):
        raise TypeError(f"telemetry.init needs a production.Context, got {type(context).__name__}")
    level = _check_level(level)
    if not isinstance(json, bool):
        raise TypeError(f"json must be a bool, got {json!r}")
    if metrics is not None:
        parse_address(metrics)
    if stream is not None and not callable(getattr(stream, "write", None)):
        raise TypeError(f"stream must be a text stream with write(), got {stream!r}")
    core = context._core
    loop = core.loop
    if loop.is_closed():
        raise RuntimeError("telemetry.init called after the run ended")

    server = None
    if metrics is not None:
        sock = _listen(metrics)
        try:
            server = _MetricsServer(context, loop, sock)
        except BaseException:
            sock.close()
            raise

    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(TaskFilter())
    root = logging.getLogger()
    previous_level = root.level
    for earlier in _installed:
        if earlier.handler in root.handlers:
            # Replaced: restore, in the end, the level from before the earlier init.
            root.removeHandler(earlier.handler)
            previous_level = earlier._previous_level
    root.addHandler(handler)
    root.setLevel(level)

    telemetry = Telemetry(handler, previous_level, server)
    _installed[:] = [telemetry]
    core.closers.append(telemetry.close)
    return telemetry
