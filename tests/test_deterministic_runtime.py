"""Behaviours only the deterministic runtime has: stalls, virtual deadlines, configuration,
crash checkpoints, record/replay, and the auditor."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from commonware_runtime import RuntimeStalled, RuntimeTimeout, Signaler, deterministic
from prometheus_client import Counter
from test_contract import spawning_as_it_unwinds, swallowing

THIS_FILE = "test_deterministic_runtime.py"

# Failed runs currently leave never-awaited coroutines behind (library bugs pinned by the
# strict xfails in "teardown hygiene" below, which record warnings themselves); keep the
# other tests' summaries free of that noise.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")


def line_of_next_statement() -> int:
    """The line number just after the caller's current line (where its next await sits)."""
    return sys._getframe(1).f_lineno + 1


# -- stalls --------------------------------------------------------------------------------


def stalled_program(lines: dict[str, int]) -> Callable[[deterministic.Context], Awaitable[None]]:
    async def main(ctx: deterministic.Context) -> None:
        _, signal = Signaler.new()
        event = asyncio.Event()
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def alpha(c: deterministic.Context) -> None:
            lines["alpha"] = line_of_next_statement()
            await signal

        async def beta(c: deterministic.Context) -> None:
            lines["beta"] = line_of_next_statement()
            await event.wait()

        async def gamma(c: deterministic.Context) -> None:
            await c.sleep(0.5)  # a timer pending for a while does not count as a stall
            lines["gamma"] = line_of_next_statement()
            await queue.get()

        handles = [
            ctx.with_label("alpha").spawn(alpha),
            ctx.with_label("beta").spawn(beta),
            ctx.with_label("net").with_label("gamma").spawn(gamma),
        ]
        lines["root"] = line_of_next_statement()
        await handles[0]

    return main


def collect_failed_run_garbage() -> None:
    """Collect what a failed run left behind now, not at a random later moment.

    A stalled or timed-out run leaves suspended coroutines; finalizing them currently
    runs library code that raises (see ``test_stall_teardown_is_clean``).  Left to a
    random GC pass, that can even fire inside pytest's own traceback formatting, so the
    other tests collect it here, quietly; the hygiene tests below check it separately.
    """
    previous = sys.unraisablehook
    sys.unraisablehook = lambda info: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous


def stall_message(seed: int = 0) -> tuple[str, dict[str, int]]:
    lines: dict[str, int] = {}
    try:
        deterministic.Runner.seeded(seed).start(stalled_program(lines))
    except RuntimeStalled as exc:
        message = str(exc)
    else:
        raise AssertionError("the program did not stall")
    collect_failed_run_garbage()
    return message, lines


def fail_message(runner: deterministic.Runner, main: Callable[[Any], Awaitable[Any]], error: type[BaseException]) -> str:
    try:
        runner.start(main)
    except error as exc:
        message = str(exc)
    else:
        raise AssertionError(f"expected {error.__name__}")
    collect_failed_run_garbage()
    return message


def test_stall_lists_every_blocked_task_with_label_and_site() -> None:
    message, _ = stall_message()
    assert "stalled" in message
    assert "virtual time 0.50" in message  # gamma's sleep ran first: a pending timer is no stall
    for label in ("'alpha'", "'beta'", "'net_gamma'", "'root'"):
        assert label in message, message
    task_lines = [line for line in message.splitlines() if line.strip().startswith("-")]
    assert len(task_lines) == 4, message
    for line in task_lines:
        assert re.search(r"[\w.]+\.py:\d+", line), f"no file:line in {line!r}"


def test_stall_is_deterministic() -> None:
    assert stall_message(3)[0] == stall_message(3)[0]


def test_stall_names_the_users_await_site() -> None:
    message, lines = stall_message()
    for task in ("alpha", "beta", "gamma", "root"):
        assert f"{THIS_FILE}:{lines[task]}" in message, f"{task}: {message}"


def test_stall_does_not_call_unlabeled_tasks_root() -> None:
    async def main(ctx: deterministic.Context) -> None:
        event = asyncio.Event()

        async def unlabeled(c: deterministic.Context) -> None:
            await event.wait()

        await ctx.spawn(unlabeled)

    message = fail_message(deterministic.Runner(), main, RuntimeStalled)
    task_lines = [line for line in message.splitlines() if line.strip().startswith("-")]
    assert len(task_lines) == 2
    assert sum("root" in line for line in task_lines) == 1, message


def test_stall_in_root_only() -> None:
    async def main(ctx: deterministic.Context) -> None:
        await asyncio.get_running_loop().create_future()

    assert "'root'" in fail_message(deterministic.Runner(), main, RuntimeStalled)


