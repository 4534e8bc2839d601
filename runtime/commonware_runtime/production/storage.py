"""Production storage: one real file per blob (docs/SPEC.md section 2, Storage).

Layout
------
A blob lives at ``directory/partition/<hex(name)>``.  The file name is the lowercase hex
of the blob name, so no name (``b"../"``, ``b"/etc/passwd"``, ``b"\\x00"``...) can form a
path separator, a dot-dot component or a NUL byte: nothing escapes the partition.  The
partition itself is validated by :func:`arguments.check_partition` (``[A-Za-z0-9_-]+``).
Partition directories and blob files are opened with ``O_NOFOLLOW``, so a symlink planted
inside the storage directory cannot redirect a blob elsewhere.

Long names.  Most filesystems limit one path component to 255 bytes, i.e. a 127-byte
name.  A name whose hex is longer than 255 characters is split: every full 252-character
chunk of the hex becomes a directory named ``<chunk>.d``, and the remainder (at most 255
characters) is the file, e.g. ``partition/<252 hex>.d/<252 hex>.d/<rest>``.  Directory
components never look like blob files (they end in ``.d``) and the split is canonical, so
``scan`` returns the original name and a long name never collides with a short one.
Every path is walked component by component with ``dir_fd``, so names of any length work
(no ``PATH_MAX`` limit).  Removing a long-named blob prunes the directories it leaves empty.

Durability
----------
``sync`` is ``fdatasync`` (``F_FULLFSYNC`` on macOS, ``fsync`` elsewhere).  Creating a
partition fsyncs the storage directory; creating a blob file fsyncs its directory; removing
a blob or a partition fsyncs the directory that held it.  A failed ``sync`` poisons the
blob: Linux may clear the error and drop the dirty pages, so a later ``sync`` could report
success for lost writes; instead every later operation raises ``BlobSyncFailed`` until the
blob is reopened (after all its handles are closed, see Handles below).  ``close`` waits
for the blob's in-flight thread-pool operations (even those whose awaiting task was
cancelled), syncs, then closes the descriptor, so a descriptor number is never reused
under a running ``pread``/``pwrite``.

Hot paths (measured by ``benchmarks/bench_storage.py``)
-------------------------------------------------------
* Reads up to 1 MiB first try ``os.preadv(fd, [buf], offset, os.RWF_NOWAIT)`` inline on
  the event loop.  On a page-cache hit this completes without blocking and costs a few
  microseconds, where a thread-pool round trip costs tens of microseconds.  On a miss the
  kernel answers ``EAGAIN`` immediately (having already started the read-ahead), or a short
  count when only part of the range is cached; the rest is then read in the executor.
  A miss is not free: the kernel submits the read-ahead I/O from the loop thread, which
  costs loop time that many concurrent cold readers feel.  So each blob backs off: after
  a miss it skips the inline attempt for its next 1, 3, 7, then 15 reads (doubling while
  the misses continue), and a hit resets it.  A fully cold file pays the attempt on one read
  in 16; a warm one on none.
* Writes up to 1 MiB try ``os.pwritev(..., os.RWF_NOWAIT)`` inline the same way.  Many
  filesystems (ext4 among them) reject buffered ``RWF_NOWAIT`` writes with
  ``EOPNOTSUPP``; the first such answer switches inline writes off for this ``Storage``,
  after which every write goes to the executor.  A short inline write is completed in
  the executor.  Writes never block the loop: either the kernel copies into the page cache
  without waiting, or the write is handed off.
* ``fdatasync``/``fsync``, ``ftruncate``, open/create, remove and scan always run in the
  executor.
* Inline operations never suspend the calling task, so a task reading a cached file in a
  loop could starve the event loop.  Like tokio's cooperative budget, after 128 inline
  operations or 8 MiB moved inline without passing through the executor, the next
  operation yields to the loop once (``asyncio.sleep(0)``).
* aiofiles is not used: every aiofiles call is one ``run_in_executor`` hop plus wrapper
  overhead, it has no positional ``pread``/``pwrite`` (a positional read is ``seek`` then
  ``read``), and composite operations (open = mkdir + open + fstat + directory fsync) are
  cheaper as one executor hop.  The benchmark compares it.
* Platforms without ``RWF_NOWAIT`` (anything but Linux) use the executor for every read
  and write.

Handles.  Every ``open`` returns a new handle with its own file descriptor, but the handles
of one blob within one ``Storage`` agree, like the deterministic runtime and like real
files: they share one small state (the tracked size and the sync poisoning), created by
the first open and dropped when the last handle closes.  A write or resize through any
handle is seen at once by ``size`` and ``read_at`` of the others; closing one handle (which
syncs its descriptor) leaves the others open.  A failed sync poisons the blob for all its
handles, and for handles opened while any of them is still open: recovery takes closing
every handle and reopening.

Removal is POSIX ``unlink``, as in commonware and the deterministic runtime: the name
goes at once, while handles already open keep their descriptors and keep working (read,
write, resize, sync, close) on the unlinked file, whose space the kernel frees when the
last descriptor closes.  Removal *detaches* the blob's shared state from its
``(partition, name)``: the handles of the removed file keep sharing it among themselves,
and the next ``open`` of the name gets a fresh state for the new file, so neither the
size nor a sync poisoning crosses from one file to the other.  A file unlinked or replaced
from outside is detached the same way, when the next ``open`` of the name finds a
different file (another ``(st_dev, st_ino)``); its old handles carry on with the old
file, like any process holding it open.  Operations may run concurrently on any handles;
overlapping concurrent writes land in an unspecified order.

Error mapping (always ``from`` the ``OSError``; messages name partition and blob)
------------------------------------------------------------------------------------
open: ``PartitionCreationFailed`` (storage or partition directory), ``BlobOpenFailed``
(the file, or a directory of a long name); read: ``ReadFailed``; write: ``WriteFailed``;
resize: ``BlobResizeFailed``; sync/close: ``BlobSyncFailed``; remove: ``PartitionMissing`` /
``BlobMissing`` when absent, ``WriteFailed`` (blob) or ``PartitionCorrupt`` (partition)
when the filesystem refuses; scan: ``PartitionMissing``, or ``PartitionCorrupt`` when the
partition holds anything that is not a blob of this layout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import re
import shutil
import stat
import sys
import warnings
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ..arguments import U64_MAX, check_blob_name, check_count, check_offset, check_partition, format_blob, read_at_args
from ..errors import (
    BlobInsufficientLength,
    BlobMissing,
    BlobOpenFailed,
    BlobResizeFailed,
    BlobSyncFailed,
    Closed,
    OffsetOverflow,
    PartitionCorrupt,
    PartitionCreationFailed,
    PartitionMissing,
    ReadFailed,
    WriteFailed,
)
from ..metrics import RuntimeCounters

__all__ = ["Storage", "Blob", "INLINE_MAX", "NAME_MAX", "CHUNK"]

T = TypeVar("T")

#: Longest single path component written (the common filesystem limit).
NAME_MAX = 255
#: Hex characters per directory component of a long name (plus the ``.d`` suffix).
CHUNK = 252
_DIR_SUFFIX = ".d"
#: Largest read or write attempted inline with RWF_NOWAIT (a 1 MiB cached copy takes
#: ~20 us, still well under one executor round trip).
INLINE_MAX = 1 << 20
#: Longest run of reads that skip the inline attempt after consecutive misses.
_MAX_BACKOFF = 15
#: Cooperative budget: inline operations / bytes before a forced yield to the loop.
_BUDGET_OPS = 128
_BUDGET_BYTES = 8 << 20

_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None
_HEX_FILE = re.compile(r"(?:[0-9a-f]{2})+\Z")
_HEX_DIR = re.compile(r"[0-9a-f]{%d}\.d\Z" % CHUNK)  # noqa: UP031 - %d keeps the regex braces unescaped
_NOT_SUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = os.O_RDWR | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _datasync(fd: int) -> None:
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    elif sys.platform == "darwin":
        import fcntl

        # macOS fsync does not flush the drive's cache; F_FULLFSYNC does.
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)  # type: ignore[attr-defined]
    else:
        os.fsync(fd)


def _fsync_dir(fd: int) -> None:
    os.fsync(fd)


def name_components(name: bytes) -> tuple[list[str], str]:
    """Directories and file name of a blob name (see the module docstring)."""
    rest = name.hex()
    dirs: list[str] = []
    while len(rest) > NAME_MAX:
        dirs.append(rest[:CHUNK] + _DIR_SUFFIX)
        rest = rest[CHUNK:]
    return dirs, rest


# ----------------------------------------------------------------------------------------
# Blocking helpers: run in the executor.  They raise the docs/SPEC.md errors themselves so that the
# mapping lives next to the system call that failed.
# ----------------------------------------------------------------------------------------


def _open_partition(root: str, partition: str, create: bool) -> int:
    """Open (optionally create) the partition directory; returns its fd."""
    path = os.path.join(root, partition)
    try:
        return os.open(path, _DIR_FLAGS | _NOFOLLOW)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        if not create:
            raise
        raise PartitionCreationFailed(f"cannot open partition {partition!r} at {path!r}: {exc}") from exc
    try:
        if not os.path.isdir(root):
            os.makedirs(root, exist_ok=True)
            parent = os.open(os.path.dirname(os.path.abspath(root)), _DIR_FLAGS)
            try:
                _fsync_dir(parent)
            finally:
                os.close(parent)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass  # created concurrently: the other creator fsyncs, and so do we below
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            _fsync_dir(root_fd)
        finally:
            os.close(root_fd)
        return os.open(path, _DIR_FLAGS | _NOFOLLOW)
    except OSError as exc:
        raise PartitionCreationFailed(f"cannot create partition {partition!r} at {path!r}: {exc}") from exc


def _walk(part_fd: int, dirs: list[str], create: bool) -> list[int]:
    """Open the chain of long-name directories below ``part_fd``; returns their fds
    (outermost first).  On error, closes what it opened and re-raises."""
    fds: list[int] = []
    try:
        parent = part_fd
        for component in dirs:
            try:
                fd = os.open(component, _DIR_FLAGS | _NOFOLLOW, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(component, dir_fd=parent)
                except FileExistsError:
                    pass
                _fsync_dir(parent)
                fd = os.open(component, _DIR_FLAGS | _NOFOLLOW, dir_fd=parent)
            fds.append(fd)
            parent = fd
        return fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _open_blob(root: str, partition: str, name: bytes) -> tuple[int, int, tuple[int, int]]:
    """Open or create the file; returns its fd, size and identity ``(st_dev, st_ino)``."""
    part_fd = _open_partition(root, partition, create=True)
    what = format_blob(partition, name)
    try:
        dirs, file_name = name_components(name)
        try:
            dir_fds = _walk(part_fd, dirs, create=True)
        except OSError as exc:
            raise BlobOpenFailed(f"cannot create the directories of {what}: {exc}") from exc
        try:
            dir_fd = dir_fds[-1] if dir_fds else part_fd
            try:
                try:
                    fd = os.open(file_name, _FILE_FLAGS, dir_fd=dir_fd)
                except FileNotFoundError:
                    try:
                        fd = os.open(file_name, _FILE_FLAGS | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
                    except FileExistsError:
                        fd = os.open(file_name, _FILE_FLAGS, dir_fd=dir_fd)
                    else:
                        try:
                            _fsync_dir(dir_fd)
                        except BaseException:
                            os.close(fd)
                            raise
            except OSError as exc:
                raise BlobOpenFailed(f"cannot open {what}: {exc}") from exc
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise BlobOpenFailed(f"cannot open {what}: not a regular file")
            except OSError as exc:
                os.close(fd)
                raise BlobOpenFailed(f"cannot stat {what}: {exc}") from exc
            except BaseException:
                os.close(fd)
                raise
            return fd, info.st_size, (info.st_dev, info.st_ino)
        finally:
            for d in dir_fds:
                os.close(d)
    finally:
        os.close(part_fd)


def _remove_partition(root: str, partition: str) -> None:
    path = os.path.join(root, partition)
    try:
        info = os.lstat(path)
    except FileNotFoundError as exc:
        raise PartitionMissing(f"partition {partition!r} does not exist") from exc
    except OSError as exc:
        raise PartitionCorrupt(f"cannot inspect partition {partition!r}: {exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise PartitionCorrupt(f"partition {partition!r} at {path!r} is not a directory")
    try:
        shutil.rmtree(path)
    except FileNotFoundError as exc:
        raise PartitionMissing(f"partition {partition!r} does not exist") from exc
    except OSError as exc:
        raise PartitionCorrupt(f"cannot remove partition {partition!r}: {exc}") from exc
    try:
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            _fsync_dir(root_fd)
        finally:
            os.close(root_fd)
    except OSError as exc:
        raise PartitionCorrupt(f"removed partition {partition!r} but could not sync {root!r}: {exc}") from exc


def _remove_blob(root: str, partition: str, name: bytes) -> None:
    what = format_blob(partition, name)
    try:
        part_fd = _open_partition(root, partition, create=False)
    except FileNotFoundError as exc:
        raise PartitionMissing(f"partition {partition!r} does not exist (removing {what})") from exc
    except OSError as exc:
        raise PartitionCorrupt(f"cannot open partition {partition!r} (removing {what}): {exc}") from exc
    try:
        dirs, file_name = name_components(name)
        try:
            dir_fds = _walk(part_fd, dirs, create=False)
        except FileNotFoundError as exc:
            raise BlobMissing(f"{what} does not exist") from exc
        except OSError as exc:
            raise WriteFailed(f"cannot remove {what}: {exc}") from exc
        try:
            parents = [part_fd, *dir_fds]
            try:
                os.unlink(file_name, dir_fd=parents[-1])
            except FileNotFoundError as exc:
                raise BlobMissing(f"{what} does not exist") from exc
            except OSError as exc:
                raise WriteFailed(f"cannot remove {what}: {exc}") from exc
            try:
                _fsync_dir(parents[-1])
                # Prune long-name directories left empty, innermost first.
                for depth in range(len(dirs) - 1, -1, -1):
                    try:
                        os.rmdir(dirs[depth], dir_fd=parents[depth])
                    except OSError as exc:
                        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                            break  # another blob shares this prefix: keep it
                        raise
                    _fsync_dir(parents[depth])
            except OSError as exc:
                raise BlobSyncFailed(f"removed {what} but could not sync its directory: {exc}") from exc
        finally:
            for d in dir_fds:
                os.close(d)
    finally:
        os.close(part_fd)


def _scan(root: str, partition: str) -> list[bytes]:
    try:
        part_fd = _open_partition(root, partition, create=False)
    except FileNotFoundError as exc:
        raise PartitionMissing(f"partition {partition!r} does not exist") from exc
    except OSError as exc:
        raise PartitionCorrupt(f"cannot open partition {partition!r}: {exc}") from exc
    names: list[bytes] = []
    try:
        _scan_dir(partition, part_fd, "", names)
    except OSError as exc:
        raise PartitionCorrupt(f"cannot list partition {partition!r}: {exc}") from exc
    finally:
        os.close(part_fd)
    names.sort()
    return names


def _scan_dir(partition: str, dir_fd: int, prefix: str, out: list[bytes]) -> None:
    # scandir(fd) duplicates the descriptor itself, so ours stays open and valid.
    with os.scandir(dir_fd) as entries:
        listed = [(entry.name, entry.is_dir(follow_symlinks=False), entry.is_file(follow_symlinks=False)) for entry in entries]
    for entry_name, is_dir, is_file in listed:
        if is_dir and _HEX_DIR.match(entry_name):
            child = os.open(entry_name, _DIR_FLAGS | _NOFOLLOW, dir_fd=dir_fd)
            try:
                _scan_dir(partition, child, prefix + entry_name[:CHUNK], out)
            finally:
                os.close(child)
            continue
        if is_file and _HEX_FILE.match(entry_name):
            name = bytes.fromhex(prefix + entry_name)
            dirs, file_name = name_components(name)
            if "".join(d[:CHUNK] for d in dirs) == prefix and file_name == entry_name:
                out.append(name)
                continue
        kind = "directory" if is_dir else "file" if is_file else "special file"
        where = f"{prefix[:32]}.../" if prefix else ""
        raise PartitionCorrupt(f"partition {partition!r} holds {kind} {where}{entry_name!r} that is not a blob of this layout")


def _read_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset``; returns the bytes read (short only at end of file)."""
    done = 0
    total = len(view)
    while done < total:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) == n or not data:
        return data
    # Short read (signal or concurrent truncation): complete it into one buffer.
    buf = bytearray(n)
    buf[: len(data)] = data
    got = len(data) + _read_into(fd, memoryview(buf)[len(data) :], offset + len(data))
    return bytes(buf[:got])


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    total = len(view)
    while done < total:
        done += os.pwrite(fd, view[done:], offset + done)


