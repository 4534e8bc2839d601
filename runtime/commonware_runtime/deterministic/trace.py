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
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..arguments import NS_PER_SECOND
from ..errors import Error

__all__ = ["Recorder", "Schedule", "Replayer", "ReplayDivergence"]


class ReplayDivergence(Error):
    """A replayed run no longer matches its recorded schedule."""

    def __init__(self, message: str, *, step: int, time_ns: int, expected: str, actual: str) -> None:
        super().__init__(message)
        self.step = step
        self.time = time_ns / NS_PER_SECOND
        self.expected = expected
        self.actual = actual


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

    def task_label(self, tid: int) -> str:
        if tid == 0:
            return "<callback>"
        return self.labels[tid] if tid < len(self.labels) else f"<task {tid}>"

    def decisions(self) -> list[tuple[int, int, int, str]]:
        """(step, time_ns, task id, label) for every decision, in order."""
        out = []
        r = 0
        nrounds = len(self.round_steps)
        for step in range(len(self.ids)):
            while r + 1 < nrounds and self.round_steps[r + 1] <= step:
                r += 1
            t = self.round_times[r] if nrounds else 0
            tid = self.ids[step]
            out.append((step, t, tid, self.task_label(tid)))
        return out


class Recorder:
    """Pass to ``deterministic.Runner(..., recorder=...)``; ``.schedule`` holds the result."""

    def __init__(self, checkpoint_every: int = 1024) -> None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every <= 0:
            raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        self.checkpoint_every = checkpoint_every
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
        self._next_checkpoint = 0
        return self.schedule

    def round(self, step: int, now_ns: int, loop: Any) -> None:
        schedule = self.schedule
        assert schedule is not None
        schedule.round_steps.append(step)
        schedule.round_times.append(now_ns)
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

    # -- the chooser -------------------------------------------------------------------------

    def begin(self, rng: Any, loop: Any) -> None:
        self._round = self._checkpoint = self._timing = 0

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
            raise ReplayDivergence(
                f"replay diverged: the run makes more timing choices than the trace recorded ({len(timing)})",
                step=-1, time_ns=0, expected=f"{len(timing)} timing choices", actual="more",
            )
        self._timing = i + 1
        return int(timing[i])

    def late(self, limit_ns: int) -> int:
        return self._timing_value()

    def not_ready(self, step: int, now_ns: int, seq: int, loop: Any) -> ReplayDivergence:
        pending = loop.pending_labels()
        if step >= len(self.schedule.picks):
            return ReplayDivergence(
                f"replay diverged at step {step} (t={now_ns / NS_PER_SECOND:.9f}s): the trace ended after "
                f"{len(self.schedule.picks)} decisions, the run still has ready tasks {sorted(pending)}",
                step=step, time_ns=now_ns, expected="end of run", actual=f"ready tasks {sorted(pending)}",
            )
        tid = self.schedule.ids[step]
        expected = f"task {self.schedule.task_label(tid)!r} (id {tid}), ready callback #{seq}"
        return ReplayDivergence(
            f"replay diverged at step {step} (t={now_ns / NS_PER_SECOND:.9f}s): the trace ran {expected}, "
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
                nxt = schedule.task_label(schedule.ids[at]) if at < len(schedule.ids) else "nothing"
                expected = f"a round at step {at}, t={schedule.round_times[r] / NS_PER_SECOND:.9f}s, running {nxt!r} first"
            ready_labels = sorted(ready())
            actual = f"a round at step {step}, t={now_ns / NS_PER_SECOND:.9f}s, with ready tasks {ready_labels}"
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
                    f"replay diverged before step {step} (t={now_ns / NS_PER_SECOND:.9f}s): auditor state is "
                    f"{actual[:16]}..., the trace recorded {cps[c][2][:16]}... (an event other than a scheduling "
                    f"decision differs: network, storage, RNG or metrics)",
                    step=step, time_ns=now_ns, expected=cps[c][2], actual=actual,
                )
            self._checkpoint = c + 1

    def diverged(self, step: int, now_ns: int, actual_tid: int, actual_label: str) -> ReplayDivergence:
        tid = self.schedule.ids[step]
        expected = f"task {self.schedule.task_label(tid)!r} (id {tid})"
        actual = f"task {actual_label!r} (id {actual_tid})"
        return ReplayDivergence(
            f"replay diverged at step {step} (t={now_ns / NS_PER_SECOND:.9f}s): the trace expected {expected}, "
            f"the run would run {actual}",
            step=step, time_ns=now_ns, expected=expected, actual=actual,
        )
