"""From a thousand seeds to one fix (issue 8): the plugin driven as a user drives it.

Stalls and timeouts end cleanly (both runtimes), the sweep summary and the shortened
reports of repeated failures (also under pytest-xdist), traces that stay useful (pruned when
the item passes, a stale replay says how to rerun the seed), bad markers as errors of their
test, the small items (bisect of a passing trace, ``--cw-replay=PATH`` outside the rootdir,
the precedence rule, ``py.typed``), and good neighbours: pytest-asyncio (strict and auto) and
anyio's plugin beside ours.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from commonware_runtime import atomicfile
from commonware_runtime.deterministic import golden, tracefile

from pytest_commonware import summary

pytest_plugins = ["pytester"]

QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")

# Two tasks take two locks in opposite orders: a deadlock (RuntimeStalled) on every seed.
# Then tests failing other ways: an assertion on odd seeds, a virtual-time deadline.
BANK = """
import asyncio
import pytest


async def test_deadlock(deterministic_context):
    a, b = asyncio.Lock(), asyncio.Lock()

    async def one(ctx):
        async with a:
            await ctx.sleep(0.001)
            async with b:
                pass

    async def two(ctx):
        async with b:
            await ctx.sleep(0.001)
            async with a:
                pass

    first = deterministic_context.with_label("one").spawn(one)
    second = deterministic_context.with_label("two").spawn(two)
    await first
    await second


async def test_odd_seeds_fail(deterministic_context, cw_seed):
    await deterministic_context.sleep(1)
    assert cw_seed % 2 == 0, "odd seed"


@pytest.mark.commonware(timeout=5)
async def test_deadline(deterministic_context):
    async def slow(ctx):
        await ctx.sleep(100)

    deterministic_context.spawn(slow)
    await deterministic_context.sleep(10)


async def test_fine(deterministic_context):
    await deterministic_context.sleep(1)


@pytest.mark.commonware(runtime="production", timeout=0.2)
async def test_production_lock_order(production_context):
    # The same lock-order deadlock on the real loop: the test's timeout ends it.
    a, b = asyncio.Lock(), asyncio.Lock()

    async def one(ctx):
        async with a:
            await ctx.sleep(0.001)
            async with b:
                pass

    async def two(ctx):
        async with b:
            await ctx.sleep(0.001)
            async with a:
                pass

    first, second = production_context.spawn(one), production_context.spawn(two)
    await first
    await second
"""

# A test that fails two different ways (seed % 3 == 0: AssertionError, == 1: KeyError).
TWO_WAYS = """
async def test_two_ways(deterministic_context, cw_seed):
    await deterministic_context.sleep(1)
    if cw_seed % 3 == 0:
        assert cw_seed < 0, "multiple of three"
    if cw_seed % 3 == 1:
        {}["missing"]
"""

NOISE = ("Exception ignored", "Unraisable", "INTERNALERROR", "was never awaited", "Task was destroyed",
         "Event loop is closed")


def _clean(result: pytest.RunResult) -> None:
    out = result.stdout.str() + result.stderr.str()
    for word in NOISE:
        assert word not in out, f"{word!r} in the output"


def _failure_headers(result: pytest.RunResult, test: str) -> list[str]:
    """The headers of the full failure reports of ``test``'s items."""
    return [line for line in result.outlines if re.match(rf"_+ {re.escape(test)}\[.*\] _+$", line)]


# ---------------------------------------------------------------------------------------------
# 1. stalls and timeouts end cleanly