def test_long_sleep_is_not_a_stall_and_costs_no_wall_time() -> None:
    import time

    async def main(ctx: deterministic.Context) -> float:
        await ctx.sleep(timedelta(days=365))
        return ctx.current()

    start = time.monotonic()
    assert deterministic.Runner().start(main) == 365 * 86400.0
    assert time.monotonic() - start < 0.5


# -- virtual deadline -------------------------------------------------------------------------


def test_timed_runner_times_out_on_virtual_time() -> None:
    assert "2.0" in fail_message(deterministic.Runner.timed(2.0), lambda ctx: ctx.sleep(10), RuntimeTimeout)


def test_timed_runner_times_out_a_busy_loop() -> None:
    async def spin(ctx: deterministic.Context) -> None:
        while True:
            await asyncio.sleep(0)

    fail_message(deterministic.Runner.timed(timedelta(milliseconds=300)), spin, RuntimeTimeout)


def test_timed_runner_finishing_in_time() -> None:
    async def main(ctx: deterministic.Context) -> float:
        await ctx.sleep(1.5)
        return ctx.current()

    assert deterministic.Runner.timed(2.0).start(main) == 1.5


def test_timeout_in_a_task_fails_the_run() -> None:
    async def main(ctx: deterministic.Context) -> None:
        ctx.spawn(lambda c: c.sleep(100))
        await ctx.sleep(100)

    fail_message(deterministic.Runner(deterministic.Config(timeout=5.0)), main, RuntimeTimeout)


# -- configuration -------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = deterministic.Config()
    assert config.seed == 42
    assert config.cycle == 0.001
    assert config.timeout is None
    assert config.catch_panics is False
    assert config.start_time == 0.0
    assert deterministic.Runner().config == config
    assert deterministic.Runner.seeded(7).config.seed == 7
    assert deterministic.Runner.timed(30.0).config.timeout == 30.0


