"""Production storage on real files: operations, errors, path safety, fast paths."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gc
import os
import threading
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from commonware_runtime.errors import (
    BlobInsufficientLength,
    BlobMissing,
    BlobOpenFailed,
    BlobResizeFailed,
    BlobSyncFailed,
    Closed,
    Error,
    OffsetOverflow,
    PartitionCorrupt,
    PartitionCreationFailed,
    PartitionMissing,
    PartitionNameInvalid,
    ReadFailed,
    WriteFailed,
)
from commonware_runtime.metrics import RuntimeCounters
from commonware_runtime.production import iouring, storage as storage_mod
from commonware_runtime.production.storage import Blob, Storage
from conftest import needs_iouring

T = TypeVar("T")
HAS_NOWAIT = storage_mod._RWF_NOWAIT is not None
needs_nowait = pytest.mark.skipif(not HAS_NOWAIT, reason="os.RWF_NOWAIT is Linux-only")

# The tests taking ``backend`` run on both storage backends.  On io_uring, every read goes
# through the ring (the inline RWF_NOWAIT attempt is the default backend's code, tested there).
BACKENDS = ["default", pytest.param("io_uring", marks=needs_iouring)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


class Env:
    def __init__(self, tmp_path: Path, backend: str = "default") -> None:
        self.root = tmp_path / "store"
        self.counters = RuntimeCounters()
        self.executor = CountingExecutor()
        self.storage: Storage
        if backend == "io_uring":
            self.storage = iouring.UringStorage(
                self.root, counters=self.counters, executor=self.executor, ring=iouring.open_ring()
            )
            self.storage.nowait_reads = False
        else:
            self.storage = Storage(self.root, counters=self.counters, executor=self.executor)


def run(tmp_path: Path, body: Callable[[Env], Awaitable[T]], backend: str = "default") -> T:
    env = Env(tmp_path, backend)
    try:
        return asyncio.run(body(env))
    finally:
        if isinstance(env.storage, iouring.UringStorage):
            env.storage.close()
        env.executor.shutdown(wait=True)


def fail_syncs(m: pytest.MonkeyPatch) -> None:
    """Every sync fails from now on (within ``m``): ``fdatasync`` raises EIO in the pool, and
    on the ring a real fsync completes with an error (EBADF)."""

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "injected sync error")

    async def fail_on_ring(blob: Blob, driver: Any, fd: int) -> None:
        await driver.start(blob, driver.ring.submit_fsync, (-1, True))

    m.setattr(os, "fdatasync", fail)
    m.setitem(iouring._RING_OPS, storage_mod._datasync, fail_on_ring)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- basics


def test_open_write_read_reopen(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        blob, size = await s.open("part", b"hello")
        assert size == 0 and blob.size == 0
        assert (env.root / "part" / b"hello".hex()).is_file()
        await blob.write_at(b"abcdef", 0)
        assert blob.size == 6
        assert await blob.read_at(6, 0) == b"abcdef"
        assert await blob.read_at(3, 2) == b"cde"
        await blob.write_at(bytearray(b"XY"), 4)
        await blob.write_at(memoryview(b"--z--")[2:3], 6)
        assert await blob.read_at(7, 0) == b"abcdXYz"
        await blob.sync()
        await blob.close()
        blob2, size2 = await s.open("part", b"hello")
        assert size2 == 7 and blob2.size == 7
        assert await blob2.read_at(7, 0) == b"abcdXYz"
        await blob2.close()
        c = env.counters.storage
        assert c["open_blobs"] == 0
        assert c["writes"] == 3 and c["bytes_written"] == 9
        assert c["reads"] == 4 and c["bytes_read"] == 23
        assert c["syncs"] == 3  # explicit sync + two closes

    run(tmp_path, body, backend)


def test_gap_is_zero_filled_and_read_into_buffers(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"g")
        await blob.write_at(b"end", 100)
        assert blob.size == 103
        assert await blob.read_at(103, 0) == bytes(100) + b"end"
        buf = bytearray(5)
        out = await blob.read_at(buf, 98)
        assert out is buf and buf == b"\x00\x00end"
        backing = bytearray(10)
        view = memoryview(backing)[2:5]
        assert await blob.read_at(view, 100) is view
        assert backing == b"\x00\x00end" + bytes(5)
        assert await blob.read_at(0, 103) == b""
        empty = bytearray()
        assert await blob.read_at(empty, 50) is empty
        await blob.write_at(b"", 10_000)  # an empty write changes nothing
        assert blob.size == 103
        await blob.close()

    run(tmp_path, body, backend)


def test_read_past_end_names_everything(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("part_1", b"\xab\xcd")
        await blob.write_at(b"0123456789", 0)
        with pytest.raises(BlobInsufficientLength) as info:
            await blob.read_at(5, 8)
        message = str(info.value)
        for fragment in ("'part_1'", "b'\\xab\\xcd'", "offset 8", "5 bytes", "size 10"):
            assert fragment in message
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(bytearray(1), 10)
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(0, 11)
        await blob.close()

    run(tmp_path, body, backend)


def test_resize_truncates_and_extends(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"r")
        await blob.write_at(b"abcdefgh", 0)
        await blob.resize(3)
        assert blob.size == 3
        with pytest.raises(BlobInsufficientLength):
            await blob.read_at(4, 0)
        await blob.resize(6)
        assert await blob.read_at(6, 0) == b"abc" + bytes(3)
        await blob.sync()
        await blob.close()
        assert (env.root / "p" / b"r".hex()).stat().st_size == 6

    run(tmp_path, body, backend)


def test_close_is_idempotent_and_later_ops_raise_closed(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"c")
        await blob.write_at(b"x", 0)
        assert env.counters.storage["open_blobs"] == 1
        await blob.close()
        await blob.close()
        assert env.counters.storage["open_blobs"] == 0
        for op in (
            blob.read_at(1, 0),
            blob.write_at(b"y", 0),
            blob.resize(0),
            blob.sync(),
        ):
            with pytest.raises(Closed, match="blob b'c' in partition 'p'"):
                await op
        assert "closed" in repr(blob)

    run(tmp_path, body, backend)


def test_remove_and_scan(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        names = [b"b", b"a", b"\x00\x01", b"zz", b"\xff"]
        for name in names:
            blob, _ = await s.open("p", name)
            await blob.close()
        assert await s.scan("p") == sorted(names)
        await s.remove("p", b"zz")
        assert await s.scan("p") == sorted(set(names) - {b"zz"})
        with pytest.raises(BlobMissing, match="blob b'zz' in partition 'p'"):
            await s.remove("p", b"zz")
        await s.remove("p")
        assert not (env.root / "p").exists()
        with pytest.raises(PartitionMissing, match="'p'"):
            await s.scan("p")
        with pytest.raises(PartitionMissing):
            await s.remove("p")
        with pytest.raises(PartitionMissing):
            await s.remove("p", b"a")
        # Reopening recreates the partition.
        blob, size = await s.open("p", b"a")
        assert size == 0
        await blob.close()
        assert await s.scan("p") == [b"a"]

    run(tmp_path, body, backend)


def test_scan_rejects_foreign_entries(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        blob, _ = await s.open("p", b"ok")
        await blob.close()
        stray = env.root / "p" / "notes.txt"
        stray.write_text("hi")
        with pytest.raises(PartitionCorrupt, match="notes.txt"):
            await s.scan("p")
        stray.unlink()
        (env.root / "p" / "ABCD").write_text("")  # uppercase hex is not this layout
        with pytest.raises(PartitionCorrupt, match="ABCD"):
            await s.scan("p")
        (env.root / "p" / "ABCD").unlink()
        (env.root / "p" / "abc").write_text("")  # odd length
        with pytest.raises(PartitionCorrupt):
            await s.scan("p")
        (env.root / "p" / "abc").unlink()
        os.symlink("/etc/passwd", env.root / "p" / "aa")
        with pytest.raises(PartitionCorrupt):
            await s.scan("p")
        # Opening a planted symlink must not follow it out of the directory.
        with pytest.raises(BlobOpenFailed, match="blob b'\\\\xaa' in partition 'p'"):
            await s.open("p", b"\xaa")
        (env.root / "p" / "aa").unlink()
        assert await s.scan("p") == [b"ok"]
        (env.root / "q").write_text("not a directory")
        with pytest.raises(PartitionCorrupt):
            await s.scan("q")
        with pytest.raises(PartitionCorrupt):
            await s.remove("q")
        with pytest.raises(PartitionCreationFailed, match="'q'"):
            await s.open("q", b"x")

    run(tmp_path, body, backend)


# ---------------------------------------------------------------------------- safety


@pytest.mark.parametrize("partition", ["../x", "/abs", "a\x00b", "", "a/b", ".", "..", "a b", "é"])
def test_invalid_partitions_are_rejected_before_any_effect(tmp_path: Path, partition: str) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        with pytest.raises(PartitionNameInvalid):
            await s.open(partition, b"x")
        with pytest.raises(PartitionNameInvalid):
            await s.scan(partition)
        with pytest.raises(PartitionNameInvalid):
            await s.remove(partition)
        with pytest.raises(PartitionNameInvalid):
            await s.remove(partition, b"x")

    run(tmp_path, body)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_raise_before_any_effect(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        with pytest.raises(TypeError):
            await s.open("p", "name")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await s.open("p", b"")
        with pytest.raises(TypeError):
            await s.open(7, b"x")  # type: ignore[arg-type]
        assert not env.root.exists()
        blob, _ = await s.open("p", b"x")
        with pytest.raises(TypeError):
            await blob.write_at("text", 0)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await blob.write_at(b"a", -1)
        with pytest.raises(TypeError):
            await blob.write_at(b"a", 1.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await blob.read_at(-1, 0)
        with pytest.raises(TypeError):
            await blob.read_at(b"readonly", 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await blob.read_at(memoryview(b"readonly"), 0)
        with pytest.raises(TypeError):
            await blob.read_at(True, 0)
        with pytest.raises(ValueError):
            await blob.resize(-1)
        with pytest.raises(OffsetOverflow):
            await blob.write_at(b"ab", (1 << 64) - 1)
        with pytest.raises(OffsetOverflow):
            await blob.read_at(2, (1 << 64) - 1)
        with pytest.raises(OffsetOverflow):
            await blob.resize(1 << 64)
        assert blob.size == 0 and env.counters.storage["writes"] == 0
        await blob.close()
        assert (env.root / "p" / "78").stat().st_size == 0

    run(tmp_path, body)


HOSTILE = [b"../", b"..", b".", b"/etc/passwd", b"\x00", b"a\x00b", b"../../escape", b"\\..\\", b"x" * 127, b"x" * 128]


def test_hostile_blob_names_stay_inside_and_round_trip(tmp_path: Path, backend: str) -> None:
    long_1000 = bytes(range(256)) * 3 + bytes(232)
    long_5000 = os.urandom(5000)  # hex is 10,000 characters: beyond PATH_MAX
    names = HOSTILE + [long_1000, long_5000]

    async def body(env: Env) -> None:
        s = env.storage
        for i, name in enumerate(names):
            blob, size = await s.open("p", name)
            assert size == 0
            await blob.write_at(i.to_bytes(2, "big") + name[:10], 0)
            await blob.sync()
            await blob.close()
        assert await s.scan("p") == sorted(names)
        for i, name in enumerate(names):
            blob, size = await s.open("p", name)
            assert await blob.read_at(size, 0) == i.to_bytes(2, "big") + name[:10]
            await blob.close()
        for name in names:
            await s.remove("p", name)
        assert await s.scan("p") == []
        assert list((env.root / "p").iterdir()) == []  # long-name directories pruned

    run(tmp_path, body, backend)
    # Nothing was ever created outside the storage directory.
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_long_names_use_short_components(tmp_path: Path, backend: str) -> None:
    name = b"\x11" * 1000

    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", name)
        await blob.close()

    run(tmp_path, body, backend)
    (path,) = files_under(tmp_path / "store")
    parts = path.relative_to(tmp_path / "store" / "p").parts
    assert all(len(part) <= 255 for part in parts)
    assert all(part.endswith(".d") for part in parts[:-1])
    assert "".join(part.removesuffix(".d") for part in parts) == name.hex()


def test_long_names_sharing_a_prefix(tmp_path: Path, backend: str) -> None:
    prefix = b"\x22" * 126  # exactly one directory chunk of hex
    a, b = prefix + b"\x01" * 10, prefix + b"\x02" * 10

    async def body(env: Env) -> None:
        s = env.storage
        for name in (a, b):
            blob, _ = await s.open("p", name)
            await blob.write_at(name[-1:], 0)
            await blob.close()
        assert await s.scan("p") == [a, b]
        await s.remove("p", a)
        assert await s.scan("p") == [b]
        blob, size = await s.open("p", b)
        assert await blob.read_at(size, 0) == b"\x02"
        await blob.close()
        await s.remove("p", b)
        assert list((env.root / "p").iterdir()) == []
        with pytest.raises(BlobMissing):
            await s.remove("p", a)

    run(tmp_path, body, backend)


# ---------------------------------------------------------------------------- fast paths


@needs_nowait
def test_warm_read_is_inline(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"w")
        data = os.urandom(1 << 16)
        await blob.write_at(data, 0)
        before = env.executor.submitted
        for offset in range(0, len(data), 4096):
            assert await blob.read_at(4096, offset) == data[offset : offset + 4096]
        buf = bytearray(1000)
        assert await blob.read_at(buf, 7) is buf and buf == data[7:1007]
        assert env.executor.submitted == before  # every read hit the page cache inline
        assert env.counters.storage["reads"] == 17
        await blob.close()

    run(tmp_path, body)


@needs_nowait
@pytest.mark.parametrize("into_buffer", [False, True])
def test_read_falls_back_to_executor_on_eagain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, into_buffer: bool) -> None:
    real = os.preadv
    nowait_calls = []

    def refusing(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if flags:
            nowait_calls.append(offset)
            raise BlockingIOError(errno.EAGAIN, "would block")
        return real(fd, buffers, offset)

    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"f")
        data = os.urandom(10_000)
        await blob.write_at(data, 0)
        monkeypatch.setattr(os, "preadv", refusing)
        before = env.executor.submitted
        if into_buffer:
            buf = bytearray(3000)
            assert await blob.read_at(buf, 5000) is buf and buf == data[5000:8000]
        else:
            assert await blob.read_at(3000, 5000) == data[5000:8000]
        assert env.executor.submitted == before + 1
        assert nowait_calls == [5000]
        assert env.storage.nowait_reads  # EAGAIN does not disable the fast path
        await blob.close()

    run(tmp_path, body)


@needs_nowait
def test_inline_misses_back_off_and_a_hit_resets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.preadv
    state = {"cold": True, "attempts": 0}

    def maybe_cold(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if flags:
            state["attempts"] += 1
            if state["cold"]:
                raise BlockingIOError(errno.EAGAIN, "would block")
        return real(fd, buffers, offset, flags)

    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"b")
        data = os.urandom(8192)
        await blob.write_at(data, 0)
        monkeypatch.setattr(os, "preadv", maybe_cold)
        for i in range(40):
            assert await blob.read_at(100, i) == data[i : i + 100]
        # Attempts on reads 1, 3, 7, 15 and 31: windows of 1, 3, 7, 15 skipped reads.
        assert state["attempts"] == 5
        state["cold"] = False
        before = env.executor.submitted
        for i in range(20):  # reads 41..60: 41-46 still skip, 47 hits and resets
            assert await blob.read_at(100, i) == data[i : i + 100]
        assert state["attempts"] == 5 + 14
        assert env.executor.submitted == before + 6
        await blob.close()

    run(tmp_path, body)


@needs_nowait
def test_short_inline_read_is_completed_in_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.preadv

    def partial(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if flags:  # only the first 100 bytes are "cached"
            view = memoryview(buffers[0])[:100]
            return real(fd, [view], offset)
        return real(fd, buffers, offset)

    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"s")
        data = os.urandom(5000)
        await blob.write_at(data, 0)
        monkeypatch.setattr(os, "preadv", partial)
        before = env.executor.submitted
        assert await blob.read_at(4000, 500) == data[500:4500]
        buf = bytearray(4000)
        assert await blob.read_at(buf, 1000) is buf and buf == data[1000:5000]
        assert env.executor.submitted == before + 2
        await blob.close()

    run(tmp_path, body)


@needs_nowait
def test_unsupported_nowait_read_disables_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.preadv

    def unsupported(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if flags:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real(fd, buffers, offset)

    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"u")
        await blob.write_at(b"abc", 0)
        monkeypatch.setattr(os, "preadv", unsupported)
        assert await blob.read_at(3, 0) == b"abc"
        assert env.storage.nowait_reads is False
        assert await blob.read_at(2, 1) == b"bc"
        await blob.close()

    run(tmp_path, body)


@needs_nowait
def test_cold_read_after_dropping_the_page_cache(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"cold")
        data = os.urandom(1 << 18)
        await blob.write_at(data, 0)
        await blob.sync()
        fd = os.open(env.root / "p" / b"cold".hex(), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        for offset in (200_000, 0, 100_000):
            assert await blob.read_at(4096, offset) == data[offset : offset + 4096]
        await blob.close()

    run(tmp_path, body, backend)


@needs_nowait
def test_inline_writes_when_the_kernel_supports_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwritev
    calls: list[int] = []

    def supporting(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        calls.append(flags)
        return real(fd, buffers, offset)  # a filesystem that accepts RWF_NOWAIT writes

    async def body(env: Env) -> None:
        monkeypatch.setattr(os, "pwritev", supporting)
        blob, _ = await env.storage.open("p", b"iw")
        before = env.executor.submitted
        await blob.write_at(b"hello", 0)
        await blob.write_at(b"world", 10)
        assert env.executor.submitted == before
        assert calls == [os.RWF_NOWAIT, os.RWF_NOWAIT]
        assert blob.size == 15
        await blob.close()
        assert (env.root / "p" / b"iw".hex()).read_bytes() == b"hello" + bytes(5) + b"world"

    run(tmp_path, body)


@needs_nowait
def test_short_or_refused_inline_write_completes_in_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwritev
    mode = {"value": "short"}

    def flaky(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if mode["value"] == "short":
            return real(fd, [memoryview(buffers[0])[:3]], offset)
        raise BlockingIOError(errno.EAGAIN, "would block")

    async def body(env: Env) -> None:
        monkeypatch.setattr(os, "pwritev", flaky)
        blob, _ = await env.storage.open("p", b"sw")
        before = env.executor.submitted
        await blob.write_at(b"0123456789", 0)
        mode["value"] = "eagain"
        await blob.write_at(b"abcdef", 20)
        assert env.executor.submitted == before + 2
        assert env.storage.nowait_writes
        await blob.close()
        assert (env.root / "p" / b"sw".hex()).read_bytes() == b"0123456789" + bytes(10) + b"abcdef"
        assert env.counters.storage["writes"] == 2 and env.counters.storage["bytes_written"] == 16

    run(tmp_path, body)


@needs_nowait
def test_unsupported_inline_write_switches_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwritev
    flags_seen: list[int] = []

    def unsupported(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        flags_seen.append(flags)
        if flags:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real(fd, buffers, offset, flags)

    async def body(env: Env) -> None:
        monkeypatch.setattr(os, "pwritev", unsupported)
        blob, _ = await env.storage.open("p", b"nw")
        await blob.write_at(b"abc", 0)
        await blob.write_at(b"def", 3)
        assert env.storage.nowait_writes is False
        assert flags_seen == [os.RWF_NOWAIT]  # probed once, then the executor's pwrite
        assert await blob.read_at(6, 0) == b"abcdef"
        await blob.close()

    run(tmp_path, body)


@needs_nowait
def test_inline_reads_yield_to_other_tasks(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"y")
        await blob.write_at(bytes(4096), 0)
        ran = asyncio.Event()

        async def other() -> None:
            ran.set()

        other_task = asyncio.get_running_loop().create_task(other())
        before = env.executor.submitted
        for _ in range(300):
            await blob.read_at(64, 0)
            if ran.is_set():
                break
        assert ran.is_set(), "300 inline reads never let another task run"
        assert env.executor.submitted == before
        await other_task
        await blob.close()

    run(tmp_path, body)


# ---------------------------------------------------------------------------- handles


def test_handles_of_one_blob_share_its_size(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        first, size = await s.open("p", b"h")
        second, size2 = await s.open("p", b"h")
        assert size == size2 == 0
        assert first._fd != second._fd  # independent descriptors, one shared state
        await first.write_at(b"abcdef", 0)
        assert second.size == 6
        assert await second.read_at(6, 0) == b"abcdef"
        await second.write_at(b"XY", 7)  # past the end: the gap is zero-filled
        assert first.size == 9
        assert await first.read_at(9, 0) == b"abcdef\x00XY"
        await first.resize(3)
        assert second.size == 3
        with pytest.raises(BlobInsufficientLength, match="size 3"):
            await second.read_at(4, 0)
        await second.resize(5)
        assert first.size == 5 and await first.read_at(5, 0) == b"abc\x00\x00"
        third, size3 = await s.open("p", b"h")  # a later open reports the shared size
        assert size3 == 5 and third.size == 5
        assert env.counters.storage["open_blobs"] == 3
        await first.close()
        await third.close()
        assert env.counters.storage["open_blobs"] == 1
        with pytest.raises(Closed):
            await first.read_at(1, 0)
        # The remaining handle still works and still agrees with the file.
        await second.write_at(b"Z", 5)
        assert second.size == 6 and await second.read_at(6, 0) == b"abc\x00\x00Z"
        await second.sync()
        assert (env.root / "p" / b"h".hex()).stat().st_size == 6
        await second.close()
        assert env.counters.storage["open_blobs"] == 0
        assert s._blobs == {}  # the shared state goes with the last handle
        again, size = await s.open("p", b"h")
        assert size == 6 and await again.read_at(6, 0) == b"abc\x00\x00Z"
        await again.close()

    run(tmp_path, body, backend)


def test_handles_share_inline_and_executor_paths(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.storage.nowait_reads = env.storage.nowait_writes = False
        first, _ = await env.storage.open("p", b"x")
        second, _ = await env.storage.open("p", b"x")
        await first.write_at(b"q" * 100, 0)
        buf = bytearray(100)
        assert await second.read_at(buf, 0) is buf and buf == b"q" * 100
        await first.close()
        await second.close()

    run(tmp_path, body)


def test_unclosed_handle_leaves_the_others_working(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        keep, _ = await env.storage.open("p", b"u")
        leak, _ = await env.storage.open("p", b"u")
        await leak.write_at(b"abc", 0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del leak
            gc.collect()
        assert any(issubclass(w.category, ResourceWarning) for w in caught)
        assert env.counters.storage["open_blobs"] == 1
        assert await keep.read_at(3, 0) == b"abc"
        await keep.close()
        assert env.storage._blobs == {}

    run(tmp_path, body, backend)


def test_failed_sync_poisons_every_handle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    async def body(env: Env) -> None:
        first, _ = await env.storage.open("p", b"ps")
        second, _ = await env.storage.open("p", b"ps")
        await first.write_at(b"abc", 0)
        with monkeypatch.context() as m:
            fail_syncs(m)
            with pytest.raises(BlobSyncFailed):
                await first.sync()
        with pytest.raises(BlobSyncFailed, match="earlier sync failed"):
            await second.read_at(1, 0)
        with pytest.raises(BlobSyncFailed):
            await second.sync()
        # Opened while a poisoned handle is still open: poisoned too.
        third, size = await env.storage.open("p", b"ps")
        assert size == 3
        with pytest.raises(BlobSyncFailed):
            await third.write_at(b"d", 3)
        for handle in (first, second, third):
            with pytest.raises(BlobSyncFailed):
                await handle.close()
        assert env.counters.storage["open_blobs"] == 0
        fresh, size = await env.storage.open("p", b"ps")  # all closed: reopening clears it
        assert await fresh.read_at(size, 0) == b"abc"
        await fresh.sync()
        await fresh.close()

    run(tmp_path, body, backend)


def test_remove_keeps_the_open_handles_working(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        first, _ = await s.open("p", b"gone")
        second, _ = await s.open("p", b"gone")
        other, _ = await s.open("p", b"other")
        await first.write_at(b"data", 0)
        fds = [first._fd, second._fd]
        await s.remove("p", b"gone")
        assert await s.scan("p") == [b"other"]
        assert env.counters.storage["open_blobs"] == 3  # removal closes no handle
        for fd in fds:
            assert os.fstat(fd).st_nlink == 0  # unlinked, still open
        for handle in (first, second):
            assert "removed" in repr(handle)
        # Every operation works on the unlinked file, shared between its handles.
        assert await second.read_at(4, 0) == b"data"
        await second.write_at(b"XY", 6)
        assert first.size == 8 and await first.read_at(8, 0) == b"data\0\0XY"
        await first.resize(5)
        assert second.size == 5
        await first.sync()
        await first.close()
        assert await second.read_at(5, 0) == b"data\0"
        await second.close()
        await second.close()  # idempotent
        for fd in fds:
            with pytest.raises(OSError):
                os.fstat(fd)
        with pytest.raises(Closed, match="blob b'gone' in partition 'p' is closed"):
            await first.read_at(1, 0)
        assert env.counters.storage["open_blobs"] == 1
        assert not (env.root / "p" / b"gone".hex()).exists()
        fresh, size = await s.open("p", b"gone")
        assert size == 0 and fresh.size == 0
        await fresh.close()
        await other.close()
        assert s._blobs == {}

    run(tmp_path, body, backend)


def test_write_through_a_detached_handle_leaves_the_recreated_blob_alone(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        old, _ = await s.open("p", b"n")
        await old.write_at(b"old contents", 0)
        await s.remove("p", b"n")
        new, size = await s.open("p", b"n")
        assert size == 0 and new._shared is not old._shared
        await new.write_at(b"new", 0)
        await old.write_at(b"OVERWRITTEN, AND LONGER", 0)
        await old.resize(64)
        await old.sync()
        assert new.size == 3 and await new.read_at(3, 0) == b"new"
        assert old.size == 64
        await old.close()
        await new.close()
        assert (env.root / "p" / b"n".hex()).read_bytes() == b"new"
        assert await s.scan("p") == [b"n"]
        again, size = await s.open("p", b"n")
        assert size == 3 and await again.read_at(3, 0) == b"new"
        await again.close()
        assert s._blobs == {}

    run(tmp_path, body, backend)


def test_remove_partition_with_open_handles(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        long_name = bytes(range(200))  # lives under a .d directory that rmtree removes
        handles = [(await s.open("p", name))[0] for name in (b"a", long_name)]
        kept, _ = await s.open("q", b"a")
        for i, handle in enumerate(handles):
            await handle.write_at(b"blob%d" % i, 0)
        await s.remove("p")
        assert not (env.root / "p").exists()
        assert s._open_states("p", None) == []
        for i, handle in enumerate(handles):
            assert await handle.read_at(5, 0) == b"blob%d" % i
            await handle.write_at(b"!", 5)
            await handle.sync()
        fresh, size = await s.open("p", b"a")  # recreates the partition, empty
        assert size == 0 and await s.scan("p") == [b"a"]
        await handles[0].write_at(b"zzz", 0)
        assert fresh.size == 0
        for handle in (*handles, fresh, kept):
            await handle.close()
        assert env.counters.storage["open_blobs"] == 0
        assert s._blobs == {}
        assert files_under(env.root / "p") == [env.root / "p" / b"a".hex()]

    run(tmp_path, body, backend)


def test_sync_poisoning_does_not_cross_to_a_recreated_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    async def body(env: Env) -> None:
        old, _ = await env.storage.open("p", b"x")
        await old.write_at(b"abc", 0)
        with monkeypatch.context() as m:
            fail_syncs(m)
            with pytest.raises(BlobSyncFailed):
                await old.sync()
        await env.storage.remove("p", b"x")
        new, size = await env.storage.open("p", b"x")
        assert size == 0
        await new.write_at(b"ok", 0)
        await new.sync()
        with pytest.raises(BlobSyncFailed, match="earlier sync failed"):
            await old.read_at(1, 0)  # the removed file stays poisoned for its handles
        with pytest.raises(BlobSyncFailed):
            await old.close()
        await new.close()

    run(tmp_path, body, backend)


def gated_pread() -> tuple[threading.Event, threading.Event, Any]:
    """A stand-in for the pool's pread that signals ``entered`` and waits for ``gate``."""
    gate = threading.Event()
    entered = threading.Event()
    real = storage_mod._pread_exact

    def slow(fd: int, n: int, offset: int) -> bytes:
        entered.set()
        gate.wait(5)
        return real(fd, n, offset)

    return gate, entered, slow


