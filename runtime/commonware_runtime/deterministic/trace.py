"""Recording a run's schedule, and replaying a run from one.

A recording holds, per scheduling decision, the ``seq`` of the callback that ran (callbacks
are numbered in the order they became ready, so a schedule names each choice by identity,
whatever structure the strategy kept them in) and the stable id of its task; per round,
the step at which it began and its virtual time; for every idle wake-up, how late
it was (ns); every ``checkpoint_every`` steps, the
auditor state.  Arrays of machine ints keep recording to a few appends per decision.

The recorder only watches.  Replay is one more chooser: it hands the loop the recorded
``seq`` at every decision and the recorded timing values, and checks at every decision
that the task about to run is the one recorded, at every round that the time matches and
at every checkpoint that the auditor matches.  The first mismatch raises
``ReplayDivergence`` naming the step, time, and expected vs actual task.

A ``Schedule`` answers the questions every reader of a recording asks, so that none of them
works it out again: at what virtual time a step ran (``time_at``) and in which round
(``round_of``), every step with its time, round, callback and task (``iter_steps``), where
two recordings first part (``first_divergence``, a ``Divergence``: what differs, at which
step, in words).  ``format_seconds`` prints a virtual instant the one way every report of
this package prints it (nine decimals, exact).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..arguments import NS_PER_SECOND
from ..errors import Error
from ..tasks import shown_label

__all__ = ["Divergence", "Recorder", "Schedule", "Step", "Replayer", "ReplayDivergence", "format_seconds"]

# An audited event's kind, by the first part of its tag (storage.write, net.send, rng, ...).
_EVENT_KINDS = {"storage": "storage", "net": "network", "rng": "random", "metric": "metric", "label": "label",
                "start": "lifecycle", "restart": "lifecycle"}


def format_seconds(ns: int) -> str:
    """Virtual time ``ns`` (nanoseconds) in seconds with nine decimals: ``"0.086839471"``.

    Every message that names a virtual instant (replay divergences, stalls, traces, bisect
    reports) prints it through this, so the same instant reads the same everywhere.  Integer
    arithmetic keeps every digit exact (a float division drops the last ones past ~52 days).
    """
    whole, frac = divmod(abs(ns), NS_PER_SECOND)
    return f"{'-' if ns < 0 else ''}{whole}.{frac:09d}"


class ReplayDivergence(Error):
    """A replayed run no longer matches its recorded schedule."""

    def __init__(self, message: str, *, step: int, time_ns: int, expected: str, actual: str) -> None:
        super().__init__(message)
        self.step = step
        self.time = time_ns / NS_PER_SECOND
        self.expected = expected
        self.actual = actual


class Step(NamedTuple):
    """One scheduling decision of a recorded run, as ``Schedule.iter_steps`` yields it."""

    step: int
    time_ns: int  # the virtual time of its round
    round: int  # the index of its round (-1 only in a schedule without rounds)
    new_round: bool  # the first decision of its round
    pick: int  # the seq of the callback that ran (callbacks are numbered as they became ready)
    tid: int  # the stable id of its task; 0 for a plain loop callback


@dataclass(frozen=True)
class Divergence:
    """Where two recorded runs first differ (``Schedule.first_divergence``).

    ``kind`` is ``"schedule"`` (a different task, time, round boundary, callback or timing
    choice), ``"length"`` (one run ends first), ``"auditor"`` (the same decisions, a
    checkpoint's state differs: an event other than scheduling), ``"final-auditor"`` or
    ``"outcome"``.  ``event`` says which event of a ``"schedule"`` difference it is:
    ``"task"`` (another task, or another label, ran), ``"time"`` (the same task at another
    virtual time), ``"round"`` (the same task and time, but a round begins in one run only),
    ``"callback"`` (another ready callback of the same task) or ``"timing"`` (a timer tie or
    a late wake-up went another way); for the other kinds it is the kind.  ``step`` and
    ``time_ns`` say where (``time_ns`` is None for a timing choice, which no step owns, and
    at the end of an empty run); ``expected`` and ``actual`` what each run has there, and
    ``message`` all of it in one line.
    """

    kind: str
    step: int
    time_ns: int | None
    expected: str
    actual: str
    message: str
    event: str


def _failure_line(error: Mapping[str, Any] | None, limit: int) -> str:
    if error is None:
        return ""
    lines = str(error.get("message", "")).strip().splitlines() or [""]
    text = f"{error.get('type')}: {lines[0]}"
    if len(lines) > 1 or len(text) > limit:
        text = text[: limit - 1] + "…" if len(text) > limit else text + " …"
    return text


@dataclass
class Schedule:
    """Everything a recorded run's scheduler did (see module docstring)."""

    seed: int
    picks: array[int] = field(default_factory=lambda: array("I"))
    ids: array[int] = field(default_factory=lambda: array("I"))
    round_steps: array[int] = field(default_factory=lambda: array("Q"))
    round_times: array[int] = field(default_factory=lambda: array("q"))
    checkpoints: list[tuple[int, int, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    steps: int = 0
    auditor: str = ""
    outcome: str = "passed"
    error: dict[str, str] | None = None
    checkpoint_every: int = 1024
    timing: array[int] = field(default_factory=lambda: array("q"))
    ordering: str = "any"
    strategy: str = "random"  # the strategy as configured (e.g. "swarm")
    chosen: str = ""  # what it chose for this run, when that says more (swarm: "pct:3")
    holds_back: bool = False  # callbacks made ready mid-round could be chosen at once
    # With ``Recorder(events=True)``: every audited event other than a scheduling decision,
    # as (tag, digest of its fields), and how many there were when each round began.
    events: list[tuple[str, str]] | None = None
    event_rounds: array[int] = field(default_factory=lambda: array("Q"))

    def task_label(self, tid: int) -> str:
        if tid == 0:
            return "<callback>"
        return self.labels[tid] if tid < len(self.labels) else f"<task {tid}>"

    def failure(self, limit: int = 200) -> str:
        """``Type: message`` of the run's error on one line (at most ``limit`` characters,
        ``…`` where cut); empty when the run passed."""
        return _failure_line(self.error, limit)

    # -- queries: every reader of a recording asks these, none works them out again -----------

    def round_of(self, step: int) -> int:
        """The index of the round ``step`` was decided in (-1 when the schedule has no rounds)."""
        if not self.round_steps:
            return -1
        return max(bisect_right(self.round_steps, step) - 1, 0)

    def time_at(self, step: int) -> int:
        """The virtual time (ns) at which ``step`` was decided: its round's (0 without rounds)."""
        r = self.round_of(step)
        return int(self.round_times[r]) if r >= 0 else 0

    def iter_steps(self, start: int = 0, stop: int | None = None) -> Iterator[Step]:
        """Every decision from ``start`` up to ``stop`` (default: the end), in order, as ``Step``s."""
        ids, picks = self.ids, self.picks
        end = len(ids) if stop is None else min(stop, len(ids))
        npicks = len(picks)
        starts, times = self.round_steps, self.round_times
        nrounds = len(starts)
        if nrounds == 0:
            for s in range(start, end):
                yield Step(s, 0, -1, False, picks[s] if s < npicks else 0, ids[s])
            return
        r = self.round_of(start)
        step = start
        while step < end:
            first, t = starts[r], times[r]
            bound = min(starts[r + 1] if r + 1 < nrounds else end, end)
            for s in range(step, bound):
                yield Step(s, t, r, s == first, picks[s] if s < npicks else 0, ids[s])
            step = bound
            r += 1

    def decisions(self) -> list[tuple[int, int, int, str]]:
        """(step, time_ns, task id, label) for every decision, in order."""
        return [(d.step, d.time_ns, d.tid, self.task_label(d.tid)) for d in self.iter_steps()]

    def first_divergence(self, other: Schedule) -> Divergence | None:
        """The first difference between this run (the expected one) and ``other``; None when
        their schedules, states and outcomes agree.

        Scheduling decisions are compared first, step by step (the task and its label, the
        time, where rounds begin, the callback's seq), then the timing choices, then the
        length, then auditor checkpoints (an event other than scheduling differed), the final
        auditor state and the outcome.
        """
        a, b = self, other
        if (a.ids == b.ids and a.picks == b.picks and a.round_steps == b.round_steps
                and a.round_times == b.round_times and a.labels == b.labels):
            n = len(a.ids)
        else:
            n = 0
            for x, y in zip(a.iter_steps(), b.iter_steps(), strict=False):
                task_a, task_b = a._task(x.tid), b._task(y.tid)
                step, ta = x.step, x.time_ns
                if ta != y.time_ns or x.new_round != y.new_round or task_a != task_b:
                    event = "task" if task_a != task_b else "time" if ta != y.time_ns else "round"
                    exp = f"{task_a} at t={format_seconds(ta)}s" + (" (new round)" if x.new_round else "")
                    act = f"{task_b} at t={format_seconds(y.time_ns)}s" + (" (new round)" if y.new_round else "")
                    return Divergence("schedule", step, ta, exp, act, f"first divergence at step {step}: {exp} vs {act}",
                                      event)
                if x.pick != y.pick:
                    exp, act = f"{task_a} as callback #{x.pick}", f"{task_b} as callback #{y.pick}"
                    return Divergence("schedule", step, ta, exp, act,
                                      f"first divergence at step {step} (t={format_seconds(ta)}s): another ready "
                                      f"callback ran: {exp} vs {act}", "callback")
                n = step + 1
        if len(a.ids) == len(b.ids) and a.timing != b.timing:
            # The same decisions so far, but a tie among due timers or a late wake-up went
            # another way (which the schedule does not tie to a step).
            i = next((i for i, (x_, y_) in enumerate(zip(a.timing, b.timing, strict=False)) if x_ != y_),
                     min(len(a.timing), len(b.timing)))
            exp = f"timing choice {i}: {a.timing[i]}" if i < len(a.timing) else f"{len(a.timing)} timing choices"
            act = f"timing choice {i}: {b.timing[i]}" if i < len(b.timing) else f"{len(b.timing)} timing choices"
            return Divergence("schedule", n, None, exp, act,
                              f"the same {n} decisions, but the timing choices differ: {exp} vs {act}", "timing")
        if len(a.ids) != len(b.ids):
            exp, time_a = a._at_step(n)
            act, time_b = b._at_step(n)
            return Divergence("length", n, time_a if time_a is not None else time_b, exp, act,
                              f"first divergence at step {n}: {exp} vs {act}", "length")
        differs = a.first_event_divergence(b)
        if differs is not None:
            return differs
        checkpoints_b = {step: auditor for step, _, auditor in b.checkpoints}
        for step, t, auditor in a.checkpoints:
            theirs = checkpoints_b.get(step)
            if theirs is not None and theirs != auditor:
                return Divergence(
                    "auditor", step, t, f"auditor {auditor[:16]}...", f"auditor {theirs[:16]}...",
                    f"first divergence before step {step} (t={format_seconds(t)}s): same schedule, but the auditor "
                    f"state differs ({auditor[:16]}... vs {theirs[:16]}...): an event other than scheduling (network, "
                    f"storage, RNG, metrics) differs", "auditor",
                )
        end_time = int(a.round_times[-1]) if len(a.round_times) else None
        if a.auditor != b.auditor:
            return Divergence(
                "final-auditor", n, end_time, f"final auditor {a.auditor[:16]}...", f"final auditor {b.auditor[:16]}...",
                f"same schedule ({n} steps), but the final auditor state differs ({a.auditor[:16]}... vs "
                f"{b.auditor[:16]}...): an event other than scheduling differs after the last checkpoint", "final-auditor",
            )
        if a.outcome != b.outcome or a.error != b.error:
            exp, act = a._outcome(), b._outcome()
            return Divergence("outcome", n, end_time, exp, act,
                              f"same schedule and auditor, but the outcomes differ: {exp} vs {act}", "outcome")
        return None

    def first_event_divergence(self, other: Schedule) -> Divergence | None:
        """The first audited event (other than a scheduling decision) that differs between
        two runs recorded with ``Recorder(events=True)``; None when either has no events or
        they agree.  ``event`` names its kind: ``"storage"``, ``"network"``, ``"random"``
        (a draw from ``context.rng``), ``"metric"``, ``"label"`` or ``"lifecycle"``."""
        mine, theirs = self.events, other.events
        if mine is None or theirs is None or mine == theirs:
            return None
        i = next((i for i, (x, y) in enumerate(zip(mine, theirs, strict=False)) if x != y), min(len(mine), len(theirs)))
        r = bisect_right(self.event_rounds, i) - 1  # the round it happened in (-1: before the first)
        step = int(self.round_steps[r]) if r >= 0 else 0
        t = int(self.round_times[r]) if r >= 0 else 0
        exp = f"event {i}: {mine[i][0]}" if i < len(mine) else f"no event {i} (the run audited {len(mine)})"
        act = f"event {i}: {theirs[i][0]}" if i < len(theirs) else f"no event {i} (the run audited {len(theirs)})"
        if i < len(mine) and i < len(theirs) and mine[i][0] == theirs[i][0]:
            exp, act = exp + " with one content", act + " with another"
        # The kind named is that of the event one run has in excess, when the next events
        # show it (an extra draw shifts everything after it), else this run's.
        if i >= len(mine) or (i + 1 < len(theirs) and theirs[i + 1] == mine[i]):
            tag = theirs[i][0]
        else:
            tag = mine[i][0]
        return Divergence(
            "auditor", step, t, exp, act,
            f"the same scheduling decisions, but the {i + 1}th audited event differs, in the round from step "
            f"{step} (t={format_seconds(t)}s): {exp} vs {act}", _EVENT_KINDS.get(tag.split(".")[0], "other"),
        )

    def _task(self, tid: int) -> str:
        return f"task #{tid} {shown_label(self.task_label(tid))}"

    def _at_step(self, step: int) -> tuple[str, int | None]:
        """What ran at ``step`` and when, or the end of the run."""
        if step >= len(self.ids):
            return f"the end of the run ({len(self.ids)} steps)", None
        t = self.time_at(step)
        return f"{self._task(self.ids[step])} at t={format_seconds(t)}s", t

    def _outcome(self) -> str:
        return self.outcome if self.error is None else f"{self.outcome} ({self.failure()})"


class Recorder:
    """Pass to ``deterministic.Runner(..., recorder=...)``; ``.schedule`` holds the result."""

    def __init__(self, checkpoint_every: int = 1024, *, events: bool = False) -> None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every <= 0:
            raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        if not isinstance(events, bool):
            raise TypeError(f"events must be a bool, got {events!r}")
        self.checkpoint_every = checkpoint_every
        self.events = events  # keep every audited event's tag and digest (Schedule.events)
        self.schedule: Schedule | None = None
        self._next_checkpoint = 0

    def begin(self, loop: Any) -> Schedule:
        strategy = loop.strategy
        self.schedule = Schedule(
            seed=loop.seed, checkpoint_every=self.checkpoint_every, ordering=loop.ordering,
            strategy=strategy.name, chosen=str(getattr(strategy, "chosen", "")),
            holds_back=bool(strategy.holds_back) and loop.ordering == "any",
        )
        self.schedule.labels = loop.task_labels  # shared: labels appear as tasks are created
        if self.events:
            self.schedule.events = loop.auditor.trail = []
        self._next_checkpoint = 0
        return self.schedule

    def round(self, step: int, now_ns: int, loop: Any) -> None:
        schedule = self.schedule
        assert schedule is not None
        schedule.round_steps.append(step)
        schedule.round_times.append(now_ns)
        if schedule.events is not None:
            schedule.event_rounds.append(len(schedule.events))
        if step >= self._next_checkpoint:
            schedule.checkpoints.append((step, now_ns, loop.auditor.state()))
            self._next_checkpoint = step + self.checkpoint_every

    def timing(self, value: int) -> None:
        assert self.schedule is not None
        self.schedule.timing.append(value)


class Replayer:
    """Drives a run from a recorded ``Schedule``: the chooser of the run and its checker."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.name = f"replay of {schedule.strategy}"
        self.holds_back = schedule.holds_back
        self._round = 0
        self._checkpoint = 0
        self._timing = 0
        self._loop: Any = None

    # -- the chooser -------------------------------------------------------------------------

    def begin(self, rng: Any, loop: Any) -> None:
        self._round = self._checkpoint = self._timing = 0
        self._loop = loop  # where a timing divergence happens: its step and virtual time

    def arrive(self, seq: int, handle: Any) -> None:
        pass  # the loop keeps the ready callbacks by seq; the trace names which one runs

    def choose(self, step: int) -> int:
        picks = self.schedule.picks
        if step >= len(picks):
            return -1  # not ready: not_ready() reports the run outliving its trace
        return int(picks[step])

    def _timing_value(self) -> int:
        timing = self.schedule.timing
        i = self._timing
        if i >= len(timing):
            loop = self._loop
            step = getattr(loop, "steps", -1)
            now_ns = getattr(loop, "now_ns", 0)
            where = f" at step {step} (t={format_seconds(now_ns)}s)" if loop is not None else ""
            raise ReplayDivergence(
                f"replay diverged{where}: the idle loop makes timing choice {i}, and the trace recorded only "
                f"{len(timing)} (a wait the recorded run did not have: a sleep or timeout added or longer)",
                step=step, time_ns=now_ns, expected=f"{len(timing)} timing choices", actual=f"timing choice {i}",
            )
        self._timing = i + 1
        return int(timing[i])

    def late(self, limit_ns: int) -> int:
        return self._timing_value()

    def tie(self, n: int) -> int:
        value = self._timing_value()
        if value >= n:
            loop = self._loop
            raise ReplayDivergence(
                f"replay diverged at step {getattr(loop, 'steps', -1)}: the trace had delivery #{value} of those due "
                f"at one instant arrive first, this run has {n} due then",
                step=getattr(loop, "steps", -1), time_ns=getattr(loop, "now_ns", 0),
                expected=f"delivery #{value} first", actual=f"{n} deliveries due",
            )
        return value

    def not_ready(self, step: int, now_ns: int, seq: int, loop: Any) -> ReplayDivergence:
        pending = loop.pending_labels()
        if step >= len(self.schedule.picks):
            return ReplayDivergence(
                f"replay diverged at step {step} (t={format_seconds(now_ns)}s): the trace ended after "
                f"{len(self.schedule.picks)} decisions, the run still has ready tasks {sorted(pending)}",
                step=step, time_ns=now_ns, expected="end of run", actual=f"ready tasks {sorted(pending)}",
            )
        tid = self.schedule.ids[step]
        expected = f"task {shown_label(self.schedule.task_label(tid))} (id {tid}), ready callback #{seq}"
        return ReplayDivergence(
            f"replay diverged at step {step} (t={format_seconds(now_ns)}s): the trace ran {expected}, "
            f"which is not ready in this run (ready: {sorted(pending)})",
            step=step, time_ns=now_ns, expected=expected, actual=f"ready tasks {sorted(pending)}",
        )

    # -- the checks --------------------------------------------------------------------------

    def round(self, step: int, now_ns: int, loop: Any) -> None:
        self.check_round(step, now_ns, loop.auditor, loop.pending_labels)

    def decision(self, step: int, seq: int, tid: int, loop: Any) -> None:
        if tid != self.schedule.ids[step]:
            raise self.diverged(step, loop.now_ns, tid, loop.task_labels[tid] if tid else "<callback>")

    def timing(self, value: int) -> None:
        pass  # the value came from this replayer

    def label(self, tid: int) -> str:
        return self.schedule.task_label(tid)

    def check_round(self, step: int, now_ns: int, auditor: Any, ready: Callable[[], list[str]]) -> None:
        schedule = self.schedule
        r = self._round
        if r >= len(schedule.round_steps) or schedule.round_steps[r] != step or schedule.round_times[r] != now_ns:
            if r >= len(schedule.round_steps):
                expected = f"the end of the run ({schedule.steps} steps)"
            else:
                at = schedule.round_steps[r]
                nxt = shown_label(schedule.task_label(schedule.ids[at])) if at < len(schedule.ids) else "nothing"
                expected = f"a round at step {at}, t={format_seconds(schedule.round_times[r])}s, running {nxt} first"
            ready_labels = ", ".join(shown_label(label) for label in sorted(ready()))
            actual = f"a round at step {step}, t={format_seconds(now_ns)}s, with ready tasks [{ready_labels}]"
            raise ReplayDivergence(
                f"replay diverged at step {step}: the trace expected {expected}; the run has {actual}",
                step=step, time_ns=now_ns, expected=expected, actual=actual,
            )
        self._round = r + 1
        cps = schedule.checkpoints
        c = self._checkpoint
        if c < len(cps) and cps[c][0] == step:
            actual = auditor.state()
            if actual != cps[c][2]:
                raise ReplayDivergence(
                    f"replay diverged before step {step} (t={format_seconds(now_ns)}s): auditor state is "
                    f"{actual[:16]}..., the trace recorded {cps[c][2][:16]}... (an event other than a scheduling "
                    f"decision differs: network, storage, RNG or metrics)",
                    step=step, time_ns=now_ns, expected=cps[c][2], actual=actual,
                )
            self._checkpoint = c + 1

    def diverged(self, step: int, now_ns: int, actual_tid: int, actual_label: str) -> ReplayDivergence:
        tid = self.schedule.ids[step]
        expected = f"task {shown_label(self.schedule.task_label(tid))} (id {tid})"
        actual = f"task {shown_label(actual_label)} (id {actual_tid})"
        return ReplayDivergence(
            f"replay diverged at step {step} (t={format_seconds(now_ns)}s): the trace expected {expected}, "
            f"the run would run {actual}",
            step=step, time_ns=now_ns, expected=expected, actual=actual,
        )
