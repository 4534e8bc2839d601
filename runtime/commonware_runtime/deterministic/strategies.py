"""Scheduling strategies: who decides which ready callback runs next, and how late timers fire.

A deterministic run is a sequence of choices.  The loop (``loop.py``) owns the ready
callbacks; a *strategy* only chooses.  Observers (the recorder, the replayer's checks, the
auditor) watch the choices and never make them, and replay is one more strategy.

Two kinds of choice exist, one per ``ordering`` (docs/SPEC.md section 5a):

- ``ordering="any"``: which ready callback runs next.  Every callback that becomes ready is
  announced with ``arrive(seq, handle)``; ``seq`` numbers callbacks in the order they became
  ready (registration order), so the smallest pending ``seq`` is the oldest callback: the
  *canonical* choice, the one asyncio itself would run.  ``choose(step)`` returns the
  ``seq`` to run.  A strategy with ``holds_back = False`` only ever sees the callbacks that
  were ready when the round began (a *round*: asyncio's own unit of work, after which due
  timers fire); with ``holds_back = True`` callbacks made ready during a round are
  announced at once and whatever the strategy has not chosen by the end of a round stays
  pending into the next: a ready task can be held back for many steps.
- ``ordering="fifo"``: callbacks run in registration order, as asyncio documents.  The
  strategy chooses only timing: ``late(limit_ns)``, how late the next timer wake-up of an
  idle loop may be (0 .. ``limit_ns``): every timer due within that much of the first fires
  in the same round, in deadline then creation order, the clock reading the last one's
  deadline (so a lone timer is never late).  Late wake-ups happen in both orderings.

Every strategy's choices are drawn from the scheduler stream handed to ``begin``, so the
seed alone reproduces a run, and no other stream (``context.rng``, faults) moves.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import asyncio

    from .loop import EventLoop

__all__ = [
    "ORDERINGS",
    "PCT",
    "POS",
    "BaseStrategy",
    "Canonical",
    "Choices",
    "Deviations",
    "Random",
    "RankStrategy",
    "Strategy",
    "Swarm",
    "Walk",
    "make_strategy",
    "register_strategy",
    "strategy_names",
]

ORDERINGS = ("any", "fifo")
# A strategy chooses among at most this many of the oldest ready callbacks; older ones
# than those never wait behind newer ones beyond it.  Small programs never have more ready
# at once; a round that wakes 100,000 waiters of one Event then costs O(n), not O(n^2)
# (each waiter's Event.wait removes its future from a deque scanned from the oldest end).
WINDOW = 1024
LOOP_CALLBACK = 0  # the task id of a callback that is not a task step


@runtime_checkable
class Strategy(Protocol):
    """What the deterministic loop asks to make a run's choices (see the module docstring).

    Implement all of it (or subclass ``BaseStrategy``, which draws the timing choices at
    random and keeps nothing else).  ``begin`` is called once per run, before any other
    method, and must reset whatever the strategy remembers: one object may serve many runs.
    An optional ``tie(n) -> int`` says which of ``n`` simulated deliveries due at one
    instant arrives first under ``ordering="fifo"`` (``BaseStrategy`` draws it; without
    it they arrive in send order).
    """

    name: str  # how traces and reports name it, e.g. "pct:3"
    holds_back: bool

    def begin(self, rng: random.Random, loop: EventLoop) -> None: ...

    def arrive(self, seq: int, handle: asyncio.Handle) -> None: ...

    def choose(self, step: int) -> int: ...

    def late(self, limit_ns: int) -> int: ...


class BaseStrategy:
    """Timing choices at random (half of idle wake-ups late: half of those by the whole
    bound, which makes every timer due within it fire together, the others by a uniform
    amount), nothing else."""

    name = "base"
    holds_back = False
    late_probability = 0.5

    def __init__(self) -> None:
        self.rng: random.Random = random.Random(0)
        self.loop: Any = None

    def begin(self, rng: random.Random, loop: EventLoop) -> None:
        self.rng = rng
        self.loop = loop

    def arrive(self, seq: int, handle: asyncio.Handle) -> None:
        raise NotImplementedError(f"strategy {self.name!r} makes no ready-order choices")

    def choose(self, step: int) -> int:
        raise NotImplementedError(f"strategy {self.name!r} makes no ready-order choices")

    def late(self, limit_ns: int) -> int:
        rng = self.rng
        if self.late_probability <= 0 or rng.random() >= self.late_probability:
            return 0
        if rng.random() < 0.5:
            return limit_ns
        return 1 + int(rng.random() * limit_ns)

    def tie(self, n: int) -> int:
        """Which of ``n`` simulated deliveries due at one instant arrives first (0: the
        oldest); asked under ``ordering="fifo"`` only (under "any" every ready callback is
        the strategy's to order)."""
        return int(self.rng.random() * n)

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


class Random(BaseStrategy):
    """Each round's ready callbacks in a uniformly random order.  Timers fire on time under
    ``ordering="any"`` (the scheduler of earlier versions, exact sleeps); under ``"fifo"``,
    where timing is the only thing that varies, half of idle wake-ups are late.

    The loop runs this strategy through an inlined copy of ``arrive``/``choose`` when
    nothing observes the run (the benchmarks' baseline); both draw exactly the same numbers
    from the stream, so a recorded run is the run an unrecorded one would have been.
    """

    name = "random"

    def __init__(self) -> None:
        super().__init__()
        self._window: list[int] = []
        self._queue: deque[int] = deque()

    def begin(self, rng: random.Random, loop: EventLoop) -> None:
        super().begin(rng, loop)
        self._window = []
        self._queue = deque()
        self.late_probability = 0.5 if loop.ordering == "fifo" else 0.0

    def arrive(self, seq: int, handle: asyncio.Handle) -> None:
        if len(self._window) < WINDOW and not self._queue:
            self._window.append(seq)
        else:
            self._queue.append(seq)

    def choose(self, step: int) -> int:
        window = self._window
        n = len(window)
        if n == 1:
            seq = window.pop()
        else:
            i = int(self.rng.random() * n)
            seq = window[i]
            last = window.pop()
            if last != seq:
                window[i] = last
        if self._queue:  # the next oldest enters the window
            window.append(self._queue.popleft())
        return seq


class Walk(Random):
    """A uniformly random walk: at every decision any ready callback, including one made
    ready a moment ago, with equal probability (callbacks are held back across rounds).
    A task is delayed k steps with probability falling geometrically in k; timers are late
    as ``BaseStrategy`` makes them, in both orderings."""

    name = "walk"
    holds_back = True

    def begin(self, rng: random.Random, loop: EventLoop) -> None:
        super().begin(rng, loop)
        self.late_probability = BaseStrategy.late_probability


class _Priorities(BaseStrategy):
    """Highest priority first among everything ready; ties by age.  After ``fair_after``
    decisions the oldest ready callback runs, whatever its priority (the fair fallback:
    a program that ends under fair scheduling still ends, e.g. one that spins on
    ``sleep(0)`` until a held-back task has run).

    A subclass says a task's priority with ``new_key`` (the heap key: lower runs first),
    which may store it in ``_keys`` to keep it for the task's later callbacks.
    """

    holds_back = True

    def __init__(self, fair_after: int) -> None:
        super().__init__()
        self.fair_after = fair_after
        self._keys: dict[int, float] = {}  # task id -> its heap key, for keys that stay
        # The window: a heap of (key, seq, task id), plus the front entry, lower than all of
        # the heap's.  A task that keeps the highest priority (PCT's usual case) re-enters
        # at the front after each step and runs again without touching the heap.
        self._heap: list[tuple[float, int, int]] = []
        self._front: tuple[float, int, int] | None = None
        self._queue: deque[tuple[int, int]] = deque()  # (seq, task id) beyond the window
        self._fair: deque[int] | None = None  # once fair: every pending seq, oldest first

    def begin(self, rng: random.Random, loop: EventLoop) -> None:
        super().begin(rng, loop)
        self._keys = {}
        self._heap = []
        self._front = None
        self._queue = deque()
        self._fair = None

    def new_key(self, tid: int) -> float:
        raise NotImplementedError

    def arrive(self, seq: int, handle: asyncio.Handle) -> None:
        if self._fair is not None:
            self._fair.append(seq)
            return
        # Only the loop's own tasks carry a stable id; any other callback is a loop callback.
        tid = getattr(getattr(handle._callback, "__self__", None), "_cw_id", LOOP_CALLBACK)  # type: ignore[attr-defined]
        if self._queue or len(self._heap) + (self._front is not None) >= WINDOW:
            self._queue.append((seq, tid))
        else:
            self._enter(seq, tid)

    def _enter(self, seq: int, tid: int) -> None:
        key = self._keys.get(tid)
        entry = (self.new_key(tid) if key is None else key, seq, tid)
        front = self._front
        if front is None:
            heap = self._heap
            if heap and heap[0] < entry:
                heapq.heappush(heap, entry)
            else:
                self._front = entry
        elif entry < front:
            heapq.heappush(self._heap, front)
            self._front = entry
        else:
            heapq.heappush(self._heap, entry)

    def choose(self, step: int) -> int:
        fair = self._fair
        if fair is None:
            if step < self.fair_after:
                seq = self._pop()
                if self._queue:
                    self._enter(*self._queue.popleft())
                return seq
            # Arrivals are always newer than everything pending, so oldest-first is a queue.
            entries = self._heap if self._front is None else [self._front, *self._heap]
            fair = self._fair = deque(sorted(seq for _, seq, _ in entries))
            fair.extend(seq for seq, _ in self._queue)
            self._heap = []
            self._front = None
            self._queue.clear()
        return fair.popleft()

    def _pop(self) -> int:
        front = self._front
        if front is None:
            return heapq.heappop(self._heap)[1]
        self._front = None
        return front[1]


class PCT(_Priorities):
    """Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010) for bugs of depth D.

    Every task gets a random priority above D when it first becomes ready; the highest
    priority ready callback runs (loop callbacks, which are not task steps, first).  At D-1
    random steps within the horizon, the task that runs gets priority i (i = 1..D-1), below
    every initial priority: that is how a task that was running ahead gets held back.
    Steps count *contested* decisions only (two or more callbacks ready), where a priority
    can matter.  The horizon is, in order: the one in the name (``pct:3:200``), the run's expected
    length (``Config(horizon=...)``, which the plugin measures with one canonical run of the
    test), or one drawn per run log-uniformly from 16..16384 steps, so a sweep covers short
    and long programs alike.  Fair after 8x the horizon (at least 2000).
    """

    def __init__(self, depth: int = 3, horizon: int | None = None) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"pct depth must be a positive int, got {depth!r}")
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise ValueError(f"pct horizon must be a positive int, got {horizon!r}")
        super().__init__(fair_after=0)
        self.depth = depth
        self.horizon = horizon
        self.name = f"pct:{depth}" if horizon is None else f"pct:{depth}:{horizon}"
        self._changes: dict[int, int] = {}
        self._contested = 0
        self.run_horizon = horizon or 0
        self.chosen = self.name

    def begin(self, rng: random.Random, loop: EventLoop) -> None:
        super().begin(rng, loop)
        horizon = self.horizon or getattr(loop, "horizon", None) or int(16 * 2 ** (rng.random() * 10))
        self.run_horizon = horizon
        self.chosen = f"pct:{self.depth}:{horizon}"
        self.fair_after = max(8 * horizon, 2000)
        self._keys[LOOP_CALLBACK] = -math.inf
        self._changes = {}
        self._contested = 0
        for i in range(1, self.depth):
            self._changes.setdefault(1 + int(rng.random() * horizon), i)

    def new_key(self, tid: int) -> float:
        key = self._keys[tid] = -(self.depth + self.rng.random())
        return key

    def _pop(self) -> int:
        front = self._front
        contested = bool(self._heap) if front is not None else len(self._heap) > 1
        if front is None:
            _, seq, tid = heapq.heappop(self._heap)
        else:
            self._front = None
            _, seq, tid = front
        if contested:  # only a contested decision is a step of the PCT bound
            self._contested += 1
            change = self._changes.get(self._contested)
            if change is not None and tid != LOOP_CALLBACK:
                self._keys[tid] = -float(change)
        return seq