def test_remove_with_a_read_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, entered, slow = gated_pread()

    async def body(env: Env) -> None:
        env.storage.nowait_reads = False
        blob, _ = await env.storage.open("p", b"r")
        await blob.write_at(b"data", 0)
        fd = blob._fd
        monkeypatch.setattr(storage_mod, "_pread_exact", slow)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(blob.read_at(4, 0))
        await loop.run_in_executor(None, entered.wait, 5)
        await env.storage.remove("p", b"r")
        assert env.counters.storage["open_blobs"] == 1
        gate.set()
        assert await reader == b"data"
        assert await blob.read_at(2, 2) == b"ta"  # the handle outlives the removal
        assert os.fstat(fd).st_nlink == 0
        await blob.close()
        with pytest.raises(OSError):
            os.fstat(fd)
        assert env.counters.storage["open_blobs"] == 0

    run(tmp_path, body)


def test_partly_failed_remove_detaches_the_unlinked_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "injected directory sync error")

    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"f")
        await blob.write_at(b"old", 0)
        with monkeypatch.context() as m:
            m.setattr(storage_mod, "_fsync_dir", fail)
            with pytest.raises(BlobSyncFailed, match="removed blob"):
                await env.storage.remove("p", b"f")
        assert env.storage._blobs == {}
        await blob.write_at(b"x", 3)  # still usable on the unlinked file
        assert blob.size == 4
        fresh, size = await env.storage.open("p", b"f")
        assert size == 0 and fresh._shared is not blob._shared
        await blob.close()
        await fresh.close()
        assert env.counters.storage["open_blobs"] == 0

    run(tmp_path, body, backend)


