"""Trace files: round trip through a real replay, atomic writes, and strict, safe loading."""

from __future__ import annotations

import base64
import gc
import os
import re
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
try:
    import pytest_commonware  # noqa: F401
except ImportError:  # not installed yet: the package sits next to runtime/ in the source tree
    sys.path.insert(0, str(ROOT))

from commonware_runtime import deterministic
from commonware_runtime.deterministic import tracefile
from commonware_runtime.deterministic.tracefile import (
    FORMAT,
    VERSION,
    Trace,
    TraceError,
    first_divergence,
    load_trace,
    trace_from_schedule,
    trace_path,
    write_trace,
)

NODEID = "tests/test_mod.py::test_protocol[seed=3]"


def make_main(workers: int = 300, fail: bool = False) -> Callable[[Any], Any]:
    """Many labelled tasks (ids past 255), seeded sleeps, one long sleep (a 64-bit time delta)."""

    async def main(ctx: Any) -> int:
        async def worker(c: Any, i: int) -> int:
            for _ in range(2):
                await c.sleep(c.rng.random() * 0.003)
            return i

        handles = [ctx.with_label(f"w{i}").spawn(lambda c, i=i: worker(c, i)) for i in range(workers)]
        total = 0
        for h in handles:
            total += await h
        await ctx.sleep(3600.0)
        if fail:
            raise AssertionError(f"boom after {total}")
        return total

    return main


def record(
    seed: int = 3, *, workers: int = 300, fail: bool = False, every: int = 64, ordering: str = "any",
    strategy: str = "random",
) -> tuple[deterministic.Config, Trace]:
    config = deterministic.Config(seed=seed, ordering=ordering, strategy=strategy)
    recorder = deterministic.Recorder(checkpoint_every=every)
    runner = deterministic.Runner(config, recorder=recorder)
    if fail:
        with pytest.raises(AssertionError):
            runner.start(make_main(workers, fail=True))
    else:
        runner.start(make_main(workers))
    assert recorder.schedule is not None
    return config, trace_from_schedule(recorder.schedule, test=NODEID, seed=seed, config=config.to_dict())


@pytest.fixture(scope="module")
def recorded() -> tuple[deterministic.Config, Trace]:
    return record()


@pytest.fixture()
def good(tmp_path: Path, recorded: tuple[deterministic.Config, Trace]) -> Path:
    return write_trace(tmp_path / "good.yaml", recorded[1])


# --------------------------------------------------------------------------------------------
# round trip


def test_round_trip_replays_to_the_same_auditor(tmp_path: Path, recorded: tuple[deterministic.Config, Trace]) -> None:
    config, trace = recorded
    assert trace.steps > 600 and len(trace.tasks) > 256 and len(trace.checkpoints) > 3
    path = write_trace(tmp_path / "sub" / "dir" / "t.yaml", trace)
    assert path == tmp_path / "sub" / "dir" / "t.yaml"
    loaded = load_trace(path)

    for name in ("test", "seed", "runtime", "config", "outcome", "error", "auditor", "steps", "tasks",
                 "checkpoints", "python", "commonware_runtime", "extra"):
        assert getattr(loaded, name) == getattr(trace, name), name
    a, b = trace.schedule, loaded.schedule
    assert (list(b.picks), list(b.ids), list(b.round_steps), list(b.round_times)) == (
        list(a.picks), list(a.ids), list(a.round_steps), list(a.round_times))
    assert b.checkpoints == a.checkpoints and b.labels == a.labels and b.checkpoint_every == 64
    assert max(b.ids) > 255 and max(y - x for x, y in zip(b.round_times, b.round_times[1:], strict=False)) >= 3600 * 10**9

    runner = deterministic.Runner(deterministic.Config(**loaded.config), replay=loaded.schedule)
    assert runner.start(make_main()) == sum(range(300))
    assert runner.auditor_state == trace.auditor == loaded.auditor
    assert runner.config == config


