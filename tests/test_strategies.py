"""Schedules (SPEC 5a): orderings, strategies, replay of every strategy, systematic and
Hypothesis-driven exploration."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from commonware_runtime import deterministic
from commonware_runtime.deterministic import strategies
from hypothesis import HealthCheck, given, settings

STRATEGIES = ("random", "pct", "pct:1", "pct:2:50", "pos", "swarm", "canonical")


def run(main: Any, seed: int = 0, **kw: Any) -> Any:
    return deterministic.Runner(deterministic.Config(seed=seed, **kw)).start(main)


# -- ordering="fifo": only what asyncio itself can do ---------------------------------------


async def child_started_after_one_yield(ctx: Any) -> bool:
    started = []

    async def child() -> None:
        started.append(True)

    task = asyncio.create_task(child())
    await asyncio.sleep(0)
    result = bool(started)
    await task
    return result


def test_fifo_runs_callbacks_in_registration_order_on_every_seed_and_strategy() -> None:
    for strategy in STRATEGIES:
        assert all(run(child_started_after_one_yield, seed, ordering="fifo", strategy=strategy) for seed in range(40))


def test_any_order_may_leave_the_child_unstarted() -> None:
    outcomes = {run(child_started_after_one_yield, seed, ordering="any") for seed in range(40)}
    assert outcomes == {True, False}


def test_a_lone_sleep_is_exact_and_close_timers_may_merge() -> None:
    async def lone(ctx: Any) -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(1.0)
        return loop.time() - t0

    async def with_neighbour(ctx: Any) -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(1.0005, lambda: None)  # due half a cycle after the sleep
        t0 = loop.time()
        await asyncio.sleep(1.0)
        return loop.time() - t0

    for ordering in ("fifo", "any"):
        for strategy in ("random", "walk", "swarm"):
            assert {run(lone, seed, ordering=ordering, strategy=strategy) for seed in range(20)} == {1.0}
        observed = {run(with_neighbour, seed, ordering=ordering, strategy="walk") for seed in range(40)}
        assert observed == {1.0, 1.0005}  # a late wake-up fires both together, at the later deadline
    assert {run(with_neighbour, seed, strategy="random") for seed in range(40)} == {1.0}  # on time under "any"


def test_fifo_fires_timers_of_one_instant_in_creation_order() -> None:
    """On a real clock a timer created later with the same delay is due later: asyncio's
    wait(timeout=0.1) created after a sleep(0.1) never times out first (CPython's
    test_wait_concurrent_complete)."""

    async def main(ctx: Any) -> tuple[tuple[str, ...], bool]:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        for name in "abc":
            loop.call_later(0.5, fired.append, name)
        loop.call_later(0.2, fired.append, "early")
        a = asyncio.ensure_future(asyncio.sleep(0.1))
        b = asyncio.ensure_future(asyncio.sleep(1))
        await asyncio.sleep(0)  # both sleeps start (their timers exist) before wait's timeout
        done, _ = await asyncio.wait([b, a], timeout=0.1)
        b.cancel()
        await asyncio.sleep(1)
        return tuple(fired), a in done

    for strategy in ("random", "walk", "swarm", "canonical"):
        for seed in range(20):
            assert run(main, seed, ordering="fifo", strategy=strategy) == (("early", "a", "b", "c"), True)


# -- strategies that hold tasks back -----------------------------------------------------------


async def deep_order_bug(ctx: Any) -> None:
    """The checker reads the state once, early; it is wrong only if it is held back while the
    writer takes twenty steps (a per-round shuffle never delays it that long)."""
    state = {"phase": "init"}

    async def writer(c: Any) -> None:
        for _ in range(20):
            await asyncio.sleep(0)
        state["phase"] = "done"

    async def checker(c: Any) -> None:
        await asyncio.sleep(0)
        assert state["phase"] == "init", "checker ran after the writer finished"

    handles = [ctx.spawn(writer), ctx.spawn(checker)]
    for handle in handles:
        await handle


def failing_seeds(main: Any, seeds: range, **kw: Any) -> list[int]:
    found = []
    for seed in seeds:
        try:
            run(main, seed, **kw)
        except AssertionError:
            found.append(seed)
    return found


def test_pct_finds_a_bug_that_needs_a_task_held_back_and_random_does_not() -> None:
    assert failing_seeds(deep_order_bug, range(200), strategy="random") == []
    assert len(failing_seeds(deep_order_bug, range(40), strategy="pct:1")) >= 10
    assert len(failing_seeds(deep_order_bug, range(40), strategy="pos")) >= 1
    assert len(failing_seeds(deep_order_bug, range(40), strategy="swarm")) >= 5


def test_held_back_programs_still_end_fair_fallback() -> None:
    async def spin_until_set(ctx: Any) -> int:
        flag = asyncio.Event()
        spins = 0

        async def spinner(c: Any) -> None:
            nonlocal spins
            while not flag.is_set():  # busy-waits on the other task: needs fairness
                spins += 1
                await asyncio.sleep(0)

        async def setter(c: Any) -> None:
            await asyncio.sleep(0)
            flag.set()

        handles = [ctx.spawn(spinner), ctx.spawn(setter)]
        for handle in handles:
            await handle
        return spins

    for strategy in ("pct", "pct:3:100", "pos", "swarm"):
        assert all(run(spin_until_set, seed, strategy=strategy, timeout=60.0) >= 0 for seed in range(15))


def test_user_rng_stream_does_not_depend_on_the_strategy() -> None:
    async def main(ctx: Any) -> list[float]:
        async def noise(c: Any) -> None:
            for _ in range(5):
                await asyncio.sleep(0)

        for _ in range(4):
            ctx.spawn(noise)
        draws = []
        for _ in range(5):
            await asyncio.sleep(0)
            draws.append(ctx.rng.random())
        return draws

    results = {tuple(run(main, 3, strategy=s, ordering=o)) for s in STRATEGIES for o in ("any", "fifo")}
    assert len(results) == 1


# -- replay of every strategy --------------------------------------------------------------------


async def busy_program(ctx: Any) -> list[str]:
    log: list[str] = []
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def worker(c: Any, name: str) -> None:
        for i in range(4):
            await c.sleep(c.rng.random() * 0.01)
            await queue.put(f"{name}{i}")
            log.append(f"{name}{i}@{c.current():.4f}")

    for name in "abc":
        ctx.with_label(name).spawn(lambda c, n=name: worker(c, n))
    for _ in range(12):
        await queue.get()
    return log


@pytest.mark.parametrize("ordering", ["any", "fifo"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_records_and_replays(strategy: str, ordering: str) -> None:
    config = deterministic.Config(seed=5, strategy=strategy, ordering=ordering)
    recorder = deterministic.Recorder()
    first = deterministic.Runner(config, recorder=recorder)
    log = first.start(busy_program)
    unrecorded = deterministic.Runner(config)
    assert unrecorded.start(busy_program) == log  # recording observes, never changes the run
    assert unrecorded.auditor_state == first.auditor_state
    schedule = recorder.schedule
    assert schedule is not None and schedule.ordering == ordering
    assert schedule.strategy == strategies.make_strategy(strategy).name
    replayed = deterministic.Runner(config.with_strategy("random"), replay=schedule)
    assert replayed.start(busy_program) == log
    assert replayed.auditor_state == first.auditor_state


def test_replay_of_a_changed_program_diverges_under_pct() -> None:
    config = deterministic.Config(seed=2, strategy="pct:2")
    recorder = deterministic.Recorder()
    deterministic.Runner(config, recorder=recorder).start(busy_program)
    assert recorder.schedule is not None

    async def changed(ctx: Any) -> None:
        ctx.with_label("extra").spawn(lambda c: asyncio.sleep(0))
        await busy_program(ctx)

    with pytest.raises(deterministic.ReplayDivergence):
        deterministic.Runner(config, replay=recorder.schedule).start(changed)


# -- the Strategy protocol and registration ------------------------------------------------------


class Newest(strategies.BaseStrategy):
    """A user's strategy: the most recently readied callback first (LIFO), held back across rounds."""

    name = "newest"
    holds_back = True

    def begin(self, rng: Any, loop: Any) -> None:
        super().begin(rng, loop)
        self.stack: list[int] = []

    def arrive(self, seq: int, handle: asyncio.Handle) -> None:
        self.stack.append(seq)

    def choose(self, step: int) -> int:
        return self.stack.pop()


