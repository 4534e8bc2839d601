"""Buffers over blobs (docs/SPEC.md section 4): a ``Pool`` of reusable bytearrays and buffered
sequential ``Read`` / ``Write`` wrappers.

They work over any blob with the Blob interface of docs/SPEC.md (``read_at``, ``write_at``, ``sync``,
``close``, ``size``): the production file blob and the deterministic simulated one alike.
They call only ``blob.read_at(n, offset)`` with an integer length, and hand each flushed
buffer to ``write_at`` without touching it again, so a blob implementation that keeps a
reference to the bytes it was given is safe.

``Read`` and ``Write`` may be shared between tasks: each operation holds an
``asyncio.Lock`` (free when uncontended), so concurrent calls run one after the other.
A failed or cancelled operation leaves the wrapper as it was: a ``Write`` keeps its
unflushed bytes for the next ``flush``, a ``Read`` does not advance.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

from .arguments import check_count, check_data, check_offset, format_blob
from .errors import BlobInsufficientLength

__all__ = ["Pool", "Read", "Write", "MIN_CLASS"]

#: Smallest size class handed out by ``Pool`` (smaller requests get this many bytes).
MIN_CLASS = 64


class BlobLike(Protocol):
    @property
    def size(self) -> int: ...

    async def read_at(self, n_or_buffer: Any, offset: int) -> Any: ...

    async def write_at(self, data: Any, offset: int) -> None: ...

    async def sync(self) -> None: ...

    async def close(self) -> None: ...


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")
    return value


def _blob_label(blob: object) -> str:
    partition = getattr(blob, "partition", None)
    name = getattr(blob, "name", None)
    if isinstance(partition, str) and isinstance(name, (bytes, bytearray)):
        return format_blob(partition, bytes(name))
    return f"blob {blob!r}"


class Pool:
    """Reusable ``bytearray`` buffers grouped by power-of-two size class.

    ``acquire(size)`` returns a bytearray whose length is the size class of ``size``: the
    smallest power of two >= ``size`` (at least ``MIN_CLASS``).  So ``len(buf) >= size``;
    use ``memoryview(buf)[:size]`` for exactly ``size`` bytes.  A reused buffer holds
    whatever its previous user left in it unless ``zero=True``.  ``release`` hands it back;
    each class keeps at most ``max_per_class`` idle buffers and drops the rest to the
    garbage collector.  Safe to share between threads.
    """

    def __init__(self, max_per_class: int = 64) -> None:
        if isinstance(max_per_class, bool) or not isinstance(max_per_class, int):
            raise TypeError(f"max_per_class must be an int, got {type(max_per_class).__name__} {max_per_class!r}")
        if max_per_class < 0:
            raise ValueError(f"max_per_class must not be negative, got {max_per_class}")
        self.max_per_class = max_per_class
        self._free: dict[int, list[bytearray]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def size_class(size: int) -> int:
        """The length of the buffer ``acquire(size)`` returns."""
        size = check_count(size, "size")
        return max(MIN_CLASS, 1 << (size - 1).bit_length()) if size > 1 else MIN_CLASS

    def acquire(self, size: int, *, zero: bool = False) -> bytearray:
        """A buffer of ``size_class(size)`` bytes, reused when one is idle."""
        cls = self.size_class(size)
        with self._lock:
            free = self._free.get(cls)
            buf = free.pop() if free else None
        if buf is None:
            return bytearray(cls)
        if zero:
            buf[:] = bytes(cls)
        return buf

    def release(self, buf: bytearray) -> None:
        """Return a buffer obtained from ``acquire``.  Its length must still be a size
        class; releasing the same buffer twice raises ``ValueError``."""
        if not isinstance(buf, bytearray):
            raise TypeError(f"Pool.release takes a bytearray, got {type(buf).__name__}")
        cls = len(buf)
        if cls < MIN_CLASS or cls & (cls - 1):
            raise ValueError(f"buffer of {cls} bytes is not a pool size class (a power of two >= {MIN_CLASS})")
        with self._lock:
            free = self._free.setdefault(cls, [])
            if any(held is buf for held in free):
                raise ValueError("buffer released twice: it is already in the pool")
            if len(free) < self.max_per_class:
                free.append(buf)

    def idle(self, size: int) -> int:
        """Idle buffers held for the size class of ``size``."""
        cls = self.size_class(size)
        with self._lock:
            return len(self._free.get(cls, ()))


class Read:
    """Buffered sequential reader: fetches ``buffer_size`` bytes ahead from the blob."""

    def __init__(self, blob: BlobLike, blob_size: int, buffer_size: int) -> None:
        if not callable(getattr(blob, "read_at", None)):
            raise TypeError(f"Read needs a blob with read_at, got {type(blob).__name__}")
        self._blob = blob
        self._blob_size = check_count(blob_size, "blob_size")
        self._buffer_size = _positive(buffer_size, "buffer_size")
        self._buf = b""
        self._buf_start = 0  # blob offset of _buf[0]
        self._pos = 0  # index of the next byte within _buf
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<buffer.Read {_blob_label(self._blob)} position={self.position} size={self._blob_size}>"

    @property
    def position(self) -> int:
        """Blob offset of the next byte ``read_exact`` returns."""
        return self._buf_start + self._pos

    @property
    def remaining(self) -> int:
        return self._blob_size - self.position

    @property
    def blob_size(self) -> int:
        return self._blob_size

    @property
    def buffer_size(self) -> int:
        return self._buffer_size

    async def read_exact(self, n: int) -> bytes:
        """The next ``n`` bytes; ``BlobInsufficientLength`` (consuming nothing) if fewer remain."""
        n = check_count(n, "n")
        async with self._lock:
            position = self.position
            if n > self._blob_size - position:
                raise BlobInsufficientLength(
                    f"{_blob_label(self._blob)}: buffered read of {n} bytes at offset {position} "
                    f"passes the end (size {self._blob_size})"
                )
            if n == 0:
                return b""
            buf, pos = self._buf, self._pos
            available = len(buf) - pos
            if n <= available:
                self._pos = pos + n
                return buf[pos : pos + n]
            head = buf[pos:]
            start = self._buf_start + len(buf)
            need = n - available
            if need >= self._buffer_size:
                # Larger than the buffer: read it in one call and keep nothing.
                data = await self._read(need, start)
                self._buf, self._buf_start, self._pos = b"", start + need, 0
                return head + data if head else data
            fill = min(self._buffer_size, self._blob_size - start)
            data = await self._read(fill, start)
            self._buf, self._buf_start, self._pos = data, start, need
            return head + data[:need]

    async def _read(self, n: int, offset: int) -> bytes:
        data = await self._blob.read_at(n, offset)
        if len(data) != n:
            raise BlobInsufficientLength(
                f"{_blob_label(self._blob)}: read of {n} bytes at offset {offset} returned {len(data)}"
            )
        return bytes(data)

    async def seek_to(self, offset: int) -> None:
        """Move to ``offset`` (<= blob_size); keeps the buffer when it covers ``offset``."""
        offset = check_offset(offset)
        async with self._lock:
            if offset > self._blob_size:
                raise BlobInsufficientLength(
                    f"{_blob_label(self._blob)}: cannot seek to {offset} past the end (size {self._blob_size})"
                )
            if self._buf_start <= offset <= self._buf_start + len(self._buf):
                self._pos = offset - self._buf_start
            else:
                self._buf, self._buf_start, self._pos = b"", offset, 0


class Write:
    """Buffered sequential writer starting at ``offset``: coalesces small writes into
    ``write_at`` calls of up to ``buffer_size`` bytes; larger writes go straight through.
    Nothing reaches the blob before the buffer fills, ``flush``, ``sync`` or ``close``."""

    def __init__(self, blob: BlobLike, offset: int, buffer_size: int) -> None:
        if not callable(getattr(blob, "write_at", None)):
            raise TypeError(f"Write needs a blob with write_at, got {type(blob).__name__}")
        self._blob = blob
        self._buf_start = check_offset(offset)  # blob offset of _buf[0]
        self._buffer_size = _positive(buffer_size, "buffer_size")
        self._buf = bytearray()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<buffer.Write {_blob_label(self._blob)} position={self.position} buffered={len(self._buf)}>"

    @property
    def position(self) -> int:
        """Blob offset where the next ``write`` lands."""
        return self._buf_start + len(self._buf)

    @property
    def buffered(self) -> int:
        """Bytes written but not yet handed to the blob."""
        return len(self._buf)

    @property
    def size(self) -> int:
        """The blob's size once the buffer is flushed."""
        return max(self._blob.size, self.position)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        data = check_data(data)
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if n == 0:
            return
        async with self._lock:
            if self._buf and len(self._buf) + n > self._buffer_size:
                await self._flush()
            if not self._buf and n >= self._buffer_size:
                await self._blob.write_at(data, self._buf_start)
                self._buf_start += n
                return
            self._buf += data
            if len(self._buf) >= self._buffer_size:
                await self._flush()

    async def _flush(self) -> None:
        buf = self._buf
        if not buf:
            return
        await self._blob.write_at(buf, self._buf_start)
        # The blob may keep a reference to what it was given: start a new buffer.
        self._buf_start += len(buf)
        self._buf = bytearray()

    async def flush(self) -> None:
        """Hand buffered bytes to the blob (not yet durable: see ``sync``)."""
        async with self._lock:
            await self._flush()

    async def sync(self) -> None:
        """Flush, then ``blob.sync()``: everything written so far is durable."""
        async with self._lock:
            await self._flush()
            await self._blob.sync()

    async def close(self) -> None:
        """Flush, then ``blob.close()`` (which syncs)."""
        async with self._lock:
            await self._flush()
            await self._blob.close()
