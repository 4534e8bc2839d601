"""``COMPLETED``: what the network's synchronous ``close()`` methods return.

Closing a connection half or a listener needs no waiting (the bytes already sent are
flushed in the background), so ``close()`` is synchronous, as in asyncio's transports.
Blobs, on the other hand, close with ``await blob.close()``.  So that protocol code never
has to remember which is which, the network's ``close()`` returns this object, which can
be awaited (a no-op): ``sink.close()`` and ``await sink.close()`` both work.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

__all__ = ["Completed", "COMPLETED"]


class Completed:
    """An awaitable that has already finished (awaiting it returns ``None`` at once)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # makes this a generator function that finishes without suspending

    def __repr__(self) -> str:
        return "<completed>"


COMPLETED = Completed()
