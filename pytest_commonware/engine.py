"""The plugin's engine: options, the run plan of a test, and running one test function on a runner.

Nothing here is a pytest hook.  ``plugin.py`` translates pytest's hooks into calls of this
module (the way pytest-xdist keeps its hooks thin over its scheduling code), so the rules
"which seeds", "which runtime", "how is one run made and judged" live in one readable place.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from commonware_runtime import deterministic, production
from commonware_runtime.deterministic import strategies, tracefile

__all__ = [
    "CONTEXT_FIXTURES",
    "DEFAULT_ORDERING",
    "DEFAULT_STRATEGY",
    "ORDERINGS",
    "RECORD_MODES",
    "RUNTIMES",
    "ContextSlot",
    "DeferredFixture",
    "MarkerArgs",
    "RunResult",
    "RunSpec",
    "Settings",
    "TestTimeout",
    "deterministic_config",
    "fifo_check",
    "make_main",
    "marker_args",
    "plan",
    "run_deterministic",
    "run_production",
    "seed_list",
]

T = TypeVar("T")

CONTEXT_FIXTURES = ("deterministic_context", "production_context", "runtime_context")
RUNTIMES = ("deterministic", "production", "both")
RECORD_MODES = ("failed", "all", "none")
MARKER_KEYS = ("runtime", "seeds", "timeout", "cycle", "catch_panics", "record", "strategy", "ordering")
ORDERINGS = strategies.ORDERINGS  # ("any", "fifo"): docs/SPEC.md section 5a
DEFAULT_STRATEGY = "swarm"  # the plugin's default (deterministic.Config's own default is "random")
DEFAULT_ORDERING = "any"
DEFAULT_EXPLORE_LIMIT = 10_000
DEFAULT_FIFO_CHECK = 20
# Auditor checkpoints every this many steps when two runs are compared: the second run's
# first differing auditor state is then located to within a few decisions.
CHECK_CHECKPOINT_EVERY = 16


# ---------------------------------------------------------------------------------------------
# what a test item runs


@dataclass(frozen=True)
class RunSpec:
    """One pytest item's run: the runtime and, when deterministic, the seed (or, under
    ``--cw-explore=K``, the exploration of every schedule within K deviations on that seed)."""

    runtime: str  # "deterministic" | "production"
    seed: int | None
    both: bool = False  # the test runs on both runtimes: the id names the runtime
    explore: int | None = None  # max deviations: the item explores instead of running one seed

    @property
    def id(self) -> str:
        if self.runtime == "production":
            return "production"
        what = f"explore={self.explore}" if self.explore is not None else f"seed={self.seed}"
        return f"deterministic-{what}" if self.both else what


@dataclass(frozen=True)
class MarkerArgs:
    """The merged ``@pytest.mark.commonware(...)`` arguments of one test (closest marker wins per key)."""

    runtime: str | None = None
    seeds: int | tuple[int, ...] | None = None
    timeout: float | None = None
    cycle: float | None = None
    catch_panics: bool | None = None
    record: str | None = None
    strategy: str | deterministic.Strategy | None = None
    ordering: str | None = None


def _usage(where: str, message: str) -> pytest.UsageError:
    return pytest.UsageError(f"{where}: {message}")


def _validate_marker_value(where: str, key: str, value: Any) -> Any:
    if key == "runtime":
        if value not in RUNTIMES:
            raise _usage(where, f"@pytest.mark.commonware(runtime={value!r}): runtime must be one of {', '.join(RUNTIMES)}")
        return value
    if key == "seeds":
        if isinstance(value, bool):
            raise _usage(where, f"@pytest.mark.commonware(seeds={value!r}): seeds must be a count or a list of seeds")
        if isinstance(value, int):
            if value < 1:
                raise _usage(where, f"@pytest.mark.commonware(seeds={value!r}): the seed count must be at least 1")
            return value
        if isinstance(value, (list, tuple, range)):
            seeds = tuple(value)
            if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
                raise _usage(where, f"@pytest.mark.commonware(seeds={value!r}): a seed list must hold non-negative ints")
            return seeds
        raise _usage(where, f"@pytest.mark.commonware(seeds={value!r}): seeds must be a count or a list of seeds")
    if key in ("timeout", "cycle"):
        if value is None and key == "timeout":
            return None
        seconds = value.total_seconds() if isinstance(value, timedelta) else value
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0 or seconds == float("inf"):
            raise _usage(where, f"@pytest.mark.commonware({key}={value!r}): {key} must be a positive, finite "
                                f"number of seconds or a timedelta")
        return float(seconds)
    if key == "catch_panics":
        if not isinstance(value, bool):
            raise _usage(where, f"@pytest.mark.commonware(catch_panics={value!r}): catch_panics must be a bool")
        return value
    if key == "record":
        if value is True:
            return "all"
        if value is False:
            return "none"
        if value not in RECORD_MODES:
            raise _usage(where, f"@pytest.mark.commonware(record={value!r}): record must be one of {', '.join(RECORD_MODES)} (or a bool)")
        return value
    if key == "strategy":
        try:
            strategies.make_strategy(value)
        except (TypeError, ValueError) as exc:
            raise _usage(where, f"@pytest.mark.commonware(strategy={value!r}): {exc}") from None
        return value.strip() if isinstance(value, str) else value
    if key == "ordering":
        if value not in ORDERINGS:
            raise _usage(where, f"@pytest.mark.commonware(ordering={value!r}): ordering must be one of {', '.join(ORDERINGS)}")
        return value
    raise AssertionError(key)


def marker_args(markers: Iterable[Any], where: str) -> MarkerArgs:
    """Merge ``commonware`` markers, closest first (as ``node.iter_markers`` yields them)."""
    values: dict[str, Any] = {}
    for mark in markers:
        if mark.args:
            raise _usage(where, f"@pytest.mark.commonware takes keyword arguments only ({', '.join(MARKER_KEYS)}), got {mark.args!r}")
        for key, value in mark.kwargs.items():
            if key not in MARKER_KEYS:
                raise _usage(where, f"@pytest.mark.commonware got an unknown argument {key!r}; known: {', '.join(MARKER_KEYS)}")
            if key not in values:  # the closest marker that sets a key wins
                values[key] = _validate_marker_value(where, key, value)
    return MarkerArgs(**values)


# ---------------------------------------------------------------------------------------------
# options


@dataclass
class Settings:
    """The resolved ``--cw-*`` options (command line first, then the ini key, then the default)."""

    seeds: int | None = None  # from --cw-seeds or the cw_seeds ini key (overrides markers)
    seed_base: int = 0
    seed: int | None = None
    runtime: str | None = None
    traces_dir: Path = Path("traces")
    record: str | None = None  # from --cw-record or the cw_record ini key (overrides markers)
    replay: Path | None = None
    bisect: Path | None = None
    check_determinism: bool = False
    check_pythons: list[str] = field(default_factory=list)  # the cw_check_pythons ini key
    golden: Path | None = None  # the file to compare with / to update
    golden_explicit: bool = False
    update_golden: bool = False
    invocation_dir: Path = field(default_factory=Path.cwd)
    strategy: str | None = None  # from --cw-strategy or the cw_strategy ini key (overrides markers)
    ordering: str | None = None  # from --cw-ordering or the cw_ordering ini key (overrides markers)
    explore: int | None = None  # --cw-explore=K: explore within K deviations instead of running seeds
    explore_limit: int = DEFAULT_EXPLORE_LIMIT
    fifo_check: int = DEFAULT_FIFO_CHECK  # fifo schedules tried when a seed fails under ordering "any"
    full_tracebacks: bool = False  # --cw-full-tracebacks: every failing seed's traceback in full
    keep_traces: bool = False  # --cw-keep-traces: a passing run leaves its item's old failure trace
    horizon: str | int = "auto"  # --cw-horizon: "auto" (measured), "none" or a number of contested decisions
    horizons: dict[str, int] = field(default_factory=dict)  # "auto": test -> its canonical run's length

    def strategy_for(self, marker: MarkerArgs) -> str | deterministic.Strategy:
        """Command line > ini key > marker > default, as for every setting."""
        default: str | deterministic.Strategy = DEFAULT_STRATEGY
        return _closest(self.strategy, marker.strategy, default)

    def ordering_for(self, marker: MarkerArgs) -> str:
        return _closest(self.ordering, marker.ordering, DEFAULT_ORDERING)

    def record_for(self, marker: MarkerArgs) -> str:
        return _closest(self.record, marker.record, "failed")

    def display_path(self, path: Path) -> str:
        """``path`` as the user would type it from where pytest was started."""
        try:
            return os.path.relpath(path, self.invocation_dir) if path.is_absolute() else str(path)
        except ValueError:  # another drive (Windows)
            return str(path)


def _closest(option: T | None, marker: T | None, default: T) -> T:
    """The option (command line, else ini key), else the marker, else the default."""
    if option is not None:
        return option
    return marker if marker is not None else default


def parse_int(name: str, text: Any, minimum: int) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise pytest.UsageError(f"{name}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise pytest.UsageError(f"{name}: must be at least {minimum}, got {value}")
    return value


def parse_choice(name: str, text: Any, choices: tuple[str, ...]) -> str:
    value = str(text).strip()
    if value not in choices:
        raise pytest.UsageError(f"{name}: must be one of {', '.join(choices)}, got {text!r}")
    return value


def parse_horizon(name: str, text: Any) -> str | int:
    """``auto``, ``none`` or a number of contested decisions (at least 1)."""
    value = str(text).strip()
    return value if value in ("auto", "none") else parse_int(name, value, 1)


def parse_strategy(name: str, text: Any) -> str:
    """A strategy name as ``deterministic.strategies.make_strategy`` knows it (``"pct:3"``,
    or a name registered through the ``pytest_commonware_strategies`` hook)."""
    value = str(text).strip()
    try:
        strategies.make_strategy(value)
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"{name}: {exc}") from None
    return value


# ---------------------------------------------------------------------------------------------
# the plan: which items a test function becomes


def seed_list(settings: Settings, marker: MarkerArgs) -> list[int]:
    """The seeds of one deterministic test: a pure function of the options and the marker."""
    if settings.seed is not None:
        return [settings.seed]
    if settings.seeds is not None:
        count = settings.seeds
    elif isinstance(marker.seeds, tuple):
        return list(marker.seeds)
    elif marker.seeds is not None:
        count = marker.seeds
    else:
        count = 1
    return list(range(settings.seed_base, settings.seed_base + count))


def runtime_of(settings: Settings, marker: MarkerArgs, fixtures: Iterable[str], where: str) -> str:
    """"deterministic", "production" or "both" for a test requesting ``fixtures``."""
    requested = [name for name in CONTEXT_FIXTURES if name in fixtures]
    if "deterministic_context" in requested and "production_context" in requested:
        raise _usage(where, "a test can use deterministic_context or production_context, not both "
                            "(use runtime_context with @pytest.mark.commonware(runtime='both'))")
    if "deterministic_context" in requested:
        fixed = "deterministic"
    elif "production_context" in requested:
        fixed = "production"
    else:
        fixed = None
    chosen = settings.runtime or marker.runtime or "deterministic"
    if fixed is None:
        return chosen
    if "runtime_context" in requested and chosen not in (fixed, "both"):
        raise _usage(where, f"the test uses {fixed}_context and runtime_context, but its runtime is {chosen!r}")
    if "runtime_context" in requested and chosen == "both" and settings.runtime is None:
        # The marker asks for a run on each runtime, which the fixed context rules out:
        # say so rather than drop a run silently.  (--cw-runtime=both is a blanket option
        # and leaves such tests on their fixed runtime.)
        raise _usage(where, f"the test uses {fixed}_context and runtime_context, but its marker asks for "
                            f"runtime='both'; use runtime_context alone, or runtime={fixed!r}")
    return fixed


def plan(settings: Settings, marker: MarkerArgs, fixtures: Iterable[str], where: str) -> list[RunSpec]:
    runtime = runtime_of(settings, marker, fixtures, where)
    both = runtime == "both"
    specs: list[RunSpec] = []
    if runtime in ("deterministic", "both"):
        seeds = seed_list(settings, marker)
        if settings.explore is not None:
            # One item: the exploration covers the schedules; the seed only feeds context.rng.
            specs.append(RunSpec("deterministic", seeds[0], both, explore=settings.explore))
        else:
            specs.extend(RunSpec("deterministic", seed, both) for seed in seeds)
    if runtime in ("production", "both"):
        specs.append(RunSpec("production", None, both))
    return specs


_BOTH_SEED_ID = re.compile(r"(?<=[\[-])deterministic-(seed|explore)=(\d+)(?=[\]-])")
_EXPLORE_ID = re.compile(r"(?<=[\[-])(?:deterministic-)?explore=(\d+)(?=[\]-])")


def same_run(nodeid: str, traced: str) -> bool:
    """Whether an item is the run a trace names.  ``[deterministic-seed=N]`` (the test ran
    under ``runtime="both"``) and ``[seed=N]`` name the same deterministic run: a trace
    recorded under ``--cw-runtime=both`` replays without it, and the other way round
    (likewise ``[deterministic-explore=K]`` and ``[explore=K]``)."""
    return nodeid == traced or _BOTH_SEED_ID.sub(r"\1=\2", nodeid) == _BOTH_SEED_ID.sub(r"\1=\2", traced)


def explore_of(nodeid: str) -> int | None:
    """K when ``nodeid`` is an ``--cw-explore=K`` item (``[explore=K]``), else None."""
    match = _EXPLORE_ID.search(nodeid)
    return int(match.group(1)) if match else None


def deterministic_config(seed: int, marker: MarkerArgs, settings: Settings | None = None) -> deterministic.Config:
    """The run's Config: the marker's durations and flags, the strategy and ordering (the
    settings, i.e. command line or ini key, over the marker, over the plugin's defaults
    ``swarm`` and ``any``).  ``Config.to_dict()`` carries them into traces."""
    if settings is None:
        settings = Settings()
    config = deterministic.Config(
        seed=seed, strategy=settings.strategy_for(marker), ordering=settings.ordering_for(marker),
    )
    if marker.cycle is not None:
        config = config.with_cycle(marker.cycle)
    if marker.timeout is not None:
        config = config.with_timeout(marker.timeout)
    if marker.catch_panics is not None:
        config = config.with_catch_panics(marker.catch_panics)
    return config


def uses_horizon(config: deterministic.Config) -> bool:
    """Whether the config's strategy places events within the run's expected length and was
    given none (``pct``, ``pct:D``, ``swarm``)."""
    spec = config.strategy
    if not isinstance(spec, str) or config.horizon is not None:
        return False
    name, *params = spec.split(":")
    return name == "swarm" or (name == "pct" and len(params) < 2)


PROBE_SEED = 0  # the seed of the canonical run that measures a test's horizon


def with_horizon(config: deterministic.Config, test: str, main: Callable[[Any], Awaitable[Any]],
                 settings: Settings) -> deterministic.Config:
    """``config`` with the horizon of ``--cw-horizon``: a number, nothing, or (``auto``, the
    default) the number of contested decisions of the test's canonical run, measured once
    per test and ordering in a session.

    PCT finds a depth-d bug with probability about 1/(n k^(d-1)) when its change points are
    spread over the k contested decisions the run really makes; drawn blindly they mostly
    land past its end (the bug corpus: swarm needs 2-10x fewer runs on the deep bugs).  The
    canonical run is made with seed 0, whatever seeds the session runs: a test whose run
    depends on ``context.rng`` or faults gets the same horizon for seed 17 in a sweep of
    1,000 seeds as with ``--cw-seed=17`` alone, so the seed alone reproduces a run.
    """
    if not uses_horizon(config) or settings.horizon == "none":
        return config
    if isinstance(settings.horizon, int):
        return config.with_horizon(settings.horizon)
    key = f"{test}|{config.ordering}"
    horizon = settings.horizons.get(key)
    if horizon is None:
        probe = deterministic.Canonical()
        run_deterministic(config.with_strategy(probe).with_seed(PROBE_SEED), main, record=False)
        horizon = settings.horizons[key] = max(1, sum(1 for kind, n in probe.counts if kind == "pick" and n > 1))
    return config.with_horizon(horizon)


def config_from_dict(values: Mapping[str, Any], where: str) -> deterministic.Config:
    """The ``deterministic.Config`` of a trace's ``config`` (``tracefile.config_from_dict``);
    a config it cannot describe is a usage error."""
    try:
        return tracefile.config_from_dict(values, where)
    except tracefile.TraceError as exc:
        raise pytest.UsageError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# the context fixtures' values and async fixtures


class ContextSlot:
    """The value of a context fixture before its run exists.

    Fixtures are set up before the test runs, but the root context only exists inside the
    runner.  The plugin hands the test the real context; fixtures that asked for the context
    get this slot, which forwards every attribute to the context while a run is going on.
    """

    __slots__ = ("_context", "_fixture")

    def __init__(self, fixture: str) -> None:
        self._fixture = fixture
        self._context: Any = None

    def bind(self, context: Any) -> None:
        self._context = context

    def unbind(self) -> None:
        self._context = None

    def __getattr__(self, name: str) -> Any:
        context = self._context
        if context is None:
            raise RuntimeError(
                f"{self._fixture} exists only while its test runs inside the runner; "
                f"use it from the test or from an async fixture, not from a sync fixture's setup"
            )
        return getattr(context, name)

    def __repr__(self) -> str:
        return f"<{self._fixture} slot {'bound to ' + repr(self._context) if self._context is not None else '(unbound)'}>"


@dataclass
class DeferredFixture:
    """An ``async def`` fixture of a test the plugin runs: evaluated inside each run, on its loop."""

    name: str
    func: Callable[..., Any]
    kwargs: dict[str, Any]


class _FixtureScope:
    """Resolves deferred fixtures inside one run and tears them down in reverse order."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._values: dict[int, Any] = {}
        self._generators: list[tuple[str, Any]] = []

    async def resolve(self, value: Any) -> Any:
        if not isinstance(value, DeferredFixture):
            return value
        key = id(value)  # only a memo key within one run, never part of what the run does
        if key in self._values:
            return self._values[key]
        kwargs = {
            name: self._context if isinstance(arg, ContextSlot) else await self.resolve(arg)
            for name, arg in value.kwargs.items()
        }
        result = value.func(**kwargs)
        if inspect.isasyncgen(result):
            try:
                produced = await result.__anext__()
            except StopAsyncIteration:
                raise RuntimeError(f"async fixture {value.name!r} did not yield a value") from None
            self._generators.append((value.name, result))
        else:
            produced = await result
        self._values[key] = produced
        return produced

    async def close(self) -> None:
        errors: list[BaseException] = []
        while self._generators:
            name, gen = self._generators.pop()
            try:
                await gen.__anext__()
            except StopAsyncIteration:
                continue
            except BaseException as exc:  # noqa: BLE001 - the first one is raised below
                errors.append(exc)
                continue
            errors.append(RuntimeError(f"async fixture {name!r} yielded more than once"))
        if errors:
            raise errors[0]


