"""The plugin and scheduling strategies (SPEC 5a): --cw-strategy, --cw-ordering, marker keys,
the pytest_commonware_strategies hook, --cw-explore, the fifo classification of a failure,
the report header, and traces/replay carrying strategy and ordering.

Each test writes a small test module into a ``pytester`` directory and runs pytest on it, as
a user would (inline: the plugin is loaded through its ``pytest11`` entry point).
"""

from __future__ import annotations

import re
import textwrap

import pytest
import yaml

pytest_plugins = ["pytester"]

# pytest-asyncio (the test extra) stays out of these sessions: test_plugin_workflow.py tests it beside ours.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:asyncio")

# Each test reports the strategy and ordering its run was built with.
SHOW = """
import asyncio, pytest

def _show(tag):
    loop = asyncio.get_running_loop()
    print(f"RAN {tag} strategy={loop.strategy.name} ordering={loop.ordering}")

async def test_plain(deterministic_context):
    _show("plain")

@pytest.mark.commonware(strategy="pct:2", ordering="fifo")
async def test_marked(deterministic_context):
    _show("marked")
"""


def _ran(result: pytest.RunResult) -> dict[str, tuple[str, str]]:
    out = {}
    for line in result.outlines:
        m = re.search(r"RAN (\w+) strategy=(\S+) ordering=(\S+)", line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


def test_strategy_and_ordering_precedence(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_show=SHOW)
    # Defaults of the plugin: swarm, any; the marker beats the defaults.
    result = pytester.runpytest(*QUIET, "-s")
    result.assert_outcomes(passed=2)
    assert _ran(result) == {"plain": ("swarm", "any"), "marked": ("pct:2", "fifo")}
    # An ini key beats the marker ...
    pytester.makeini("[pytest]\ncw_strategy = pos\ncw_ordering = any\n")
    result = pytester.runpytest(*QUIET, "-s")
    assert _ran(result) == {"plain": ("pos", "any"), "marked": ("pos", "any")}
    # ... and the command line beats the ini key: one rule for every setting.
    result = pytester.runpytest(*QUIET, "-s", "--cw-strategy=random", "--cw-ordering=fifo")
    assert _ran(result) == {"plain": ("random", "fifo"), "marked": ("random", "fifo")}
    result = pytester.runpytest(*QUIET, "-s", "--cw-strategy", "canonical")
    assert _ran(result) == {"plain": ("canonical", "any"), "marked": ("canonical", "any")}


def test_module_and_class_markers_set_strategy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_mod="""
        import asyncio, pytest
        pytestmark = pytest.mark.commonware(strategy="pos")

        async def test_module(deterministic_context):
            assert asyncio.get_running_loop().strategy.name == "pos"

        @pytest.mark.commonware(ordering="fifo")
        class TestGroup:
            async def test_class(self, deterministic_context):
                loop = asyncio.get_running_loop()
                assert (loop.strategy.name, loop.ordering) == ("pos", "fifo")

            @pytest.mark.commonware(strategy="random")
            async def test_closest_wins(self, deterministic_context):
                loop = asyncio.get_running_loop()
                assert (loop.strategy.name, loop.ordering) == ("random", "fifo")
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=3)


def test_bad_strategy_and_ordering_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_show=SHOW)
    result = pytester.runpytest(*QUIET, "--cw-strategy=sideways")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    # Names the value and lists the known names.
    result.stderr.fnmatch_lines(["ERROR: --cw-strategy: unknown strategy 'sideways'; known: *canonical*pct*pos*random*swarm*"])
    result = pytester.runpytest(*QUIET, "--cw-strategy=pct:deep")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --cw-strategy: strategy 'pct:deep': parameter 'deep' is not an integer"])
    result = pytester.runpytest(*QUIET, "--cw-ordering=lifo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --cw-ordering: must be one of any, fifo, got 'lifo'"])
    for option in ("--cw-explore=-1", "--cw-explore-limit=0", "--cw-fifo-check=many"):
        assert pytester.runpytest(*QUIET, option).ret == pytest.ExitCode.USAGE_ERROR, option
    pytester.makeini("[pytest]\ncw_strategy = nope\n")
    result = pytester.runpytest(*QUIET)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini cw_strategy: unknown strategy 'nope'*"])


def test_bad_marker_strategy_and_ordering(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.commonware(strategy="sideways")
        async def test_strategy(deterministic_context):
            pass
        """,
        test_bad2="""
        import pytest

        @pytest.mark.commonware(ordering="lifo")
        async def test_ordering(deterministic_context):
            pass
        """,
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(errors=2)  # each an error of its test, both shown in one run
    result.stdout.fnmatch_lines([
        "*usage error: test_bad.py::test_strategy (test_bad.py:3): @pytest.mark.commonware(strategy='sideways'): unknown strategy*known:*swarm*",
        "*usage error: test_bad2.py::test_ordering (test_bad2.py:3): @pytest.mark.commonware(ordering='lifo'): ordering must be one of any, fifo*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_report_header_names_seeds_strategy_and_ordering(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_show=SHOW)
    result = pytester.runpytest(*QUIET, "--co", "--cw-seeds=1000")
    result.stdout.fnmatch_lines(["commonware: seeds 0..999 (--cw-seeds=1000), strategy swarm, ordering any*"])
    result = pytester.runpytest(*QUIET, "--co", "--cw-seed=7", "--cw-strategy=pct:3", "--cw-ordering=fifo")
    result.stdout.fnmatch_lines(["commonware: seed 7 (--cw-seed=7), strategy pct:3 (--cw-strategy=pct:3), "
                                 "ordering fifo (--cw-ordering=fifo)"])
    result = pytester.runpytest(*QUIET, "--co", "--cw-explore=2", "--cw-fifo-check=3")
    result.stdout.fnmatch_lines(["commonware: explore every schedule within 2 deviations (--cw-explore=2), "
                                 "at most 10000 per test, seed 0, strategy swarm, ordering any*fifo check 3*"])
    pytester.makeini("[pytest]\ncw_seeds = 5\ncw_seed_base = 10\n")
    result = pytester.runpytest(*QUIET, "--co")
    result.stdout.fnmatch_lines(["commonware: seeds 10..14 (ini cw_seeds = 5, ini cw_seed_base = 10), strategy swarm*"])


# ---------------------------------------------------------------------------------------------
# the hook


NEWEST = """
from commonware_runtime.deterministic.strategies import RankStrategy

class NewestFirst(RankStrategy):
    name = "NAME"

    def option(self, point, kind, n):
        return n - 1 if kind == "pick" else 0

def pytest_commonware_strategies():
    return {"NAME": NewestFirst}
"""

ORDER_TEST = """
import asyncio, pytest

MARK
async def test_order(deterministic_context):
    order = []
    async def worker(ctx, i):
        order.append(i)
    handles = [deterministic_context.with_label(f"w{i}").spawn(lambda c, i=i: worker(c, i)) for i in range(4)]
    for h in handles:
        await h
    print("ORDER", order, asyncio.get_running_loop().strategy.name)
"""


def test_hook_registers_strategies_from_a_conftest(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(NEWEST.replace("NAME", "newest_first"))
    pytester.makepyfile(test_order=ORDER_TEST.replace("MARK", ""))
    # The command line may name it (registered at configure time) ...
    result = pytester.runpytest(*QUIET, "-s", "--cw-strategy=newest_first")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ORDER [[]3, 2, 1, 0[]] newest_first"])
    # ... the ini key and markers too.
    pytester.makepyfile(test_order=ORDER_TEST.replace("MARK", '@pytest.mark.commonware(strategy="newest_first")'))
    result = pytester.runpytest(*QUIET, "-s")
    result.stdout.fnmatch_lines(["*ORDER [[]3, 2, 1, 0[]] newest_first"])
    # The known names listed by a usage error include it.
    result = pytester.runpytest(*QUIET, "--cw-strategy=oldest_last")
    result.stderr.fnmatch_lines(["ERROR: --cw-strategy: unknown strategy 'oldest_last'; known: *newest_first*"])


def test_hook_in_a_nested_conftest_serves_the_tests_below_it(pytester: pytest.Pytester) -> None:
    sub = pytester.mkpydir("sub")
    (sub / "conftest.py").write_text(textwrap.dedent(NEWEST.replace("NAME", "nested_newest")))
    (sub / "test_order.py").write_text(ORDER_TEST.replace("MARK", '@pytest.mark.commonware(strategy="nested_newest")'))
    result = pytester.runpytest(*QUIET, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ORDER [[]3, 2, 1, 0[]] nested_newest"])


def test_hook_errors_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_show=SHOW)
    pytester.makeconftest(
        """
        from commonware_runtime.deterministic import Random
        def pytest_commonware_strategies():
            return {"swarm": Random}
        """
    )
    result = pytester.runpytest(*QUIET)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest_commonware_strategies: 'swarm' is a built-in strategy name*"])
    pytester.makeconftest(
        """
        def pytest_commonware_strategies():
            return ["not", "a", "dict"]
        """
    )
    result = pytester.runpytest(*QUIET)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest_commonware_strategies must return a dict {name: factory}*"])
    pytester.makeconftest(
        """
        def pytest_commonware_strategies():
            return {"not a name": object}
        """
    )
    result = pytester.runpytest(*QUIET)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest_commonware_strategies: a strategy name must be an identifier*"])


# ---------------------------------------------------------------------------------------------
# --cw-explore


RACES = """
import asyncio, pytest

async def test_lost_update(deterministic_context):
    counter = {"n": 0}
    async def bump(ctx):
        value = counter["n"]
        await asyncio.sleep(0)
        counter["n"] = value + 1
    a = deterministic_context.with_label("a").spawn(bump)
    b = deterministic_context.with_label("b").spawn(bump)
    await a
    await b
    assert counter["n"] == 2, "lost update"

async def test_relies_on_spawn_order(deterministic_context):
    order = []
    async def worker(ctx, i):
        order.append(i)
    handles = [deterministic_context.with_label(f"w{i}").spawn(lambda c, i=i: worker(c, i)) for i in range(3)]
    for h in handles:
        await h
    assert order == [0, 1, 2], f"ran in order {order}"
"""

SAFE = """
import asyncio, pytest

async def test_locked(deterministic_context):
    counter = {"n": 0}
    lock = asyncio.Lock()
    async def bump(ctx):
        async with lock:
            value = counter["n"]
            await asyncio.sleep(0)
            counter["n"] = value + 1
    handles = [deterministic_context.with_label(f"b{i}").spawn(bump) for i in range(3)]
    for h in handles:
        await h
    assert counter["n"] == 3
"""


def test_explore_passes_with_a_guarantee(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_safe=SAFE)
    result = pytester.runpytest("-v", "-rP", *QUIET, "--cw-explore=2")
    result.assert_outcomes(passed=1)
    # One item per test, not one per seed.
    result.stdout.fnmatch_lines(["test_safe.py::test_locked[[]explore=2[]] PASSED*"])
    line = re.search(r"explored all (\d+) schedules within 2 deviations: none fails", result.stdout.str())
    assert line is not None and int(line.group(1)) > 1
    # In the item's report section and in the terminal summary.
    result.stdout.fnmatch_lines([
        "*- commonware -*", "explored all * schedules within 2 deviations: none fails",
        "*= commonware explore =*", "test_safe.py::test_locked[[]explore=2[]]: explored all * schedules within 2 deviations: none fails",
    ])
    # More deviations, more schedules (the count is exact, not a sample).
    more = pytester.runpytest(*QUIET, "--cw-explore=3")
    count = re.search(r"explored all (\d+) schedules within 3 deviations", more.stdout.str())
    assert count is not None and int(count.group(1)) > int(line.group(1))
    # --cw-seeds does not multiply the items; --cw-seed picks the seed the exploration uses.
    result = pytester.runpytest("-v", *QUIET, "--cw-explore=0", "--cw-seeds=5")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*explored all 1 schedule within 0 deviations: none fails"])


def test_explore_limit_is_said_clearly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_safe=SAFE)
    result = pytester.runpytest(*QUIET, "--cw-explore=3", "--cw-explore-limit=2")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines([
        "*= commonware explore =*",
        "test_safe.py::test_locked[[]explore=3[]]: stopped after 2 schedules (--cw-explore-limit=2) before exhausting "
        "those within 3 deviations: none failed so far, but this is no guarantee*",
    ])
    result.stdout.fnmatch_lines(["*ExploreLimitWarning*"])


def test_explore_failure_writes_a_trace_that_replays(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_races=RACES)
    result = pytester.runpytest("-v", *QUIET, "--cw-explore=2", "-k", "spawn_order")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*test_relies_on_spawn_order[[]explore=2[]] FAILED*",
        "*AssertionError: ran in order*",
        "*- commonware -*",
        "explored * within 2 deviations (seed 0, ordering any): schedule * fails (choice point *)",
        "trace written to traces/*explore*.yaml",
        "reproduce with: pytest --cw-replay=traces/*explore*.yaml",
    ])
    traces = list((pytester.path / "traces").glob("*spawn_order*explore*.yaml"))
    assert len(traces) == 1
    doc = yaml.safe_load(traces[0].read_text())
    assert doc["test"] == "test_races.py::test_relies_on_spawn_order[explore=2]" and doc["outcome"] == "failed"
    assert doc["config"]["ordering"] == "any"
    # The printed command replays the failing schedule.
    command = next(line for line in result.outlines if line.startswith("reproduce with: "))
    replay = pytester.runpytest("-v", *QUIET, *command.split("pytest ", 1)[1].split())
    replay.assert_outcomes(failed=1)
    replay.stdout.fnmatch_lines(["*reproduced the recorded failure*"])


def test_explore_under_runtime_both(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_both="""
        import pytest

        @pytest.mark.commonware(runtime="both")
        async def test_both(runtime_context, cw_seed):
            await runtime_context.sleep(0)
        """
    )
    result = pytester.runpytest("-v", *QUIET, "--cw-explore=1")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_both[[]deterministic-explore=1[]] PASSED*", "*test_both[[]production[]] PASSED*"])


def test_explore_and_check_determinism_do_not_combine(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_safe=SAFE)
    result = pytester.runpytest(*QUIET, "--cw-explore=1", "--cw-check-determinism")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --cw-explore and --cw-check-determinism cannot be combined*"])


def test_explore_summary_under_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_safe=SAFE, test_races=RACES)
    result = pytester.runpytest_subprocess(*QUIET, "-n", "2", "--cw-explore=1", "--cw-fifo-check=0")
    result.assert_outcomes(passed=1, failed=2)
    # The controller's terminal summary gathers every worker's explorations.
    result.stdout.fnmatch_lines(["*= commonware explore =*"])
    out = result.stdout.str()
    assert "test_safe.py::test_locked[explore=1]: explored all" in out
    assert "test_races.py::test_lost_update[explore=1]: explored 1 schedule within 1 deviation" in out