def test_a_session_of_deadlocks_timeouts_and_failures_runs_to_the_end(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bank=BANK)
    seeds = 300
    result = pytester.runpytest_subprocess(*QUIET, f"--cw-seeds={seeds}", "--cw-fifo-check=0", "--cw-record=none")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # Every seed ran and every failure is reported: 300 deadlocks, 150 odd seeds, 300 deadlines,
    # and the production deadlock, ended by its test's timeout.
    result.assert_outcomes(failed=seeds + seeds // 2 + seeds + 1, passed=seeds // 2 + seeds)
    _clean(result)
    failed_lines = [line for line in result.outlines if line.startswith("FAILED ")]
    assert len(failed_lines) == seeds + seeds // 2 + seeds + 1
    result.stdout.fnmatch_lines([
        "*_ test_production_lock_order[[]production[]] _*",
        "TimeoutError: the test did not finish within its timeout of 0.2s (real time)",
    ])
    result.stdout.fnmatch_lines([
        "*= commonware sweep =*",
        "test_bank.py::test_deadlock: 300 of 300 seeds failed, 100.0% (95% interval 98.7%-100.0%)",
        "  first failing seeds: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (290 more)",
        "  300 seeds: RuntimeStalled at test_bank.py:*, test_bank.py:*, test_bank.py:*: runtime stalled*",
    ])
    out = result.stdout.str()
    assert "RuntimeTimeout at test_bank.py:" in out and "test_bank.py::test_deadline: 300 of 300 seeds failed" in out


def test_the_deadlock_alone_on_many_seeds_with_traces(pytester: pytest.Pytester) -> None:
    # The original report: a deadlock test, then another failing test; traces written.
    pytester.makepyfile(test_bank=BANK)
    result = pytester.runpytest_subprocess(*QUIET, "--cw-seeds=20", "-k", "deadlock or odd")
    result.assert_outcomes(failed=20 + 10, passed=10)
    _clean(result)
    assert len(list((pytester.path / "traces").glob("*.yaml"))) == 30


def test_a_replayed_deadlock_reports_where_the_tasks_wait_not_the_scheduler(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bank=BANK)
    pytester.runpytest(*QUIET, "--cw-fifo-check=0", "-k", "deadlock").assert_outcomes(failed=1)
    trace = next((pytester.path / "traces").glob("*deadlock*.yaml"))
    result = pytester.runpytest(*QUIET, f"--cw-replay={trace.relative_to(pytester.path)}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*RuntimeStalled: runtime stalled at virtual time*Blocked tasks:",
        "  - 'one' (task id *) awaiting * at test_bank.py:* in one()",
        "*reproduced the recorded failure*",
    ])
    assert "loop.py" not in result.stdout.str() and "runner.py" not in result.stdout.str()


PLAIN_RUNNERS = """
import asyncio, gc, logging, sys
from commonware_runtime import deterministic, production, RuntimeStalled, RuntimeTimeout

logging.basicConfig(level=logging.ERROR)  # warnings about closed tasks are expected, not errors


async def deadlock(ctx):
    a, b = asyncio.Lock(), asyncio.Lock()

    async def one(ctx):
        async with a:
            await ctx.sleep(0.001)
            async with b:
                pass

    async def two(ctx):
        async with b:
            await ctx.sleep(0.001)
            async with a:
                pass

    first, second = ctx.spawn(one), ctx.spawn(two)
    await asyncio.wait_for(asyncio.gather(first, second), 0.05)


async def stubborn(ctx):
    async def swallow(ctx):
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                pass

    ctx.spawn(swallow)
    asyncio.get_running_loop().create_task(asyncio.Event().wait())  # a task of no runtime's
    await ctx.sleep(0.01)
    raise TimeoutError("the root gave up")


async def timeout(ctx):
    async def sleeper(ctx):
        await ctx.sleep(100)

    ctx.spawn(sleeper)
    await ctx.sleep(100)


failures = 0
for seed in range(50):
    for main, config in ((deadlock, deterministic.Config(seed=seed, timeout=1)),
                         (stubborn, deterministic.Config(seed=seed)),
                         (timeout, deterministic.Config(seed=seed, timeout=5))):
        try:
            deterministic.Runner(config).start(main)
        except (RuntimeStalled, RuntimeTimeout, TimeoutError):
            failures += 1
    gc.collect()
production.Runner.CANCEL_GRACE = 0.05
for main in (deadlock, stubborn, deadlock):
    try:
        production.Runner().start(main)
    except TimeoutError:
        failures += 1
    gc.collect()
print("failures", failures)
"""


def test_runners_outside_pytest_close_what_a_failed_run_left(tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_RUNNERS)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-X", "dev", str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"failures {150 + 3}"
    for word in NOISE:
        assert word not in done.stderr, done.stderr
    # The production run's stubborn task costs CANCEL_ATTEMPTS grace periods, not a hang.
    assert time.monotonic() - started < 120


# ---------------------------------------------------------------------------------------------
# 2. the sweep summary