def make_main(testfn: Callable[..., Awaitable[Any]], kwargs: Mapping[str, Any]) -> Callable[[Any], Awaitable[Any]]:
    """The root task of one run: bind the context slots, resolve async fixtures, run the test."""

    async def main(context: Any) -> Any:
        slots = [v for v in kwargs.values() if isinstance(v, ContextSlot)]
        for slot in slots:
            slot.bind(context)
        scope = _FixtureScope(context)
        try:
            call = {}
            for name, value in kwargs.items():
                call[name] = context if isinstance(value, ContextSlot) else await scope.resolve(value)
            try:
                return await testfn(**call)
            finally:
                await scope.close()
        finally:
            for slot in slots:
                slot.unbind()

    return main


# ---------------------------------------------------------------------------------------------
# runs


@dataclass
class RunResult:
    error: BaseException | None
    schedule: deterministic.Schedule | None
    auditor: str | None
    steps: int


def run_deterministic(
    config: deterministic.Config,
    main: Callable[[Any], Awaitable[Any]],
    *,
    record: bool = True,
    checkpoint_every: int = 1024,
    replay: deterministic.Schedule | None = None,
    events: bool = False,
) -> RunResult:
    """One deterministic run.  Test failures are returned, not raised (the caller judges).
    ``events``: the recording keeps every audited event too (the determinism check's)."""
    recorder = (deterministic.Recorder(checkpoint_every=checkpoint_every, events=events)
                if record and replay is None else None)
    runner = deterministic.Runner(config, recorder=recorder, replay=replay)
    error: BaseException | None = None
    try:
        runner.start(main)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - handed to pytest by the caller
        error = exc
    schedule = recorder.schedule if recorder is not None else None
    return RunResult(error, schedule, runner.auditor_state, runner.steps)