# ---------------------------------------------------------------------------------------------
# which kind of failure


def _section(result: pytest.RunResult, test: str) -> list[str]:
    """The lines of the commonware section of ``test``'s failure report."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if re.match(rf"_+ {re.escape(test)} _+$", line))
    head = next(i for i in range(start, len(lines)) if re.match(r"-+ commonware -+$", lines[i]))
    end = next((i for i in range(head + 1, len(lines)) if re.match(r"(_{3,} |={3,} )", lines[i])), len(lines))
    return lines[head + 1 : end]


def test_failure_says_whether_asyncio_can_fail_the_same_way(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_races=RACES)
    result = pytester.runpytest(*QUIET, "--cw-seed=0")
    result.assert_outcomes(failed=2)
    # A lost update: two tasks read, yield, write, in registration order too: real on asyncio.
    section = _section(result, "test_lost_update[seed=0]")
    assert section[0] == "also fails under ordering='fifo' (seed 0): this failure can happen on stock asyncio"
    assert section[1].startswith("  rerun it under fifo: pytest --cw-seed=0 --cw-strategy=swarm --cw-ordering=fifo ")
    assert any(line.startswith("reproduce with: ") for line in section[-2:])  # then the picture: line
    # Relying on spawn order: asyncio runs tasks in registration order, the contract does not.
    section = _section(result, "test_relies_on_spawn_order[seed=0]")
    assert section[0] == (
        "does not fail under ordering='fifo' in 20 schedules: it needs an order asyncio never produces — the code "
        "relies on an ordering the Context contract does not promise (tasks may run in any order)"
    )
    # The number of fifo schedules is an option; 0 turns the check off.
    result = pytester.runpytest(*QUIET, "--cw-seed=0", "--cw-fifo-check=3", "-k", "spawn_order")
    assert _section(result, "test_relies_on_spawn_order[seed=0]")[0].startswith(
        "does not fail under ordering='fifo' in 3 schedules")
    result = pytester.runpytest(*QUIET, "--cw-seed=0", "--cw-fifo-check=0")
    assert "ordering='fifo'" not in result.stdout.str()


TIE = """
import pytest

