"""pytest-commonware: run ``async def`` tests on commonware runtimes (see docs/plugin.md).

Auto-loaded through the ``pytest11`` entry point ``commonware``.  The hooks here are thin:
options and plans come from ``engine``, the plugin's own hook specifications from ``hooks``,
the sweep summary from ``summary``; trace files, the golden file and ``--cw-bisect`` are
the runtime's (``commonware_runtime.deterministic.tracefile``, ``.golden``, ``.bisect``).

Two kinds of hooks.  Those pytest calls before a session exists (options, configure) or per
test function and item (collection, fixtures, running an item, its report) are this
module's functions.  The session's own state and the hooks that only read or add to it
(the report header, deselection for a replay, collecting reports, the golden file at the
end, the terminal summary) are one ``CommonwareSession`` object, which ``pytest_configure``
registers with the plugin manager and ``pytest_unconfigure`` removes.
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from commonware_runtime import RuntimeStalled, RuntimeTimeout, deterministic
from commonware_runtime.deterministic import strategies
from commonware_runtime.deterministic.golden import GoldenError, load_golden, merge_golden, write_golden
from commonware_runtime.deterministic.tracefile import (
    Divergence,
    config_from_dict,
    Trace,
    TraceError,
    first_divergence,
    load_trace,
    remove_failure_trace,
    trace_from_schedule,
    trace_path,
    write_trace,
)

from . import engine
from .engine import (
    CONTEXT_FIXTURES,
    ContextSlot,
    DeferredFixture,
    MarkerArgs,
    RunSpec,
    Settings,
)
from .summary import Failure, Sweep, describe_failure, repeat_line

CHECK_CHILD_ENV = "PYTEST_COMMONWARE_CHECK_CHILD"  # set in the other-process run of --cw-check-determinism
RUN_PARAM = "_cw_run"  # the hidden fixture every claimed test is parametrized over
SECTION = "commonware"
BISECT_SECTION = "commonware bisect"
EXPLORE_SECTION = "commonware explore"
# Names a hook implementation may not take: a trace naming "swarm" must mean the real one.
BUILTIN_STRATEGIES = frozenset(strategies.strategy_names())


class ExploreLimitWarning(UserWarning):
    """An exploration stopped at --cw-explore-limit before covering every schedule."""


@dataclass
class ItemRun:
    """What one item's run wants to say in its report."""

    lines: list[str] = field(default_factory=list)
    reproduce: str | None = None
    picture: str | None = None  # the command that draws the failing trace as one HTML page


ITEM_RUN = pytest.StashKey[ItemRun]()
FAILURE = pytest.StashKey[Failure]()  # how this item's run failed (type and place)
REPEAT = pytest.StashKey[str]()  # the node id of an earlier seed this one failed like


# ---------------------------------------------------------------------------------------------
# options and hooks


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


# The options whose value may be a number (cw_horizon also takes "auto" and "none").
NUMBER_OPTIONS = frozenset({"cw_seeds", "cw_seed_base", "cw_seed", "cw_explore", "cw_explore_limit", "cw_fifo_check",
                            "cw_horizon"})
# Text first, so that an ini file's text stays text for the option's own parser and errors.
NUMBER_INI_TYPE: Any = (str | int) if pytest.version_tuple[:2] >= (9, 2) else "string"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("commonware", "commonware runtime (deterministic simulation)")

    def add(flag: str, ini: str, help: str, **kwargs: Any) -> None:
        group.addoption(flag, dest=ini, default=None, help=help, **kwargs)
        # pytest 9.2 checks the types of its native [tool.pytest] TOML table: a number there
        # (cw_seeds = 1000) must be declared as one; ini files still hand over text.
        kind: Any = NUMBER_INI_TYPE if ini in NUMBER_OPTIONS else "string"
        parser.addini(ini, help=help, type=kind, default=None)

    add("--cw-seeds", "cw_seeds", "run each deterministic test on N seeds (default 1; overrides markers' seeds=)", metavar="N")
    add("--cw-seed-base", "cw_seed_base", "the first seed (default 0): seeds are B .. B+N-1", metavar="B")
    add("--cw-seed", "cw_seed", "run exactly seed S", metavar="S")
    add("--cw-runtime", "cw_runtime", "deterministic|production|both: override every marker's runtime", metavar="RUNTIME")
    add("--cw-traces", "cw_traces", "where trace files are written (default traces/)", metavar="DIR")
    add("--cw-record", "cw_record", "failed|all|none: which deterministic runs write a trace (default failed)", metavar="MODE")
    add("--cw-replay", "cw_replay", "replay the trace FILE: run only the test it names, driven by its schedule", metavar="FILE")
    add("--cw-bisect", "cw_bisect", "find the decisive decision and a minimal schedule of the failing trace FILE", metavar="FILE")
    add("--cw-golden", "cw_golden", "compare every (test, seed) auditor state with FILE (default traces/golden.yaml when it exists)", metavar="FILE")
    add("--cw-strategy", "cw_strategy", f"scheduling strategy of every deterministic test (default {engine.DEFAULT_STRATEGY}; "
        "random, pct[:D[:H]], pos, swarm, canonical, or a name registered through the pytest_commonware_strategies "
        "hook); overrides markers", metavar="NAME")
    add("--cw-ordering", "cw_ordering", "any|fifo: which orders may happen (default any: tasks in any order, as the "
        "Context contract allows; fifo: asyncio's registration order, only timing varies); overrides markers",
        metavar="ORDERING")
    add("--cw-explore", "cw_explore", "instead of seeds, run every schedule within K deviations of the canonical one "
        "(one item per deterministic test, id [explore=K])", metavar="K")
    add("--cw-explore-limit", "cw_explore_limit", f"stop an exploration after N schedules (default "
        f"{engine.DEFAULT_EXPLORE_LIMIT})", metavar="N")
    add("--cw-horizon", "cw_horizon", "how many contested decisions pct and swarm spread their priority changes over: "
        "auto (default: measured by one canonical run of each test), none (drawn per run), or a number", metavar="H")
    add("--cw-fifo-check", "cw_fifo_check", f"when a seed fails under ordering any, rerun the test on K fifo schedules "
        f"to say whether stock asyncio can fail the same way (default {engine.DEFAULT_FIFO_CHECK}; 0: off)", metavar="K")
    def flag(flag: str, ini: str, help: str, ini_help: str) -> None:
        group.addoption(flag, dest=ini, action="store_true", default=None, help=help)
        parser.addini(ini, help=ini_help, type="bool", default=False)

    flag("--cw-check-determinism", "cw_check_determinism", "rerun every deterministic seed in this process and in a "
         "fresh one with another PYTHONHASHSEED, and fail when the runs differ", "run every deterministic seed twice")
    parser.addini("cw_check_pythons", type="args", default=[],
                  help="with --cw-check-determinism: Python interpreters (commands or paths, each with this "
                       "project and pytest-commonware installed) that also run every checked seed, and must run it "
                       "the same")
    flag("--cw-update-golden", "cw_update_golden", "write/refresh the golden file instead of comparing with it",
         "write/refresh the golden file")
    flag("--cw-full-tracebacks", "cw_full_tracebacks", "print the full traceback of every failing seed (default: one "
         "per distinct failure, the other seeds one line each; -v does the same)",
         "print the full traceback of every failing seed")
    flag("--cw-keep-traces", "cw_keep_traces", "keep an item's old failure trace when it passes (default: a passing "
         "run removes it)", "keep old failure traces of items that pass")


def _value(config: pytest.Config, name: str) -> tuple[Any, str, Path]:
    """(value, where it came from, the directory a relative path in it is relative to)."""
    value = config.getoption(name)
    if value is not None:
        return value, "--" + name.replace("_", "-"), config.invocation_params.dir
    ini = config.getini(name)
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return (ini if ini not in ("", None, []) else None), f"ini {name}", base


