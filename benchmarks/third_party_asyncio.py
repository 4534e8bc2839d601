"""Third-party asyncio libraries' own test suites on ``deterministic.EventLoop``, against stock asyncio.

Not a benchmark: a conformance harness, the third-party counterpart of ``cpython_asyncio.py``.
For each library below it downloads the pinned sdist from PyPI (``pip download --no-deps
--no-binary :all:``; the sdist carries the tests), installs the library and its test
dependencies into a scratch virtualenv of its own (never the project's ``.venv``), and runs
the library's pytest suite in child processes:

* ``stock``: unchanged (the interpreter's default event loop);
* ``ours`` once per seed: ``asyncio.DefaultEventLoopPolicy`` builds
  ``deterministic.EventLoop(seed=S, ordering=O)``, so every loop that pytest-asyncio's
  Runner, anyio's pytest plugin (asyncio backend), ``asyncio.run`` or
  ``asyncio.new_event_loop()`` creates is ours.

This file is also the pytest plugin the children load (``-p third_party_asyncio``): it
patches the policy (ours only), records every test's outcome with probes (did the test run
one of our loops / a stock loop, start threads, call ``run_in_executor``, hit
``UnsupportedOperation`` or ``BlockingStalled``), and writes one JSON line per test.

The parent prints, per library, stock passed/failed/skipped, the same for ours per seed,
and every test that fails on ours but passes on stock, with the first error line and,
when known, why it is excluded (a test that measures wall-clock time, or needs real
threads or I/O that the deterministic loop refuses).  Anything else is a *regression*:
a bug (or an undocumented difference) of the deterministic loop; the exit code is 1 then.

Usage::

    .venv/bin/python benchmarks/third_party_asyncio.py                      # all libraries, seeds 0,1,2
    .venv/bin/python benchmarks/third_party_asyncio.py --libs aiolimiter --seeds 0 --verbose
    .venv/bin/python benchmarks/third_party_asyncio.py --markdown            # the table for docs

A loop bug found this way, since fixed (aiometer's ``TestMaxPerSecond`` at 30 and 70 per
second hung on ours): ``asyncio.sleep(d)`` with ``0 < d < 0.5 ns`` did not move the virtual
clock (rounded to 0 ns), and a wake-up may land up to 0.5 ns before a float deadline, so
"sleep until the deadline" spun at one instant forever::

    async def main():
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1 / 30          # not a whole number of nanoseconds
        while loop.time() < deadline:            # one round on stock asyncio
            await asyncio.sleep(deadline - loop.time())   # was: 3.3e-10 s, forever

Network is needed only for the first run (PyPI: the sdists, the scratch venv's packages);
later runs reuse ``--cache`` (default ``/tmp/commonware-third-party``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PLUGIN = "third_party_asyncio"  # this module, loaded by the children with -p

# Real seconds one test may take (the plugin's watchdog), and one child (one suite on one loop).
TEST_TIMEOUT = {"stock": 120, "ours": 15}
CHILD_TIMEOUT = 900.0
TIMEOUT_EXIT = 75  # a child's exit status when its watchdog ended it

# Test tooling of the scratch venv (pinned: the suites' results were taken with these).
TOOLING = ["pytest==9.2.0", "pytest-asyncio==1.5.0", "pytest-timeout==2.4.0"]


@dataclass(frozen=True)
class Library:
    name: str  # PyPI name
    version: str
    tests: Sequence[str]  # paths (globs) inside the unpacked sdist
    deps: Sequence[str] = ()  # test dependencies besides TOOLING
    pytest_args: Sequence[str] = ()
    runner: str = "pytest-asyncio"  # how the suite makes its loops (for the report)
    # Tests that fail on ours and pass on stock, excluded after reading their source:
    # node id suffix (without the parametrization, or with it) -> reason.
    exclusions: dict[str, str] = field(default_factory=dict)
    # Tests that fail on ours because of a known bug of the loop: still regressions (they
    # count, and fail the run), shown with the diagnosis.
    known_bugs: dict[str, str] = field(default_factory=dict)

    @property
    def sdist_dir(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}"


_MOCKED_CLOCK = (
    "mocked clock: the test replaces the running loop's time() (mock.patch.object(loop, 'time')) and "
    "expects timers to fire by the fake clock; stock BaseEventLoop._run_once reads self.time(), the "
    "deterministic loop keeps its own virtual clock (not a documented asyncio guarantee)"
)

LIBRARIES: dict[str, Library] = {
    lib.name: lib
    for lib in (
        Library(
            "aiolimiter", "1.3.0", ["tests"], deps=["dunamai", "typing_extensions"],
            runner="pytest-asyncio, one session-scoped loop",
            exclusions=dict.fromkeys(
                ["test_acquire", "test_acquire_wait_time", "test_decreasing_acquire"],
                _MOCKED_CLOCK,
            ),
        ),
        Library(
            "async-lru", "2.4.0", ["tests"],
            pytest_args=["-o", "asyncio_default_fixture_loop_scope=function"],
        ),
        Library("async-timeout", "5.0.1", ["tests"]),
        Library(
            "aioitertools", "0.13.0", ["aioitertools/tests/*.py"],
            runner="unittest TestCases, asyncio.new_event_loop() per test",
            exclusions={
                "AsyncioTest::test_as_completed_timeout": (
                    "wall clock: aioitertools.asyncio.as_completed measures its timeout with time.time(), "
                    "which virtual time does not move (0.5 s of sleeps take no real time)"
                ),
            },
        ),
        Library(
            "aiometer", "1.0.0", ["tests"], deps=["anyio==4.16.0"],
            # anyio's pytest plugin parametrizes asyncio and trio; only asyncio is ours to run
            pytest_args=["-o", "asyncio_default_fixture_loop_scope=function", "-k", "not trio"],
            runner="anyio pytest plugin, asyncio backend",
        ),
    )
}


# ---------------------------------------------------------------------------------------------
# The plugin (children): loaded by pytest with -p third_party_asyncio.
# ---------------------------------------------------------------------------------------------


@dataclass
class _Probe:
    ours_created: int = 0
    ours_ran: int = 0
    stock_ran: int = 0
    threads: int = 0
    executor: int = 0
    unsupported: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)


_PROBE = _Probe()
_OUT: Any = None
_RECORDS: dict[str, dict[str, Any]] = {}


def _instrument(kind: str, seed: int, ordering: str) -> None:
    import asyncio

    thread_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        # the runtime's helper threads are not the test's
        if not self.name.startswith("commonware-"):
            _PROBE.threads += 1
        thread_start(self)

    threading.Thread.start = start  # type: ignore[method-assign]

    base_run_forever = asyncio.BaseEventLoop.run_forever

    if kind == "stock":
        def stock_run_forever(self: Any) -> None:
            _PROBE.stock_ran += 1
            base_run_forever(self)

        asyncio.BaseEventLoop.run_forever = stock_run_forever  # type: ignore[method-assign]
        return

    from commonware_runtime import BlockingStalled, deterministic

    EventLoop = deterministic.EventLoop

    def factory() -> Any:
        _PROBE.ours_created += 1
        return EventLoop(seed=seed, ordering=ordering)

    # pytest-asyncio's Runner (no loop_factory), anyio's TestRunner, asyncio.run and
    # asyncio.new_event_loop() all end in DefaultEventLoopPolicy().new_event_loop().
    asyncio.DefaultEventLoopPolicy._loop_factory = staticmethod(factory)  # type: ignore[attr-defined]
    asyncio.set_event_loop_policy(None)

    run_forever = EventLoop.run_forever
    unsupported = EventLoop._unsupported
    threadsafe = EventLoop.call_soon_threadsafe
    executor = EventLoop.run_in_executor

    def run_forever_probe(self: Any) -> None:
        _PROBE.ours_ran += 1
        run_forever(self)

    def stock_run_forever(self: Any) -> None:  # a loop built without the policy
        if not isinstance(self, EventLoop):
            _PROBE.stock_ran += 1
        base_run_forever(self)

    def unsupported_probe(self: Any, name: str) -> Any:
        exc = unsupported(self, name)
        _PROBE.unsupported.append(f"{name}() (real I/O)")
        return exc

    def threadsafe_probe(self: Any, *args: Any, **kw: Any) -> Any:
        try:
            return threadsafe(self, *args, **kw)
        except deterministic.UnsupportedOperation:
            _PROBE.unsupported.append("call_soon_threadsafe() from another thread")
            raise

    def executor_probe(self: Any, *args: Any) -> Any:
        _PROBE.executor += 1
        fut = executor(self, *args)
        if fut.done() and not fut.cancelled() and isinstance(fut.exception(), BlockingStalled):
            _PROBE.stalled.append(str(fut.exception()).splitlines()[0])
        return fut

    EventLoop.run_forever = run_forever_probe  # type: ignore[method-assign]
    asyncio.BaseEventLoop.run_forever = stock_run_forever  # type: ignore[method-assign]
    EventLoop._unsupported = unsupported_probe  # type: ignore[method-assign]
    EventLoop.call_soon_threadsafe = threadsafe_probe  # type: ignore[method-assign]
    EventLoop.run_in_executor = executor_probe  # type: ignore[method-assign]


def pytest_configure(config: Any) -> None:
    global _OUT
    kind = os.environ.get("COMMONWARE_TP_LOOP")
    if not kind:
        return
    _instrument(kind, int(os.environ.get("COMMONWARE_TP_SEED", "0")), os.environ.get("COMMONWARE_TP_ORDERING", "fifo"))
    global _WATCHDOG
    _OUT = open(os.environ["COMMONWARE_TP_OUT"], "a", buffering=1)
    _WATCHDOG = _Watchdog(float(os.environ.get("COMMONWARE_TP_TIMEOUT", "0")))


class _Watchdog:
    """A test that runs past its real-time budget ends the child: its record says ``timeout``,
    and the parent starts a new child that skips every test already reported.  (An alarm
    signal cannot stop a loop that spins at one virtual instant: a task or a loop callback
    catches the exception, and pytest-timeout fires only once.)"""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.lock = threading.Lock()
        self.current: tuple[str, float] | None = None
        if budget > 0:
            threading.Thread(target=self._watch, name="commonware-tp-watchdog", daemon=True).start()

    def _watch(self) -> None:
        import time

        while True:
            time.sleep(0.5)
            with self.lock:
                if self.current is None or time.monotonic() - self.current[1] < self.budget:
                    continue
                nodeid = self.current[0]
                rec = _RECORDS.get(nodeid) or {"id": nodeid, "seconds": 0.0}
                rec.update(status="timeout", error=f"ran past its real-time budget of {self.budget:.0f} s "
                           "(the harness ended the child)", traceback="", probe=_PROBE.__dict__)
                if _OUT is not None:
                    _OUT.write(json.dumps(rec) + "\n")
                    _OUT.flush()
                os._exit(TIMEOUT_EXIT)

    def start(self, nodeid: str) -> None:
        import time

        with self.lock:
            self.current = (nodeid, time.monotonic())

    def stop(self) -> None:
        with self.lock:
            self.current = None


_WATCHDOG: _Watchdog | None = None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Skip the tests an earlier child of this run already reported."""
    path = os.environ.get("COMMONWARE_TP_DONE")
    if not path or not os.path.exists(path):
        return
    with open(path) as f:
        done = set(f.read().splitlines())
    keep = [item for item in items if item.nodeid not in done]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in done])
        items[:] = keep


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    global _PROBE
    _PROBE = _Probe()
    _RECORDS[nodeid] = {"id": nodeid, "status": "pass", "error": "", "traceback": "", "seconds": 0.0}
    if _WATCHDOG is not None:
        _WATCHDOG.start(nodeid)