async def test_tie(deterministic_context):
    import asyncio
    state = {"token": "stale"}
    async def refresher(ctx):
        await ctx.sleep(0.010)
        await asyncio.sleep(0)  # one more step to store the new token
        state["token"] = "fresh"
    async def request(ctx):
        await ctx.sleep(0.0105)  # a late wake-up makes both timers due together
        assert state["token"] == "fresh", "request sent with the stale token"
    a = deterministic_context.with_label("a").spawn(refresher)
    b = deterministic_context.with_label("b").spawn(request)
    await a
    await b
"""


def test_the_fifo_rerun_command_reproduces(pytester: pytest.Pytester) -> None:
    # A late wake-up fires close timers together on asyncio too: some fifo schedules fail.
    pytester.makepyfile(test_tie=TIE)
    result = pytester.runpytest(*QUIET, "--cw-seeds=10", "--cw-record=none", "--cw-full-tracebacks")
    failed = [line.split("::")[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED ")]
    assert failed, "no seed fails"
    rerun = None
    for test in failed:
        section = _section(result, test)
        assert section[0].startswith("also fails under ordering='fifo' (seed "), section
        seed = int(section[0].split("(seed ")[1].split(")")[0])
        assert section[1].startswith(f"  rerun it under fifo: pytest --cw-seed={seed} --cw-strategy=")
        # The command names the item of that seed.
        assert section[1].endswith(f"'test_tie.py::test_tie[seed={seed}]'")
        rerun = section[1].split("rerun it under fifo: pytest ", 1)[1]
    assert rerun is not None
    again = pytester.runpytest("-v", *QUIET, *[a.strip("'") for a in rerun.split()])
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*request sent with the stale token*"])
    # Already under fifo: nothing to classify.
    assert "under ordering='fifo'" not in again.stdout.str()


def test_a_fifo_run_is_not_classified(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_races=RACES)
    result = pytester.runpytest(*QUIET, "--cw-seed=0", "--cw-ordering=fifo")
    result.assert_outcomes(failed=1, passed=1)  # spawn order holds in fifo
    assert "under ordering='fifo'" not in result.stdout.str()


# ---------------------------------------------------------------------------------------------
# traces carry strategy and ordering; replay uses the trace's


FAILS_SHOWING = """
import asyncio, pytest

