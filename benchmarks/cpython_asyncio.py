"""CPython's own asyncio test modules on ``deterministic.EventLoop``, compared with stock asyncio.

Not a benchmark: a conformance harness.  It loads ``test.test_asyncio.<module>`` from the
running interpreter's standard library and runs it twice or more, each run in a fresh
child process:

* ``stock``: unchanged (the interpreter's default event loop);
* ``ours`` once per seed: ``asyncio.DefaultEventLoopPolicy`` builds
  ``deterministic.EventLoop(seed=S, ordering=O)``, so ``asyncio.new_event_loop()``,
  ``asyncio.run()``, ``asyncio.Runner()`` and ``unittest.IsolatedAsyncioTestCase`` all run
  on our loop (``asyncio.set_event_loop_policy(None)`` in the modules' ``tearDownModule``
  keeps it: the default policy class itself is patched).

Every test's outcome is recorded together with what the test did: whether it built and
ran one of our loops, whether it ran CPython's ``test_utils.TestLoop`` instead
(``self.new_test_loop()``), whether it started real threads, called ``run_in_executor``,
or hit ``UnsupportedOperation`` (real I/O, or ``call_soon_threadsafe`` from another
thread).  Tests are then classified:

* *excluded*: the test runs on ``TestLoop`` and never on our loop, or it fails on ours
  while needing what the deterministic loop deliberately does not do (real threads, real
  I/O); each is listed with its reason;
* *regression*: passes on stock, fails on ours, not excluded: a bug (or an undocumented
  difference) of the deterministic loop.

Usage::

    .venv/bin/python benchmarks/cpython_asyncio.py                       # all modules, seed 0
    .venv/bin/python benchmarks/cpython_asyncio.py --seeds 0,1,2 --modules test_queues,test_locks
    .venv/bin/python benchmarks/cpython_asyncio.py --verbose             # tracebacks of regressions
    .venv/bin/python benchmarks/cpython_asyncio.py --markdown            # excluded list for docs
    /tmp/venv312/bin/python benchmarks/cpython_asyncio.py                # 3.12's test modules

It runs in the current interpreter (``sys.executable`` for the children), so a 3.12 run
needs a 3.12 environment where ``commonware_runtime`` is importable (``runtime/`` is put on
``sys.path`` when it is not installed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MODULES",
    "Comparison",
    "ModuleComparison",
    "compare",
    "run_module",
    "test_package_available",
]

MODULES = (
    "test_queues",
    "test_locks",
    "test_waitfor",
    "test_timeouts",
    "test_taskgroups",
    "test_futures",
    "test_tasks",
)

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME_DIR = os.path.join(os.path.dirname(HERE), "runtime")

# Real seconds one test may take before it is interrupted (a test that waits forever on
# our loop usually stalls at once with RuntimeStalled; one spinning on virtual time does not).
TEST_TIMEOUT = {"stock": 60.0, "ours": 10.0}
# Real seconds one child (one module on one loop) may take before it is killed.
CHILD_TIMEOUT = 900.0

# Tests excluded after reading their source, when no probe can tell: "module.Class.test" -> reason.
# (The probes below find TestLoop use, real threads and UnsupportedOperation by themselves.)
KNOWN_EXCLUSIONS: dict[str, str] = {}

# --testloop all: tests written for TestLoop's hand-driven clock, by test method name (every
# Task/Future class variant): why they cannot hold on any real loop.
TESTLOOP_CLOCK: dict[str, str] = {
    "test_stop_while_run_in_complete": (
        "TestLoop's clock moves when a timer is scheduled (its generator answers each new timer), "
        "so it reads 0.3 after the stop where a real loop, and ours, read 0.2"
    ),
}


def test_package_available() -> str | None:
    """None when ``test.test_asyncio`` is importable, else why not."""
    try:
        importlib.import_module("test.test_asyncio")
        importlib.import_module("test.test_asyncio.utils")
    except Exception as exc:  # noqa: BLE001 - any failure means: no CPython test package here
        return f"test.test_asyncio is not importable in {sys.executable}: {type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------------------------
# The child: runs one module on one loop and writes one JSON line per test.
# ---------------------------------------------------------------------------------------------


class _TestTimeout(Exception):
    """Raised by SIGALRM in the main thread when a test runs past its real-time budget."""


@dataclass
class _Probe:
    ours_created: int = 0
    ours_ran: int = 0
    testloop_created: int = 0
    testloop_ran: int = 0
    testloop_gen: int = 0  # TestLoops whose clock a generator drives (new_test_loop(gen))
    threads: int = 0
    executor: int = 0
    substituted: int = 0  # new_test_loop() calls answered with our loop (--testloop ours|all)
    substituted_gen: int = 0  # ... of them with a clock generator, ignored (--testloop all)
    unsupported: list[str] = field(default_factory=list)


_PROBE = _Probe()
_INLINE_EXECUTOR = 0  # depth of run_in_executor calls our loop is waiting for


def _instrument(loop_kind: str, seed: int, ordering: str, testloop: str = "skip") -> None:
    """Patch the policy (ours) and install the probes (both kinds)."""
    import asyncio

    from test.test_asyncio import utils as test_utils

    # CPython's TestLoop: created (setUp's new_test_loop) and actually run.
    tl_init = test_utils.TestLoop.__init__
    tl_run_once = test_utils.TestLoop._run_once

    def testloop_init(self: Any, *args: Any, **kwargs: Any) -> None:
        _PROBE.testloop_created += 1
        if (args and args[0] is not None) or kwargs.get("gen") is not None:
            _PROBE.testloop_gen += 1
        tl_init(self, *args, **kwargs)

    def testloop_run_once(self: Any) -> None:
        _PROBE.testloop_ran += 1
        tl_run_once(self)

    test_utils.TestLoop.__init__ = testloop_init  # type: ignore[method-assign]
    test_utils.TestLoop._run_once = testloop_run_once  # type: ignore[method-assign]

    thread_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if not self.name.startswith("commonware-"):  # the runtime's own helper threads do not count
            _PROBE.threads += 1
        thread_start(self)

    threading.Thread.start = start  # type: ignore[method-assign]

    if loop_kind == "stock":
        return

    try:
        from commonware_runtime import deterministic
    except ImportError:  # not installed: the checkout's runtime/
        sys.path.insert(0, RUNTIME_DIR)
        from commonware_runtime import deterministic

    EventLoop = deterministic.EventLoop
    Unsupported = deterministic.UnsupportedOperation

    try:
        EventLoop(seed=seed, ordering=ordering).close()
        kwargs: dict[str, Any] = {"ordering": ordering}
    except TypeError:  # a runtime without the ordering argument
        print(f"warning: EventLoop has no ordering argument; running EventLoop(seed={seed})", file=sys.stderr)
        kwargs = {}

    def factory() -> Any:
        _PROBE.ours_created += 1
        return EventLoop(seed=seed, **kwargs)

    # asyncio.new_event_loop(), asyncio.run(), Runner and IsolatedAsyncioTestCase all end
    # in DefaultEventLoopPolicy().new_event_loop() -> self._loop_factory().
    asyncio.DefaultEventLoopPolicy._loop_factory = staticmethod(factory)  # type: ignore[attr-defined]
    asyncio.set_event_loop_policy(None)

    run_forever = EventLoop.run_forever
    unsupported = EventLoop._unsupported
    threadsafe = EventLoop.call_soon_threadsafe
    executor = EventLoop.run_in_executor

    def run_forever_probe(self: Any) -> None:
        _PROBE.ours_ran += 1
        run_forever(self)

    def unsupported_probe(self: Any, name: str) -> Any:
        exc = unsupported(self, name)
        _PROBE.unsupported.append(str(exc).split(",")[0].split(";")[0])
        return exc

    def threadsafe_probe(self: Any, *args: Any, **kw: Any) -> Any:
        try:
            return threadsafe(self, *args, **kw)
        except Unsupported as exc:
            _PROBE.unsupported.append(str(exc).split(":")[0])
            raise

    def executor_probe(self: Any, *args: Any) -> Any:
        _PROBE.executor += 1
        global _INLINE_EXECUTOR
        _INLINE_EXECUTOR += 1
        try:
            return executor(self, *args)
        finally:
            _INLINE_EXECUTOR -= 1

    # run_in_executor runs the function while the loop waits for it (inline, or in a helper
    # thread bounded by blocking_timeout): a function that then waits for the loop
    # (run_coroutine_threadsafe(...).result()) would wait forever, or until BlockingStalled.
    future_result = concurrent.futures.Future.result

    def result_probe(self: Any, timeout: float | None = None) -> Any:
        if _INLINE_EXECUTOR and timeout is None and not self.done():
            message = (
                "run_in_executor() runs the function while the loop waits for it, and the function blocks "
                "on a concurrent.futures.Future only the loop can complete (run_coroutine_threadsafe(...).result())"
            )
            _PROBE.unsupported.append(message)
            raise Unsupported(message)
        return future_result(self, timeout)

    concurrent.futures.Future.result = result_probe  # type: ignore[method-assign]

    EventLoop.run_forever = run_forever_probe  # type: ignore[method-assign]
    EventLoop._unsupported = unsupported_probe  # type: ignore[method-assign]
    EventLoop.call_soon_threadsafe = threadsafe_probe  # type: ignore[method-assign]
    EventLoop.run_in_executor = executor_probe  # type: ignore[method-assign]

    if testloop in ("ours", "all"):
        # self.new_test_loop() without a time generator: our loop instead of TestLoop (a
        # generator drives TestLoop's clock by hand; those tests keep TestLoop).
        new_test_loop = test_utils.TestCase.new_test_loop

        def new_test_loop_ours(self: Any, gen: Any = None) -> Any:
            if gen is not None and testloop != "all":
                return new_test_loop(self, gen)
            _PROBE.substituted += 1
            _PROBE.substituted_gen += gen is not None
            loop = factory()
            self.set_event_loop(loop)
            return loop

        test_utils.TestCase.new_test_loop = new_test_loop_ours  # type: ignore[method-assign]


def _error_line(err: Any) -> str:
    exc_type, exc, _tb = err
    lines = "".join(traceback.format_exception_only(exc_type, exc)).strip().splitlines()
    return lines[0] if lines else exc_type.__name__


def _error_text(err: Any) -> str:
    return "".join(traceback.format_exception(*err))[-6000:]


class _Result(unittest.TestResult):
    """Writes one JSON line per finished test to ``out``; a real-time alarm guards each test."""

    def __init__(self, out: io.TextIOBase, timeout: float) -> None:
        super().__init__()
        self.buffer = True  # the tests' prints and logs stay out of the report
        self._out = out
        self._timeout = timeout
        self._status: str = "pass"
        self._error: str = ""
        self._traceback: str = ""
        self._t0 = 0.0

    def _fail(self, status: str, err: Any, prefix: str = "") -> None:
        if self._status in ("pass", "skip"):
            self._status = status
            self._error = prefix + _error_line(err)
            self._traceback = _error_text(err)

    def startTest(self, test: unittest.TestCase) -> None:
        global _PROBE
        _PROBE = _Probe()
        self._status, self._error, self._traceback = "pass", "", ""
        self._out.write(json.dumps({"start": test.id()}) + "\n")
        self._out.flush()
        self._t0 = time.perf_counter()
        # Fires again every second until stopTest: one firing may be swallowed by a task.
        signal.setitimer(signal.ITIMER_REAL, self._timeout, 1.0)
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)
        self.last_id = test.id()
        record = {
            "id": test.id(),
            "status": self._status,
            "error": self._error,
            "traceback": self._traceback,
            "seconds": round(time.perf_counter() - self._t0, 4),
            "probe": _PROBE.__dict__,
        }
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._fail("error", err)

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._fail("fail", err)

    def addSubTest(self, test: unittest.TestCase, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            status = "fail" if issubclass(err[0], test.failureException) else "error"
            self._fail(status, err, prefix=f"{subtest._subDescription()}: ")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        if self._status == "pass":
            self._status, self._error = "skip", reason

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._status, self._error = "fail", "unexpected success"


def _on_alarm(signum: int, frame: Any) -> None:
    raise _TestTimeout("test ran past its real-time budget (interrupted by the harness)")


def _child(module: str, loop_kind: str, seed: int, ordering: str, out_path: str, timeout: float,
           testloop: str = "skip") -> None:
    _instrument(loop_kind, seed, ordering, testloop)
    signal.signal(signal.SIGALRM, _on_alarm)
    mod = importlib.import_module(f"test.test_asyncio.{module}")
    suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
    with open(out_path, "w", buffering=1) as out:
        result = _Result(out, timeout)

        def late(test_id: str, exc: BaseException) -> None:
            err = (type(exc), exc, exc.__traceback__)
            out.write(json.dumps({"late": test_id, "error": _error_line(err), "traceback": _error_text(err)}) + "\n")

        # IsolatedAsyncioTestCase closes its Runner after stopTest and outside unittest's
        # error handling: a failure there (a task that will not finish when cancelled stalls
        # our loop) would end the whole run.  It is charged to the test instead.
        teardown = unittest.IsolatedAsyncioTestCase._tearDownAsyncioRunner

        def teardown_guarded(self: Any) -> None:
            signal.setitimer(signal.ITIMER_REAL, timeout, 1.0)
            try:
                teardown(self)
            except Exception as exc:  # noqa: BLE001 - recorded against the test
                late(self.id(), exc)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)

        unittest.IsolatedAsyncioTestCase._tearDownAsyncioRunner = teardown_guarded  # type: ignore[method-assign]
        # One class at a time, so that whatever still escapes loses one class, not the module.
        for part in suite:
            try:
                part.run(result)
            except Exception as exc:  # noqa: BLE001
                signal.setitimer(signal.ITIMER_REAL, 0)
                late(getattr(result, "last_id", "") or repr(part), exc)
        # setUpModule / tearDownModule / setUpClass failures arrive as _ErrorHolder "tests".
        for holder, text in result.errors:
            if not isinstance(holder, unittest.TestCase):
                record = {"id": holder.id(), "status": "error", "error": text.strip().splitlines()[-1],
                          "traceback": text[-6000:], "seconds": 0.0, "probe": _Probe().__dict__}
                out.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------
# The parent: one child per (module, loop), in parallel; then the comparison.
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # pass, fail, error, skip, crash
    error: str = ""
    traceback: str = ""
    seconds: float = 0.0
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status in ("pass", "skip")

    @property
    def on_testloop_only(self) -> bool:
        """Built a TestLoop and none of ours, or ran a TestLoop and none of ours (a test that
        drives TestLoop's clock by a generator while setUp built one of our loops)."""
        p = self.probe
        return bool(p.get("testloop_created") and not p.get("ours_created")) or bool(
            p.get("testloop_ran") and not p.get("ours_ran")
        )

    @property
    def on_our_loop(self) -> bool:
        return bool(self.probe.get("ours_created")) and not self.on_testloop_only


def _short(test_id: str, module: str) -> str:
    prefix = f"test.test_asyncio.{module}."
    return test_id[len(prefix):] if test_id.startswith(prefix) else test_id


def run_module(module: str, loop_kind: str, seed: int = 0, ordering: str = "fifo",
               python: str | None = None, timeout: float | None = None, testloop: str = "skip") -> dict[str, Outcome]:
    """Run one module on one loop in a child process: test name -> Outcome."""
    timeout = TEST_TIMEOUT[loop_kind] if timeout is None else timeout
    fd, out_path = tempfile.mkstemp(prefix=f"cpython_asyncio.{module}.{loop_kind}.", suffix=".jsonl")
    os.close(fd)
    cmd = [python or sys.executable, os.path.abspath(__file__), "--child", module, loop_kind, str(seed), ordering,
           out_path, str(timeout), testloop]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    note = ""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env)
        if proc.returncode != 0:
            note = f"child exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}"
    except subprocess.TimeoutExpired:
        note = f"child killed after {CHILD_TIMEOUT:.0f}s"
    results: dict[str, Outcome] = {}
    started: str | None = None
    try:
        with open(out_path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "start" in rec:
                    started = rec["start"]
                    continue
                if "late" in rec:  # an error after the test reported (its Runner's close)
                    name = _short(rec["late"], module)
                    prev = results.get(name)
                    if prev is None:
                        results[name] = Outcome("error", "after the test: " + rec["error"], rec["traceback"])
                    else:
                        if prev.passed:
                            prev.status, prev.error = "error", "after the test: " + rec["error"]
                        prev.traceback += "\n--- after the test ---\n" + rec["traceback"]
                    continue
                started = None
                name = _short(rec["id"], module)
                results[name] = Outcome(rec["status"], rec["error"], rec["traceback"], rec["seconds"], rec["probe"])
    finally:
        os.unlink(out_path)
    if started is not None:
        results[_short(started, module)] = Outcome("crash", note or "the child died in this test", note)
    elif note:
        results["<child>"] = Outcome("crash", note.splitlines()[0] if note else "", note)
    return results


def _exclusion(out: Outcome, out_name: str = "") -> str | None:
    """Why a test on our loop does not count, or None."""
    if out.on_testloop_only:
        if out.probe.get("testloop_gen"):
            return "runs on CPython's test_utils.TestLoop with a generator-driven clock (self.new_test_loop(gen)), not on our loop"
        if out.probe.get("ours_created"):
            return "runs on CPython's test_utils.TestLoop (self.new_test_loop()); one of our loops is built but never run"
        return "runs on CPython's test_utils.TestLoop (self.new_test_loop()), never on our loop"
    if out.passed:
        return None
    p = out.probe
    if p.get("substituted_gen"):  # --testloop all: a test written for TestLoop's clock
        method = out_name.rsplit(".", 1)[-1]
        if method in TESTLOOP_CLOCK:
            return "TestLoop clock: " + TESTLOOP_CLOCK[method]
        if "no attribute 'advance_time'" in out.error:
            return "TestLoop clock: moves TestLoop's clock by hand (loop.advance_time())"
        if "within 7 places" in out.error:
            return ("TestLoop clock: asserts the exact deadline after a wake-up (assertAlmostEqual, 7 places); "
                    "our wake-ups may come late by up to one cycle, as a real loop's do")
    if "BlockingStalled" in out.error:
        return "real threads: a blocking function (run_in_executor / to_thread) waits on the event loop (BlockingStalled)"
    if p.get("unsupported"):
        reasons = sorted(set(p["unsupported"]))
        if any("thread" in r for r in reasons):
            return "real threads: " + "; ".join(reasons)
        return "real I/O: " + "; ".join(reasons)
    if p.get("threads"):
        return f"real threads: starts {p['threads']} threading.Thread(s), which the single-threaded deterministic loop does not serve"
    if p.get("executor"):
        return "run_in_executor runs inline on our loop (no worker thread), the test needs a concurrent worker"
    return None


@dataclass
class ModuleComparison:
    module: str
    stock: dict[str, Outcome]
    ours: dict[int, dict[str, Outcome]]  # seed -> results
    excluded: dict[str, str] = field(default_factory=dict)  # test -> reason (any seed)
    regressions: dict[str, dict[int, Outcome]] = field(default_factory=dict)  # test -> seed -> outcome
    improvements: dict[str, dict[int, Outcome]] = field(default_factory=dict)  # fails on stock only

    def classify(self) -> None:
        """Per seed: an outcome with a reason is excluded; a failure without one, where stock
        passes, is a regression (a test that is both, on different seeds, is a regression)."""
        for seed, results in self.ours.items():
            for name, out in results.items():
                reason = KNOWN_EXCLUSIONS.get(f"{self.module}.{name}") or _exclusion(out, name)
                if reason is not None:
                    self.excluded.setdefault(name, reason)
                    continue
                base = self.stock.get(name)
                if base is None or base.passed:
                    if not out.passed:
                        self.regressions.setdefault(name, {})[seed] = out
                elif out.passed:
                    self.improvements.setdefault(name, {})[seed] = out
            for name, base in self.stock.items():  # a test that never reported on ours
                if base.passed and name not in results and name not in self.excluded:
                    self.regressions.setdefault(name, {})[seed] = Outcome("crash", "did not run on our loop")
        for name in self.regressions:
            self.excluded.pop(name, None)

    def counts(self, results: dict[str, Outcome]) -> tuple[int, int]:
        return sum(o.passed for o in results.values()), len(results)


@dataclass
class Comparison:
    python: str
    ordering: str
    modules: list[ModuleComparison]
    testloop: str = "skip"

    @property
    def regressions(self) -> list[tuple[str, str, dict[int, Outcome]]]:
        return [(m.module, name, seeds) for m in self.modules for name, seeds in sorted(m.regressions.items())]


def compare(modules: Sequence[str] = MODULES, seeds: Sequence[int] = (0,), ordering: str = "fifo",
            jobs: int | None = None, timeout: float | None = None, testloop: str = "skip") -> Comparison:
    """Run every module on stock asyncio and on our loop per seed (in parallel children)."""
    jobs = jobs or max(1, min(os.cpu_count() or 1, 8))
    runs: list[tuple[str, str, int]] = []
    for module in modules:
        runs.append((module, "stock", 0))
        runs.extend((module, "ours", seed) for seed in seeds)
    # Longest modules first, so the pool does not end on test_tasks alone.
    order = {m: i for i, m in enumerate(reversed(MODULES))}
    runs.sort(key=lambda r: -order.get(r[0], len(order)))
    with ThreadPoolExecutor(jobs) as pool:
        futures = {run: pool.submit(run_module, run[0], run[1], run[2], ordering, None, timeout, testloop) for run in runs}
        done = {run: fut.result() for run, fut in futures.items()}
    out = []
    for module in modules:
        mc = ModuleComparison(module, done[(module, "stock", 0)], {s: done[(module, "ours", s)] for s in seeds})
        mc.classify()
        out.append(mc)
    return Comparison(sys.version.split()[0], ordering, out, testloop)


def _available_modules(names: Iterable[str]) -> tuple[list[str], list[str]]:
    found, missing = [], []
    for name in names:
        try:
            spec = importlib.util.find_spec(f"test.test_asyncio.{name}")
        except Exception:  # noqa: BLE001
            spec = None
        (found if spec is not None else missing).append(name)
    return found, missing


def report(cmp: Comparison, verbose: bool = False, markdown: bool = False) -> str:
    lines = [f"CPython {cmp.python} test_asyncio modules: stock asyncio vs deterministic.EventLoop(ordering={cmp.ordering!r})"
             + {"ours": " (new_test_loop() without a generator answered with our loop)",
                "all": " (every new_test_loop() answered with our loop)"}.get(cmp.testloop, ""), ""]
    for m in cmp.modules:
        sp, st = m.counts(m.stock)
        lines.append(f"{m.module}: stock {sp}/{st} passed")
        for seed, results in m.ours.items():
            op, ot = m.counts(results)
            on_ours = sum(o.on_our_loop for o in results.values())
            excl = sum(1 for n in results if n in m.excluded)
            counted = {n: o for n, o in results.items() if n not in m.excluded}
            cp, ct = m.counts(counted)
            lines.append(
                f"  ours seed {seed}: {op}/{ot} passed; {on_ours} ran on our loop; {excl} excluded; "
                f"{cp}/{ct} passed of the rest; {sum(1 for n in m.regressions if seed in m.regressions[n])} regressions"
            )
        if m.excluded:
            lines.append(f"  excluded ({len(m.excluded)}):")
            for name, reason in _grouped(m.excluded):
                lines.append(f"    - {name}: {reason}")
        if m.regressions:
            lines.append(f"  failing on ours, passing on stock ({len(m.regressions)}):")
            for name, seeds in sorted(m.regressions.items()):
                first = next(iter(seeds.values()))
                tag = ",".join(map(str, seeds))
                sub = " (new_test_loop substituted)" if first.probe.get("substituted") else ""
                lines.append(f"    - {name} [seed {tag}]{sub} {first.status}: {first.error}")
                if verbose:
                    lines.extend("        " + t for t in first.traceback.rstrip().splitlines()[-25:])
        if m.improvements:
            lines.append(f"  passing on ours, failing on stock ({len(m.improvements)}):")
            for name, seeds in sorted(m.improvements.items()):
                lines.append(f"    - {name} [seed {','.join(map(str, seeds))}]: stock: {m.stock[name].error}")
        lines.append("")
    if markdown:
        lines.append(markdown_exclusions(cmp))
    return "\n".join(lines)


def _grouped(excluded: dict[str, str]) -> list[tuple[str, str]]:
    """Whole classes excluded for one reason collapse to ``Class.*``."""
    by_class: dict[str, list[tuple[str, str]]] = {}
    for name, reason in sorted(excluded.items()):
        cls = name.rsplit(".", 1)[0] if "." in name else name
        by_class.setdefault(cls, []).append((name, reason))
    out: list[tuple[str, str]] = []
    for cls, items in by_class.items():
        reasons = {r for _, r in items}
        if len(items) > 3 and len(reasons) == 1:
            out.append((f"{cls}.* ({len(items)} tests)", items[0][1]))
        else:
            out.extend(items)
    return out


def markdown_exclusions(cmp: Comparison) -> str:
    """The excluded tests as a markdown list: one item per module and reason; classes that
    share the same excluded methods (the Task/Future variants of one base) share a line."""
    mode = {"ours": ", --testloop ours", "all": ", --testloop all"}.get(cmp.testloop, "")
    lines = [f"Excluded CPython {cmp.python} asyncio tests (deterministic.EventLoop, ordering={cmp.ordering!r}{mode}):", ""]
    for m in cmp.modules:
        sizes: dict[str, int] = {}
        for name in m.stock:
            cls = name.rsplit(".", 1)[0]
            sizes[cls] = sizes.get(cls, 0) + 1
        by_reason: dict[str, dict[str, list[str]]] = {}
        for name, reason in sorted(m.excluded.items()):
            cls, _, method = name.rpartition(".")
            by_reason.setdefault(reason, {}).setdefault(cls, []).append(method)
        for reason, classes in by_reason.items():
            total = sum(len(v) for v in classes.values())
            lines.append(f"- `{m.module}` ({total} tests): {reason}")
            whole = [c for c, methods in classes.items() if len(methods) == sizes.get(c)]
            if whole:
                lines.append(f"  - all tests of {', '.join(f'`{c}`' for c in whole)}")
            partial = {c: methods for c, methods in classes.items() if c not in whole}
            if partial:
                counts: dict[str, int] = {}
                for methods in partial.values():
                    for method in methods:
                        counts[method] = counts.get(method, 0) + 1
                names = [f"`{t}`" + (f" ({k} of {len(partial)})" if k != len(partial) else "")
                         for t, k in sorted(counts.items())]
                lines.append(f"  - in {', '.join(f'`{c}`' for c in partial)}: {', '.join(names)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        module, loop_kind, seed, ordering, out_path, timeout, testloop = argv[1:8]
        _child(module, loop_kind, int(seed), ordering, out_path, float(timeout), testloop)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0", help="comma-separated seeds for our loop (default 0)")
    ap.add_argument("--modules", default=",".join(MODULES), help="comma-separated test_asyncio modules")
    ap.add_argument("--ordering", default="fifo", help="EventLoop ordering (default fifo)")
    ap.add_argument("--testloop", choices=("skip", "ours", "all"), default="skip",
                    help="tests on self.new_test_loop(): skip them (default); 'ours': those without a clock "
                         "generator run on our loop instead of CPython's TestLoop; 'all': every one does (the "
                         "generator, which checks each timer's deadline and moves TestLoop's clock, is ignored: "
                         "our clock jumps to the next timer by itself)")
    ap.add_argument("--jobs", type=int, default=None, help="child processes in parallel")
    ap.add_argument("--timeout", type=float, default=None, help="real seconds per test (default 60 stock, 10 ours)")
    ap.add_argument("--verbose", action="store_true", help="tracebacks of the regressions")
    ap.add_argument("--markdown", action="store_true", help="also print the excluded tests as a markdown list")
    ap.add_argument("--json", metavar="FILE", help="write every outcome to FILE")
    args = ap.parse_args(argv)
    why = test_package_available()
    if why:
        print(why, file=sys.stderr)
        return 2
    modules, missing = _available_modules(m.strip() for m in args.modules.split(",") if m.strip())
    for name in missing:
        print(f"{name}: not in this Python's test_asyncio, skipped", file=sys.stderr)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t0 = time.perf_counter()
    cmp = compare(modules, seeds, args.ordering, args.jobs, args.timeout, args.testloop)
    print(report(cmp, verbose=args.verbose, markdown=args.markdown))
    print(f"({time.perf_counter() - t0:.1f}s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": cmp.python, "ordering": cmp.ordering, "modules": {
                m.module: {
                    "stock": {n: o.__dict__ for n, o in m.stock.items()},
                    "ours": {str(s): {n: o.__dict__ for n, o in r.items()} for s, r in m.ours.items()},
                    "excluded": m.excluded,
                    "regressions": {n: sorted(s) for n, s in m.regressions.items()},
                } for m in cmp.modules}}, f, indent=1)
    return 1 if cmp.regressions else 0


if __name__ == "__main__":
    sys.exit(main())
