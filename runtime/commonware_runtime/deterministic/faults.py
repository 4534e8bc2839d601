"""The seam between the simulated world and the run: what is audited, what goes wrong.

The simulated storage (:mod:`.storage`) and network (:mod:`.network`) do their operations.
Two other concerns ride along with every operation: the *auditor* (each operation is
folded into the run's fingerprint, with its payload) and the *fault plan* (whether the
operation fails, is torn, delayed or held, drawn from the run's seeded fault stream).
Both reach the subsystems through one object per subsystem, its seam, built here:

``Seam`` (both subsystems)
    ``event(tag, *fields)``        report what happened (to the auditor, if there is one)
    ``fault(rate, tag, *fields)``  does it fail?  One draw, audited with its outcome
    ``draw(n)``                    a draw in ``0..n-1``, the caller audits its meaning
    ``coins(count)``               ``count`` fair coins as bytes of 0/1

``StorageSeam`` adds the storage's fault plan (:class:`StorageFaults`, live and replaceable):
``fails(op, partition, name)`` and ``blob_fails(op, blob)`` for each operation's error,
``torn(blob, offset, size)`` for a failing write that lands partly, and ``blob(tag, blob,
*fields)``, which frames events on a blob (a removed, *detached* blob's events carry
``.detached`` and its detach number, so they never read as the named blob's).

``NetworkSeam`` holds the network's fault plan, its links (latency, jitter) and partitions:
``delay(flow)`` for each send, ``latency(flow)`` for an EOF, ``partitioned(a, b)``, and
the audited changes ``set_link``, ``cut`` and ``mend``.

Rules kept here once, for every subsystem:

- the fault stream is drawn only when the plan enables the fault (a rate or a jitter
  above zero), so a run without faults draws nothing from it, and a fault that is off
  adds no draws to a run that uses others;
- every decision drawn is audited with its outcome, so two runs with the same auditor
  state made the same decisions;
- without an auditor (a ``Storage`` or ``Network`` built bare, in tests) every report is a
  no-op and nothing else changes.

Why a seam and not wrapper layers (commonware's Rust runtime stacks audited and faulty
storage and network around the simulated ones): a Python layer costs a coroutine frame
per operation, and the hot paths (a simulated 4 KiB read costs about ten microseconds,
most of it the scheduling hop) would pay that twice.  The decisions also sit *inside* the operations: a fault is decided before the
operation yields, an event reports what only the operation knows (whether ``open``
created the blob, which names ``scan`` found, how many bytes a torn write left).  So the
operation calls the seam at those points and its body reads as the operation; the seam
is where the auditing and fault rules live.  ``event`` is the auditor's own bound method
(or a no-op), so reporting costs what calling the auditor directly cost.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..auditor import Auditor, Field

if TYPE_CHECKING:  # the seam reads their audited identity: a blob's name, a flow's ends
    from .network import _Flow
    from .storage import _BlobState

__all__ = ["Seam", "StorageSeam", "NetworkSeam", "StorageFaults", "CRASH_MODES"]


class _Report(Protocol):
    def __call__(self, tag: str, *fields: Field) -> None: ...


def _unaudited(tag: str, *fields: Field) -> None:
    """``event`` of a seam without an auditor."""


class Seam:
    """One subsystem's line to the run's auditor and fault stream (see the module doc)."""

    __slots__ = ("auditor", "rng", "event")

    # An instance slot, not a method: it is the auditor's bound ``event`` (or a no-op), so a
    # report costs one call, as calling the auditor did before the seam existed.
    event: _Report

    def __init__(self, auditor: Auditor | None, rng: random.Random) -> None:
        if auditor is not None and not isinstance(auditor, Auditor):
            raise TypeError(f"auditor must be an Auditor or None, got {type(auditor).__name__}")
        if not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        self.auditor = auditor
        self.rng = rng
        self.event = _unaudited if auditor is None else auditor.event

    def fault(self, rate: float, tag: str, *fields: Field) -> bool:
        """True with probability ``rate``; audited as ``tag, *fields, failed``.  Nothing is
        drawn or audited when ``rate`` is 0."""
        if rate <= 0.0:
            return False
        failed = self.rng.random() < rate
        self.event(tag, *fields, int(failed))
        return failed

    def draw(self, n: int) -> int:
        """A uniform draw in ``0..n-1`` from the fault stream (the caller audits what it means)."""
        return self.rng.randrange(n)

    def coins(self, count: int) -> bytes:
        """``count`` fair coins from the fault stream, one byte (0 or 1) each."""
        rng = self.rng
        return bytes(rng.getrandbits(1) for _ in range(count))


# -- storage -----------------------------------------------------------------------------

CRASH_MODES = ("lose", "prefix", "subset")
_RATE_FIELDS = (
    "open_rate",
    "read_rate",
    "write_rate",
    "sync_rate",
    "resize_rate",
    "remove_rate",
    "scan_rate",
    "partial_write_rate",
)
# The operation a fault decision is audited as -> the StorageFaults field giving its rate.
_RATE_OF = {field[: -len("_rate")]: field for field in _RATE_FIELDS}


def _check_rate(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"StorageFaults.{field} must be a probability (float), got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"StorageFaults.{field} must be in [0, 1], got {value!r}")
    return float(value)


@dataclass
class StorageFaults:
    """Fault controls of the simulated storage; mutable while the runtime runs.

    Each ``*_rate`` is the probability that one operation of that kind fails with its
    error.  ``partial_write_rate`` is the probability that a *failing* write of at least
    two bytes first applied a seeded, strictly partial prefix of its bytes (unsynced).
    ``crash_unsynced`` picks what survives a crash of the unsynced operations: ``"lose"``,
    ``"prefix"`` or ``"subset"`` (see :mod:`commonware_runtime.deterministic.storage`).
    """

    open_rate: float = 0.0
    read_rate: float = 0.0
    write_rate: float = 0.0
    sync_rate: float = 0.0
    resize_rate: float = 0.0
    remove_rate: float = 0.0
    scan_rate: float = 0.0
    partial_write_rate: float = 0.0
    crash_unsynced: str = "lose"

    def __setattr__(self, field: str, value: object) -> None:
        # Validating here covers both construction (dataclass __init__ assigns) and later
        # mutation; unknown names are refused so a typo cannot silently disable a fault.
        if field in _RATE_FIELDS:
            value = _check_rate(field, value)
        elif field == "crash_unsynced":
            if not isinstance(value, str):
                raise TypeError(f"StorageFaults.crash_unsynced must be a str, got {type(value).__name__} {value!r}")
            if value not in CRASH_MODES:
                raise ValueError(f"StorageFaults.crash_unsynced must be one of {CRASH_MODES}, got {value!r}")
        else:
            raise AttributeError(f"StorageFaults has no field {field!r}")
        object.__setattr__(self, field, value)


class StorageSeam(Seam):
    """The simulated storage's seam: its fault plan, and events framed per blob."""

    __slots__ = ("plan",)

    def __init__(self, auditor: Auditor | None, rng: random.Random, plan: StorageFaults) -> None:
        super().__init__(auditor, rng)
        self.plan = plan

    def blob(self, tag: str, blob: _BlobState, *fields: Field) -> None:
        """Report an operation on ``blob``.  A detached blob has no name left: its events say
        so (``tag.detached``) and carry its detach number, so they stay distinct from the
        named blob's and from other detached blobs'."""
        detached = blob.detached
        if detached is None:
            self.event(tag, blob.partition, blob.name, *fields)
        else:
            self.event(tag + ".detached", blob.partition, blob.name, detached, *fields)

    def fails(self, op: str, partition: str, name: bytes) -> bool:
        """Does ``op`` (``"open"``, ``"remove"``, ``"scan"``) on this name fail?"""
        rate: float = getattr(self.plan, _RATE_OF[op])
        return rate > 0.0 and self.fault(rate, "storage.fault", op, partition, name)

    def blob_fails(self, op: str, blob: _BlobState) -> bool:
        """Does ``op`` (``"read"``, ``"write"``, ``"resize"``, ``"sync"``) on an open blob fail?"""
        rate: float = getattr(self.plan, _RATE_OF[op])
        if rate <= 0.0:
            return False
        detached = blob.detached
        if detached is None:
            return self.fault(rate, "storage.fault", op, blob.partition, blob.name)
        return self.fault(rate, "storage.fault.detached", op, blob.partition, blob.name, detached)

    def torn(self, blob: _BlobState, offset: int, size: int) -> int:
        """How many leading bytes of a *failing* write of ``size`` bytes at ``offset`` landed
        first: 0 (none) or a strictly partial prefix, per ``partial_write_rate``."""
        rate = self.plan.partial_write_rate
        if rate <= 0.0 or size < 2:
            return 0
        rng = self.rng
        applied = rng.randrange(1, size) if rng.random() < rate else 0
        self.blob("storage.partial_write", blob, offset, applied)
        return applied