def test_a_user_strategy_object_and_a_registered_name() -> None:
    assert isinstance(Newest(), deterministic.Strategy)
    assert run(deep_order_bug_free, strategy=Newest()) == "ok"
    strategies.register_strategy("newest_first", Newest)
    try:
        assert "newest_first" in strategies.strategy_names()
        assert run(deep_order_bug_free, strategy="newest_first") == "ok"
        # newest first: the task's own wake-up overtakes the child it just created
        assert run(child_started_after_one_yield, strategy="newest_first") is False
    finally:
        strategies._REGISTRY.pop("newest_first")


async def deep_order_bug_free(ctx: Any) -> str:
    await asyncio.gather(*(asyncio.sleep(0) for _ in range(3)))
    return "ok"


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"ordering": "lifo"}, ValueError, "'lifo'"),
        ({"strategy": "nope"}, ValueError, "'nope'"),
        ({"strategy": "pct:x"}, ValueError, "'x'"),
        ({"strategy": "pct:0"}, ValueError, "0"),
        ({"strategy": "random:1"}, ValueError, "random:1"),
        ({"strategy": object()}, TypeError, "choose"),
    ],
)
def test_bad_settings_fail_at_the_call(kwargs: dict[str, Any], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        deterministic.Config(**kwargs)
    if "ordering" in kwargs:
        with pytest.raises(error, match=text):
            deterministic.EventLoop(**kwargs)


def test_strategy_choosing_a_callback_that_is_not_ready_is_an_error() -> None:
    class Broken(Newest):
        def choose(self, step: int) -> int:
            return 10**9

    with pytest.raises(ValueError, match="not among the ready callbacks"):
        run(deep_order_bug_free, strategy=Broken())


# -- systematic exploration ---------------------------------------------------------------------


async def lost_update(ctx: Any) -> int:
    counter = {"n": 0}

    async def increment(c: Any) -> None:
        await asyncio.sleep(0)
        value = counter["n"]
        await asyncio.sleep(0)
        counter["n"] = value + 1

    async def other(c: Any) -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        counter["n"] += 1

    handles = [ctx.spawn(increment), ctx.spawn(other)]
    for handle in handles:
        await handle
    assert counter["n"] == 2, "lost update"
    return counter["n"]


async def locked_counter(ctx: Any) -> int:
    lock = asyncio.Lock()
    counter = {"n": 0}

    async def increment(c: Any) -> None:
        async with lock:
            value = counter["n"]
            await asyncio.sleep(0)
            counter["n"] = value + 1

    handles = [ctx.spawn(increment) for _ in range(3)]
    for handle in handles:
        await handle
    assert counter["n"] == 3
    return counter["n"]


def test_explore_finds_the_race_with_a_replayable_schedule() -> None:
    assert run(lost_update, strategy="canonical") == 2  # the canonical order hides it
    result = deterministic.explore(lost_update, max_deviations=2)
    assert isinstance(result.failure, AssertionError) and result.schedule is not None
    assert 1 < result.schedules and result.deviations
    assert "fails" in result.summary()
    with pytest.raises(AssertionError, match="lost update"):
        deterministic.Runner(deterministic.Config(), replay=result.schedule).start(lost_update)


def test_explore_of_a_correct_program_is_a_guarantee_with_a_count() -> None:
    none = deterministic.explore(locked_counter, max_deviations=0)
    assert (none.schedules, none.exhausted, none.failure) == (1, True, None)
    one = deterministic.explore(locked_counter, max_deviations=1)
    two = deterministic.explore(locked_counter, max_deviations=2)
    assert one.exhausted and two.exhausted and two.failure is None
    assert 1 < one.schedules < two.schedules
    assert f"all {two.schedules} schedule(s) within 2 deviation(s): none fails" in two.summary()
    capped = deterministic.explore(locked_counter, max_deviations=2, limit=3)
    assert (capped.schedules, capped.exhausted) == (3, False) and "limit of 3" in capped.summary()


def test_explore_in_fifo_explores_timing_only() -> None:
    async def timers(ctx: Any) -> None:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        loop.call_later(0.1, fired.append, "a")
        loop.call_later(0.1005, fired.append, "b")
        await asyncio.sleep(0.1)
        assert fired == ["a"], f"timers fired as {fired}"  # wrong if the wake-up at 0.1 is late

    result = deterministic.explore(timers, deterministic.Config(ordering="fifo"), max_deviations=1)
    assert isinstance(result.failure, AssertionError) and "['a', 'b']" in str(result.failure)
    assert result.schedules == 2 and result.deviations == {0: 1}  # the first wake-up, late
    assert deterministic.explore(locked_counter, deterministic.Config(ordering="fifo")).failure is None


def test_explore_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="-1"):
        deterministic.explore(lost_update, max_deviations=-1)
    with pytest.raises(ValueError, match="0"):
        deterministic.explore(lost_update, limit=0)
    with pytest.raises(TypeError, match="Config"):
        deterministic.explore(lost_update, {"seed": 1})  # type: ignore[arg-type]