def _first_line(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0] if crash.message else ""
    if isinstance(report.longrepr, tuple):  # skip: (path, line, reason)
        return str(report.longrepr[2])
    text = str(report.longrepr).strip().splitlines()
    return text[-1] if text else ""


def pytest_runtest_logreport(report: Any) -> None:
    rec = _RECORDS.get(report.nodeid)
    if rec is None:
        return
    rec["seconds"] = round(rec["seconds"] + report.duration, 4)
    if report.skipped and rec["status"] == "pass":
        rec["status"] = "skip"  # skipped, or an expected failure (xfail)
        rec["error"] = _first_line(report)
    elif report.failed and rec["status"] in ("pass", "skip"):
        rec["status"] = "fail" if report.when == "call" else "error"
        rec["error"] = (f"[{report.when}] " if report.when != "call" else "") + _first_line(report)
        rec["traceback"] = str(report.longrepr)[-6000:]


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    if _WATCHDOG is not None:
        _WATCHDOG.stop()
    rec = _RECORDS.pop(nodeid, None)
    if rec is None or _OUT is None:
        return
    rec["probe"] = _PROBE.__dict__
    _OUT.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------------------------------------
# The parent: set up the scratch venv and the sources, run the children, compare.
# ---------------------------------------------------------------------------------------------