def _flag(config: pytest.Config, name: str) -> bool:
    return bool(config.getoption(name) or config.getini(name))


# The options read alike, in the order their errors are checked: (option, Settings attribute,
# parser of (where it came from, value), whether the report header names where it came from).
_PARSED_OPTIONS: tuple[tuple[str, str, Callable[[str, Any], Any], bool], ...] = (
    ("cw_seeds", "seeds", lambda where, value: engine.parse_int(where, value, 1), True),
    ("cw_seed_base", "seed_base", lambda where, value: engine.parse_int(where, value, 0), True),
    ("cw_seed", "seed", lambda where, value: engine.parse_int(where, value, 0), True),
    ("cw_strategy", "strategy", engine.parse_strategy, True),
    ("cw_ordering", "ordering", lambda where, value: engine.parse_choice(where, value, engine.ORDERINGS), True),
    ("cw_explore", "explore", lambda where, value: engine.parse_int(where, value, 0), True),
    ("cw_explore_limit", "explore_limit", lambda where, value: engine.parse_int(where, value, 1), True),
    ("cw_horizon", "horizon", engine.parse_horizon, True),
    ("cw_fifo_check", "fifo_check", lambda where, value: engine.parse_int(where, value, 0), True),
    ("cw_runtime", "runtime", lambda where, value: engine.parse_choice(where, value, engine.RUNTIMES), False),
    ("cw_record", "record", lambda where, value: engine.parse_choice(where, value, engine.RECORD_MODES), False),
)


def _settings(config: pytest.Config, sources: dict[str, str] | None = None) -> Settings:
    """The options, one rule for all: command line > ini key > marker > default.  ``sources``
    receives, per option given, where it came from (for the report header)."""
    s = Settings(invocation_dir=config.invocation_params.dir)
    if sources is None:
        sources = {}

    def given(name: str) -> tuple[Any, str, Path]:
        value, where, base = _value(config, name)
        if value is not None:
            shown = str(value).strip()
            sources[name] = f"{where}={shown}" if where.startswith("--") else f"{where} = {shown}"
        return value, where, base

    # An ini key is the option given in a file: it overrides markers exactly as the option does.
    for name, attribute, parse, shown in _PARSED_OPTIONS:
        value, where, _ = given(name) if shown else _value(config, name)
        if value is not None:
            setattr(s, attribute, parse(where, value))
    value, where, base = _value(config, "cw_traces")
    s.traces_dir = (base / value) if value is not None else config.rootpath / "traces"
    for name in ("cw_replay", "cw_bisect"):
        value, where, base = _value(config, name)
        if value is not None:
            setattr(s, name[3:], base / value)
    if s.replay is not None and s.bisect is not None:
        raise pytest.UsageError("--cw-replay and --cw-bisect cannot be combined (bisect replays the trace itself)")
    s.check_determinism = _flag(config, "cw_check_determinism")
    s.check_pythons = [str(python) for python in config.getini("cw_check_pythons")]
    if os.environ.get(CHECK_CHILD_ENV):
        s.check_determinism = False  # the other-process run of a check: record, judge nothing
    if s.explore is not None and (s.replay is not None or s.bisect is not None):
        s.explore = None  # the trace names its one run (an explore trace: its own [explore=K] item)
    if s.explore is not None and s.check_determinism:
        raise pytest.UsageError("--cw-explore and --cw-check-determinism cannot be combined (an exploration runs "
                                "many schedules, not one seed twice); check the seeds without --cw-explore")
    s.update_golden = _flag(config, "cw_update_golden")
    if os.environ.get(CHECK_CHILD_ENV):
        s.update_golden = False
    s.full_tracebacks = _flag(config, "cw_full_tracebacks")
    s.keep_traces = _flag(config, "cw_keep_traces")
    value, where, base = _value(config, "cw_golden")
    if value is not None:
        s.golden, s.golden_explicit = base / value, True
    else:
        s.golden = config.rootpath / "traces" / "golden.yaml"
    if os.environ.get(CHECK_CHILD_ENV):
        s.golden, s.golden_explicit = None, False
    return s


def _rootdir_hint(config: pytest.Config) -> str:
    """Why the rootdir may be the wrong one: a trace path given after a space.

    pytest chooses the rootdir before any plugin's options are known, so the value of
    ``--cw-replay PATH`` also counts as a test path there; a trace outside the project then
    moves the rootdir up to a common parent, under which the trace's node id names no file.
    """
    given = list(config.invocation_params.args)
    for option in ("--cw-replay", "--cw-bisect"):
        if option in given[:-1]:
            value = given[given.index(option) + 1]
            return (f"; pytest took {value}, given after a space, for a test path as well and chose the rootdir "
                    f"from it: write {option}={value}")
    return ""


def _load(path: Path, what: str, settings: Settings) -> Trace:
    try:
        trace = load_trace(path)
        # A config the Runner would refuse is a problem of the file, told now, not by the item.
        config_from_dict(trace.config, str(path))
    except TraceError as exc:
        # One line naming the file as the user typed it, and the problem.
        raise pytest.UsageError(f"{what}: {settings.display_path(path)}: {exc.problem}") from None
    return trace


def register_strategies(config: pytest.Config) -> list[str]:
    """Ask every ``pytest_commonware_strategies`` implementation for its strategies and
    register them by name (``deterministic.strategies.register_strategy``)."""
    chosen: dict[str, Any] = {}
    for result in config.hook.pytest_commonware_strategies():
        if result is None:
            continue
        if not isinstance(result, Mapping):
            raise pytest.UsageError(f"pytest_commonware_strategies must return a dict {{name: factory}}, got {result!r}")
        for name, factory in result.items():
            if name in BUILTIN_STRATEGIES:
                raise pytest.UsageError(f"pytest_commonware_strategies: {name!r} is a built-in strategy name "
                                        f"({', '.join(sorted(BUILTIN_STRATEGIES))}); register yours under another name")
            if name in chosen and chosen[name] is not factory:
                raise pytest.UsageError(f"pytest_commonware_strategies: two implementations register strategy {name!r} "
                                        f"with different factories ({chosen[name]!r} and {factory!r})")
            chosen[name] = factory
    for name, factory in chosen.items():
        try:
            strategies.register_strategy(name, factory)
        except (TypeError, ValueError) as exc:
            raise pytest.UsageError(f"pytest_commonware_strategies: {exc}") from None
    return sorted(chosen)


# ---------------------------------------------------------------------------------------------
# the session


SESSION_PLUGIN = "commonware-session"  # its name in the plugin manager