# -- Hypothesis ----------------------------------------------------------------------------------


def test_hypothesis_schedules_find_and_shrink_the_lost_update(capsys: pytest.CaptureFixture[str]) -> None:
    from commonware_runtime.hypothesis import DrawnSchedule, schedules

    @settings(max_examples=300, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(schedules())
    def check(schedule: DrawnSchedule) -> None:
        schedule.run(lost_update)

    with pytest.raises(AssertionError, match="lost update") as info:
        check()
    printed = "".join(str(note) for note in getattr(info.value, "__notes__", [])) + capsys.readouterr().out
    assert "DrawnSchedule(choices=(" in printed
    shrunk = printed.split("DrawnSchedule(", 1)[1].split(")", 1)[0]
    # The printed value is code that reruns the failing schedule.
    again = eval("DrawnSchedule(" + shrunk + "))", {"DrawnSchedule": DrawnSchedule})
    with pytest.raises(AssertionError, match="lost update"):
        again.run(lost_update)
    assert again.recorded is not None and again.recorded.strategy == "choices"


def test_hypothesis_schedule_of_zeros_is_the_canonical_run() -> None:
    from commonware_runtime.hypothesis import DrawnSchedule

    assert DrawnSchedule((0, 0, 0)).run(lost_update) == 2
    assert repr(DrawnSchedule((0, 2, 0, 0))) == "DrawnSchedule(choices=(0, 2), ordering='any')"
    with pytest.raises(ValueError, match="-1"):
        DrawnSchedule((1, -1))


# -- many ready at once: a window keeps waking n waiters O(n) ------------------------------------


@pytest.mark.parametrize("strategy", ["random", "walk", "pct", "pos", "swarm"])
def test_a_large_round_overtakes_at_most_a_window_and_replays(strategy: str) -> None:
    from commonware_runtime.deterministic.strategies import WINDOW

    n = WINDOW + 300

    async def main(ctx: Any) -> tuple[list[int], list[int]]:
        event = asyncio.Event()
        waiting: list[int] = []
        woke: list[int] = []

        async def waiter(i: int) -> None:
            waiting.append(i)
            await event.wait()
            woke.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(n)]
        while len(waiting) < n:
            await asyncio.sleep(0)
        event.set()
        await asyncio.gather(*tasks)
        return waiting, woke

    config = deterministic.Config(seed=3, strategy=strategy)
    waiting, woke = deterministic.Runner(config).start(main)
    assert sorted(woke) == list(range(n))
    if strategy != "pct":  # (pct: fixed task priorities wake them in the order they waited)
        assert woke != waiting  # still shuffled
    # the k-th to wait cannot wake before WINDOW-1 of those that waited before it
    rank = {i: k for k, i in enumerate(waiting)}
    assert all(position >= rank[i] - (WINDOW - 1) for position, i in enumerate(woke))
    woke = (waiting, woke)  # type: ignore[assignment]
    recorder = deterministic.Recorder()
    assert deterministic.Runner(config, recorder=recorder).start(main) == woke  # inlined == general path
    assert recorder.schedule is not None
    assert deterministic.Runner(config, replay=recorder.schedule).start(main) == woke


