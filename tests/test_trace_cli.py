"""``python -m pytest_commonware trace show|diff|export``: output, exit codes, bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
try:
    import pytest_commonware  # noqa: F401
except ImportError:  # not installed yet: the package sits next to runtime/ in the source tree
    sys.path.insert(0, str(ROOT))

from commonware_runtime import deterministic
from commonware_runtime.deterministic.tracefile import (
    Trace,
    trace_from_schedule,
    write_trace,
)

from pytest_commonware.cli import main


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "runtime"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "pytest_commonware", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


async def workload(ctx: Any) -> None:
    async def worker(c: Any, i: int) -> None:
        for _ in range(3):
            await c.sleep(c.rng.random() * 0.004)

    handles = [ctx.with_label(f"worker_{i}").spawn(lambda c, i=i: worker(c, i)) for i in range(6)]
    for h in handles:
        await h


def recorded(seed: int, **options: Any) -> Trace:
    config = deterministic.Config(seed=seed, **options)
    recorder = deterministic.Recorder(checkpoint_every=8)
    deterministic.Runner(config, recorder=recorder).start(workload)
    assert recorder.schedule is not None
    return trace_from_schedule(recorder.schedule, test=f"tests/test_w.py::test_w[seed={seed}]", seed=seed,
                               config=config.to_dict())


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("traces")
    one, two = recorded(1), recorded(2)
    return {"one": one, "two": two, "p1": write_trace(d / "one.yaml", one), "p2": write_trace(d / "two.yaml", two),
            "p1b": write_trace(d / "one-again.yaml", recorded(1)), "dir": d}


def step_times(s: Any) -> list[tuple[int, int, int]]:
    """(step, round, virtual time) of every decision, from the schedule's own query."""
    return [(d.step, d.round, d.time_ns) for d in s.iter_steps()]


