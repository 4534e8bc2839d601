"""The io_uring storage backend: ``production.Config(storage_backend="io_uring")``.

Linux only, installed through the extra ``iouring`` (``pip install
'commonware-runtime[iouring]'``, which brings the ``pyaio`` binding: wheels for x86_64 and
aarch64 bundling liburing; docs/production.md says why this binding).  Nothing here is
imported unless the backend is selected, and the binding is imported only when a ring is
opened.

What changes against the default backend (``production.storage``), and what does not
-------------------------------------------------------------------------------------
Everything but four operations is the default backend itself: ``UringStorage`` and
``UringBlob`` subclass ``Storage`` and ``Blob``, so layout, path safety, shared handle
state, removal, poisoning, counters and error mapping are the same code.  What the default
backend hands to its thread pool for a read (``_pread_exact``, ``_read_into``), a write
(``_write_all``) and a sync (``_datasync``) goes to the ring instead; resize, open, remove
and scan stay in the pool.  Warm reads keep the inline ``RWF_NOWAIT`` attempt (a page-cache
hit costs one system call and no loop turn, which no ring round trip can beat); a miss, and
the reads the miss back-off skips, go to the ring, where any number of them are in flight
at once from the loop thread, where the pool had one per thread.

* Sync is ``IORING_OP_FSYNC`` with ``IORING_FSYNC_DATASYNC``: the kernel runs the same
  ``vfs_fsync_range(file, 0, LLONG_MAX, datasync=1)`` as ``fdatasync(2)``, so durability is
  the same; a failure poisons the blob exactly as a failed ``fdatasync`` does.  A sync is
  submitted only after the task's earlier writes completed (each ``write_at`` returns on its
  completion), so it covers them.
* Short reads and writes are continued like the pool's ``pread``/``pwrite`` loops; a read
  that returns 0 bytes is the end of the file.
* Cancellation: a task cancelled while its operation is in the ring stops waiting; the
  operation runs to its end (the kernel cannot interrupt file I/O it has started) and its
  result is dropped.  It stays counted in the blob's in-flight operations until its
  completion arrives, so ``close`` waits for it before closing the descriptor, as it waits
  for a pool thread today: a descriptor number is never reused under a queued operation.

The ring and the loop
---------------------
No thread: operations are queued in the submission ring as tasks ask for them, and handed to
the kernel with one ``io_uring_enter`` per loop iteration (a flush scheduled with
``call_soon`` by the first operation of the iteration).  The ring signals completions on an
eventfd registered with the loop (``add_reader``: asyncio's selector loop and uvloop alike);
the reader reaps every completion in one call and resolves the waiting futures.  At most
``2 * ENTRIES`` operations are in the kernel at once; more wait in a backlog, in order.  A
storage used from another loop (a second ``asyncio.run``) moves its reader there.

Fallback
--------
``open_storage`` falls back to the default backend with one warning on the
``commonware_runtime`` logger saying why, never silently: not Linux, the sysctl
``kernel.io_uring_disabled`` set to 2, the binding missing or of an unknown version, or the
kernel refusing a ring (too old: ``ENOSYS``; a seccomp profile or the sysctl set to 1:
``EPERM``).  Should submitting fail later for any other reason, the ring is closed, its
operations fail with the error (``ReadFailed``/``WriteFailed``/``BlobSyncFailed`` as usual),
and the storage carries on with the pool, again with one logged line.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from ..metrics import RuntimeCounters
from . import storage as _storage
from .storage import Blob, Storage

__all__ = ["BACKENDS", "ENTRIES", "UringStorage", "UringBlob", "Unavailable", "open_ring", "open_storage"]

logger = logging.getLogger("commonware_runtime")

#: Names accepted by ``production.Config(storage_backend=...)``.
BACKENDS = ("default", "io_uring")
#: Submission queue entries of the ring (the completion queue has twice as many).
ENTRIES = 256
#: Largest single read or write handed to the ring (longer ones are continued like short ones).
CHUNK = 1 << 30
#: The binding's distribution and the least version whose ``Ring`` this module drives.
BINDING = "pyaio"
_REQUIRED = ("submit_read", "submit_write", "submit_fsync", "submit", "reap", "fileno", "close", "inflight")
#: The sysctl that disables io_uring (0 allowed, 1 only for the io_uring_group, 2 never).
SYSCTL = "/proc/sys/kernel/io_uring_disabled"


class Unavailable(Exception):
    """io_uring cannot be used here; the message says why."""


def _load_ring_class() -> Any:
    """The binding's ring class (imported here, only when a ring is opened)."""
    from pyaio._uring import Ring

    return Ring