def _run(cmd: Sequence[str], **kw: Any) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)


def setup(cache: str, venv: str, libs: Sequence[Library]) -> None:
    """The scratch venv (with commonware_runtime from this checkout, editable) and the
    unpacked sdists, both under ``cache``; what is there already is kept."""
    os.makedirs(cache, exist_ok=True)
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        _run([sys.executable, "-m", "venv", venv])
        _run([py, "-m", "pip", "install", "-q", "-e", REPO, *TOOLING])
    marker = os.path.join(venv, ".commonware-third-party")
    installed = set(open(marker).read().split()) if os.path.exists(marker) else set()
    for lib in libs:
        sdist = os.path.join(cache, lib.sdist_dir)
        if not os.path.isdir(sdist):
            _run([py, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                  "-d", cache, f"{lib.name}=={lib.version}"])
            archives = [f for f in os.listdir(cache) if f.lower().startswith(lib.sdist_dir.lower()) and f.endswith(".tar.gz")]
            with tarfile.open(os.path.join(cache, archives[0])) as tar:
                tar.extractall(cache, filter="data")
        key = f"{lib.name}=={lib.version}"
        if key not in installed:
            _run([py, "-m", "pip", "install", "-q", key, *lib.deps])
            with open(marker, "a") as f:
                f.write(key + "\n")