class POS(_Priorities):
    """Partial order sampling (after Yuan et al., CAV 2018), without dependence information:
    every callback gets a fresh random priority when it becomes ready and the highest runs.
    A callback that drew low stays pending while newer ones run, so delays of any length
    occur with geometrically falling probability.  Fair after 20000 decisions."""

    name = "pos"

    def __init__(self, fair_after: int = 20_000) -> None:
        super().__init__(fair_after=fair_after)

    def new_key(self, tid: int) -> float:
        return -self.rng.random()


class RankStrategy(BaseStrategy):
    """Chooses by *rank* among everything ready (0: the oldest, the canonical choice) and
    lets a subclass say the rank at each choice point.  Choice points are numbered in the
    order they occur: a ready-order choice (``kind`` "pick", ``n`` ready callbacks) or a
    late wake-up ("late", option 1 = as late as allowed).
    ``counts`` records (kind, n) per choice point: what systematic exploration branches on.
    """

    name = "ranked"
    holds_back = True

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[int] = []
        self.counts: list[tuple[str, int]] = []

    def begin(self, rng: random.Random, loop: EventLoop) -> None:
        super().begin(rng, loop)
        self._pending = []
        self.counts = []

    def option(self, point: int, kind: str, n: int) -> int:
        """The option taken at choice point ``point`` (0 .. n-1; 0 is canonical)."""
        return 0

    def _take(self, kind: str, n: int) -> int:
        point = len(self.counts)
        self.counts.append((kind, n))
        if n <= 1:
            return 0
        return min(max(self.option(point, kind, n), 0), n - 1)

    def arrive(self, seq: int, handle: asyncio.Handle) -> None:
        self._pending.append(seq)  # arrivals are newer than everything pending: stays sorted

    def choose(self, step: int) -> int:
        return self._pending.pop(self._take("pick", len(self._pending)))

    def late(self, limit_ns: int) -> int:
        return limit_ns if self._take("late", 2) else 0

    def tie(self, n: int) -> int:
        return self._take("tie", n)


