"""Trace files are read in bounded memory and time: hostile files of any size or shape are
refused with one line within a second or so and a few tens of MB, and long runs still load.

The hostile files are measured in a child process (its own peak resident memory, reset
before each file where Linux allows it); the long run is recorded, written, loaded and
replayed here (about a million decisions; the 5-million-decision numbers are in
docs/trace-format.md, "Limits").
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
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
from commonware_runtime.deterministic.tracefile import TraceError, load_trace, trace_from_schedule, write_trace

pytest_plugins = ["pytester"]

MB = 1 << 20
BIG = 200 * MB  # the size of the reproduction
UNDER = tracefile.MAX_FILE_BYTES - MB  # as large as the size check lets through: the other limits must hold
MAX_CPU_SECONDS = 1.0  # the bound: "within a second"
MAX_SECONDS = 10.0  # wall clock, generous: a loaded machine shares its CPUs (the CPU time is the measure)
MAX_RSS_MB = 100

HEADER = b"format: commonware-trace\nversion: 1\n"


def _fill(path: Path, head: bytes, unit: bytes, size: int, tail: bytes = b"") -> Path:
    """``head``, then ``unit`` repeated, then ``tail``: ``size`` bytes written in large chunks (never held whole)."""
    chunk = unit * max(1, (4 * MB) // len(unit))
    body = size - len(head) - len(tail)
    with open(path, "wb") as f:
        f.write(head)
        while body >= len(chunk):
            f.write(chunk)
            body -= len(chunk)
        f.write(unit * (body // len(unit)))
        f.write(b" " * (body % len(unit)))
        f.write(tail)
    assert path.stat().st_size == size
    return path


def _laughs(levels: int = 9) -> bytes:
    """The billion laughs: each level an anchored list of ten aliases of the one before."""
    text = "extra:\n  l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, levels):
        text += f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n"
    return text.encode()


# name -> how to write a hostile file of `size` bytes, and a word its error must contain
SHAPES: dict[str, tuple[Callable[[Path, int], Path], str]] = {
    "one huge string": (lambda p, n: _fill(p, HEADER + b'test: "', b"x" * 64, n, b'"\n'), "more than"),
    "one huge plain scalar": (lambda p, n: _fill(p, HEADER + b"test: ", b"y" * 64, n, b"\n"), "more than"),
    "one huge block": (lambda p, n: _fill(p, HEADER + b"decisions:\n  picks: |\n    u8:", b"A" * 76 + b"\n    ", n),
                       "decisions.picks is more than"),
    "one huge comment": (lambda p, n: _fill(p, HEADER + b"# ", b"z" * 64, n, b"\n"), "more than"),
    "many small values": (lambda p, n: _fill(p, HEADER + b"extra: [", b"1, " * 21, n, b"1]\n"), "values"),
    "many small values in blocks": (lambda p, n: _fill(p, HEADER + b"extra:\n", b"- 1\n", n), "values"),
    "many keys": (lambda p, n: _fill(p, HEADER + b"extra:\n" + b"".join(b"  k%d: 1\n" % i for i in range(250_000)),
                                     b"  k: 1\n", n), "values"),
    "deep nesting": (lambda p, n: _fill(p, HEADER + b"extra: ", b"[" * 64, n), "nest"),
    "deep block nesting": (lambda p, n: _fill(p, HEADER + b"extra:\n", b"- ", n), "nested more than"),
    "alias bomb": (lambda p, n: _fill(p, HEADER + _laughs() + b"  bomb: [", b"*l8, " * 16, n, b"*l8]\n"), "values"),
    "many aliases": (lambda p, n: _fill(p, HEADER + b"extra:\n  a: &a x\n  b: [", b"*a, " * 16, n, b"*a]\n"),
                     "aliases"),
    "many documents": (lambda p, n: _fill(p, HEADER, b"---\na: 1\n", n), "document"),
}


CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time
    sys.path[:0] = {paths!r}
    from commonware_runtime.deterministic.tracefile import TraceError, load_trace

    def peak_mb():
        try:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 if sys.platform == "darwin" else 1024) / (1024 if sys.platform == "darwin" else 1)

    def reset_peak():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # not Linux: the peak is the highest so far, an upper bound

    out = []
    for path in sys.argv[1:]:
        reset_peak()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            load_trace(path)
            error = None
        except TraceError as exc:
            error = str(exc)
        out.append({{"path": path, "error": error, "wall": time.perf_counter() - wall,
                     "cpu": time.process_time() - cpu, "peak_mb": peak_mb()}})
    print(json.dumps(out))
    """
)