class CommonwareSession:
    """The plugin's state for one pytest session, and its session-level hooks.

    ``pytest_configure`` makes it from the options (reading a replayed or bisected trace and
    the golden file, so that any problem is a usage error before collection) and registers it
    with the plugin manager as ``"commonware-session"``; ``pytest_unconfigure`` unregisters
    it.  This is how pytest-xdist keeps its ``DSession``: the state lives and dies with the
    session (an in-process ``pytester`` run gets its own), and the hooks that read it are its
    methods.  Item-level work (running a seed, a replay, a bisect) is done by the module's
    functions, which take the session (``config.stash[SESSION]``, one lookup per item).
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.sources: dict[str, str] = {}  # option -> where its value came from (the report header)
        settings = self.settings = _settings(config, self.sources)
        self.full_tracebacks = settings.full_tracebacks or (config.getoption("verbose", 0) or 0) >= 1
        self.replay_trace: Trace | None = None
        self.bisect_trace: Trace | None = None
        self.golden: dict[str, str] | None = None  # compared against (None: no golden file)
        self.golden_fresh: dict[str, str] = {}  # --cw-update-golden results
        self.golden_written: str | None = None
        self.first_failures: dict[tuple[str, str], str] = {}  # (type, place) -> first node id
        # --cw-check-determinism: one fresh process per (test function, interpreter, hash
        # seed) runs every seed of the function this session checks; its traces stay here.
        self.elsewhere: dict[tuple[str, str, str], tuple[Path, str]] = {}  # -> (its traces, how it ended)
        self._elsewhere_dir: tempfile.TemporaryDirectory[str] | None = None
        # The traces directory's file names when first looked at, plus the traces written since:
        # a passing item prunes its old trace only if one is there, so a sweep over a clean
        # directory costs no system call per item.
        self.trace_names: set[str] | None = None
        self.strategy_hooks_pending = False  # a plugin implementing the hook was registered since last asked
        self.bisect_reports: list[str] = []  # from every item's report (on the xdist controller too)
        self.explore_reports: list[str] = []
        if settings.replay is not None:
            self.replay_trace = _load(settings.replay, "--cw-replay", settings)
        if settings.bisect is not None:
            self.bisect_trace = _load(settings.bisect, "--cw-bisect", settings)
        if self.bisect_trace is not None and self.bisect_trace.outcome != "failed":
            raise pytest.UsageError(f"--cw-bisect: {settings.display_path(settings.bisect or Path())}: the trace "
                                    f"records a passing run: there is no failure to bisect (replay it with --cw-replay)")
        target = self.target
        if target is not None:
            if target.runtime != "deterministic":
                raise pytest.UsageError(f"{settings.replay or settings.bisect}: only deterministic runs can be replayed")
            # Without explicit paths, collect only the file the trace names (not the whole suite).
            if config.args_source != pytest.Config.ArgsSource.ARGS:
                test_file = config.rootpath / target.test.split("::")[0]
                if not test_file.exists():
                    path = settings.replay or settings.bisect or Path()
                    raise pytest.UsageError(
                        f"{settings.display_path(path)}: the trace names test {target.test!r}, and there is no "
                        f"{target.test.split('::')[0]} under the rootdir {config.rootpath}"
                        f"{_rootdir_hint(config)}")
                config.args = [str(test_file)]
        elif not settings.update_golden and settings.golden is not None:
            if settings.golden.exists():
                try:
                    self.golden = load_golden(settings.golden)
                except GoldenError as exc:
                    raise pytest.UsageError(f"--cw-golden: {exc}") from None
            elif settings.golden_explicit:
                raise pytest.UsageError(f"--cw-golden: {settings.display_path(settings.golden)}: no such file "
                                        f"(create it with --cw-update-golden)")

    def elsewhere_dir(self) -> Path:
        """A directory for the other processes' traces, removed when the session ends."""
        if self._elsewhere_dir is None:
            self._elsewhere_dir = tempfile.TemporaryDirectory(prefix="cw-check-")
        return Path(self._elsewhere_dir.name)

    def close(self) -> None:
        if self._elsewhere_dir is not None:
            self._elsewhere_dir.cleanup()
            self._elsewhere_dir = None

    @property
    def target(self) -> Trace | None:
        """The trace this session replays or bisects (None: a normal session)."""
        return self.replay_trace or self.bisect_trace

    def refresh_strategies(self) -> None:
        """Register the strategies of hook implementations registered since the last time."""
        if self.strategy_hooks_pending:
            self.strategy_hooks_pending = False
            register_strategies(self.config)

    # -- hooks ------------------------------------------------------------------------------

    def pytest_plugin_registered(self, plugin: Any) -> None:
        # conftest.py files below the rootdir are loaded during collection, after configure:
        # their strategies are registered before the tests below them are collected.
        if hasattr(plugin, "pytest_commonware_strategies"):
            self.strategy_hooks_pending = True

    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        target = self.target
        if target is None:
            return
        keep = [item for item in items if engine.same_run(item.nodeid, target.test) and _is_deterministic(item)]
        drop = [item for item in items if item not in keep]
        if not keep:
            path = self.settings.replay or self.settings.bisect
            raise pytest.UsageError(
                f"{path}: the trace names test {target.test!r} (seed {target.seed}), which this session did not "
                f"collect (renamed or removed? run pytest from the directory the trace was recorded in)"
                f"{_rootdir_hint(config)}"
            )
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # On the xdist controller too: user_properties travel with the report.
        if report.when != "call":
            return
        for name, value in getattr(report, "user_properties", ()):
            if name == "cw_bisect":
                self.bisect_reports.append(str(value))
            elif name == "cw_explore":
                self.explore_reports.append(str(value))

    def pytest_report_header(self, config: pytest.Config) -> str:
        """What the deterministic runs of this session are: enough to rerun them from a log."""
        s, src = self.settings, self.sources

        def origin(*names: str) -> str:
            given = [src[n] for n in names if n in src]
            return f" ({', '.join(given)})" if given else ""

        target = self.target
        if target is not None:
            what = "replaying" if self.replay_trace is not None else "bisecting"
            source = s.replay or s.bisect
            path = s.display_path(source) if source is not None else "?"
            cfg = target.config
            return (f"commonware: {what} {path} ({target.test}, seed {target.seed}, strategy "
                    f"{cfg.get('strategy', '?')}, ordering {cfg.get('ordering', '?')})")
        if s.explore is not None:
            first = s.seed if s.seed is not None else s.seed_base
            seeds = (f"explore every schedule within {_plural(s.explore, 'deviation')}{origin('cw_explore')}, "
                     f"at most {s.explore_limit} per test{origin('cw_explore_limit')}, seed {first}")
        elif s.seed is not None:
            seeds = f"seed {s.seed}{origin('cw_seed')}"
        elif s.seeds is not None:
            seeds = f"seeds {s.seed_base}..{s.seed_base + s.seeds - 1}{origin('cw_seeds', 'cw_seed_base')}"
        else:
            seeds = f"seeds from {s.seed_base}, as each test's marker says (default 1){origin('cw_seed_base')}"
        strategy = s.strategy if s.strategy is not None else engine.DEFAULT_STRATEGY
        ordering = s.ordering if s.ordering is not None else engine.DEFAULT_ORDERING
        marked = "" if s.strategy is not None and s.ordering is not None else " (unless a marker says otherwise)"
        fifo = f", fifo check {s.fifo_check}{origin('cw_fifo_check')}" if s.fifo_check != engine.DEFAULT_FIFO_CHECK else ""
        return (f"commonware: {seeds}, strategy {strategy}{origin('cw_strategy')}, "
                f"ordering {ordering}{origin('cw_ordering')}{marked}{fifo}")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: collect a finished worker's golden results."""
        output = getattr(node, "workeroutput", None) or {}
        fresh = output.get("cw_golden")
        if fresh:
            self.golden_fresh.update(fresh)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        settings = self.settings
        if not settings.update_golden:
            return
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller merges and writes
            workeroutput["cw_golden"] = dict(self.golden_fresh)
            return
        path = settings.golden
        if path is None or not self.golden_fresh:
            return
        existing: dict[str, str] = {}
        if path.exists():
            try:
                existing = load_golden(path)
            except GoldenError:
                existing = {}  # being rewritten: a broken file is replaced (said in the summary)
        write_golden(path, merge_golden(existing, self.golden_fresh))
        self.golden_written = f"{settings.display_path(path)}: {len(self.golden_fresh)} auditor state(s) written"

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        for section, reports in ((BISECT_SECTION, self.bisect_reports), (EXPLORE_SECTION, self.explore_reports)):
            if reports:
                terminalreporter.section(section)
                for text in reports:
                    terminalreporter.write_line(text)
                reports.clear()
        if self.golden_written:
            terminalreporter.write_line(f"commonware golden: {self.golden_written}")


