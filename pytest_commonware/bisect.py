"""``--cw-bisect``: from a failing trace to the decisive decision and a minimal schedule.

Vocabulary.  A run is a sequence of scheduling *decisions*: in each round the loop runs
every callback that was ready when the round began, one at a time, and a decision picks
which one runs next.  The *canonical* choice is the oldest ready callback: the one made
ready first (``call_soon`` order), which is the order of the round's ready list before any
removal.  A *deviation* is a decision that is not the canonical choice.

Two questions, each answered by running the test again under a *driver* that makes every
decision (``deterministic.Runner(config, driver=...)``, see ``EventLoop.start_driven``):

1. The decisive decision.  ``prefix(k)``: follow the trace's first ``k`` decisions, then
   make every later decision canonically.  ``prefix(steps)`` is the recorded run (it
   fails); ``prefix(0)`` is the canonical run.  If the canonical run fails too, the failure
   does not depend on scheduling.  Otherwise a binary search finds the smallest ``k`` with
   ``prefix(k)`` failing (the same exception type) and ``prefix(k - 1)`` passing: after the
   trace's first ``k`` decisions the failure is inevitable, and decision ``k - 1`` (always a
   deviation: were it canonical the two runs would be the same run) is the one that decides.
   The search assumes that once inevitable, a failure stays inevitable for longer prefixes
   (true of the usual races; a schedule where it is not still yields a correct, replayable
   minimal trace below, only the "decisive" step is then one of several).
2. The minimal schedule.  ``prefix(k)``'s deviations (each: at step s run task t, the r-th
   ready callback of that task) are shrunk with delta debugging (ddmin) to a set none of
   whose members can be dropped without losing the failure; the others become canonical.
   That run is recorded like any other and written as a replayable trace.

The runtime asks the driver for every pick and removes with the same swap-remove as a
seeded run, so the recorded picks mean exactly what the runtime's ``Replayer`` expects.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from commonware_runtime import deterministic
from commonware_runtime.arguments import NS_PER_SECOND
from commonware_runtime.deterministic.loop import EventLoop, await_site

from .engine import config_from_dict, run_deterministic
from .tracefile import Trace, trace_from_schedule, write_trace

__all__ = [
    "BisectError",
    "BisectResult",
    "Decision",
    "Deviation",
    "NotingDriver",
    "bisect_trace",
    "min_trace_path",
]

MainFactory = Callable[[], Callable[[Any], Awaitable[Any]]]
MAX_RUNS = 2000  # a bound on the runs a bisect may take (ddmin is quadratic at worst)


class BisectError(Exception):
    """The bisect cannot proceed; the message says why in one line."""


class Driver(Protocol):
    def choose(self, step: int, batch: list[asyncio.Handle], order: list[int], loop: EventLoop) -> int:
        """Index into ``batch`` of the callback to run at ``step``; ``order[i]`` is its ready-order rank."""


@dataclass(frozen=True)
class Decision:
    """What ran at one step, and what the canonical order would have run instead."""

    step: int
    time_ns: int
    tid: int
    label: str
    rank: int  # among the ready callbacks of the same task id, in ready order
    site: str  # where the task was suspended (what it resumed from)
    canonical_tid: int
    canonical_label: str

    @property
    def deviation(self) -> bool:
        return self.tid != self.canonical_tid or self.rank != 0

    def describe(self) -> str:
        t = f"t={self.time_ns / NS_PER_SECOND:.9f}s"
        ran = f"{_show(self.label)} (id {self.tid})" if self.tid else "a loop callback"
        canon = f"{_show(self.canonical_label)} (id {self.canonical_tid})" if self.canonical_tid else "a loop callback"
        where = f", resuming from {self.site}" if self.site else ""
        if not self.deviation:
            return f"step {self.step} ({t}): ran {ran}{where} (the canonical choice)"
        return f"step {self.step} ({t}): ran {ran}{where}, where the canonical order runs {canon} first"


@dataclass(frozen=True)
class Deviation:
    step: int
    tid: int
    rank: int


def _show(label: str) -> str:
    return repr(label) if label else "'<unlabeled>'"


def _tid(handle: asyncio.Handle, loop: EventLoop) -> int:
    return loop.owner_id(handle)


def _rank(batch: list[asyncio.Handle], order: list[int], i: int, loop: EventLoop) -> int:
    tid = _tid(batch[i], loop)
    mine = order[i]
    return sum(1 for j, h in enumerate(batch) if j != i and order[j] < mine and _tid(h, loop) == tid)


def _site(task: asyncio.Task[Any]) -> str:
    """Where ``task`` resumes: its await site, or its first line when it has not started yet."""
    coro: Any = task.get_coro()
    if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
        # The runtime wraps a spawned coroutine in a driver; name the user's coroutine.
        frame = coro.cr_frame
        inner = next((v for v in frame.f_locals.values() if inspect.iscoroutine(v)), coro) if frame else coro
        code = inner.cr_code
        return f"its start ({code.co_name}() at {os.path.basename(code.co_filename)}:{code.co_firstlineno})"
    site = await_site(task)
    return site.removeprefix("? ")  # "?": a bare yield (asyncio.sleep(0))


def canonical_index(order: list[int]) -> int:
    return order.index(min(order))


class PrefixDriver:
    """The trace's first ``k`` decisions, then the canonical order."""

    def __init__(self, schedule: deterministic.Schedule, k: int) -> None:
        self.schedule = schedule
        self.k = k

    def choose(self, step: int, batch: list[asyncio.Handle], order: list[int], loop: EventLoop) -> int:
        if step >= self.k:
            return canonical_index(order)
        i = self.schedule.picks[step]
        if i >= len(batch) or _tid(batch[i], loop) != self.schedule.ids[step]:
            raise BisectError(
                f"the test no longer follows its trace at step {step}: the trace ran task id "
                f"{self.schedule.ids[step]} there (was the test changed since the trace was recorded?)"
            )
        return i