def test_remove_failing_before_the_unlink_keeps_the_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EACCES, "injected unlink error")

    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"f")
        await blob.write_at(b"abc", 0)
        with monkeypatch.context() as m:
            m.setattr(os, "unlink", fail)
            with pytest.raises(WriteFailed, match="cannot remove blob"):
                await env.storage.remove("p", b"f")
        again, size = await env.storage.open("p", b"f")
        assert size == 3 and again._shared is blob._shared  # the same file, still named
        await again.close()
        await blob.close()

    run(tmp_path, body, backend)


def test_file_replaced_from_outside_detaches_the_old_handles(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        old, _ = await env.storage.open("p", b"ext")
        await old.write_at(b"old", 0)
        path = env.root / "p" / b"ext".hex()
        path.unlink()
        path.write_bytes(b"new!")
        new, size = await env.storage.open("p", b"ext")
        assert size == 4 and await new.read_at(4, 0) == b"new!"
        assert new._shared is not old._shared
        # The old handle carries on with the file it holds, like any process would.
        assert await old.read_at(3, 0) == b"old"
        await old.write_at(b"O", 0)
        assert await new.read_at(4, 0) == b"new!"
        assert env.counters.storage["open_blobs"] == 2
        await old.close()
        await new.close()
        assert path.read_bytes() == b"new!"
        assert env.storage._blobs == {}

    run(tmp_path, body, backend)


# ---------------------------------------------------------------------------- failures


def test_os_errors_map_to_spec_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, "injected I/O error")

    async def body(env: Env) -> None:
        env.storage.nowait_reads = env.storage.nowait_writes = False
        blob, _ = await env.storage.open("part", b"e")
        await blob.write_at(b"abc", 0)
        with monkeypatch.context() as m:
            m.setattr(os, "pwrite", fail)
            with pytest.raises(WriteFailed, match="blob b'e' in partition 'part'") as w:
                await blob.write_at(b"zz", 1)
            assert isinstance(w.value.__cause__, OSError)
        with monkeypatch.context() as m:
            m.setattr(os, "pread", fail)
            with pytest.raises(ReadFailed, match="blob b'e' in partition 'part'") as r:
                await blob.read_at(2, 0)
            assert isinstance(r.value.__cause__, OSError)
        with monkeypatch.context() as m:
            m.setattr(os, "ftruncate", fail)
            with pytest.raises(BlobResizeFailed, match="blob b'e' in partition 'part'"):
                await blob.resize(1)
        assert blob.size == 3 and await blob.read_at(3, 0) == b"abc"
        await blob.close()
        (env.root / "part" / b"dir".hex()).mkdir()
        with pytest.raises(BlobOpenFailed, match="blob b'dir' in partition 'part'"):
            await env.storage.open("part", b"dir")
        assert env.counters.storage["open_blobs"] == 0
        assert all(isinstance(e, Error) for e in (WriteFailed(), ReadFailed()))

    run(tmp_path, body)