def test_the_file_has_the_documented_keys(good: Path, recorded: tuple[deterministic.Config, Trace]) -> None:
    doc = yaml.safe_load(good.read_text())
    assert list(doc) == ["format", "version", "test", "seed", "runtime", "config", "outcome", "auditor", "steps",
                         "tasks", "checkpoints", "decisions", "python", "commonware_runtime"]
    # PLUGIN.md section 9: `version: 1`, with or without compact blocks.
    assert doc["format"] == FORMAT and doc["version"] == 1 == VERSION and doc["test"] == NODEID
    assert doc["config"]["ordering"] == "any" and doc["config"]["strategy"] == "random"
    assert doc["tasks"][1] == "root" and doc["tasks"][2] == "w0"
    assert doc["checkpoints"][0] == {"step": 0, "time": 0, "auditor": recorded[1].checkpoints[0]["auditor"]}
    decisions = doc["decisions"]
    assert list(decisions) == ["encoding", "checkpoint_every", "ordering", "strategy", "chosen", "holds_back", "rounds",
                               "timing_choices", "picks", "ids", "round_steps", "round_times", "timing"]
    assert decisions["encoding"] == "le-zlib-base64" and decisions["rounds"] == len(recorded[1].schedule.round_steps)
    assert (decisions["ordering"], decisions["strategy"], decisions["chosen"], decisions["holds_back"]) == (
        "any", "random", "", False)
    # every idle wake-up is a timing choice; the random strategy keeps timers on time under "any"
    assert decisions["timing_choices"] == len(recorded[1].schedule.timing) > 0 and not any(recorded[1].schedule.timing)

    def decode(text: str) -> list[int]:
        kind, _, data = text.partition(":")
        width = int(kind[1:]) // 8
        raw = zlib.decompress(base64.b64decode("".join(data.split())))
        return [int.from_bytes(raw[i : i + width], "little", signed=kind[0] == "i") for i in range(0, len(raw), width)]

    # The documented encoding, decoded by hand: ids are u16 little-endian (more than 255 tasks).
    assert decisions["ids"].startswith("u16:")
    assert decode(decisions["ids"]) == list(recorded[1].schedule.ids)
    # Picks are callback seqs, delta-encoded: signed (a pick may be older than the one before).
    picks = recorded[1].schedule.picks
    assert decisions["picks"].partition(":")[0] in ("i8", "i16")
    deltas = decode(decisions["picks"])
    assert [sum(deltas[: i + 1]) for i in range(len(deltas))] == list(picks)
    assert sorted(picks) == list(range(1, len(picks) + 1))  # every callback ran exactly once


def test_failed_run_round_trips_and_replays_the_failure(tmp_path: Path) -> None:
    config, trace = record(5, workers=20, fail=True)
    assert trace.outcome == "failed"
    assert trace.error == {"type": "AssertionError", "message": f"boom after {sum(range(20))}"}
    loaded = load_trace(write_trace(tmp_path / "f.yaml", trace))
    assert loaded.outcome == "failed" and loaded.error == trace.error
    runner = deterministic.Runner(config, replay=loaded.schedule)
    with pytest.raises(AssertionError, match="boom after 190"):
        runner.start(make_main(20, fail=True))
    assert runner.auditor_state == trace.auditor


def test_extra_round_trips_and_writing_is_deterministic(tmp_path: Path, recorded: tuple[deterministic.Config, Trace]) -> None:
    trace = recorded[1]
    extra = {"bisect": {"decisive_step": 12, "deviations": [{"step": 3, "task": 7}], "note": None, "ok": True}}
    with_extra = Trace(**{**trace.__dict__, "extra": extra})
    one = write_trace(tmp_path / "one.yaml", with_extra)
    two = write_trace(tmp_path / "two.yaml", with_extra)
    assert one.read_bytes() == two.read_bytes()
    assert load_trace(one).extra == extra


# A divergence stops the run with spawned tasks that never started; the runtime's
# discard_unstarted closes what they would have awaited but not their `drive` coroutine.
def test_replaying_against_changed_code_diverges(good: Path) -> None:
    loaded = load_trace(good)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "coroutine 'drive' was never awaited", RuntimeWarning)
        with pytest.raises(deterministic.ReplayDivergence) as info:
            deterministic.Runner(deterministic.Config(seed=3), replay=loaded.schedule).start(make_main(299))
        assert info.value.step >= 0
        del info
        gc.collect()


