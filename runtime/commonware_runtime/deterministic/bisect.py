"""Bisecting a failing trace (the plugin's ``--cw-bisect``): the decisive choice, a minimal schedule.

Vocabulary.  A run is a sequence of *choices* made by its strategy.  Under ``ordering="any"``
they are scheduling *decisions*: which ready callback runs next.  Callbacks are numbered
(their *seq*) in the order they became ready, so the *canonical* decision runs the oldest
ready callback, the smallest pending seq: asyncio's own order.  Under ``ordering="fifo"``
callbacks always run in that order and the choices are *timing* choices: which of several
timers due at the same instant fires first (canonical: the first created) and how late an
idle loop wakes (canonical: on time).  A *deviation* is a choice that is not canonical.

Two questions, each answered by running the test again under a strategy
(``deterministic.Config(...).with_strategy(s)``) that makes every choice:

1. The decisive choice.  ``prefix(k)``: follow the trace's first ``k`` choices (its
   recorded seqs, or under fifo its recorded timing values), then make every later choice
   canonically.  ``prefix(n)`` is the recorded run (it fails); ``prefix(0)`` is the
   canonical run.  If the canonical run fails too, the failure does not depend on the
   schedule.  Otherwise a binary search finds the smallest ``k`` with ``prefix(k)`` failing
   (the same exception type) and ``prefix(k - 1)`` passing: after the trace's first ``k``
   choices the failure is inevitable, and choice ``k - 1`` (always a deviation: were it
   canonical the two runs would be the same run) is the one that decides.  The search
   assumes that once inevitable, a failure stays inevitable for longer prefixes (true of
   the usual races; a schedule where it is not still yields a correct, replayable minimal
   trace below, only the "decisive" choice is then one of several).
2. The minimal schedule.  ``prefix(k)``'s deviations (a decision: at step s run the r-th
   ready callback of task t; a timing choice: at choice i take value v) are shrunk with
   delta debugging (ddmin) to a set none of whose members can be dropped without losing
   the failure; the others become canonical.  That run is recorded like any other and
   written as a replayable trace.

The strategies here hold callbacks back (``holds_back = True``): a callback made ready
during a round can be chosen at once, so any order the recorded strategy could produce
(random, PCT, POS, swarm...) can be followed, and the canonical order is still asyncio's.
A trace recorded without holding back is followed exactly too: its rounds run the same
callbacks, which get the same seqs.  The minimal run is recorded with ``holds_back``, so
the runtime's ``Replayer`` replays it the same way.
"""

from __future__ import annotations

import asyncio
import bisect as _bisect
import inspect
import math
import os
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..tasks import shown_label, spawned_awaitable
from .loop import await_site
from .runner import Runner
from .strategies import RankStrategy
from .trace import Recorder, Schedule, format_seconds
from .tracefile import Trace, TraceError, config_from_dict, trace_from_schedule, write_trace

__all__ = [
    "BisectError",
    "BisectResult",
    "BisectStrategy",
    "Decision",
    "Deviation",
    "DeviationStrategy",
    "PrefixStrategy",
    "TimingDecision",
    "TimingDeviation",
    "bisect_trace",
    "min_trace_path",
]

MainFactory = Callable[[], Callable[[Any], Awaitable[Any]]]
MAX_RUNS = 2000  # a bound on the runs a bisect may take (ddmin is quadratic at worst)


class BisectError(Exception):
    """The bisect cannot proceed; the message says why in one line."""


# ---------------------------------------------------------------------------------------------
# what a run chose