def test_wilson_interval() -> None:
    low, high = summary.wilson(0, 300)
    assert low == 0.0 and 0.0125 < high < 0.0128  # about 3/n: the rule of three
    low, high = summary.wilson(486, 1000)
    assert 0.455 < low < 0.456 and 0.516 < high < 0.518
    assert summary.wilson(10, 10)[1] == 1.0
    low, high = summary.wilson(1, 2)
    assert low < 0.5 < high


def test_summary_counts_distinct_failures_and_shows_each_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two=TWO_WAYS)
    result = pytester.runpytest(*QUIET, "--cw-seeds=30", "--cw-fifo-check=0")
    result.assert_outcomes(failed=20, passed=10)
    low, high = summary.wilson(20, 30)
    result.stdout.fnmatch_lines([
        "*= commonware sweep =*",
        f"test_two.py::test_two_ways: 20 of 30 seeds failed, 66.7% (95% interval {100 * low:.1f}%-{100 * high:.1f}%)",
        "  first failing seeds: 0, 1, 3, 4, 6, 7, 9, 10, 12, 13, ... (10 more)",
        "  10 seeds: AssertionError at test_two.py:4: multiple of three",
        "    seed 0: pytest --cw-replay=traces/test_two.py__test_two_ways__seed-0.yaml",
        "  10 seeds: KeyError at test_two.py:6: 'missing'",
        "    seed 1: pytest --cw-replay=traces/test_two.py__test_two_ways__seed-1.yaml",
        "*= short test summary info =*",
    ])
    # One full report per distinct failure; every other seed is one line of the short summary.
    headers = [line.strip("_ ") for line in _failure_headers(result, "test_two_ways")]
    assert headers == ["test_two_ways[seed=0]", "test_two_ways[seed=1]"]
    out = result.stdout.str()
    assert out.count("test_two.py:4: AssertionError") == 1 and out.count("test_two.py:6: KeyError") == 1
    repeated = [line for line in result.outlines if line.startswith("FAILED test_two.py::test_two_ways[seed=3]")]
    assert repeated and "AssertionError at test_two.py:4" in repeated[0]
    # Every seed's trace is written all the same.
    assert len(list((pytester.path / "traces").glob("*.yaml"))) == 20


def test_a_one_line_report_still_ends_with_its_command(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two=TWO_WAYS)
    recorder = pytester.inline_run(*QUIET, "--cw-seeds=6", "--cw-fifo-check=0")
    calls = {r.nodeid: r for r in recorder.getreports("pytest_runtest_logreport") if r.when == "call"}
    line = str(calls["test_two.py::test_two_ways[seed=3]"].longrepr)
    assert "\n" not in line and "[the same failure as test_two.py::test_two_ways[seed=0], shown in full;" in line
    assert line.endswith("; reproduce with: pytest --cw-replay=traces/test_two.py__test_two_ways__seed-3.yaml"), line


@pytest.mark.parametrize("flag", ["-v", "--cw-full-tracebacks"])
def test_full_tracebacks_on_request(pytester: pytest.Pytester, flag: str) -> None:
    pytester.makepyfile(test_two=TWO_WAYS)
    result = pytester.runpytest(*QUIET, "--cw-seeds=9", "--cw-fifo-check=0", flag)
    result.assert_outcomes(failed=6, passed=3)
    assert len(_failure_headers(result, "test_two_ways")) == 6
    assert result.stdout.str().count("reproduce with: pytest --cw-replay=") == 6
    result.stdout.fnmatch_lines(["*= commonware sweep =*", "  3 seeds: AssertionError at test_two.py:4*"])


def test_maxfail_and_x_keep_working(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two=TWO_WAYS)
    result = pytester.runpytest(*QUIET, "--cw-seeds=30", "--cw-fifo-check=0", "-x")
    result.assert_outcomes(failed=1)
    result = pytester.runpytest(*QUIET, "--cw-seeds=30", "--cw-fifo-check=0", "--maxfail=4")
    result.assert_outcomes(failed=4, passed=1)
    result.stdout.fnmatch_lines(["test_two.py::test_two_ways: 4 of 5 seeds failed*", "*stopping after 4 failures*"])