@dataclass
class FifoCheck:
    """What re-running a failure found under ``ordering="fifo"`` (docs/SPEC.md section 5a)."""

    schedules: int  # how many fifo schedules ran
    seed: int | None = None  # the first fifo schedule that failed the same way
    strategy: str | None = None  # its strategy
    other: tuple[int, str, BaseException] | None = None  # (seed, strategy, error): first different failure

    @property
    def reproduced(self) -> bool:
        return self.seed is not None

    def line(self) -> str:
        if self.seed is not None:
            return (f"also fails under ordering='fifo' (seed {self.seed}): this failure can happen on stock asyncio")
        line = (f"does not fail under ordering='fifo' in {self.schedules} schedules: it needs an order asyncio never "
                f"produces — the code relies on an ordering the Context contract does not promise (tasks may run "
                f"in any order)")
        if self.other is not None:
            seed, _, error = self.other
            line += f" [under fifo, seed {seed} failed differently: {_one_line(error)}]"
        return line


def _one_line(error: BaseException, limit: int = 160) -> str:
    lines = str(error).strip().splitlines() or [""]
    text = f"{type(error).__name__}: {lines[0]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fifo_check(
    config: deterministic.Config,
    main: Callable[[Any], Awaitable[Any]],
    error: BaseException,
    schedules: int,
) -> FifoCheck | None:
    """Say which kind of failure ``error`` (of a run of ``config`` under ``ordering="any"``) is.

    Runs ``main`` under ``ordering="fifo"`` (only timing varies: every such schedule is one
    stock asyncio can produce) on ``schedules`` schedules: the same seed with the run's own
    strategy (when it is a name), then seeds ``seed+1 ..`` with ``swarm`` (which varies how
    often timers fire late).  A failure of the same exception type means the bug is real on asyncio; none means
    the failure needs an order only the Context contract allows.  None when there is nothing
    to check (already fifo, or ``schedules`` is 0).
    """
    if config.ordering == "fifo" or schedules <= 0:
        return None
    result = FifoCheck(0)
    base = config.with_ordering("fifo")
    for i in range(schedules):
        seed = config.seed + i
        # A strategy object has no name a rerun command could give: swarm stands in for it.
        own = config.strategy if isinstance(config.strategy, str) else DEFAULT_STRATEGY
        strategy = own if i == 0 else DEFAULT_STRATEGY
        run = run_deterministic(base.with_seed(seed).with_strategy(strategy), main, record=False)
        result.schedules += 1
        if run.error is None:
            continue
        if type(run.error) is type(error):
            result.seed, result.strategy = seed, strategy
            return result
        if result.other is None:
            result.other = (seed, strategy, run.error)
    return result


class TestTimeout(TimeoutError):
    """A production run passed its marker's ``timeout`` (real time); the runner has cancelled
    and closed every task the run left."""

    __test__ = False  # not a test class, whatever pytest's naming rules say


def run_production(
    main: Callable[[Any], Awaitable[Any]],
    marker: MarkerArgs,
    storage_directory: Path | None,
) -> None:
    config = production.Config(storage_directory=storage_directory)
    if marker.catch_panics is not None:
        config = config.with_catch_panics(marker.catch_panics)
    timeout = marker.timeout
    if timeout is None:
        production.Runner(config).start(main)
        return

    async def timed(context: Any) -> Any:
        try:
            return await asyncio.wait_for(main(context), timeout)
        except TimeoutError:
            raise TestTimeout(f"the test did not finish within its timeout of {timeout}s (real time)") from None

    production.Runner(config).start(timed)
