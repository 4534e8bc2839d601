"""Traces of failing seeds, the reproduce command, and ``--cw-replay``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from commonware_runtime.deterministic.tracefile import load_trace
from race_program import RACE as RACE_MODULE

pytest_plugins = ["pytester"]

# pytest-asyncio (the test extra) stays out of these sessions: test_plugin_workflow.py tests it beside ours.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:asyncio")

# The lost-update race (race_program.py) plus a test the replay must deselect.
RACE = RACE_MODULE + """
async def test_other(deterministic_context):
    await deterministic_context.sleep(1)
"""


def _failing_traces(pytester: pytest.Pytester) -> list[Path]:
    return sorted((pytester.path / "traces").glob("test_race.py__test_race__*.yaml"))


def test_failing_seed_writes_trace_and_reproduce_command(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE)
    result = pytester.runpytest(*QUIET)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1 and outcomes.get("passed", 0) >= 2  # the race depends on the seed
    traces = _failing_traces(pytester)
    assert len(traces) == outcomes["failed"]  # --cw-record=failed: only failing seeds
    trace = load_trace(traces[0])
    assert trace.outcome == "failed" and trace.error is not None and trace.error["type"] == "AssertionError"
    assert trace.test == f"test_race.py::test_race[seed={trace.seed}]"
    assert trace.config["seed"] == trace.seed and trace.steps == len(trace.schedule.ids) > 0
    # The report ends with the command that reproduces the seed (PLUGIN.md section 8), after the one that draws it.
    text = result.stdout.str()
    section = text[text.index(f"test_race[seed={trace.seed}]"):]
    section = re.split(r"\n(?:_{4}|={4})", section, maxsplit=1)[0]
    picture, reproduce = [line for line in section.strip().splitlines() if line.strip() and not line.startswith("=")][-2:]
    assert reproduce == f"reproduce with: pytest --cw-replay=traces/{traces[0].name}"
    assert picture == (f"picture: python -m pytest_commonware trace export traces/{traces[0].name} --format html "
                       f"-o traces/{traces[0].name}.html")
    assert not list((pytester.path / "traces").glob("*.html"))  # printed, not drawn


def test_record_all_and_none(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE)
    pytester.runpytest(*QUIET, "--cw-record=all", "--cw-traces=all-traces")
    assert len(list((pytester.path / "all-traces").glob("*.yaml"))) == 8 + 1
    pytester.runpytest(*QUIET, "--cw-record=none", "--cw-traces=no-traces")
    assert not (pytester.path / "no-traces").exists()


def test_replay_reproduces_the_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE)
    pytester.runpytest(*QUIET)
    trace = _failing_traces(pytester)[0]
    seed = load_trace(trace).seed
    # Recorded among 8 seeds; replayed alone (the other test deselected), with no test path.
    result = pytester.runpytest("-v", *QUIET, "--cw-replay", str(trace.relative_to(pytester.path)))
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines([
        f"*test_race[[]seed={seed}[]] FAILED*",
        "*AssertionError: lost update*",
        "*replayed traces/*: reproduced the recorded failure*",
    ])


@pytest.mark.parametrize(("recorded", "replayed"), [
    (("--cw-runtime=both",), ()),                                       # [deterministic-seed=N] -> [seed=N]
    (("--cw-runtime=deterministic",), ()),                              # [seed=N] -> [deterministic-seed=N]
])
def test_reproduce_command_works_whatever_runtime_option_recorded_it(
    pytester: pytest.Pytester, recorded: tuple[str, ...], replayed: tuple[str, ...]
) -> None:
    # Under runtime "both" a seed's id names the runtime; replaying without the option that
    # shaped it must still find the run (the printed command is used verbatim).
    marker = "" if recorded == ("--cw-runtime=both",) else "import pytest\npytestmark = pytest.mark.commonware(runtime='both')\n"
    pytester.makepyfile(test_race=marker + RACE_MODULE.replace("deterministic_context", "runtime_context"))
    result = pytester.runpytest(*QUIET, *recorded)
    assert result.parseoutcomes().get("failed", 0) >= 1
    command = [line for line in result.stdout.lines if line.startswith("reproduce with: pytest ")][0]
    args = command.removeprefix("reproduce with: pytest ").split()
    replay = pytester.runpytest("-v", *QUIET, *replayed, *args)
    assert replay.parseoutcomes()["failed"] == 1 and "passed" not in replay.parseoutcomes()
    replay.stdout.fnmatch_lines(["*AssertionError: lost update*", "*reproduced the recorded failure*"])


def test_without_a_trace_the_report_still_ends_with_a_command(pytester: pytest.Pytester) -> None:
    # --cw-record=none writes no trace: the seed and the node id reproduce the run instead.
    pytester.makepyfile(test_race=RACE)
    result = pytester.runpytest(*QUIET, "--cw-record=none", "--cw-full-tracebacks")
    commands = [line.removeprefix("reproduce with: ") for line in result.stdout.lines if line.startswith("reproduce with: ")]
    assert len(commands) == result.parseoutcomes()["failed"] >= 1
    assert commands[0].startswith("pytest --cw-seed=") and "test_race.py::test_race[seed=" in commands[0]
    rerun = pytester.runpytest(*QUIET, "--cw-record=none", *shlex.split(commands[0])[1:])
    rerun.assert_outcomes(failed=1)
    rerun.stdout.fnmatch_lines(["*AssertionError: lost update*"])
    assert not (pytester.path / "traces").exists()


def test_replay_of_a_passing_run_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE)
    pytester.runpytest(*QUIET, "--cw-record=all")
    passing = next(t for t in _failing_traces(pytester) if load_trace(t).outcome == "passed")
    pytester.runpytest(*QUIET, "--cw-replay", str(passing)).assert_outcomes(passed=1, deselected=1)


def test_replaying_a_changed_test_diverges_loudly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE)
    pytester.runpytest(*QUIET)
    trace = _failing_traces(pytester)[0]
    # Task b now yields three times before reading: the recorded schedule no longer fits.
    pytester.makepyfile(test_race=RACE.replace("bump(ctx, 1)", "bump(ctx, 3)"))
    result = pytester.runpytest(*QUIET, "--cw-replay", str(trace))
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*ReplayDivergence: replay diverged at step*expected*", "*diverged: the test or the code it runs changed*"])


@pytest.mark.parametrize(
    "content, problem",
    [
        ("format: [unclosed\n", "not valid YAML"),
        ("format: commonware-trace\nversion: 99\n", "version"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "unsupported tag"),
        ("", ""),
    ],
    ids=["broken-yaml", "future-version", "hostile-tag", "empty"],
)
def test_malformed_trace_is_a_usage_error(pytester: pytest.Pytester, content: str, problem: str) -> None:
    pytester.makepyfile(test_race=RACE)
    bad = pytester.path / "bad.yaml"
    bad.write_text(content)
    result = pytester.runpytest(*QUIET, "--cw-replay", "bad.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith("ERROR: --cw-replay: bad.yaml: ") and problem in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_an_early_build_trace_says_to_rerun_its_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE)
    pytester.runpytest(*QUIET)
    trace = _failing_traces(pytester)[0]
    seed = load_trace(trace).seed
    assert "\nversion: 1\n" in trace.read_text()
    doc = yaml.safe_load(trace.read_text())
    del doc["decisions"]["ordering"]  # as the first development builds wrote it
    trace.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = pytester.runpytest(*QUIET, "--cw-replay", str(trace.relative_to(pytester.path)))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert errors == [
        f"ERROR: --cw-replay: traces/{trace.name}: this trace was recorded by an early pytest-commonware whose "
        f"schedules (picks without an ordering) this version cannot replay; rerun the seed with --cw-seed={seed}"
    ]
    # And the seed does reproduce it.
    rerun = pytester.runpytest(*QUIET, f"--cw-seed={seed}", "test_race.py::test_race")
    rerun.assert_outcomes(failed=1)


def test_a_trace_names_its_schedule(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE)
    pytester.runpytest(*QUIET)
    trace = load_trace(_failing_traces(pytester)[0])
    s = trace.schedule
    # The config the run was built with and what its strategy was (and chose).
    assert trace.config["ordering"] == trace.ordering == s.ordering == "any"
    assert trace.config["strategy"] == s.strategy and trace.strategy.startswith(s.strategy)
    # Every decision names the callback that ran by its seq; each ran once.
    assert min(s.picks) >= 1 and len(set(s.picks)) == trace.steps
    if not s.holds_back:  # each round runs exactly what was ready when it began
        assert sorted(s.picks) == list(range(1, trace.steps + 1))


def test_missing_trace_file_and_vanished_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=RACE)
    result = pytester.runpytest(*QUIET, "--cw-replay", "nowhere.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --cw-replay: nowhere.yaml: no such file"])
    pytester.runpytest(*QUIET)
    trace = _failing_traces(pytester)[0]
    pytester.makepyfile(test_race=RACE.replace("def test_race", "def test_renamed"))
    result = pytester.runpytest(*QUIET, "--cw-replay", str(trace))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *the trace names test 'test_race.py::test_race*which this session did not collect*"])


@pytest.mark.parametrize("option", ["--cw-replay", "--cw-bisect"])
@pytest.mark.parametrize("key, value, problem", [
    ("evil", 1, "the trace's config has keys this version does not know: evil"),
    ("cycle", -1, "the trace's config is invalid: cycle must not be negative"),
    ("timeout", "abc", "the trace's config is invalid: "),
])
def test_a_trace_config_the_runner_refuses_is_one_line_before_any_item(pytester: pytest.Pytester, option: str,
                                                                       key: str, value: object, problem: str) -> None:
    pytester.makepyfile(test_race=RACE)
    pytester.runpytest(*QUIET)
    trace = _failing_traces(pytester)[0]
    doc = yaml.safe_load(trace.read_text())
    doc["config"][key] = value
    trace.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = pytester.runpytest(*QUIET, f"{option}={trace.relative_to(pytester.path)}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: {option}: traces/{trace.name}: {problem}"), errors
    assert "collected" not in result.stdout.str()