@pytest.mark.parametrize("strategy", ["pct:2", "pos", "swarm", "canonical"])
def test_traces_of_other_strategies_replay(tmp_path: Path, strategy: str) -> None:
    config, trace = record(11, workers=40, strategy=strategy)
    loaded = load_trace(write_trace(tmp_path / "s.yaml", trace))
    s = loaded.schedule
    assert (s.ordering, s.strategy) == ("any", strategy) and loaded.config["strategy"] == strategy
    assert s.holds_back == trace.schedule.holds_back and list(s.picks) == list(trace.schedule.picks)
    if strategy.startswith("pct"):
        assert s.holds_back  # PCT keeps a task pending while newer callbacks run
    if strategy == "swarm":
        assert s.chosen and loaded.strategy == f"swarm (chose {s.chosen})"
    runner = deterministic.Runner(engine_config(loaded), replay=s)
    assert runner.start(make_main(40)) == sum(range(40))
    assert runner.auditor_state == trace.auditor


def engine_config(trace: Trace) -> deterministic.Config:
    from commonware_runtime.deterministic.tracefile import config_from_dict

    return config_from_dict(trace.config, "t.yaml")


def tie_main(fail_on_b_first: bool = False) -> Callable[[Any], Any]:
    """Timers due at the same instants (ties) and idle wake-ups (late ones), as ordering fifo sees them."""

    async def main(ctx: Any) -> list[str]:
        order: list[str] = []

        async def sleeper(c: Any, name: str) -> None:
            for _ in range(3):
                await c.sleep(0.01)
                order.append(name)

        handles = [ctx.with_label(n).spawn(lambda c, n=n: sleeper(c, n)) for n in "abcd"]
        for h in handles:
            await h
        if fail_on_b_first and order.index("b") < order.index("a"):
            raise AssertionError(f"b woke before a: {order}")
        return order

    return main