def test_failed_sync_poisons_the_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"ps")
        await blob.write_at(b"abc", 0)
        with monkeypatch.context() as m:
            fail_syncs(m)
            with pytest.raises(BlobSyncFailed, match="blob b'ps' in partition 'p'"):
                await blob.sync()
        # The kernel may have dropped the pages: a later success would be a lie.
        with pytest.raises(BlobSyncFailed, match="earlier sync failed"):
            await blob.sync()
        with pytest.raises(BlobSyncFailed):
            await blob.write_at(b"d", 3)
        with pytest.raises(BlobSyncFailed):
            await blob.close()
        assert env.counters.storage["open_blobs"] == 0
        with pytest.raises(Closed):
            await blob.read_at(1, 0)
        blob2, size = await env.storage.open("p", b"ps")  # reopening clears it
        assert await blob2.read_at(size, 0) == b"abc"
        await blob2.close()

    run(tmp_path, body, backend)


def test_close_waits_for_an_abandoned_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, entered, slow = gated_pread()

    async def body(env: Env) -> None:
        env.storage.nowait_reads = False
        blob, _ = await env.storage.open("p", b"slow")
        await blob.write_at(b"data", 0)
        monkeypatch.setattr(storage_mod, "_pread_exact", slow)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(blob.read_at(4, 0))
        await loop.run_in_executor(None, entered.wait, 5)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        closer = loop.create_task(blob.close())
        await asyncio.sleep(0.05)
        assert not closer.done(), "close must wait for the pread still using the descriptor"
        with pytest.raises(Closed):
            await blob.read_at(1, 0)  # closing: no new operations
        gate.set()
        await closer
        assert env.counters.storage["open_blobs"] == 0

    run(tmp_path, body)