def open_ring(entries: int = ENTRIES) -> Any:
    """A new ring of the binding, or ``Unavailable`` with the reason."""
    if not sys.platform.startswith("linux"):
        raise Unavailable(f"io_uring is Linux-only (this is {sys.platform})")
    try:
        with open(SYSCTL) as f:
            disabled = f.read().strip()
    except OSError:
        disabled = "0"  # older kernels have no such sysctl
    if disabled == "2":
        raise Unavailable(f"io_uring is disabled by the sysctl kernel.io_uring_disabled=2 ({SYSCTL})")
    try:
        ring_class = _load_ring_class()
    except ImportError as exc:
        raise Unavailable(
            f"the io_uring binding is not installed ({exc}; pip install 'commonware-runtime[iouring]')"
        ) from exc
    missing = [name for name in _REQUIRED if not hasattr(ring_class, name)]
    if missing:
        raise Unavailable(f"the installed {BINDING} has no Ring.{', Ring.'.join(missing)} (an unsupported version)")
    try:
        return ring_class(entries)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            why = "the kernel has no io_uring (too old, or built without it)"
        elif exc.errno in (errno.EPERM, errno.EACCES):
            why = (
                "the kernel refused io_uring (a seccomp profile such as Docker's default, "
                f"or kernel.io_uring_disabled=1 for a process outside io_uring_group; {SYSCTL} reads {disabled})"
            )
        else:
            why = "creating a ring failed"
        raise Unavailable(f"{why}: {exc}") from exc


def open_storage(
    directory: str | os.PathLike[str],
    *,
    counters: RuntimeCounters,
    executor: Any,
    entries: int = ENTRIES,
) -> Storage:
    """An io_uring ``Storage``, or the default one with a logged line saying why not."""
    try:
        ring = open_ring(entries)
    except Unavailable as exc:
        logger.warning(
            "storage_backend='io_uring' is unavailable, using the default storage backend instead: %s", exc
        )
        return Storage(directory, counters=counters, executor=executor)
    return UringStorage(directory, counters=counters, executor=executor, ring=ring)


# ----------------------------------------------------------------------------------------


