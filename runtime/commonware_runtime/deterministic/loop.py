"""``EventLoop``: a real asyncio event loop on virtual time with seeded scheduling.

The run loop works in *rounds*, like asyncio's own ``_run_once``: move the clock, fire the
due timers, run what was ready when the round began.  Which ready callback runs next is
chosen by a strategy (``strategies.py``): under ``ordering="any"`` any of them, under
``ordering="fifo"`` always the oldest, the strategy then choosing only the order of
simultaneous timers and how late an idle wake-up is.  Recorders and replayers observe;
the plain seeded ``random`` run has its own inlined runner (the benchmarks' baseline)
that draws exactly what ``strategies.Random`` would.

Virtual time is an integer number of nanoseconds.  It stands still while callbacks are
ready and jumps straight to the next timer when none is, so ``sleep(3600)`` costs nothing
and a sleep observes exactly its duration; a loop that never goes idle sees it move by
one ``cycle`` every ``SPIN_ROUNDS`` rounds, so polling the clock ends.

Every decision is folded into the auditor as the chosen task's stable id (ids are
handed out in creation order, which is itself deterministic).  The scheduler never
looks at ``id()``, addresses, hashes or set order.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import random
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

from ..arguments import NS_PER_SECOND, Duration, seconds_to_ns
from ..auditor import Auditor
from ..errors import RuntimeStalled, RuntimeTimeout
from ..tasks import is_runtime_plumbing, shown_label
from .strategies import LOOP_CALLBACK, ORDERINGS, WINDOW, Random as _RANDOM, Strategy, Swarm, make_strategy
from .trace import Replayer as _Replay, format_seconds

__all__ = ["EventLoop", "UnsupportedOperation", "derive_seed", "MARK_TIME", "MARK_SPAWN"]

# Markers interleaved with task ids in the auditor's decision stream.
MARK_TIME = 0xFFFFFFFF
MARK_SPAWN = 0xFFFFFFFE
# A loop that never goes idle sees its clock move by one cycle every this many rounds.
SPIN_ROUNDS = 32


def derive_seed(seed: int, stream: str) -> int:
    """Independent, reproducible sub-seeds: one stream each for scheduling, user RNG, faults."""
    import hashlib

    digest = hashlib.sha256(f"commonware:{stream}:{seed}".encode()).digest()
    return int.from_bytes(digest[:16], "little")


class UnsupportedOperation(NotImplementedError):
    """Real I/O was requested on the deterministic event loop."""


class Task(asyncio.Task[Any]):
    """An asyncio Task that carries its stable id and label (C Tasks have no __dict__).

    Named ``Task`` because asyncio prints the class name: ``<Task pending ...>`` and "Task
    exception was never retrieved" read as they do on stock asyncio."""

    __slots__ = ("_cw_id", "_cw_label")
    _cw_id: int
    _cw_label: str

    def set_name(self, value: object) -> None:
        # asyncio.create_task(coro, name=...) names the task only after creating it (3.11).
        super().set_name(value)
        self._cw_label = str(value)
        loop = self.get_loop()
        if isinstance(loop, EventLoop) and self._cw_id < len(loop.task_labels):
            loop.task_labels[self._cw_id] = self._cw_label