@dataclass
class Outcome:
    status: str  # pass, fail, error (setup/teardown), skip, timeout
    error: str = ""
    traceback: str = ""
    seconds: float = 0.0
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status in ("pass", "skip")


@dataclass
class SuiteRun:
    outcomes: dict[str, Outcome]
    returncode: int
    stderr: str = ""
    restarts: int = 0  # children started again after a hung test

    def counts(self) -> tuple[int, int, int]:
        s = [o.status for o in self.outcomes.values()]
        return s.count("pass"), len(s) - s.count("pass") - s.count("skip"), s.count("skip")


def run_suite(lib: Library, kind: str, seed: int, ordering: str, cache: str, venv: str, out_dir: str) -> SuiteRun:
    import glob

    cwd = os.path.join(cache, lib.sdist_dir)
    out = os.path.join(out_dir, f"{lib.name}-{kind}-{seed}.jsonl")
    paths: list[str] = []
    for pattern in lib.tests:
        paths += sorted(os.path.relpath(p, cwd) for p in glob.glob(os.path.join(cwd, pattern))) or [pattern]
    env = dict(os.environ)
    env.update(
        COMMONWARE_TP_LOOP=kind, COMMONWARE_TP_SEED=str(seed), COMMONWARE_TP_ORDERING=ordering,
        COMMONWARE_TP_OUT=out, COMMONWARE_TP_TIMEOUT=str(TEST_TIMEOUT[kind]), PYTHONPATH=HERE + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONDONTWRITEBYTECODE="1",
    )
    cmd = [
        os.path.join(venv, "bin", "python"), "-m", "pytest", "-q", "-p", PLUGIN, "-p", "no:cacheprovider",
        "-o", "addopts=",
        "-o", "timeout=0",  # pytest-timeout off: the plugin's watchdog instead
        *lib.pytest_args, *paths,
    ]
    done_path = out + ".done"
    env["COMMONWARE_TP_DONE"] = done_path
    for path in (out, done_path):
        if os.path.exists(path):
            os.remove(path)
    outcomes: dict[str, Outcome] = {}
    restarts = 0
    while True:
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
            code, err = proc.returncode, proc.stdout[-3000:] + proc.stderr[-3000:]
        except subprocess.TimeoutExpired:
            code, err = -1, f"child killed after {CHILD_TIMEOUT:.0f} s"
        outcomes.clear()
        if os.path.exists(out):
            for line in open(out):
                rec = json.loads(line)
                outcomes[rec["id"]] = Outcome(rec["status"], rec["error"], rec["traceback"], rec["seconds"], rec["probe"])
        if code != TIMEOUT_EXIT or restarts > 50:
            break
        # A test hung and the watchdog ended the child: go on with the tests not reported yet.
        restarts += 1
        with open(done_path, "w") as f:
            f.write("\n".join(outcomes) + "\n")
    return SuiteRun(outcomes, code, err, restarts)


