"""The sweep summary: what a session of many seeds per test found, in a few lines per test.

A seed sweep fails the same way on many seeds.  Each failure is described by its exception
type and its *place* (the innermost frame of user code, or where the tasks of a stall or
timeout wait); the first seed that fails a given way keeps its full report, every later one
gets a one-line report (``repeat_line``) that pytest lists in its short test summary instead of
printing the traceback again.  At the end of the session ``Sweep`` prints, per test run on
several seeds, how many seeds failed of how many, the failure rate's 95% (Wilson) interval, the
first failing seeds and the distinct failures with their counts.

Under pytest-xdist the workers shorten their own repeats (so a repeated traceback never
crosses the wire) and the controller, which sees every report in ``pytest_runtest_logreport``,
keeps one full report per distinct failure for the whole session.  A report carries two
small attributes for this: ``cw_seed`` (every deterministic seed's report) and
``cw_failure`` (a failing one: type, place, message, reproduce command).
"""

from __future__ import annotations

import math
import os
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from commonware_runtime.tasks import is_runtime_plumbing

__all__ = ["Failure", "Sweep", "describe_failure", "repeat_line", "wilson"]

SECTION = "commonware sweep"
FIRST_SEEDS = 10  # how many failing seeds the summary names per test
PASSING_LINES = 20  # tests that passed on every seed, one line each, up to this many
MESSAGE_LIMIT = 100

_STALL_SITE = re.compile(r" at (\S+:\d+) in ")


def _library_dirs() -> tuple[str, ...]:
    """Where the code of pytest, this plugin, Python and installed packages lives (the
    runtime's and asyncio's own frames are ``tasks.is_runtime_plumbing``)."""
    import _pytest
    import pluggy

    dirs = {
        os.path.dirname(os.path.abspath(__file__)),
        os.path.dirname(os.path.abspath(_pytest.__file__)),
        os.path.dirname(os.path.abspath(pluggy.__file__)),
    }
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(os.path.abspath(path))
    return tuple(sorted(d.rstrip(os.sep) + os.sep for d in dirs))


_LIBRARIES: tuple[str, ...] | None = None


def _is_user_file(filename: str) -> bool:
    """Not Python's, pytest's, an installed package's or this runtime's own code."""
    global _LIBRARIES
    if not filename or filename.startswith("<"):
        return False
    if _LIBRARIES is None:
        _LIBRARIES = _library_dirs()
    path = os.path.abspath(filename)
    return not (is_runtime_plumbing(path) or path.startswith(_LIBRARIES))


@dataclass(frozen=True)
class Failure:
    """How one seed failed: the exception type and where (``file:line`` in user code)."""

    type: str
    place: str
    message: str

    @property
    def key(self) -> tuple[str, str]:
        return self.type, self.place

    def to_wire(self, reproduce: str | None) -> dict[str, Any]:
        return {"type": self.type, "place": self.place, "message": self.message, "reproduce": reproduce}

    @classmethod
    def from_wire(cls, data: Any) -> Failure | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(str(data["type"]), str(data["place"]), str(data.get("message", "")))
        except KeyError:
            return None


def _relative(filename: str, rootdir: Path) -> str:
    try:
        rel = os.path.relpath(filename, rootdir)
    except ValueError:  # another drive (Windows)
        return filename
    return filename if rel.startswith(os.pardir) else rel


def _innermost_user_frame(tb: TracebackType | None, rootdir: Path) -> str | None:
    place = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if _is_user_file(code.co_filename):
            place = f"{_relative(code.co_filename, rootdir)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return place


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _site_order(site: str) -> tuple[str, int]:
    file, _, line = site.rpartition(":")
    return file, int(line) if line.isdigit() else 0


