"""The error hierarchy shared by every runtime (docs/SPEC.md section 3).

Every runtime failure is a subclass of :class:`Error`, so callers can catch the
whole family at once.  Messages name the address, partition or blob involved so a
failure in a large simulation points at its cause without a debugger.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "Exited",
    "Closed",
    "Timeout",
    "BindFailed",
    "ConnectionFailed",
    "SendFailed",
    "RecvFailed",
    "ReadFailed",
    "WriteFailed",
    "PartitionNameInvalid",
    "PartitionCreationFailed",
    "PartitionMissing",
    "PartitionCorrupt",
    "BlobOpenFailed",
    "BlobMissing",
    "BlobResizeFailed",
    "BlobSyncFailed",
    "BlobInsufficientLength",
    "BlobCorrupt",
    "OffsetOverflow",
    "RuntimeStalled",
    "RuntimeTimeout",
    "BlockingStalled",
]


class Error(Exception):
    """Base class of every error raised by commonware_runtime."""


class Exited(Error):
    """A task raised (and panics are caught); ``__cause__`` is the original exception."""


class Closed(Error):
    """The task was aborted, or the connection half / blob was closed or poisoned."""


class Timeout(Error):
    """An operation did not finish before its deadline."""


class BindFailed(Error):
    """The address could not be bound (usually: already in use)."""


class ConnectionFailed(Error):
    """Nobody is listening at the address, or the connection was refused."""


class SendFailed(Error):
    """Bytes could not be sent: the peer is gone or the link failed."""


class RecvFailed(Error):
    """Bytes could not be received: the peer is gone or the link failed."""


class ReadFailed(Error):
    """A blob read failed."""


class WriteFailed(Error):
    """A blob write failed."""


class PartitionNameInvalid(Error, ValueError):
    """A partition name does not match ``[A-Za-z0-9_-]+``."""


class PartitionCreationFailed(Error):
    """The partition could not be created."""


class PartitionMissing(Error):
    """The partition does not exist."""


class PartitionCorrupt(Error):
    """The partition exists but cannot be listed or read."""


class BlobOpenFailed(Error):
    """The blob could not be opened or created."""


class BlobMissing(Error):
    """The blob does not exist."""


class BlobResizeFailed(Error):
    """The blob could not be resized."""


class BlobSyncFailed(Error):
    """The blob could not be made durable."""


class BlobInsufficientLength(Error):
    """A read asked for bytes past the end of the blob."""


class BlobCorrupt(Error):
    """The blob's contents are not what was written."""


class OffsetOverflow(Error, ValueError):
    """An offset plus a length does not fit the blob's address space (u64)."""


class RuntimeStalled(Error):
    """Deterministic runtime: nothing is ready and no timer is pending, yet the root has not finished."""


class RuntimeTimeout(Error):
    """Deterministic runtime: virtual time passed the configured deadline."""


class BlockingStalled(RuntimeStalled):
    """Deterministic runtime: a blocking function (``spawn_blocking``, ``run_in_executor``,
    ``asyncio.to_thread``) did not return within ``blocking_timeout`` of wall-clock time; it
    appears to wait on the event loop, which cannot run while the function runs."""