SESSION = pytest.StashKey[CommonwareSession]()  # the same object, found in one lookup per item


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "commonware(runtime='deterministic'|'production'|'both', seeds=N|[...], timeout=s, cycle=s, "
        "catch_panics=bool, record='failed'|'all'|'none', strategy=NAME, ordering='any'|'fifo'): "
        "how pytest-commonware runs this async test",
    )
    register_strategies(config)  # before the options: --cw-strategy may name a registered strategy
    cw = CommonwareSession(config)
    config.pluginmanager.register(cw, SESSION_PLUGIN)
    # Registering showed it every plugin registered so far, whose strategies were just asked for.
    cw.strategy_hooks_pending = False
    config.stash[SESSION] = cw
    if not hasattr(config, "workerinput"):  # the process that reports (not an xdist worker)
        traces = cw.settings.display_path(cw.settings.traces_dir)
        config.pluginmanager.register(Sweep(config, cw.full_tracebacks, traces), "commonware-sweep")


def pytest_unconfigure(config: pytest.Config) -> None:
    cw = config.stash.get(SESSION, None)
    if cw is not None:
        del config.stash[SESSION]
        config.pluginmanager.unregister(cw)
        cw.close()


# ---------------------------------------------------------------------------------------------
# collection


def _claimed_fixtures(metafunc_or_item_names: Any) -> list[str]:
    return [name for name in CONTEXT_FIXTURES if name in metafunc_or_item_names]


@dataclass(frozen=True)
class UsageProblem:
    """The run parameter of a test whose marker or fixtures cannot be run: its setup fails
    with the problem, so that every other test still runs and every such problem shows."""

    problem: str


USAGE_ERROR_ID = "commonware-usage-error"


def _claims(metafunc: pytest.Metafunc) -> bool:
    """An ``async def`` test that requests a context fixture or carries the commonware marker is
    the plugin's (and no other async plugin's)."""
    if not inspect.iscoroutinefunction(metafunc.function):
        return False
    return bool(_claimed_fixtures(metafunc.fixturenames)) or metafunc.definition.get_closest_marker("commonware") is not None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not _claims(metafunc):
        return
    if RUN_PARAM not in metafunc.fixturenames:
        metafunc.fixturenames.append(RUN_PARAM)  # claimed by its marker alone
    cw = metafunc.config.stash[SESSION]
    cw.refresh_strategies()
    path, lineno, _ = metafunc.definition.location
    where = f"{metafunc.definition.nodeid} ({path}:{lineno + 1})" if lineno is not None else metafunc.definition.nodeid
    settings = cw.settings
    target = cw.target
    if target is not None:
        # Replaying: the traced seed must be collected, whatever seeds were used to record it
        # (and, for a trace an exploration wrote, as its [explore=K] item).
        settings = Settings(**{**settings.__dict__, "seed": target.seed, "explore": engine.explore_of(target.test)})
    try:
        marker = engine.marker_args(metafunc.definition.iter_markers("commonware"), where)
        specs = engine.plan(settings, marker, metafunc.fixturenames, where)
    except pytest.UsageError as exc:
        # A bad marker belongs to one test: an error of that test alone (at its setup), naming
        # its file and line; the rest of the session runs and shows its own problems.
        problem = UsageProblem(f"usage error: {exc}")
        metafunc.parametrize(RUN_PARAM, [problem], ids=[USAGE_ERROR_ID], indirect=True)
    else:
        metafunc.parametrize(RUN_PARAM, specs, ids=[s.id for s in specs], indirect=True)


def _is_deterministic(item: pytest.Item) -> bool:
    spec = _spec(item)
    return spec is not None and spec.runtime == "deterministic"


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def _cw_run(request: pytest.FixtureRequest) -> RunSpec | None:
    param = getattr(request, "param", None)
    if isinstance(param, UsageProblem):
        pytest.fail(param.problem, pytrace=False)
    return param


def _context_fixture(name: str, request: pytest.FixtureRequest, spec: RunSpec | None) -> ContextSlot:
    if spec is None:
        pytest.fail(
            f"{request.node.nodeid}: {name} is only available to 'async def' tests (the plugin runs them inside "
            f"a runner); a sync test cannot request it",
            pytrace=False,
        )
    return ContextSlot(name)


@pytest.fixture
def deterministic_context(request: pytest.FixtureRequest, _cw_run: RunSpec | None) -> ContextSlot:
    """The root context of the deterministic run this async test runs in."""
    return _context_fixture("deterministic_context", request, _cw_run)


@pytest.fixture
def production_context(request: pytest.FixtureRequest, _cw_run: RunSpec | None) -> ContextSlot:
    """The root context of the production run this async test runs in."""
    return _context_fixture("production_context", request, _cw_run)


@pytest.fixture
def runtime_context(request: pytest.FixtureRequest, _cw_run: RunSpec | None) -> ContextSlot:
    """The root context of the runtime the marker (or --cw-runtime) selects for this run."""
    return _context_fixture("runtime_context", request, _cw_run)


@pytest.fixture
def cw_seed(_cw_run: RunSpec | None) -> int | None:
    """The seed of the current deterministic run (None for a production run or an unclaimed test)."""
    return None if _cw_run is None else _cw_run.seed


def _spec(item: pytest.Item) -> RunSpec | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    spec = callspec.params.get(RUN_PARAM)
    return spec if isinstance(spec, RunSpec) else None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
    """``async def`` fixtures of a claimed test are evaluated inside each of its runs.

    The outermost wrapper, so that no other async plugin (pytest-asyncio in auto mode, anyio)
    sees the async function: while the other implementations run, the fixture's function is
    a sync stand-in returning the ``DeferredFixture`` the run evaluates."""
    func = fixturedef.func
    if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)) or _spec(request.node) is None:
        return (yield)
    if fixturedef.scope != "function":
        pytest.fail(
            f"async fixture {fixturedef.argname!r} has scope {fixturedef.scope!r}: async fixtures of commonware "
            f"tests run inside each test's own runner, so they must be function-scoped",
            pytrace=False,
        )
    kwargs = {name: request.getfixturevalue(name) for name in fixturedef.argnames}
    from _pytest.fixtures import (
        resolve_fixture_function,  # binds fixtures defined in test classes
    )

    deferred = DeferredFixture(fixturedef.argname, resolve_fixture_function(fixturedef, request), kwargs)

    def evaluated_inside_the_run(**_: Any) -> DeferredFixture:
        return deferred

    setattr(fixturedef, "func", evaluated_inside_the_run)  # noqa: B010 - typed Final, assigned at run time
    try:
        return (yield)
    finally:
        setattr(fixturedef, "func", func)  # noqa: B010


# ---------------------------------------------------------------------------------------------
# other async plugins (pytest-asyncio, anyio): a claimed test is the plugin's alone

FOREIGN_ASYNC_MARKERS = frozenset({"asyncio", "anyio", "trio"})


class CommonwareFunction(pytest.Function):
    """A test item the plugin runs.  Other async plugins' markers (``asyncio``, ``anyio``,
    ``trio``, on the test, its class or its module, or added by an "auto" mode) are invisible on
    it, so pytest-asyncio and anyio neither convert, run nor warn about it."""

    def iter_markers_with_node(self, name: str | None = None) -> Any:
        for node, mark in super().iter_markers_with_node(name):
            if mark.name not in FOREIGN_ASYNC_MARKERS:
                yield node, mark


def _is_claimed_item(item: Any) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and isinstance(callspec.params.get(RUN_PARAM), (RunSpec, UsageProblem))


def _foreign_backend_mark(mark: Any) -> bool:
    return mark.name == "usefixtures" and tuple(mark.args) == ("anyio_backend",)