@dataclass(frozen=True)
class Decision:
    """What ran at one step (``ordering="any"``), and what the canonical order runs instead."""

    step: int
    time_ns: int
    tid: int
    label: str
    rank: int  # position among everything ready, oldest first: 0 is the canonical choice
    site: str  # where the task was suspended (what it resumed from)
    canonical_tid: int
    canonical_label: str
    seq: int = 0  # the callback that ran (numbered in the order callbacks became ready)
    canonical_seq: int = 0
    task_rank: int = 0  # among the ready callbacks of the same task, oldest first

    @property
    def deviation(self) -> bool:
        return self.rank != 0

    def describe(self) -> str:
        t = f"t={format_seconds(self.time_ns)}s"
        ran = f"{shown_label(self.label)} (id {self.tid})" if self.tid else "a loop callback"
        canon = f"{shown_label(self.canonical_label)} (id {self.canonical_tid})" if self.canonical_tid else "a loop callback"
        where = f", resuming from {self.site}" if self.site else ""
        if not self.deviation:
            return f"step {self.step} ({t}): ran {ran}{where} (the canonical choice)"
        return f"step {self.step} ({t}): ran {ran}{where}, where the canonical order runs {canon} first"


@dataclass(frozen=True)
class TimingDecision:
    """One timing choice: how late an idle loop's wake-up was."""

    index: int  # the choice's position among the run's timing choices
    step: int  # the decisions made before it
    time_ns: int  # the instant the timers were due
    kind: str  # "late" (value: ns late) or "tie" (value: which of options + 1 deliveries due at once came first)
    options: int  # the most it could be late (ns), or the highest rank of a tie
    value: int

    @property
    def deviation(self) -> bool:
        return self.value != 0

    def describe(self) -> str:
        t = f"t={format_seconds(self.time_ns)}s"
        head = f"timing choice {self.index} (before step {self.step}, {t})"
        if self.kind == "tie":
            what = f"of {self.options + 1} deliveries due at once, #{self.value} arrived first"
            canon = "delivers them in the order they were sent"
        else:
            what = f"the idle loop woke {self.value} ns late (at most {self.options} ns)"
            canon = "wakes on time"
        if not self.deviation:
            return f"{head}: {what} (the canonical choice)"
        return f"{head}: {what}, where the canonical timing {canon}"


@dataclass(frozen=True)
class Deviation:
    """At ``step``, run the ``rank``-th ready callback (oldest first) of task ``tid``."""

    step: int
    tid: int
    rank: int


@dataclass(frozen=True)
class TimingDeviation:
    """At timing choice ``index``, wake ``value`` ns late."""

    index: int
    value: int


def _site(task: asyncio.Task[Any]) -> str:
    """Where ``task`` resumes: its await site, or its first line when it has not started yet."""
    coro: Any = task.get_coro()
    if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
        # The runtime runs a spawned coroutine inside its driver: name the user's coroutine.
        inner = spawned_awaitable(task)
        code = (inner if inspect.iscoroutine(inner) else coro).cr_code
        return f"its start ({code.co_name}() at {os.path.basename(code.co_filename)}:{code.co_firstlineno})"
    site = await_site(task)
    if site.startswith("? "):  # a bare yield: what asyncio.sleep(0) does
        return "a bare yield (sleep(0)) " + site[2:]
    return site


# ---------------------------------------------------------------------------------------------
# the strategies


