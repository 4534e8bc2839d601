"""production.telemetry: the /metrics HTTP endpoint and structured logging."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from commonware_runtime import BindFailed, deterministic
from commonware_runtime.production import Config, Context, Runner, telemetry
from prometheus_client import Counter

log = logging.getLogger("test_telemetry")


def run(main: Any, tmp_path: Path, **kw: Any) -> Any:
    return Runner(Config(storage_directory=tmp_path / "storage", **kw)).start(main)


def http_get(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


async def raw_request(addr: tuple[str, int], payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return data


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_metrics_endpoint_serves_registered_metrics(tmp_path: Path, event_loop: str) -> None:
    if event_loop == "uvloop":
        pytest.importorskip("uvloop")

    async def main(context: Context) -> tuple[tuple[str, int], list[Any]]:
        t = telemetry.init(context, json=True, metrics=("127.0.0.1", 0), stream=io.StringIO())
        assert t.address is not None and t.address[0] == "127.0.0.1" and t.address[1] > 0
        counter = context.with_label("app").register("requests", "Requests handled", Counter)
        counter.inc(5)
        base = f"http://127.0.0.1:{t.address[1]}"
        # urllib blocks: run it off the loop, which keeps serving meanwhile.
        got = await context.spawn_blocking(lambda ctx: http_get(base + "/metrics"))
        missing = await context.spawn_blocking(lambda ctx: http_get(base + "/nope"))
        head = await context.spawn_blocking(lambda ctx: http_get(base + "/metrics", method="HEAD"))
        post = await context.spawn_blocking(lambda ctx: http_get(base + "/metrics?x=1", method="POST"))
        return t.address, [got, missing, head, post]

    address, (got, missing, head, post) = run(main, tmp_path, event_loop=event_loop)
    status, headers, body = got
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "app_requests_total 5.0" in body
    assert "runtime_process_resident_memory_bytes" in body
    assert "runtime_tasks_spawned_total" in body
    assert missing[0] == 404
    assert head[0] == 200 and head[2] == "" and int(head[1]["Content-Length"]) > 0
    assert post[0] == 405 and post[1]["Allow"] == "GET, HEAD"
    # The server closed with the run.
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=1).close()


def test_raw_clients_bad_requests_and_slow_writers(tmp_path: Path) -> None:
    async def main(context: Context) -> list[bytes]:
        t = telemetry.init(context, metrics=("127.0.0.1", 0), stream=io.StringIO())
        assert t.address is not None
        answers = [
            await raw_request(t.address, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n"),
            await raw_request(t.address, b"garbage\r\n\r\n"),
            await raw_request(t.address, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"),
        ]
        # A request split over several writes.
        reader, writer = await asyncio.open_connection(*t.address)
        for part in (b"GET /met", b"rics HTTP/1.1\r\n", b"\r\n"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.005)
        answers.append(await asyncio.wait_for(reader.read(), 5))
        writer.close()
        # Concurrent clients.
        many = await asyncio.gather(
            *(raw_request(t.address, b"GET /metrics HTTP/1.1\r\n\r\n") for _ in range(20))
        )
        assert all(a.startswith(b"HTTP/1.1 200 OK") for a in many)
        # A client left idle is still connected when the run ends; closing must not hang.
        idle.append(socket.create_connection(t.address, timeout=5))
        await asyncio.sleep(0.01)
        return answers

    idle: list[socket.socket] = []
    ok, bad, huge, split = run(main, tmp_path)
    # The server side of the idle connection was closed with the run.
    assert idle[0].recv(10) == b""
    idle[0].close()
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b"runtime_process_threads" in ok
    assert bad.startswith(b"HTTP/1.1 400")
    assert huge.startswith(b"HTTP/1.1 431")
    assert split.startswith(b"HTTP/1.1 200 OK")


def test_json_logs_parse(tmp_path: Path) -> None:
    stream = io.StringIO()

    async def main(context: Context) -> None:
        telemetry.init(context, level=logging.DEBUG, json=True, metrics=None, stream=stream)
        log.debug("from the root %s", "task", extra={"peer": "10.0.0.1", "attempt": 2})

        async def worker(ctx: Context) -> None:
            log.info("from a worker")
            try:
                raise ValueError("kaput")
            except ValueError:
                log.exception("caught")

        await context.with_label("worker").spawn(worker)
        await context.with_label("blocking").spawn_blocking(lambda ctx: log.warning("from a thread"))

        async def plain() -> None:
            log.info("from a plain asyncio task")

        await asyncio.get_running_loop().create_task(plain())

    run(main, tmp_path)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_message = {entry["message"]: entry for entry in lines}
    root = by_message["from the root task"]
    assert root["level"] == "DEBUG"
    assert root["logger"] == "test_telemetry"
    assert root["task"] == "root"
    assert root["peer"] == "10.0.0.1" and root["attempt"] == 2
    assert root["time"].endswith("Z") and "T" in root["time"]
    assert "thread" not in root
    assert by_message["from a worker"]["task"] == "worker"
    caught = by_message["caught"]
    assert caught["level"] == "ERROR"
    assert "ValueError: kaput" in caught["exception"] and "Traceback" in caught["exception"]
    thread = by_message["from a thread"]
    assert thread["task"] == "blocking" and thread["thread"].startswith("commonware-blocking")
    assert "task" not in by_message["from a plain asyncio task"]


def test_task_failure_logged_as_json(tmp_path: Path) -> None:
    stream = io.StringIO()

    async def main(context: Context) -> None:
        telemetry.init(context, json=True, metrics=None, stream=stream)

        async def boom(ctx: Context) -> None:
            raise RuntimeError("exploded")

        handle = context.with_label("bad").spawn(boom)
        await asyncio.sleep(0.01)
        assert handle.done()

    run(main, tmp_path)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    failure = next(e for e in entries if e["logger"] == "commonware_runtime" and e["level"] == "ERROR")
    assert "bad" in failure["message"] and failure["task"] == "bad"
    assert "RuntimeError: exploded" in failure["exception"]


def test_plain_text_logs_and_level(tmp_path: Path) -> None:
    stream = io.StringIO()

    async def main(context: Context) -> None:
        telemetry.init(context, level="WARNING", json=False, metrics=None, stream=stream)
        log.info("hidden")
        log.warning("shown")

    run(main, tmp_path)
    text = stream.getvalue()
    assert "hidden" not in text
    (line,) = text.splitlines()
    assert "WARNING" in line and "test_telemetry [root]: shown" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_logging_is_restored_when_the_run_ends(tmp_path: Path) -> None:
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    stream = io.StringIO()

    async def main(context: Context) -> None:
        telemetry.init(context, level=logging.DEBUG, metrics=None, stream=io.StringIO())
        t = telemetry.init(context, level=logging.INFO, metrics=None, stream=stream)  # replaces the first
        assert len(root.handlers) == len(before_handlers) + 1
        t.close()
        t.close()  # idempotent
        assert root.handlers == before_handlers

    run(main, tmp_path)
    assert root.handlers == before_handlers and root.level == before_level
    log.warning("after the run")
    assert "after the run" not in stream.getvalue()


def test_init_validates_arguments(tmp_path: Path) -> None:
    async def main(context: Context) -> None:
        with pytest.raises(TypeError, match="level"):
            telemetry.init(context, level=1.5, metrics=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="level"):
            telemetry.init(context, level="LOUD", metrics=None)
        with pytest.raises(TypeError, match="json"):
            telemetry.init(context, json="yes", metrics=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="port"):
            telemetry.init(context, metrics=("127.0.0.1", 70000))
        taken = telemetry.init(context, metrics=("127.0.0.1", 0), stream=io.StringIO())
        with pytest.raises(BindFailed, match="metrics endpoint"):
            telemetry.init(context, metrics=taken.address, stream=io.StringIO())

    run(main, tmp_path)

    def det_main(context: Any) -> Any:
        async def body() -> None:
            with pytest.raises(TypeError, match="production.Context"):
                telemetry.init(context, metrics=None)

        return body()

    deterministic.Runner().start(det_main)