def test_config_builders() -> None:
    base = deterministic.Config()
    config = base.with_seed(7).with_cycle(0.005).with_timeout(30.0).with_catch_panics(True).with_start_time(100.0)
    assert (config.seed, config.cycle, config.timeout, config.catch_panics, config.start_time) == (
        7, 0.005, 30.0, True, 100.0,
    )
    assert base == deterministic.Config()  # builders return new configs
    assert config.with_timeout(None).timeout is None
    assert deterministic.Config().with_cycle(timedelta(milliseconds=2)).cycle == timedelta(milliseconds=2)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"seed": -1}, ValueError),
        ({"seed": "7"}, TypeError),
        ({"seed": True}, TypeError),
        ({"seed": 1.5}, TypeError),
        ({"cycle": 0}, ValueError),
        ({"cycle": -0.001}, ValueError),
        ({"cycle": "1ms"}, TypeError),
        ({"timeout": -1.0}, ValueError),
        ({"timeout": float("inf")}, ValueError),
        ({"catch_panics": 1}, TypeError),
        ({"start_time": "now"}, TypeError),
        ({"start_time": float("nan")}, ValueError),
    ],
)
def test_config_validation(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        deterministic.Config(**kwargs)


def test_runner_validation() -> None:
    with pytest.raises(TypeError):
        deterministic.Runner("seed=7")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        deterministic.Runner().start(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        deterministic.Runner(recorder=deterministic.Recorder(), replay=deterministic.Schedule(seed=0))
    with pytest.raises(TypeError):
        deterministic.Runner.from_checkpoint("checkpoint")  # type: ignore[arg-type]


def test_cycle_sets_what_a_busy_loop_costs() -> None:
    from commonware_runtime.deterministic.loop import SPIN_ROUNDS

    async def main(ctx: deterministic.Context) -> float:
        start = ctx.current()
        for _ in range(10 * SPIN_ROUNDS):
            await asyncio.sleep(0)
        return ctx.current() - start

    assert deterministic.Runner(deterministic.Config(cycle=0.005)).start(main) == pytest.approx(0.05, abs=1e-9)
    assert deterministic.Runner(deterministic.Config(cycle=timedelta(microseconds=10))).start(main) == pytest.approx(
        1e-4, abs=1e-9
    )


def test_start_time_and_sleep_until() -> None:
    async def main(ctx: deterministic.Context) -> list[float]:
        times = [ctx.current()]
        await ctx.sleep_until(1_000.25)
        times.append(ctx.current())
        await ctx.sleep_until(0.0)  # far in the past
        times.append(ctx.current())
        return times

    config = deterministic.Config(start_time=1_000.0)
    assert deterministic.Runner(config).start(main) == [1_000.0, 1_000.25, 1_000.25]
    config = deterministic.Config(start_time=990.0)
    assert deterministic.Runner(config).start(main) == [990.0, 1_000.25, 1_000.25]


def test_sleep_until_epoch_deadline_is_reached() -> None:
    async def main(ctx: deterministic.Context) -> list[tuple[float, float]]:
        reached = []
        for deadline in (1_700_000_010.25, 1_700_000_020.1, 1_700_000_030.123456789):
            await ctx.sleep_until(deadline)
            reached.append((ctx.current(), deadline))
        return reached

    config = deterministic.Config(start_time=1_700_000_000.0)
    for current, deadline in deterministic.Runner(config).start(main):
        assert current >= deadline
        assert current == deadline  # time is exact: it wakes at the deadline itself


def test_clock_is_exact_nanoseconds() -> None:
    async def main(ctx: deterministic.Context) -> float:
        for _ in range(1000):
            await ctx.sleep(0.001)
        return ctx.current()

    assert deterministic.Runner().start(main) == 1.0  # no float drift over many sleeps


def test_catch_panics_default_false_raises_from_start() -> None:
    async def main(ctx: deterministic.Context) -> None:
        async def bad(c: deterministic.Context) -> None:
            raise LookupError("panic")

        ctx.spawn(bad)
        await ctx.sleep(10)

    with pytest.raises(LookupError, match="panic"):
        deterministic.Runner().start(main)


# -- teardown hygiene ------------------------------------------------------------------------


class Leftovers:
    """What a run leaves behind: warnings, runtime log records, unraisable exceptions."""

    def __init__(self, caplog: pytest.LogCaptureFixture, caught: list[warnings.WarningMessage]) -> None:
        self._caplog = caplog
        self._caught = caught
        self.unraisable: list[str] = []

    def hook(self, info: Any) -> None:
        self.unraisable.append(f"{info.exc_type.__name__}: {info.exc_value}")

    def check(self) -> None:
        gc.collect()
        found = {
            "unraisable": list(self.unraisable),
            "warnings": [f"{w.category.__name__}: {w.message}" for w in self._caught],
            "logs": [r.getMessage() for r in self._caplog.records if r.name.startswith("commonware_runtime")],
        }
        assert found == {"unraisable": [], "warnings": [], "logs": []}


@pytest.fixture
def leftovers(caplog: pytest.LogCaptureFixture) -> Iterator[Leftovers]:
    caplog.set_level(logging.WARNING, logger="commonware_runtime")
    previous = sys.unraisablehook
    gc.collect()  # what earlier tests left is not ours
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = Leftovers(caplog, caught)
        sys.unraisablehook = found.hook
        try:
            yield found
        finally:
            sys.unraisablehook = previous
            collect_failed_run_garbage()


def _fail_run(runner: deterministic.Runner, main: Callable[[Any], Awaitable[Any]], error: type[BaseException]) -> str:
    try:
        runner.start(main)
    except error as exc:
        return type(exc).__name__
    raise AssertionError(f"expected {error.__name__}")


def test_timeout_teardown_is_clean(leftovers: Leftovers) -> None:
    async def main(ctx: deterministic.Context) -> None:
        await ctx.sleep(10)

    _fail_run(deterministic.Runner.timed(1.0), main, RuntimeTimeout)
    leftovers.check()


def test_stall_teardown_is_clean(leftovers: Leftovers) -> None:
    async def main(ctx: deterministic.Context) -> None:
        event = asyncio.Event()
        await ctx.spawn(lambda c: event.wait())

    _fail_run(deterministic.Runner(), main, RuntimeStalled)
    leftovers.check()


def test_panic_teardown_is_clean(leftovers: Leftovers) -> None:
    async def main(ctx: deterministic.Context) -> None:
        async def bad(c: deterministic.Context) -> None:
            raise LookupError("panic")

        ctx.spawn(bad)
        await ctx.sleep(10)

    _fail_run(deterministic.Runner(), main, LookupError)
    leftovers.check()


def test_replay_divergence_teardown_is_clean(leftovers: Leftovers) -> None:
    _, _, schedule = record()
    _fail_run(
        deterministic.Runner(deterministic.Config(seed=3), replay=schedule),
        replay_program("slower"),
        deterministic.ReplayDivergence,
    )
    leftovers.check()


def stubborn_leftovers(events: list[str], coros: list[Any]) -> Callable[[deterministic.Context], Awaitable[None]]:
    """A root that stalls while one task swallows every cancellation and another spawns a
    task as it unwinds."""

    async def main(ctx: deterministic.Context) -> None:
        ctx.with_label("stubborn").spawn(swallowing(events, coros))
        ctx.with_label("spawner").spawn(spawning_as_it_unwinds(events, coros))
        await asyncio.Event().wait()

    return main


def test_stall_with_a_stubborn_task_is_clean(leftovers: Leftovers, caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    coros: list[Any] = []
    _fail_run(deterministic.Runner(), stubborn_leftovers(events, coros), RuntimeStalled)
    # Cancelled three times (once per round), then closed; the task spawned while unwinding
    # ran and was unwound in the next round: all before start() raised.
    assert events.count("swallowed") == 3 and events.count("finally") == 2
    assert [c.cr_frame for c in coros] == [None, None]
    assert [r.getMessage() for r in caplog.records if r.name == "commonware_runtime"] == [
        "task 'stubborn' ignored 3 cancellations at the end of the run: closing its coroutine"
    ]
    caplog.clear()
    leftovers.check()


def test_teardown_after_the_root_returned_replays() -> None:
    # The leftovers are ended on the recorded schedule (stable-id order, virtual grace
    # periods): a replay makes the same decisions to the last step.
    async def main(ctx: deterministic.Context) -> str:
        ctx.spawn(stubborn_leftovers([], []))
        await ctx.sleep(0.01)
        return "root"

    recorder = deterministic.Recorder()
    first = deterministic.Runner(deterministic.Config(seed=5), recorder=recorder)
    assert first.start(main) == "root"
    assert recorder.schedule is not None
    replayed = deterministic.Runner(deterministic.Config(seed=5), replay=recorder.schedule)
    assert replayed.start(main) == "root"
    assert replayed.steps == first.steps == recorder.schedule.steps


def test_leftover_failing_while_unwound_is_raised(leftovers: Leftovers) -> None:
    async def main(ctx: deterministic.Context) -> str:
        async def bad(c: deterministic.Context) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                raise LookupError("failed while unwinding")

        ctx.spawn(bad)
        await ctx.sleep(0.01)
        return "root"

    # catch_panics=False: the failure is the run's, as on production (not a RuntimeError
    # about the loop that the panic stopped).
    with pytest.raises(LookupError, match="failed while unwinding"):
        deterministic.Runner().start(main)
    leftovers.check()


# -- crash checkpoints -----------------------------------------------------------------------


async def crash_phase(ctx: deterministic.Context) -> dict[str, Any]:
    blob, _ = await ctx.open("p", b"b")
    await blob.write_at(b"durable", 0)
    await blob.sync()
    await blob.write_at(b"lost", 7)  # never synced
    other, _ = await ctx.open("p", b"never_synced")
    await other.write_at(b"x" * 10, 0)
    draws = [ctx.rng.random() for _ in range(3)]
    await ctx.sleep(5)
    return {"time": ctx.current(), "draws": draws, "storage": ctx.storage_audit(), "auditor": ctx.auditor().state()}


async def restart_phase(ctx: deterministic.Context) -> dict[str, Any]:
    storage = ctx.storage_audit()
    time = ctx.current()
    blob, size = await ctx.open("p", b"b")
    other, other_size = await ctx.open("p", b"never_synced")
    return {
        "time": time,
        "storage": storage,
        "size": size,
        "contents": await blob.read_at(size, 0),
        "other_size": other_size,
        "scan": await ctx.scan("p"),
        "draws": [ctx.rng.random() for _ in range(3)],
        "auditor": ctx.auditor().state(),
    }


def crash_and_restart(seed: int = 5) -> tuple[dict[str, Any], dict[str, Any], deterministic.Checkpoint, str]:
    first, checkpoint = deterministic.Runner.seeded(seed).start_and_recover(crash_phase)
    runner = deterministic.Runner.from_checkpoint(checkpoint)
    second = runner.start(restart_phase)
    assert runner.auditor_state is not None
    return first, second, checkpoint, runner.auditor_state


def test_crash_keeps_synced_and_loses_unsynced() -> None:
    first, second, _, _ = crash_and_restart()
    assert second["size"] == 7
    assert second["contents"] == b"durable"
    assert second["other_size"] == 0  # created (durably) but its bytes were never synced
    assert second["scan"] == [b"b", b"never_synced"]
    assert second["storage"] == first["storage"]  # the durable image is what survives


def test_crash_time_continues() -> None:
    first, second, checkpoint, _ = crash_and_restart()
    assert first["time"] == pytest.approx(5.0, abs=0.01)
    assert checkpoint.time >= first["time"]
    assert second["time"] >= checkpoint.time


def test_crash_user_rng_continues() -> None:
    first, second, _, _ = crash_and_restart()

    async def straight(ctx: deterministic.Context) -> list[float]:
        return [ctx.rng.random() for _ in range(6)]

    six = deterministic.Runner.seeded(5).start(straight)
    assert first["draws"] == six[:3]
    assert second["draws"] == six[3:]  # continues the stream, does not restart it


def test_crash_auditor_continues_and_is_deterministic() -> None:
    first, second, _, final = crash_and_restart()
    again = crash_and_restart()
    assert (first, second, final) == (again[0], again[1], again[3])
    # A fresh run of the second phase (no crash history) has another auditor state.
    fresh = deterministic.Runner.seeded(5)

    async def setup_then_restart(ctx: deterministic.Context) -> dict[str, Any]:
        blob, _ = await ctx.open("p", b"b")
        await blob.write_at(b"durable", 0)
        await blob.sync()
        blob2, _ = await ctx.open("p", b"never_synced")
        return await restart_phase(ctx)

    assert fresh.start(setup_then_restart)["auditor"] != second["auditor"]
    assert first["auditor"] != second["auditor"]


def test_crash_restart_twice() -> None:
    _, checkpoint = deterministic.Runner.seeded(1).start_and_recover(crash_phase)

    async def append(ctx: deterministic.Context) -> bytes:
        blob, size = await ctx.open("p", b"b")
        await blob.write_at(b"+", size)
        await blob.sync()
        await blob.write_at(b"?", size + 1)  # lost at the next crash
        await ctx.sleep(0.5)
        return await blob.read_at(size + 2, 0)

    value, checkpoint2 = deterministic.Runner.from_checkpoint(checkpoint).start_and_recover(append)
    assert value == b"durable+?"
    assert checkpoint2.time == checkpoint.time + 0.5  # the clock goes on from the crash
    value, _ = deterministic.Runner.from_checkpoint(checkpoint2).start_and_recover(append)
    assert value == b"durable++?"


def test_checkpoint_runner_is_used_once() -> None:
    _, checkpoint = deterministic.Runner.seeded(1).start_and_recover(crash_phase)
    runner = deterministic.Runner.from_checkpoint(checkpoint)
    runner.start(restart_phase)
    with pytest.raises(RuntimeError):
        runner.start(restart_phase)
    # The checkpoint itself can start several independent restarts, identically.
    a = deterministic.Runner.from_checkpoint(checkpoint).start(restart_phase)
    b = deterministic.Runner.from_checkpoint(checkpoint).start(restart_phase)
    assert a == b


# -- record and replay ------------------------------------------------------------------------


def replay_program(variant: str = "base") -> Callable[[deterministic.Context], Awaitable[list[int]]]:
    async def main(ctx: deterministic.Context) -> list[int]:
        async def worker(c: deterministic.Context, i: int) -> int:
            for _ in range(3):
                delay = 0.001 * (i + 1)
                if variant == "slower" and i == 0:
                    delay = 0.0025
                await c.sleep(delay)
                await asyncio.sleep(0)
            return i * 10 + c.rng.randrange(10)

        handles = [ctx.with_label(f"worker{i}").spawn(lambda c, i=i: worker(c, i)) for i in range(3)]
        return [await h for h in handles]

    return main


def record(seed: int = 3, checkpoint_every: int = 4) -> tuple[list[int], deterministic.Runner, Any]:
    recorder = deterministic.Recorder(checkpoint_every=checkpoint_every)
    runner = deterministic.Runner(deterministic.Config(seed=seed), recorder=recorder)
    value = runner.start(replay_program())
    assert recorder.schedule is not None
    return value, runner, recorder.schedule


def test_record_then_replay_reproduces() -> None:
    value, runner, schedule = record()
    assert schedule.auditor == runner.auditor_state
    assert schedule.outcome == "passed"
    assert schedule.checkpoints and schedule.checkpoints[0][0] == 0
    assert {"worker0", "worker1", "worker2"} <= set(schedule.labels)
    replayed = deterministic.Runner(deterministic.Config(seed=3), replay=schedule)
    assert replayed.start(replay_program()) == value
    assert replayed.auditor_state == runner.auditor_state
    assert replayed.steps == runner.steps
    plain = deterministic.Runner(deterministic.Config(seed=3))
    assert plain.start(replay_program()) == value


def test_recording_and_reading_the_auditor_do_not_change_it() -> None:
    _, recorded, _ = record()
    plain = deterministic.Runner(deterministic.Config(seed=3))
    plain.start(replay_program())
    assert plain.auditor_state == recorded.auditor_state

    def run(peek: bool) -> str | None:
        async def main(ctx: deterministic.Context) -> None:
            for i in range(3):
                await asyncio.sleep(0)
                if peek and i == 1:
                    ctx.auditor().state()

        runner = deterministic.Runner.seeded(1)
        runner.start(main)
        return runner.auditor_state

    assert run(peek=False) == run(peek=True)


def test_recorded_decisions_are_readable() -> None:
    _, runner, schedule = record()
    decisions = schedule.decisions()
    assert decisions and decisions[0][0] == 0
    assert [d[0] for d in decisions] == list(range(len(decisions)))
    times = [d[1] for d in decisions]
    assert times == sorted(times)
    labels = {d[3] for d in decisions}
    assert {"worker0", "worker1", "worker2"} <= labels


def test_recorded_schedule_has_steps_decisions() -> None:
    _, runner, schedule = record()
    assert schedule.steps == runner.steps
    assert len(schedule.ids) == schedule.steps


def replay_error(schedule: Any, main: Callable[[Any], Awaitable[Any]], seed: int = 3) -> deterministic.ReplayDivergence:
    try:
        deterministic.Runner(deterministic.Config(seed=seed), replay=schedule).start(main)
    except deterministic.ReplayDivergence as exc:
        error = exc
    else:
        raise AssertionError("the replay did not diverge")
    collect_failed_run_garbage()
    return error


def test_replay_of_modified_program_diverges() -> None:
    _, _, schedule = record()
    error = replay_error(schedule, replay_program("slower"))
    message = str(error)
    assert isinstance(error.step, int) and 0 <= error.step < schedule.steps
    assert f"step {error.step}" in message
    assert error.expected != error.actual
    assert re.search(r"t=\d+\.\d+s", message)
    assert error.time == pytest.approx(0.0, abs=1.0)


def test_replay_divergence_of_modified_timing_names_tasks() -> None:
    _, _, schedule = record()
    error = replay_error(schedule, replay_program("slower"))
    assert re.search(r"'worker\d'", error.expected), error.expected
    assert re.search(r"'worker\d'|nothing|no task", error.actual), error.actual


def test_replay_divergence_names_task_labels() -> None:
    """An extra task shifts every id: the error names what the trace expected and what ran."""
    _, _, schedule = record()

    async def intruder_first(ctx: deterministic.Context) -> list[int]:
        ctx.with_label("intruder").spawn(lambda c: c.sleep(0.0015))
        return await replay_program()(ctx)

    error = replay_error(schedule, intruder_first)
    assert re.search(r"'(worker\d|root|intruder)'", error.expected), error.expected
    assert re.search(r"'(worker\d|root|intruder)'", error.actual), error.actual
    assert "expected" in str(error)


def test_replay_divergence_calls_an_unlabeled_task_so_as_a_stall_does() -> None:
    async def main(ctx: deterministic.Context) -> None:
        for _ in range(3):
            await ctx.spawn(lambda c: c.sleep(0.001))

    recorder = deterministic.Recorder()
    deterministic.Runner(deterministic.Config(seed=3), recorder=recorder).start(main)
    assert recorder.schedule is not None

    async def changed(ctx: deterministic.Context) -> None:
        await ctx.spawn(lambda c: c.sleep(0.002))
        await main(ctx)

    error = replay_error(recorder.schedule, changed)
    assert "''" not in str(error), str(error)
    assert "'<unlabeled>'" in error.expected + error.actual, str(error)


def test_replay_under_another_seed_diverges() -> None:
    _, _, schedule = record(seed=3)
    error = replay_error(schedule, replay_program(), seed=4)
    assert error.step == 0  # the very first checkpoint (the seed is audited) already differs


def test_replay_of_a_failed_run_reproduces_the_failure() -> None:
    class Unlucky(Exception):
        pass

    async def main(ctx: deterministic.Context) -> None:
        order: list[str] = []

        async def task(c: deterministic.Context, name: str) -> None:
            await asyncio.sleep(0)
            order.append(name)

        await asyncio.gather(*(ctx.spawn(lambda c, n=n: task(c, n)) for n in "abc"))
        raise Unlucky("".join(order))

    recorder = deterministic.Recorder()
    with pytest.raises(Unlucky) as first:
        deterministic.Runner(deterministic.Config(seed=8), recorder=recorder).start(main)
    schedule = recorder.schedule
    assert schedule is not None and schedule.outcome == "failed"
    assert schedule.error == {"type": "Unlucky", "message": str(first.value)}
    with pytest.raises(Unlucky) as again:
        deterministic.Runner(deterministic.Config(seed=8), replay=schedule).start(main)
    assert str(again.value) == str(first.value)


def test_recorder_validation() -> None:
    with pytest.raises(ValueError):
        deterministic.Recorder(checkpoint_every=0)
    with pytest.raises(ValueError):
        deterministic.Recorder(checkpoint_every=-5)


# -- auditor -------------------------------------------------------------------------------


def audited(variant: str, seed: int = 1) -> str:
    async def main(ctx: deterministic.Context) -> str:
        listener = await ctx.bind(("127.0.0.1", 0))

        async def server(c: deterministic.Context) -> None:
            _, sink, stream = await listener.accept()
            await sink.send(await stream.recv(4))

        ctx.with_label("server" if variant != "label" else "other").spawn(server)
        sink, stream = await ctx.dial(listener.local_addr())
        await sink.send(b"ping" if variant != "network" else b"pinG")
        await stream.recv(4)
        blob, _ = await ctx.open("p", b"b")
        await blob.write_at(b"data" if variant != "storage" else b"datA", 0)
        ctx.rng.random()
        if variant == "rng":
            ctx.rng.random()
        if variant == "metric":
            ctx.register("extra", "An extra metric", Counter)
        if variant == "sleep":
            await ctx.sleep(0.001)
        return ctx.auditor().state()

    runner = deterministic.Runner.seeded(seed)
    state = runner.start(main)
    assert runner.auditor_state is not None
    return runner.auditor_state + state


def test_auditor_same_program_same_state() -> None:
    assert audited("base") == audited("base")


def test_auditor_sees_every_behavioural_change() -> None:
    variants = ["base", "label", "network", "storage", "rng", "metric", "sleep"]
    states = {variant: audited(variant) for variant in variants}
    assert len(set(states.values())) == len(variants), states
    assert audited("base", seed=2) != states["base"]


def test_auditor_state_moves_with_events() -> None:
    async def main(ctx: deterministic.Context) -> list[str]:
        auditor = ctx.auditor()
        states = [auditor.state(), auditor.state()]
        ctx.rng.random()
        states.append(auditor.state())
        ctx.register("m", "metric", Counter)
        states.append(auditor.state())
        blob, _ = await ctx.open("p", b"b")
        states.append(auditor.state())
        await blob.write_at(b"x", 0)
        states.append(auditor.state())
        return states

    states = deterministic.Runner().start(main)
    assert states[0] == states[1]  # reading the state changes nothing
    assert len(set(states[1:])) == len(states) - 1
    assert all(re.fullmatch(r"[0-9a-f]{64}", s) for s in states)


def test_auditor_state_after_run_and_steps() -> None:
    runner = deterministic.Runner.seeded(4)
    assert runner.auditor_state is None
    runner.start(replay_program())
    assert runner.auditor_state is not None and re.fullmatch(r"[0-9a-f]{64}", runner.auditor_state)
    assert runner.steps > 0


def test_auditor_state_recorded_after_a_failed_run() -> None:
    runner = deterministic.Runner.timed(1.0)
    fail_message(runner, lambda ctx: ctx.sleep(5), RuntimeTimeout)
    assert runner.auditor_state is not None


def test_encode_is_deterministic() -> None:
    async def main(ctx: deterministic.Context) -> str:
        ctx.with_label("app").register("requests", "Requests", Counter).inc(2)
        await ctx.spawn(lambda c: c.sleep(0.01))
        return ctx.encode()

    first = deterministic.Runner.seeded(1).start(main)
    assert first == deterministic.Runner.seeded(2).start(main)
    assert "_created" not in first
    assert "app_requests_total 2.0" in first


# -- storage audit -------------------------------------------------------------------------


def storage_state(writes: list[tuple[bytes, int, bool]], seed: int = 0) -> str:
    async def main(ctx: deterministic.Context) -> str:
        blob, _ = await ctx.open("p", b"b")
        for data, offset, sync in writes:
            await blob.write_at(data, offset)
            if sync:
                await blob.sync()
        return ctx.storage_audit()

    return deterministic.Runner.seeded(seed).start(main)


def test_storage_audit_equal_for_equal_durable_contents() -> None:
    base = storage_state([(b"abc", 0, True)])
    # Another seed, another route to the same durable bytes, plus unsynced noise.
    assert storage_state([(b"xyz", 0, False), (b"abc", 0, True)], seed=9) == base
    assert storage_state([(b"abc", 0, True), (b"zzz", 3, False)]) == base
    # Different durable bytes give a different audit.
    assert storage_state([(b"abc", 0, True), (b"zzz", 3, True)]) != base
    assert storage_state([(b"abd", 0, True)]) != base


def test_storage_audit_covers_names_and_partitions() -> None:
    async def layout(ctx: deterministic.Context, partition: str, name: bytes) -> str:
        blob, _ = await ctx.open(partition, name)
        await blob.write_at(b"same", 0)
        await blob.sync()
        return ctx.storage_audit()

    a = deterministic.Runner().start(lambda ctx: layout(ctx, "p", b"a"))
    b = deterministic.Runner().start(lambda ctx: layout(ctx, "p", b"b"))
    c = deterministic.Runner().start(lambda ctx: layout(ctx, "q", b"a"))
    assert len({a, b, c}) == 3


# -- ported from commonware-runtime's deterministic tests ---------------------------------------


@pytest.mark.parametrize("catch_panics", [False, True])
def test_checkpoint_keeps_catch_panics(catch_panics: bool) -> None:
    # commonware test_recover_panic_handling: a restart keeps the crashed run's panic setting.
    class Boom(Exception):
        pass

    async def idle(ctx: deterministic.Context) -> None:
        await ctx.sleep(0.001)

    async def failing_task(ctx: deterministic.Context) -> str:
        async def bad(c: deterministic.Context) -> None:
            raise Boom("goodbye")

        from commonware_runtime import Exited

        handle = ctx.spawn(bad)
        try:
            await handle
        except Exited as exc:  # panics caught: the handle reports the failure
            assert isinstance(exc.__cause__, Boom)
            return "Exited"
        return "unreachable"

    config = deterministic.Config(seed=3, catch_panics=catch_panics)
    _, checkpoint = deterministic.Runner(config).start_and_recover(idle)
    restarted = deterministic.Runner.from_checkpoint(checkpoint)
    if catch_panics:
        assert restarted.start(failing_task) == "Exited"
    else:
        with pytest.raises(Boom, match="goodbye"):
            restarted.start(failing_task)


def test_uncaught_panics_pick_the_same_failure_per_seed() -> None:
    # commonware test_multiple_panics, deterministic flavour: which of several failing tasks
    # ends the run is a product of the schedule, so the same seed names the same one.
    class Boom(Exception):
        pass

    async def main(ctx: deterministic.Context) -> None:
        async def bad(c: deterministic.Context, i: int) -> None:
            await c.sleep(0.001)
            raise Boom(f"boom {i}")

        for i in range(5):
            ctx.with_label(f"task{i}").spawn(lambda c, i=i: bad(c, i))
        while True:
            await ctx.sleep(0.1)

    def failure(seed: int) -> str:
        with pytest.raises(Boom) as info:
            deterministic.Runner.seeded(seed).start(main)
        return str(info.value)

    seen = {seed: failure(seed) for seed in range(8)}
    assert all(failure(seed) == message for seed, message in seen.items())
    assert set(seen.values()) <= {f"boom {i}" for i in range(5)}
    assert len(set(seen.values())) > 1  # it really is the schedule that decides


def test_checkpoint_storage_and_time_survive_recovery_with_state() -> None:
    # commonware test_recover_synced_storage_persists (storage/time half).
    async def phase1(ctx: deterministic.Context) -> float:
        blob, _ = await ctx.open("test_partition", b"test_blob")
        await blob.write_at(b"Hello, world!", 0)
        await blob.sync()
        return ctx.current()

    async def phase2(ctx: deterministic.Context) -> tuple[int, bytes, float]:
        blob, size = await ctx.open("test_partition", b"test_blob")
        return size, await blob.read_at(size, 0), ctx.current()

    end, checkpoint = deterministic.Runner().start_and_recover(phase1)
    size, data, now = deterministic.Runner.from_checkpoint(checkpoint).start(phase2)
    assert (size, data) == (13, b"Hello, world!")
    assert now >= end


def test_checkpoint_auditor_is_the_roots_last_state() -> None:
    async def main(ctx: deterministic.Context) -> str:
        blob, _ = await ctx.open("test_partition", b"test_blob")
        await blob.write_at(b"Hello, world!", 0)
        await blob.sync()
        return ctx.auditor().state()

    state, checkpoint = deterministic.Runner().start_and_recover(main)
    assert checkpoint.auditor.state() == state


def test_a_runner_inside_a_running_loop_is_refused_leaving_nothing_behind() -> None:
    async def inner(ctx: deterministic.Context) -> int:
        return 1

    async def main(ctx: deterministic.Context) -> None:
        runner = deterministic.Runner()
        with pytest.raises(RuntimeError, match="running event loop"):
            runner.start(inner)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "coroutine ... was never awaited" would fail here
        deterministic.Runner().start(main)
        gc.collect()


def test_a_timing_divergence_names_its_step_and_time() -> None:
    async def main(ctx: deterministic.Context) -> None:
        await ctx.spawn(lambda c: asyncio.sleep(0))

    recorder = deterministic.Recorder()
    deterministic.Runner(deterministic.Config(seed=3), recorder=recorder).start(main)
    assert recorder.schedule is not None and not recorder.schedule.timing

    async def waits(ctx: deterministic.Context) -> None:
        await ctx.spawn(lambda c: asyncio.sleep(0.5))

    error = replay_error(recorder.schedule, waits)
    assert re.search(r"replay diverged at step \d+ \(t=\d+\.\d{9}s\): the idle loop makes timing choice 0, and the "
                     r"trace recorded only 0", str(error)), str(error)
    assert error.step >= 0