class BisectStrategy(RankStrategy):
    """Canonical choices unless ``target``/``timing_target`` say otherwise; notes every
    deviation (``decisions``, ``timings``) and the choice at ``note`` (``noted``).

    ``note`` is a choice point: a step under ``ordering="any"``, a timing choice's index
    under ``"fifo"`` (a run makes only one kind of choice).
    """

    name = "bisect"
    holds_back = True

    def __init__(self, note: int | None = None) -> None:
        super().__init__()
        self.note = note
        self.chosen = ""
        self.decisions: list[Decision] = []
        self.timings: list[TimingDecision] = []
        self.noted: Decision | TimingDecision | None = None
        self._handles: dict[int, asyncio.Handle] = {}
        self._timing = 0

    def begin(self, rng: Any, loop: Any) -> None:
        super().begin(rng, loop)
        self.decisions = []
        self.timings = []
        self.noted = None
        self._handles = {}
        self._timing = 0

    # -- subclasses say what differs from canonical -------------------------------------------

    def target(self, step: int) -> int | None:
        """The seq to run at ``step``, or None for the canonical (oldest) one."""
        return None

    def timing_target(self, index: int, kind: str, options: int) -> int | None:
        """The value of timing choice ``index``, or None for the canonical 0."""
        return None

    # -- the protocol -----------------------------------------------------------------------

    def arrive(self, seq: int, handle: asyncio.Handle) -> None:
        self._pending.append(seq)  # arrivals are newer than everything pending: stays sorted
        self._handles[seq] = handle

    def tid_of(self, seq: int) -> int:
        return int(self.loop.owner_id(self._handles[seq]))

    def choose(self, step: int) -> int:
        pending = self._pending
        seq = self.target(step)
        if seq is None:
            i = 0
            seq = pending[0]
        else:
            i = _bisect.bisect_left(pending, seq)
            if i == len(pending) or pending[i] != seq:
                raise BisectError(f"strategy {self.name!r} chose callback #{seq} at step {step}, which is not ready")
        if i or step == self.note:
            self._note(step, i)
        del pending[i]
        del self._handles[seq]
        return seq

    def _note(self, step: int, i: int) -> None:
        loop = self.loop
        pending = self._pending
        seq = pending[i]
        handle = self._handles[seq]
        tid = self.tid_of(seq)
        owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
        site = _site(owner) if isinstance(owner, asyncio.Task) and tid else ""
        ctid = self.tid_of(pending[0])
        decision = Decision(
            step=step, time_ns=loop.now_ns, tid=tid, label=loop.task_labels[tid] if tid else "<callback>",
            rank=i, site=site, canonical_tid=ctid, canonical_label=loop.task_labels[ctid] if ctid else "<callback>",
            seq=seq, canonical_seq=pending[0], task_rank=sum(1 for s in pending[:i] if self.tid_of(s) == tid),
        )
        if decision.deviation:
            self.decisions.append(decision)
        if step == self.note:
            self.noted = decision

    def _timing_choice(self, kind: str, options: int, time_ns: int) -> int:
        index = self._timing
        self._timing = index + 1
        value = self.timing_target(index, kind, options)
        value = 0 if value is None else value
        if value or index == self.note:
            decision = TimingDecision(index, self.loop.steps, time_ns, kind, options, value)
            if decision.deviation:
                self.timings.append(decision)
            if index == self.note:
                self.noted = decision
        return value

    def late(self, limit_ns: int) -> int:
        # Asked as the idle loop jumps to its next timer (the clock still shows the old time).
        timers = getattr(self.loop, "_timers", None)
        due = timers[0][0] if timers else self.loop.now_ns
        return self._timing_choice("late", limit_ns, due)

    def tie(self, n: int) -> int:
        return self._timing_choice("tie", n - 1, self.loop.now_ns)


class PrefixStrategy(BisectStrategy):
    """The trace's first ``k`` choices (recorded seqs; under fifo, recorded timing values),
    then canonical ones.  A trace has choices of one kind only, so ``k`` counts those."""

    def __init__(self, schedule: Schedule, k: int, note: int | None = None) -> None:
        super().__init__(note)
        self.schedule = schedule
        self.k = k
        self.chosen = f"the trace's first {k} choices, then canonical"

    def target(self, step: int) -> int | None:
        schedule = self.schedule
        if step >= self.k or step >= len(schedule.picks):
            return None
        seq = int(schedule.picks[step])
        i = _bisect.bisect_left(self._pending, seq)
        if i == len(self._pending) or self._pending[i] != seq or self.tid_of(seq) != schedule.ids[step]:
            raise BisectError(
                f"the test no longer follows its trace at step {step}: the trace ran task id {schedule.ids[step]} "
                f"(callback #{seq}) there (was the test changed since the trace was recorded?)"
            )
        return seq

    def timing_target(self, index: int, kind: str, options: int) -> int | None:
        timing = self.schedule.timing
        if self.schedule.ordering == "fifo":
            if index >= self.k:  # under fifo, k counts timing choices
                return None
        elif self.loop.steps >= self.k:  # under any, the late wake-ups made before step k
            return None
        if index >= len(timing):
            raise BisectError(
                f"the test no longer follows its trace: it makes more than the {len(timing)} timing choices recorded "
                f"(was the test changed since the trace was recorded?)"
            )
        value = int(timing[index])
        if value > options:
            what = f"a wake-up at most {options} ns late"
            raise BisectError(
                f"the test no longer follows its trace at timing choice {index}: the trace chose {value}, the run has "
                f"{what} (was the test changed since the trace was recorded?)"
            )
        return value