class Canonical(RankStrategy):
    """Always the oldest ready callback, never a late timer: asyncio's own order."""

    name = "canonical"


class Deviations(RankStrategy):
    """The canonical schedule except at the given choice points (point -> option)."""

    name = "deviations"

    def __init__(self, deviations: Mapping[int, int] | None = None) -> None:
        super().__init__()
        self.deviations = dict(deviations or {})

    def option(self, point: int, kind: str, n: int) -> int:
        return self.deviations.get(point, 0)


class Choices(RankStrategy):
    """Options from a list, one per choice point, reduced modulo the number of options
    (missing entries are canonical): what ``commonware_runtime.hypothesis.schedules()``
    draws, so shrinking the list toward zeros shrinks toward the canonical schedule."""

    name = "choices"

    def __init__(self, choices: list[int] | tuple[int, ...]) -> None:
        super().__init__()
        self.choices = tuple(choices)

    def option(self, point: int, kind: str, n: int) -> int:
        choices = self.choices
        return choices[point] % n if point < len(choices) else 0


class Swarm(BaseStrategy):
    """Swarm testing (Groce et al., ISSTA 2012): the seed picks the strategy and its
    parameters (random 10%, walk 20%, PCT of depth 1-4 45% with a horizon within a factor
    of two of the run's expected length, or 16..16384 when unknown, POS 25%), and how often
    timers fire late, so a sweep of many seeds mixes them.  ``chosen`` names what this run
    uses (traces and reports show it)."""

    name = "swarm"

    def __init__(self) -> None:
        super().__init__()
        self.inner: BaseStrategy = Random()
        self.chosen = "random"

    def begin(self, rng: random.Random, loop: EventLoop) -> None:
        super().begin(rng, loop)
        # The pick uses its own generator derived from the stream, so what the inner
        # strategy draws is the same stream it would get on its own.
        pick = random.Random(rng.getrandbits(64))
        roll = pick.random()
        known = getattr(loop, "horizon", None)
        if known:  # the run's expected length, give or take a factor of two
            horizon = max(1, int(known * 2 ** (pick.random() * 2 - 1)))
        else:
            horizon = int(16 * 2 ** (pick.random() * 10))
        if roll < 0.1:
            inner: BaseStrategy = Random()
        elif roll < 0.3:
            inner = Walk()
        elif roll < 0.75:
            inner = PCT(depth=1 + int(pick.random() * 4), horizon=horizon)
        else:
            inner = POS()
        late = (0.0, 0.25, 0.5, 0.75)[int(pick.random() * 4)]
        inner.begin(rng, loop)
        inner.late_probability = late
        self.inner = inner
        self.holds_back = inner.holds_back
        self.chosen = f"{getattr(inner, 'chosen', inner.name)} late={late}"

    def arrive(self, seq: int, handle: asyncio.Handle) -> None:
        self.inner.arrive(seq, handle)

    def choose(self, step: int) -> int:
        return self.inner.choose(step)

    def late(self, limit_ns: int) -> int:
        return self.inner.late(limit_ns)

    def tie(self, n: int) -> int:
        return self.inner.tie(n)