def test_a_thousand_seeds_do_not_flood(pytester: pytest.Pytester) -> None:
    # About half of 1000 seeds fail alike: a line per failing seed, not a page.
    pytester.makepyfile(test_half="""
        async def test_half(deterministic_context, cw_seed):
            await deterministic_context.sleep(1)
            value = (cw_seed * 7919) % 1000
            assert value < 514, f"value {value}"
        """)
    result = pytester.runpytest(*QUIET, "--cw-seeds=1000", "--cw-fifo-check=0", "--cw-record=none")
    failed = result.parseoutcomes()["failed"]
    assert failed == 486
    assert len(result.outlines) < failed + 80, len(result.outlines)
    assert len(_failure_headers(result, "test_half")) == 1
    result.stdout.fnmatch_lines(["test_half.py::test_half: 486 of 1000 seeds failed, 48.6% (95% interval 45.5%-51.7%)"])


def test_summary_and_shortening_under_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_two=TWO_WAYS)
    result = pytester.runpytest_subprocess(*QUIET, "-n", "2", "--cw-seeds=30", "--cw-fifo-check=0", "--cw-record=none")
    result.assert_outcomes(failed=20, passed=10)
    # One full report per distinct failure for the whole session, whichever worker ran it.
    assert len(_failure_headers(result, "test_two_ways")) == 2
    result.stdout.fnmatch_lines([
        "test_two.py::test_two_ways: 20 of 30 seeds failed, 66.7%*",
        "  first failing seeds: 0, 1, 3, 4, 6, 7, 9, 10, 12, 13, ... (10 more)",
        "  10 seeds: AssertionError at test_two.py:4: multiple of three",
        "    seed 0: pytest --cw-seed=0 'test_two.py::test_two_ways[seed=0]'",
        "  10 seeds: KeyError at test_two.py:6: 'missing'",
    ])
    assert len([line for line in result.outlines if line.startswith("FAILED ")]) == 20


def test_sweep_over_remote_style_workers(pytester: pytest.Pytester) -> None:
    # pytest-xdist's remote workers (--tx ssh=...//python=...//chdir=...) without ssh: two
    # popen gateways naming their interpreter, as docs/plugin.md shows for several machines.
    pytest.importorskip("xdist")
    pytester.makepyfile(test_two=TWO_WAYS)
    tx = f"popen//python={sys.executable}"
    result = pytester.runpytest_subprocess(*QUIET, "-d", "--tx", tx, "--tx", tx, "--cw-seeds=9",
                                           "--cw-fifo-check=0")
    result.assert_outcomes(failed=6, passed=3)
    result.stdout.fnmatch_lines(["*test_two.py::test_two_ways: 6 of 9 seeds failed*"])
    traces = sorted(p.name for p in (pytester.path / "traces").iterdir())
    assert len(traces) == 6, traces  # each worker wrote the traces of the seeds it ran


def test_places_and_types() -> None:
    root = Path(__file__).parent

    def fail() -> None:
        raise ValueError("bad\nsecond line")

    try:
        fail()
    except ValueError as exc:
        found = summary.describe_failure(exc, "elsewhere:1", root)
    line = fail.__code__.co_firstlineno + 1
    assert found == summary.Failure("ValueError", f"{Path(__file__).name}:{line}", "bad")
    group = ExceptionGroup("two", [KeyError("k"), ValueError("v")])
    assert summary.describe_failure(group, "here:3", root).type == "ExceptionGroup(KeyError)"
    assert summary.describe_failure(RuntimeError("no traceback"), "here:3", root).place == "here:3"
    assert summary.group_of("t.py::test_x[seed=3]", 3) == "t.py::test_x"
    assert summary.group_of("t.py::test_x[seed=3-foo]", 3) == "t.py::test_x[foo]"
    assert summary.group_of("t.py::test_x[deterministic-seed=13]", 13) == "t.py::test_x[deterministic]"


# ---------------------------------------------------------------------------------------------
# 3. traces that stay useful

RACE = """
import asyncio


async def test_race(deterministic_context):
    counter = 0

    async def bump(ctx):
        nonlocal counter
        seen = counter
        await asyncio.sleep(0)
        counter = seen + 1

    a = deterministic_context.spawn(bump)
    b = deterministic_context.spawn(bump)
    await a
    await b
    assert counter == 2, "lost update"
"""

FIXED = RACE.replace("        seen = counter\n        await asyncio.sleep(0)\n        counter = seen + 1",
                     "        await asyncio.sleep(0)\n        counter += 1")


