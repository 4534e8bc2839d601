"""--cw-check-determinism: the seed again in this process and in a fresh process with another PYTHONHASHSEED."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# pytest-asyncio (the test extra) stays out of these sessions: test_plugin_workflow.py tests it beside ours.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:asyncio")

SET_ORDER = """
async def test_set_order(deterministic_context):
    async def worker(ctx):
        await ctx.sleep(0.001)
    names = {f"node_{i}" for i in range(24)}
    handles = [deterministic_context.with_label(name).spawn(worker) for name in names]
    for h in handles:
        await h
"""

WALL_CLOCK = """
import time

async def test_wall_clock(deterministic_context):
    async def worker(ctx):
        await ctx.sleep(time.time() % 1)
    handles = [deterministic_context.with_label(f"w{i}").spawn(worker) for i in range(3)]
    for h in handles:
        await h
"""

DETERMINISTIC = """
async def test_sorted_set(deterministic_context):
    async def worker(ctx):
        await ctx.sleep(ctx.rng.random())
    names = {f"node_{i}" for i in range(24)}
    handles = [deterministic_context.with_label(name).spawn(worker) for name in sorted(names)]
    for h in handles:
        await h
"""


def test_set_iteration_fails_across_processes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SET_ORDER)
    result = pytester.runpytest(*QUIET, "--cw-check-determinism")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "differs across processes" in out
    assert "PYTHONHASHSEED" in out and "hash-order" in out
    assert "The rerun in this process agreed" in out
    assert "scheduling decision" in out or "label" in out
    traces = sorted(p.name for p in (pytester.path / "traces").iterdir())
    assert any(name.endswith(".other-process.yaml") for name in traces), traces
    assert len(traces) == 2, traces
    # Without the check, each run passes.
    pytester.runpytest(*QUIET).assert_outcomes(passed=1)


def test_wall_clock_fails_in_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WALL_CLOCK)
    result = pytester.runpytest(*QUIET, "--cw-check-determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*nondeterministic: seed 0 ran twice in this process*first difference is a "
                                 "virtual time*first divergence at step*wall clock*"])
    assert "PYTHONHASHSEED" not in result.stdout.str()
    traces = sorted(p.name for p in (pytester.path / "traces").iterdir())
    assert any(name.endswith(".rerun.yaml") for name in traces), traces


def test_deterministic_test_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(DETERMINISTIC)
    result = pytester.runpytest(*QUIET, "--cw-check-determinism", "--cw-seeds=2")
    result.assert_outcomes(passed=2)
    assert not (pytester.path / "traces").exists() or not list((pytester.path / "traces").iterdir())


def test_one_fresh_process_checks_every_seed_of_a_test(pytester: pytest.Pytester) -> None:
    # An interpreter's start costs more than a seed: the other-process runs are batched per test.
    pytester.makeconftest("""
        import os

        def pytest_sessionstart(session):
            if os.environ.get("PYTEST_COMMONWARE_CHECK_CHILD"):
                with open(os.path.join(str(session.config.rootpath), "children.log"), "a") as log:
                    log.write(f"{os.getpid()}\\n")
        """)
    pytester.makepyfile(test_sorted=DETERMINISTIC, test_set=SET_ORDER)
    result = pytester.runpytest(*QUIET, "--cw-check-determinism", "--cw-seeds=4", "--cw-seed-base=10",
                                "--cw-full-tracebacks")
    result.assert_outcomes(passed=4, failed=4)  # every seed of the set-order test differs across processes
    # Counted in the failure sections: on CI (env CI set) pytest prints summary lines untruncated.
    assert sum(line.startswith("nondeterministic:") and "hash-order" in line for line in result.outlines) == 4
    children = (pytester.path / "children.log").read_text().split()
    assert len(children) == 2  # one per test function, not one per seed
    # The traces of the other process are the session's own business: nothing of them is left but the pairs written.
    left = sorted(p.name for p in (pytester.path / "traces").iterdir())
    assert len(left) == 8 and sum(name.endswith(".other-process.yaml") for name in left) == 4, left


def test_ini_check_is_not_inherited_by_the_child(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncw_check_determinism = true\n")
    pytester.makepyfile(DETERMINISTIC)
    pytester.runpytest(*QUIET).assert_outcomes(passed=1)


STORAGE_HASH_ORDER = """
async def test_write_set(deterministic_context):
    blob, _ = await deterministic_context.open("p", b"names")
    await blob.write_at(",".join({f"node_{i}" for i in range(24)}).encode(), 0)
    await blob.sync()
"""

GLOBAL_STATE = """
RUNS = [0]

async def test_draws(deterministic_context):
    RUNS[0] += 1  # state outside the runtime: the rerun in this process draws once more
    for _ in range(RUNS[0]):
        deterministic_context.rng.random()
    blob, _ = await deterministic_context.open("p", b"x")
    await blob.write_at(b"same", 0)
"""


def test_storage_content_differing_across_processes_is_named(pytester: pytest.Pytester) -> None:
    # One task, so the same schedule: only the bytes written depend on PYTHONHASHSEED.
    pytester.makepyfile(STORAGE_HASH_ORDER)
    result = pytester.runpytest(*QUIET, "--cw-check-determinism")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "differs across processes; the first difference is a storage operation" in out, out
    assert "storage.write" in out and "with one content" in out and "hash-order" in out


def test_random_draws_differing_in_process_are_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(GLOBAL_STATE)
    result = pytester.runpytest(*QUIET, "--cw-check-determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*seed 0 ran twice in this process and the runs differ; the first difference is a "
                                 "random draw (context.rng)*audited event differs*: event *: storage.open vs event *: rng*"])


def test_check_pythons_runs_each_listed_interpreter(pytester: pytest.Pytester) -> None:
    import sys

    pytester.makeini(f"[pytest]\ncw_check_pythons = {sys.executable}\n")
    pytester.makepyfile(DETERMINISTIC)
    result = pytester.runpytest(*QUIET, "--cw-check-determinism", "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*determinism check: seed 0 ran the same under {sys.executable} (Python *)*"])


def test_check_pythons_names_an_interpreter_that_cannot_run(pytester: pytest.Pytester) -> None:
    missing = pytester.path / "no-such-python"
    pytester.makeini(f"[pytest]\ncw_check_pythons = {missing}\n")
    pytester.makepyfile(DETERMINISTIC)
    result = pytester.runpytest(*QUIET, "--cw-check-determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*the run of seed 0 under {missing} (cw_check_pythons) failed to produce a trace*"])