def _measure(paths: list[Path]) -> list[dict[str, Any]]:
    """Load each file in a fresh child process: its error, wall and CPU seconds, peak RSS in MB."""
    code = CHILD.format(paths=[str(ROOT), str(ROOT / "runtime")])
    result = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


@pytest.fixture()
def files(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    made: list[Path] = []

    def make(shape: str, size: int) -> Path:
        path = tmp_path / f"{shape.replace(' ', '-')}-{size // MB}MB.yaml"
        made.append(SHAPES[shape][0](path, size))
        return path

    yield make
    for path in made:  # hundreds of MB: not left for pytest's tmp_path rotation
        path.unlink(missing_ok=True)


def _check(results: list[dict[str, Any]], shapes: list[str]) -> None:
    for shape, r in zip(shapes, results, strict=True):
        error = r["error"]
        assert error is not None, f"{shape}: loaded"
        assert error.startswith(f"{r['path']}: ") and "\n" not in error, error
        assert SHAPES[shape][1] in error, f"{shape}: {error}"
        print(f"{shape:30} {r['cpu']:5.2f} s CPU {r['wall']:5.2f} s wall {r['peak_mb']:4.0f} MB  {error.split(': ', 1)[1]}")
        assert r["cpu"] < MAX_CPU_SECONDS, f"{shape}: {r['cpu']:.2f} s CPU ({r['wall']:.2f} s): {error}"
        assert r["wall"] < MAX_SECONDS, f"{shape}: {r['wall']:.2f} s ({r['cpu']:.2f} s CPU): {error}"
        assert r["peak_mb"] < MAX_RSS_MB, f"{shape}: peak {r['peak_mb']:.0f} MB: {error}"


def test_a_200_mb_trace_of_any_shape_is_refused_in_bounded_time_and_memory(
    files: Callable[[str, int], Path],
) -> None:
    shapes = ["one huge string", "many small values", "deep nesting", "alias bomb"]
    paths = [files(shape, BIG) for shape in shapes]
    results = _measure(paths)
    for shape, r in zip(shapes, results, strict=True):
        assert r["error"] == f"{r['path']}: file is {BIG} bytes, more than the {tracefile.MAX_FILE_BYTES} a trace may have"
        assert r["cpu"] < MAX_CPU_SECONDS and r["wall"] < MAX_SECONDS and r["peak_mb"] < MAX_RSS_MB, (shape, r)


def test_files_just_under_the_size_limit_are_refused_while_parsing(files: Callable[[str, int], Path]) -> None:
    # Past the size check: what bounds the work is the limit each shape runs into first,
    # found while the file is read, not after it was built.
    shapes = list(SHAPES)
    results = _measure([files(shape, UNDER) for shape in shapes])
    _check(results, shapes)


def test_a_stream_without_a_size_is_bounded_too(tmp_path: Path) -> None:
    # A pipe (e.g. `trace show <(zcat t.yaml.gz)`) has no size to check first.
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes")
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    feeder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nf = open(sys.argv[1], 'wb')\nf.write(b'extra: [')\n"
         "try:\n    while True: f.write(b'1, ' * 100000)\nexcept BrokenPipeError: pass", str(fifo)],
        stderr=subprocess.DEVNULL,
    )
    try:
        [r] = _measure([fifo])
    finally:
        feeder.kill()
        feeder.wait()
    assert "values" in r["error"] and r["cpu"] < MAX_CPU_SECONDS and r["wall"] < MAX_SECONDS, r
    assert r["peak_mb"] < MAX_RSS_MB, r


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_endless_devices_are_refused_at_once(device: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    start = time.perf_counter()
    with pytest.raises(TraceError, match=f"^{device}: (not valid YAML|not UTF-8)"):
        load_trace(device)
    assert time.perf_counter() - start < MAX_SECONDS


def test_the_cli_refuses_a_hostile_file_with_one_line(files: Callable[[str, int], Path]) -> None:
    path = files("many small values", UNDER)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest_commonware", "trace", "show", str(path)],
                            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    elapsed = time.perf_counter() - start
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {path}: more than {tracefile.MAX_NODES} values")
    assert result.stderr.count("\n") == 1
    assert elapsed < MAX_SECONDS  # the interpreter's start included


@pytest.mark.parametrize("option", ["--cw-replay", "--cw-bisect"])
def test_the_plugin_refuses_a_hostile_file_with_one_usage_error(
    pytester: pytest.Pytester, files: Callable[[str, int], Path], option: str
) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    for path, problem in [(files("alias bomb", BIG), f"file is {BIG} bytes, more than"),
                          (files("many small values", UNDER), f"more than {tracefile.MAX_NODES} values")]:
        result = pytester.runpytest("-p", "no:cacheprovider", option, str(path))
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        errors = [line for line in result.stderr.lines if line.strip()]
        assert len(errors) == 1 and errors[0].startswith(f"ERROR: {option}: ") and problem in errors[0], errors
        assert "Traceback" not in result.stdout.str() + result.stderr.str()


# ------------------------------------------------------------------------------------------
# limits that do not need a big file


def _small(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, problem", [
    ("a: !!binary aGVsbG8=\n", "YAML binary data"),
    ("a: !!set {x, y}\n", "a YAML set"),
    ("a: !!omap [x: 1]\n", "a YAML ordered map"),
    ("a: {<<: {b: 1}}\n", "merge key"),
    ("a: !custom 1\n", "unsupported tag"),
    ("a: !!python/object:os.system {}\n", "unsupported tag"),
    ("a: *nowhere\n", "names no anchor"),
    ("[a, b]: 1\n", "is a collection"),
    ("a: " + "9" * 2000 + "\n", "a number of 2000 digits"),
    ("a: 1" + ":1" * 600 + "\n", "more than 1000"),  # sexagesimal: quadratic to build
    ("a: !!int xyz\n", "is not a valid YAML int"),
    ("a: !!bool maybe\n", "is not a valid YAML bool"),
    ("a: 1\n---\nb: 2\n", "a second YAML document"),
])
def test_only_plain_bounded_yaml_is_read(tmp_path: Path, text: str, problem: str) -> None:
    path = _small(tmp_path, text)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_plain_yaml_reads_as_the_safe_loader_reads_it(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        ints: [0, 7, -3, +4, 0o17, 017, 0x1f, 0b101, 1_000, '12', 190:20:30]
        floats: [1.5, -2e3, .inf, -.Inf, 1_0.5, 190:20:30.15]
        other: [true, False, yes, off, null, ~, '', "q", x y]
        anchored: &a {k: [1, 2]}
        again: *a
        block: |
          two
          lines
        """
    )
    path = _small(tmp_path, text)
    with open(path, "rb") as f:
        ours = tracefile._compose(f)
    theirs = yaml.safe_load(text)
    assert repr(ours) == repr(theirs)  # repr: nan-free, and bool vs int told apart
    assert ours["again"] is ours["anchored"]


def test_the_limits_can_be_lowered_and_name_what_ran_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _small(tmp_path, "a: [1, 2, 3, 4, 5]\nb: &b [[[1]]]\nc: [*b, *b]\nd: |\n  " + "x" * 100 + "\n")
    for name, value, problem in [
        ("MAX_NODES", 5, "more than 5 values (line 1, column 11)"),
        ("MAX_DEPTH", 2, "nested more than 2 levels deep (line 2, column 8)"),
        ("MAX_ALIASES", 1, "more than 1 YAML aliases (line 3, column 9)"),
        ("MAX_TEXT_BYTES", 50, "more than 50 bytes besides the encoded blocks"),
    ]:
        with monkeypatch.context() as m:
            m.setattr(tracefile, name, value)
            with pytest.raises(TraceError) as info:
                load_trace(path)
            assert problem in str(info.value), (name, str(info.value))


# ------------------------------------------------------------------------------------------
# long runs load and replay


def _spin(tasks: int, steps: int) -> Callable[[Any], Any]:
    """``tasks`` labelled tasks each yielding ``steps`` times: about ``tasks * steps`` decisions, cheaply."""

    async def main(ctx: Any) -> int:
        async def worker(c: Any) -> None:
            for _ in range(steps):
                await asyncio.sleep(0)

        handles = [ctx.with_label(f"w{i}").spawn(worker) for i in range(tasks)]
        for h in handles:
            await h
        return tasks

    return main


def _record(main: Callable[[Any], Any], every: int) -> tuple[deterministic.Config, tracefile.Trace]:
    config = deterministic.Config(seed=1)
    recorder = deterministic.Recorder(checkpoint_every=every)
    deterministic.Runner(config, recorder=recorder).start(main)
    assert recorder.schedule is not None
    return config, trace_from_schedule(recorder.schedule, test="tests/t.py::test_long", seed=1,
                                       config=config.to_dict())


def _count_values(path: Path) -> int:
    count = 0
    with open(path, "rb") as f:
        loader = yaml.CSafeLoader(f) if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader(f)
        try:
            while not loader.check_event(yaml.StreamEndEvent):
                event = loader.get_event()
                count += isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent, yaml.AliasEvent))
        finally:
            loader.dispose()
    return count


def test_a_million_decision_run_with_many_tasks_loads_and_replays(tmp_path: Path) -> None:
    tasks, steps = 5_000, 200
    config, trace = _record(_spin(tasks, steps), every=1024)
    assert trace.steps > tasks * steps and len(trace.tasks) == tasks + 1
    path = write_trace(tmp_path / "long.yaml", trace)

    # Compact: the labels are one block; what is left is a few dozen YAML values
    # and the (readable, at most INLINE_CHECKPOINTS) checkpoints, seven values each.
    doc_head = path.read_text()[:4000]
    assert "version: 1\n" in doc_head and "tasks: |\n  json:" in doc_head
    assert len(trace.checkpoints) <= tracefile.INLINE_CHECKPOINTS
    assert _count_values(path) < 100 + 7 * len(trace.checkpoints) < tracefile.MAX_NODES // 20
    assert path.stat().st_size < tracefile.MAX_FILE_BYTES // 8

    start = time.process_time()
    loaded = load_trace(path)
    assert time.process_time() - start < 10  # about a second for a million decisions; generous when loaded
    assert loaded.tasks == trace.tasks and loaded.checkpoints == trace.checkpoints
    assert loaded.schedule.picks == trace.schedule.picks and loaded.schedule.ids == trace.schedule.ids

    runner = deterministic.Runner(deterministic.Config(**loaded.config), replay=loaded.schedule)
    assert runner.start(_spin(tasks, steps)) == tasks
    assert runner.auditor_state == trace.auditor


def test_many_checkpoints_are_one_block_and_replay(tmp_path: Path) -> None:
    # One task yielding: a round per decision, a checkpoint every 16 (as --cw-check-determinism records).
    async def main(ctx: Any) -> None:
        for _ in range(40_000):
            await asyncio.sleep(0)

    config, trace = _record(main, every=16)
    assert len(trace.checkpoints) > tracefile.INLINE_CHECKPOINTS and len(trace.tasks) <= tracefile.INLINE_TASKS
    path = write_trace(tmp_path / "cps.yaml", trace)
    doc = yaml.safe_load(path.read_text())
    assert doc["version"] == 1 and set(doc["checkpoints"]) == {"count", "steps", "auditors"}
    assert isinstance(doc["tasks"], dict)  # few tasks: still readable
    assert _count_values(path) < 100
    loaded = load_trace(path)
    assert loaded.checkpoints == trace.checkpoints and loaded.schedule.checkpoints == trace.schedule.checkpoints
    runner = deterministic.Runner(config, replay=loaded.schedule)
    runner.start(main)
    assert runner.auditor_state == trace.auditor


def test_compact_blocks_are_checked(tmp_path: Path) -> None:
    async def main(ctx: Any) -> None:
        for _ in range(20_000):
            await asyncio.sleep(0)
        for i in range(1_200):
            ctx.with_label(f"t{i}").spawn(lambda c: asyncio.sleep(0))
        await asyncio.sleep(0.01)

    _, trace = _record(main, every=16)
    path = write_trace(tmp_path / "t.yaml", trace)
    good = path.read_text()
    doc = yaml.safe_load(good)
    assert isinstance(doc["tasks"], str) and "count" in doc["checkpoints"]
    load_trace(path)

    def edited(change: Callable[[dict[str, Any]], None]) -> str:
        d = yaml.safe_load(good)
        change(d)
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        with pytest.raises(TraceError) as info:
            load_trace(path)
        return str(info.value)

    def labels(value: Any) -> Callable[[dict[str, Any]], None]:
        import base64
        import zlib

        def change(d: dict[str, Any]) -> None:
            d["tasks"] = "json:" + base64.b64encode(zlib.compress(json.dumps(value).encode())).decode()

        return change

    def set_(path_: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
        def change(d: dict[str, Any]) -> None:
            target = d
            for key in path_[:-1]:
                target = target[key]
            target[path_[-1]] = value

        return change

    assert "'tasks' must be a mapping of task id to label or a block starting with 'json:'" in edited(
        set_(("tasks",), "xml:abc"))
    assert "'tasks' must decode to a JSON array of strings" in edited(labels({"1": "root"}))
    assert "'tasks' must decode to a JSON array of strings" in edited(labels(["root", 5]))
    assert "which 'tasks' does not list" in edited(labels(["root"]))
    assert "'tasks' is not a valid JSON array" in edited(set_(("tasks",), "json:" + __import__("base64").b64encode(
        __import__("zlib").compress(b"[1, 2")).decode()))
    assert "trace format version 7 is newer than this pytest-commonware reads (version 1)" in edited(set_(("version",), 7))
    assert "checkpoints.count must be between 0 and" in edited(set_(("checkpoints", "count"), 10**9))
    assert "checkpoints.steps decodes to more than the" in edited(set_(("checkpoints", "count"), doc["checkpoints"]["count"] - 1))
    assert "checkpoints: unknown key 'times'" in edited(set_(("checkpoints", "times"), "u8:"))
    steps = tracefile._encode_array([0, 5, 3], delta=True)

    def three(d: dict[str, Any]) -> None:
        d["checkpoints"]["count"] = 3
        d["checkpoints"]["steps"] = steps
        d["checkpoints"]["auditors"] = "u8:" + __import__("base64").b64encode(
            __import__("zlib").compress(bytes(96))).decode()

    assert "does not come after the previous checkpoint" in edited(three)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(tracefile, "MAX_TASKS", 100)
        path.write_text(good)
        with pytest.raises(TraceError, match="'tasks' lists more than 100 tasks"):
            load_trace(path)


def test_inconsistent_checkpoints_are_not_hidden_by_the_compact_form(tmp_path: Path) -> None:
    async def main(ctx: Any) -> None:
        for _ in range(1_500):
            await asyncio.sleep(0.001)  # a round per decision, each at its own time

    _, trace = _record(main, every=1)
    assert len(trace.checkpoints) > tracefile.INLINE_CHECKPOINTS
    trace.checkpoints[500]["time"] += 1  # the compact form does not store times: it must not drop this one
    with pytest.raises(ValueError, match=r"checkpoints\[500\]\.time .* differs from the time of the round"):
        write_trace(tmp_path / "t.yaml", trace)
    assert not (tmp_path / "t.yaml").exists()
