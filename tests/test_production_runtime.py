"""The production runtime's Runner, Config and Context (beyond the shared contract tests)."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from commonware_runtime import Closed, Exited, Timeout, production
from commonware_runtime.production import Config, Context, Runner

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not _has_uvloop(), reason="uvloop missing"))]


def run(main: Any, tmp_path: Path, **kw: Any) -> Any:
    return Runner(Config(storage_directory=tmp_path / "storage", **kw)).start(main)


# -- Config -----------------------------------------------------------------------------------


def test_config_defaults_and_builders(tmp_path: Path) -> None:
    config = Config()
    assert config.catch_panics is True
    assert config.event_loop == "asyncio"
    assert config.tcp_nodelay is True
    assert config.connect_timeout == 10.0
    assert config.read_timeout is None and config.write_timeout is None
    assert config.blocking_threads == min(32, (os.cpu_count() or 1) + 4)
    built = (
        config.with_storage_directory(tmp_path)
        .with_catch_panics(False)
        .with_event_loop("uvloop")
        .with_tcp_nodelay(False)
        .with_connect_timeout(timedelta(seconds=2))
        .with_read_timeout(1.5)
        .with_write_timeout(2.5)
        .with_blocking_threads(3)
        .with_storage_backend("io_uring")
    )
    assert built.to_dict() == {
        "storage_directory": str(tmp_path),
        "catch_panics": False,
        "event_loop": "uvloop",
        "tcp_nodelay": False,
        "connect_timeout": 2.0,
        "read_timeout": 1.5,
        "write_timeout": 2.5,
        "blocking_threads": 3,
        "storage_backend": "io_uring",
    }
    assert config.storage_backend == "default"
    assert config.catch_panics is True  # frozen: builders return new configs
    with pytest.raises(dataclasses_frozen_error()):
        config.catch_panics = False  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    ("kw", "error", "field"),
    [
        ({"catch_panics": 1}, TypeError, "catch_panics"),
        ({"event_loop": "trio"}, ValueError, "event_loop"),
        ({"event_loop": None}, TypeError, "event_loop"),
        ({"tcp_nodelay": "yes"}, TypeError, "tcp_nodelay"),
        ({"connect_timeout": -1.0}, ValueError, "connect_timeout"),
        ({"read_timeout": "1s"}, TypeError, "read_timeout"),
        ({"write_timeout": float("nan")}, ValueError, "write_timeout"),
        ({"blocking_threads": 0}, ValueError, "blocking_threads"),
        ({"blocking_threads": 2.0}, TypeError, "blocking_threads"),
        ({"storage_directory": 5}, TypeError, "storage_directory"),
        ({"storage_directory": "a\x00b"}, ValueError, "storage_directory"),
        ({"storage_directory": ""}, ValueError, "storage_directory"),
    ],
)
def test_config_rejects_bad_values(kw: dict[str, Any], error: type[Exception], field: str) -> None:
    with pytest.raises(error, match=field):
        Config(**kw)


def test_runner_rejects_a_foreign_config() -> None:
    from commonware_runtime import deterministic

    with pytest.raises(TypeError, match="production.Config"):
        Runner(deterministic.Config())  # type: ignore[arg-type]


# -- Runner -----------------------------------------------------------------------------------


def test_start_returns_the_root_value_and_runs_once(tmp_path: Path) -> None:
    async def main(context: Context) -> str:
        assert isinstance(context, Context)
        await asyncio.sleep(0)
        return "done"

    runner = Runner(Config(storage_directory=tmp_path))
    assert runner.start(main) == "done"
    with pytest.raises(RuntimeError, match="runs once"):
        runner.start(main)


def test_start_rejects_non_callables_and_running_loops(tmp_path: Path) -> None:
    runner = Runner(Config(storage_directory=tmp_path))
    with pytest.raises(TypeError, match="main"):
        runner.start(42)  # type: ignore[arg-type]

    async def inside() -> None:
        async def main(context: Context) -> None:
            return None

        with pytest.raises(RuntimeError, match="running event loop"):
            Runner(Config(storage_directory=tmp_path)).start(main)

    asyncio.run(inside())
    # Neither failure used the runner up.
    assert runner.start(lambda ctx: asyncio.sleep(0, result=1)) == 1


def test_root_exception_propagates(tmp_path: Path) -> None:
    async def main(context: Context) -> None:
        raise KeyError("root failed")

    with pytest.raises(KeyError, match="root failed"):
        run(main, tmp_path)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_tasks_still_running_are_cancelled_and_unwound(event_loop: str, tmp_path: Path) -> None:
    events: list[str] = []

    async def forever(context: Context) -> None:
        try:
            events.append("started")
            await asyncio.sleep(3600)
        finally:
            # Cleanup that itself awaits must still get to run.
            await asyncio.sleep(0)
            events.append("finally")

    async def main(context: Context) -> Any:
        handle = context.with_label("forever").spawn(forever)
        await asyncio.sleep(0.01)
        return handle

    started = time.monotonic()
    handle = run(main, tmp_path, event_loop=event_loop)
    assert time.monotonic() - started < 5
    assert events == ["started", "finally"]
    assert handle.done()

    async def check() -> None:
        with pytest.raises(Closed):
            await handle

    asyncio.run(check())


@pytest.mark.parametrize("event_loop", LOOPS)
def test_caught_panic_raises_exited_and_the_run_continues(event_loop: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def boom(context: Context) -> None:
        raise ValueError("boom")

    async def main(context: Context) -> str:
        handle = context.with_label("bad").spawn(boom)
        with pytest.raises(Exited) as info:
            await handle
        assert isinstance(info.value.__cause__, ValueError)
        await context.sleep(0.001)
        return "survived"

    assert run(main, tmp_path, event_loop=event_loop) == "survived"
    assert any("bad" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_uncaught_panic_is_raised_from_start(event_loop: str, tmp_path: Path) -> None:
    finished: list[str] = []

    async def boom(context: Context) -> None:
        raise ValueError("boom")

    async def sibling(context: Context) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            finished.append("sibling")

    async def main(context: Context) -> None:
        context.spawn(sibling)
        context.spawn(boom)
        await asyncio.sleep(3600)

    started = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        run(main, tmp_path, catch_panics=False, event_loop=event_loop)
    assert time.monotonic() - started < 5
    assert finished == ["sibling"]  # the teardown still unwound the other tasks


@pytest.mark.parametrize("event_loop", LOOPS)
def test_spawn_blocking_runs_on_pool_and_dedicated_threads(event_loop: str, tmp_path: Path) -> None:
    async def main(context: Context) -> tuple[str, str, str, list[str]]:
        loop_thread = threading.current_thread().name
        pooled = await context.spawn_blocking(lambda ctx: threading.current_thread().name)
        dedicated = await context.spawn_blocking(lambda ctx: threading.current_thread().name, dedicated=True)
        second = await context.spawn_blocking(lambda ctx: threading.current_thread().name, dedicated=True)
        ref = await context.spawn_blocking_ref(dedicated=True)(lambda: threading.current_thread().name)
        return loop_thread, pooled, dedicated, [second, ref]

    loop_thread, pooled, dedicated, others = run(main, tmp_path, event_loop=event_loop)
    assert pooled != loop_thread and pooled.startswith("commonware-blocking")
    assert dedicated != loop_thread and dedicated.startswith("commonware-dedicated-")
    # Each dedicated call gets a new thread.
    assert len({dedicated, *others}) == 3


def test_spawn_blocking_failure_and_pool_size(tmp_path: Path) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def work(ctx: Context) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        return 1

    def fail(ctx: Context) -> None:
        raise OSError("disk on fire")

    async def main(context: Context) -> int:
        with pytest.raises(Exited) as info:
            await context.spawn_blocking(fail, dedicated=True)
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(Exited):
            await context.spawn_blocking(fail)
        handles = [context.spawn_blocking(work) for _ in range(8)]
        return sum([await h for h in handles])

    assert run(main, tmp_path, blocking_threads=2) == 8
    assert peak == 2


def test_stop_waits_for_signals_and_times_out(tmp_path: Path) -> None:
    async def holder(context: Context) -> int:
        async with context.stopped() as sig:
            value = await sig
            await asyncio.sleep(0.02)  # cleanup before releasing
            return value

    async def stubborn(context: Context) -> None:
        await context.stopped()
        await asyncio.sleep(3600)  # never releases

    async def main(context: Context) -> tuple[int, int | None]:
        h = context.spawn(holder)
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await context.stop(7, timeout=5.0)
        assert time.monotonic() - started >= 0.015
        value = await h
        context.spawn(stubborn)
        await asyncio.sleep(0.01)
        with pytest.raises(Timeout):
            await context.stop(9, timeout=0.05)
        return value, context.stopped().value  # the first stop value wins

    assert run(main, tmp_path) == (7, 7)


def test_clock_and_timeouts_are_real_time(tmp_path: Path) -> None:
    async def main(context: Context) -> None:
        assert abs(context.current() - time.time()) < 1.0
        start = time.monotonic()
        await context.sleep(0.05)
        assert 0.045 <= time.monotonic() - start < 2.0
        start = time.monotonic()
        await context.sleep(timedelta(milliseconds=20))
        assert time.monotonic() - start >= 0.015
        start = time.monotonic()
        await context.sleep_until(context.current() + 0.05)
        assert 0.04 <= time.monotonic() - start < 2.0
        start = time.monotonic()
        await context.sleep_until(context.current() - 100.0)  # past: returns at once
        assert time.monotonic() - start < 0.05
        with pytest.raises(Timeout):
            await context.timeout(0.02, asyncio.sleep(10))
        assert await context.timeout(1.0, asyncio.sleep(0, result="ok")) == "ok"
        with pytest.raises(ValueError, match="duration"):
            await context.sleep(-1)
        with pytest.raises(TypeError, match="deadline"):
            await context.sleep_until("soon")  # type: ignore[arg-type]

    run(main, tmp_path)


def test_rng_is_system_random(tmp_path: Path) -> None:
    async def main(context: Context) -> tuple[int, int]:
        assert isinstance(context.rng, random.SystemRandom)
        assert context.with_label("a").rng is context.rng
        return context.rng.getrandbits(64), context.rng.getrandbits(64)

    a, b = run(main, tmp_path)
    assert a != b


def test_deterministic_only_members_are_absent(tmp_path: Path) -> None:
    async def main(context: Context) -> None:
        for name in ("auditor", "storage_audit", "with_host", "storage_faults", "network"):
            assert not hasattr(context, name)
        with pytest.raises(AttributeError, match="deterministic runtime"):
            context.with_host("10.0.0.1")  # type: ignore[attr-defined]
        with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
            context.nonsense  # type: ignore[attr-defined]  # noqa: B018

    run(main, tmp_path)


@posix_only
@pytest.mark.parametrize("event_loop", LOOPS)
def test_sigterm_triggers_stop(tmp_path: Path, event_loop: str) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    async def main(context: Context) -> int:
        async with context.stopped() as sig:
            os.kill(os.getpid(), signal.SIGTERM)
            return await context.timeout(5.0, sig)

    assert run(main, tmp_path, event_loop=event_loop) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous  # handler removed at the end


@posix_only
@pytest.mark.parametrize("event_loop", LOOPS)
def test_second_sigint_cancels_the_root(tmp_path: Path, event_loop: str) -> None:
    previous = signal.getsignal(signal.SIGINT)

    async def main(context: Context) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        assert await context.timeout(5.0, context.stopped()) == 128 + signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(5)

    started = time.monotonic()
    with pytest.raises(Closed, match="root"):
        run(main, tmp_path, event_loop=event_loop)
    assert time.monotonic() - started < 4
    assert signal.getsignal(signal.SIGINT) == previous


def test_no_signal_handlers_off_the_main_thread(tmp_path: Path) -> None:
    result: list[Any] = []

    def body() -> None:
        result.append(run(lambda ctx: asyncio.sleep(0, result="thread"), tmp_path))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert result == ["thread"]


def test_uvloop_event_loop(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main(context: Context) -> tuple[type, str]:
        listener = await context.bind(("127.0.0.1", 0))
        sink, stream = await context.dial(listener.local_addr())
        _addr, peer_sink, peer_stream = await listener.accept()
        await sink.send(b"ping")
        got = await peer_stream.recv(4)
        blocking = await context.spawn_blocking(lambda ctx: "pool")
        await context.sleep(0.001)
        for half in (sink, stream, peer_sink, peer_stream, listener):
            half.close()
        return type(asyncio.get_running_loop()), got.decode() + blocking

    loop_type, text = run(main, tmp_path, event_loop="uvloop")
    assert loop_type is uvloop.Loop
    assert text == "pingpool"


def test_uvloop_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` raise ImportError
    runner = Runner(Config(storage_directory=tmp_path, event_loop="uvloop"))
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        runner.start(lambda ctx: asyncio.sleep(0))


def test_process_metrics_are_exposed(tmp_path: Path) -> None:
    async def main(context: Context) -> str:
        return context.encode()

    text = run(main, tmp_path)
    values = {}
    for line in text.splitlines():
        if line.startswith("runtime_process_"):
            name, value = line.split(" ")
            values[name] = float(value)
    for name in (
        "runtime_process_resident_memory_bytes",
        "runtime_process_cpu_seconds_total",
        "runtime_process_open_fds",
        "runtime_process_threads",
    ):
        assert name in values, f"{name} missing from encode()"
    assert values["runtime_process_resident_memory_bytes"] > 1 << 20
    assert values["runtime_process_cpu_seconds_total"] > 0
    assert values["runtime_process_open_fds"] >= 3
    assert values["runtime_process_threads"] >= 1
    assert "runtime_tasks_spawned_total" in text


def test_process_sample_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from commonware_runtime.production import process

    monkeypatch.setattr(process, "_PROC", "/nonexistent-proc")
    s = process.sample()
    assert s.cpu_seconds is not None and s.cpu_seconds >= 0
    assert s.threads == threading.active_count()
    if process.resource is not None:
        assert s.resident_memory_bytes is not None and s.resident_memory_bytes > 0


def test_metrics_register_with_labels(tmp_path: Path) -> None:
    from prometheus_client import Counter

    async def main(context: Context) -> str:
        counter = context.with_label("peer").register("messages", "Messages seen", Counter)
        counter.inc(3)
        assert context.with_label("peer").register("messages", "Messages seen", Counter) is counter
        return context.encode()

    assert "peer_messages_total 3.0" in run(main, tmp_path)


def test_default_storage_directory_is_created_and_kept() -> None:
    async def main(context: Context) -> list[bytes]:
        blob, size = await context.open("part", b"blob")
        assert size == 0
        await blob.write_at(b"hello", 0)
        await blob.sync()
        await blob.close()
        return await context.scan("part")

    runner = Runner()
    assert runner.storage_directory is None
    assert runner.start(main) == [b"blob"]
    directory = Path(runner.storage_directory or "")
    assert directory.is_dir()
    assert directory.parent == Path(tempfile.gettempdir())
    assert (directory / "part" / b"blob".hex()).read_bytes() == b"hello"
    shutil.rmtree(directory)


def test_storage_uses_the_configured_directory(tmp_path: Path) -> None:
    async def main(context: Context) -> None:
        blob, _ = await context.open("p", b"\x01")
        await blob.write_at(b"xyz", 2)
        await blob.close()
        await context.remove("p", b"\x01")
        assert await context.scan("p") == []

    run(main, tmp_path)
    assert (tmp_path / "storage" / "p").is_dir()


def test_asyncio_default_executor_is_the_pool_and_is_shut_down(tmp_path: Path) -> None:
    async def main(context: Context) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: threading.current_thread().name)

    assert run(main, tmp_path).startswith("commonware-blocking")
    time.sleep(0.01)
    assert not any(t.name.startswith("commonware-blocking") for t in threading.enumerate())


def test_production_exports() -> None:
    assert set(production.__all__) >= {"Runner", "Config", "Context", "telemetry"}
    assert callable(production.telemetry.init)