class DeviationStrategy(BisectStrategy):
    """Canonical except at the given deviations: at a step, the named task's callback runs
    (its ``rank``-th ready one; canonical when the task has none ready there in this run);
    at a timing choice, the given value (capped to what the choice allows)."""

    def __init__(self, deviations: Sequence[Deviation | TimingDeviation], note: int | None = None) -> None:
        super().__init__(note)
        self.at = {d.step: d for d in deviations if isinstance(d, Deviation)}
        self.at_timing = {d.index: d for d in deviations if isinstance(d, TimingDeviation)}
        self.chosen = f"canonical but for {len(deviations)} deviation(s)"

    def target(self, step: int) -> int | None:
        d = self.at.get(step)
        if d is None:
            return None
        candidates = [seq for seq in self._pending if self.tid_of(seq) == d.tid]
        if not candidates:
            return None  # the task is not ready here in this run: nothing to deviate to
        return candidates[min(d.rank, len(candidates) - 1)]

    def timing_target(self, index: int, kind: str, options: int) -> int | None:
        d = self.at_timing.get(index)
        if d is None:
            return None
        return min(d.value, options)


# ---------------------------------------------------------------------------------------------
# the search


@dataclass
class StrategyRun:
    error: BaseException | None
    schedule: Schedule
    deviations: list[Decision | TimingDecision]
    noted: Decision | TimingDecision | None


@dataclass
class BisectResult:
    test: str
    seed: int
    failure: str  # "Type: message"
    canonical_fails: bool
    prefix: int  # k: the trace's first k choices make the failure inevitable
    decisive: Decision | TimingDecision | None
    trace_deviations: int
    minimal: list[Decision | TimingDecision]
    min_trace: Path | None
    replay_ok: bool
    runs: int
    ordering: str = "any"
    report: str = ""
    notes: list[str] = field(default_factory=list)


def min_trace_path(path: Path) -> Path:
    """``x.yaml`` -> ``x.min.yaml`` (any other name gets ``.min.yaml`` appended)."""
    name = path.name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".min.yaml")
    return path.with_name(name + ".min.yaml")


class _Bisector:
    def __init__(self, trace: Trace, make_main: MainFactory, where: str, max_runs: int) -> None:
        self.trace = trace
        self.make_main = make_main
        self.where = where
        try:
            self.config = config_from_dict(trace.config, where)
        except TraceError as exc:
            raise BisectError(str(exc)) from None
        if self.config.ordering != trace.schedule.ordering:  # a config without the key: the schedule's
            self.config = self.config.with_ordering(trace.schedule.ordering)
        self.max_runs = max_runs
        self.runs = 0
        if trace.outcome != "failed" or not trace.error:
            raise BisectError(f"{where}: the trace records a passing run: there is no failure to bisect")
        self.expected = str(trace.error.get("type"))

    def run(self, strategy: BisectStrategy) -> StrategyRun:
        if self.runs >= self.max_runs:
            raise BisectError(f"{self.where}: gave up after {self.runs} runs (the limit)")
        self.runs += 1
        recorder = Recorder()
        error = self.failure(Runner(self.config.with_strategy(strategy), recorder=recorder))
        assert recorder.schedule is not None
        deviations: list[Decision | TimingDecision] = [*strategy.decisions, *strategy.timings]
        return StrategyRun(error, recorder.schedule, deviations, strategy.noted)

    def failure(self, runner: Runner) -> BaseException | None:
        """Run the test on ``runner``: what it failed with, or None when it passed."""
        try:
            runner.start(self.make_main())
        except (KeyboardInterrupt, SystemExit, BisectError):
            raise
        except BaseException as exc:  # noqa: BLE001 - the failure under study
            return exc
        return None

    def fails(self, run: StrategyRun) -> bool:
        return run.error is not None and type(run.error).__name__ == self.expected

    def prefix(self, k: int, note: int | None = None) -> StrategyRun:
        return self.run(PrefixStrategy(self.trace.schedule, k, note))

    def ddmin(self, items: list[Deviation | TimingDeviation]) -> list[Deviation | TimingDeviation]:
        def test(subset: list[Deviation | TimingDeviation]) -> bool:
            return self.fails(self.run(DeviationStrategy(subset)))

        n = 2
        while len(items) >= 2:
            size = math.ceil(len(items) / n)
            chunks = [items[i : i + size] for i in range(0, len(items), size)]
            for chunk in chunks:
                if test(chunk):
                    items, n = chunk, 2
                    break
            else:
                for j in range(len(chunks)):
                    rest = [d for c, chunk in enumerate(chunks) if c != j for d in chunk]
                    if test(rest):
                        items, n = rest, max(n - 1, 2)
                        break
                else:
                    if n >= len(items):
                        break
                    n = min(len(items), 2 * n)
        return items


