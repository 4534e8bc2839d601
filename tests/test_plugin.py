"""The pytest plugin (pytest_commonware.plugin): fixtures, markers, seeds, options, golden file, xdist.

Each test writes a small test module into a ``pytester`` directory and runs pytest on it
(inline: the plugin is loaded through its ``pytest11`` entry point, as for users).
"""

from __future__ import annotations

import textwrap

import pytest
import yaml

pytest_plugins = ["pytester"]

# Plugins the inner runs do not need (hypothesis' costs ~0.5 s per run).
# pytest-asyncio (the test extra) stays out of these sessions: test_plugin_workflow.py tests it beside ours.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:asyncio")


def _ids(result: pytest.RunResult) -> list[str]:
    """The node ids pytest reported in ``-v`` output, in order."""
    out = []
    for line in result.outlines:
        for word in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
            if f" {word}" in line and "::" in line:
                out.append(line.split(" ")[0])
                break
    return out


def _ids_run(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest("-v", *QUIET, *args)
    return _ids(result)


def test_contexts_run_inside_runners(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time
        import pytest
        from commonware_runtime import deterministic, production

        @pytest.fixture
        def plain():
            return 41

        async def test_virtual_time(deterministic_context, cw_seed, plain, tmp_path):
            assert isinstance(deterministic_context, deterministic.Context)
            assert cw_seed == 0 and plain == 41 and tmp_path.exists()
            real = time.monotonic()
            await deterministic_context.sleep(3600)
            assert deterministic_context.current() == 3600.0  # virtual: an hour, instantly
            assert time.monotonic() - real < 5

        async def test_production_is_real(production_context, cw_seed):
            assert isinstance(production_context, production.Context)
            assert cw_seed is None
            before = time.time()
            await production_context.sleep(0.02)
            assert time.time() - before >= 0.015

        async def test_spawned_tasks(deterministic_context):
            async def child(ctx):
                start = ctx.current()
                await ctx.sleep(2)
                return start, ctx.current()
            start, end = await deterministic_context.spawn(child)
            assert abs(end - start - 2.0) < 1e-9  # a sleep is exact in virtual time

        def test_sync_untouched():
            assert True

        async def test_async_without_our_fixtures():
            pass
        """
    )
    result = pytester.runpytest("-v", *QUIET)
    result.assert_outcomes(passed=4, failed=1)
    # An async test without our fixtures is not claimed: pytest's own "not supported" failure.
    result.stdout.fnmatch_lines(["*test_async_without_our_fixtures FAILED*"])
    assert "test_virtual_time[seed=0] PASSED" in result.stdout.str()
    assert "test_production_is_real[production] PASSED" in result.stdout.str()


def test_async_fixtures_run_inside_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        events = []

        @pytest.fixture
        async def warm(deterministic_context):
            await deterministic_context.sleep(5)
            return deterministic_context.current()

        @pytest.fixture
        async def resource(deterministic_context, warm):
            events.append(("open", warm))
            yield "res"
            events.append(("close", deterministic_context.current()))

        @pytest.mark.commonware(seeds=2)
        async def test_uses(deterministic_context, resource, warm):
            assert resource == "res" and warm == 5.0
            await deterministic_context.sleep(1)

        def test_teardown_ran():
            assert events == [("open", 5.0), ("close", 6.0)] * 2
        """
    )
    # --cw-horizon=none: no canonical run measures the test first (it would run the fixtures too)
    pytester.runpytest(*QUIET, "--cw-horizon=none").assert_outcomes(passed=3)


def test_the_horizon_is_measured_once_per_test_by_a_canonical_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, pytest
        runs = []

        @pytest.mark.commonware(seeds=3)
        async def test_counted(deterministic_context):
            runs.append("run")
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(3)))

        @pytest.mark.commonware(seeds=3, strategy="random")
        async def test_random_needs_none(deterministic_context):
            runs.append("random")

        def test_count():
            assert runs.count("run") == 3 + 1  # three seeds and the one measuring run
            assert runs.count("random") == 3
        """
    )
    pytester.runpytest(*QUIET, "-p", "no:randomly").assert_outcomes(passed=7)
    result = pytester.runpytest(*QUIET, "--cw-horizon=abc")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_sync_test_asking_for_a_context_fails_clearly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_sync(deterministic_context):
            pass
        """
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*deterministic_context is only available to 'async def' tests*"])


SEEDED = """
import pytest

async def test_default(deterministic_context, cw_seed):
    pass

@pytest.mark.commonware(seeds=3)
async def test_marked(deterministic_context, cw_seed):
    pass

@pytest.mark.commonware(seeds=[7, 9])
async def test_listed(deterministic_context):
    pass
"""