class DeviationDriver:
    """Canonical order except at the given steps, where the named task's callback runs."""

    def __init__(self, deviations: list[Deviation]) -> None:
        self.at = {d.step: d for d in deviations}

    def choose(self, step: int, batch: list[asyncio.Handle], order: list[int], loop: EventLoop) -> int:
        d = self.at.get(step)
        if d is None:
            return canonical_index(order)
        candidates = sorted((order[j], j) for j, h in enumerate(batch) if _tid(h, loop) == d.tid)
        if not candidates:
            return canonical_index(order)  # the task is not ready here in this run: nothing to deviate to
        return candidates[min(d.rank, len(candidates) - 1)][1]


class NotingDriver:
    """Wraps a driver; notes every deviation from the canonical order (and ``note_step``)."""

    def __init__(self, driver: Driver, note_step: int | None = None) -> None:
        self.driver = driver
        self.note_step = note_step
        self.decisions: list[Decision] = []
        self.noted: Decision | None = None

    def choose(self, step: int, batch: list[asyncio.Handle], order: list[int], loop: EventLoop) -> int:
        i = self.driver.choose(step, batch, order, loop)
        if not 0 <= i < len(batch):
            raise BisectError(f"driver picked entry {i} of a ready list of {len(batch)} at step {step}")
        c = canonical_index(order)
        if c != i or step == self.note_step:
            self._note(step, loop, batch, order, i, c)
        return i

    def _note(self, step: int, loop: EventLoop, batch: list[asyncio.Handle], order: list[int], i: int, c: int) -> None:
        handle = batch[i]
        tid = _tid(handle, loop)
        owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
        site = _site(owner) if isinstance(owner, asyncio.Task) and tid else ""
        ctid = _tid(batch[c], loop)
        decision = Decision(
            step=step, time_ns=loop.now_ns, tid=tid, label=loop.task_labels[tid] if tid else "<callback>",
            rank=_rank(batch, order, i, loop), site=site, canonical_tid=ctid,
            canonical_label=loop.task_labels[ctid] if ctid else "<callback>",
        )
        if decision.deviation:
            self.decisions.append(decision)
        if step == self.note_step:
            self.noted = decision



@dataclass
class DrivenRun:
    error: BaseException | None
    schedule: deterministic.Schedule
    deviations: list[Decision]
    noted: Decision | None