def _needs_reclaim(item: pytest.Function) -> bool:
    if type(item) is not pytest.Function:  # e.g. pytest-asyncio's Coroutine item
        return True
    return any(item.get_closest_marker(name) is not None for name in FOREIGN_ASYNC_MARKERS)


def _reclaimed(item: pytest.Function) -> pytest.Function:
    callspec = getattr(item, "callspec", None)
    return CommonwareFunction.from_parent(
        item.parent, name=item.name, callspec=callspec, fixtureinfo=item._fixtureinfo,
        keywords={callspec.id: True} if callspec is not None else None, originalname=item.originalname,
    )


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> Generator[None, Any, None]:
    """Around every other plugin's collection of a test function: the items the plugin claims
    become ``CommonwareFunction`` items (pytest-asyncio made them its own ``Coroutine`` items,
    in auto mode or under an ``asyncio`` marker), and anyio's ``anyio_backend`` fixture, added
    to every coroutine test in its auto mode or under an ``anyio`` marker, is taken off them."""
    outcome = yield
    try:
        result = outcome.get_result()
    except BaseException:  # noqa: BLE001 - pytest reports it
        return
    items = result if isinstance(result, list) else [result] if result is not None else []
    ours = [i for i in items if isinstance(i, pytest.Function) and _is_claimed_item(i)]
    if not ours:
        return
    marks = list(getattr(obj, "pytestmark", []))
    added = [m for m in marks if _foreign_backend_mark(m)]
    if added and "anyio_backend" not in inspect.signature(obj).parameters:  # type: ignore[arg-type]
        # Collected again without the fixture anyio added: not parametrized over its backends.
        obj.pytestmark = [m for m in marks if not _foreign_backend_mark(m)]  # type: ignore[attr-defined]
        items = list(collector._genfunctions(name, obj))
    elif not any(_needs_reclaim(i) for i in ours):
        return
    outcome.force_result([_reclaimed(i) if isinstance(i, pytest.Function) and _is_claimed_item(i) else i
                          for i in items])


# ---------------------------------------------------------------------------------------------
# running


def _reproduce_command(settings: Settings, path: Path) -> str:
    # Always with "=": as a separate argument, pytest would take the path for a test path
    # (and, for a traces directory outside the rootdir, pick another rootdir).
    return f"pytest {shlex.quote('--cw-replay=' + settings.display_path(path))}"


def _picture_command(settings: Settings, path: Path) -> str:
    # Printed, not run: the HTML is drawn only when someone asks for it.
    shown = settings.display_path(path)
    return (f"python -m pytest_commonware trace export {shlex.quote(shown)} --format html "
            f"-o {shlex.quote(shown + '.html')}")


_SEED_ID = re.compile(r"(?<=[\[-])((?:deterministic-)?)(?:seed|explore)=\d+(?=[\]-])")


def _rerun_command(
    item: pytest.Item, settings: Settings, seed: int, *, strategy: str | None = None, ordering: str | None = None,
    golden: bool = False,
) -> str:
    """Without a trace, the seed itself reproduces the run: the same item, alone (with the
    strategy, ordering and horizon it ran under, when they were not the defaults or a
    marker's; with ``golden``, the golden file it was compared with, when one was named)."""
    nodeid = _SEED_ID.sub(lambda m: f"{m.group(1)}seed={seed}", item.nodeid)
    path, sep, rest = nodeid.partition("::")
    shown = settings.display_path(item.config.rootpath / path) + sep + rest
    options = [f"--cw-seed={seed}"]
    if settings.runtime:
        options.append(f"--cw-runtime={settings.runtime}")
    strategy = strategy if strategy is not None else settings.strategy
    if strategy is not None:
        options.append(f"--cw-strategy={strategy}")
    ordering = ordering if ordering is not None else settings.ordering
    if ordering is not None:
        options.append(f"--cw-ordering={ordering}")
    if settings.horizon != "auto":
        options.append(f"--cw-horizon={settings.horizon}")
    if golden and settings.golden_explicit and settings.golden is not None:
        options.append(shlex.quote(f"--cw-golden={settings.display_path(settings.golden)}"))
    return f"pytest {' '.join(options)} {shlex.quote(shown)}"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    spec = _spec(pyfuncitem)
    if spec is None:
        return None
    cw = pyfuncitem.config.stash[SESSION]
    note = ItemRun()
    pyfuncitem.stash[ITEM_RUN] = note
    if FAILURE in pyfuncitem.stash:  # a rerun of the item (e.g. pytest-rerunfailures)
        del pyfuncitem.stash[FAILURE]
    if REPEAT in pyfuncitem.stash:
        del pyfuncitem.stash[REPEAT]
    marker = engine.marker_args(pyfuncitem.iter_markers("commonware"), pyfuncitem.nodeid)
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    testfn = pyfuncitem.obj

    def make_main() -> Any:
        return engine.make_main(testfn, kwargs)

    if spec.runtime == "production":
        factory = getattr(pyfuncitem.config, "_tmp_path_factory", None)
        directory = factory.mktemp("cw-production") if factory is not None else None
        engine.run_production(make_main(), marker, directory)
        return True
    assert spec.seed is not None
    if cw.bisect_trace is not None:
        _run_bisect(pyfuncitem, cw, make_main, note)
    elif cw.replay_trace is not None:
        _run_replay(pyfuncitem, cw, make_main, note)
    elif spec.explore is not None:
        _run_explore(pyfuncitem, cw, spec.seed, spec.explore, marker, make_main, note)
    else:
        _run_seed(pyfuncitem, cw, spec.seed, marker, make_main, note)
    return True


def _classify(item: pytest.Item, cw: CommonwareSession, config: deterministic.Config, main: Any, error: BaseException,
              note: ItemRun) -> None:
    """A failure under ordering "any": does it also happen in fifo (on stock asyncio)?  The
    answer goes first in the item's commonware section."""
    check = engine.fifo_check(config, main, error, cw.settings.fifo_check)
    if check is None:
        return
    note.lines.insert(0, check.line())
    if check.seed is not None:
        assert check.strategy is not None
        note.lines.insert(1, "  rerun it under fifo: " + _rerun_command(
            item, cw.settings, check.seed, strategy=check.strategy, ordering="fifo"))


def _run_seed(item: pytest.Function, cw: CommonwareSession, seed: int, marker: MarkerArgs, make_main: Any, note: ItemRun) -> None:
    settings = cw.settings
    config = engine.deterministic_config(seed, marker, settings)
    # Keyed by the item without its seed: every seed of a test (and of one set of its other
    # parameters, which may shape the run) shares its measured length.
    config = engine.with_horizon(config, _SEED_ID.sub(r"\1seed", item.nodeid), make_main(), settings)
    record = settings.record_for(marker)
    check = settings.check_determinism
    checking = check or bool(os.environ.get(CHECK_CHILD_ENV))
    every = engine.CHECK_CHECKPOINT_EVERY if checking else 1024
    result = engine.run_deterministic(config, make_main(), record=record != "none" or check, checkpoint_every=every,
                                      events=checking)
    if result.schedule is not None and (record == "all" or (record == "failed" and result.error is not None)):
        try:
            trace = trace_from_schedule(result.schedule, test=item.nodeid, seed=seed, config=config.to_dict())
            path = write_trace(trace_path(settings.traces_dir, item.nodeid, seed), trace)
            if cw.trace_names is not None:
                cw.trace_names.add(path.name)
        except (OSError, ValueError) as exc:
            note.lines.append(f"could not write the trace: {exc}")
        else:
            note.lines.append(f"trace written to {settings.display_path(path)}")
            if result.error is not None:
                note.reproduce = _reproduce_command(settings, path)
                note.picture = _picture_command(settings, path)
    if result.error is not None and note.reproduce is None:
        note.reproduce = _rerun_command(item, settings, seed)
    if check:
        _check_determinism(item, cw, seed, config, make_main, result, every, note)
    if result.error is not None:
        _classify(item, cw, config, make_main(), result.error, note)
        raise result.error
    if record != "all":
        _prune_trace(item, cw, seed)
    if result.auditor is not None:
        if settings.update_golden:
            cw.golden_fresh[item.nodeid] = result.auditor
        elif cw.golden is not None and item.nodeid in cw.golden:
            expected = cw.golden[item.nodeid]
            if expected != result.auditor:
                golden = settings.display_path(settings.golden) if settings.golden else "the golden file"
                note.reproduce = _rerun_command(item, settings, seed, golden=True)  # no trace: the run passed
                pytest.fail(
                    f"auditor state changed: {golden} has {expected} for {item.nodeid}, this run ended with "
                    f"{result.auditor} ({result.steps} steps). The run is no longer the same execution; if the "
                    f"change is intended, refresh the file with --cw-update-golden",
                    pytrace=False,
                )