def test_fifo_trace_with_timing_choices_replays(tmp_path: Path) -> None:
    for seed in range(40):
        config = deterministic.Config(seed=seed, ordering="fifo")
        recorder = deterministic.Recorder(checkpoint_every=4)
        order = deterministic.Runner(config, recorder=recorder).start(tie_main())
        schedule = recorder.schedule
        assert schedule is not None
        if any(schedule.timing):  # a late wake-up
            break
    else:
        raise AssertionError("no seed in 0..39 makes a non-canonical timing choice")
    trace = trace_from_schedule(schedule, test=NODEID, seed=seed, config=config.to_dict())
    path = write_trace(tmp_path / "fifo.yaml", trace)
    doc = yaml.safe_load(path.read_text())
    assert doc["config"]["ordering"] == doc["decisions"]["ordering"] == "fifo"
    assert doc["decisions"]["holds_back"] is False and doc["decisions"]["timing_choices"] == len(schedule.timing) > 0
    loaded = load_trace(path)
    assert list(loaded.schedule.timing) == list(schedule.timing) and loaded.ordering == "fifo"
    assert list(loaded.schedule.picks) == list(range(1, loaded.steps + 1))  # fifo: registration order
    runner = deterministic.Runner(engine_config(loaded), replay=loaded.schedule)
    assert runner.start(tie_main()) == order
    assert runner.auditor_state == trace.auditor

    # A fifo trace whose picks leave registration order, or that claims to hold back, is refused.
    def reordered(doc: dict[str, Any]) -> None:
        doc["decisions"]["picks"] = picks([1, 3, 2] + list(range(4, doc["steps"] + 1)))

    for change, problem in [
        (reordered, "under ordering 'fifo' callbacks run in the order they became ready (#2)"),
        (setter("decisions", "holds_back", value=True), "holds_back is true under ordering 'fifo'"),
        (setter("decisions", "timing_choices", value=len(schedule.timing) + 1), "decisions.timing decodes to"),
        (setter("decisions", "timing", value=tracefile._encode_array([-1] * len(schedule.timing), delta=False)),
         "a timing choice is never negative"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_bytes(path.read_bytes())
        edit(bad, change)
        with pytest.raises(TraceError, match="^" + re.escape(f"{bad}: ") + ".*" + re.escape(problem)):
            load_trace(bad)


def test_a_fifo_timing_difference_is_a_divergence(tmp_path: Path) -> None:
    traces = []
    for seed in range(40):
        config = deterministic.Config(seed=seed, ordering="fifo")
        recorder = deterministic.Recorder()
        deterministic.Runner(config, recorder=recorder).start(tie_main())
        assert recorder.schedule is not None
        traces.append(trace_from_schedule(recorder.schedule, test=NODEID, seed=seed, config=config.to_dict()))
    differing = [(a, b) for a, b in zip(traces, traces[1:], strict=False) if list(a.schedule.timing) != list(b.schedule.timing)]
    assert differing
    d = first_divergence(*differing[0])
    assert d is not None and d.kind == "schedule"


def test_an_early_build_trace_says_to_rerun_the_seed(good: Path) -> None:
    edit(good, deleter("decisions", "ordering"))
    with pytest.raises(TraceError) as info:
        load_trace(good)
    assert str(info.value) == (
        f"{good}: this trace was recorded by an early pytest-commonware whose schedules (picks without an ordering) "
        f"this version cannot replay; rerun the seed with --cw-seed=3"
    )


@pytest.mark.parametrize("version, problem", [
    (0, "unknown trace format version 0"),
    (2, "trace format version 2 was written by a development build of pytest-commonware, before the format was "
        "fixed at version 1; its content is version 1's: set 'version: 1' to read it"),
    (3, "trace format version 3 was written by a development build"),
    (99, "trace format version 99 is newer than this pytest-commonware reads (version 1); upgrade"),
])
def test_only_version_1_is_read(good: Path, version: int, problem: str) -> None:
    edit(good, setter("version", value=version))
    with pytest.raises(TraceError) as info:
        load_trace(good)
    assert problem in str(info.value)


# --------------------------------------------------------------------------------------------
# writing


def test_write_is_atomic_and_replaces(tmp_path: Path, recorded: tuple[deterministic.Config, Trace]) -> None:
    target = tmp_path / "t.yaml"
    target.write_text("old contents\n")
    write_trace(target, recorded[1])
    assert load_trace(target).auditor == recorded[1].auditor
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, recorded: tuple[deterministic.Config, Trace], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "t.yaml"
    target.write_text("old contents\n")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracefile.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        write_trace(target, recorded[1])
    assert target.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_an_invalid_trace_is_not_written(tmp_path: Path, recorded: tuple[deterministic.Config, Trace]) -> None:
    bad = Trace(**{**recorded[1].__dict__, "outcome": "maybe"})
    with pytest.raises(ValueError, match="outcome"):
        write_trace(tmp_path / "bad.yaml", bad)
    assert not (tmp_path / "bad.yaml").exists()
    with pytest.raises(TypeError):
        write_trace(tmp_path / "bad.yaml", "not a trace")  # type: ignore[arg-type]


def test_trace_from_schedule_checks_its_input(recorded: tuple[deterministic.Config, Trace]) -> None:
    schedule = recorded[1].schedule
    with pytest.raises(ValueError, match="seed 4"):
        trace_from_schedule(schedule, test=NODEID, seed=4, config={})
    with pytest.raises(ValueError, match="unfinished"):
        trace_from_schedule(deterministic.Schedule(seed=3), test=NODEID, seed=3, config={})
    with pytest.raises(ValueError, match="runtime"):
        trace_from_schedule(schedule, test=NODEID, seed=3, config={}, runtime="production")
    with pytest.raises(ValueError, match="test"):
        trace_from_schedule(schedule, test="", seed=3, config={})
    with pytest.raises(ValueError, match="config ordering 'fifo' is not the ordering the schedule was recorded with"):
        trace_from_schedule(schedule, test=NODEID, seed=3, config={"ordering": "fifo"})
    with pytest.raises(TypeError):
        trace_from_schedule(object(), test=NODEID, seed=3, config={})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# loading: every problem is one TraceError line naming the file


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def blob(values: bytes) -> str:
    return "u8:" + base64.b64encode(zlib.compress(values)).decode()


def setter(*keys: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def deleter(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


def truncate_picks(doc: dict[str, Any]) -> None:
    doc["decisions"]["picks"] = doc["decisions"]["picks"][:-12]


def shorter_steps(doc: dict[str, Any]) -> None:
    doc["steps"] -= 1


def unknown_task(doc: dict[str, Any]) -> None:
    del doc["tasks"][max(doc["tasks"])]


def shifted_checkpoint(doc: dict[str, Any]) -> None:
    # Onto a step in the middle of a round (after the previous checkpoint).
    rounds = doc["decisions"]["rounds"]
    starts = set(tracefile._decode_array(doc["decisions"]["round_steps"], "", rounds, delta=True, typecode="Q"))
    doc["checkpoints"][1]["step"] = next(s for s in range(doc["checkpoints"][0]["step"] + 1, doc["steps"])
                                         if s not in starts)


def checkpoint_time(doc: dict[str, Any]) -> None:
    doc["checkpoints"][1]["time"] += 1


def picks(values: list[int]) -> str:
    return tracefile._encode_array(values, delta=True)


def pick_zero(doc: dict[str, Any]) -> None:
    doc["decisions"]["picks"] = picks([0] + list(range(2, doc["steps"] + 1)))


def pick_outside_its_round(doc: dict[str, Any]) -> None:
    # Round 0 is the root's first step alone: callback #1. #2 became ready only after it.
    steps = doc["steps"]
    doc["decisions"]["picks"] = picks([2, 1] + list(range(3, steps + 1)))


def pick_twice(doc: dict[str, Any]) -> None:
    steps = doc["steps"]
    doc["decisions"]["picks"] = picks(list(range(1, steps)) + [steps - 1])


def pick_twice_holding_back(doc: dict[str, Any]) -> None:
    pick_twice(doc)
    doc["decisions"]["holds_back"] = True


def negative_pick_delta(doc: dict[str, Any]) -> None:
    doc["decisions"]["picks"] = picks([-5] + list(range(2, doc["steps"] + 1)))


def rounds_not_from_zero(doc: dict[str, Any]) -> None:
    doc["decisions"]["round_steps"] = "u8:" + base64.b64encode(zlib.compress(
        bytes([1] * doc["decisions"]["rounds"]))).decode()


def bomb(doc: dict[str, Any]) -> None:
    doc["decisions"]["picks"] = blob(bytes(doc["steps"] * 1000))


def failed_without_error(doc: dict[str, Any]) -> None:
    doc["outcome"] = "failed"


def passed_with_error(doc: dict[str, Any]) -> None:
    doc["error"] = {"type": "X", "message": "y"}


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("wrong format", setter("format", value="something-else"), "format is 'something-else'"),
    ("no format", deleter("format"), "not a trace"),
    ("future version", setter("version", value=4), "version 4 is newer"),
    ("version zero", setter("version", value=0), "unknown trace format version 0"),
    ("version as text", setter("version", value="2"), "version must be an integer"),
    ("seed text", setter("seed", value="x"), "'seed' must be an integer"),
    ("seed negative", setter("seed", value=-1), "'seed' must be at least 0"),
    ("seed bool", setter("seed", value=True), "'seed' must be an integer"),
    ("seed vs config", setter("config", "seed", value=4), "config.seed is 4"),
    ("config list", setter("config", value=[1]), "'config' must be a mapping"),
    ("runtime", setter("runtime", value="production"), "only 'deterministic'"),
    ("outcome", setter("outcome", value="flaky"), "outcome must be"),
    ("failed without error", failed_without_error, "'error' is missing"),
    ("passed with error", passed_with_error, "outcome is 'passed' but an 'error'"),
    ("auditor", setter("auditor", value="abc"), "auditor must be 64"),
    ("steps text", setter("steps", value="many"), "'steps' must be an integer"),
    ("absurd steps", setter("steps", value=10**12), "'steps' must be between"),
    ("steps vs decisions", shorter_steps, "decodes to"),
    ("tasks list", setter("tasks", value=["root"]), "'tasks' must be a mapping"),
    ("tasks gap", setter("tasks", value={1: "root", 3: "x"}), "2 is missing"),
    ("task label", setter("tasks", 1, value=5), "label of task 1"),
    ("unknown task", unknown_task, "which 'tasks' does not list"),
    ("checkpoints str", setter("checkpoints", value="x"), "'checkpoints' must be a list"),
    ("checkpoint keys", setter("checkpoints", 0, value={"step": 0}), "checkpoints[0] must be a mapping with"),
    ("checkpoint auditor", setter("checkpoints", 0, "auditor", value="zz"), "checkpoints[0].auditor"),
    ("checkpoint off round", shifted_checkpoint, "not the first step of a round"),
    ("checkpoint time", checkpoint_time, "differs from the time of the round"),
    ("unknown key", setter("surprise", value=1), "unknown key 'surprise'"),
    ("missing decisions key", deleter("decisions", "ids"), "decisions: missing key 'ids'"),
    ("encoding", setter("decisions", "encoding", value="json"), "decisions.encoding"),
    ("truncated picks", truncate_picks, "decisions.picks"),
    ("not base64", setter("decisions", "picks", value="u8:@@@@"), "not valid base64"),
    ("not zlib", setter("decisions", "picks", value="u8:" + base64.b64encode(b"hello").decode()), "not valid zlib"),
    ("no width", setter("decisions", "picks", value="eJxjYA"), "must start with a width"),
    ("decompression bomb", bomb, "decodes to more than"),
    ("pick zero", pick_zero, "step 0 runs callback #0: callbacks are numbered from 1"),
    ("negative pick", negative_pick_delta, "decisions.picks holds a value out of range"),
    ("pick outside its round", pick_outside_its_round,
     "step 0 runs callback #2, which is not among the callbacks ready in round 0 (#1..#1)"),
    ("pick twice", pick_twice, "runs callback #"),
    ("pick twice holding back", pick_twice_holding_back, "again (step"),
    ("ordering", setter("decisions", "ordering", value="lifo"), "decisions.ordering must be one of"),
    ("ordering vs config", setter("config", "ordering", value="fifo"), "config.ordering is 'fifo' but decisions"),
    ("strategy type", setter("decisions", "strategy", value=3), "decisions.strategy must be a string"),
    ("strategy empty", setter("decisions", "strategy", value=""), "decisions.strategy must not be empty"),
    ("chosen type", setter("decisions", "chosen", value=None), "decisions.chosen must be a string"),
    ("holds_back type", setter("decisions", "holds_back", value="yes"), "decisions.holds_back must be true or false"),
    ("timing count", setter("decisions", "timing_choices", value=2), "decisions.timing"),
    ("missing timing", deleter("decisions", "timing"), "decisions: missing key 'timing'"),
    ("rounds not from 0", rounds_not_from_zero, "first round starts at step 1"),
    ("rounds vs steps", setter("decisions", "rounds", value=0), "0 rounds for"),
    ("extra type", setter("extra", value=[1]), "'extra' must be a mapping"),
]


@pytest.mark.parametrize("change, problem", [(c, p) for _, c, p in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed_fields(good: Path, change: Callable[[dict[str, Any]], None], problem: str) -> None:
    edit(good, change)
    with pytest.raises(TraceError) as info:
        load_trace(good)
    assert str(info.value).startswith(f"{good}: ")
    assert problem in str(info.value)
    assert "\n" not in str(info.value) and info.value.path == str(good)


@pytest.mark.parametrize("key", ["test", "seed", "runtime", "config", "outcome", "auditor", "steps", "tasks",
                                 "checkpoints", "decisions", "python", "commonware_runtime", "version"])
def test_missing_required_key(good: Path, key: str) -> None:
    edit(good, deleter(key))
    with pytest.raises(TraceError, match=f"^{good}: missing key '{key}'$"):
        load_trace(good)


RAW: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty file"),
    ("not yaml", b"format: [unclosed\n  - : :\n", "not valid YAML"),
    ("a list", b"- 1\n- 2\n", "the top level is a list"),
    ("a scalar", b"hello\n", "the top level is a str"),
    ("binary", b"\xff\xfe\x00garbage", "not UTF-8"),
    ("duplicate key", b"format: commonware-trace\nformat: commonware-trace\n", "duplicate key 'format'"),
    ("python name", b"format: !!python/name:os.system\n", "unsupported tag"),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, "nest"),
]


@pytest.mark.parametrize("content, problem", [(c, p) for _, c, p in RAW], ids=[n for n, _, _ in RAW])
def test_malformed_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_bytes(content)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert str(info.value).startswith(f"{path}: ") and problem in str(info.value)
    assert "\n" not in str(info.value)


def test_python_tags_are_rejected_without_running_anything(tmp_path: Path, good: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        f"!!python/object/apply:os.mkdir [{str(marker)!r}]",
        f"!!python/object/new:pathlib.Path [{str(marker)!r}]",
        "!!python/object:collections.OrderedDict {}",
    ]
    for payload in payloads:
        text = good.read_text().replace("runtime: deterministic", f"runtime: {payload}")
        good.write_text(text)
        with pytest.raises(TraceError, match="unsupported tag"):
            load_trace(good)
        good.write_text(text.replace(f"runtime: {payload}", "runtime: deterministic"))
    assert not marker.exists()
    load_trace(good)  # the file itself was fine all along


def test_recursive_and_exploding_aliases_in_extra(good: Path) -> None:
    text = good.read_text()
    good.write_text(text + "extra:\n  loop: &a [1, *a]\n")
    with pytest.raises(TraceError, match="contains itself"):
        load_trace(good)
    laughs = "extra:\n  l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        laughs += f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n"
    good.write_text(text + laughs)
    with pytest.raises(TraceError, match=f"more than {tracefile.MAX_NODES} values .* aliases repeat"):
        load_trace(good)
    good.write_text(text + "extra:\n  when: 2024-01-01\n")
    with pytest.raises(TraceError, match="only plain YAML data"):
        load_trace(good)


def test_unreadable_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, good: Path) -> None:
    with pytest.raises(TraceError, match=f"^{tmp_path / 'nope.yaml'}: no such file$"):
        load_trace(tmp_path / "nope.yaml")
    with pytest.raises(TraceError, match="is a directory"):
        load_trace(tmp_path)
    monkeypatch.setattr(tracefile, "MAX_FILE_BYTES", 100)
    with pytest.raises(TraceError, match="more than the 100"):
        load_trace(good)


# --------------------------------------------------------------------------------------------
# comparing runs, file names


def test_first_divergence_of_two_seeds() -> None:
    _, a = record(1, workers=30)
    _, a_again = record(1, workers=30)
    _, b = record(2, workers=30)
    assert first_divergence(a, a_again) is None
    d = first_divergence(a, b)
    assert d is not None and d.kind == "schedule"
    sa, sb = a.schedule, b.schedule
    expected_step = next(
        s for s in range(min(sa.steps, sb.steps))
        if (sa.ids[s], sa.picks[s], s in sa.round_steps) != (sb.ids[s], sb.picks[s], s in sb.round_steps)
        or sa.round_of(s) != sb.round_of(s)
        or sa.time_at(s) != sb.time_at(s)
    )
    assert d.step == expected_step
    assert f"#{sa.ids[d.step]} {a.label(sa.ids[d.step])!r}" in d.expected
    assert f"#{sb.ids[d.step]} {b.label(sb.ids[d.step])!r}" in d.actual


def test_first_divergence_beyond_the_schedule() -> None:
    _, a = record(1, workers=30)
    _, failed = record(1, workers=30, fail=True)
    d = first_divergence(a, failed)
    # Same decisions; the failing root raises instead of returning, which the auditor sees.
    assert d is not None and d.kind in ("final-auditor", "outcome", "length")
    if d.kind == "outcome":
        assert "AssertionError" in d.actual


def test_schedule_queries_agree_with_its_rounds() -> None:
    _, trace = record(1, workers=30)
    s = trace.schedule
    steps = list(s.iter_steps())
    assert [d.step for d in steps] == list(range(s.steps))
    for d in steps:
        r = d.round
        assert s.round_steps[r] <= d.step and (r + 1 == len(s.round_steps) or d.step < s.round_steps[r + 1])
        assert d.time_ns == s.round_times[r] == s.time_at(d.step) and r == s.round_of(d.step)
        assert d.new_round == (s.round_steps[r] == d.step)
        assert (d.pick, d.tid) == (s.picks[d.step], s.ids[d.step])
    assert list(s.iter_steps(5, 9)) == steps[5:9]
    assert s.decisions() == [(d.step, d.time_ns, d.tid, s.task_label(d.tid)) for d in steps]
    empty = deterministic.Schedule(seed=0)
    assert empty.round_of(0) == -1 and empty.time_at(0) == 0 and list(empty.iter_steps()) == []


def test_format_seconds_is_exact() -> None:
    from commonware_runtime.deterministic.trace import format_seconds

    assert format_seconds(0) == "0.000000000"
    assert format_seconds(86_839_471) == "0.086839471"
    assert format_seconds(-1) == "-0.000000001"
    assert format_seconds(2**62 + 1) == f"{(2**62 + 1) // 10**9}.{(2**62 + 1) % 10**9:09d}"
    for ns in (1, 999_999_999, 3_600 * 10**9 + 7, 10**15 + 123):  # as a float division printed them
        assert format_seconds(ns) == f"{ns / 1e9:.9f}"


def test_divergence_names_the_event() -> None:
    _, a = record(1, workers=30)
    _, b = record(2, workers=30)
    d = a.schedule.first_divergence(b.schedule)
    assert d is not None and d == first_divergence(a, b)
    assert d.kind == "schedule" and d.event in ("task", "time", "round", "callback")
    _, failed = record(1, workers=30, fail=True)
    d = a.schedule.first_divergence(failed.schedule)
    assert d is not None and d.event == d.kind


def test_trace_path() -> None:
    assert trace_path("traces", "test_mod.py::test_protocol[seed=17]", 17) == Path(
        "traces/test_mod.py__test_protocol__seed-17.yaml")
    assert trace_path("traces", "tests/test_mod.py::TestX::test_p[deterministic-seed=2]", 2) == Path(
        "traces/tests.test_mod.py__TestX__test_p__seed-2.yaml")
    assert trace_path("t", "tests/test_mod.py::test_p[a-seed=2]", 2).name == "tests.test_mod.py__test_p__a__seed-2.yaml"
    lossy = trace_path("t", "tests/x.py::test[a b/c]", 0)
    assert lossy.parent == Path("t") and "/" not in lossy.name and " " not in lossy.name
    assert lossy == trace_path("t", "tests/x.py::test[a b/c]", 0)  # a pure function
    assert lossy != trace_path("t", "tests/x.py::test[a_b_c]", 0)
    long = trace_path("t", "tests/x.py::test[" + "x" * 1000 + "]", 0)
    assert len(long.name) < 200
    assert trace_path("t", "a.py::t", 1) != trace_path("t", "a.py::t", 2)
    for bad in ("", None):
        with pytest.raises(ValueError):
            trace_path("t", bad, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        trace_path("t", "a.py::t", -1)


def test_label_helper(recorded: tuple[deterministic.Config, Trace]) -> None:
    trace = recorded[1]
    assert trace.label(0) == "<callback>" and trace.label(1) == "root" and trace.label(2) == "w0"
    assert os.fspath(trace_path(Path("x"), NODEID, 3)).endswith("__seed-3.yaml")


def test_audited_events_round_trip_and_name_the_first_difference(tmp_path: Path) -> None:
    async def main(ctx: Any) -> None:
        blob, _ = await ctx.open("p", b"b")
        await blob.write_at(bytes([ctx.rng.randrange(256)]), 0)
        await ctx.sleep(0.001)
        ctx.rng.random()

    def record(seed: int) -> deterministic.Schedule:
        recorder = deterministic.Recorder(events=True)
        deterministic.Runner(deterministic.Config(seed=seed), recorder=recorder).start(main)
        assert recorder.schedule is not None and recorder.schedule.events
        return recorder.schedule

    schedule = record(1)
    path = write_trace(tmp_path / "t.yaml", trace_from_schedule(schedule, test="t::x", seed=1, config={"seed": 1}))
    loaded = load_trace(path).schedule
    assert loaded.events == schedule.events and loaded.event_rounds == schedule.event_rounds
    assert "rng" in [tag for tag, _ in loaded.events] and "storage.write" in [tag for tag, _ in loaded.events]
    assert schedule.first_divergence(loaded) is None
    # The same decisions, one write's bytes changed: named as a storage operation.
    changed = load_trace(path).schedule
    assert changed.events is not None
    i = next(i for i, (tag, _) in enumerate(changed.events) if tag == "storage.write")
    changed.events[i] = ("storage.write", "0" * 16)
    where = schedule.first_event_divergence(changed)
    assert where is not None and where.event == "storage" and f"event {i}: storage.write with one content" in where.message
    # Traces recorded without events still compare as before.
    assert record_plain(main).events is None


def record_plain(main: Any) -> deterministic.Schedule:
    recorder = deterministic.Recorder()
    deterministic.Runner(deterministic.Config(seed=1), recorder=recorder).start(main)
    assert recorder.schedule is not None
    return recorder.schedule