def _named(table: dict[str, str], test_id: str) -> str | None:
    """``table``'s entry for ``test_id``: keys are node-id suffixes, with or without the parameters."""
    base = test_id.split("[")[0]
    for key, reason in table.items():
        if any(t == key or t.endswith("::" + key) or f"::{key}::" in t for t in (test_id, base)):
            return reason
    return None


def _exclusion(lib: Library, test_id: str, o: Outcome) -> str | None:
    named = _named(lib.exclusions, test_id)
    if named:
        return named
    p = o.probe
    if p.get("unsupported"):
        return "needs what the deterministic loop refuses: " + "; ".join(sorted(set(p["unsupported"])))
    if p.get("stalled"):
        return "run_in_executor function waits on the loop (BlockingStalled): " + p["stalled"][0]
    if not p.get("ours_ran") and p.get("stock_ran"):
        return "ran on a loop of its own, not ours"
    return None


@dataclass
class Comparison:
    lib: Library
    stock: SuiteRun
    ours: dict[int, SuiteRun]
    # test id -> seed -> outcome, for tests that pass on stock and fail on ours
    only_ours: dict[str, dict[int, Outcome]] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    regressions: list[str] = field(default_factory=list)
    never_ours: int = 0  # tests that ran no loop of ours (sync tests), first seed
    foreign: int = 0  # tests that ran a stock loop in an "ours" run, first seed

    def classify(self) -> None:
        for seed, run in self.ours.items():
            for tid, o in run.outcomes.items():
                s = self.stock.outcomes.get(tid)
                if s is not None and s.passed and not o.passed:
                    self.only_ours.setdefault(tid, {})[seed] = o
        for tid, by_seed in sorted(self.only_ours.items()):
            reason = next((r for o in by_seed.values() if (r := _exclusion(self.lib, tid, o))), None)
            if reason:
                self.excluded[tid] = reason
            else:
                self.regressions.append(tid)
        first = next(iter(self.ours.values()), None)
        if first is not None:
            self.never_ours = sum(1 for o in first.outcomes.values() if not o.probe.get("ours_ran"))
            self.foreign = sum(1 for o in first.outcomes.values() if o.probe.get("stock_ran"))


def compare(lib: Library, seeds: Sequence[int], ordering: str, cache: str, venv: str, out_dir: str, jobs: int) -> Comparison:
    # Stock alone first: some suites time real sleeps, which a loaded machine makes flaky.
    stock = run_suite(lib, "stock", 0, ordering, cache, venv, out_dir)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {s: pool.submit(run_suite, lib, "ours", s, ordering, cache, venv, out_dir) for s in seeds}
        ours = {s: f.result() for s, f in futures.items()}
    cmp = Comparison(lib, stock, ours)
    cmp.classify()
    return cmp


def _fmt(run: SuiteRun) -> str:
    p, f, s = run.counts()
    crash = "" if run.returncode in (0, 1) else f" (exit {run.returncode})"
    hung = f" ({run.restarts} hung)" if run.restarts else ""
    return f"{p}/{f}/{s}{hung}{crash}"


