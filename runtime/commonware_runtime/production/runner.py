"""``production.Config`` and ``production.Runner``: one run on a real event loop.

A run owns its event loop (asyncio's or uvloop's), a thread pool for blocking work and
storage, its metrics registry and, when started from the main thread, SIGINT/SIGTERM
handlers.  All of them end with the run: ``start`` cancels every task still running when
the root returns (or raises), waits for them (closing the coroutine of a task that keeps
swallowing its cancellation), closes run-scoped resources (e.g. the telemetry server),
waits for the thread pool and closes the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from .. import tasks
from ..arguments import NS_PER_SECOND, duration_ns
from ..tasks import Handle
from .context import Context, ProductionCore
from .network import NetworkConfig

T = TypeVar("T")
logger = logging.getLogger("commonware_runtime")

EVENT_LOOPS = ("asyncio", "uvloop")
#: ``storage_backend`` values: the default (RWF_NOWAIT reads, thread pool) and io_uring
#: (Linux, extra ``iouring``; falls back to the default with a logged reason).  Mirrors
#: ``production.iouring.BACKENDS``, which is imported only when io_uring is selected.
STORAGE_BACKENDS = ("default", "io_uring")
_STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


def _default_blocking_threads() -> int:
    # The same default as concurrent.futures.ThreadPoolExecutor.
    return min(32, (os.cpu_count() or 1) + 4)


@dataclass(frozen=True)
class Config:
    """How a production run is built. Durations are float seconds or ``timedelta``.

    ``storage_directory=None`` means a fresh directory under ``tempfile.gettempdir()``,
    created when the run starts and *not* deleted afterwards (the data may be wanted);
    ``Runner.storage_directory`` names it.  A given directory is created on first use.

    ``storage_backend="io_uring"`` drives reads, writes and syncs through an io_uring ring
    on the event loop (Linux, extra ``iouring``); where io_uring is unavailable the run
    uses the default backend and logs one line saying why (docs/production.md).
    """

    storage_directory: str | os.PathLike[str] | None = None
    catch_panics: bool = True
    event_loop: str = "asyncio"
    tcp_nodelay: bool = True
    connect_timeout: float | timedelta | None = 10.0
    read_timeout: float | timedelta | None = None
    write_timeout: float | timedelta | None = None
    blocking_threads: int = field(default_factory=_default_blocking_threads)
    storage_backend: str = "default"

    def __post_init__(self) -> None:
        directory = self.storage_directory
        if directory is not None:
            if not isinstance(directory, (str, os.PathLike)):
                raise TypeError(
                    f"storage_directory must be a str, os.PathLike or None, got {type(directory).__name__} {directory!r}"
                )
            text = os.fspath(directory)
            if not isinstance(text, str):
                raise TypeError(f"storage_directory must be a text path, got {text!r}")
            if not text or "\x00" in text:
                raise ValueError(f"storage_directory {text!r} is not a valid path")
        if not isinstance(self.catch_panics, bool):
            raise TypeError(f"catch_panics must be a bool, got {self.catch_panics!r}")
        if not isinstance(self.event_loop, str):
            raise TypeError(f"event_loop must be a str, got {type(self.event_loop).__name__} {self.event_loop!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop must be one of {EVENT_LOOPS}, got {self.event_loop!r}")
        if isinstance(self.blocking_threads, bool) or not isinstance(self.blocking_threads, int):
            raise TypeError(f"blocking_threads must be an int, got {self.blocking_threads!r}")
        if self.blocking_threads < 1:
            raise ValueError(f"blocking_threads must be at least 1, got {self.blocking_threads}")
        if not isinstance(self.storage_backend, str):
            raise TypeError(
                f"storage_backend must be a str, got {type(self.storage_backend).__name__} {self.storage_backend!r}"
            )
        if self.storage_backend not in STORAGE_BACKENDS:
            raise ValueError(f"storage_backend must be one of {STORAGE_BACKENDS}, got {self.storage_backend!r}")
        # NetworkConfig validates tcp_nodelay and the timeouts, naming the same fields.
        self.network_config()

    def network_config(self, *, read_buffer: int | None = None) -> NetworkConfig:
        """The settings handed to ``production.network``."""
        kwargs: dict[str, Any] = {}
        if read_buffer is not None:
            kwargs["read_buffer"] = read_buffer
        # NetworkConfig takes a timedelta too and stores float seconds; its fields are typed as stored.
        return NetworkConfig(
            tcp_nodelay=self.tcp_nodelay,
            connect_timeout=self.connect_timeout,  # type: ignore[arg-type]
            read_timeout=self.read_timeout,  # type: ignore[arg-type]
            write_timeout=self.write_timeout,  # type: ignore[arg-type]
            **kwargs,
        )

    def with_storage_directory(self, storage_directory: str | os.PathLike[str] | None) -> Config:
        return dataclasses.replace(self, storage_directory=storage_directory)

    def with_catch_panics(self, catch_panics: bool) -> Config:
        return dataclasses.replace(self, catch_panics=catch_panics)

    def with_event_loop(self, event_loop: str) -> Config:
        return dataclasses.replace(self, event_loop=event_loop)

    def with_tcp_nodelay(self, tcp_nodelay: bool) -> Config:
        return dataclasses.replace(self, tcp_nodelay=tcp_nodelay)

    def with_connect_timeout(self, connect_timeout: float | timedelta | None) -> Config:
        return dataclasses.replace(self, connect_timeout=connect_timeout)

    def with_read_timeout(self, read_timeout: float | timedelta | None) -> Config:
        return dataclasses.replace(self, read_timeout=read_timeout)

    def with_write_timeout(self, write_timeout: float | timedelta | None) -> Config:
        return dataclasses.replace(self, write_timeout=write_timeout)

    def with_blocking_threads(self, blocking_threads: int) -> Config:
        return dataclasses.replace(self, blocking_threads=blocking_threads)

    def with_storage_backend(self, storage_backend: str) -> Config:
        return dataclasses.replace(self, storage_backend=storage_backend)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (seconds as floats, the directory as a str or None)."""

        def seconds(v: Any) -> Any:
            return None if v is None else duration_ns(v) / NS_PER_SECOND

        return {
            "storage_directory": None if self.storage_directory is None else os.fspath(self.storage_directory),
            "catch_panics": self.catch_panics,
            "event_loop": self.event_loop,
            "tcp_nodelay": self.tcp_nodelay,
            "connect_timeout": seconds(self.connect_timeout),
            "read_timeout": seconds(self.read_timeout),
            "write_timeout": seconds(self.write_timeout),
            "blocking_threads": self.blocking_threads,
            "storage_backend": self.storage_backend,
        }