def test_seed_ids_and_counts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SEEDED)
    assert _ids_run(pytester) == [
        "test_seed_ids_and_counts.py::test_default[seed=0]",
        "test_seed_ids_and_counts.py::test_marked[seed=0]",
        "test_seed_ids_and_counts.py::test_marked[seed=1]",
        "test_seed_ids_and_counts.py::test_marked[seed=2]",
        "test_seed_ids_and_counts.py::test_listed[seed=7]",
        "test_seed_ids_and_counts.py::test_listed[seed=9]",
    ]


def test_option_precedence(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SEEDED)
    # --cw-seeds overrides the marker's seeds=, --cw-seed-base shifts every count.
    ids = _ids_run(pytester, "--cw-seeds=2", "--cw-seed-base=10")
    assert [i.split("::")[1] for i in ids] == [
        "test_default[seed=10]", "test_default[seed=11]",
        "test_marked[seed=10]", "test_marked[seed=11]",
        "test_listed[seed=10]", "test_listed[seed=11]",
    ]
    # --cw-seed runs exactly one seed everywhere.
    ids = _ids_run(pytester, "--cw-seed=5")
    assert [i.split("::")[1] for i in ids] == ["test_default[seed=5]", "test_marked[seed=5]", "test_listed[seed=5]"]
    # The ini key is the option given in a file: it overrides markers' counts too; the
    # command line beats the ini key.
    pytester.makeini("[pytest]\ncw_seeds = 4\ncw_seed_base = 100\n")
    ids = _ids_run(pytester)
    assert sum("test_default" in i for i in ids) == 4 and "test_default[seed=100]" in ids[0]
    assert sum("test_marked" in i for i in ids) == 4
    ids = _ids_run(pytester, "--cw-seeds=1")
    assert sum("test_marked" in i for i in ids) == 1


@pytest.mark.skipif(pytest.version_tuple[:2] < (9, 2), reason="pytest's native [tool.pytest] table checks types from 9.2")
def test_numbers_in_pytests_native_toml_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("async def test_a(deterministic_context):\n    pass\n")
    pytester.makepyprojecttoml("[tool.pytest]\ncw_seeds = 3\ncw_seed_base = 10\ncw_horizon = \"none\"\n")
    ids = _ids_run(pytester)
    assert [i.split("::")[1] for i in ids] == ["test_a[seed=10]", "test_a[seed=11]", "test_a[seed=12]"]
    pytester.makepyprojecttoml("[tool.pytest]\ncw_seeds = 0\n")
    result = pytester.runpytest(*QUIET)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini cw_seeds: must be at least 1, got 0"])


def test_marker_on_module_and_class(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        pytestmark = pytest.mark.commonware(seeds=2, timeout=10)

        async def test_module_level(deterministic_context):
            pass

        @pytest.mark.commonware(seeds=3)
        class TestGroup:
            async def test_in_class(self, deterministic_context):
                pass

            @pytest.mark.commonware(seeds=1)
            async def test_closest_wins(self, deterministic_context):
                pass

        async def test_timeout_applies(deterministic_context):
            await deterministic_context.sleep(60)
        """
    )
    result = pytester.runpytest("-v", *QUIET)
    ids = [i.split("::", 1)[1] for i in _ids(result)]
    assert ids == [
        "test_module_level[seed=0]", "test_module_level[seed=1]",
        "TestGroup::test_in_class[seed=0]", "TestGroup::test_in_class[seed=1]", "TestGroup::test_in_class[seed=2]",
        "TestGroup::test_closest_wins[seed=0]",
        "test_timeout_applies[seed=0]", "test_timeout_applies[seed=1]",
    ]
    result.assert_outcomes(passed=6, failed=2)
    result.stdout.fnmatch_lines(["*RuntimeTimeout*"])


def test_runtime_both_and_override(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from commonware_runtime import deterministic, production

        @pytest.mark.commonware(runtime="both", seeds=2)
        async def test_both(runtime_context, cw_seed):
            if cw_seed is None:
                assert isinstance(runtime_context, production.Context)
            else:
                assert isinstance(runtime_context, deterministic.Context)

        @pytest.mark.commonware(runtime="production")
        async def test_prod(runtime_context):
            assert isinstance(runtime_context, production.Context)
        """
    )
    result = pytester.runpytest("-v", *QUIET)
    result.assert_outcomes(passed=4)
    assert [i.split("::")[1] for i in _ids(result)] == [
        "test_both[deterministic-seed=0]", "test_both[deterministic-seed=1]", "test_both[production]",
        "test_prod[production]",
    ]
    # --cw-runtime overrides every marker.
    ids = _ids_run(pytester, "--cw-runtime=deterministic")
    assert [i.split("::")[1] for i in ids] == ["test_both[seed=0]", "test_both[seed=1]", "test_prod[seed=0]"]