def _prune_trace(item: pytest.Item, cw: CommonwareSession, seed: int) -> None:
    """The item passed: an old failure trace of it would only mislead (unless --cw-keep-traces)."""
    if cw.settings.keep_traces:
        return
    names = cw.trace_names
    if names is None:
        try:
            names = set(os.listdir(cw.settings.traces_dir))
        except OSError:  # no traces directory yet
            names = set()
        cw.trace_names = names
    if not names:
        return
    try:
        path = trace_path(cw.settings.traces_dir, item.nodeid, seed)
        if path.name in names and remove_failure_trace(path):
            names.discard(path.name)
    except (OSError, ValueError):
        pass  # a trace that cannot be removed is no reason to fail a passing test


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _run_explore(item: pytest.Function, cw: CommonwareSession, seed: int, k: int, marker: MarkerArgs, make_main: Any,
                 note: ItemRun) -> None:
    """``--cw-explore=K``: every schedule within K deviations of the canonical one (docs/SPEC.md section 5a)."""
    settings = cw.settings
    config = engine.deterministic_config(seed, marker, settings)
    limit = settings.explore_limit
    found = deterministic.explore(make_main(), config, max_deviations=k, limit=limit)
    n = found.schedules
    within = f"within {_plural(k, 'deviation')}"
    if found.failure is not None:
        where = ", ".join(f"choice point {p} took option {o}" for p, o in sorted(found.deviations.items()))
        summary = (f"explored {_plural(n, 'schedule')} {within} (seed {seed}, ordering {config.ordering}): "
                   f"schedule {n} fails ({where or 'the canonical schedule itself'})")
        note.lines.append(summary)
        if found.schedule is not None and settings.record_for(marker) != "none":
            try:
                # The schedule replays by itself; the config names the strategy the exploration
                # deviates from (Config must name a strategy the replaying side knows).
                traced = config.with_strategy("canonical").to_dict()
                trace = trace_from_schedule(found.schedule, test=item.nodeid, seed=seed, config=traced)
                path = write_trace(trace_path(settings.traces_dir, item.nodeid, seed), trace)
            except (OSError, ValueError, TypeError) as exc:
                note.lines.append(f"could not write the trace: {exc}")
            else:
                note.lines.append(f"trace written to {settings.display_path(path)}")
                note.reproduce = _reproduce_command(settings, path)
                note.picture = _picture_command(settings, path)
        if note.reproduce is None:
            file, sep, rest = item.nodeid.partition("::")
            shown = settings.display_path(item.config.rootpath / file) + sep + rest
            options = [f"--cw-explore={k}", f"--cw-seed={seed}"]
            options += [f"--cw-runtime={settings.runtime}"] if settings.runtime else []
            options += [f"--cw-ordering={settings.ordering}"] if settings.ordering else []
            note.reproduce = f"pytest {' '.join(options)} {shlex.quote(shown)}"
        item.user_properties.append(("cw_explore", f"{item.nodeid}: {summary}"))
        _classify(item, cw, config, make_main(), found.failure, note)
        raise found.failure
    if settings.record_for(marker) != "all":
        _prune_trace(item, cw, seed)
    if found.exhausted:
        line = f"explored all {_plural(n, 'schedule')} {within}: none fails"
        note.lines.append(line)
        item.user_properties.append(("cw_explore", f"{item.nodeid}: {line}"))
        return
    line = (f"stopped after {_plural(n, 'schedule')} (--cw-explore-limit={limit}) before exhausting those {within}: "
            f"none failed so far, but this is no guarantee; raise --cw-explore-limit or lower --cw-explore")
    note.lines.append(line)
    item.user_properties.append(("cw_explore", f"{item.nodeid}: {line}"))
    warnings.warn(ExploreLimitWarning(f"{item.nodeid}: {line}"), stacklevel=1)


def _compare_runs(a: engine.RunResult, b: engine.RunResult) -> str | None:
    if a.schedule is not None and b.schedule is not None:
        where = a.schedule.first_divergence(b.schedule)
        if where is not None:
            return f"{where.message}; auditor {a.auditor} vs {b.auditor}, {a.steps} vs {b.steps} steps"
    if a.auditor != b.auditor or a.steps != b.steps:
        return f"auditor {a.auditor} vs {b.auditor}, {a.steps} vs {b.steps} steps"
    ea = None if a.error is None else type(a.error).__name__
    eb = None if b.error is None else type(b.error).__name__
    if ea != eb:
        return f"run 1 ended with {ea or 'success'}, run 2 with {eb or 'success'}"
    return None


# ---------------------------------------------------------------------------------------------
# --cw-check-determinism: the same seed again, in this process and in a fresh one


# What each kind of first difference is called in the determinism check's report.
_EVENT_WORDS = {
    "task": "scheduling decision",
    "round": "scheduling decision",
    "callback": "scheduling decision",
    "time": "virtual time",
    "timing": "virtual time (a timing choice: how late an idle wake-up was)",
    "length": "scheduling decision (one run made more decisions)",
    "storage": "storage operation",
    "network": "network operation",
    "random": "random draw (context.rng)",
    "metric": "metric",
    "label": "label (a task or metric name)",
    "lifecycle": "run start or restart",
    "other": "an event other than scheduling",
    "auditor": "an event other than scheduling (network, storage, RNG, metrics or a label)",
    "final-auditor": "an event other than scheduling (network, storage, RNG, metrics or a label)",
    "outcome": "outcome",
}


def _kind(d: Divergence) -> str:
    """What kind of event differs first, in words."""
    return _EVENT_WORDS.get(d.event, d.kind)


def _as_trace(result: engine.RunResult, item: pytest.Item, seed: int, config: deterministic.Config) -> Trace | None:
    if result.schedule is None:
        return None
    try:
        return trace_from_schedule(result.schedule, test=item.nodeid, seed=seed, config=config.to_dict())
    except (TypeError, ValueError):
        return None


def _write_pair(settings: Settings, item: pytest.Item, seed: int, one: Trace, two: Trace | Path, suffix: str) -> str:
    """Write run 1 where the item's trace goes and run 2 beside it; the words naming both."""
    try:
        first = write_trace(trace_path(settings.traces_dir, item.nodeid, seed), one)
        second = first.with_name(first.name[: -len(".yaml")] + f".{suffix}.yaml")
        if isinstance(two, Path):
            data = two.read_bytes()
            second.write_bytes(data)
        else:
            write_trace(second, two)
    except (OSError, ValueError) as exc:
        return f"(could not write the traces: {exc})"
    return f"traces: run 1 {settings.display_path(first)}, run 2 {settings.display_path(second)}"


