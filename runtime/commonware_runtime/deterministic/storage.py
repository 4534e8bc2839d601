"""Simulated storage of the deterministic runtime: in memory, with a crash model and faults.

Durability model (docs/SPEC.md section 6)
---------------------------------
Every blob keeps two images: the *current* one (what reads see, including unsynced
writes) and the *durable* one (the contents as of the last successful ``sync``), plus
the log of writes and resizes applied since that sync.  ``Storage.crash()`` builds the
storage a restarted process would see from the durable images, optionally replaying
part of each log on top (``StorageFaults.crash_unsynced``):

- ``"lose"``: every unsynced write and resize is lost;
- ``"prefix"``: a seeded number of the logged operations survives, in order, and the
  first lost write may survive torn (a seeded, strictly partial prefix of its bytes);
- ``"subset"``: each logged operation independently survives with probability 1/2,
  replayed in the original order (write-back caches reorder and drop writes).

Creating and removing partitions and blobs is durable at once (as if the directory
were fsynced after every metadata change): a blob created but never synced survives a
crash with its durable size, usually 0.

A failed ``sync`` (``StorageFaults.sync_rate``) poisons the blob, as production does after
a failed ``fdatasync``: a failed fsync may have dropped the dirty pages, so a retry that
succeeds would report lost writes as durable.  Until every handle of the blob is closed,
every ``read_at``, ``write_at``, ``resize`` and ``sync`` through any of them (and through
handles opened meanwhile) raises ``BlobSyncFailed``, ``close`` closes and raises it too,
and a crash keeps only the durable image, whatever ``crash_unsynced`` says.  When the last
handle closes, the unsynced writes are dropped: reopening finds the durable contents.

Sparse contents
---------------
Images are sparse (:class:`_Image`): extents of stored bytes, holes reading as zeros, so
``write_at(b"x", 2**40)`` or ``resize(2**50)`` stores a byte or nothing, as a file system
would.  A write landing less than ``HOLE`` (1 MiB) past the stored bytes fills the gap
with zeros instead, so a blob written densely is one ``bytearray`` and takes the fast
paths.  ``audit()`` hashes the contents canonically (zero blocks skipped, holes or not) and
costs what is stored; ``snapshot()`` copies the sparse images (checkpoints use it), while
``durable_image()`` returns plain bytes and so allocates each blob's full size.

Handles and removal
-------------------
Every ``open`` returns a new handle; the handles of one blob share its contents.
Removing a blob (or its partition) behaves like POSIX ``unlink``, as in commonware: the
name goes at once (``scan`` no longer lists it; opening it again creates a fresh, empty,
independent blob), while handles already open keep working on the removed blob's
contents.  Such a *detached* blob has no name left, so nothing done through its handles
reaches ``audit()``, ``durable_image()`` or a crash image, nor the blob that later takes
its name; its auditor events carry a ``.detached`` tag and a per-storage detach number so
they never read like operations on the named blob.  A crash discards detached blobs with
the rest of the process (their handles close like every other).  ``open_blobs`` counts
handles, so it drops when a handle is closed, not on removal.

Auditing and faults
-------------------
Operations here do the storage's work only.  What they report to the auditor and whether
they fail is asked of the storage's seam (:class:`.faults.StorageSeam`, built from the
auditor, the fault stream ``rng`` and the :class:`StorageFaults` plan): ``seam.fails`` /
``seam.blob_fails`` before an operation yields (each raises its own error here),
``seam.torn`` for how much of a failing write landed, ``seam.blob`` / ``seam.event``
once the effect is done, ``seam.draw`` / ``seam.coins`` for what survives a crash.  The
seam draws from the fault stream only when the matching rate is positive, so a run
without faults consumes nothing from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from typing import Any

from ..arguments import U64_MAX, check_blob_name, check_data, check_offset, check_partition, format_blob, read_at_args
from ..auditor import Auditor
from ..errors import (
    BlobInsufficientLength,
    BlobMissing,
    BlobOpenFailed,
    BlobResizeFailed,
    BlobSyncFailed,
    Closed,
    OffsetOverflow,
    PartitionCorrupt,
    PartitionMissing,
    ReadFailed,
    WriteFailed,
)
from ..metrics import RuntimeCounters
from .faults import CRASH_MODES, StorageFaults, StorageSeam

__all__ = ["StorageFaults", "Storage", "Blob", "CRASH_MODES"]

BytesLike = bytes | bytearray | memoryview

# Log entry kinds.  A log entry is (kind, offset_or_length, payload).
_WRITE = 0
_RESIZE = 1
_LogEntry = tuple[int, int, bytes]


#: A write that would leave a gap of at least this many zero bytes after the stored data
#: starts a new extent (a hole, as a file system leaves one) instead of filling the gap.
HOLE = 1 << 20
#: Grid of the audit hash: blocks of zeros hash the same whether stored or a hole.
_AUDIT_BLOCK = 1 << 16
_ZERO_BLOCK = bytes(_AUDIT_BLOCK)


class _Image:
    """The contents of a blob, sparse: sorted, disjoint extents of stored bytes and a size.

    Bytes in ``[0, size)`` that no extent covers are zeros (holes), so ``write_at(b"x",
    2**40)`` stores one byte, and ``resize`` up stores nothing, as on a real file system.
    There is always an extent at offset 0 (``data``, possibly empty): a blob written
    densely is just that one ``bytearray`` and every operation on it takes the fast path.
    """

    __slots__ = ("starts", "bufs", "size")

    def __init__(self, contents: BytesLike = b"") -> None:
        data = bytearray(contents)
        self.starts = [0]
        self.bufs = [data]
        self.size = len(data)

    def copy(self) -> _Image:
        image = _Image.__new__(_Image)
        image.starts = list(self.starts)
        image.bufs = [bytearray(buf) for buf in self.bufs]
        image.size = self.size
        return image

    def stored(self) -> int:
        """Bytes actually held (what copying this image costs)."""
        bufs = self.bufs
        return len(bufs[0]) if len(bufs) == 1 else sum(map(len, bufs))

    def dense(self) -> bytes:
        """Every byte of ``[0, size)``, holes as zeros (allocates ``size`` bytes)."""
        if len(self.bufs) == 1 and len(self.bufs[0]) == self.size:
            return bytes(self.bufs[0])
        return bytes(self.read(0, self.size))

    def read(self, offset: int, n: int) -> bytearray:
        """``n`` bytes at ``offset`` (the caller checked ``offset + n <= size``)."""
        out = bytearray(n)
        with memoryview(out) as view:
            self.read_into(view, offset, zeroed=True)
        return out

    def read_into(self, target: memoryview, offset: int, zeroed: bool = False) -> None:
        """Fill the flat byte view ``target`` from ``offset``; holes read as zeros (written
        into ``target`` unless ``zeroed`` says it holds zeros already)."""
        end = offset + target.nbytes
        starts, bufs = self.starts, self.bufs
        pos = offset  # everything before pos is filled
        i = bisect_right(starts, offset) - 1
        count = len(starts)
        while i < count and starts[i] < end:
            start, buf = starts[i], bufs[i]
            lo = offset if offset > start else start
            hi = start + len(buf)
            if hi > end:
                hi = end
            if lo < hi:
                if lo > pos and not zeroed:
                    target[pos - offset : lo - offset] = bytes(lo - pos)
                with memoryview(buf) as source:
                    target[lo - offset : hi - offset] = source[lo - start : hi - start]
                pos = hi
            i += 1
        if pos < end and not zeroed:
            target[pos - offset :] = bytes(end - pos)

    def write(self, offset: int, payload: bytes) -> None:
        """Store ``payload`` at ``offset``; a write of nothing changes nothing (pwrite(2))."""
        n = len(payload)
        if not n:
            return
        end = offset + n
        starts, bufs = self.starts, self.bufs
        data = bufs[0]
        size = len(data)
        if offset <= size + HOLE and (len(starts) == 1 or end <= size):
            # The dense case: inside or just past the extent at 0, no other extent in reach.
            if offset >= size:
                if offset > size:
                    data.extend(bytes(offset - size))
                data.extend(payload)
            else:
                data[offset:end] = payload
        else:
            # Merge every extent within HOLE of [offset, end) with the payload.
            lo = bisect_right(starts, offset)
            while lo > 0 and starts[lo - 1] + len(bufs[lo - 1]) + HOLE >= offset:
                lo -= 1
            hi = bisect_right(starts, end + HOLE)  # extents [lo, hi) merge
            if lo >= hi:
                starts.insert(lo, offset)
                bufs.insert(lo, bytearray(payload))
            elif hi - lo == 1 and starts[lo] <= offset:
                buf = bufs[lo]
                rel = offset - starts[lo]
                if rel > len(buf):
                    buf.extend(bytes(rel - len(buf)))
                buf[rel : rel + n] = payload
            else:
                first = offset if offset < starts[lo] else starts[lo]
                last = starts[hi - 1] + len(bufs[hi - 1])
                if last < end:
                    last = end
                merged = bytearray(last - first)
                for k in range(lo, hi):
                    at = starts[k] - first
                    merged[at : at + len(bufs[k])] = bufs[k]
                merged[offset - first : end - first] = payload
                starts[lo:hi] = [first]
                bufs[lo:hi] = [merged]
        if end > self.size:
            self.size = end

    def resize(self, length: int) -> None:
        """Truncate, or extend with a hole (nothing is stored for the new bytes)."""
        if length < self.size:
            starts, bufs = self.starts, self.bufs
            keep = bisect_left(starts, length)
            if keep < 1:
                keep = 1  # the extent at 0 always stays
            del starts[keep:], bufs[keep:]
            last = bufs[-1]
            if starts[-1] + len(last) > length:
                del last[length - starts[-1] :]
        self.size = length

    def digest_into(self, digest: Any) -> None:
        """Feed a hash the contents in a canonical form: the size, then every block of
        ``_AUDIT_BLOCK`` bytes (on a fixed grid) that is not all zeros, with its index.  A
        hole and stored zeros hash alike, so the digest depends on the contents only, and
        costs what is stored, never the size."""
        size = self.size
        digest.update(size.to_bytes(8, "little"))
        block = _AUDIT_BLOCK
        done = 0  # blocks below this index are hashed (or known to be zeros)
        for start, buf in zip(self.starts, self.bufs, strict=True):
            stop = start + len(buf)
            if stop > size:
                stop = size
            index = max(start // block, done)
            with memoryview(buf) as view:
                while index * block < stop:
                    at = index * block
                    length = block if at + block <= size else size - at
                    if start <= at and at + length <= start + len(buf):
                        part = view[at - start : at - start + length].tobytes()
                    else:  # the block straddles an extent's edge
                        part = bytes(self.read(at, length))
                    if part != (_ZERO_BLOCK if length == block else _ZERO_BLOCK[:length]):
                        digest.update(b"D" + index.to_bytes(8, "little"))
                        digest.update(part)
                    index += 1
            done = index


def _replay(image: _Image, entries: list[_LogEntry]) -> None:
    for kind, position, payload in entries:
        if kind == _WRITE:
            image.write(position, payload)
        else:
            image.resize(position)


class _BlobState:
    """The contents of one blob, shared by every handle opened on it."""

    __slots__ = ("partition", "name", "current", "durable", "log", "log_bytes", "handles", "detached", "poisoned")

    def __init__(self, partition: str, name: bytes, contents: BytesLike | _Image = b"") -> None:
        self.partition = partition
        self.name = name
        if isinstance(contents, _Image):
            self.current = contents.copy()
            self.durable = contents.copy()
        else:
            self.current = _Image(contents)
            self.durable = _Image(contents)
        self.log: list[_LogEntry] = []
        self.log_bytes = 0
        # Why a sync failed, until the last handle closes (see Blob.sync): while set, every
        # operation on the blob raises BlobSyncFailed and a crash keeps only the durable image.
        self.poisoned: str | None = None
        # Open handles by serial number (insertion ordered, never keyed by id()).
        self.handles: dict[int, Blob] = {}
        # None while the blob has a name; once removed, its detach number (unique per
        # Storage) so auditor events of different detached blobs stay distinct.
        self.detached: int | None = None

    def record(self, entry: _LogEntry) -> None:
        if self.detached is not None:
            return  # no name, so no durable image for the log to reach
        self.log.append(entry)
        self.log_bytes += len(entry[2])

    def make_durable(self) -> None:
        if not self.log:
            return
        if self.log_bytes >= self.current.stored():
            # Copying the whole image is cheaper than replaying a log that outweighs it.
            self.durable = self.current.copy()
        else:
            _replay(self.durable, self.log)
        self.log.clear()
        self.log_bytes = 0


class _Keep:
    """Sentinel: keep the crashed storage's binding."""


