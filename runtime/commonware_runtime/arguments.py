"""Validation and normalisation of arguments shared by both runtimes.

Every public call validates its input here *before* any effect, so a bad value
raises ``TypeError``/``ValueError`` naming the value at the call site (docs/SPEC.md section 3).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Protocol

from .errors import OffsetOverflow, PartitionNameInvalid

Duration = float | int | timedelta
Address = tuple[str, int] | str

_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_PARTITION = re.compile(r"[A-Za-z0-9_-]+\Z")
U64_MAX = (1 << 64) - 1
NS_PER_SECOND = 1_000_000_000
_INF = float("inf")


def duration_ns(value: Duration, what: str = "duration") -> int:
    """Convert seconds (float/int) or a ``timedelta`` to integer nanoseconds (>= 0)."""
    if type(value) is float and 0.0 <= value < _INF:
        # Fast path (every sleep): seconds_to_ns inlined; NaN/inf/negatives fall through.
        whole = int(value)  # == math.floor for value >= 0
        return whole * NS_PER_SECOND + round((value - whole) * NS_PER_SECOND)
    if isinstance(value, timedelta):
        ns = (value.days * 86_400 + value.seconds) * NS_PER_SECOND + value.microseconds * 1_000
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        ns = seconds_to_ns(value)
    else:
        raise TypeError(f"{what} must be seconds (float) or timedelta, got {type(value).__name__} {value!r}")
    if ns < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return ns


def duration_seconds(value: Duration, what: str = "duration") -> float:
    return duration_ns(value, what) / NS_PER_SECOND


def optional_duration_ns(value: Duration | None, what: str) -> int | None:
    return None if value is None else duration_ns(value, what)


def timestamp_ns(value: float | int, what: str = "deadline") -> int:
    """A point in time as seconds since the UNIX epoch (may be any finite float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be seconds since the epoch (float), got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return seconds_to_ns(value)


def seconds_to_ns(value: float | int) -> int:
    """Exact for ints; for floats, whole seconds and the fraction are converted apart so
    epoch-sized values (~1.7e9 s) keep nanosecond precision (``value * 1e9`` would not)."""
    if isinstance(value, int):
        return value * NS_PER_SECOND
    whole = math.floor(value)
    return int(whole) * NS_PER_SECOND + round((value - whole) * NS_PER_SECOND)


def check_label(label: object) -> str:
    if not isinstance(label, str):
        raise TypeError(f"label must be a str, got {type(label).__name__} {label!r}")
    if not _LABEL.match(label):
        raise ValueError(f"label {label!r} is invalid: labels match [A-Za-z][A-Za-z0-9_]*")
    if label == "runtime":
        raise ValueError("label 'runtime' is reserved for the runtime's own metrics")
    return label


def join_label(prefix: str, label: str) -> str:
    return f"{prefix}_{label}" if prefix else label


#: Longest partition name: one path component on common filesystems.
PARTITION_MAX = 255


def check_partition(partition: object) -> str:
    if not isinstance(partition, str):
        raise TypeError(f"partition must be a str, got {type(partition).__name__} {partition!r}")
    if not _PARTITION.match(partition):
        raise PartitionNameInvalid(f"partition name {partition!r} is invalid: partitions match [A-Za-z0-9_-]+")
    if len(partition) > PARTITION_MAX:
        # A partition is one directory in production; both runtimes share the limit so that
        # code tested on the deterministic one cannot fail on a real filesystem.
        raise PartitionNameInvalid(
            f"partition name {partition[:32]!r}... is invalid: {len(partition)} characters, at most {PARTITION_MAX}"
        )
    return partition


def check_blob_name(name: object) -> bytes:
    if isinstance(name, (bytearray, memoryview)):
        name = bytes(name)
    if not isinstance(name, bytes):
        raise TypeError(f"blob name must be bytes, got {type(name).__name__} {name!r}")
    if not name:
        raise ValueError("blob name must not be empty")
    return name


def check_offset(offset: object, what: str = "offset") -> int:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"{what} must be an int, got {type(offset).__name__} {offset!r}")
    if offset < 0:
        raise ValueError(f"{what} must not be negative, got {offset}")
    return offset


def check_data(data: object, what: str = "data") -> bytes | bytearray | memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes-like, got {type(data).__name__}")
    return data