def describe_failure(error: BaseException, fallback_place: str, rootdir: Path) -> Failure:
    """The type and place of ``error``.  The place is the innermost frame of user code in its
    traceback (or in its cause's, for a wrapper raised by the runtime); for a stall or a timeout,
    raised by the scheduler, the sites the blocked tasks wait at; else ``fallback_place`` (the
    test function)."""
    from commonware_runtime import RuntimeStalled, RuntimeTimeout

    kind = type(error).__name__
    leaf = error
    while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
        leaf = leaf.exceptions[0]
    if leaf is not error:
        kind = f"{kind}({type(leaf).__name__})"
    if isinstance(leaf, (RuntimeStalled, RuntimeTimeout)):
        sites = sorted(set(_STALL_SITE.findall(str(leaf))), key=_site_order)
        where = ", ".join(sites[:4]) + (", ..." if len(sites) > 4 else "") if sites else fallback_place
        return Failure(kind, where, _first_line(leaf))
    place: str | None = None
    seen: set[int] = set()
    current: BaseException | None = leaf
    while current is not None and place is None and id(current) not in seen:
        seen.add(id(current))
        place = _innermost_user_frame(current.__traceback__, rootdir)
        current = current.__cause__ or current.__context__
    return Failure(kind, place or fallback_place, _first_line(leaf))


def repeat_line(failure: Failure, first: str, reproduce: str | None = None) -> str:
    """The whole report of a seed that failed like an earlier one (``first``, its node id),
    ending with the command that reproduces this seed when there is one."""
    message = f": {failure.message}" if failure.message else ""
    command = f"; reproduce with: {reproduce}" if reproduce else ""
    return (f"{failure.type} at {failure.place}{message} [the same failure as {first}, shown in full; "
            f"every one in full: --cw-full-tracebacks]{command}")