# -- network -----------------------------------------------------------------------------


class NetworkSeam(Seam):
    """The simulated network's seam: its fault plan (links and partitions) and delay draws."""

    __slots__ = ("links", "cuts")

    def __init__(self, auditor: Auditor | None, rng: random.Random) -> None:
        super().__init__(auditor, rng)
        # (src host, dst host) -> (latency ns, jitter ns); absent: no delay.
        self.links: dict[tuple[str, str], tuple[int, int]] = {}
        self.cuts: set[tuple[str, str]] = set()  # membership tests only, never iterated

    def delay(self, flow: _Flow) -> int:
        """Nanoseconds until the bytes of one send become readable: the link's latency plus
        ``U{0..jitter}``, drawn (and audited as ``net.delay``) only when there is jitter."""
        link = self.links.get((flow.src_host, flow.dst_host))
        if link is None:
            return 0
        latency_ns, jitter_ns = link
        if not jitter_ns:
            return latency_ns
        delay = latency_ns + self.rng.randrange(jitter_ns + 1)
        self.event("net.delay", flow.src, flow.dst, delay)
        return delay

    def latency(self, flow: _Flow) -> int:
        """The link's latency without jitter (an EOF draws nothing)."""
        link = self.links.get((flow.src_host, flow.dst_host))
        return 0 if link is None else link[0]

    def partitioned(self, a: str, b: str) -> bool:
        return (a, b) in self.cuts

    def set_link(self, a: str, b: str, latency_ns: int, jitter_ns: int, symmetric: bool) -> None:
        pairs = [(a, b), (b, a)] if symmetric and a != b else [(a, b)]
        for pair in pairs:
            if latency_ns or jitter_ns:
                self.links[pair] = (latency_ns, jitter_ns)
            else:
                self.links.pop(pair, None)
        self.event("net.link", a, b, latency_ns, jitter_ns, int(symmetric))

    def cut(self, hosts_a: list[str], hosts_b: list[str]) -> None:
        """Partition every host of ``hosts_a`` from every host of ``hosts_b``, both ways."""
        cuts = self.cuts
        for a, b in _pairs(hosts_a, hosts_b):
            if a != b:
                cuts.add((a, b))
                cuts.add((b, a))
        self.event("net.partition", ",".join(hosts_a), ",".join(hosts_b))

    def mend(self, hosts_a: list[str] | None, hosts_b: list[str] | None) -> None:
        """Remove the partitions between two groups, or all of them (``None``)."""
        cuts = self.cuts
        if hosts_a is None or hosts_b is None:
            cuts.clear()
            hosts_a = hosts_b = []
        for a, b in _pairs(hosts_a, hosts_b):
            cuts.discard((a, b))
            cuts.discard((b, a))
        self.event("net.heal", ",".join(hosts_a), ",".join(hosts_b))


def _pairs(hosts_a: list[str], hosts_b: list[str]) -> Iterable[tuple[str, str]]:
    return ((a, b) for a in hosts_a for b in hosts_b)