def check_count(n: object, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{what} must be an int, got {type(n).__name__} {n!r}")
    if n < 0:
        raise ValueError(f"{what} must not be negative, got {n}")
    return n


def _shown(value: object) -> str:
    """A wrong argument as a message names it: its type, and its repr when that is short."""
    text = repr(value)
    return type(value).__name__ if len(text) > 40 else f"{type(value).__name__} {text}"


class NamedBlob(Protocol):
    """A blob handle as messages name it (both runtimes' ``Blob``)."""

    @property
    def partition(self) -> str: ...

    @property
    def name(self) -> bytes: ...


def read_at_args(n_or_buffer: object, offset: object, blob: NamedBlob) -> tuple[int, int, bytearray | memoryview | None]:
    """``blob.read_at(n_or_buffer, offset)``'s arguments as ``(n, offset, buffer)``, on
    every runtime.

    ``n_or_buffer`` is a byte count (an ``int``, not a ``bool``, >= 0) or a writable,
    C-contiguous ``bytearray``/``memoryview`` to fill (``buffer``, else None).  A wrong
    type is a ``TypeError`` (``bytes`` and read-only views included: a read cannot fill
    them), a negative count or offset a ``ValueError``, ``offset + n`` past u64
    ``OffsetOverflow``; each names the value.  ``blob`` is only read to name it in the
    overflow message (passing the handle is the cheapest call on the hot path).
    """
    # The common call (two non-negative ints) costs two type tests and two comparisons.
    if type(n_or_buffer) is int and n_or_buffer >= 0:
        n = n_or_buffer
        buffer = None
    elif isinstance(n_or_buffer, (bytearray, memoryview)):
        buffer = n_or_buffer
        with memoryview(buffer) as view:
            if view.readonly:
                raise TypeError("read_at buffer must be writable, got a read-only memoryview")
            # A read fills the buffer as flat bytes (production casts it to "B"), which
            # only a C-contiguous view allows; refused here so both runtimes agree.
            if not view.c_contiguous:
                raise TypeError(
                    f"read_at buffer must be C-contiguous, got a memoryview with shape {view.shape} and strides {view.strides}"
                )
            n = view.nbytes
    elif isinstance(n_or_buffer, int) and not isinstance(n_or_buffer, bool):
        n = check_count(n_or_buffer, "read_at byte count")  # negative, or an int subclass
        buffer = None
    elif isinstance(n_or_buffer, bytes):
        raise TypeError(
            f"read_at buffer must be writable (a bytearray or a writable memoryview), got bytes of length {len(n_or_buffer)}"
        )
    else:
        raise TypeError(
            f"read_at takes a byte count (int) or a writable buffer (bytearray, memoryview), got {_shown(n_or_buffer)}"
        )
    if type(offset) is not int or offset < 0:
        offset = check_offset(offset)
    if offset + n > U64_MAX:
        raise OffsetOverflow(f"read of {n} bytes at offset {offset} overflows u64 in {format_blob(blob.partition, blob.name)}")
    return n, offset, buffer


#: Largest length one ``Stream.recv(n)`` may ask for, on every runtime: 64 GiB.  A length
#: beyond it (like a negative one) is a ``ValueError`` at the call: no receive of that size
#: can complete, so such a length is a bug or a hostile length prefix.  Below it a receive
#: waits for its bytes, and the memory it uses grows with the bytes that arrive, never with
#: ``n``: check a peer's length prefix against your protocol's own limit all the same.
MAX_RECV = 1 << 36


def check_recv_length(n: object) -> int:
    """A valid ``recv`` length (see ``MAX_RECV``), else ``TypeError``/``ValueError`` naming it."""
    n = check_count(n, "recv length")
    if n > MAX_RECV:
        raise ValueError(
            f"recv length {n} is larger than MAX_RECV ({MAX_RECV} bytes, 64 GiB): no receive can be "
            "that large (check a peer's length prefix against your protocol's limit before receiving)"
        )
    return n


def parse_address(addr: object) -> tuple[str, int]:
    """Accept ``(host, port)`` or ``"host:port"`` (``"[v6]:port"`` too)."""
    if isinstance(addr, str):
        host, sep, port_text = addr.rpartition(":")
        if not sep or not host:
            raise ValueError(f"address {addr!r} is not 'host:port'")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"address {addr!r} has a non-numeric port") from None
    elif isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        if not isinstance(host, str):
            raise TypeError(f"address host must be a str, got {host!r} in {addr!r}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"address port must be an int, got {port!r} in {addr!r}")
    else:
        raise TypeError(f"address must be (host, port) or 'host:port', got {addr!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"address port {port} out of range 0..65535 in {addr!r}")
    return host, port


def format_blob(partition: str, name: bytes) -> str:
    """How every message names a blob (both runtimes alike); very long names are cut."""
    shown = repr(name) if len(name) <= 64 else f"{name[:64]!r}...({len(name)} bytes)"
    return f"blob {shown} in partition {partition!r}"


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