def test_show_prints_every_decision_and_round(traces: dict[str, Any]) -> None:
    trace: Trace = traces["one"]
    result = cli("trace", "show", str(traces["p1"]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"test:     {trace.test}"
    assert "schedule: strategy random, ordering any" in lines
    assert any(line.startswith("outcome:  passed") for line in lines)
    s = trace.schedule
    decision_lines = [line for line in lines if line.split() and line.split()[0].isdigit()]
    assert len(decision_lines) == trace.steps
    for line, (step, _, t) in zip(decision_lines, step_times(s), strict=True):
        tid = s.ids[step]
        fields = line.split()
        assert fields[0] == str(step) and fields[1] == f"{t / 1e9:.9f}" and fields[2] == f"#{tid}"
        assert fields[3] == trace.label(tid) and fields[-1] == ("callback" if tid == 0 else "run")
        assert fields[4] == f"#{s.picks[step]}"  # the callback that ran, by its seq
    assert sum("-- round " in line for line in lines) == len(s.round_steps)
    assert sum("-- checkpoint: auditor " in line for line in lines) == len(trace.checkpoints)
    assert "worker_5" in result.stdout
    assert lines[-1].startswith(f"-- end after {trace.steps} steps: passed")


def test_show_window(traces: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "show", str(traces["p1"]), "--start", "3", "--limit", "4"]) == 0
    out = capsys.readouterr().out
    steps = [int(line.split()[0]) for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert steps == [3, 4, 5, 6]
    assert f"{traces['one'].steps - 7} more steps" in out


def test_diff_identical(traces: dict[str, Any]) -> None:
    result = cli("trace", "diff", str(traces["p1"]), str(traces["p1b"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("identical: ")


def test_diff_of_two_seeds_names_the_first_divergent_step(traces: dict[str, Any]) -> None:
    a, b = traces["one"].schedule, traces["two"].schedule
    # Computed independently: the first step whose task, time or round start differs.
    ta, tb = list(step_times(a)), list(step_times(b))
    first = next(
        i for i in range(min(len(ta), len(tb)))
        if (a.ids[i], ta[i][2], a.round_steps[ta[i][1]] == i, a.picks[i])
        != (b.ids[i], tb[i][2], b.round_steps[tb[i][1]] == i, b.picks[i])
    )
    result = cli("trace", "diff", str(traces["p1"]), str(traces["p2"]))
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert f"first divergence at step {first}, t={ta[first][2] / 1e9:.9f}s" in out
    assert f"  A: task #{a.ids[first]} '{traces['one'].label(a.ids[first])}'" in out
    assert f"  B: task #{b.ids[first]} '{traces['two'].label(b.ids[first])}'" in out


def test_export_chrome(traces: dict[str, Any], tmp_path: Path) -> None:
    trace: Trace = traces["one"]
    s = trace.schedule
    result = cli("trace", "export", str(traces["p1"]), "--format", "chrome")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    events = doc["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {tid: f"#{tid} {trace.label(tid)}" for tid in set(s.ids)}
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == trace.steps
    assert [e["args"]["step"] for e in complete] == list(range(trace.steps))
    times = sorted(set(s.round_times))
    for e, (step, _, t) in zip(complete, step_times(s), strict=True):
        assert e["tid"] == s.ids[step] and e["name"] == trace.label(s.ids[step])
        assert e["args"]["virtual_time_ns"] == t and t / 1000 <= e["ts"] and e["dur"] > 0
        assert e["args"]["seq"] == s.picks[step]
        if step == 0 or s.time_at(step - 1) != t:
            assert e["ts"] == t / 1000  # an instant's first decision sits at its virtual time
        later = [u for u in times if u > t]
        if later:
            assert e["ts"] + e["dur"] <= later[0] / 1000  # and the instant's decisions stay in its slot
    assert [e["ts"] for e in complete] == sorted(e["ts"] for e in complete)  # in the order they ran
    # Busy rounds at one instant (the clock stands still while tasks are ready) share its slot.
    assert len(times) < len(s.round_times)
    rounds = [e for e in events if e["ph"] == "i" and e["name"].startswith("round ")]
    assert [e["args"]["virtual_time_ns"] for e in rounds] == list(s.round_times)
    first_of = {e["args"]["step"]: e["ts"] for e in complete}
    assert [e["ts"] for e in rounds] == [first_of[step] for step in s.round_steps]  # at the round's first decision
    assert doc["otherData"]["auditor"] == trace.auditor
    assert (doc["otherData"]["version"], doc["otherData"]["ordering"], doc["otherData"]["strategy"]) == (1, "any", "random")

    out = tmp_path / "sub" / "t.json"
    result = cli("trace", "export", str(traces["p1"]), "--format", "chrome", "-o", str(out))
    assert result.returncode == 0 and result.stdout == ""
    assert json.loads(out.read_text()) == doc


@pytest.mark.parametrize("content", [b"", b"format: commonware-trace\nversion: 99\n", b"!!python/name:os.system\n",
                                     b"\x00\x01binary"])
def test_bad_file_is_one_error_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    for args in (["show", str(path)], ["export", str(path), "--format", "chrome"]):
        result = cli("trace", *args)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.startswith(f"error: {path}: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


def test_bad_files_in_process(traces: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["trace", "diff", str(traces["p1"]), str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {missing}: no such file\n" and captured.out == ""
    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert main(["trace", "export", str(traces["p1"]), "--format", "chrome", "-o", str(blocked / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {blocked / 't.json'}: cannot write") and err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        main(["trace", "export", str(traces["p1"]), "--format", "svg"])
    assert info.value.code == 2


def test_show_names_the_strategy_and_the_timing_choices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    swarm = recorded(4, strategy="swarm")
    assert main(["trace", "show", str(write_trace(tmp_path / "swarm.yaml", swarm))]) == 0
    out = capsys.readouterr().out.splitlines()
    s = swarm.schedule
    held = ", ready callbacks may be held back" if s.holds_back else ""
    assert f"schedule: strategy swarm (chose {s.chosen}), ordering any{held}" in out
    fifo = recorded(4, ordering="fifo", strategy="pct:2")
    timing = list(fifo.schedule.timing)
    assert timing  # the workers' idle wake-ups: a quarter come late
    assert main(["trace", "show", str(write_trace(tmp_path / "fifo.yaml", fifo))]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = " ".join(map(str, timing[:20])) + (" ..." if len(timing) > 20 else "")
    chose = fifo.schedule.chosen
    assert chose.startswith("pct:2:")  # the horizon this run drew
    assert f"schedule: strategy pct:2 (chose {chose}), ordering fifo, {len(timing)} timing choices: {listed}" in out


def test_an_early_build_trace_is_one_error_line(tmp_path: Path) -> None:
    # The first development builds wrote picks without an ordering, a schedule this one cannot follow.
    path = tmp_path / "old.yaml"
    path.write_text("format: commonware-trace\nversion: 1\nseed: 17\ntest: t.py::t[seed=17]\n"
                    "decisions: {encoding: le-zlib-base64, picks: 'u8:'}\n")
    result = cli("trace", "show", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"error: {path}: this trace was recorded by an early pytest-commonware whose schedules (picks without an "
        f"ordering) this version cannot replay; rerun the seed with --cw-seed=17\n"
    )


