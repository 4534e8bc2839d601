"""Test doubles usable with either runtime (or any asyncio loop).

``Channel.init()`` returns the two ends of an in-memory byte pipe with the same
``Sink``/``Stream`` semantics as a network connection:

* ``await sink.send(data)`` queues every byte (unbounded by default, so it never waits;
  with ``capacity`` it waits while that many bytes are unread).
* ``await stream.recv(n)`` returns exactly ``n`` bytes, waiting for them; ``stream.peek(k)``
  returns up to ``k`` buffered bytes without consuming them.
* ``sink.close()``: the stream reads what was sent, then ``recv`` raises ``RecvFailed``.
  ``stream.close()``: later sends raise ``SendFailed``.
* A half that raised ``RecvFailed``/``SendFailed`` is poisoned, and every call after
  ``close()`` raises ``Closed``.  ``send(b"")`` and ``recv(0)`` do nothing.
"""

from __future__ import annotations

from .pipe import Pipe, PipeSink, PipeStream

__all__ = ["Channel", "Sink", "Stream"]


class Sink(PipeSink):
    """The writing end of a :class:`Channel`."""

    def __repr__(self) -> str:
        return f"<mocks.Sink {self._pipe.name}{' closed' if self._closed else ''}>"


class Stream(PipeStream):
    """The reading end of a :class:`Channel`."""

    def __repr__(self) -> str:
        return f"<mocks.Stream {self._pipe.name}{' closed' if self._closed else ''}>"


class Channel:
    """Factory of in-memory byte pipes (``Channel.init() -> (sink, stream)``)."""

    @staticmethod
    def init(capacity: int | None = None, *, name: str = "mock channel") -> tuple[Sink, Stream]:
        """A connected ``(sink, stream)`` pair; ``capacity`` bounds unread bytes (None: unbounded)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
        pipe = Pipe(name, capacity)
        return Sink(pipe), Stream(pipe)