def _hash_seeds() -> tuple[str, str, str]:
    """(this process's PYTHONHASHSEED in words, the child's value, a note when ours is random)."""
    current = os.environ.get("PYTHONHASHSEED", "")
    if current.isdigit() and int(current) < 4294967295:
        return current, str(int(current) + 1), ""
    return ("unset (random)" if not current or current == "random" else current), "0", \
        " (set explicitly, as this process's hash seed is random and unknown)"


def _other_process(item: pytest.Item, cw: CommonwareSession, seed: int, config: deterministic.Config, hashseed: str,
                   python: str = sys.executable) -> Path | str:
    """The seed run again in a fresh interpreter: the path of its trace, or why there is none.

    The first seed of a test function to ask runs, in one process, every seed of that
    function this session checks (an interpreter's start costs more than a seed); the other
    seeds find their traces from it.  An xdist worker runs only its own seed: it does not
    know which of the function's seeds it will be given."""
    function = item.nodeid.split("[", 1)[0]
    if hasattr(item.config, "workerinput"):
        function = item.nodeid
    key = (function, python, hashseed)
    ran = cw.elsewhere.get(key)
    if ran is None:
        if function == item.nodeid:
            nodeids = [item.nodeid]
        else:
            nodeids = [it.nodeid for it in item.session.items
                       if it.nodeid.split("[", 1)[0] == function and _sweep_seed(it) is not None] or [item.nodeid]
        directory = cw.elsewhere_dir() / str(len(cw.elsewhere))
        how = _run_in_fresh_process(item, cw, nodeids, seed, config, hashseed, directory, python)
        ran = cw.elsewhere[key] = (directory, how)
    directory, how = ran
    # Each seed is judged on its own trace: one the process wrote before it ended stands.
    found = trace_path(directory, item.nodeid, seed)
    if not found.exists():
        return f"it wrote no trace for seed {seed} ({how})"
    return found


