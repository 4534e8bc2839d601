"""The user-facing RNG of the deterministic runtime: seeded, on its own stream, audited."""

from __future__ import annotations

import random
from typing import Any

from ..auditor import Auditor


class AuditedRandom(random.Random):
    """``random.Random`` whose every draw is folded into the auditor.

    Overriding both ``random`` and ``getrandbits`` makes every derived method
    (randint, choice, shuffle, gauss, randbytes...) pass through one of them, so all
    draws are audited, and the stream is exactly that of ``random.Random(seed)``.
    """

    def __init__(self, seed: int, auditor: Auditor | None) -> None:
        self._auditor = auditor
        super().__init__(seed)

    def random(self) -> float:
        value = super().random()
        if self._auditor is not None:
            self._auditor.event("rng", value.hex())
        return value

    def getrandbits(self, k: int) -> int:
        value = super().getrandbits(k)
        if self._auditor is not None:
            self._auditor.event("rng", k, value)
        return value

    def __reduce__(self) -> Any:
        raise TypeError("AuditedRandom is bound to a run's auditor and cannot be pickled")
