"""The io_uring storage backend: the ring path, batching, cancellation, fallback, crashes.

The shared storage tests run on this backend too (``backend`` in test_production_storage,
``storage_runtimes`` in test_contract); these are the ones about the backend itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from commonware_runtime import production
from commonware_runtime.errors import BlobSyncFailed, Closed, ReadFailed, WriteFailed
from commonware_runtime.production import iouring, storage as storage_mod
from commonware_runtime.production.storage import Storage
from conftest import IOURING_UNAVAILABLE, needs_iouring
from test_production_storage import Env, run

ROOT = Path(__file__).resolve().parents[1]


class CountingRing:
    """Stands in for the binding's ring: forwards everything, counts submissions."""

    def __init__(self, ring: Any) -> None:
        self._ring = ring
        self.submits: list[int] = []  # operations queued before each submit()
        self.queued = 0
        self.fail_submit: OSError | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ring, name)

    def _queue(self, method: str, *args: Any) -> Any:
        self.queued += 1
        return getattr(self._ring, method)(*args)

    def submit_read(self, *args: Any) -> Any:
        return self._queue("submit_read", *args)

    def submit_write(self, *args: Any) -> Any:
        return self._queue("submit_write", *args)

    def submit_fsync(self, *args: Any) -> Any:
        return self._queue("submit_fsync", *args)

    def submit(self) -> int:
        self.submits.append(self.queued)
        self.queued = 0
        if self.fail_submit is not None:
            raise self.fail_submit
        return int(self._ring.submit())


def counting(env: Env) -> CountingRing:
    driver = env.storage._driver  # type: ignore[attr-defined]
    proxy = CountingRing(driver.ring)
    driver.ring = proxy
    return proxy


# ---------------------------------------------------------------------------- the ring path