def _run_in_fresh_process(item: pytest.Item, cw: CommonwareSession, nodeids: list[str], seed: int,
                          config: deterministic.Config, hashseed: str, directory: Path, python: str) -> str:
    """Run the items ``nodeids`` (seeds of one test) in a fresh ``python`` with PYTHONHASHSEED
    ``hashseed``, recording every run into ``directory``; how the process ended, for the
    message of a seed whose trace is missing."""
    settings = cw.settings
    pconfig = item.config
    targets = []
    for nodeid in nodeids:
        path, sep, rest = nodeid.partition("::")
        targets.append(str(pconfig.rootpath / path) + sep + rest)
    args = [python, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider", f"--rootdir={pconfig.rootpath}",
            "--cw-record=all", f"--cw-traces={directory}", "--cw-fifo-check=0"]
    if nodeids == [item.nodeid]:
        args.append(f"--cw-seed={seed}")
    else:  # the child collects the same seeds (node ids) as this session
        for name in ("cw_seeds", "cw_seed_base", "cw_seed"):
            value, _, _ = _value(pconfig, name)
            if value is not None:
                args.append(f"--{name.replace('_', '-')}={value}")
    if pconfig.inipath is not None:
        args += ["-c", str(pconfig.inipath)]
    given = list(pconfig.invocation_params.args)
    for i, arg in enumerate(given):  # the same plugins (on or off)
        if arg == "-p" and i + 1 < len(given):
            args += ["-p", str(given[i + 1])]
        elif arg.startswith("-p") and len(arg) > 2:
            args.append(arg)
    if pconfig.pluginmanager.hasplugin("xdist"):
        args.append("-n0")
    for name in ("cw_strategy", "cw_ordering", "cw_runtime"):
        value, _, _ = _value(pconfig, name)
        if value is not None:
            args.append(f"--{name.replace('_', '-')}={value}")
    if config.horizon is not None:
        args.append(f"--cw-horizon={config.horizon}")
    elif settings.horizon == "none":
        args.append("--cw-horizon=none")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_XDIST") and k != "PYTEST_CURRENT_TEST"}
    env["PYTHONHASHSEED"] = hashseed
    env[CHECK_CHILD_ENV] = "1"
    shown = shlex.join(args) if len(nodeids) == 1 else shlex.join(args[:4]) + f" ... ({len(nodeids)} items)"
    try:
        # The bound a single seed has had (600 s), for each seed of the batch.
        done = subprocess.run(args, cwd=pconfig.invocation_params.dir, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=600 * len(nodeids), check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run it: {exc}"
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    return f"exit code {done.returncode}; {shown}):\n{tail}"


def _check_determinism(item: pytest.Function, cw: CommonwareSession, seed: int, config: deterministic.Config,
                       make_main: Any, first: engine.RunResult, every: int, note: ItemRun) -> None:
    """Run the seed again in this process (wall clock, global random, ...) and in a fresh
    process with another PYTHONHASHSEED (set and dict order of str/bytes); fail naming the
    first event that differs and its kind, with both traces written."""
    settings = cw.settings
    second = engine.run_deterministic(config, make_main(), record=True, checkpoint_every=every, events=True)
    one, two = _as_trace(first, item, seed, config), _as_trace(second, item, seed, config)
    if one is None or two is None:
        problem = _compare_runs(first, second)
        if problem is not None:
            pytest.fail(f"nondeterministic: seed {seed} ran twice and the runs differ: {problem}", pytrace=False)
    else:
        where = first_divergence(one, two)
        if where is not None:
            paths = _write_pair(settings, item, seed, one, two, "rerun")
            pytest.fail(
                f"nondeterministic: seed {seed} ran twice in this process and the runs differ; the first difference "
                f"is a {_kind(where)}: {where.message}. Something outside the runtime's control feeds the run "
                f"(the wall clock such as time.time(), the global random module, os.urandom, threads). {paths}",
                pytrace=False)
    if one is None:
        return  # nothing recorded to compare with another process
    ours, theirs, random_note = _hash_seeds()
    where, found, _ = _run_elsewhere(item, cw, seed, config, one, theirs, sys.executable,
                                     f"in another process (PYTHONHASHSEED={theirs})")
    if where is None:
        note.lines.append(f"determinism check: seed {seed} ran the same in this process and in another process "
                          f"(PYTHONHASHSEED {ours} vs {theirs})")
        _check_pythons(item, cw, seed, config, one, theirs, note)
        return
    paths = _write_pair(settings, item, seed, one, found, "other-process")
    pytest.fail(
        f"nondeterministic: seed {seed} differs across processes; the first difference is a {_kind(where)}: "
        f"{where.message}. The rerun in this process agreed; this process ran with PYTHONHASHSEED={ours}, the other "
        f"with PYTHONHASHSEED={theirs}{random_note}, so the cause is most likely hash-order dependence: iterating a "
        f"set (or a dict built from a set) of str/bytes, whose order changes with PYTHONHASHSEED; iterate sorted(...) "
        f"instead. {paths}",
        pytrace=False)


def _run_elsewhere(item: pytest.Function, cw: CommonwareSession, seed: int, config: deterministic.Config, one: Trace,
                   hashseed: str, python: str, where: str) -> tuple[Divergence | None, Path, Trace]:
    """The seed run by ``python`` in a fresh process (``where`` says so in messages), and how
    its trace differs from ``one``; the item fails when there is no trace to compare."""
    found = _other_process(item, cw, seed, config, hashseed, python)
    if isinstance(found, str):
        pytest.fail(f"--cw-check-determinism: the run of seed {seed} {where} failed to produce a trace to compare "
                    f"with: {found}", pytrace=False)
    try:
        other = load_trace(found)
    except TraceError as exc:
        pytest.fail(f"--cw-check-determinism: the trace of the run {where} cannot be read: {exc}", pytrace=False)
    return first_divergence(one, other), found, other


def _check_pythons(item: pytest.Function, cw: CommonwareSession, seed: int, config: deterministic.Config, one: Trace,
                   hashseed: str, note: ItemRun) -> None:
    """The ini key ``cw_check_pythons``: the seed once more under each listed interpreter
    (with the other process's PYTHONHASHSEED, which agreed), the same run required."""
    for python in cw.settings.check_pythons:
        where, found, other = _run_elsewhere(item, cw, seed, config, one, hashseed, python,
                                             f"under {python} (cw_check_pythons)")
        if where is None:
            note.lines.append(f"determinism check: seed {seed} ran the same under {python} (Python "
                              f"{other.python})")
            continue
        paths = _write_pair(cw.settings, item, seed, one, found, "other-python")
        pytest.fail(
            f"nondeterministic: seed {seed} differs under {python} (Python {other.python}, this process "
            f"{one.python}); the first difference is a {_kind(where)}: {where.message}. The run agreed with itself "
            f"in this process and in another with PYTHONHASHSEED={hashseed}, so the cause is what differs between "
            f"the interpreters (iteration or hash order of an object whose hash changed between versions, a "
            f"library's behaviour, float formatting). {paths}",
            pytrace=False)


def _run_replay(item: pytest.Function, cw: CommonwareSession, make_main: Any, note: ItemRun) -> None:
    trace = cw.replay_trace
    assert trace is not None and cw.settings.replay is not None
    shown = cw.settings.display_path(cw.settings.replay)
    config = engine.config_from_dict(trace.config, shown)
    result = engine.run_deterministic(config, make_main(), replay=trace.schedule)
    recorded = None if trace.error is None else f"{trace.error.get('type')}: {trace.error.get('message')}"
    error = result.error
    from commonware_runtime.deterministic import ReplayDivergence

    rerun = _rerun_command(item, cw.settings, trace.seed, strategy=_traced_strategy(trace),
                           ordering=str(trace.config.get("ordering", "any")))
    if isinstance(error, ReplayDivergence):
        note.lines.append(f"replaying {shown} diverged: the test or the code it runs changed since the trace was "
                          f"recorded, so the trace no longer describes a run of today's code")
        note.lines.append(f"rerun the same seed on today's code: {rerun}")
        pytest.fail(f"{type(error).__name__}: {error}", pytrace=False)
    if error is not None:
        same = trace.error is not None and type(error).__name__ == trace.error.get("type")
        note.lines.append(
            f"replayed {shown}: " + ("reproduced the recorded failure" if same else f"failed differently; recorded: {recorded}")
        )
        note.reproduce = _reproduce_command(cw.settings, cw.settings.replay)
        raise error
    if trace.outcome == "failed":
        # The same schedule now passes: the code changed (a fix that kept every scheduling decision).
        note.lines.append(f"rerun the same seed on today's code: {rerun}")
        pytest.fail(f"replaying {shown} did not reproduce the recorded failure ({recorded}): the run passed, so the "
                    f"test or the code it runs changed since the trace was recorded (or the run depends on something "
                    f"the seed does not fix: --cw-check-determinism tells)", pytrace=False)
    note.lines.append(f"replayed {shown}: passed, as recorded ({result.steps} steps)")


def _traced_strategy(trace: Trace) -> str | None:
    """The strategy name a trace was recorded under, when this session knows it by that name."""
    name = trace.config.get("strategy")
    if isinstance(name, str) and name.split(":")[0] in strategies.strategy_names() and name != "bisect":
        return name
    return None


def _run_bisect(item: pytest.Function, cw: CommonwareSession, make_main: Any, note: ItemRun) -> None:
    from commonware_runtime.deterministic.bisect import BisectError, bisect_trace, min_trace_path

    trace = cw.bisect_trace
    source = cw.settings.bisect
    assert trace is not None and source is not None
    shown = cw.settings.display_path(source)
    try:
        result = bisect_trace(trace, make_main, min_trace_path(source), where=shown,
                              display=cw.settings.display_path)
    except BisectError as exc:
        pytest.fail(f"bisect failed: {exc}", pytrace=False)
    note.lines.append(result.report)
    item.user_properties.append(("cw_bisect", result.report))
    if not result.replay_ok:
        pytest.fail(result.report, pytrace=False)


def _test_place(item: pytest.Item) -> str:
    path, lineno, _ = item.location
    return f"{path}:{lineno + 1}" if lineno is not None else path


def _sweep_seed(item: pytest.Item) -> int | None:
    """The seed of a deterministic item of a seed sweep (not an exploration, a replay or a bisect)."""
    spec = _spec(item)
    if spec is None or spec.runtime != "deterministic" or spec.explore is not None:
        return None
    cw = item.config.stash[SESSION]
    if cw.target is not None:
        return None
    return spec.seed


_NOT_FAILURES = (pytest.skip.Exception, pytest.xfail.Exception, pytest.exit.Exception)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport | None:
    """The report of a failing seed, made cheaply when its traceback is not worth printing: a
    failure like an earlier seed's in this process (one line; the earlier one has the full report)
    or a stall or timeout (raised by the scheduler, or by a production test's timeout, not by
    test code: the message says it all).  Other reports are pytest's own."""
    if call.when != "call" or call.excinfo is None or item.stash.get(ITEM_RUN, None) is None:
        return None
    spec = _spec(item)
    error = call.excinfo.value
    if spec is None or isinstance(error, _NOT_FAILURES):
        return None
    if spec.runtime != "deterministic" and not isinstance(error, engine.TestTimeout):
        return None
    cw = item.config.stash[SESSION]
    failure: Failure | None = None
    first = item.nodeid
    if _sweep_seed(item) is not None:  # one seed of a sweep (not a replay, bisect or exploration)
        failure = describe_failure(error, _test_place(item), item.config.rootpath)
        item.stash[FAILURE] = failure
        first = cw.first_failures.setdefault(failure.key, item.nodeid)
    sections: list[tuple[str, str]] = []
    if failure is not None and first != item.nodeid and not cw.full_tracebacks:
        item.stash[REPEAT] = first
        note = item.stash.get(ITEM_RUN, None)
        # One line, no captured output (it crosses the wire), still ending with its command.
        longrepr = repeat_line(failure, first, note.reproduce if note is not None else None)
    elif isinstance(error, (RuntimeStalled, RuntimeTimeout, engine.TestTimeout)):
        longrepr = f"TimeoutError: {error}" if isinstance(error, engine.TestTimeout) else call.excinfo.exconly()
        sections = [(f"Captured {key} {when}", content) for when, key, content in item._report_sections]
    else:
        return None
    return pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1), "failed", longrepr,
                             "call", sections, call.duration, call.start, call.stop,
                             user_properties=item.user_properties)


@pytest.hookimpl(wrapper=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_wrapper(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    note = item.stash.get(ITEM_RUN, None)
    seed = _sweep_seed(item)
    if seed is not None:
        # For the sweep summary (on the xdist controller too): small values only.
        report.cw_seed = seed
        if report.failed:
            failure = item.stash.get(FAILURE, None) if call.when == "call" else None
            if failure is None and call.excinfo is not None:
                failure = describe_failure(call.excinfo.value, _test_place(item), item.config.rootpath)
            if failure is not None:
                reproduce = note.reproduce if note is not None and call.when == "call" else None
                report.cw_failure = failure.to_wire(reproduce)
    if note is not None and report.when == "call" and REPEAT not in item.stash:
        lines = list(note.lines)
        if note.reproduce and report.failed:
            # PLUGIN.md section 8: the report ends with the command that reproduces the seed.
            if note.picture:
                lines.append(f"picture: {note.picture}")
            lines.append(f"reproduce with: {note.reproduce}")
        if lines:
            report.sections.append((SECTION, "\n".join(lines)))
    return report