@dataclass
class BisectResult:
    test: str
    seed: int
    failure: str  # "Type: message"
    canonical_fails: bool
    prefix: int  # k: the trace's first k decisions make the failure inevitable
    decisive: Decision | None
    trace_deviations: int
    minimal: list[Decision]
    min_trace: Path | None
    replay_ok: bool
    runs: int
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
        self.config = config_from_dict(trace.config, where)
        self.max_runs = max_runs
        self.runs = 0
        if trace.outcome != "failed" or not trace.error:
            raise BisectError(f"{where}: the trace records a passing run: there is no failure to bisect")
        self.expected = str(trace.error.get("type"))

    def run(self, driver: Driver, note_step: int | None = None) -> DrivenRun:
        if self.runs >= self.max_runs:
            raise BisectError(f"{self.where}: gave up after {self.runs} runs (the limit)")
        self.runs += 1
        noting = NotingDriver(driver, note_step)
        recorder = deterministic.Recorder()
        runner = deterministic.Runner(self.config, recorder=recorder, driver=noting)
        error: BaseException | None = None
        try:
            runner.start(self.make_main())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BisectError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the failure under study
            error = exc
        assert recorder.schedule is not None
        return DrivenRun(error, recorder.schedule, noting.decisions, noting.noted)

    def fails(self, run: DrivenRun) -> bool:
        return run.error is not None and type(run.error).__name__ == self.expected

    def prefix(self, k: int, note_step: int | None = None) -> DrivenRun:
        return self.run(PrefixDriver(self.trace.schedule, k), note_step)

    def ddmin(self, items: list[Deviation]) -> list[Deviation]:
        def test(subset: list[Deviation]) -> bool:
            return self.fails(self.run(DeviationDriver(subset)))

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
    total = trace.steps

    full = b.prefix(total)
    if not b.fails(full):
        got = "it passed" if full.error is None else f"it failed with {type(full.error).__name__}: {full.error}"
        raise BisectError(f"{where}: following the trace's schedule does not reproduce {b.expected}: {got}")
    canonical = b.prefix(0)
    canonical_fails = b.fails(canonical)
    decisive: Decision | None = None
    if canonical_fails:
        k = 0
        base: list[Deviation] = []
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
        decisive_run = b.prefix(k, note_step=k - 1)
        decisive = decisive_run.noted
        base = [Deviation(d.step, d.tid, d.rank) for d in decisive_run.deviations]
        minimal = b.ddmin(base)
        minimal_run = b.run(DeviationDriver(minimal))
        if not b.fails(minimal_run):  # ddmin only keeps failing sets; this guards the driver itself
            minimal_run = decisive_run

    schedule = minimal_run.schedule
    min_trace = trace_from_schedule(schedule, test=trace.test, seed=trace.seed, config=dict(trace.config))
    min_trace.extra = {
        "bisect": {
            "source": display(Path(where)),
            "canonical_fails": canonical_fails,
            "decisive_step": None if decisive is None else decisive.step,
            "deviations": [
                {"step": d.step, "task": d.tid, "label": d.label, "instead_of": d.canonical_tid}
                for d in minimal_run.deviations
            ],
        }
    }
    write_trace(output, min_trace)

    # The written trace must replay, with the runtime's own Replayer, to the same failure.
    replayed = run_deterministic(b.config, make_main(), replay=schedule)
    replay_ok = replayed.error is not None and type(replayed.error).__name__ == b.expected
    result = BisectResult(
        test=trace.test, seed=trace.seed, failure=failure, canonical_fails=canonical_fails, prefix=k,
        decisive=decisive, trace_deviations=len(full.deviations), minimal=minimal_run.deviations,
        min_trace=output, replay_ok=replay_ok, runs=b.runs + 1,
    )
    if not replay_ok:
        got = "it passed" if replayed.error is None else f"{type(replayed.error).__name__}: {replayed.error}"
        result.notes.append(f"WARNING: replaying the minimal trace did not reproduce {b.expected} ({got})")
    result.report = _report(result, where, total, display)
    return result


def _report(r: BisectResult, where: str, total: int, display: Callable[[Path], str]) -> str:
    lines = [
        f"bisect of {where}",
        f"  test {r.test} (seed {r.seed}), {total} scheduling decisions, failure {r.failure}",
    ]
    if r.canonical_fails:
        lines.append("  the canonical schedule (oldest ready task first) fails the same way: the failure does not")
        lines.append("  depend on scheduling decisions (look at the test's logic, its inputs or its timing)")
    else:
        lines.append("  the canonical schedule (oldest ready task first) passes")
        lines.append(f"  the failure is inevitable after the trace's first {r.prefix} decisions (the rest canonical)")
        if r.decisive is not None:
            lines.append(f"  decisive decision: {r.decisive.describe()}")
        lines.append(
            f"  minimal schedule: {len(r.minimal)} deviation(s) from the canonical order "
            f"(the recorded run had {r.trace_deviations}):"
        )
        for d in r.minimal:
            lines.append(f"    {d.describe()}")
    assert r.min_trace is not None
    shown = display(r.min_trace)
    lines.append(f"  written {shown} ({'replays to the same failure' if r.replay_ok else 'does NOT replay to the failure'})")
    lines.extend(f"  {note}" for note in r.notes)
    lines.append(f"  {r.runs} runs")
    lines.append(f"  reproduce: pytest --cw-replay {shown}")
    return "\n".join(lines)