async def two_connections(ctx: Any) -> tuple[Any, Any, list[Any]]:
    """Hosts a and b each dial c over links of equal latency: their sinks, and c's streams."""
    for host in ("10.0.0.1", "10.0.0.2"):
        ctx.network.set_link(host, "10.0.0.3", latency=0.01)
    listener = await ctx.with_host("10.0.0.3").bind(("0.0.0.0", 9000))
    sink_a, _ = await ctx.with_host("10.0.0.1").dial(("10.0.0.3", 9000))
    sink_b, _ = await ctx.with_host("10.0.0.2").dial(("10.0.0.3", 9000))
    return sink_a, sink_b, [(await listener.accept())[2] for _ in range(2)]


def two_senders(expect_first: bytes | None = None) -> Any:
    """Hosts a and b each send one byte to c over their own connection, with equal latency,
    at the same instant; c reads both connections at once and notes the arrival order."""

    async def main(ctx: Any) -> bytes:
        sink_a, sink_b, streams = await two_connections(ctx)
        got: list[bytes] = []

        async def reader(c: Any, stream: Any) -> None:
            got.append(await stream.recv(1))

        readers = [ctx.spawn(lambda c, s=s: reader(c, s)) for s in streams]
        await sink_a.send(b"A")
        await sink_b.send(b"B")
        for r in readers:
            await r
        order = b"".join(got)
        if expect_first is not None:
            assert order[:1] == expect_first, f"{order!r} arrived"
        return order

    return main


