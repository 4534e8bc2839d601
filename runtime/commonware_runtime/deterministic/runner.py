"""``deterministic.Config`` and ``deterministic.Runner``: one seeded, virtual-time run."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from ..arguments import NS_PER_SECOND, duration_ns, timestamp_ns
from ..auditor import Auditor
from ..tasks import Handle, cancel_leftovers, discard_unstarted
from .blocking import DEFAULT_BLOCKING_TIMEOUT, check_blocking_timeout, set_blocking_timeout
from .context import Context, DeterministicCore
from .loop import EventLoop
from .strategies import ORDERINGS, Strategy, make_strategy, strategy_spec
from .trace import Recorder, ReplayDivergence, Replayer, Schedule

T = TypeVar("T")
logger = logging.getLogger("commonware_runtime")


@dataclass(frozen=True)
class Config:
    """How a deterministic run is built. Durations are float seconds or ``timedelta``."""

    seed: int = 42
    cycle: float | timedelta = 0.001
    timeout: float | timedelta | None = None
    catch_panics: bool = False
    start_time: float = 0.0
    ordering: str = "any"
    strategy: str | Strategy = "random"
    horizon: int | None = None  # expected scheduling decisions of the run (pct/swarm place change points in it)
    # Wall-clock seconds a blocking function (spawn_blocking, run_in_executor, to_thread) may
    # take before it fails with BlockingStalled; None: inline, unbounded (see blocking.py).
    blocking_timeout: float | timedelta | None = DEFAULT_BLOCKING_TIMEOUT

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__} {self.seed!r}")
        if self.seed < 0:
            raise ValueError(f"seed must not be negative, got {self.seed}")
        if duration_ns(self.cycle, "cycle") == 0:
            raise ValueError(f"cycle must be positive, got {self.cycle!r}")
        if self.timeout is not None:
            duration_ns(self.timeout, "timeout")
        if not isinstance(self.catch_panics, bool):
            raise TypeError(f"catch_panics must be a bool, got {self.catch_panics!r}")
        timestamp_ns(self.start_time, "start_time")
        if self.ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(map(repr, ORDERINGS))}, got {self.ordering!r}")
        make_strategy(self.strategy)  # a bad name or object fails here, at the call
        if self.horizon is not None and (isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1):
            raise ValueError(f"horizon must be a positive int (scheduling decisions) or None, got {self.horizon!r}")
        check_blocking_timeout(self.blocking_timeout)

    def with_horizon(self, horizon: int | None) -> Config:
        return dataclasses.replace(self, horizon=horizon)

    def with_blocking_timeout(self, blocking_timeout: float | timedelta | None) -> Config:
        return dataclasses.replace(self, blocking_timeout=blocking_timeout)

    def with_ordering(self, ordering: str) -> Config:
        return dataclasses.replace(self, ordering=ordering)

    def with_strategy(self, strategy: str | Strategy) -> Config:
        return dataclasses.replace(self, strategy=strategy)

    def with_seed(self, seed: int) -> Config:
        return dataclasses.replace(self, seed=seed)

    def with_cycle(self, cycle: float | timedelta) -> Config:
        return dataclasses.replace(self, cycle=cycle)

    def with_timeout(self, timeout: float | timedelta | None) -> Config:
        return dataclasses.replace(self, timeout=timeout)

    def with_catch_panics(self, catch_panics: bool) -> Config:
        return dataclasses.replace(self, catch_panics=catch_panics)

    def with_start_time(self, start_time: float) -> Config:
        return dataclasses.replace(self, start_time=start_time)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (seconds as floats), e.g. for a trace file."""
        def seconds(v: Any) -> Any:
            return None if v is None else duration_ns(v) / NS_PER_SECOND

        return {
            "seed": self.seed,
            "cycle": seconds(self.cycle),
            "timeout": seconds(self.timeout),
            "catch_panics": self.catch_panics,
            "start_time": self.start_time,
            "ordering": self.ordering,
            "strategy": strategy_spec(self.strategy),
            "horizon": self.horizon,
        }


@dataclass(frozen=True)
class Checkpoint:
    """The state a crashed run leaves behind; ``Runner.from_checkpoint`` restarts on it.

    Durable storage survives (unsynced bytes do not); virtual time, the seed streams and
    the auditor continue where the crashed run stopped.
    """

    config: Config
    now_ns: int
    scheduler_state: Any
    user_rng_state: Any
    fault_rng_state: Any
    auditor: Auditor
    storage: Any  # the durable contents, sparse: Storage.snapshot() of the crashed storage
    restarts: int

    @property
    def time(self) -> float:
        return (timestamp_ns(self.config.start_time) + self.now_ns) / NS_PER_SECOND