def delay_cost(deviations: Sequence[Decision | TimingDecision]) -> int:
    """What the schedule costs in ``explore``'s measure: taking the r-th oldest ready
    callback costs r (each older one is delayed once), a late wake-up 1.  A bisect counts its
    deviations one per non-canonical choice; exploring with this budget reaches the schedule."""
    return sum(d.rank if isinstance(d, Decision) else d.value if d.kind == "tie" else int(d.deviation)
               for d in deviations)


def _deviation(d: Decision | TimingDecision) -> Deviation | TimingDeviation:
    if isinstance(d, Decision):
        return Deviation(d.step, d.tid, d.task_rank)
    return TimingDeviation(d.index, d.value)


def _plain(d: Decision | TimingDecision) -> dict[str, Any]:
    if isinstance(d, Decision):
        return {"step": d.step, "task": d.tid, "label": d.label, "instead_of": d.canonical_tid, "rank": d.rank}
    return {"timing_choice": d.index, "step": d.step, "kind": d.kind, "value": d.value, "options": d.options}


def bisect_trace(
    trace: Trace,
    make_main: MainFactory,
    output: Path,
    *,
    where: str,
    display: Callable[[Path], str] = str,
    max_runs: int = MAX_RUNS,
) -> BisectResult:
    """Bisect ``trace`` (see the module docstring) and write the minimal trace to ``output``."""
    b = _Bisector(trace, make_main, where, max_runs)
    failure = trace.failure()
    schedule = trace.schedule
    fifo = schedule.ordering == "fifo"
    total = len(schedule.timing) if fifo else trace.steps

    full = b.prefix(total)
    if not b.fails(full):
        got = "it passed" if full.error is None else f"it failed with {type(full.error).__name__}: {full.error}"
        raise BisectError(f"{where}: following the trace's schedule does not reproduce {b.expected}: {got}")
    canonical = b.prefix(0)
    canonical_fails = b.fails(canonical)
    decisive: Decision | TimingDecision | None = None
    if canonical_fails:
        k = 0
        minimal_run = canonical
    else:
        lo, hi = 0, total
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if b.fails(b.prefix(mid)):
                hi = mid
            else:
                lo = mid
        k = hi
        decisive_run = b.prefix(k, note=k - 1)
        decisive = decisive_run.noted
        minimal = b.ddmin([_deviation(d) for d in decisive_run.deviations])
        minimal_run = b.run(DeviationStrategy(minimal))
        if not b.fails(minimal_run):  # ddmin only keeps failing sets; this guards the strategy itself
            minimal_run = decisive_run

    recorded = minimal_run.schedule
    min_trace = trace_from_schedule(recorded, test=trace.test, seed=trace.seed, config=dict(trace.config))
    decisive_key = "decisive_timing_choice" if fifo else "decisive_step"
    decisive_at = None if decisive is None else (decisive.index if isinstance(decisive, TimingDecision) else decisive.step)
    min_trace.extra = {
        "bisect": {
            "source": display(Path(where)),
            "source_strategy": trace.strategy,
            "ordering": schedule.ordering,
            "canonical_fails": canonical_fails,
            decisive_key: decisive_at,
            "deviations": [_plain(d) for d in minimal_run.deviations],
            "delay_cost": delay_cost(minimal_run.deviations),
        }
    }
    write_trace(output, min_trace)

    # The written trace must replay, with the runtime's own Replayer, to the same failure.
    replayed = b.failure(Runner(b.config, replay=recorded))
    replay_ok = replayed is not None and type(replayed).__name__ == b.expected
    result = BisectResult(
        test=trace.test, seed=trace.seed, failure=failure, canonical_fails=canonical_fails, prefix=k,
        decisive=decisive, trace_deviations=len(full.deviations), minimal=minimal_run.deviations,
        min_trace=output, replay_ok=replay_ok, runs=b.runs + 1, ordering=schedule.ordering,
    )
    if not replay_ok:
        got = "it passed" if replayed is None else f"{type(replayed).__name__}: {replayed}"
        result.notes.append(f"WARNING: replaying the minimal trace did not reproduce {b.expected} ({got})")
    result.report = _report(result, trace, where, display)
    return result