def test_a_passing_run_removes_its_old_failure_trace(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE)
    failed = pytester.runpytest(*QUIET, "--cw-seeds=12", "--cw-fifo-check=0").parseoutcomes()["failed"]
    traces = pytester.path / "traces"
    assert len(list(traces.glob("*.yaml"))) == failed >= 1
    # A trace of a passing run (--cw-record=all) and files that are no traces stay.
    pytester.makepyfile(test_other="async def test_other(deterministic_context):\n    pass\n")
    pytester.runpytest(*QUIET, "--cw-record=all", "test_other.py").assert_outcomes(passed=1)
    (traces / "notes.txt").write_text("mine")
    # --cw-keep-traces keeps them although the bug is fixed...
    pytester.makepyfile(test_race=FIXED)
    pytester.runpytest(*QUIET, "--cw-seeds=12", "--cw-keep-traces", "test_race.py").assert_outcomes(passed=12)
    assert len(list(traces.glob("test_race*.yaml"))) == failed
    # ... by default a passing run of an item removes that item's failure trace.
    pytester.runpytest(*QUIET, "--cw-seeds=6", "test_race.py", "test_other.py").assert_outcomes(passed=12)
    left = sorted(p.name for p in traces.iterdir())
    assert left == sorted(["notes.txt", "test_other.py__test_other__seed-0.yaml"]
                          + [p for p in left if p.startswith("test_race") and int(p.split("seed-")[1][:-5]) >= 6])
    pytester.runpytest(*QUIET, "--cw-seeds=12", "test_race.py").assert_outcomes(passed=12)
    assert sorted(p.name for p in traces.iterdir()) == ["notes.txt", "test_other.py__test_other__seed-0.yaml"]


def _a_failing_race_trace(pytester: pytest.Pytester) -> tuple[Path, int]:
    """A sweep of the racy test; its first failing seed's trace and that seed."""
    pytester.makepyfile(test_race=RACE)
    pytester.runpytest(*QUIET, "--cw-seeds=12", "--cw-fifo-check=0")
    trace = sorted((pytester.path / "traces").glob("*.yaml"))[0]
    return trace, tracefile.load_trace(trace).seed


def test_a_stale_replay_says_how_to_rerun_the_seed(pytester: pytest.Pytester) -> None:
    trace, seed = _a_failing_race_trace(pytester)
    # The code changed: the recorded schedule no longer fits.
    pytester.makepyfile(test_race=RACE.replace("await asyncio.sleep(0)", "await asyncio.sleep(0)\n        await asyncio.sleep(0)"))
    result = pytester.runpytest(*QUIET, f"--cw-replay={trace.relative_to(pytester.path)}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*ReplayDivergence*",
        "replaying traces/* diverged: the test or the code it runs changed since the trace was recorded*",
        f"rerun the same seed on today's code: pytest --cw-seed={seed} --cw-strategy=swarm --cw-ordering=any "
        f"'test_race.py::test_race[seed={seed}]'",
    ])
    command = next(line for line in result.outlines if line.startswith("rerun the same seed on today's code: "))
    rerun = pytester.runpytest("-v", *QUIET, *shlex.split(command.split(": ", 1)[1])[1:])
    ran = [line for line in rerun.outlines if line.startswith("test_race.py::test_race[")]
    assert len(ran) == 1 and f"test_race[seed={seed}]" in ran[0]


def test_interrupted_writes_leave_nothing_behind(tmp_path: Path) -> None:
    directory = tmp_path / "traces"
    directory.mkdir()
    host = atomicfile._HOST
    dead = 2**22 + 12345  # no such process (above the usual pid_max)
    old = directory / ".a.yaml.k3j4h5g6.tmp"  # an older writer's name, left long ago
    old.write_text("partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    killed = directory / f".b.yaml.{host}-{dead}.x7y8z9.tmp"  # a writer of this host that is gone
    killed.write_text("partial")
    running = directory / f".c.yaml.{host}-{os.getpid()}.q1w2e3.tmp"  # a write going on now
    running.write_text("partial")
    fresh = directory / ".d.yaml.abcdefgh.tmp"  # an older writer's, just now: may still be at work
    fresh.write_text("partial")
    elsewhere = directory / ".e.yaml.0badc0de-1.r4t5y6.tmp"  # another machine's, just now
    elsewhere.write_text("partial")
    mine = directory / "notes.tmp"
    mine.write_text("not a temp file of ours")
    path = golden.write_golden(directory / "golden.yaml", {"t.py::test_x[seed=0]": "ab" * 32})
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [running.name, fresh.name, elsewhere.name, mine.name, "golden.yaml"])
    assert path.stat().st_mode & 0o777 == 0o644
    assert golden.load_golden(path) == {"t.py::test_x[seed=0]": "ab" * 32}