_KEEP = _Keep()


class Storage:
    """In-memory storage of one deterministic run.

    ``rng`` is the run's *fault* stream (separate from the scheduler's).  ``image`` (a
    mapping partition -> blob name -> bytes) seeds the contents, all durable, e.g. from
    :meth:`durable_image` or :meth:`snapshot` of a crashed run.
    """

    def __init__(
        self,
        *,
        auditor: Auditor | None,
        counters: RuntimeCounters,
        rng: random.Random,
        faults: StorageFaults | None = None,
        image: Mapping[str, Mapping[bytes, BytesLike | _Image]] | None = None,
    ) -> None:
        if not isinstance(counters, RuntimeCounters):
            raise TypeError(f"counters must be RuntimeCounters, got {type(counters).__name__}")
        if faults is None:
            faults = StorageFaults()
        elif not isinstance(faults, StorageFaults):
            raise TypeError(f"faults must be StorageFaults or None, got {type(faults).__name__}")
        seam = StorageSeam(auditor, rng, faults)
        partitions: dict[str, dict[bytes, _BlobState]] = {}
        if image is not None:
            for partition in sorted(image):
                partition = check_partition(partition)
                blobs: dict[bytes, _BlobState] = {}
                source = image[partition]
                for raw_name in sorted(source):
                    name = check_blob_name(raw_name)
                    contents = source[raw_name]
                    if not isinstance(contents, _Image):
                        contents = check_data(contents, f"image[{partition!r}][{name!r}]")
                    blobs[name] = _BlobState(partition, name, contents)
                partitions[partition] = blobs
        # Every audited event and fault decision of this storage goes through its seam.
        self._seam = seam
        self._counters = counters
        self._partitions = partitions
        self._crashed = False
        self._next_handle = 0
        self._next_detached = 0
        # Every open handle, named or detached, by serial (so a crash closes them all).
        self._open: dict[int, Blob] = {}

    # -- properties -----------------------------------------------------------------

    @property
    def faults(self) -> StorageFaults:
        """The live fault controls (``context.storage_faults``)."""
        return self._seam.plan

    @faults.setter
    def faults(self, value: StorageFaults) -> None:
        if not isinstance(value, StorageFaults):
            raise TypeError(f"faults must be StorageFaults, got {type(value).__name__}")
        self._seam.plan = value

    @property
    def crashed(self) -> bool:
        """True once :meth:`crash` was called: every operation then raises ``Closed``."""
        return self._crashed

    # -- internals ------------------------------------------------------------------

    def _check_alive(self, op: str) -> None:
        if self._crashed:
            raise Closed(f"storage {op} after a crash: this storage belongs to the crashed process")

    def _detach(self, state: _BlobState) -> None:
        """The blob lost its name: open handles keep its contents, nothing else sees them."""
        if state.handles:
            state.detached = self._next_detached
            self._next_detached += 1
            # Its durable image and unsynced log can never be seen again: free them.
            state.durable = _Image()
            state.log.clear()
            state.log_bytes = 0

    # -- operations -----------------------------------------------------------------

    async def open(self, partition: str, name: BytesLike) -> tuple[Blob, int]:
        """Open (creating if needed, durably) a blob; returns the handle and its current size."""
        partition = check_partition(partition)
        name = check_blob_name(name)
        self._check_alive("open")
        seam = self._seam
        if seam.fails("open", partition, name):
            raise BlobOpenFailed(f"injected fault: open of {format_blob(partition, name)} failed")
        await asyncio.sleep(0)
        self._check_alive("open")
        blobs = self._partitions.get(partition)
        if blobs is None:
            blobs = self._partitions[partition] = {}
        state = blobs.get(name)
        created = state is None
        if state is None:
            state = blobs[name] = _BlobState(partition, name)
        handle = Blob(self, state, self._next_handle)
        self._next_handle += 1
        state.handles[handle._serial] = handle
        self._open[handle._serial] = handle
        self._counters.storage["open_blobs"] += 1
        size = state.current.size
        seam.event("storage.open", partition, name, size, int(created))
        return handle, size

    async def remove(self, partition: str, name: BytesLike | None = None) -> None:
        """Remove one blob, or the whole partition when ``name`` is None (durable at once).

        Like POSIX ``unlink``: handles already open keep working on the removed blob's
        contents, detached from the name (see the module documentation).
        An injected fault raises ``WriteFailed`` (removal is a mutation of storage; the
        ``*Missing`` errors are kept for things that really are missing).
        """
        partition = check_partition(partition)
        blob_name = None if name is None else check_blob_name(name)
        self._check_alive("remove")
        seam = self._seam
        if seam.fails("remove", partition, blob_name or b""):
            what = f"partition {partition!r}" if blob_name is None else format_blob(partition, blob_name)
            raise WriteFailed(f"injected fault: remove of {what} failed")
        await asyncio.sleep(0)
        self._check_alive("remove")
        blobs = self._partitions.get(partition)
        if blobs is None:
            raise PartitionMissing(f"partition {partition!r} does not exist")
        if blob_name is None:
            for existing in sorted(blobs):
                self._detach(blobs[existing])
            del self._partitions[partition]
            seam.event("storage.remove", partition)
            return
        state = blobs.get(blob_name)
        if state is None:
            raise BlobMissing(f"{format_blob(partition, blob_name)} does not exist")
        self._detach(state)
        del blobs[blob_name]
        seam.event("storage.remove", partition, blob_name)

    async def scan(self, partition: str) -> list[bytes]:
        """The names of the partition's blobs, sorted.  An injected fault raises ``PartitionCorrupt``."""
        partition = check_partition(partition)
        self._check_alive("scan")
        seam = self._seam
        if seam.fails("scan", partition, b""):
            raise PartitionCorrupt(f"injected fault: scan of partition {partition!r} failed")
        await asyncio.sleep(0)
        self._check_alive("scan")
        blobs = self._partitions.get(partition)
        if blobs is None:
            raise PartitionMissing(f"partition {partition!r} does not exist")
        names = sorted(blobs)
        seam.event("storage.scan", partition, *names)
        return names

    # -- durability -----------------------------------------------------------------

    def audit(self) -> str:
        """Hex SHA-256 of the durable contents (what survives a crash that loses unsynced data)."""
        digest = hashlib.sha256()
        for partition in sorted(self._partitions):
            encoded = partition.encode()
            digest.update(b"P" + len(encoded).to_bytes(8, "little") + encoded)
            blobs = self._partitions[partition]
            for name in sorted(blobs):
                digest.update(b"B" + len(name).to_bytes(8, "little") + name)
                blobs[name].durable.digest_into(digest)
        return digest.hexdigest()

    def durable_image(self) -> dict[str, dict[bytes, bytes]]:
        """A copy of the durable contents: partition -> blob name -> bytes, sorted.

        Holes become zeros here: a sparse blob costs its full size (see :meth:`snapshot`)."""
        return {
            partition: {name: blobs[name].durable.dense() for name in sorted(blobs)}
            for partition, blobs in sorted(self._partitions.items())
        }

    def snapshot(self) -> dict[str, dict[bytes, _Image]]:
        """The durable contents as sparse images (what a checkpoint keeps): costs what is
        stored, not the blobs' sizes.  ``Storage(image=...)`` takes it like ``durable_image``."""
        return {
            partition: {name: blobs[name].durable.copy() for name in sorted(blobs)}
            for partition, blobs in sorted(self._partitions.items())
        }

    def _survivor(self, state: _BlobState, mode: str) -> _Image:
        image = state.durable.copy()
        log = state.log
        if mode == "lose" or not log or state.poisoned is not None:
            # A poisoned blob's unsynced writes are lost whatever the mode: the failed sync
            # may have dropped them, and nothing later can have made them durable.
            return image
        seam = self._seam
        if mode == "prefix":
            kept = seam.draw(len(log) + 1)
            _replay(image, log[:kept])
            torn = 0
            if kept < len(log):
                kind, offset, payload = log[kept]
                if kind == _WRITE and len(payload) >= 2:
                    torn = seam.draw(len(payload))
                    image.write(offset, payload[:torn])
            seam.event("storage.crash.prefix", state.partition, state.name, len(log), kept, torn)
        else:
            mask = seam.coins(len(log))
            _replay(image, [entry for entry, keep in zip(log, mask, strict=True) if keep])
            seam.event("storage.crash.subset", state.partition, state.name, mask)
        return image

    def crash(
        self,
        *,
        auditor: Auditor | None | _Keep = _KEEP,
        counters: RuntimeCounters | _Keep = _KEEP,
        rng: random.Random | _Keep = _KEEP,
        faults: StorageFaults | _Keep = _KEEP,
    ) -> Storage:
        """The storage a restarted process would see; this one and its handles become closed.

        Synced bytes survive; unsynced ones per ``faults.crash_unsynced`` (seeded draws from
        this storage's fault stream).  The new storage reuses this one's auditor, counters,
        fault stream and fault controls unless given others.  Calling ``crash`` again on a
        crashed storage is allowed and draws a new survivor image from the same frozen state.
        """
        seam = self._seam
        mode = seam.plan.crash_unsynced
        seam.event("storage.crash", mode)
        image: dict[str, dict[bytes, _Image]] = {}
        for partition in sorted(self._partitions):
            blobs = self._partitions[partition]
            image[partition] = {name: self._survivor(blobs[name], mode) for name in sorted(blobs)}
        if not self._crashed:
            self._crashed = True
            # Detached blobs are in no image: they vanish, their handles close with the rest.
            for handle in list(self._open.values()):
                handle._release("crashed")
        return Storage(
            auditor=seam.auditor if isinstance(auditor, _Keep) else auditor,
            counters=self._counters if isinstance(counters, _Keep) else counters,
            rng=seam.rng if isinstance(rng, _Keep) else rng,
            faults=seam.plan if isinstance(faults, _Keep) else faults,
            image=image,
        )