class _Driver:
    """One ring on one event loop: batched submission, eventfd completions."""

    __slots__ = ("ring", "loop", "_efd", "_flush_scheduled", "_backlog", "_max_inflight", "storage")

    def __init__(self, ring: Any, entries: int, storage: UringStorage) -> None:
        self.ring = ring
        self.loop: asyncio.AbstractEventLoop | None = None
        self._efd: int = ring.fileno()
        self._flush_scheduled = False
        self._backlog: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._max_inflight = 2 * entries
        self.storage = storage

    # -- the loop -----------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        old = self.loop
        if old is not None and not old.is_closed():
            old.remove_reader(self._efd)
        self.loop = loop
        self._flush_scheduled = False
        loop.add_reader(self._efd, self._on_ready)
        if self._backlog or self.ring.inflight:
            self._schedule_flush(loop)

    def detach(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._efd)

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_scheduled = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        ring = self.ring
        if ring.closed:
            return
        try:
            ring.submit()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY, errno.EINTR):
                # The completion queue is backed up: retry after the reader reaped.
                if self.loop is not None:
                    self._schedule_flush(self.loop)
                return
            self.storage._ring_failed(exc)

    # -- operations ---------------------------------------------------------------------

    def start(self, blob: Blob, submit: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Queue ``submit(*args, token)``; the future resolves to ``(result, payload)``."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self.attach(loop)
        future = loop.create_future()
        token = (future, blob)
        if self._backlog or self.ring.inflight >= self._max_inflight:
            self._backlog.append((submit, (*args, token)))
        else:
            submit(*args, token)
        blob._inflight += 1
        if not self._flush_scheduled:
            self._schedule_flush(loop)
        return future

    def _on_ready(self) -> None:
        try:
            completions = self.ring.reap()
        except MemoryError:
            return  # nothing is lost: the binding re-arms the eventfd
        self._dispatch(completions)
        if self._backlog:
            self._drain()

    @staticmethod
    def _dispatch(completions: list[tuple[Any, int, Any]]) -> None:
        for (future, blob), res, payload in completions:
            blob._finished()
            if future.done():  # the awaiting task was cancelled: the result is dropped
                continue
            if res < 0:
                future.set_exception(OSError(-res, os.strerror(-res)))
            else:
                future.set_result((res, payload))

    def _drain(self) -> None:
        backlog = self._backlog
        ring = self.ring
        while backlog and ring.inflight < self._max_inflight:
            submit, args = backlog.popleft()
            future, blob = args[-1]
            try:
                submit(*args)
            except Exception as exc:  # noqa: BLE001 - delivered to the waiting task
                blob._finished()
                if not future.done():
                    future.set_exception(exc)
        if not self._flush_scheduled and self.loop is not None:
            self._schedule_flush(self.loop)

    def close(self, error: OSError | None = None) -> None:
        """Cancel what is queued, wait for the kernel to release every buffer, fail the
        waiting futures (``error``, or cancelled), and release the ring."""
        self.detach()
        backlog, self._backlog = self._backlog, collections.deque()
        if self.ring.closed:
            completions = []
        else:
            completions = self.ring.close()  # blocks until the kernel is done with every buffer
        # What the kernel finished and what never reached it end alike: the waiter is told.
        abandoned = [user for user, _res, _payload in completions] + [args[-1] for _submit, args in backlog]
        for future, blob in abandoned:
            blob._finished()
            if not future.done():
                if error is not None:
                    future.set_exception(OSError(error.errno, f"io_uring ring closed: {error}"))
                else:
                    future.cancel()


# ----------------------------------------------------------------------------------------
# The four pool operations of the default backend, done on the ring.  Each is called as
# Blob._offload(fn, *args) would call fn(*args) in a thread, and returns the same thing.


async def _ring_pread_exact(blob: Blob, driver: _Driver, fd: int, n: int, offset: int) -> bytes:
    submit = driver.ring.submit_read
    res, payload = await driver.start(blob, submit, (fd, offset, min(n, CHUNK)))
    if res == n:
        return bytes(payload)
    if res == 0:
        return b""
    parts = [payload]
    got = res
    while got < n:
        res, payload = await driver.start(blob, submit, (fd, offset + got, min(n - got, CHUNK)))
        if res == 0:
            break
        parts.append(payload)
        got += res
    return b"".join(parts)


async def _ring_read_into(blob: Blob, driver: _Driver, fd: int, view: memoryview, offset: int) -> int:
    submit = driver.ring.submit_read
    total = len(view)
    done = 0
    while done < total:
        res, payload = await driver.start(blob, submit, (fd, offset + done, min(total - done, CHUNK)))
        if res == 0:
            break
        view[done : done + res] = payload
        done += res
    return done


async def _ring_write_all(blob: Blob, driver: _Driver, fd: int, view: memoryview, offset: int) -> None:
    submit = driver.ring.submit_write
    total = len(view)
    done = 0
    while done < total:
        part = view[done : done + CHUNK] if done or total > CHUNK else view
        res, _ = await driver.start(blob, submit, (fd, part, offset + done))
        if res == 0:
            raise OSError(errno.EIO, f"write of {len(part)} bytes at {offset + done} made no progress")
        done += res


async def _ring_datasync(blob: Blob, driver: _Driver, fd: int) -> None:
    await driver.start(blob, driver.ring.submit_fsync, (fd, True))


_RING_OPS: dict[Callable[..., Any], Callable[..., Coroutine[Any, Any, Any]]] = {
    _storage._pread_exact: _ring_pread_exact,
    _storage._read_into: _ring_read_into,
    _storage._write_all: _ring_write_all,
    _storage._datasync: _ring_datasync,
}


class UringBlob(Blob):
    """A ``Blob`` whose reads, writes and syncs that would go to the pool go to the ring."""

    __slots__ = ()

    async def _offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        storage: UringStorage = self._storage  # type: ignore[assignment]
        driver = storage._driver
        op = _RING_OPS.get(fn)
        if op is None or driver is None:
            return await Blob._offload(self, fn, *args)
        storage._budget_ops = storage._budget_bytes = 0
        return await op(self, driver, *args)


class UringStorage(Storage):
    """``Storage`` with an io_uring ring for reads, writes and syncs (module docstring)."""

    backend = "io_uring"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        counters: RuntimeCounters,
        executor: Any,
        ring: Any,
        entries: int = ENTRIES,
    ) -> None:
        super().__init__(directory, counters=counters, executor=executor)
        self._driver: _Driver | None = _Driver(ring, entries, self)

    def __repr__(self) -> str:
        state = "" if self._driver is not None else ", ring closed"
        return f"UringStorage({self.directory!r}{state})"

    def _new_blob(self, partition: str, name: bytes, fd: int, shared: Any, serial: int) -> Blob:
        return UringBlob(self, partition, name, fd, shared, serial)

    def _ring_failed(self, exc: OSError) -> None:
        driver, self._driver = self._driver, None
        logger.error("io_uring submission failed (%s): closing the ring, storage continues on the thread pool", exc)
        if driver is not None:
            driver.close(exc)

    def close(self) -> None:
        """Release the ring (waits for the kernel to finish what is in it); later reads,
        writes and syncs use the thread pool.  Idempotent."""
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.close()