def _write_failed_size(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return None


# ----------------------------------------------------------------------------------------


class Storage:
    """Blobs as files under ``directory`` (see the module docstring)."""

    #: ``production.Config(storage_backend=...)`` name; ``production.iouring`` subclasses this.
    backend = "default"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        counters: RuntimeCounters,
        executor: concurrent.futures.Executor,
    ) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"storage directory must be a str or os.PathLike, got {type(directory).__name__} {directory!r}")
        directory = os.fspath(directory)
        if not isinstance(directory, str):
            raise TypeError(f"storage directory must be a text path, got {directory!r}")
        if not directory or "\x00" in directory:
            raise ValueError(f"storage directory {directory!r} is not a valid path")
        if not isinstance(counters, RuntimeCounters):
            raise TypeError(f"counters must be RuntimeCounters, got {type(counters).__name__}")
        if not isinstance(executor, concurrent.futures.Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}")
        self.directory = os.path.abspath(directory)
        self.counters = counters
        self.executor = executor
        #: Inline RWF_NOWAIT reads/writes; switched off at the first EOPNOTSUPP.
        self.nowait_reads = _RWF_NOWAIT is not None
        self.nowait_writes = _RWF_NOWAIT is not None
        self._budget_ops = 0
        self._budget_bytes = 0
        #: State shared by the open handles of each blob, while at least one is open.
        self._blobs: dict[tuple[str, bytes], _Shared] = {}
        self._serial = 0

    def __repr__(self) -> str:
        return f"Storage({self.directory!r})"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._budget_ops = self._budget_bytes = 0
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def open(self, partition: str, name: bytes) -> tuple[Blob, int]:
        """Open or create a blob; returns it and its current size."""
        partition = check_partition(partition)
        name = check_blob_name(name)
        fd, size, ident = await self._run(_open_blob, self.directory, partition, name)
        key = (partition, name)
        shared = self._blobs.get(key)
        if shared is not None and shared.ident != ident:
            # The file those handles use is no longer at this path (removed by a remove
            # still finishing, or from outside): they keep it, the new file starts afresh.
            self._detach(shared)
            shared = None
        if shared is None:
            shared = self._blobs[key] = _Shared(key, ident, size)
        blob = self._new_blob(partition, name, fd, shared, self._serial)
        self._serial += 1
        self.counters.storage["open_blobs"] += 1
        return blob, shared.size

    def _new_blob(self, partition: str, name: bytes, fd: int, shared: _Shared, serial: int) -> Blob:
        """The handle ``open`` returns (a backend's subclass hook: ``production.iouring``)."""
        return Blob(self, partition, name, fd, shared, serial)

    async def remove(self, partition: str, name: bytes | None = None) -> None:
        """Remove a blob, or the whole partition when ``name`` is None.

        Like POSIX ``unlink``: open handles of removed blobs keep working on the removed
        file, detached from the name (see the module docstring)."""
        partition = check_partition(partition)
        blob_name = None if name is None else check_blob_name(name)
        before = self._open_states(partition, blob_name)
        try:
            if blob_name is None:
                await self._run(_remove_partition, self.directory, partition)
            else:
                await self._run(_remove_blob, self.directory, partition, blob_name)
        except BaseException:
            # It may have happened in part (unlinked, then the directory fsync failed; or
            # rmtree stopped halfway): detach exactly the states whose file is gone.
            for shared in self._open_states(partition, blob_name):
                if _unlinked(shared):
                    self._detach(shared)
            raise
        # The states open before the call are of the removed files; one opened meanwhile
        # may be of a file created after the unlink (keep it) or before it (unlinked).
        for shared in self._open_states(partition, blob_name):
            if any(shared is old for old in before) or _unlinked(shared):
                self._detach(shared)

    def _open_states(self, partition: str, name: bytes | None) -> list[_Shared]:
        if name is not None:
            shared = self._blobs.get((partition, name))
            return [] if shared is None else [shared]
        return [shared for key, shared in self._blobs.items() if key[0] == partition]

    def _detach(self, shared: _Shared) -> None:
        """The blob's file lost its name: forget the state, so a new open of the name starts
        afresh, while the open handles keep it (and their descriptors) among themselves."""
        if self._blobs.get(shared.key) is shared:
            del self._blobs[shared.key]

    async def scan(self, partition: str) -> list[bytes]:
        """Names of the partition's blobs, sorted."""
        partition = check_partition(partition)
        return await self._run(_scan, self.directory, partition)

    def _spend(self, nbytes: int) -> bool:
        """Charge one inline operation; True when the task should yield to the loop."""
        self._budget_ops += 1
        self._budget_bytes += nbytes
        if self._budget_ops >= _BUDGET_OPS or self._budget_bytes >= _BUDGET_BYTES:
            self._budget_ops = self._budget_bytes = 0
            return True
        return False


