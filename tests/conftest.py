"""Shared fixtures of the project's own tests.

``runner_factory`` runs a test once per runtime ("deterministic", "production", and
"production-uvloop") so the runtime contract is checked on each with the same code (the
runtime isolation rule).

This is a plain fixture file: the pytest plugin (pytest_commonware) defines
``deterministic_context`` / ``production_context`` / ``runtime_context``; nothing here
may use those names.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

try:
    import uvloop  # noqa: F401
except ImportError:  # pragma: no cover - uvloop is an optional extra
    HAVE_UVLOOP = False
else:
    HAVE_UVLOOP = True

# The production runtime on both of its event loops: the contract holds on uvloop too.
RUNTIMES = [
    "deterministic",
    "production",
    pytest.param("production-uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed")),
]


def _iouring_unavailable() -> str | None:
    """Why the io_uring storage backend cannot run here (None when it can)."""
    from commonware_runtime.production.iouring import Unavailable, open_ring

    try:
        ring = open_ring(8)
    except Unavailable as exc:
        return str(exc)
    ring.close()
    return None


IOURING_UNAVAILABLE = _iouring_unavailable()
needs_iouring = pytest.mark.skipif(
    IOURING_UNAVAILABLE is not None, reason=f"io_uring storage backend unavailable: {IOURING_UNAVAILABLE}"
)

# Storage tests run on the production runtime's io_uring backend too ("production-iouring":
# asyncio, storage_backend="io_uring", with the inline RWF_NOWAIT read attempt switched off
# so that every read, write and sync goes through the ring; the inline path is the default
# backend's code, tested by "production").  Mark a test ``@pytest.mark.storage_runtimes``.
STORAGE_RUNTIMES = [*RUNTIMES, pytest.param("production-iouring", marks=needs_iouring)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "storage_runtimes: run the test's runner_factory on the io_uring storage backend too"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # runner_factory's parameters: every runtime, plus the io_uring storage backend for
    # the tests marked storage_runtimes.
    if "runner_factory" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker("storage_runtimes") is not None
        metafunc.parametrize("runner_factory", STORAGE_RUNTIMES if marked else RUNTIMES, indirect=True)

# The deterministic runs' default seed; set COMMONWARE_TEST_SEED to sweep the contract
# tests over other schedules (e.g. in a shell loop).
DEFAULT_SEED = int(os.environ.get("COMMONWARE_TEST_SEED", "0"))

# Virtual-time guard so a broken deterministic test fails instead of spinning forever.
DETERMINISTIC_GUARD_TIMEOUT = 10_000.0


class RunnerFactory:
    """Builds fresh runners of one runtime kind.

    ``factory(**kw)`` returns an unstarted runner; ``factory.run(main, **kw)`` builds one
    and runs ``main`` on it.  Keywords: ``seed`` and ``timeout`` (deterministic only, ignored
    by production), ``catch_panics`` (both; each runtime keeps its own default otherwise).
    """

    def __init__(self, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
        self.kind = kind
        self._tmp_path = tmp_path
        self._runs = itertools.count()
        if kind == "production-iouring":
            assert monkeypatch is not None
            ring_only(monkeypatch)

    @property
    def deterministic(self) -> bool:
        return self.kind == "deterministic"

    def __call__(self, **kw: Any) -> Any:
        unknown = set(kw) - {"seed", "timeout", "catch_panics"}
        if unknown:
            raise TypeError(f"unknown runner options {sorted(unknown)}")
        if self.kind == "deterministic":
            from commonware_runtime import deterministic

            config = deterministic.Config(
                seed=kw.get("seed", DEFAULT_SEED),
                timeout=kw.get("timeout", DETERMINISTIC_GUARD_TIMEOUT),
                catch_panics=kw.get("catch_panics", False),
            )
            return deterministic.Runner(config)
        from commonware_runtime import production

        # Each runner gets its own storage directory so runs of one test never share files.
        directory = self._tmp_path / f"storage{next(self._runs)}"
        options: dict[str, Any] = {"storage_directory": directory}
        if self.kind == "production-uvloop":
            options["event_loop"] = "uvloop"
        if self.kind == "production-iouring":
            options["storage_backend"] = "io_uring"
        if "catch_panics" in kw:
            options["catch_panics"] = kw["catch_panics"]
        return production.Runner(production.Config(**options))

    def run(self, main: Callable[[Any], Awaitable[T]], **kw: Any) -> T:
        return self(**kw).start(main)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<RunnerFactory {self.kind}>"


def ring_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every io_uring storage created from now on (until the test ends) skip the
    inline RWF_NOWAIT read attempt: every read goes through the ring."""
    from commonware_runtime.production.iouring import UringStorage

    init = UringStorage.__init__

    def ring_reads(self: UringStorage, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.nowait_reads = self.nowait_writes = False

    monkeypatch.setattr(UringStorage, "__init__", ring_reads)


@pytest.fixture
def runner_factory(request: pytest.FixtureRequest, tmp_path: Path) -> RunnerFactory:
    """A factory of runners of the parametrized runtime (see :class:`RunnerFactory`)."""
    monkeypatch = request.getfixturevalue("monkeypatch") if request.param == "production-iouring" else None
    return RunnerFactory(request.param, tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def _fixed_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pytester sessions print to a terminal of one known width, whatever runs this suite.

    Short summary lines are cut to the terminal's width (except when ``CI`` is set), so
    assertions on them would otherwise hold on one machine and fail on another.
    """
    monkeypatch.setenv("COLUMNS", "120")