def report(cmps: Sequence[Comparison], verbose: bool) -> None:
    for c in cmps:
        print(f"\n== {c.lib.name} {c.lib.version} ({c.lib.runner})")
        print(f"   stock passed/failed/skipped: {_fmt(c.stock)}")
        for seed, run in c.ours.items():
            print(f"   ours seed {seed}:              {_fmt(run)}")
        if c.never_ours:
            print(f"   ({c.never_ours} tests ran no loop of ours: synchronous tests)")
        if c.foreign:
            print(f"   ({c.foreign} tests ran a loop that is not ours, built without the policy)")
        missing = set(c.stock.outcomes) - set(next(iter(c.ours.values())).outcomes)
        if missing:
            print(f"   {len(missing)} tests did not report on ours (child crashed?): {sorted(missing)[:5]}")
        for run in (c.stock, *c.ours.values()):
            if run.returncode not in (0, 1):
                print("   child output:\n" + run.stderr)
        fails_stock = sorted(t for t, o in c.stock.outcomes.items() if not o.passed)
        for tid in fails_stock:
            print(f"   fails on stock too (not counted): {tid}: {c.stock.outcomes[tid].error}")
        for tid, by_seed in sorted(c.only_ours.items()):
            seeds = ",".join(map(str, sorted(by_seed)))
            first = next(iter(by_seed.values()))
            tag = "excluded" if tid in c.excluded else "REGRESSION"
            print(f"   fails on ours only [seeds {seeds}], {tag}: {tid}\n       {first.error}")
            if tid in c.excluded:
                print(f"       why excluded: {c.excluded[tid]}")
            elif (known := _named(c.lib.known_bugs, tid)):
                print(f"       known loop bug: {known}")
            if verbose and tid not in c.excluded:
                print("       " + first.traceback.replace("\n", "\n       "))
    total = sum(len(c.regressions) for c in cmps)
    print(f"\nregressions (pass on stock, fail on ours, not excluded): {total}")


def markdown(cmps: Sequence[Comparison], seeds: Sequence[int]) -> None:
    head = "| library | loops made by | stock pass/fail/skip | " + " | ".join(f"ours seed {s}" for s in seeds) + " |"
    print(head)
    print("|" + "---|" * (3 + len(seeds)))
    for c in cmps:
        cells = [f"{c.lib.name} {c.lib.version}", c.lib.runner, _fmt(c.stock)] + [_fmt(c.ours[s]) for s in seeds]
        print("| " + " | ".join(cells) + " |")
    print()
    for c in cmps:
        by_reason: dict[str, list[str]] = {}
        for tid, reason in sorted(c.excluded.items()):
            by_reason.setdefault(reason, []).append(tid)
        for reason, tids in by_reason.items():
            print(f"- {c.lib.name}: " + ", ".join(f"`{t}`" for t in tids) + f": {reason}")
        for tid in c.regressions:
            known = _named(c.lib.known_bugs, tid)
            print(f"- {c.lib.name}: `{tid}` REGRESSION" + (f" (known loop bug: {known})" if known else ""))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libs", default=",".join(LIBRARIES), help="comma-separated, from: " + ", ".join(LIBRARIES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ordering", default="fifo")
    ap.add_argument("--cache", default="/tmp/commonware-third-party", help="sdists and results")
    ap.add_argument("--venv", default=None, help="scratch virtualenv (default: CACHE/venv)")
    ap.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--verbose", action="store_true", help="tracebacks of regressions")
    ap.add_argument("--markdown", action="store_true", help="print the table and exclusions as markdown")
    args = ap.parse_args(argv)
    libs = [LIBRARIES[n] for n in args.libs.split(",") if n]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    venv = args.venv or os.path.join(args.cache, "venv")
    setup(args.cache, venv, libs)
    out_dir = os.path.join(args.cache, "results")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    cmps = [compare(lib, seeds, args.ordering, args.cache, venv, out_dir, args.jobs) for lib in libs]
    report(cmps, args.verbose)
    if args.markdown:
        print()
        markdown(cmps, seeds)
    return 1 if any(c.regressions for c in cmps) else 0


if __name__ == "__main__":
    sys.exit(main())