class _Shared:
    """What every open handle of one blob agrees on: one per file and ``Storage``, created
    by the first open.  ``Storage`` maps the name to it until the last handle closes or
    the file loses that name (removal); detached, it lives on with its handles."""

    __slots__ = ("key", "ident", "size", "poisoned", "handles")

    def __init__(self, key: tuple[str, bytes], ident: tuple[int, int], size: int) -> None:
        self.key = key
        # (st_dev, st_ino): a file recreated under the same name is another blob.
        self.ident = ident
        self.size = size
        #: Set by a failed sync through any handle (see the module docstring).
        self.poisoned: BaseException | None = None
        # Open handles by serial.  Weak, so an unclosed handle can still be collected (and
        # warn) while other handles keep the blob open.
        self.handles: weakref.WeakValueDictionary[int, Blob] = weakref.WeakValueDictionary()


def _unlinked(shared: _Shared) -> bool:
    """Whether the blob's file has no name left (asked of any open descriptor of it)."""
    for handle in list(shared.handles.values()):
        fd = handle._fd
        if fd >= 0:
            return os.fstat(fd).st_nlink == 0
    return False


class Blob:
    """A handle on an open blob: its own file descriptor; size and sync failure are
    shared with every other handle of the blob in the same ``Storage``."""

    __slots__ = (
        "_storage", "partition", "name", "_fd", "_shared", "_serial", "_inflight", "_idle",
        "_closed", "_skip", "_backoff", "__weakref__",
    )

    def __init__(self, storage: Storage, partition: str, name: bytes, fd: int, shared: _Shared, serial: int) -> None:
        self._storage = storage
        self.partition = partition
        self.name = name
        self._fd = fd
        self._shared = shared
        self._serial = serial
        # Executor calls still running on our fd.  A loop-thread counter (no per-call
        # future callback) that a cancelled awaiter hands over to the thread's completion.
        self._inflight = 0
        self._idle: asyncio.Future[None] | None = None  # close() waits on it
        # None while usable, else "closing" or "closed".  Set whenever _fd is -1, so the
        # hot paths test this alone.
        self._closed: str | None = None
        self._skip = 0  # reads left that go straight to the executor after a miss
        self._backoff = 0  # length of the current skip window
        shared.handles[serial] = self

    def __repr__(self) -> str:
        state = self._closed or f"size={self._shared.size}"
        shared = self._shared
        if self._storage._blobs.get(shared.key) is not shared and self._closed is None:
            state += " removed"
        return f"<Blob {format_blob(self.partition, self.name)} {state}>"

    @property
    def size(self) -> int:
        """Bytes in the blob, written or resized through any of its handles (``Closed``
        after ``close``, as in the deterministic runtime)."""
        if self._closed is not None:
            raise Closed(f"{format_blob(self.partition, self.name)} is closed")
        return self._shared.size

    def _check_open(self, op: str = "use") -> int:
        closed = self._closed
        if closed is not None:
            raise Closed(f"{format_blob(self.partition, self.name)} is closed")
        poisoned = self._shared.poisoned
        if poisoned is not None:
            # Worded as the deterministic runtime words it: a retry fails the same way on both.
            raise BlobSyncFailed(
                f"{op} on {format_blob(self.partition, self.name)}: an earlier sync failed ({poisoned}), so writes "
                "since the last successful sync may have been lost; close every handle of it and reopen it"
            ) from poisoned
        return self._fd

    def _leave(self) -> None:
        shared = self._shared
        shared.handles.pop(self._serial, None)
        storage = self._storage
        storage.counters.storage["open_blobs"] -= 1
        if not shared.handles and storage._blobs.get(shared.key) is shared:
            del storage._blobs[shared.key]

    def _release(self) -> None:
        """Mark the handle closed, leave the shared state and close the descriptor once no
        executor thread uses it."""
        fd = self._fd
        self._closed = "closed"
        self._fd = -1
        self._leave()
        if self._inflight:
            idle = self._idle = asyncio.get_running_loop().create_future()
            idle.add_done_callback(lambda _: os.close(fd))
        else:
            os.close(fd)

    def _finished(self) -> None:
        self._inflight -= 1
        idle = self._idle
        if self._inflight == 0 and idle is not None and not idle.done():
            idle.set_result(None)

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        storage = self._storage
        storage._budget_ops = storage._budget_bytes = 0
        future = storage.executor.submit(fn, *args)
        self._inflight += 1
        try:
            result = await asyncio.wrap_future(future)
        except BaseException:
            if future.done():
                self._finished()
            else:
                # Cancelled while a thread still uses our fd: it stays in flight until done.
                loop = asyncio.get_running_loop()
                future.add_done_callback(lambda _: _call_in_loop(loop, self._finished))
            raise
        self._finished()
        return result

    async def read_at(self, n_or_buffer: int | bytearray | memoryview, offset: int) -> Any:
        """Read exactly ``n`` bytes at ``offset`` (returns ``bytes``), or fill the given
        writable buffer and return it.  Past the end raises ``BlobInsufficientLength``."""
        n, offset, target = read_at_args(n_or_buffer, offset, self)
        end = offset + n
        shared = self._shared
        if self._closed is not None or shared.poisoned is not None:
            self._check_open("read")
        if end > shared.size:
            raise BlobInsufficientLength(
                f"{format_blob(self.partition, self.name)}: read of {n} bytes at offset {offset} "
                f"passes the end (size {shared.size})"
            )
        fd = self._fd
        if n == 0:
            return b"" if target is None else target
        storage = self._storage
        if self._skip:
            self._skip -= 1
            inline = False
        else:
            inline = storage.nowait_reads and n <= INLINE_MAX
        got = 0
        if inline or target is not None:
            buf = bytearray(n) if target is None else target
            view = memoryview(buf).cast("B") if isinstance(buf, memoryview) else memoryview(buf)
        if inline:
            try:
                got = os.preadv(fd, [view], offset, _RWF_NOWAIT)  # type: ignore[arg-type]
            except BlockingIOError:
                got = 0
            except OSError as exc:
                if exc.errno not in _NOT_SUPPORTED:
                    raise ReadFailed(f"{format_blob(self.partition, self.name)}: read of {n} bytes at {offset} failed: {exc}") from exc
                storage.nowait_reads = False
            if got:
                self._backoff = 0
            else:
                self._backoff = self._skip = min(2 * self._backoff + 1, _MAX_BACKOFF)
            if got == n:
                counters = storage.counters.storage
                counters["reads"] += 1
                counters["bytes_read"] += n
                if storage._spend(n):
                    await asyncio.sleep(0)
                return bytes(buf) if target is None else target
        data: bytes | None = None
        try:
            if target is None and got == 0:
                data = await self._offload(_pread_exact, fd, n, offset)
                got = len(data)
            else:
                got += await self._offload(_read_into, fd, view[got:], offset + got)
        except OSError as exc:
            raise ReadFailed(f"{format_blob(self.partition, self.name)}: read of {n} bytes at {offset} failed: {exc}") from exc
        if got < n:
            raise BlobInsufficientLength(
                f"{format_blob(self.partition, self.name)}: read of {n} bytes at offset {offset} "
                f"found only {got} (the file is shorter than its tracked size {shared.size})"
            )
        counters = storage.counters.storage
        counters["reads"] += 1
        counters["bytes_read"] += n
        if target is not None:
            return target
        return data if data is not None else bytes(buf)

    async def write_at(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset``; a gap past the end reads back as zeros."""
        if type(data) is bytes:
            view = memoryview(data)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data)
            if not view.contiguous:
                raise TypeError("write_at data must be contiguous")
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
        else:
            raise TypeError(f"write_at data must be bytes-like, got {type(data).__name__}")
        if type(offset) is not int or offset < 0:
            offset = check_offset(offset)
        n = len(view)
        end = offset + n
        if end > U64_MAX:
            raise OffsetOverflow(f"{format_blob(self.partition, self.name)}: offset {offset} + length {n} overflows u64")
        if self._closed is not None or self._shared.poisoned is not None:
            self._check_open("write")
        if n == 0:
            return
        fd = self._fd
        storage = self._storage
        done = 0
        if storage.nowait_writes and n <= INLINE_MAX:
            try:
                done = os.pwritev(fd, [view], offset, _RWF_NOWAIT)  # type: ignore[arg-type]
            except BlockingIOError:
                done = 0
            except OSError as exc:
                if exc.errno not in _NOT_SUPPORTED:
                    self._after_failed_write(fd)
                    raise WriteFailed(f"{format_blob(self.partition, self.name)}: write of {n} bytes at {offset} failed: {exc}") from exc
                storage.nowait_writes = False
            if done == n:
                self._wrote(n, end)
                if storage._spend(n):
                    await asyncio.sleep(0)
                return
        try:
            await self._offload(_write_all, fd, view[done:] if done else view, offset + done)
        except OSError as exc:
            self._after_failed_write(fd)
            raise WriteFailed(f"{format_blob(self.partition, self.name)}: write of {n} bytes at {offset} failed: {exc}") from exc
        self._wrote(n, end)

    def _wrote(self, n: int, end: int) -> None:
        counters = self._storage.counters.storage
        counters["writes"] += 1
        counters["bytes_written"] += n
        shared = self._shared
        if end > shared.size:
            shared.size = end

    def _after_failed_write(self, fd: int) -> None:
        # A failed write may have extended the file partway: re-read the true size.
        size = _write_failed_size(fd)
        if size is not None and self._fd == fd:
            self._shared.size = size

    async def resize(self, length: int) -> None:
        """Truncate or extend (with zeros) to ``length`` bytes; durable after ``sync``."""
        length = check_count(length, "length")
        if length > U64_MAX:
            raise OffsetOverflow(f"{format_blob(self.partition, self.name)}: length {length} overflows u64")
        fd = self._check_open("resize")
        try:
            await self._offload(os.ftruncate, fd, length)
        except OSError as exc:
            self._after_failed_write(fd)
            raise BlobResizeFailed(f"{format_blob(self.partition, self.name)}: resize to {length} failed: {exc}") from exc
        self._shared.size = length

    async def sync(self) -> None:
        """Make every earlier write and resize durable (``fdatasync``)."""
        fd = self._check_open("sync")
        try:
            await self._offload(_datasync, fd)
        except OSError as exc:
            self._shared.poisoned = exc
            raise BlobSyncFailed(
                f"sync of {format_blob(self.partition, self.name)} failed ({exc}); the blob is poisoned until "
                "every handle of it is closed and it is reopened"
            ) from exc
        self._storage.counters.storage["syncs"] += 1

    async def close(self) -> None:
        """Wait for in-flight operations, sync, close.  Idempotent; later operations raise
        ``Closed``.  Other handles of the blob stay open.  A handle of a removed blob syncs
        and closes its (unlinked) file normally."""
        if self._closed is not None:
            return
        self._closed = "closing"
        fd = self._fd
        storage = self._storage
        shared = self._shared
        failure: BaseException | None = shared.poisoned
        try:
            if self._inflight:
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle
                failure = shared.poisoned  # another handle's sync may have failed meanwhile
            if failure is None:
                try:
                    await self._offload(_datasync, fd)
                    storage.counters.storage["syncs"] += 1
                except OSError as exc:
                    failure = shared.poisoned = exc
        finally:
            self._release()
        if failure is not None:
            raise BlobSyncFailed(
                f"{format_blob(self.partition, self.name)}: closed, but a sync failed ({failure}), so writes since "
                "the last successful sync may be lost"
            ) from failure

    def __del__(self) -> None:
        # An unclosed blob: release the descriptor (without syncing) like an unclosed file.
        fd = getattr(self, "_fd", -1)
        if fd >= 0 and getattr(self, "_closed", "") is None and not self._inflight:
            self._fd = -1
            self._closed = "closed"
            try:
                os.close(fd)
            finally:
                self._leave()
            warnings.warn(f"{format_blob(self.partition, self.name)} was never closed", ResourceWarning, stacklevel=2)


def _call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """From an executor thread: run ``fn`` on ``loop``, unless the loop is already gone
    (then nothing can be waiting for it, and the descriptor closes with the process)."""
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:
        if not loop.is_closed():
            raise