# -- names ------------------------------------------------------------------------------------

def _parse_ints(name: str, spec: str, parts: list[str], most: int) -> list[int]:
    if len(parts) > most:
        raise ValueError(f"strategy {spec!r}: {name} takes at most {most} parameter(s)")
    values = []
    for part in parts:
        try:
            values.append(int(part))
        except ValueError:
            raise ValueError(f"strategy {spec!r}: parameter {part!r} is not an integer") from None
    return values


def _pct(spec: str, parts: list[str]) -> Strategy:
    return PCT(*_parse_ints("pct", spec, parts, 2))


def _plain(factory: Callable[[], Strategy]) -> Callable[[str, list[str]], Strategy]:
    def build(spec: str, parts: list[str]) -> Strategy:
        if parts:
            raise ValueError(f"strategy {spec!r} takes no parameters")
        return factory()

    return build


_REGISTRY: dict[str, Callable[[str, list[str]], Strategy]] = {
    "random": _plain(Random),
    "walk": _plain(Walk),
    "pct": _pct,
    "pos": _plain(POS),
    "swarm": _plain(Swarm),
    "canonical": _plain(Canonical),
}


def register_strategy(name: str, factory: Callable[[], Strategy]) -> None:
    """Make ``name`` a strategy name (``Config(strategy=name)``, ``--cw-strategy``).

    ``factory()`` builds a fresh strategy for each run.  The plugin's pluggy hook
    ``pytest_commonware_strategies`` calls this for every name a plugin or conftest returns.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a strategy name must be an identifier, got {name!r}")
    if not callable(factory):
        raise TypeError(f"the factory for strategy {name!r} must be callable, got {factory!r}")
    _REGISTRY[name] = _plain(factory)


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def make_strategy(spec: str | Strategy) -> Strategy:
    """A fresh strategy for one run: from a name (``"pct:3"``) or a user's object (used as is)."""
    if isinstance(spec, str):
        name, *parts = spec.strip().split(":")
        build = _REGISTRY.get(name)
        if build is None:
            raise ValueError(f"unknown strategy {spec!r}; known: {', '.join(strategy_names())} (or a Strategy object)")
        return build(spec, parts)
    missing = [m for m in ("begin", "arrive", "choose", "late") if not callable(getattr(spec, m, None))]
    if missing or not isinstance(getattr(spec, "name", None), str) or not isinstance(getattr(spec, "holds_back", None), bool):
        what = ", ".join(missing) if missing else "a str name and a bool holds_back"
        raise TypeError(f"strategy must be a name or a deterministic.Strategy, got {spec!r} (it lacks {what})")
    return spec


def strategy_spec(spec: str | Strategy) -> str:
    """How a config's strategy is written in a trace."""
    return spec.strip() if isinstance(spec, str) else spec.name