@pytest.mark.parametrize("strategy", ["random", "pct", "swarm"])
def test_fifo_lets_deliveries_on_different_connections_due_at_one_instant_arrive_either_way(strategy: str) -> None:
    orders = {run(two_senders(), seed=seed, ordering="fifo", strategy=strategy) for seed in range(40)}
    assert orders == {b"AB", b"BA"}
    # asyncio's order itself (the canonical strategy): in the order they were sent.
    assert run(two_senders(), ordering="fifo", strategy="canonical") == b"AB"


def test_a_delivery_tie_is_recorded_replayed_explored_and_bisected(tmp_path: Any) -> None:
    from commonware_runtime.deterministic.bisect import TimingDecision, bisect_trace
    from commonware_runtime.deterministic.tracefile import trace_from_schedule

    # Systematic: one deviation (the second delivery first) reaches the other order.
    found = deterministic.explore(two_senders(expect_first=b"A"), deterministic.Config(ordering="fifo"),
                                  max_deviations=1)
    assert found.failure is not None and found.schedule is not None
    # Recorded and replayed: the same arrival order, the same run.
    for seed in range(40):
        recorder = deterministic.Recorder()
        config = deterministic.Config(seed=seed, ordering="fifo", strategy="random")
        try:
            deterministic.Runner(config, recorder=recorder).start(two_senders(expect_first=b"A"))
        except AssertionError:
            break
    else:
        raise AssertionError("no seed delivered B first")
    schedule = recorder.schedule
    assert schedule is not None and 1 in list(schedule.timing)
    with pytest.raises(AssertionError, match="b'BA' arrived"):
        deterministic.Runner(config, replay=schedule).start(two_senders(expect_first=b"A"))
    # Bisected: the decisive choice is that tie.
    trace = trace_from_schedule(schedule, test="t.py::t[seed=0]", seed=seed, config=config.to_dict())
    result = bisect_trace(trace, lambda: two_senders(expect_first=b"A"), tmp_path / "t.min.yaml", where="t.yaml")
    assert isinstance(result.decisive, TimingDecision) and result.decisive.kind == "tie"
    assert "of 2 deliveries due at once, #1 arrived first" in result.report
    assert result.replay_ok


def test_a_connection_stays_fifo_and_its_second_chunk_is_no_extra_choice() -> None:
    async def main(ctx: Any) -> bytes:
        sink_a, sink_b, (stream_a, _) = await two_connections(ctx)
        await sink_a.send(b"1")
        await sink_a.send(b"2")  # due at the same instant as "1", on the same connection
        await sink_b.send(b"x")
        return bytes(await stream_a.recv(2))

    for seed in range(30):
        recorder = deterministic.Recorder()
        config = deterministic.Config(seed=seed, ordering="fifo", strategy="random")
        assert deterministic.Runner(config, recorder=recorder).start(main) == b"12"
        assert recorder.schedule is not None
        # One choice between the two connections' heads: values 0 or 1, never a third option.
        assert all(v in (0, 1) for v in recorder.schedule.timing[1:]), list(recorder.schedule.timing)