def test_bad_marker_and_options_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest
        @pytest.mark.commonware(runtime="sideways")
        async def test_x(runtime_context):
            pass
        """
    )
    result = pytester.runpytest(*QUIET)
    # An error of that test alone (at its setup), naming it, its file and line.
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*usage error: test_bad.py::test_x (test_bad.py:2): "
                                 "@pytest.mark.commonware(runtime='sideways')*one of*"])
    assert "Traceback" not in result.stdout.str()
    result = pytester.runpytest(*QUIET, "--cw-runtime=sideways")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --cw-runtime: must be one of deterministic, production, both*"])
    result = pytester.runpytest(*QUIET, "--cw-seeds=zero")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_both_with_a_fixed_context_is_refused_not_dropped(pytester: pytest.Pytester) -> None:
    # runtime_context would be a production context in the production run, which the
    # deterministic_context beside it rules out: an error, not a silently missing run.
    pytester.makepyfile(
        test_mixed="""
        import pytest

        @pytest.mark.commonware(runtime="both")
        async def test_mixed(runtime_context, deterministic_context):
            pass

        async def test_fixed_only(deterministic_context):
            pass
        """
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines(["*usage error: test_mixed.py::test_mixed (test_mixed.py:*): *runtime='both'*runtime_context alone*"])
    # A blanket --cw-runtime=both leaves tests with a fixed context on their runtime.
    ids = _ids_run(pytester, "--cw-runtime=both")
    assert [i.split("::")[1] for i in ids] == ["test_mixed[seed=0]", "test_fixed_only[seed=0]"]


def test_marker_durations_accept_timedelta(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_td="""
        import datetime, pytest
        from commonware_runtime import RuntimeTimeout

        @pytest.mark.commonware(timeout=datetime.timedelta(seconds=5), cycle=datetime.timedelta(milliseconds=2))
        async def test_deadline(deterministic_context):
            await deterministic_context.sleep(4.5)
            assert deterministic_context.current() == 4.5
            with pytest.raises(RuntimeTimeout):
                await deterministic_context.sleep(1)

        @pytest.mark.commonware(timeout=datetime.timedelta(0))
        async def test_zero(deterministic_context):
            pass
        """
    )
    result = pytester.runpytest(*QUIET, "--cw-record=none")
    result.stdout.fnmatch_lines(["*usage error: test_td.py::test_zero (test_td.py:*): "
                                 "@pytest.mark.commonware(timeout=datetime.timedelta(0))*positive*"])
    pytester.makepyfile(test_td=pytester.path.joinpath("test_td.py").read_text().split("@pytest.mark.commonware(timeout=datetime.timedelta(0))")[0])
    result = pytester.runpytest(*QUIET, "--cw-record=none")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RuntimeTimeout*"])


NONDETERMINISTIC = """
import random

async def test_global_random(deterministic_context):
    async def worker(ctx):
        await ctx.sleep(random.random())   # not the seeded context.rng: differs per run
    handles = [deterministic_context.with_label(f"w{i}").spawn(worker) for i in range(3)]
    for h in handles:
        await h

async def test_seeded_random(deterministic_context):
    async def worker(ctx):
        await ctx.sleep(ctx.rng.random())
    handles = [deterministic_context.with_label(f"w{i}").spawn(worker) for i in range(3)]
    for h in handles:
        await h
"""


def test_check_determinism(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(NONDETERMINISTIC)
    result = pytester.runpytest(*QUIET, "--cw-check-determinism", "--cw-seeds=2")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*test_global_random[[]seed=0[]]*", "nondeterministic: seed 0 ran twice in this process*first divergence at step*"])
    # Without the option each run is judged alone: both pass.
    pytester.runpytest(*QUIET, "--cw-seeds=2").assert_outcomes(passed=4)


GOLDEN = """
import pytest

@pytest.mark.commonware(seeds=3)
async def test_protocol(deterministic_context):
    await deterministic_context.sleep(deterministic_context.rng.random() * STEP)

async def test_other(deterministic_context):
    await deterministic_context.sleep(1)