@needs_iouring
def test_reads_writes_and_syncs_go_through_the_ring(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        proxy = counting(env)
        blob, _ = await env.storage.open("p", b"r")
        before = env.executor.submitted
        data = os.urandom(3 << 20)  # above INLINE_MAX: no inline attempt whatever the file system
        await blob.write_at(data, 0)
        await blob.sync()
        assert await blob.read_at(len(data), 0) == data
        buf = bytearray(5000)
        assert await blob.read_at(buf, 1000) is buf and buf == data[1000:6000]
        assert env.executor.submitted == before  # nothing went to the pool
        assert sum(proxy.submits) >= 4
        await blob.resize(10)  # resize stays in the pool
        assert env.executor.submitted == before + 1
        await blob.close()
        assert env.counters.storage["syncs"] == 2

    run(tmp_path, body, "io_uring")


@needs_iouring
def test_warm_reads_stay_inline(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.storage.nowait_reads = storage_mod._RWF_NOWAIT is not None
        proxy = counting(env)
        blob, _ = await env.storage.open("p", b"w")
        await blob.write_at(os.urandom(1 << 16), 0)
        queued = proxy.queued + sum(proxy.submits)
        for offset in range(0, 1 << 16, 4096):
            await blob.read_at(4096, offset)
        assert proxy.queued + sum(proxy.submits) == queued  # page-cache hits never touch the ring
        await blob.close()

    run(tmp_path, body, "io_uring")


@needs_iouring
def test_operations_of_one_loop_iteration_are_submitted_together(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        proxy = counting(env)
        blob, _ = await env.storage.open("p", b"b")
        data = os.urandom(64 * 4096)
        await blob.write_at(data, 0)
        proxy.submits.clear()
        results = await asyncio.gather(*(blob.read_at(4096, i * 4096) for i in range(64)))
        assert b"".join(results) == data
        assert proxy.submits[0] == 64  # one io_uring_enter for the 64 reads
        await blob.close()

    run(tmp_path, body, "io_uring")


@needs_iouring
def test_more_operations_than_the_ring_holds_wait_in_a_backlog(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        old = env.storage._driver.ring  # type: ignore[attr-defined]
        env.storage._driver = iouring._Driver(iouring.open_ring(4), 4, env.storage)  # type: ignore[attr-defined]
        old.close()
        blob, _ = await env.storage.open("p", b"q")
        data = os.urandom(300 * 512)
        await blob.write_at(data, 0)
        results = await asyncio.gather(*(blob.read_at(512, i * 512) for i in range(300)))
        assert b"".join(results) == data
        await asyncio.gather(*(blob.write_at(b"%03d" % i, 3 * i) for i in range(300)))
        assert await blob.read_at(900, 0) == b"".join(b"%03d" % i for i in range(300))
        await blob.close()

    run(tmp_path, body, "io_uring")


@needs_iouring
def test_ring_errors_map_to_spec_errors(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"e")
        await blob.write_at(b"abc", 0)
        fd = blob._fd
        saved = os.dup(fd)
        directory = os.open(env.root, os.O_RDONLY)
        try:
            os.dup2(directory, fd)  # reads of a directory fail with EISDIR, writes with EBADF
            with pytest.raises(ReadFailed, match="blob b'e' in partition 'p'") as r:
                await blob.read_at(2, 0)
            assert isinstance(r.value.__cause__, IsADirectoryError)
            with pytest.raises(WriteFailed, match="blob b'e' in partition 'p'") as w:
                await blob.write_at(b"zz", 0)
            assert isinstance(w.value.__cause__, OSError)
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            os.close(directory)
        assert await blob.read_at(3, 0) == b"abc"
        await blob.close()

    run(tmp_path, body, "io_uring")


@needs_iouring
def test_close_waits_for_a_cancelled_ring_read(tmp_path: Path) -> None:
    """The kernel keeps a cancelled task's read; close waits for its completion before the
    descriptor is closed (a pipe stands in for a slow disk)."""

    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"slow")
        await blob.write_at(b"data", 0)
        fd = blob._fd
        saved = os.dup(fd)
        pipe_r, pipe_w = os.pipe()
        os.dup2(pipe_r, fd)  # the ring's read of fd blocks until the pipe has bytes
        loop = asyncio.get_running_loop()
        reader = loop.create_task(blob.read_at(4, 0))
        for _ in range(3):
            await asyncio.sleep(0)  # submitted
        assert blob._inflight == 1
        os.dup2(saved, fd)  # the kernel holds the pipe; the descriptor is the file again
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        closer = loop.create_task(blob.close())
        await asyncio.sleep(0.05)
        assert not closer.done(), "close must wait for the read still in the ring"
        with pytest.raises(Closed):
            await blob.read_at(1, 0)
        os.write(pipe_w, b"late")  # the read completes; its result is dropped
        await asyncio.wait_for(closer, 5)
        assert env.counters.storage["open_blobs"] == 0
        with pytest.raises(OSError):
            os.fstat(fd)  # closed once the read finished
        for extra in (saved, pipe_r, pipe_w):
            os.close(extra)

    run(tmp_path, body, "io_uring")


@needs_iouring
def test_failed_ring_fsync_poisons_the_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(env: Env) -> None:
        blob, _ = await env.storage.open("p", b"ps")
        await blob.write_at(b"abc", 0)

        async def bad_fsync(blob: Any, driver: Any, fd: int) -> None:
            await driver.start(blob, driver.ring.submit_fsync, (-1, True))  # EBADF from the kernel

        with monkeypatch.context() as m:
            m.setitem(iouring._RING_OPS, storage_mod._datasync, bad_fsync)
            with pytest.raises(BlobSyncFailed, match="poisoned") as info:
                await blob.sync()
        assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EBADF
        with pytest.raises(BlobSyncFailed, match="earlier sync failed"):
            await blob.sync()
        with pytest.raises(BlobSyncFailed):
            await blob.close()

    run(tmp_path, body, "io_uring")


@needs_iouring
def test_a_failing_ring_hands_storage_to_the_pool(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(env: Env) -> None:
        proxy = counting(env)
        blob, _ = await env.storage.open("p", b"f")
        await blob.write_at(b"before", 0)
        proxy.fail_submit = OSError(errno.EINVAL, "injected submit failure")
        with caplog.at_level(logging.ERROR, logger="commonware_runtime"):
            with pytest.raises(WriteFailed, match="injected submit failure"):
                await blob.write_at(b"during", 0)
        assert [r.getMessage() for r in caplog.records if "io_uring" in r.getMessage()] == [
            "io_uring submission failed ([Errno 22] injected submit failure): closing the ring, "
            "storage continues on the thread pool"
        ]
        assert env.storage._driver is None  # type: ignore[attr-defined]
        before = env.executor.submitted
        await blob.write_at(b"after!", 0)
        assert await blob.read_at(6, 0) == b"after!"
        await blob.sync()
        assert env.executor.submitted > before
        await blob.close()

    run(tmp_path, body, "io_uring")


@needs_iouring
def test_a_storage_moves_its_ring_to_a_new_loop(tmp_path: Path) -> None:
    env = Env(tmp_path, "io_uring")
    try:

        async def first() -> None:
            blob, _ = await env.storage.open("p", b"l")
            await blob.write_at(b"one", 0)
            await blob.close()

        async def second() -> bytes:
            blob, _ = await env.storage.open("p", b"l")
            data: bytes = await blob.read_at(3, 0)
            await blob.close()
            return data

        asyncio.run(first())
        assert asyncio.run(second()) == b"one"
    finally:
        env.storage.close()  # type: ignore[attr-defined]
        env.executor.shutdown()


def test_ring_ops_cover_the_pool_helpers() -> None:
    # The backend recognises the default backend's pool operations by identity: renaming
    # one there must fail here, not silently send that operation back to the pool.
    assert set(iouring._RING_OPS) == {
        storage_mod._pread_exact,
        storage_mod._read_into,
        storage_mod._write_all,
        storage_mod._datasync,
    }


# ---------------------------------------------------------------------------- the runner


@needs_iouring
@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_runner_with_io_uring(tmp_path: Path, event_loop: str) -> None:
    if event_loop == "uvloop":
        pytest.importorskip("uvloop")

    async def main(ctx: Any) -> tuple[str, bytes]:
        blob, _ = await ctx.open("p", b"k")
        data = os.urandom(2 << 20)
        await blob.write_at(data, 0)
        await blob.sync()
        parts = await asyncio.gather(*(blob.read_at(65536, i * 65536) for i in range(32)))
        assert b"".join(parts) == data
        await blob.close()
        return ctx._core.storage.backend, data[:4]

    config = production.Config(storage_directory=tmp_path / "s", event_loop=event_loop, storage_backend="io_uring")
    backend, _ = production.Runner(config).start(main)
    assert backend == "io_uring"


def test_config_storage_backend() -> None:
    assert production.Config().storage_backend == "default"
    config = production.Config().with_storage_backend("io_uring")
    assert config.storage_backend == "io_uring" and config.to_dict()["storage_backend"] == "io_uring"
    with pytest.raises(ValueError, match="storage_backend must be one of"):
        production.Config(storage_backend="uring")
    with pytest.raises(TypeError, match="storage_backend must be a str"):
        production.Config(storage_backend=None)  # type: ignore[arg-type]
    from commonware_runtime.production.runner import STORAGE_BACKENDS

    assert STORAGE_BACKENDS == iouring.BACKENDS


def test_default_backend_imports_nothing_of_io_uring() -> None:
    code = textwrap.dedent(
        """
        import sys
        from commonware_runtime import production

        async def main(ctx):
            blob, _ = await ctx.open("p", b"x")
            await blob.write_at(b"x", 0)
            await blob.sync()
            await blob.close()

        production.Runner().start(main)
        loaded = [m for m in ("pyaio", "pyaio._uring", "commonware_runtime.production.iouring") if m in sys.modules]
        print("LOADED", loaded)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "LOADED []" in out.stdout


# ---------------------------------------------------------------------------- fallback


def fallback_storage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> tuple[Storage, list[str]]:
    from commonware_runtime.metrics import RuntimeCounters

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        with caplog.at_level(logging.WARNING, logger="commonware_runtime"):
            storage = iouring.open_storage(tmp_path / "s", counters=RuntimeCounters(), executor=executor)
    lines = [r.getMessage() for r in caplog.records if r.name == "commonware_runtime"]
    return storage, lines


def _no_binding() -> Any:
    raise ImportError("No module named 'pyaio'")


class _OldRing:
    def __init__(self, entries: int) -> None:
        pass


def _refusing(err: int) -> Any:
    class Refusing:
        submit_read = submit_write = submit_fsync = submit = reap = fileno = close = inflight = None

        def __init__(self, entries: int) -> None:
            raise OSError(err, os.strerror(err))

    return Refusing


@pytest.mark.parametrize(
    "cause, expected",
    [
        ("platform", "io_uring is Linux-only (this is darwin)"),
        ("sysctl", "io_uring is disabled by the sysctl kernel.io_uring_disabled=2"),
        ("binding", "the io_uring binding is not installed (No module named 'pyaio'; pip install 'commonware-runtime[iouring]')"),
        ("version", "the installed pyaio has no Ring.submit_read, Ring.submit_write"),
        ("seccomp", "the kernel refused io_uring (a seccomp profile such as Docker's default"),
        ("kernel", "the kernel has no io_uring (too old, or built without it)"),
    ],
)
def test_unavailable_io_uring_falls_back_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, cause: str, expected: str
) -> None:
    if cause == "platform":
        monkeypatch.setattr(sys, "platform", "darwin")
    elif cause == "sysctl":
        fake = tmp_path / "io_uring_disabled"
        fake.write_text("2\n")
        monkeypatch.setattr(iouring, "SYSCTL", str(fake))
    elif cause == "binding":
        monkeypatch.setattr(iouring, "_load_ring_class", _no_binding)
    elif cause == "version":
        monkeypatch.setattr(iouring, "_load_ring_class", lambda: _OldRing)
    elif cause == "seccomp":
        monkeypatch.setattr(iouring, "_load_ring_class", lambda: _refusing(errno.EPERM))
    else:
        monkeypatch.setattr(iouring, "_load_ring_class", lambda: _refusing(errno.ENOSYS))
    if cause in ("platform", "sysctl"):
        monkeypatch.setattr(iouring, "_load_ring_class", _no_binding)  # must not even be tried
    storage, lines = fallback_storage(tmp_path, caplog)
    assert type(storage) is Storage and storage.backend == "default"
    assert len(lines) == 1, lines
    assert lines[0].startswith("storage_backend='io_uring' is unavailable, using the default storage backend instead: ")
    assert expected in lines[0]


def test_runner_falls_back_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(iouring, "_load_ring_class", _no_binding)

    async def main(ctx: Any) -> str:
        blob, _ = await ctx.open("p", b"x")
        await blob.write_at(b"fallback", 0)
        await blob.sync()
        assert await blob.read_at(8, 0) == b"fallback"
        await blob.close()
        return str(ctx._core.storage.backend)

    config = production.Config(storage_directory=tmp_path / "s", storage_backend="io_uring")
    with caplog.at_level(logging.WARNING, logger="commonware_runtime"):
        assert production.Runner(config).start(main) == "default"
    lines = [r.getMessage() for r in caplog.records if "io_uring" in r.getMessage()]
    assert len(lines) == 1 and "binding is not installed" in lines[0]


def test_this_machine_reports_why_io_uring_is_unavailable() -> None:
    # Not a check of the machine: the reason the io_uring tests are skipped, if they are,
    # is one of the fallback messages, and shows in the skip reason.
    if IOURING_UNAVAILABLE is None:
        ring = iouring.open_ring(2)
        ring.close()
    else:
        assert IOURING_UNAVAILABLE


# ---------------------------------------------------------------------------- crashes


CRASH_WRITER = """
import os, sys
from commonware_runtime import production

directory, backend = sys.argv[1], sys.argv[2]

async def main(ctx):
    blob, size = await ctx.open("log", b"records")
    assert size == 0
    record = 0
    while True:  # until killed
        payload = b"%08d" % record + os.urandom(4088)
        await blob.write_at(payload, record * 4096)
        await blob.sync()
        print("synced", record, payload[8:40].hex(), flush=True)
        record += 1

config = production.Config(storage_directory=directory, storage_backend=backend)
production.Runner(config).start(main)
"""


@pytest.mark.parametrize("backend", ["default", pytest.param("io_uring", marks=needs_iouring)])
def test_kill_9_after_sync_loses_nothing(tmp_path: Path, backend: str) -> None:
    """A writer killed with SIGKILL: every record whose sync returned is in the file, whole.
    (A killed process loses what it had not handed to the kernel; the page cache survives
    it, so this checks that a returned sync means the write completed, on both backends.)"""
    script = tmp_path / "writer.py"
    script.write_text(CRASH_WRITER)
    directory = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "runtime"))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(directory), backend], stdout=subprocess.PIPE, text=True, env=env
    )
    synced: dict[int, str] = {}
    guard = threading.Timer(120, proc.kill)  # a writer that hangs fails the test, not the run
    guard.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            _, record, digest = line.split()
            synced[int(record)] = digest
            if len(synced) == 200:
                break
    finally:
        guard.cancel()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(synced) == 200
    path = directory / "log" / b"records".hex()
    data = path.read_bytes()
    assert len(data) >= 200 * 4096
    for record, digest in synced.items():
        chunk = data[record * 4096 : (record + 1) * 4096]
        assert chunk[:8] == b"%08d" % record and chunk[8:40].hex() == digest
