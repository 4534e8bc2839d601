"""Recording a run's schedule, and replaying a run from one.

A recording holds, per scheduling decision, the index picked in the round's ready
list and the stable id of the task that ran; per round, the step at which it began
and its virtual time; every ``checkpoint_every`` steps, the auditor state.  Arrays of
machine ints keep recording to a couple of appends per decision.

Replay drives the loop from the recorded picks instead of the scheduler RNG and checks
at every decision that the task about to run is the one recorded, at every round that
the time matches and at every checkpoint that the auditor matches.  The first mismatch
raises ``ReplayDivergence`` naming the step, time, and expected vs actual task.
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
    picks: array = field(default_factory=lambda: array("I"))
    ids: array = field(default_factory=lambda: array("I"))
    round_steps: array = field(default_factory=lambda: array("Q"))
    round_times: array = field(default_factory=lambda: array("q"))
    checkpoints: list[tuple[int, int, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    steps: int = 0
    auditor: str = ""
    outcome: str = "passed"
    error: dict[str, str] | None = None
    checkpoint_every: int = 1024

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

    def begin(self, seed: int) -> Schedule:
        self.schedule = Schedule(seed=seed, checkpoint_every=self.checkpoint_every)
        self._next_checkpoint = 0
        return self.schedule

    def round(self, step: int, now_ns: int, auditor: Any) -> None:
        schedule = self.schedule
        assert schedule is not None
        schedule.round_steps.append(step)
        schedule.round_times.append(now_ns)
        if step >= self._next_checkpoint:
            schedule.checkpoints.append((step, now_ns, auditor.state()))
            self._next_checkpoint = step + self.checkpoint_every


class Replayer:
    """Drives a run from a recorded ``Schedule``."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self._round = 0
        self._checkpoint = 0

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

    def diverged(self, step: int, now_ns: int, pick: int, n: int, actual_tid: int | None, actual_label: str) -> ReplayDivergence:
        schedule = self.schedule
        if step >= len(schedule.ids):
            expected = "end of run"
        else:
            tid = schedule.ids[step]
            expected = f"task {schedule.task_label(tid)!r} (id {tid})"
        if actual_tid is None:
            actual = f"only {n} ready callback(s), no choice #{pick}"
        else:
            actual = f"task {actual_label!r} (id {actual_tid})"
        return ReplayDivergence(
            f"replay diverged at step {step} (t={now_ns / NS_PER_SECOND:.9f}s): the trace expected {expected}, "
            f"the run would run {actual}",
            step=step, time_ns=now_ns, expected=expected, actual=actual,
        )