def wilson(failed: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a failure rate ``failed / total`` (95% by default)."""
    if total <= 0:
        return 0.0, 1.0
    p = failed / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if failed == 0 else max(0.0, centre - half)
    high = 1.0 if failed == total else min(1.0, centre + half)
    return low, high


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


# One pattern for every seed: a pattern per seed would be compiled anew for each item of a sweep.
_SEED_PARAM = re.compile(r"(^|-)seed=(\d+)(?=-|$)")
_DASHES = re.compile(r"--+")


def group_of(nodeid: str, seed: int) -> str:
    """The test a seed's node id belongs to: the id without its seed parameter."""
    head, bracket, params = nodeid.partition("[")
    if not bracket:
        return nodeid
    params = params[:-1] if params.endswith("]") else params
    rest = _SEED_PARAM.sub(lambda m: m.group(1) if m.group(2) == str(seed) else m.group(0), params)
    rest = _DASHES.sub("-", rest).strip("-")
    return f"{head}[{rest}]" if rest else head


@dataclass
class _Distinct:
    failure: Failure
    first_nodeid: str
    first_seed: int
    reproduce: str | None
    seeds: int = 0


@dataclass
class _Test:
    seeds: dict[str, tuple[int, bool]] = field(default_factory=dict)  # node id -> (seed, failed)
    distinct: dict[tuple[str, str], _Distinct] = field(default_factory=dict)
    traced: int = 0  # failing seeds whose reproduce command replays a trace

    def failed_seeds(self) -> list[int]:
        return sorted(seed for seed, failed in self.seeds.values() if failed)


class Sweep:
    """The summary's bookkeeping on the process that reports (the controller under xdist)."""

    def __init__(self, config: pytest.Config, full: bool, traces: str | None) -> None:
        self.config = config
        self.full = full
        self.traces = traces
        self.tests: dict[str, _Test] = {}
        self.first: dict[tuple[str, str], str] = {}  # distinct failure -> node id of its full report

    # -- hooks ---------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        seed = getattr(report, "cw_seed", None)
        if not isinstance(seed, int) or isinstance(seed, bool):
            return
        if report.skipped:
            return  # a skipped or xfailed seed is no run of the sweep
        if report.when == "call" or report.failed:
            self._count(report, seed)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = self.lines()
        if lines:
            terminalreporter.ensure_newline()  # after a verbose progress line: no blank line below the header
            terminalreporter.section(SECTION)
            for line in lines:
                terminalreporter.write_line(line)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _count(self, report: pytest.TestReport, seed: int) -> None:
        test = self.tests.setdefault(group_of(report.nodeid, seed), _Test())
        failed = bool(report.failed)
        before = test.seeds.get(report.nodeid)
        if before is not None and before[1]:
            return  # counted once: a seed whose call failed and whose teardown errored too
        test.seeds[report.nodeid] = (seed, failed)
        if not failed:
            return
        wire = getattr(report, "cw_failure", None)
        failure = Failure.from_wire(wire)
        if failure is None:
            failure = Failure(f"error at {report.when}" if report.when != "call" else "failure", "?", "")
        reproduce = wire.get("reproduce") if isinstance(wire, dict) else None
        test.traced += isinstance(reproduce, str) and "--cw-replay=" in reproduce
        distinct = test.distinct.get(failure.key)
        if distinct is None:
            distinct = test.distinct[failure.key] = _Distinct(failure, report.nodeid, seed, reproduce)
        elif seed < distinct.first_seed:  # under xdist reports arrive in any order: name the lowest seed
            distinct.first_nodeid, distinct.first_seed, distinct.reproduce = report.nodeid, seed, reproduce
        distinct.seeds += 1
        if report.when != "call" or wire is None:
            return
        first = self.first.setdefault(failure.key, report.nodeid)
        if first != report.nodeid and not self.full:
            # Shown once: this one is a line in the short test summary, not another traceback.
            report.longrepr = repeat_line(failure, first, reproduce if isinstance(reproduce, str) else None)
            report.sections = []
            report._pdbshown = True  # type: ignore[attr-defined]  # pytest's "already shown" mark

    def lines(self) -> list[str]:
        failing: list[str] = []
        passing: list[str] = []
        for name, test in self.tests.items():
            total = len(test.seeds)
            if total < 2:
                continue
            bad = test.failed_seeds()
            low, high = wilson(len(bad), total)
            if not bad:
                passing.append(f"{name}: 0 of {total} seeds failed (95% interval {_percent(low)}-{_percent(high)})")
                continue
            failing.append(f"{name}: {len(bad)} of {total} seeds failed, {_percent(len(bad) / total)} "
                           f"(95% interval {_percent(low)}-{_percent(high)})")
            shown = ", ".join(str(s) for s in bad[:FIRST_SEEDS])
            more = f", ... ({len(bad) - FIRST_SEEDS} more)" if len(bad) > FIRST_SEEDS else ""
            failing.append(f"  first failing seeds: {shown}{more}")
            for d in sorted(test.distinct.values(), key=lambda d: (-d.seeds, d.first_seed)):
                f = d.failure
                message = f": {f.message}" if f.message else ""
                failing.append(f"  {d.seeds} seed{'s' if d.seeds != 1 else ''}: {f.type} at {f.place}{message}")
                if d.reproduce:
                    failing.append(f"    seed {d.first_seed}: {d.reproduce}")
        lines = failing
        if failing:
            # Of the tests listed above (those of two seeds or more).
            listed = [t for t in self.tests.values() if len(t.seeds) >= 2]
            traced = sum(t.traced for t in listed)
            failures = sum(len(t.failed_seeds()) for t in listed)
            where = ""
            if self.traces and traced:
                which = "every failing seed" if traced == failures else f"{traced} failing seeds"
                where = f" (the trace of {which} is in {self.traces.rstrip('/')}/)"
            how = "" if self.full else "; every traceback in full: -v or --cw-full-tracebacks"
            lines.append(f"each distinct failure's first seed is shown in full above, the others in one line{where}{how}")
        if passing:
            lines.extend(passing[:PASSING_LINES])
            if len(passing) > PASSING_LINES:
                lines.append(f"... and {len(passing) - PASSING_LINES} more tests passed on every seed")
        return lines