@pytest.mark.commonware(seeds=2)
async def test_shows(deterministic_context):
    loop = asyncio.get_running_loop()
    await deterministic_context.sleep(1)
    assert False, f"ran with {loop.strategy.name} {loop.ordering}"
"""


def test_traces_record_strategy_and_ordering_and_replay_uses_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shows=FAILS_SHOWING)
    result = pytester.runpytest(*QUIET, "--cw-strategy=pct:2", "--cw-ordering=fifo", "--cw-seed=1")
    result.assert_outcomes(failed=1)
    path = pytester.path / "traces" / "test_shows.py__test_shows__seed-1.yaml"
    doc = yaml.safe_load(path.read_text())
    assert doc["config"]["strategy"] == "pct:2" and doc["config"]["ordering"] == "fifo" and doc["config"]["seed"] == 1
    # Default strategy and ordering are recorded too.
    pytester.runpytest(*QUIET, "--cw-seed=0")
    doc = yaml.safe_load((pytester.path / "traces" / "test_shows.py__test_shows__seed-0.yaml").read_text())
    assert (doc["config"]["strategy"], doc["config"]["ordering"]) == ("swarm", "any")
    # Replay builds the run from the trace's config, whatever the options say now.
    replay = pytester.runpytest(*QUIET, f"--cw-replay={path}", "--cw-strategy=random", "--cw-ordering=any")
    replay.assert_outcomes(failed=1)
    replay.stdout.fnmatch_lines(["*AssertionError: ran with pct:2 fifo*", "*reproduced the recorded failure*"])


# n racing bumpers: the run's shape, and so its canonical run (the horizon), depends on n.
SHAPED_BODY = """
    state = {"b": 0}

    async def bump(c):
        for _ in range(3):
            b = state["b"]
            await asyncio.sleep(0)
            state["b"] = b + 1

    for h in [deterministic_context.spawn(bump) for _ in range(n)]:
        await h
