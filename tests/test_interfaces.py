"""The contract as types (``commonware_runtime.interfaces``): both runtimes conform, at run
time and for mypy, and mypy reports an object that lacks a member."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from commonware_runtime import deterministic, interfaces, production

HERE = Path(__file__).resolve().parent
RUNTIME = HERE.parent / "runtime"


async def exercise(context: interfaces.Context) -> list[str]:
    """Protocol code written against the interfaces only."""
    assert isinstance(context, interfaces.Context)
    listener = await context.bind(("127.0.0.1", 0))
    assert isinstance(listener, interfaces.Listener)

    async def server(ctx: interfaces.Context) -> None:
        _, sink, stream = await listener.accept()
        assert isinstance(sink, interfaces.Sink) and isinstance(stream, interfaces.Stream)
        await sink.send(await stream.recv(2))

    context.spawn(server)
    sink, stream = await context.dial(listener.local_addr())
    await sink.send(b"hi")
    echoed = await stream.recv(2)
    blob, size = await context.open("interfaces", b"blob")
    assert isinstance(blob, interfaces.Blob) and size == 0
    await blob.write_at(echoed, 0)
    await blob.sync()
    data = await blob.read_at(2, 0)
    await blob.close()
    sink.close()
    stream.close()
    await listener.close()
    return [type(context).__module__, bytes(data).decode()]


def test_both_runtimes_conform_at_run_time(tmp_path: Path) -> None:
    module, data = deterministic.Runner.seeded(1).start(exercise)
    assert (module, data) == ("commonware_runtime.deterministic.context", "hi")
    module, data = production.Runner(production.Config(storage_directory=tmp_path)).start(exercise)
    assert (module, data) == ("commonware_runtime.production.context", "hi")


def test_strategies_conform() -> None:
    for strategy in (deterministic.Random(), deterministic.PCT(), deterministic.Swarm(), deterministic.Walk()):
        assert isinstance(strategy, interfaces.Strategy)
    assert not isinstance(object(), interfaces.Strategy)


def mypy(*files: Path) -> tuple[str, int]:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (the 'test' extra installs it)")
    env_path = os.environ.get("MYPYPATH")
    os.environ["MYPYPATH"] = str(RUNTIME)
    try:
        out, err, status = api.run(["--strict", "--follow-imports=silent", "--no-incremental",
                                    *(str(f) for f in files)])
    finally:
        if env_path is None:
            os.environ.pop("MYPYPATH", None)
        else:
            os.environ["MYPYPATH"] = env_path
    return out + err, status


def test_mypy_checks_both_runtimes_against_the_protocols() -> None:
    out, status = mypy(HERE / "typing" / "conformance.py")
    assert status == 0, out


def test_mypy_reports_an_object_that_lacks_a_member() -> None:
    out, status = mypy(HERE / "typing" / "missing_member.py")
    assert status == 1
    assert '"NoRecv" is missing following "Stream" protocol member' in out and "recv" in out
    assert '"HalfSink"' in out and "close" in out


def test_examples_annotate_against_the_protocols() -> None:
    sources: dict[str, Any] = {p.name: p.read_text() for p in (HERE.parent / "examples").glob("*.py")}
    assert sources and all("context: Any" not in text for text in sources.values())