class EventLoop(asyncio.BaseEventLoop):
    """A deterministic ``asyncio.AbstractEventLoop``.

    ``EventLoop(seed=7)`` can be handed to ``asyncio.Runner(loop_factory=...)``; asyncio's
    primitives run on it unchanged and on virtual time.
    """

    _timer_cancelled_count: int  # set by BaseEventLoop.__init__; typeshed does not declare it

    def __init__(
        self,
        seed: int = 42,
        *,
        cycle: Duration = 0.001,
        timeout: Duration | None = None,
        auditor: Auditor | None = None,
        scheduler: random.Random | None = None,
        now_ns: int = 0,
        ordering: str = "fifo",
        strategy: str | Strategy = "random",
        horizon: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
        self.seed = seed
        self._cycle_ns = _to_ns(cycle, "cycle")
        if self._cycle_ns == 0:
            raise ValueError("cycle must be positive, got 0: time must advance while tasks keep running")
        self._deadline_ns = None if timeout is None else _to_ns(timeout, "timeout")
        self._ready: list[asyncio.Handle] = []
        # Heap of (when_ns, seq, entry): a TimerHandle, an asyncio.sleep _Wakeup or a wake_at_ns future.
        self._timers: list[tuple[int, int, asyncio.TimerHandle | _Wakeup | asyncio.Future[None]]] = []
        self._timer_seq = 0
        # Timers (by heap seq) of events whose order at one instant is the outside world's:
        # simulated network deliveries on different connections.  Membership only.
        self._ties: set[int] = set()
        self._now_ns = now_ns
        self._last_audited_ns = -1
        self.auditor = auditor if auditor is not None else Auditor()
        # The auditor empties this array in place when folding, so the reference stays valid.
        self._decisions = self.auditor.decisions
        self._scheduler = scheduler if scheduler is not None else random.Random(derive_seed(seed, "scheduler"))
        self._next_id = 1
        self._labels: dict[str, int] = {}
        self.task_labels: list[str] = [""]  # stable id -> label; id 0 is "a loop callback"
        self.steps = 0
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(map(repr, ORDERINGS))}, got {ordering!r}")
        self.ordering = ordering
        self._fifo = ordering == "fifo"
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise ValueError(f"horizon must be a positive int (scheduling decisions) or None, got {horizon!r}")
        self.horizon = horizon  # how many decisions a run is expected to take (pct places change points in it)
        self.strategy: Strategy = make_strategy(strategy)
        self._chooser: Strategy = self.strategy
        self.observer: Any = None  # a trace.Recorder or trace.Replayer watching every choice
        # What the general runner calls per decision: the recorder's two appends (picks, ids)
        # or the replayer's check.
        self._observed: tuple[Any, Any, Any] = (None, None, None)
        self._seq = 0  # callbacks handed to a strategy, numbered in the order they became ready
        self._pending: dict[int, asyncio.Handle] = {}  # seq -> callback a strategy may still choose
        self._busy = 0  # consecutive busy rounds at this instant (see SPIN_ROUNDS)
        self._round_batch: list[asyncio.Handle] = []  # a round's callbacks while an observer looks at them
        self.strategy.begin(self._scheduler, self)
        if isinstance(self.strategy, Swarm):
            # Swarm only picks a strategy per run: the loop asks that one directly (a call
            # less per decision, and the inlined round when the pick is random).
            self._chooser = self.strategy.inner
        self._select_runner()

    # -- time -----------------------------------------------------------------------------

    def time(self) -> float:
        return self._now_ns / NS_PER_SECOND

    @property
    def now_ns(self) -> int:
        return self._now_ns

    def scheduler_state(self) -> object:
        """The scheduler stream's state: what a crash checkpoint carries to the restarted run."""
        return self._scheduler.getstate()

    def restore_scheduler(self, state: Any) -> None:
        """Continue the scheduler stream from ``scheduler_state()`` of an earlier run."""
        self._scheduler.setstate(state)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any, context: Any = None) -> asyncio.TimerHandle:  # type: ignore[override]
        if when is None:
            raise TypeError("when cannot be None")
        if self._debug:  # type: ignore[attr-defined]
            self._check_callback(callback, "call_at")  # type: ignore[attr-defined]
        if when == math.inf:
            return self._never(callback, args, context)
        when_ns = seconds_to_ns(when)
        if when_ns <= self._now_ns and when > self.time():  # later than now, if only by rounding
            when_ns = self._now_ns + 1
        return self.call_at_ns(when_ns, callback, *args, context=context)

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any, context: Any = None) -> asyncio.TimerHandle:  # type: ignore[override]
        # Relative to the exact integer clock (asyncio's version goes through float time()),
        # so sleep(d) wakes at now + d to the nanosecond.
        if delay is None:
            raise TypeError("delay must not be None")
        if self._debug:  # type: ignore[attr-defined]
            self._check_callback(callback, "call_later")  # type: ignore[attr-defined]
        if delay == math.inf:  # sleep(math.inf): "until cancelled"
            return self._never(callback, args, context)
        # A positive delay is at least 1 ns: rounded to 0 it would be due now, and a task that
        # sleeps until loop.time() reaches a float deadline would spin at one instant forever
        # (on a real loop time passes; aiometer's rate limiter does exactly this).  A negative
        # one is due in the past, before a zero one, as asyncio orders them.
        when_ns = self._now_ns + (max(1, seconds_to_ns(delay)) if delay > 0 else seconds_to_ns(delay))
        if callback is _SET_RESULT_UNLESS_CANCELLED and context is None and len(args) == 2:
            # asyncio.sleep's timer: resolving a future needs no context copy nor Handle.
            if self._closed:  # type: ignore[attr-defined]
                raise RuntimeError("Event loop is closed")
            wakeup = _Wakeup(self, when_ns, args[0], args[1])
            self._push(when_ns, wakeup)
            return wakeup  # type: ignore[return-value]
        return self.call_at_ns(when_ns, callback, *args, context=context)

    def call_at_ns(self, when_ns: int, callback: Callable[..., object], *args: Any, context: Any = None,
                   tie: bool = False) -> asyncio.TimerHandle:
        """Schedule at an exact virtual instant (the runtime's own clock uses this).  With
        ``tie``, under ``ordering="fifo"`` the strategy may fire it before other such timers
        due at the same instant (a timing choice, recorded), where other timers keep their
        creation order."""
        self._check_closed()  # type: ignore[attr-defined]
        timer = asyncio.TimerHandle(when_ns / NS_PER_SECOND, callback, args, self, context)
        if timer._source_traceback:  # type: ignore[attr-defined]
            del timer._source_traceback[-1]  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        self._push(when_ns, timer)
        if tie:
            self._ties.add(self._timer_seq)
        return timer

    def _never(self, callback: Callable[..., object], args: tuple[Any, ...], context: Any) -> asyncio.TimerHandle:
        """A timer at infinity: a handle that can be cancelled and never fires.  Not in the
        heap, so it neither moves the clock nor keeps a run that waits only for it from
        stalling (stock asyncio would wait forever)."""
        self._check_closed()  # type: ignore[attr-defined]
        timer = asyncio.TimerHandle(math.inf, callback, args, self, context)
        timer._scheduled = False  # type: ignore[attr-defined]
        return timer

    def wake_at_ns(self, when_ns: int, fut: asyncio.Future[None]) -> None:
        """Resolve ``fut`` (unless it is done by then) at virtual instant ``when_ns``.

        The runtime's own sleeps use this instead of a TimerHandle: no handle, no context
        copy, no cancel() on the way out; a cancelled sleep leaves a dead entry, skipped.
        """
        self._push(when_ns, fut)

    def _push(self, when_ns: int, entry: Any) -> None:
        # Ties at one instant fire in creation order: the sequence number, never the object.
        self._timer_seq += 1
        heapq.heappush(self._timers, (when_ns, self._timer_seq, entry))

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        # TimerHandle.cancel() lands here also for timers that already fired (asyncio.sleep
        # cancels its handle on the way out): only handles still in the heap count.
        if not handle._scheduled:  # type: ignore[attr-defined]
            return
        self._timer_cancelled_count += 1
        timers = self._timers
        # Timeouts that finish early leave cancelled timers behind: compact when they dominate.
        if self._timer_cancelled_count > 256 and self._timer_cancelled_count * 2 > len(timers):
            if self._ties:
                self._ties.difference_update(t[1] for t in timers if _dead(t[2]))
            timers[:] = [t for t in timers if not _dead(t[2])]
            heapq.heapify(timers)
            self._timer_cancelled_count = 0

    # -- scheduling -----------------------------------------------------------------------

    def call_soon(self, callback: Callable[..., object], *args: Any, context: Any = None) -> asyncio.Handle:  # type: ignore[override]
        # BaseEventLoop.call_soon and _call_soon in one frame: every task step comes here.
        if self._closed:  # type: ignore[attr-defined]
            raise RuntimeError("Event loop is closed")
        if self._debug:  # type: ignore[attr-defined]
            self._check_thread()  # type: ignore[attr-defined]
            self._check_callback(callback, "call_soon")  # type: ignore[attr-defined]
        handle = asyncio.Handle(callback, args, self, context)
        if handle._source_traceback:  # type: ignore[attr-defined]
            del handle._source_traceback[-1]  # type: ignore[attr-defined]
        self._ready.append(handle)
        return handle

    def _call_soon(self, callback: Callable[..., object], args: Any, context: Any) -> asyncio.Handle:
        # BaseEventLoop's internal entry point: the same ready list as call_soon.
        return self.call_soon(callback, *args, context=context)

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any, context: Any = None) -> asyncio.Handle:  # type: ignore[override]
        if self._thread_id is not None and threading.get_ident() != self._thread_id:  # type: ignore[attr-defined]
            raise UnsupportedOperation(
                "call_soon_threadsafe() from another thread: the deterministic event loop runs on one thread only"
            )
        return self.call_soon(callback, *args, context=context)

    def _write_to_self(self) -> None:
        """Nothing to wake: the loop never blocks on a selector."""

    def create_task(self, coro: Any, *, name: str | None = None, context: Any = None) -> asyncio.Task[Any]:  # type: ignore[override]
        if self._closed:  # type: ignore[attr-defined]
            raise RuntimeError("Event loop is closed")
        if self._task_factory is not None:  # type: ignore[attr-defined]
            task = self._task_factory(self, coro) if context is None else self._task_factory(self, coro, context=context)  # type: ignore[attr-defined]
            if not isinstance(task, Task):
                if name is not None:  # as BaseEventLoop.create_task: the factory's task gets the name
                    task.set_name(name)
                foreign: asyncio.Task[Any] = task
                return foreign
        else:
            task = Task(coro, loop=self, name=name, context=context)
            if task._source_traceback:  # type: ignore[attr-defined]
                del task._source_traceback[-1]  # type: ignore[attr-defined]
        tid = self._next_id
        self._next_id = tid + 1
        label = "task" if name is None else name
        task._cw_id = tid
        task._cw_label = label
        self.task_labels.append(label)
        index = self._labels.get(label)
        if index is None:
            index = self._labels[label] = len(self._labels)
            self.auditor.event("label", index, label)
        decisions = self._decisions
        decisions.append(MARK_SPAWN)
        decisions.append(tid)
        decisions.append(index)
        if name is not None and task.get_name() != name:  # a factory's task of ours
            task.set_name(name)
        return task

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:  # type: ignore[override]
        """Executors run at the call, the loop waiting for them, so their effects are ordered
        deterministically; past ``blocking_timeout`` (an attribute, default 10 s) of wall-clock
        time the future fails with ``BlockingStalled`` (see ``blocking.py``)."""
        from .blocking import run_blocking

        self._check_closed()  # type: ignore[attr-defined]
        future = self.create_future()
        try:
            result = run_blocking(self, func, args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            self.call_soon(_deliver, future, None, exc)
        else:
            # Delivered by a callback, as a worker thread's result is (call_soon_threadsafe):
            # awaiting it lets other tasks run, so a loop of to_thread calls cannot starve them.
            self.call_soon(_deliver, future, result, None)
        return future

    def set_default_executor(self, executor: Any) -> None:
        """Accepted for compatibility; executors always run inline here."""

    def _run_once(self) -> None:
        """One round, as asyncio's own ``_run_once``: move the clock, fire due timers, run
        what was ready when the round began (or, for a strategy that holds callbacks back,
        as many decisions as there were ready callbacks)."""
        now = self._now_ns
        timers = self._timers
        if self._ready or self._pending:
            # Busy: the clock stands still, except that a loop that never goes idle (a task
            # polling loop.time() or spinning on sleep(0)) sees it move by one cycle every
            # SPIN_ROUNDS rounds, as real work would move it.
            busy = self._busy + 1
            if busy >= SPIN_ROUNDS:
                busy = 0
                now += self._cycle_ns
            self._busy = busy
        else:
            self._busy = 0
            while timers and _dead(timers[0][2]):
                heapq.heappop(timers)
                self._timer_cancelled_count = max(0, self._timer_cancelled_count - 1)
            if timers:
                if timers[0][0] > now:
                    if self._stopping:  # type: ignore[attr-defined]
                        return  # as asyncio's poll with timeout 0: a timer not due yet does not fire
                    # An idle loop's wake-up may come late (bounded by one cycle), as the
                    # operating system's timers do: everything due by then fires together,
                    # and the clock reads the last deadline among them (a lone timer is
                    # never late: only timers close together are merged into one round).
                    late = self._chooser.late(self._cycle_ns)
                    if self.observer is not None:
                        self.observer.timing(late)
                    now = timers[0][0]
                    if late:
                        now = _latest_due(timers, now + late)
            elif self._stopping:  # type: ignore[attr-defined]
                return
            else:
                raise self.stalled()
        if self._deadline_ns is not None and now > self._deadline_ns:
            # Nothing runs past the deadline: the clock stops there, the report says what was next.
            self._now_ns = self._deadline_ns
            raise RuntimeTimeout(
                f"virtual time reached the deadline of {self._deadline_ns / NS_PER_SECOND}s (the next event was "
                f"due at {format_seconds(now)}s) after {self.steps} scheduling decisions. Tasks still waiting:\n"
                + self._waiting_report()
            )
        self._now_ns = now
        if timers and timers[0][0] <= now:
            if self._fifo:
                self._queue_due_timers(now)
            else:
                self._fire_due_timers(now)
        batch = self._ready
        if not batch and not self._pending:
            return
        self._ready = []
        if now != self._last_audited_ns:
            self._last_audited_ns = now
            decisions = self._decisions
            decisions.append(MARK_TIME)
            decisions.append(now & 0xFFFFFFFF)
            decisions.append(now >> 32)
        self._run_batch(batch)

    def _fire_due_timers(self, now: int) -> None:
        """``ordering="any"``: due sleeps resolve at the round's start (the tasks they wake
        join this round's ready callbacks); due timer callbacks join them too, so the
        strategy orders them like everything else."""
        timers = self._timers
        future_type = _Future
        ties = self._ties
        while timers and timers[0][0] <= now:
            # Any: the exact type() checks below tell the three entry kinds apart.
            entry = heapq.heappop(timers)
            timer: Any = entry[2]
            if ties:
                ties.discard(entry[1])  # any: the strategy orders every ready callback anyway
            if type(timer) is future_type:  # a sleep (wake_at_ns)
                if not timer.done():
                    timer.set_result(None)
                continue
            if type(timer) is _Wakeup:  # an asyncio.sleep
                timer._scheduled = False
                if timer._cancelled:
                    self._timer_cancelled_count = max(0, self._timer_cancelled_count - 1)
                elif not timer._fut.done():
                    timer._fut.set_result(timer._result)
                continue
            timer._scheduled = False
            if timer._cancelled:
                self._timer_cancelled_count = max(0, self._timer_cancelled_count - 1)
            else:
                self._ready.append(timer)

    def _queue_due_timers(self, now: int) -> None:
        """``ordering="fifo"``: as asyncio does, due timers are appended to the ready queue
        behind what is already ready, in deadline order, equal deadlines in creation order
        (on a real clock a timer created later with the same delay is due later)."""
        timers = self._timers
        ties = self._ties
        due: list[Any] = []
        tied = False
        while timers and timers[0][0] <= now:
            when, seq, entry = heapq.heappop(timers)
            tie = False
            if ties and seq in ties:
                ties.discard(seq)
                tie = tied = True
            timer: Any = entry  # the exact type() checks below tell the three entry kinds apart
            kind = type(timer)
            if kind is _Future:
                if timer.done():
                    continue
                timer = _Wakeup(self, when, timer, None)
            elif kind is _Wakeup or kind is asyncio.TimerHandle:
                timer._scheduled = False
                if timer._cancelled:
                    self._timer_cancelled_count = max(0, self._timer_cancelled_count - 1)
                    continue
            else:
                timer._scheduled = False
            due.append((when, tie, timer))
        if tied:
            self._choose_ties(due)
        self._ready.extend(timer for _, _, timer in due)

    def _choose_ties(self, due: list[tuple[int, bool, Any]]) -> None:
        """Among tie-able timers due at one instant (deliveries on different connections), the
        strategy picks which fires first, in the place of the first of them: ``tie(n)``,
        recorded like a late wake-up.  The others keep their order."""
        i = 0
        while i < len(due):
            j = i
            while j < len(due) and due[j][0] == due[i][0]:
                j += 1
            tied = [k for k in range(i, j) if due[k][1]]
            if len(tied) >= 2:
                tie = getattr(self._chooser, "tie", None)
                first = tie(len(tied)) if tie is not None else 0
                if self.observer is not None:
                    self.observer.timing(first)
                if first:
                    due.insert(tied[0], due.pop(tied[first]))
            i = j

    # -- the rounds: one runner per kind of chooser ------------------------------------------

    def _select_runner(self) -> None:
        """The plain seeded runs use an inlined runner; anything else (other strategies,
        recording, replay) the general one, which makes exactly the same choices."""
        if not self._pending:
            if self.observer is None and self._fifo:
                self._run_batch = self._run_batch_fifo
                return
            if type(self._chooser) is _RANDOM and not self._fifo and not isinstance(self.observer, _Replay):
                self._run_batch = self._run_batch_random
                return
        self._run_batch = self._run_batch_chosen

    def _run_batch_fifo(self, batch: list[asyncio.Handle]) -> None:
        record = self._decisions.append
        task_type = Task
        self.steps += len(batch)
        try:
            for handle in batch:
                if handle._cancelled:
                    record(LOOP_CALLBACK)
                    continue
                owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
                record(owner._cw_id if type(owner) is task_type else LOOP_CALLBACK)
                handle._run()
        except (SystemExit, KeyboardInterrupt):
            # By identity: TimerHandles that look alike compare equal.
            ran = next(i for i, h in enumerate(batch) if h is handle)
            self._requeue(batch[ran + 1 :])
            raise

    def _run_batch_random(self, batch: list[asyncio.Handle]) -> None:
        # strategies.Random.arrive/choose inlined on the batch itself (the same draws): the
        # choice is among the WINDOW oldest remaining callbacks, the whole batch in a round of
        # up to WINDOW; the next oldest refills the window as it empties.  Under a recorder,
        # each pick is noted as its index in the window and turned into its seq when the
        # round ends (_seqs_of_picks), so that an unrecorded round pays one test per decision.
        rand = self._scheduler.random
        record = self._decisions.append
        task_type = Task
        total = len(batch)
        base = self._seq
        self._seq += total
        picks, ids, _ = self._observed
        if picks is not None:
            self._round_batch = batch
            self.observer.round(self.steps, self._now_ns, self)
            self._round_batch = []
            first = len(self.observer.schedule.picks)
        rest = None
        if total > WINDOW:
            rest = batch[WINDOW:]
            rest.reverse()  # popped from the end: oldest first
            del batch[WINDOW:]
        self.steps += total
        n = len(batch)
        try:
            while n:
                i = 0
                if n == 1:
                    handle = batch.pop()
                else:
                    i = int(rand() * n)
                    handle = batch[i]
                    last = batch.pop()
                    if last is not handle:
                        batch[i] = last
                if rest:
                    batch.append(rest.pop())
                else:
                    n -= 1
                if handle._cancelled:
                    record(LOOP_CALLBACK)
                    if picks is not None:
                        picks(i)
                        ids(LOOP_CALLBACK)
                    continue
                callback = handle._callback  # type: ignore[attr-defined]
                owner = getattr(callback, "__self__", None)
                tid = owner._cw_id if type(owner) is task_type else LOOP_CALLBACK
                record(tid)
                if picks is not None:
                    picks(i)
                    ids(tid)
                # Handle._run inlined: one Python frame less per decision.
                try:
                    handle._context.run(callback, *handle._args)  # type: ignore[attr-defined]
                except (SystemExit, KeyboardInterrupt):
                    if rest:
                        rest.reverse()
                        batch.extend(rest)
                    self._requeue(batch)
                    raise
                except BaseException as exc:
                    self._callback_failed(handle, exc)
        finally:
            if picks is not None:
                _seqs_of_picks(self.observer.schedule.picks, first, base, total)

    def _requeue(self, unrun: list[asyncio.Handle]) -> None:
        """A callback raised SystemExit or KeyboardInterrupt, which leave the loop: the
        round's callbacks not run yet stay queued, first, as asyncio leaves them in its ready
        queue (its run_forever may be called again, or asyncio.Runner cancels the tasks)."""
        self._ready[:0] = unrun
        self.steps -= len(unrun)

    def _callback_failed(self, handle: asyncio.Handle, exc: BaseException) -> None:
        """What Handle._run does with a callback's exception: hand it to the loop's handler."""
        cb = asyncio.format_helpers._format_callback_source(handle._callback, handle._args)  # type: ignore[attr-defined]
        context = {"exception": exc, "handle": handle, "message": f"Exception in callback {cb}"}
        if handle._source_traceback:  # type: ignore[attr-defined]
            context["source_traceback"] = handle._source_traceback  # type: ignore[attr-defined]
        self.call_exception_handler(context)

    def _run_batch_chosen(self, batch: list[asyncio.Handle]) -> None:
        """The general round: the chooser picks each callback by its ``seq``; the recorder
        (two array appends), the replayer's check and the auditor watch."""
        chooser = self._chooser
        observer = self.observer
        if observer is not None:
            self._round_batch = batch
            try:
                observer.round(self.steps, self._now_ns, self)
            except BaseException:
                self._ready[:0] = batch  # a replay diverged at the round's start: nothing ran
                raise
            finally:
                self._round_batch = []
        if self._fifo and chooser is not observer:
            self._run_batch_fifo_observed(batch)
            return
        pending = self._pending
        record = self._decisions.append
        task_type = Task
        watched = self._observed != (None, None, None)
        arrive = chooser.arrive
        seq = self._seq
        for handle in batch:
            seq += 1
            pending[seq] = handle
            arrive(seq, handle)
        self._seq = seq
        holds_back = chooser.holds_back
        choose = chooser.choose
        step = self.steps
        budget = len(pending)
        while budget:
            budget -= 1
            seq = choose(step)
            chosen = pending.pop(seq, None)
            if chosen is None:
                self.steps = step
                raise self._not_ready(chooser, step, seq)
            handle = chosen
            cancelled = handle._cancelled
            callback = handle._callback  # type: ignore[attr-defined]
            if cancelled:
                tid = LOOP_CALLBACK
            else:
                owner = getattr(callback, "__self__", None)
                tid = owner._cw_id if type(owner) is task_type else LOOP_CALLBACK
            record(tid)
            if watched:
                try:
                    self._watch(step, seq, tid)
                except BaseException:
                    # The replay diverged: the callback did not run, so it stays pending
                    # (teardown still owes its task a step, to deliver the cancellation).
                    pending[seq] = handle
                    self._pending = dict(sorted(pending.items()))
                    self.steps = step
                    raise
            step += 1
            if not cancelled:
                self.steps = step
                if callback is None:  # a queued timer wake-up (_Wakeup)
                    handle._run()
                else:  # Handle._run inlined, as in _run_batch_random
                    try:
                        handle._context.run(callback, *handle._args)  # type: ignore[attr-defined]
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self._callback_failed(handle, exc)
            if holds_back and self._ready:
                arrivals = self._ready
                self._ready = []
                for handle in arrivals:
                    seq = self._seq = self._seq + 1
                    pending[seq] = handle
                    arrive(seq, handle)
            if not pending:
                break
        self.steps = step

    def _run_batch_fifo_observed(self, batch: list[asyncio.Handle]) -> None:
        """ordering="fifo" under a recorder: asyncio's order (strategies choose timing only)."""
        record = self._decisions.append
        for i, handle in enumerate(batch):
            seq = self._seq = self._seq + 1
            step = self.steps
            tid = self.owner_id(handle)
            record(tid)
            try:
                self._watch(step, seq, tid)
            except BaseException:
                self._ready[:0] = batch[i:]  # not run (as in _run_batch_chosen)
                raise
            self.steps = step + 1
            if not handle._cancelled:
                try:
                    handle._run()
                except (SystemExit, KeyboardInterrupt):
                    self._ready[:0] = batch[i + 1 :]  # not run (as in _run_batch_fifo)
                    raise

    def _watch(self, step: int, seq: int, tid: int) -> None:
        """What the general rounds show the observer of each decision: the recorder's two
        appends, or the replayer's check (which raises ReplayDivergence)."""
        picks, ids, check = self._observed
        if picks is not None:
            picks(seq)
            ids(tid)
        if check is not None:
            check(step, seq, tid, self)

    def _not_ready(self, chooser: Any, step: int, seq: int) -> BaseException:
        diverged = getattr(chooser, "not_ready", None)
        if diverged is not None:
            return diverged(step, self._now_ns, seq, self)  # type: ignore[no-any-return]
        return ValueError(
            f"strategy {getattr(chooser, 'name', chooser)!r} chose callback #{seq} at step {step}, "
            f"which is not among the ready callbacks"
        )

    def observe(self, observer: Any) -> None:
        """Let a ``trace.Recorder`` watch every choice of this run (or a ``trace.Replayer``
        make and check them: it is then the chooser too)."""
        self.observer = observer
        if isinstance(observer, _Replay):
            self._chooser = observer
            observer.begin(self._scheduler, self)
            self._observed = (None, None, observer.decision)
        else:
            self._observed = (observer.schedule.picks.append, observer.schedule.ids.append, None)
        self._select_runner()

    def quiesce(self) -> None:
        """After a run: no deadline, recording or replay for whatever the loop still does;
        callbacks a strategy still held back go back to the ready queue, oldest first."""
        self._deadline_ns = None
        self.observer = None
        self._observed = (None, None, None)
        if self._pending:
            self._ready[:0] = list(self._pending.values())
            self._pending.clear()
        self._chooser = self.strategy = _RANDOM()
        self.strategy.begin(self._scheduler, self)
        self._select_runner()

    def label_of(self, handle: asyncio.Handle) -> str:
        tid = self.owner_id(handle)
        return self.task_labels[tid] if tid else "<callback>"

    def pending_labels(self) -> list[str]:
        """Labels of the callbacks ready now (for divergence reports)."""
        return [self.label_of(h) for h in [*self._pending.values(), *self._round_batch, *self._ready]]


    def owner_id(self, handle: asyncio.Handle) -> int:
        if handle._cancelled:
            return LOOP_CALLBACK
        owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
        return owner._cw_id if type(owner) is Task else LOOP_CALLBACK

    # -- failure reports --------------------------------------------------------------------

    def blocked_tasks(self) -> list[asyncio.Task[Any]]:
        tasks = [t for t in asyncio.all_tasks(self) if not t.done()]
        tasks.sort(key=lambda t: getattr(t, "_cw_id", 0))
        return tasks

    def stalled(self) -> RuntimeStalled:
        return RuntimeStalled(
            f"runtime stalled at virtual time {format_seconds(self._now_ns)}s after {self.steps} scheduling "
            f"decisions: no task is ready and no timer is pending. Blocked tasks:\n" + self._waiting_report()
        )

    def _waiting_report(self) -> str:
        """One line per unfinished task: its label, id and where its code awaits."""
        tasks = self.blocked_tasks()
        lines = []
        for task in tasks[:_REPORT_TASKS]:
            label = shown_label(getattr(task, "_cw_label", task.get_name()))
            lines.append(f"  - {label} (task id {getattr(task, '_cw_id', 0)}) awaiting {await_site(task)}")
        if len(tasks) > _REPORT_TASKS:
            lines.append(f"  ... and {len(tasks) - _REPORT_TASKS} more tasks")
        return "\n".join(lines) or "  (none: the awaited future can only be completed from outside the loop)"

    # -- real I/O is not simulated here ---------------------------------------------------

    def _unsupported(self, name: str) -> UnsupportedOperation:
        return UnsupportedOperation(
            f"{name}() is real I/O, which the deterministic event loop does not perform; use the "
            f"runtime Context's simulated network and storage instead"
        )


# A stall or timeout report lists this many tasks (the oldest first), then a count.
_REPORT_TASKS = 50

_Future = asyncio.Future
_SET_RESULT_UNLESS_CANCELLED = asyncio.futures._set_result_unless_cancelled  # type: ignore[attr-defined]


class _Wakeup:
    """The timer behind ``asyncio.sleep`` on this loop: resolves one future at ``when``.

    It stands in for the ``TimerHandle`` that ``call_later`` returns (asyncio.sleep only
    calls ``cancel()`` on it), without the context copy and handle a generic timer needs.
    """

    __slots__ = ("_loop", "_when_ns", "_fut", "_result", "_cancelled", "_scheduled")
    _callback = None  # not a task step: the loop attributes its decision to no task
    _source_traceback = None

    def __init__(self, loop: EventLoop, when_ns: int, fut: asyncio.Future[Any], result: Any) -> None:
        self._loop = loop
        self._when_ns = when_ns
        self._fut = fut
        self._result = result
        self._cancelled = False
        self._scheduled = True

    def when(self) -> float:
        return self._when_ns / NS_PER_SECOND

    def cancelled(self) -> bool:
        return self._cancelled

    def _run(self) -> None:
        # ordering="fifo" queues the wake-up as asyncio queues its sleep's TimerHandle.
        if not self._cancelled and not self._fut.done():
            self._fut.set_result(self._result)

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            if self._scheduled:  # still in the heap: let the loop compact dead entries
                self._loop._timer_handle_cancelled(self)  # type: ignore[arg-type]


def _deliver(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _seqs_of_picks(picks: Any, first: int, base: int, total: int) -> None:
    """Turn the window indices a random round noted in ``picks[first:]`` into the seqs of
    the callbacks they chose (the round's callbacks are seqs ``base + 1 .. base + total``),
    by making the round's moves again on the seqs: the same swap-removes and refills."""
    window = list(range(base + 1, base + 1 + min(total, WINDOW)))
    rest = list(range(base + total, base + WINDOW, -1))  # popped from the end: oldest first
    for k in range(first, len(picks)):
        i = picks[k]
        seq = window[i]
        last = window.pop()
        if i < len(window):
            window[i] = last
        if rest:
            window.append(rest.pop())
        picks[k] = seq


def _latest_due(timers: list[tuple[int, int, Any]], limit: int) -> int:
    """The latest deadline at or before ``limit`` among live heap entries (the heap's top is
    one of them): only the part of the heap above ``limit`` is visited."""
    latest = timers[0][0]
    stack = [0]
    n = len(timers)
    while stack:
        i = stack.pop()
        when = timers[i][0]
        if when > limit:
            continue
        if when > latest and not _dead(timers[i][2]):
            latest = when
        for child in (2 * i + 1, 2 * i + 2):
            if child < n:
                stack.append(child)
    return latest


def _dead(entry: Any) -> bool:
    """A heap entry that will never fire: a cancelled timer or a finished sleep future."""
    kind = type(entry)
    if kind is _Future:
        return bool(entry.done())
    if kind is _Wakeup:
        return bool(entry._cancelled or entry._fut.done())
    return bool(entry._cancelled)


def await_site(task: asyncio.Task[Any]) -> str:
    """Where a task is suspended: the innermost frame of *user* code in its coroutine
    chain (frames inside asyncio and this package say little), and what it awaits."""
    coro: Any = task.get_coro()
    frame = None
    innermost = None
    awaited: Any = None
    while coro is not None:
        f = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if f is not None:
            innermost = f
            if not is_runtime_plumbing(f.f_code.co_filename):
                frame = f
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
        if nxt is None or not isinstance(nxt, (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)):
            awaited = nxt
            break
        coro = nxt
    what = type(awaited).__name__ if awaited is not None else "?"
    if what == "FutureIter":  # the C future's iterator: name what a user awaited
        what = "Future"
    frame = frame or innermost
    if frame is None:
        return what
    code = frame.f_code
    return f"{what} at {os.path.basename(code.co_filename)}:{frame.f_lineno} in {code.co_name}()"


def _to_ns(value: Any, what: str) -> int:
    from ..arguments import duration_ns

    return duration_ns(value, what)


def _install_unsupported(names: Iterable[str]) -> None:
    for name in names:

        def method(self: EventLoop, *args: Any, __name: str = name, **kwargs: Any) -> Any:
            raise self._unsupported(__name)

        method.__name__ = name
        method.__doc__ = f"Not supported: {name}() is real I/O."
        setattr(EventLoop, name, method)


_install_unsupported(
    [
        "getaddrinfo", "getnameinfo", "create_connection", "create_server", "sendfile", "start_tls",
        "create_unix_connection", "create_unix_server", "connect_accepted_socket", "create_datagram_endpoint",
        "connect_read_pipe", "connect_write_pipe", "subprocess_shell", "subprocess_exec",
        "add_reader", "remove_reader", "add_writer", "remove_writer",
        "sock_recv", "sock_recv_into", "sock_recvfrom", "sock_recvfrom_into", "sock_sendall", "sock_sendto",
        "sock_connect", "sock_accept", "sock_sendfile", "add_signal_handler", "remove_signal_handler",
        "_make_socket_transport", "_make_ssl_transport", "_make_datagram_transport",
        "_make_read_pipe_transport", "_make_write_pipe_transport", "_make_subprocess_transport",
    ]
)

