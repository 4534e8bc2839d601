"""The auditor: a running SHA-256 over the semantic events of a deterministic run.

Only meaning enters the hash (task ids and labels, virtual times, payloads, RNG
draws, metric names); never reprs, ``id()`` or addresses, so the same seed gives the
same state in any process, under any ``PYTHONHASHSEED`` and on any Python version.

Scheduling decisions are the hot path: they are appended to an ``array`` of u32 and
folded into the hash in bulk the next time another event or ``state()`` needs them.
The stream carries no per-fold framing (each event instead starts with the reserved
word ``EVENT_MARK``), so the digest is independent of when folds happen: reading the
state never changes it.
"""

from __future__ import annotations

import hashlib
import sys
from array import array

Field = bytes | bytearray | memoryview | str | int

_BIG_ENDIAN = sys.byteorder == "big"
EVENT_MARK = 0xFFFFFFFD  # never a task id: ids count up from 1, markers from the top
_EVENT_PREFIX = EVENT_MARK.to_bytes(4, "little")


class Auditor:
    __slots__ = ("_hash", "_decisions", "_events", "trail")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._decisions = array("I")
        self._events = 0
        # When a list (the determinism check sets one through the recorder), every event also
        # leaves its tag and a short digest of its fields here: two runs whose states part can
        # then be compared event by event, to name the first event that differs and its kind.
        self.trail: list[tuple[str, str]] | None = None

    # Exposed so the event loop can bind ``auditor.decision = arr.append`` style fast paths.
    @property
    def decisions(self) -> array[int]:
        return self._decisions

    def _fold_decisions(self) -> None:
        decisions = self._decisions
        if decisions:
            if _BIG_ENDIAN:
                decisions.byteswap()
            self._hash.update(decisions.tobytes())
            del decisions[:]

    def event(self, tag: str, *fields: Field) -> None:
        """Fold one event into the hash: a tag and length-prefixed fields."""
        self._fold_decisions()
        parts = [_EVENT_PREFIX, tag.encode(), b"\x00"]
        for field in fields:
            if isinstance(field, int):
                data = str(field).encode()
                parts.append(b"i")
            elif isinstance(field, str):
                data = field.encode()
                parts.append(b"s")
            else:
                data = bytes(field)
                parts.append(b"b")
            parts.append(len(data).to_bytes(8, "little"))
            parts.append(data)
        data = b"".join(parts)
        self._hash.update(data)
        self._events += 1
        if self.trail is not None:
            self.trail.append((tag, hashlib.sha256(data).hexdigest()[:16]))

    def state(self) -> str:
        """Hex digest of everything audited so far."""
        self._fold_decisions()
        return self._hash.copy().hexdigest()

    def fork(self) -> Auditor:
        """A copy that continues from this state (used by crash checkpoints)."""
        self._fold_decisions()
        other = Auditor()
        other._hash = self._hash.copy()
        other._events = self._events
        other.trail = self.trail  # a restarted run goes on leaving its events in the same trail
        return other
