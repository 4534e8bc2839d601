"""``--cw-bisect``: its strategies, the decisive choice, the minimal schedule."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from commonware_runtime import deterministic
from commonware_runtime.deterministic.bisect import (
    BisectError,
    Deviation,
    DeviationStrategy,
    PrefixStrategy,
    TimingDecision,
    TimingDeviation,
    bisect_trace,
    delay_cost,
    min_trace_path,
)
from commonware_runtime.deterministic.tracefile import load_trace, trace_from_schedule
from race_program import RACE, race_main

from pytest_commonware.engine import run_deterministic

pytest_plugins = ["pytester"]

# pytest-asyncio (the test extra) stays out of these sessions: test_plugin_workflow.py tests it beside ours.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:asyncio")


def _failing_trace(test: str = "t.py::test_race", strategy: str = "random", main: Any = race_main,
                   ordering: str = "any") -> Any:
    for seed in range(50):
        config = deterministic.Config(seed=seed, strategy=strategy, ordering=ordering)
        result = run_deterministic(config, main())
        if result.error is not None:
            assert result.schedule is not None
            return trace_from_schedule(result.schedule, test=f"{test}[seed={seed}]", seed=seed, config=config.to_dict())
    raise AssertionError(f"no seed in 0..49 fails under {strategy}, ordering {ordering}")


def test_canonical_order_is_ready_order_and_replayable() -> None:
    log: list[str] = []

    async def worker(name: str) -> None:
        for _ in range(3):
            log.append(name)
            await asyncio.sleep(0)

    async def main(ctx: Any) -> None:
        handles = [ctx.with_label(n).spawn(lambda _, n=n: worker(n)) for n in "abcde"]
        for h in handles:
            await h

    strategy = PrefixStrategy(deterministic.Schedule(seed=3), 0)
    recorder = deterministic.Recorder()
    deterministic.Runner(deterministic.Config(seed=3).with_strategy(strategy), recorder=recorder).start(main)
    assert log == list("abcde") * 3  # oldest ready first, every round
    assert strategy.decisions == []  # the canonical run has no deviations
    schedule = recorder.schedule
    assert schedule is not None
    assert schedule.steps == len(schedule.ids) == len(schedule.picks) > 0
    assert schedule.holds_back and schedule.strategy == "bisect"
    assert list(schedule.picks) == sorted(schedule.picks)  # the oldest ready callback, every time
    # The recording is an ordinary schedule: the runtime's own Replayer follows it.
    log.clear()
    deterministic.Runner(deterministic.Config(seed=3), replay=schedule).start(main)
    assert log == list("abcde") * 3


def test_deviation_driver_runs_the_named_task() -> None:
    log: list[str] = []

    async def worker(name: str) -> None:
        await asyncio.sleep(0)
        log.append(name)

    async def main(ctx: Any) -> None:
        handles = [ctx.with_label(n).spawn(lambda _, n=n: worker(n)) for n in "abc"]
        for h in handles:
            await h

    # Steps: 0 root; 1-3 first steps of a, b, c (ids 2, 3, 4); 4-6 their second steps.
    strategy = DeviationStrategy([Deviation(step=4, tid=4, rank=0)])
    deterministic.Runner(deterministic.Config().with_strategy(strategy)).start(main)
    assert log == ["c", "a", "b"]
    assert [(d.step, d.label, d.canonical_label, d.rank) for d in strategy.decisions] == [(4, "c", "a", 2)]
    # Holding back: at step 1, the root's newest callback may run before the tasks it spawned.
    log.clear()
    strategy = DeviationStrategy([Deviation(step=1, tid=4, rank=0), Deviation(step=2, tid=4, rank=0)])
    deterministic.Runner(deterministic.Config().with_strategy(strategy)).start(main)
    assert log == ["c", "a", "b"]  # c's second step ran at step 2, as soon as it was ready
    assert [(d.step, d.label) for d in strategy.decisions] == [(1, "c"), (2, "c")]


def test_bisect_finds_the_decisive_decision(tmp_path: Path) -> None:
    trace = _failing_trace()
    out = tmp_path / "race.min.yaml"
    result = bisect_trace(trace, race_main, out, where="race.yaml")
    assert not result.canonical_fails
    d = result.decisive
    assert d is not None and d.deviation
    assert d.step == result.prefix - 1
    assert (d.label, d.canonical_label) == ("b", "a")  # b ran before a: that decides the race
    assert "bump()" in d.site
    assert len(result.minimal) == 1 and result.minimal[0].step == d.step
    assert result.trace_deviations >= len(result.minimal)
    assert result.replay_ok
    # The minimal trace is a replayable trace of the same test and seed, failing the same way.
    minimal = load_trace(out)
    assert (minimal.test, minimal.seed, minimal.outcome) == (trace.test, trace.seed, "failed")
    assert minimal.error is not None and minimal.error["type"] == "AssertionError"
    assert minimal.extra["bisect"]["decisive_step"] == d.step
    assert minimal.schedule.holds_back and minimal.config == trace.config
    replay = run_deterministic(deterministic.Config(seed=trace.seed), race_main(), replay=minimal.schedule)
    assert isinstance(replay.error, AssertionError)
    assert "decisive decision: step" in result.report and "reproduce: pytest --cw-replay" in result.report
    # Bisecting the minimal trace again finds the same decision.
    again = bisect_trace(minimal, race_main, tmp_path / "again.min.yaml", where="race.min.yaml")
    assert again.decisive is not None and (again.decisive.step, again.decisive.label) == (d.step, d.label)
    assert again.trace_deviations == 1


def order_main() -> Any:
    """b fails unless a finished first; two noisy tasks make the schedule that shows it cost
    more delays than it has deviations."""

    async def main(ctx: Any) -> None:
        done = {"a": False}

        async def a(c: Any) -> None:
            await asyncio.sleep(0)
            done["a"] = True

        async def b(c: Any) -> None:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert done["a"], "b ran before a finished"

        async def noise(c: Any) -> None:
            for _ in range(3):
                await asyncio.sleep(0)

        handles = [ctx.with_label("n1").spawn(noise), ctx.with_label("a").spawn(a),
                   ctx.with_label("b").spawn(b), ctx.with_label("n2").spawn(noise)]
        for h in handles:
            await h

    return main


def test_the_minimal_schedules_delay_cost_is_what_explore_needs(tmp_path: Path) -> None:
    trace = _failing_trace(main=order_main, strategy="pos")
    result = bisect_trace(trace, order_main, tmp_path / "o.min.yaml", where="o.yaml")
    cost = delay_cost(result.minimal)
    assert cost == sum(d.rank for d in result.minimal) >= len(result.minimal) >= 1
    assert f"; delay cost {cost}, the budget --cw-explore counts" in result.report
    assert load_trace(tmp_path / "o.min.yaml").extra["bisect"]["delay_cost"] == cost
    # That budget reaches a failure (this schedule, or a cheaper one).
    found = deterministic.explore(order_main(), deterministic.Config(seed=trace.seed), max_deviations=cost)
    assert found.failure is not None


@pytest.mark.parametrize("strategy", ["pct:2", "swarm"])
def test_bisect_of_a_trace_recorded_under_another_strategy(tmp_path: Path, strategy: str) -> None:
    trace = _failing_trace(strategy=strategy)
    assert trace.schedule.strategy == strategy
    out = tmp_path / "race.min.yaml"
    result = bisect_trace(trace, race_main, out, where="race.yaml")
    assert not result.canonical_fails and result.replay_ok
    d = result.decisive
    assert d is not None and d.deviation and d.step == result.prefix - 1
    assert len(result.minimal) == 1 and result.minimal[0].step == d.step
    assert f"recorded under strategy {trace.strategy}, ordering any" in result.report
    minimal = load_trace(out)
    assert minimal.config["strategy"] == strategy and minimal.schedule.strategy == "bisect"
    assert minimal.extra["bisect"]["source_strategy"] == trace.strategy
    replay = run_deterministic(deterministic.Config(seed=trace.seed, strategy=strategy), race_main(),
                               replay=minimal.schedule)
    assert isinstance(replay.error, AssertionError)


def timer_race_main() -> Any:
    """Under ordering fifo: a token refresher wakes at 10 ms and needs one more step; a request
    wakes at 10.5 ms.  A late wake-up (>= 0.5 ms) makes both due together and the request
    uses the stale token: a race stock asyncio has under load."""

    async def main(ctx: Any) -> None:
        state = {"token": "stale"}

        async def refresher(c: Any) -> None:
            await c.sleep(0.010)
            await asyncio.sleep(0)
            state["token"] = "fresh"

        async def request(c: Any) -> None:
            await c.sleep(0.0105)
            assert state["token"] == "fresh", "request sent with the stale token"

        handles = [ctx.with_label("refresher").spawn(refresher), ctx.with_label("request").spawn(request)]
        for h in handles:
            await h

    return main


def test_bisect_of_a_fifo_trace_searches_the_timing_choices(tmp_path: Path) -> None:
    trace = _failing_trace(main=timer_race_main, ordering="fifo")
    assert trace.schedule.ordering == "fifo" and len(trace.schedule.timing) > 0
    out = tmp_path / "timers.min.yaml"
    result = bisect_trace(trace, timer_race_main, out, where="timers.yaml")
    assert not result.canonical_fails and result.replay_ok and result.ordering == "fifo"
    d = result.decisive
    assert isinstance(d, TimingDecision) and d.deviation and d.index == result.prefix - 1
    assert d.kind == "late" and d.value >= 500_000  # late enough that both timers fire together
    assert len(result.minimal) == 1 and result.minimal[0] == d
    assert "decisive timing choice: timing choice" in result.report
    assert "minimal schedule: 1 deviation(s) from the canonical timing" in result.report
    minimal = load_trace(out)
    assert minimal.ordering == "fifo" and not minimal.schedule.holds_back
    assert sum(1 for v in minimal.schedule.timing if v) == 1
    assert minimal.extra["bisect"]["decisive_timing_choice"] == d.index
    replay = run_deterministic(deterministic.Config(seed=trace.seed, ordering="fifo"), timer_race_main(),
                               replay=minimal.schedule)
    assert isinstance(replay.error, AssertionError)
    # The strategy takes a timing deviation by index.
    strategy = DeviationStrategy([TimingDeviation(d.index, d.value)])
    run = run_deterministic(deterministic.Config(seed=0, ordering="fifo").with_strategy(strategy), timer_race_main())
    assert isinstance(run.error, AssertionError)


def test_bisect_of_a_schedule_independent_failure(tmp_path: Path) -> None:
    async def main(ctx: Any) -> None:
        await ctx.with_label("w").spawn(lambda c: c.sleep(1))
        raise ValueError("always")

    config = deterministic.Config(seed=1)
    result = run_deterministic(config, main)
    assert result.schedule is not None
    trace = trace_from_schedule(result.schedule, test="t.py::test_x[seed=1]", seed=1, config=config.to_dict())
    bisected = bisect_trace(trace, lambda: main, tmp_path / "x.min.yaml", where="x.yaml")
    assert bisected.canonical_fails and bisected.decisive is None and bisected.minimal == []
    assert "does not" in bisected.report and bisected.replay_ok


def test_bisect_refuses_a_passing_trace(tmp_path: Path) -> None:
    async def main(ctx: Any) -> None:
        await ctx.sleep(1)

    config = deterministic.Config(seed=0)
    result = run_deterministic(config, main)
    assert result.schedule is not None
    trace = trace_from_schedule(result.schedule, test="t.py::test_ok[seed=0]", seed=0, config=config.to_dict())
    with pytest.raises(BisectError, match="passing run"):
        bisect_trace(trace, lambda: main, tmp_path / "x.min.yaml", where="x.yaml")


def test_min_trace_path() -> None:
    assert min_trace_path(Path("traces/a__seed-3.yaml")) == Path("traces/a__seed-3.min.yaml")
    assert min_trace_path(Path("x.yml")) == Path("x.min.yaml")
    assert min_trace_path(Path("trace")) == Path("trace.min.yaml")


RACE_TEST = RACE



def test_cw_bisect_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE_TEST)
    pytester.runpytest(*QUIET)
    trace = min((pytester.path / "traces").glob("*.yaml"))
    rel = trace.relative_to(pytester.path)
    result = pytester.runpytest(*QUIET, "--cw-bisect", str(rel))
    result.assert_outcomes(passed=1)
    minimal = trace.with_name(trace.name[: -len(".yaml")] + ".min.yaml")
    result.stdout.fnmatch_lines([
        "*commonware bisect*",
        f"bisect of {rel}",
        "*the canonical schedule (oldest ready task first) passes*",
        (
            "*decisive decision: step * ran 'b' (id *), resuming from its start (bump() at test_race.py:*), "
            "where the canonical order runs 'a' (id *) first*"
        ),
        "*minimal schedule: 1 deviation(s) from the canonical order*",
        f"*written {minimal.relative_to(pytester.path)} (replays to the same failure)*",
        f"*reproduce: pytest --cw-replay={minimal.relative_to(pytester.path)}*",
    ])
    assert minimal.exists()
    # The minimal trace replays through the plugin to the same failure.
    replay = pytester.runpytest("-v", *QUIET, "--cw-replay", str(minimal))
    replay.assert_outcomes(failed=1)
    replay.stdout.fnmatch_lines(["*AssertionError: lost update*", "*reproduced the recorded failure*"])