def test_trace_and_golden_writes_sync_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(atomicfile, "fsync_dir", synced.append)
    golden.write_golden(tmp_path / "g" / "golden.yaml", {})
    tracefile.atomic_write(tmp_path / "t" / "x.yaml", b"x")
    assert synced == [tmp_path / "g", tmp_path / "t"]
    stale = tmp_path / "t" / f".y.yaml.{atomicfile._HOST}-{2**22 + 1}.abc.tmp"
    stale.write_bytes(b"partial")
    tracefile.atomic_write(tmp_path / "t" / "y.yaml", b"y")
    assert not stale.exists() and (tmp_path / "t" / "y.yaml").read_bytes() == b"y"
    assert (tmp_path / "t" / "y.yaml").stat().st_mode & 0o777 == 0o644


def test_remove_failure_trace(tmp_path: Path) -> None:
    failing = tmp_path / "f.yaml"
    failing.write_text("format: commonware-trace\nversion: 2\noutcome: failed\nerror:\n  type: X\n")
    passing = tmp_path / "p.yaml"
    passing.write_text("format: commonware-trace\nversion: 2\noutcome: passed\n")
    assert tracefile.remove_failure_trace(failing) and not failing.exists()
    assert not tracefile.remove_failure_trace(passing) and passing.exists()
    assert not tracefile.remove_failure_trace(tmp_path / "none.yaml")


# ---------------------------------------------------------------------------------------------
# 4. errors per item, all at once

BROKEN = """
import pytest

@pytest.mark.commonware(runtime="sideways")
async def test_bad_runtime(runtime_context):
    pass

@pytest.mark.commonware(seed=3)
async def test_unknown_key(deterministic_context):
    pass

@pytest.mark.commonware(seeds="many")
async def test_bad_seeds(deterministic_context):
    pass

async def test_both_contexts(deterministic_context, production_context):
    pass

async def test_good(deterministic_context):
    await deterministic_context.sleep(1)
"""


def test_every_bad_marker_is_an_error_of_its_test_and_the_rest_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest(*QUIET)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(errors=4, passed=1)
    out = result.stdout.str()
    for name, line, problem in [
        ("test_bad_runtime", 3, "@pytest.mark.commonware(runtime='sideways'): runtime must be one of"),
        ("test_unknown_key", 7, "@pytest.mark.commonware got an unknown argument 'seed'"),
        ("test_bad_seeds", 11, "@pytest.mark.commonware(seeds='many'): seeds must be a count or a list of seeds"),
        ("test_both_contexts", 15, "a test can use deterministic_context or production_context, not both"),
    ]:
        assert f"usage error: test_broken.py::{name} (test_broken.py:{line}): {problem}" in out, name
        assert f"ERROR test_broken.py::{name}[commonware-usage-error]" in out
    assert "Traceback" not in out and "Interrupted" not in out


# ---------------------------------------------------------------------------------------------
# 5. small items