def _loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if event_loop == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError as exc:
        raise RuntimeError(
            "event_loop='uvloop' but uvloop is not installed (pip install 'commonware-runtime[uvloop]'; "
            "uvloop does not support Windows)"
        ) from exc
    return uvloop.new_event_loop


class Runner:
    """Runs one root task on a fresh production runtime. A Runner is used once."""

    def __init__(self, config: Config | None = None) -> None:
        if config is None:
            config = Config()
        if not isinstance(config, Config):
            raise TypeError(f"config must be a production.Config, got {type(config).__name__}")
        self.config = config
        self._used = False
        #: The storage directory of the run (set by ``start``; the fresh one when defaulted).
        self.storage_directory: str | None = None
        self._core: ProductionCore | None = None
        self._context: Context | None = None
        self._signalled = 0

    def start(self, main: Callable[[Context], Awaitable[T]]) -> T:
        """Run ``main(context)`` to completion and return its value.

        When the root returns (or raises) every task still running is cancelled and
        awaited.  With ``catch_panics=False`` the first uncaught task exception ends the
        run and is raised here; an exception of the root always propagates.
        """
        if self._used:
            raise RuntimeError("a production.Runner runs once; build a new one for another run")
        if not callable(main):
            raise TypeError(f"main must be an async function taking the context, got {main!r}")
        if asyncio._get_running_loop() is not None:
            raise RuntimeError("production.Runner.start() cannot run inside a running event loop")
        new_loop = _loop_factory(self.config.event_loop)
        self._used = True

        config = self.config
        if config.storage_directory is None:
            directory = tempfile.mkdtemp(prefix="commonware-runtime-")
        else:
            directory = os.path.abspath(os.fspath(config.storage_directory))
        self.storage_directory = directory

        loop = new_loop()
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.blocking_threads, thread_name_prefix="commonware-blocking"
        )
        # asyncio's own executor users (getaddrinfo, run_in_executor(None, ...)) share the pool.
        loop.set_default_executor(executor)
        installed: list[tuple[int, Any]] = []
        core: ProductionCore | None = None
        try:
            core = ProductionCore(
                loop=loop,
                executor=executor,
                catch_panics=config.catch_panics,
                network=config.network_config(),
                storage_directory=directory,
                storage_backend=config.storage_backend,
            )
            self._core = core
            handle: Handle[T] = Handle("")
            core.root = handle
            context = Context(core, "", handle)
            self._context = context
            installed = self._install_signals(loop)
            value = core.run_root(loop, main, context)
        finally:
            self._shutdown(loop, core, executor, installed)
        if core.panic is not None:  # a task panicked while the others were being cancelled
            raise core.panic
        return value

    # -----------------------------------------------------------------------------------------

    # -- signals --------------------------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[tuple[int, Any]]:
        """SIGINT/SIGTERM -> stop(128 + signum); a second one cancels the root task."""
        installed: list[tuple[int, Any]] = []
        if threading.current_thread() is not threading.main_thread() or sys.platform == "win32":
            return installed  # signal handlers can only be set from the main thread
        for sig in _STOP_SIGNALS:
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError) as exc:
                logger.warning("cannot handle %s in this runtime: %s", signal.Signals(sig).name, exc)
                continue
            installed.append((sig, previous))
        return installed

    def _on_signal(self, signum: int) -> None:
        core, context = self._core, self._context
        assert core is not None and context is not None
        name = signal.Signals(signum).name
        self._signalled += 1
        if self._signalled == 1:
            value = 128 + signum
            logger.warning("received %s: stopping the runtime (stop value %d)", name, value)
            context.spawn(lambda ctx: ctx.stop(value))
            return
        logger.warning("received %s again: cancelling the root task", name)
        if core.root is not None:
            core.root.abort()

    @staticmethod
    def _restore_signals(loop: asyncio.AbstractEventLoop, installed: list[tuple[int, Any]]) -> None:
        for sig, previous in installed:
            try:
                loop.remove_signal_handler(sig)
            finally:
                # remove_signal_handler resets to the default; put back what was there before.
                if previous is not None:
                    signal.signal(sig, previous)

    # -- teardown -------------------------------------------------------------------------

    def _shutdown(
        self,
        loop: asyncio.AbstractEventLoop,
        core: ProductionCore | None,
        executor: concurrent.futures.ThreadPoolExecutor,
        installed: list[tuple[int, Any]],
    ) -> None:
        try:
            try:
                self._cancel_all(loop, core)
                if core is not None:
                    self._run_closers(loop, core)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                self._restore_signals(loop, installed)
        finally:
            # Waits for blocking functions already running (a thread cannot be cancelled),
            # drops the queued ones: storage descriptors are never closed under a running pread.
            executor.shutdown(wait=True, cancel_futures=True)
            loop.close()
            self._context = None

    # The bounds of ending the leftover tasks (tasks.cancel_leftovers), per runner class so a
    # test can shorten them.
    #: Real seconds the tasks left at the end of a run get to unwind after each cancellation.
    CANCEL_GRACE = tasks.CANCEL_GRACE
    #: Cancellations a task that swallows them gets before its coroutine is closed.
    CANCEL_ATTEMPTS = tasks.CANCEL_ATTEMPTS
    #: Cancellation rounds (a cancelled task may spawn another) before the rest is closed.
    CANCEL_ROUNDS = tasks.CANCEL_ROUNDS

    @classmethod
    def _cancel_all(cls, loop: asyncio.AbstractEventLoop, core: ProductionCore | None) -> None:
        tasks.cancel_leftovers(loop, core, grace=cls.CANCEL_GRACE, attempts=cls.CANCEL_ATTEMPTS, rounds=cls.CANCEL_ROUNDS)

    @staticmethod
    def _run_closers(loop: asyncio.AbstractEventLoop, core: ProductionCore) -> None:
        closers, core.closers = core.closers, []
        for close in reversed(closers):
            try:
                result = close()
                if result is not None:
                    loop.run_until_complete(result)
            except Exception as exc:  # noqa: BLE001 - reported; the other resources still close
                logger.error("closing %r at the end of the run failed", close, exc_info=exc)
