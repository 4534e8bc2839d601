"""buffer.Pool and buffered Read/Write over the production Blob (and a minimal in-memory blob)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from commonware_runtime import buffer
from commonware_runtime.buffer import MIN_CLASS, Pool, Read, Write
from commonware_runtime.errors import BlobInsufficientLength, WriteFailed
from commonware_runtime.metrics import RuntimeCounters
from commonware_runtime.production.storage import Storage

T = TypeVar("T")


def run(tmp_path: Path, body: Callable[[Storage, RuntimeCounters], Awaitable[T]]) -> T:
    counters = RuntimeCounters()
    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        storage = Storage(tmp_path / "store", counters=counters, executor=executor)
        return asyncio.run(body(storage, counters))


class MemoryBlob:
    """The SPEC blob interface in memory; keeps references to what write_at is given."""

    def __init__(self, data: bytes = b"", fail_writes: int = 0) -> None:
        self.data = bytearray(data)
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, Any]] = []
        self.syncs = 0
        self.closed = False
        self.fail_writes = fail_writes

    @property
    def size(self) -> int:
        return len(self.data)

    async def read_at(self, n: int, offset: int) -> bytes:
        await asyncio.sleep(0)
        if offset + n > len(self.data):
            raise BlobInsufficientLength(f"{offset}+{n}")
        self.reads.append((offset, n))
        return bytes(self.data[offset : offset + n])

    async def write_at(self, data: Any, offset: int) -> None:
        await asyncio.sleep(0)
        if self.fail_writes:
            self.fail_writes -= 1
            raise WriteFailed("injected")
        self.writes.append((offset, data))
        end = offset + len(data)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = data

    async def sync(self) -> None:
        self.syncs += 1

    async def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------- Pool


def test_pool_size_classes_and_reuse() -> None:
    pool = Pool(max_per_class=2)
    assert [Pool.size_class(n) for n in (0, 1, 64, 65, 100, 4096, 4097)] == [64, 64, 64, 128, 128, 4096, 8192]
    a = pool.acquire(100)
    assert isinstance(a, bytearray) and len(a) == 128
    assert pool.idle(100) == 0
    pool.release(a)
    assert pool.idle(128) == 1
    assert pool.acquire(120) is a  # same class: reused
    assert pool.idle(100) == 0
    b, c, d = pool.acquire(128), pool.acquire(128), pool.acquire(128)
    for buf in (a, b, c, d):
        pool.release(buf)
    assert pool.idle(128) == 2  # capped at max_per_class; the rest were dropped
    assert len(pool.acquire(5000)) == 8192


def test_pool_zeroing_and_misuse() -> None:
    pool = Pool()
    buf = pool.acquire(64)
    buf[:4] = b"junk"
    pool.release(buf)
    assert pool.acquire(64, zero=True) == bytes(64)
    pool.release(buf)
    with pytest.raises(ValueError, match="twice"):
        pool.release(buf)
    with pytest.raises(ValueError, match="size class"):
        pool.release(bytearray(100))
    with pytest.raises(ValueError, match="size class"):
        pool.release(bytearray(32))
    with pytest.raises(TypeError):
        pool.release(b"x" * 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pool.acquire(-1)
    with pytest.raises(TypeError):
        pool.acquire(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Pool(-1)
    with pytest.raises(TypeError):
        Pool("4")  # type: ignore[arg-type]
    assert Pool(0).acquire(10) is not None and MIN_CLASS == 64


# ---------------------------------------------------------------------------- Read


def test_read_over_production_blob(tmp_path: Path) -> None:
    data = os.urandom(10_000)

    async def body(storage: Storage, counters: RuntimeCounters) -> None:
        blob, _ = await storage.open("p", b"r")
        await blob.write_at(data, 0)
        reader = Read(blob, blob.size, 1024)
        assert reader.position == 0 and reader.remaining == 10_000
        before = counters.storage["reads"]
        got = bytearray()
        sizes = [1, 7, 100, 500, 1024, 3, 2000, 13]
        for n in sizes:
            chunk = await reader.read_exact(n)
            assert isinstance(chunk, bytes) and len(chunk) == n
            got += chunk
        total = sum(sizes)
        assert bytes(got) == data[:total] and reader.position == total
        assert reader.remaining == 10_000 - total
        # Read-ahead: far fewer blob reads than read_exact calls.
        assert counters.storage["reads"] - before <= 5
        rest = await reader.read_exact(reader.remaining)
        assert bytes(got) + rest == data
        assert await reader.read_exact(0) == b""
        with pytest.raises(BlobInsufficientLength, match="blob b'r' in partition 'p'"):
            await reader.read_exact(1)
        await blob.close()

    run(tmp_path, body)


def test_read_past_end_consumes_nothing_and_seek() -> None:
    data = bytes(range(256)) * 4
    blob = MemoryBlob(data)

    async def body() -> None:
        reader = Read(blob, len(data), 100)
        assert await reader.read_exact(10) == data[:10]
        assert blob.reads == [(0, 100)]
        await reader.seek_to(50)  # inside the buffer: no blob read
        assert await reader.read_exact(20) == data[50:70]
        assert blob.reads == [(0, 100)]
        await reader.seek_to(900)
        assert reader.position == 900 and reader.remaining == 124
        with pytest.raises(BlobInsufficientLength, match="125 bytes at offset 900"):
            await reader.read_exact(125)
        assert reader.position == 900
        assert await reader.read_exact(24) == data[900:924]
        assert blob.reads[-1] == (900, 100)
        assert await reader.read_exact(100) == data[924:]
        assert blob.reads[-1] == (1000, 24) and len(blob.reads) == 3  # last fill shortened to the end
        await reader.seek_to(1024)
        assert reader.remaining == 0
        with pytest.raises(BlobInsufficientLength):
            await reader.seek_to(1025)
        await reader.seek_to(0)
        big = await reader.read_exact(500)  # larger than the buffer: one direct read
        assert big == data[:500] and blob.reads[-1] == (0, 500)
        with pytest.raises(ValueError):
            await reader.seek_to(-1)
        with pytest.raises(ValueError):
            await reader.read_exact(-1)

    asyncio.run(body())
    with pytest.raises(ValueError):
        Read(blob, 10, 0)
    with pytest.raises(TypeError):
        Read(object(), 10, 10)  # type: ignore[arg-type]


def test_concurrent_reads_each_get_distinct_bytes() -> None:
    data = os.urandom(4000)
    blob = MemoryBlob(data)

    async def body() -> list[bytes]:
        reader = Read(blob, len(data), 64)
        return list(await asyncio.gather(*(reader.read_exact(100) for _ in range(40))))

    chunks = asyncio.run(body())
    assert b"".join(chunks) == data  # the lock serialises them in call order


# ---------------------------------------------------------------------------- Write


def test_write_coalesces_over_production_blob(tmp_path: Path) -> None:
    async def body(storage: Storage, counters: RuntimeCounters) -> None:
        blob, _ = await storage.open("p", b"w")
        writer = Write(blob, 0, 1000)
        expected = bytearray()
        for i in range(300):
            piece = bytes([i % 251]) * 10
            await writer.write(piece)
            expected += piece
        assert counters.storage["writes"] == 3  # 3000 bytes in 1000-byte flushes
        assert writer.position == 3000 and writer.size == 3000 and writer.buffered == 0
        await writer.write(b"tail")
        assert blob.size == 3000 and writer.size == 3004 and writer.buffered == 4
        big = os.urandom(5000)
        await writer.write(big)  # flushes "tail", then goes straight through
        expected += b"tail" + big
        assert counters.storage["writes"] == 5 and writer.buffered == 0
        await writer.write(memoryview(b"end"))
        expected += b"end"
        syncs = counters.storage["syncs"]
        await writer.sync()
        assert counters.storage["syncs"] == syncs + 1
        assert await blob.read_at(blob.size, 0) == bytes(expected)
        await writer.close()
        assert (storage.directory and (tmp_path / "store" / "p" / b"w".hex()).read_bytes()) == bytes(expected)
        with pytest.raises(TypeError):
            await writer.write("text")  # type: ignore[arg-type]

    run(tmp_path, body)


def test_write_at_an_offset_and_read_back(tmp_path: Path) -> None:
    async def body(storage: Storage, counters: RuntimeCounters) -> None:
        blob, _ = await storage.open("p", b"o")
        await blob.write_at(b"A" * 100, 0)
        writer = Write(blob, 40, 16)
        await writer.write(b"0123456789")
        assert writer.size == 100  # the blob is still larger
        await writer.flush()
        reader = Read(blob, blob.size, 32)
        assert await reader.read_exact(100) == b"A" * 40 + b"0123456789" + b"A" * 50
        await blob.close()

    run(tmp_path, body)


def test_failed_flush_keeps_the_bytes() -> None:
    blob = MemoryBlob(fail_writes=1)

    async def body() -> None:
        writer = Write(blob, 0, 8)
        await writer.write(b"abc")
        with pytest.raises(WriteFailed):
            await writer.flush()
        assert writer.buffered == 3 and writer.position == 3
        await writer.write(b"de")
        await writer.sync()
        assert bytes(blob.data) == b"abcde" and blob.syncs == 1
        await writer.close()
        assert blob.closed

    asyncio.run(body())


def test_flushed_buffers_are_never_mutated_afterwards() -> None:
    blob = MemoryBlob()

    async def body() -> None:
        writer = Write(blob, 0, 4)
        for chunk in (b"ab", b"cd", b"ef", b"gh", b"i"):
            await writer.write(chunk)
        await writer.flush()

    asyncio.run(body())
    # MemoryBlob keeps what it was given; each must still hold exactly what was flushed.
    assert [(offset, bytes(data)) for offset, data in blob.writes] == [(0, b"abcd"), (4, b"efgh"), (8, b"i")]


def test_concurrent_writers_do_not_interleave_within_a_write() -> None:
    blob = MemoryBlob()

    async def body() -> None:
        writer = Write(blob, 0, 50)
        await asyncio.gather(*(writer.write(bytes([i]) * 30) for i in range(20)))
        await writer.flush()

    asyncio.run(body())
    assert len(blob.data) == 600
    runs = [bytes(blob.data[i : i + 30]) for i in range(0, 600, 30)]
    assert sorted(r[0] for r in runs) == list(range(20))
    assert all(r == bytes([r[0]]) * 30 for r in runs)


def test_write_validates() -> None:
    with pytest.raises(ValueError):
        Write(MemoryBlob(), -1, 10)
    with pytest.raises(ValueError):
        Write(MemoryBlob(), 0, 0)
    with pytest.raises(TypeError):
        Write(object(), 0, 10)  # type: ignore[arg-type]
    assert "position=0" in repr(Write(MemoryBlob(), 0, 10))
    assert buffer.__all__ == ["Pool", "Read", "Write", "MIN_CLASS"]