def _report(r: BisectResult, trace: Trace, where: str, display: Callable[[Path], str]) -> str:
    s = trace.schedule
    lines = [f"bisect of {where}"]
    if r.ordering == "fifo":
        lines += [
            f"  test {r.test} (seed {r.seed}), {trace.steps} scheduling decisions, {len(s.timing)} timing choices, "
            f"failure {r.failure}",
            f"  recorded under strategy {trace.strategy}, ordering fifo: callbacks run in the order they became "
            f"ready, so the schedule's only choices are timing ones (how late an idle loop wakes, which decides "
            f"which timers due close together fire in one round, and which of the deliveries due at one instant "
            f"on different connections arrives first); the bisect searches those",
        ]
        canonical, what, unit = "the canonical timing (every wake-up on time, deliveries in send order)", \
            "timing", "timing choices"
    else:
        lines += [
            f"  test {r.test} (seed {r.seed}), {trace.steps} scheduling decisions, failure {r.failure}",
            f"  recorded under strategy {trace.strategy}, ordering any",
        ]
        canonical, what, unit = "the canonical schedule (oldest ready task first)", "order", "decisions"
    if r.canonical_fails:
        lines.append(f"  {canonical} fails the same way: the failure does not")
        lines.append("  depend on scheduling choices (look at the test's logic, its inputs or its timing)")
    else:
        lines.append(f"  {canonical} passes")
        lines.append(f"  the failure is inevitable after the trace's first {r.prefix} {unit} (the rest canonical)")
        if r.decisive is not None:
            label = "decisive timing choice" if isinstance(r.decisive, TimingDecision) else "decisive decision"
            lines.append(f"  {label}: {r.decisive.describe()}")
        cost = delay_cost(r.minimal)
        lines.append(
            f"  minimal schedule: {len(r.minimal)} deviation(s) from the canonical {what} "
            f"(the recorded run had {r.trace_deviations}); delay cost {cost}, the budget --cw-explore counts "
            f"(taking the r-th oldest ready callback costs r, a late wake-up 1), so --cw-explore={cost} reaches it:"
        )
        for d in r.minimal:
            lines.append(f"    {d.describe()}")
    assert r.min_trace is not None
    shown = display(r.min_trace)
    lines.append(f"  written {shown} ({'replays to the same failure' if r.replay_ok else 'does NOT replay to the failure'})")
    lines.extend(f"  {note}" for note in r.notes)
    lines.append(f"  {r.runs} runs")
    lines.append(f"  reproduce: pytest {shlex.quote('--cw-replay=' + shown)}")
    return "\n".join(lines)