class Runner:
    """Runs one root task on a fresh deterministic runtime. A Runner is used once."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        recorder: Recorder | None = None,
        replay: Schedule | None = None,
    ) -> None:
        if config is None:
            config = Config()
        if not isinstance(config, Config):
            raise TypeError(f"config must be a deterministic.Config, got {type(config).__name__}")
        if replay is not None and recorder is not None:
            raise ValueError("a replayed run follows its trace: it cannot also record")
        self.config = config
        self.recorder = recorder
        self.replay = replay
        self._checkpoint: Checkpoint | None = None
        self._used = False
        self.auditor_state: str | None = None
        self.steps = 0

    @classmethod
    def seeded(cls, seed: int) -> Runner:
        return cls(Config(seed=seed))

    @classmethod
    def timed(cls, timeout: float | timedelta) -> Runner:
        return cls(Config(timeout=timeout))

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> Runner:
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"expected a deterministic.Checkpoint, got {type(checkpoint).__name__}")
        runner = cls(checkpoint.config)
        runner._checkpoint = checkpoint
        return runner

    def start(self, main: Callable[[Context], Awaitable[T]]) -> T:
        """Run ``main(context)`` to completion and return its value."""
        value, _ = self._run(main, crash=False)
        return value

    def start_and_recover(self, main: Callable[[Context], Awaitable[T]]) -> tuple[T, Checkpoint]:
        """Run ``main(context)``, then crash: unsynced storage is lost. Returns (value, checkpoint)."""
        value, checkpoint = self._run(main, crash=True)
        assert checkpoint is not None
        return value, checkpoint

    # -----------------------------------------------------------------------------------------

    def _build(self) -> DeterministicCore:
        config = self.config
        cp = self._checkpoint
        if cp is None:
            auditor = Auditor()
            loop = EventLoop(
                config.seed, cycle=config.cycle, timeout=config.timeout, auditor=auditor,
                ordering=config.ordering, strategy=config.strategy, horizon=config.horizon,
            )
            set_blocking_timeout(loop, config.blocking_timeout)
            auditor.event("start", config.seed)
            return DeterministicCore(
                loop=loop, seed=config.seed, catch_panics=config.catch_panics, start_ns=timestamp_ns(config.start_time)
            )
        auditor = cp.auditor.fork()
        loop = EventLoop(
            config.seed, cycle=config.cycle, timeout=config.timeout, auditor=auditor, now_ns=cp.now_ns,
            ordering=config.ordering, strategy=config.strategy, horizon=config.horizon,
        )
        loop.restore_scheduler(cp.scheduler_state)
        set_blocking_timeout(loop, config.blocking_timeout)
        auditor.event("restart", cp.restarts + 1, cp.now_ns)
        return DeterministicCore(
            loop=loop,
            seed=config.seed,
            catch_panics=config.catch_panics,
            start_ns=timestamp_ns(config.start_time),
            user_rng_state=cp.user_rng_state,
            fault_rng_state=cp.fault_rng_state,
            storage_image=cp.storage,
        )

    def _run(self, main: Callable[[Context], Awaitable[T]], crash: bool) -> tuple[T, Checkpoint | None]:
        if self._used:
            raise RuntimeError("a deterministic.Runner runs once; build a new one for another run")
        if not callable(main):
            raise TypeError(f"main must be an async function taking the context, got {main!r}")
        if asyncio._get_running_loop() is not None:
            raise RuntimeError("deterministic.Runner.start() cannot run inside a running event loop")
        self._used = True
        core = self._build()
        loop = core.loop
        if self.recorder is not None:
            self.recorder.begin(loop)
            loop.observe(self.recorder)
        elif self.replay is not None:
            loop.observe(Replayer(self.replay))
        handle: Handle[T] = Handle("")
        core.root = handle
        try:
            value = core.run_root(loop, main, Context(core, "", handle))
            self._teardown(core)
            if core.panic is not None:  # a leftover task failed while it was unwound
                raise core.panic
            if self.replay is not None and loop.steps != self.replay.steps:
                raise ReplayDivergence(
                    f"replay diverged: the run ended after {loop.steps} steps, the trace recorded {self.replay.steps}",
                    step=loop.steps, time_ns=loop.now_ns, expected=f"{self.replay.steps} steps",
                    actual=f"{loop.steps} steps",
                )
            checkpoint = self._crash(core) if crash else None
        except BaseException as exc:
            self._finish(core, exc)
            raise
        self._finish(core, None)
        return value, checkpoint

    def _crash(self, core: DeterministicCore) -> Checkpoint:
        loop = core.loop
        return Checkpoint(
            config=self.config,
            now_ns=loop.now_ns,
            scheduler_state=loop.scheduler_state(),
            user_rng_state=core.rng.getstate(),
            fault_rng_state=core.fault_rng.getstate(),
            auditor=(core.final_auditor or core.auditor).fork(),
            storage=core.storage.crash().snapshot(),
            restarts=0 if self._checkpoint is None else self._checkpoint.restarts + 1,
        )

    @staticmethod
    def _teardown(core: DeterministicCore) -> None:
        """End whatever still runs after the root returned (or the run failed): cancelled in
        stable-id order (cancelling wakes tasks, so the order is part of the schedule)."""
        cancel_leftovers(core.loop, core, unfinished=core.loop.blocked_tasks)

    def _finish(self, core: DeterministicCore, error: BaseException | None) -> None:
        """Summarise the run, then close the loop without running anything that could count."""
        loop = core.loop
        self.steps = loop.steps
        self.auditor_state = (core.final_auditor or core.auditor).state()
        if self.recorder is not None and self.recorder.schedule is not None:
            schedule = self.recorder.schedule
            schedule.steps = loop.steps
            schedule.auditor = self.auditor_state
            schedule.labels = list(loop.task_labels)
            if error is not None:
                schedule.outcome = "failed"
                schedule.error = {"type": type(error).__name__, "message": str(error)}
        loop.quiesce()
        if error is not None and not loop.is_closed() and not loop.is_running():
            # What the failed run left suspended is cancelled and unwound now, with no run
            # deadline: left to the garbage collector, it would run its finally blocks
            # against a closed loop, at some later moment, in someone else's test.
            self._teardown(core)
        for task in asyncio.all_tasks(loop):  # only a loop that could not be run has any left
            discard_unstarted(task, abandon=error is not None)
            task._log_destroy_pending = False  # type: ignore[attr-defined]
        if loop.is_closed():
            return
        if not loop.is_running():
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception as exc:  # noqa: BLE001 - reported, teardown goes on
                logger.warning("shutting down async generators failed: %s", exc)
        loop.close()