def test_unclosed_blob_warns_and_releases_its_descriptor(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"leak")
        fd = blob._fd
        os.fstat(fd)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del blob
            gc.collect()
        assert any(issubclass(w.category, ResourceWarning) for w in caught)
        assert env.counters.storage["open_blobs"] == 0
        with pytest.raises(OSError):
            os.fstat(fd)

    run(tmp_path, body, backend)


def test_durability_calls_on_nested_fresh_directory(tmp_path: Path, backend: str) -> None:
    async def body(env: Env) -> None:
        storage = Storage(tmp_path / "a" / "b" / "c", counters=env.counters, executor=env.executor)
        blob, _ = await storage.open("p", b"d")
        await blob.write_at(b"x" * 10, 0)
        await blob.sync()
        await blob.close()
        await storage.remove("p", b"d")
        await storage.remove("p")
        assert (tmp_path / "a" / "b" / "c").is_dir()

    run(tmp_path, body, backend)


def test_storage_constructor_validates() -> None:
    counters = RuntimeCounters()
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        with pytest.raises(TypeError):
            Storage(3, counters=counters, executor=executor)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            Storage("a\x00b", counters=counters, executor=executor)
        with pytest.raises(TypeError):
            Storage("/tmp/x", counters={}, executor=executor)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Storage("/tmp/x", counters=counters, executor=None)  # type: ignore[arg-type]
    assert isinstance(Blob, type)