"""

RNG_SHAPED = """
import asyncio

async def test_shaped(deterministic_context):
    n = deterministic_context.rng.randint(2, 12)  # n depends on the seed
""" + SHAPED_BODY


@pytest.mark.parametrize("strategy", ["pct", "swarm"])
def test_the_seed_alone_reproduces_a_sweeps_run(pytester: pytest.Pytester, strategy: str) -> None:
    # The horizon pct and swarm measure must not depend on which seeds the session runs.
    pytester.makepyfile(test_shaped=RNG_SHAPED)
    pytester.runpytest(*QUIET, "--cw-seeds=6", "--cw-seed-base=3", f"--cw-strategy={strategy}", "--cw-record=all")
    for seed in (3, 5, 8):
        pytester.runpytest(*QUIET, f"--cw-seed={seed}", f"--cw-strategy={strategy}", "--cw-record=all",
                           "--cw-traces=alone")
        name = f"test_shaped.py__test_shaped__seed-{seed}.yaml"
        swept = yaml.safe_load((pytester.path / "traces" / name).read_text())
        alone = yaml.safe_load((pytester.path / "alone" / name).read_text())
        assert swept["config"] == alone["config"]
        assert swept["auditor"] == alone["auditor"], seed


PARAM_SHAPED = """
import asyncio
import pytest

@pytest.mark.parametrize("n", [2, 6])
async def test_shaped(deterministic_context, n):
""" + SHAPED_BODY


def test_the_seed_alone_reproduces_a_sweeps_run_of_each_parameter_set(pytester: pytest.Pytester) -> None:
    # Other parameters may shape the run: each set of them has its own measured horizon.
    pytester.makepyfile(test_shaped=PARAM_SHAPED)
    pytester.runpytest(*QUIET, "--cw-seeds=3", "--cw-strategy=pct", "--cw-record=all")
    pytester.runpytest(*QUIET, "--cw-strategy=pct", "--cw-record=all", "--cw-traces=alone", "--cw-seed=1",
                       "test_shaped.py::test_shaped[seed=1-6]")
    (name,) = [p.name for p in (pytester.path / "alone").iterdir()]
    swept = yaml.safe_load((pytester.path / "traces" / name).read_text())
    alone = yaml.safe_load((pytester.path / "alone" / name).read_text())
    assert swept["config"]["horizon"] == alone["config"]["horizon"], name
    assert swept["auditor"] == alone["auditor"]