def test_bisect_of_a_passing_trace_is_a_usage_error_said_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=FIXED)
    pytester.runpytest(*QUIET, "--cw-record=all").assert_outcomes(passed=1)
    trace = next((pytester.path / "traces").glob("*.yaml"))
    result = pytester.runpytest(*QUIET, f"--cw-bisect={trace.relative_to(pytester.path)}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert text.count("there is no failure to bisect") == 1
    result.stderr.fnmatch_lines(["ERROR: --cw-bisect: traces/*.yaml: the trace records a passing run*"])


def test_the_reproduce_command_works_with_traces_outside_the_rootdir(pytester: pytest.Pytester,
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "traces"
    project = pytester.mkdir("project")
    (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (project / "test_race.py").write_text(textwrap.dedent(RACE))
    os.chdir(project)
    result = pytester.runpytest(*QUIET, "--cw-seeds=12", "--cw-fifo-check=0", f"--cw-traces={outside}")
    command = next(line.split("reproduce with: ", 1)[1] for line in result.outlines if line.startswith("reproduce with: "))
    assert command.startswith("pytest --cw-replay=") and " " not in command.split("pytest ", 1)[1]
    # The command as printed (a subprocess, as a user runs it from the same directory).
    replay = pytester.runpytest_subprocess(*QUIET, *shlex.split(command)[1:])
    replay.assert_outcomes(failed=1)
    replay.stdout.fnmatch_lines(["*reproduced the recorded failure*"])


def test_a_trace_path_after_a_space_that_moves_the_rootdir_is_named(pytester: pytest.Pytester,
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    # pytest picks the rootdir before plugins add their options, so "--cw-replay PATH" also
    # counts PATH as a test path: a trace outside the project moves the rootdir up.
    outside = tmp_path_factory.mktemp("elsewhere") / "traces"
    project = pytester.mkdir("project")
    (project / "test_race.py").write_text(textwrap.dedent(RACE))
    os.chdir(project)
    pytester.runpytest(*QUIET, "--cw-seeds=12", "--cw-fifo-check=0", f"--cw-traces={outside}")
    trace = sorted(outside.glob("*.yaml"))[0]
    result = pytester.runpytest_subprocess(*QUIET, "--cw-replay", str(trace))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *the trace names test 'test_race.py::*', and there is no test_race.py under the "
                                 f"rootdir *; pytest took {trace}, given after a space, for a test path as well and chose "
                                 f"the rootdir from it: write --cw-replay={trace}"])
    pytester.runpytest_subprocess(*QUIET, f"--cw-replay={trace}").assert_outcomes(failed=1)


def test_a_replay_that_now_passes_says_how_to_rerun_the_seed(pytester: pytest.Pytester) -> None:
    # A fix that keeps every scheduling decision: the trace replays to the end and passes.
    trace, seed = _a_failing_race_trace(pytester)
    pytester.makepyfile(test_race=FIXED)
    result = pytester.runpytest(*QUIET, f"--cw-replay={trace.relative_to(pytester.path)}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "replaying traces/* did not reproduce the recorded failure (AssertionError: lost update*",
        "*the run passed, so the test or the code it runs changed since the trace was recorded*",
        f"rerun the same seed on today's code: pytest --cw-seed={seed} --cw-strategy=swarm --cw-ordering=any "
        f"'test_race.py::test_race[seed={seed}]'",
    ])


def test_one_precedence_rule(pytester: pytest.Pytester) -> None:
    # command line > ini key > marker > default, for seeds, strategy and ordering alike.
    pytester.makepyfile(test_p="""
        import pytest

        @pytest.mark.commonware(seeds=2, strategy="pct", ordering="fifo")
        async def test_marked(deterministic_context):
            pass

        async def test_plain(deterministic_context):
            pass
        """)

    def run(*args: str) -> dict[str, tuple[int, str, str]]:
        for path in (pytester.path / "traces").glob("*.yaml"):
            path.unlink()
        pytester.runpytest(*QUIET, "--cw-record=all", *args)
        found: dict[str, tuple[int, str, str]] = {}
        for path in (pytester.path / "traces").glob("*.yaml"):
            trace = tracefile.load_trace(path)
            name = trace.test.split("::")[1].split("[")[0]
            count = found.get(name, (0, "", ""))[0] + 1
            found[name] = (count, trace.config["strategy"], trace.config["ordering"])
        return found

    # Defaults, and the marker over them.
    assert run() == {"test_marked": (2, "pct", "fifo"), "test_plain": (1, "swarm", "any")}
    # The ini key over the marker.
    pytester.makeini("[pytest]\ncw_seeds = 3\ncw_strategy = random\ncw_ordering = any\n")
    assert run() == {"test_marked": (3, "random", "any"), "test_plain": (3, "random", "any")}
    # The command line over the ini key.
    assert run("--cw-seeds=4", "--cw-strategy=pos", "--cw-ordering=fifo") == {
        "test_marked": (4, "pos", "fifo"), "test_plain": (4, "pos", "fifo")}


def test_the_plugin_ships_py_typed() -> None:
    import pytest_commonware

    assert (Path(pytest_commonware.__file__).parent / "py.typed").is_file()


# ---------------------------------------------------------------------------------------------
# 6. good neighbours: pytest-asyncio and anyio

MIXED = """
import asyncio
import pytest


@pytest.fixture
async def loop_name():
    try:
        return type(asyncio.get_running_loop()).__name__
    except RuntimeError:  # anyio's plugin also runs its tests on trio
        return "trio"


async def test_ours(deterministic_context, loop_name):
    # Our test: on the deterministic loop, its async fixture evaluated inside the run.
    assert loop_name == "EventLoop"
    await deterministic_context.sleep(3600)
    assert deterministic_context.current() == 3600


@pytest.mark.commonware(seeds=3)
async def test_ours_by_marker(cw_seed):
    assert type(asyncio.get_running_loop()).__name__ == "EventLoop"
    await asyncio.sleep(3600)


class TestGroup:
    async def test_ours_in_a_class(self, runtime_context):
        await runtime_context.sleep(1)

    async def test_theirs_in_a_class(self, loop_name):
        assert loop_name != "EventLoop"


async def test_theirs(loop_name):
    assert loop_name != "EventLoop"
"""

THEIRS_MARKED = """

@pytest.mark.asyncio
async def test_theirs_marked(loop_name):
    assert loop_name != "EventLoop"
"""


def _neighbour_run(pytester: pytest.Pytester, ini: str, *args: str) -> pytest.RunResult:
    pytester.makefile(".toml", pyproject=f"[tool.pytest.ini_options]\n{ini}\n")
    result = pytester.runpytest("-v", "-W", "error", *QUIET, *args)
    out = result.stdout.str()
    assert "warnings summary" not in out and "Warning" not in out, out
    return result


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_beside_pytest_asyncio(pytester: pytest.Pytester, mode: str) -> None:
    pytest.importorskip("pytest_asyncio")
    marked = "pytestmark = pytest.mark.asyncio\n" if mode == "strict" else ""
    pytester.makepyfile(test_mixed=MIXED.replace("import pytest\n", "import pytest\n" + marked, 1) + THEIRS_MARKED)
    if mode == "strict":  # strict mode runs only marked fixtures: make the shared one theirs too
        pytester.makepyfile(test_mixed=pytester.path.joinpath("test_mixed.py").read_text()
                            .replace("import pytest\n", "import pytest\nimport pytest_asyncio\n", 1)
                            .replace("@pytest.fixture\nasync def loop_name", "@pytest_asyncio.fixture\nasync def loop_name"))
    result = _neighbour_run(pytester, f'asyncio_mode = "{mode}"\nasyncio_default_fixture_loop_scope = "function"')
    result.stdout.fnmatch_lines([f"asyncio: mode=Mode.{mode.upper()}*"])  # pytest-asyncio is active
    result.assert_outcomes(passed=8)
    out = result.stdout.str()
    for ours in ("test_ours[seed=0]", "test_ours_by_marker[seed=2]", "TestGroup::test_ours_in_a_class[seed=0]"):
        assert f"test_mixed.py::{ours} PASSED" in out
    for theirs in ("test_theirs ", "test_theirs_marked ", "TestGroup::test_theirs_in_a_class "):
        assert f"test_mixed.py::{theirs}PASSED" in out


@pytest.mark.parametrize("how", ["auto", "marker"])
def test_beside_anyio(pytester: pytest.Pytester, how: str) -> None:
    pytest.importorskip("anyio")
    marked = "pytestmark = pytest.mark.anyio\n" if how == "marker" else ""
    pytester.makepyfile(test_mixed=MIXED.replace("import pytest\n", "import pytest\n" + marked, 1))
    ini = 'anyio_mode = "auto"' if how == "auto" else ""
    result = _neighbour_run(pytester, ini, "-p", "no:asyncio")
    out = result.stdout.str()
    # Ours once each (no [asyncio]/[trio] copies); theirs on each of anyio's backends.
    assert "test_mixed.py::test_ours[seed=0] PASSED" in out and "test_ours[seed=0-" not in out
    assert "test_mixed.py::TestGroup::test_ours_in_a_class[seed=0] PASSED" in out
    assert "test_mixed.py::test_ours_by_marker[seed=1] PASSED" in out
    assert "test_mixed.py::test_theirs[asyncio] PASSED" in out
    assert result.parseoutcomes().get("failed", 0) == 0 and result.parseoutcomes().get("errors", 0) == 0