"""


def test_golden_update_and_compare(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gold=GOLDEN.replace("STEP", "1"))
    result = pytester.runpytest(*QUIET, "--cw-update-golden")
    result.assert_outcomes(passed=4)
    golden = pytester.path / "traces" / "golden.yaml"
    data = yaml.safe_load(golden.read_text())
    assert data["format"] == "commonware-golden" and data["version"] == 1
    assert sorted(data["auditor"]) == list(data["auditor"]) and len(data["auditor"]) == 4
    assert "test_gold.py::test_protocol[seed=2]" in data["auditor"]
    # traces/golden.yaml is the default golden file once it exists: an unchanged test passes ...
    pytester.runpytest(*QUIET).assert_outcomes(passed=4)
    # ... a changed one fails, naming the file.
    pytester.makepyfile(test_gold=GOLDEN.replace("STEP", "2"))
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(["*auditor state changed: traces/golden.yaml has*--cw-update-golden*"])
    # Each report ends with the command that reruns its seed (no trace: the run itself passed),
    # and the summary claims no traces.
    out = result.stdout.str()
    assert "reproduce with: pytest --cw-seed=0 'test_gold.py::test_protocol[seed=0]'" in out
    assert "--cw-replay" not in out and "the trace of" not in out
    # The command carries what shaped the run and what it was compared with, when named.
    result = pytester.runpytest(*QUIET, "--cw-horizon=none", "--cw-golden=traces/golden.yaml")
    assert ("reproduce with: pytest --cw-seed=0 --cw-horizon=none --cw-golden=traces/golden.yaml "
            "'test_gold.py::test_protocol[seed=0]'") in result.stdout.str()
    # Updating only a subset keeps the other entries.
    pytester.runpytest(*QUIET, "--cw-update-golden", "-k", "test_protocol").assert_outcomes(passed=3)
    after = yaml.safe_load(golden.read_text())["auditor"]
    assert after["test_gold.py::test_other[seed=0]"] == data["auditor"]["test_gold.py::test_other[seed=0]"]
    assert after["test_gold.py::test_protocol[seed=0]"] != data["auditor"]["test_gold.py::test_protocol[seed=0]"]
    pytester.runpytest(*QUIET).assert_outcomes(passed=4)
    # An explicit golden file that does not exist is a usage error.
    result = pytester.runpytest(*QUIET, "--cw-golden=missing.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        test_par=textwrap.dedent(
            """
            import pytest

            @pytest.mark.commonware(seeds=6)
            async def test_many(deterministic_context, cw_seed):
                await deterministic_context.sleep(cw_seed)
                assert deterministic_context.current() == cw_seed
                assert cw_seed != 4

            @pytest.mark.commonware(runtime="both")
            async def test_both(runtime_context):
                pass
            """
        )
    )
    result = pytester.runpytest_subprocess(*QUIET, "-n", "2", "--cw-update-golden")
    result.assert_outcomes(passed=7, failed=1)
    result.stdout.fnmatch_lines(["*reproduce with: pytest --cw-replay=traces/test_par.py__test_many__seed-4.yaml*"])
    assert (pytester.path / "traces" / "test_par.py__test_many__seed-4.yaml").exists()
    # The controller merged every worker's results into one file.
    table = yaml.safe_load((pytester.path / "traces" / "golden.yaml").read_text())["auditor"]
    # The 5 passing seeds + the deterministic half of test_both (a failing run is no reference).
    assert len(table) == 6 and "test_par.py::test_many[seed=4]" not in table


def test_production_timeout_and_catch_panics(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from commonware_runtime import Exited

        @pytest.mark.commonware(runtime="production", timeout=0.05)
        async def test_slow(runtime_context):
            await runtime_context.sleep(5)

        @pytest.mark.commonware(catch_panics=True)
        async def test_caught(deterministic_context):
            async def boom(ctx):
                raise ValueError("x")
            with pytest.raises(Exited):
                await deterministic_context.spawn(boom)
        """
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*TimeoutError: the test did not finish within its timeout of 0.05s (real time)*"])


def test_stall_and_timeout_reports_name_the_waiting_code_not_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_hang="""
        import asyncio, pytest

        async def test_stall(deterministic_context):
            await asyncio.Event().wait()

        @pytest.mark.commonware(timeout=5)
        async def test_deadline(deterministic_context):
            async def ticker(ctx):
                while True:
                    await ctx.sleep(1)
            deterministic_context.with_label("ticker").spawn(ticker)
            await deterministic_context.sleep(10)
        """
    )
    result = pytester.runpytest(*QUIET, "--cw-record=none")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*RuntimeStalled: runtime stalled at virtual time 0.0*Blocked tasks:",
        "  - 'root' (task id 1) awaiting * at test_hang.py:4 in test_stall()",
        # The clock jumps to the next timer when the loop is idle: past the deadline at once.
        "*RuntimeTimeout: virtual time reached the deadline of 5.0s*Tasks still waiting:",
        "  - 'root' (task id 1) awaiting * at test_hang.py:12 in test_deadline()",
        "  - 'ticker' (task id 2) awaiting * at test_hang.py:10 in ticker()",
    ])
    assert "plugin.py" not in result.stdout.str() and "def _run_once" not in result.stdout.str()


def test_the_marker_for_short(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        from pytest_commonware import commonware

        @commonware(seeds=3)
        async def test_seeded(deterministic_context):
            await deterministic_context.sleep(0.001)
        """)
    result = pytester.runpytest(*QUIET, "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_seeded?seed=2? PASSED*"])
