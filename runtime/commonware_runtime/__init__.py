"""commonware_runtime: one Context API, a deterministic runtime for tests and a production one.

>>> from commonware_runtime import deterministic
>>> deterministic.Runner.seeded(7).start(lambda ctx: ctx.sleep(1.0))
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from .arguments import MAX_RECV
from .errors import (
    BindFailed,
    BlobCorrupt,
    BlobInsufficientLength,
    BlobMissing,
    BlobOpenFailed,
    BlobResizeFailed,
    BlobSyncFailed,
    BlockingStalled,
    Closed,
    ConnectionFailed,
    Error,
    Exited,
    OffsetOverflow,
    PartitionCorrupt,
    PartitionCreationFailed,
    PartitionMissing,
    PartitionNameInvalid,
    ReadFailed,
    RecvFailed,
    RuntimeStalled,
    RuntimeTimeout,
    SendFailed,
    Timeout,
    WriteFailed,
)
from .signal import Signal, Signaler, reschedule
from .tasks import Handle

try:
    __version__ = _version("commonware-runtime")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "MAX_RECV", "BindFailed", "BlobCorrupt", "BlobInsufficientLength", "BlobMissing", "BlobOpenFailed", "BlobResizeFailed",
    "BlobSyncFailed", "BlockingStalled", "Closed", "ConnectionFailed", "Error", "Exited", "Handle", "OffsetOverflow",
    "PartitionCorrupt", "PartitionCreationFailed", "PartitionMissing", "PartitionNameInvalid", "ReadFailed",
    "RecvFailed", "RuntimeStalled", "RuntimeTimeout", "SendFailed", "Signal", "Signaler", "Timeout",
    "WriteFailed", "deterministic", "production", "mocks", "buffer", "interfaces", "reschedule",
]


def __getattr__(name: str) -> object:
    # Submodules load on first use so importing the package stays cheap.
    if name in ("deterministic", "production", "mocks", "buffer", "interfaces"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'commonware_runtime' has no attribute {name!r}")