class Blob:
    """A handle on one blob.  Handles of the same blob share its contents."""

    __slots__ = ("_storage", "_state", "_serial", "_closed")

    def __init__(self, storage: Storage, state: _BlobState, serial: int) -> None:
        self._storage = storage
        self._state = state
        self._serial = serial
        # None while open, else why it closed: "closed" or "crashed".
        self._closed: str | None = None

    def __repr__(self) -> str:
        state = self._state
        status = f"size={state.current.size}" if self._closed is None else self._closed
        if state.detached is not None:
            status += " removed"
        return f"<Blob {state.partition}/{state.name!r} {status}>"

    @property
    def partition(self) -> str:
        return self._state.partition

    @property
    def name(self) -> bytes:
        return self._state.name

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def size(self) -> int:
        """Current logical size, including unsynced writes and resizes (also while the
        blob is poisoned, as in production)."""
        if self._closed is not None:
            self._live("size")
        return self._state.current.size

    def _live(self, op: str) -> _BlobState:
        reason = self._closed
        if reason is not None:
            where = format_blob(self._state.partition, self._state.name)
            if reason == "crashed":
                raise Closed(f"{op} on {where}: the storage crashed")
            raise Closed(f"{op} on {where}: the handle is closed")
        state = self._state
        if state.poisoned is not None:
            raise BlobSyncFailed(
                f"{op} on {format_blob(state.partition, state.name)}: an earlier sync failed ({state.poisoned}), "
                "so writes since the last successful sync may have been lost; close every handle of it and reopen it"
            )
        return state

    def _release(self, reason: str) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        state = self._state
        del state.handles[self._serial]
        storage = self._storage
        del storage._open[self._serial]
        storage._counters.storage["open_blobs"] -= 1
        if reason == "closed":
            storage._seam.blob("storage.close", state)
        if state.poisoned is not None and not state.handles and reason == "closed":
            # The last handle of a poisoned blob closed: reopening finds the durable
            # contents (the failed sync may have dropped the dirty pages), unpoisoned.
            state.poisoned = None
            if state.log:
                state.current = state.durable.copy()
                state.log.clear()
                state.log_bytes = 0

    async def read_at(self, n_or_buffer: int | bytearray | memoryview, offset: int) -> bytes | bytearray | memoryview:
        """Read exactly n bytes at ``offset`` (or fill the given writable buffer and return it)."""
        n, offset, buffer = read_at_args(n_or_buffer, offset, self)
        state = self._live("read")
        storage = self._storage
        seam = storage._seam
        if seam.blob_fails("read", state):
            raise ReadFailed(f"injected fault: read of {format_blob(state.partition, state.name)} failed")
        await asyncio.sleep(0)
        state = self._live("read")
        end = offset + n
        current = state.current
        size = current.size
        if end > size:
            raise BlobInsufficientLength(
                f"read of {format_blob(state.partition, state.name)} at offset {offset} length {n} "
                f"passes its end (size {size})"
            )
        data = current.bufs[0]  # dense blobs: all of it; holes and far extents take read()
        result: bytes | bytearray | memoryview
        if buffer is None:
            if end <= len(data):
                with memoryview(data) as source, source[offset:end] as part:
                    result = part.tobytes()
            else:
                result = bytes(current.read(offset, n))
            seam.blob("storage.read", state, offset, result)
        else:
            with memoryview(buffer) as target, target.cast("B") as flat:
                if end <= len(data):
                    with memoryview(data) as source:
                        flat[:] = source[offset:end]
                else:
                    current.read_into(flat, offset)
                seam.blob("storage.read", state, offset, flat)
            result = buffer
        counters = storage._counters.storage
        counters["reads"] += 1
        counters["bytes_read"] += n
        return result

    async def write_at(self, data: BytesLike, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (not durable until :meth:`sync`); gaps read as zeros."""
        payload = bytes(check_data(data))  # snapshot now: the caller may reuse its buffer
        offset = check_offset(offset)
        if offset + len(payload) > U64_MAX:
            raise OffsetOverflow(
                f"write of {len(payload)} bytes at offset {offset} overflows u64 in {format_blob(self.partition, self.name)}"
            )
        state = self._live("write")
        storage = self._storage
        seam = storage._seam
        if seam.blob_fails("write", state):
            detail = ""
            applied = seam.torn(state, offset, len(payload))
            if applied:
                prefix = payload[:applied]
                state.current.write(offset, prefix)
                state.record((_WRITE, offset, prefix))
                detail = f" after applying {applied} of {len(payload)} bytes"
            raise WriteFailed(
                f"injected fault: write of {len(payload)} bytes at offset {offset} to "
                f"{format_blob(state.partition, state.name)} failed{detail}"
            )
        await asyncio.sleep(0)
        state = self._live("write")
        state.current.write(offset, payload)
        state.record((_WRITE, offset, payload))
        counters = storage._counters.storage
        counters["writes"] += 1
        counters["bytes_written"] += len(payload)
        seam.blob("storage.write", state, offset, payload)

    async def resize(self, length: int) -> None:
        """Truncate or zero-extend to ``length`` bytes (not durable until :meth:`sync`);
        extending stores nothing (a hole)."""
        length = check_offset(length, "length")
        if length > U64_MAX:
            raise OffsetOverflow(f"resize to {length} bytes overflows u64 in {format_blob(self.partition, self.name)}")
        state = self._live("resize")
        seam = self._storage._seam
        if seam.blob_fails("resize", state):
            raise BlobResizeFailed(f"injected fault: resize of {format_blob(state.partition, state.name)} to {length} failed")
        await asyncio.sleep(0)
        state = self._live("resize")
        state.current.resize(length)
        state.record((_RESIZE, length, b""))
        seam.blob("storage.resize", state, length)

    async def sync(self) -> None:
        """Make every earlier write and resize of this blob (through any handle) durable.

        A failed sync poisons the blob, as in production (a failed ``fsync`` may have
        dropped dirty pages, so a retry that succeeded would be a lie): until every handle
        of it is closed, every operation on it raises ``BlobSyncFailed``, and a crash keeps
        only what the last successful sync made durable.  Reopening it afterwards finds
        those durable contents."""
        state = self._live("sync")
        storage = self._storage
        seam = storage._seam
        if seam.blob_fails("sync", state):
            state.poisoned = "injected fault"
            raise BlobSyncFailed(
                f"injected fault: sync of {format_blob(state.partition, state.name)} failed; the blob is "
                "poisoned until every handle of it is closed and it is reopened"
            )
        await asyncio.sleep(0)
        state = self._live("sync")
        state.make_durable()
        storage._counters.storage["syncs"] += 1
        seam.blob("storage.sync", state)

    async def close(self) -> None:
        """Sync, then close the handle; later operations raise ``Closed``.

        Idempotent: closing a handle that is already closed (or whose storage crashed)
        does nothing.  A handle of a removed blob syncs (to no effect) and closes
        normally.  If the sync fails, or failed earlier (the blob is poisoned), the
        handle is closed anyway (as Python files do) and ``BlobSyncFailed`` propagates.
        """
        if self._closed is not None:
            return
        state = self._state
        if state.poisoned is not None:
            reason = state.poisoned
            self._release("closed")
            raise BlobSyncFailed(
                f"{format_blob(state.partition, state.name)}: closed, but a sync failed ({reason}), so writes "
                "since the last successful sync may be lost"
            )
        try:
            await self.sync()
        except Closed:
            # Closed meanwhile (concurrent close or crash): nothing left to do.
            return
        finally:
            self._release("closed")
