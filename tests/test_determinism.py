"""Determinism of the deterministic runtime: same seed, same run, in any process.

The workload mixes everything that could leak nondeterminism: labelled spawns, seeded
sleeps, user RNG draws, an asyncio.Queue, a simulated network exchange and storage
writes (synced and not).  ``workload`` is self-contained (its imports are inside) so the
very same source runs in subprocesses under other ``PYTHONHASHSEED`` values and other
Python versions.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from commonware_runtime import deterministic

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DIR = ROOT / "runtime"
SEEDS = range(100)


COMBOS = [(strategy, ordering) for strategy in ("random", "pct", "pos", "swarm") for ordering in ("any", "fifo")]


def workload(seed: int, strategy: str = "random", ordering: str = "any") -> tuple[str, list[str]]:
    """Run the mixed workload on ``seed``; returns (final auditor state, event log)."""
    import asyncio

    from commonware_runtime import deterministic

    async def main(ctx: deterministic.Context) -> list[str]:
        log: list[str] = []
        queue: asyncio.Queue = asyncio.Queue()
        listener = await ctx.bind(("127.0.0.1", 0))

        async def server(c: deterministic.Context) -> None:
            _, sink, stream = await listener.accept()
            for _ in range(3):
                n = (await stream.recv(1))[0]
                data = await stream.recv(n)
                await c.sleep(c.rng.random() * 0.005)
                await sink.send(bytes([n]) + bytes(reversed(data)))

        async def producer(c: deterministic.Context, i: int) -> None:
            for j in range(3):
                await c.sleep(c.rng.random() * 0.01)
                await queue.put((i, j, c.rng.randrange(1000)))
                log.append(f"put {i}.{j} t={c.current():.6f}")

        async def writer(c: deterministic.Context, i: int) -> None:
            blob, _ = await c.open("part", b"blob%d" % i)
            await blob.write_at(c.rng.randbytes(16), 0)
            if i % 2 == 0:
                await blob.sync()
            await blob.write_at(b"tail", 16)
            log.append(f"wrote {i} t={c.current():.6f}")

        server_handle = ctx.with_label("server").spawn(server)
        handles = [ctx.with_label(f"producer{i}").spawn(lambda c, i=i: producer(c, i)) for i in range(4)]
        handles += [ctx.with_label("writer").spawn(lambda c, i=i: writer(c, i)) for i in range(3)]
        sink, stream = await ctx.dial(listener.local_addr())
        for k in range(3):
            message = ctx.rng.randbytes(1 + k)
            await sink.send(bytes([len(message)]) + message)
            n = (await stream.recv(1))[0]
            log.append(f"echo {(await stream.recv(n)).hex()} t={ctx.current():.6f}")
        for _ in range(12):
            log.append(f"got {await queue.get()}")
        for handle in handles:
            await handle
        await server_handle
        log.append(f"end t={ctx.current():.6f} storage={ctx.storage_audit()} audit={ctx.auditor().state()}")
        return log

    runner = deterministic.Runner(deterministic.Config(seed=seed, timeout=60.0, strategy=strategy, ordering=ordering))
    log = runner.start(main)
    assert runner.auditor_state is not None
    return runner.auditor_state, log


def workload_script(seed: int) -> str:
    """A standalone script printing ``workload(seed, strategy, ordering)`` for every combination, as JSON."""
    source = textwrap.dedent(inspect.getsource(workload))
    return (
        "from __future__ import annotations\n"
        "import json, sys\n"
        f"{source}\n"
        f"print(json.dumps([workload({seed}, s, o) for s, o in {COMBOS!r}]))\n"
    )


def all_combos(seed: int) -> list[tuple[str, list[str]]]:
    return [workload(seed, strategy, ordering) for strategy, ordering in COMBOS]


def run_script(python: str, seed: int, env_extra: dict[str, str], pythonpath: list[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return subprocess.Popen(
        [python, "-c", workload_script(seed)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )


def collect(proc: subprocess.Popen[str], what: str) -> list[tuple[str, list[str]]]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{what} failed:\n{err}"
    return [(state, log) for state, log in json.loads(out)]


@pytest.fixture(scope="module")
def runs() -> dict[int, tuple[tuple[str, list[str]], tuple[str, list[str]]]]:
    return {seed: (workload(seed), workload(seed)) for seed in SEEDS}


def test_same_seed_twice_is_identical(runs: dict[int, Any]) -> None:
    for seed, (first, second) in runs.items():
        assert first[0] == second[0], f"seed {seed}: auditor states differ"
        assert first[1] == second[1], f"seed {seed}: outcomes differ"


def test_workload_really_ran(runs: dict[int, Any]) -> None:
    (state, log), _ = runs[0]
    assert len(state) == 64 and int(state, 16) >= 0
    assert sum(line.startswith("got ") for line in log) == 12
    assert sum(line.startswith("echo ") for line in log) == 3
    assert sum(line.startswith("wrote ") for line in log) == 3
    assert log[-1].startswith("end ")


def test_different_seeds_differ(runs: dict[int, Any]) -> None:
    states = {first[0] for first, _ in runs.values()}
    assert len(states) == len(SEEDS)
    # Not only the hash: the seed really changes what happens (interleavings, times, draws).
    logs = {tuple(first[1][:-1]) for first, _ in runs.values()}
    assert len(logs) >= 0.9 * len(SEEDS)
    orders = {tuple(line.split(" t=")[0] for line in first[1] if line.startswith(("put", "wrote"))) for first, _ in runs.values()}
    assert len(orders) > 10  # the scheduler's choices vary with the seed


def test_same_seed_across_processes_and_hash_seeds() -> None:
    seed = 11
    expected = all_combos(seed)
    # Under "any" each strategy makes its own choices (under "fifo" they choose timing only,
    # where random and pos draw alike).
    assert len({state for (_, ordering), (state, _) in zip(COMBOS, expected) if ordering == "any"}) == 4
    procs = {
        value: run_script(sys.executable, seed, {"PYTHONHASHSEED": value}, [str(RUNTIME_DIR)])
        for value in ("0", "1", "random", "4294967295")
    }
    for value, proc in procs.items():
        got = collect(proc, f"PYTHONHASHSEED={value}")
        for combo, mine, theirs in zip(COMBOS, expected, got, strict=True):
            assert theirs == mine, f"PYTHONHASHSEED={value}, strategy and ordering {combo}: diverged"


VERSIONS = ("3.11", "3.12", "3.13")


def _version_of(python: str, env: dict[str, str] | None = None) -> str | None:
    """``"3.12"`` for an interpreter that runs, else None (a missing file, a pyenv shim of
    a version pyenv has not selected)."""
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, env=env, timeout=60)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _pyenv_python(version: str) -> str | None:
    """``python3.X`` of a pyenv on PATH.  Its shims on PATH answer only for the versions it
    has selected (``pyenv global``), so it is asked with every installed version selected."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return None
    installed = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True, timeout=60)
    if installed.returncode != 0 or not installed.stdout.split():
        return None
    env = dict(os.environ, PYENV_VERSION=":".join(installed.stdout.split()))
    found = subprocess.run([pyenv, "which", f"python{version}"], capture_output=True, text=True, env=env, timeout=60)
    return (found.stdout.strip() or None) if found.returncode == 0 else None


@functools.cache
def _python_versions() -> dict[str, str]:
    """Interpreters to compare with, by version: those listed in ``CW_PYTHONS`` (paths or
    names on PATH, separated by ``os.pathsep``), else ``python3.X`` on PATH (through pyenv's
    own command when the first one on PATH is a pyenv shim that does not answer)."""
    listed = os.environ.get("CW_PYTHONS")
    if listed:
        found: dict[str, str] = {}
        for python in filter(None, listed.split(os.pathsep)):
            version = _version_of(shutil.which(python) or python)
            if version is not None:
                found.setdefault(version, python)
        return found
    found = {}
    for version in VERSIONS:
        python = shutil.which(f"python{version}")
        if python is None or _version_of(python) != version:
            python = _pyenv_python(version)
        if python is not None and _version_of(python) == version:
            found[version] = python
    return found


@pytest.fixture(scope="session")
def foreign_site(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory exposing only this venv's pure-Python prometheus_client to other interpreters."""
    import prometheus_client

    site = tmp_path_factory.mktemp("foreign_site")
    (site / "prometheus_client").symlink_to(Path(prometheus_client.__file__).parent, target_is_directory=True)
    return str(site)


@pytest.mark.parametrize("version", VERSIONS)
def test_same_seed_across_python_versions(version: str, foreign_site: str) -> None:
    python = _python_versions().get(version)
    if python is None:
        where = "in CW_PYTHONS" if os.environ.get("CW_PYTHONS") else f"as python{version} on PATH"
        pytest.skip(
            f"no Python {version} found {where}: set CW_PYTHONS to the interpreters to compare with, "
            f"separated by {os.pathsep!r} (e.g. CW_PYTHONS=/usr/bin/python3.12{os.pathsep}/usr/bin/python3.13)"
        )
    pythonpath = [str(RUNTIME_DIR), foreign_site]
    probe_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    probe_env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    probe = subprocess.run(
        [python, "-c", "import commonware_runtime.deterministic"], env=probe_env, capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"commonware_runtime is not importable on {python}: {probe.stderr.strip().splitlines()[-1:]}")
    seed = 23
    expected = all_combos(seed)
    procs = [run_script(python, seed, {"PYTHONHASHSEED": value}, pythonpath) for value in ("0", "random")]
    for proc in procs:
        for combo, mine, theirs in zip(COMBOS, expected, collect(proc, python), strict=True):
            assert theirs == mine, f"{python} diverged from {sys.version.split()[0]} under {combo}"


# -- the user RNG stream ---------------------------------------------------------------------


def rng_draws(seed: int, extra_tasks: int, cycle: float = 0.001) -> tuple[list[Any], str]:
    """Root draws before and after spawning ``extra_tasks`` unrelated tasks that reshape the schedule."""

    async def busy(ctx: deterministic.Context, i: int) -> None:
        for _ in range(i % 5 + 1):
            await ctx.sleep(0.001 * (i % 3))
        await asyncio.sleep(0)

    async def main(ctx: deterministic.Context) -> list[Any]:
        first = [ctx.rng.random() for _ in range(3)]
        for i in range(extra_tasks):
            ctx.with_label(f"extra{i}").spawn(lambda c, i=i: busy(c, i))
        await ctx.sleep(0.05)
        second = [ctx.rng.getrandbits(32), ctx.rng.randrange(10**6), ctx.rng.randbytes(4).hex()]
        return first + second

    runner = deterministic.Runner(deterministic.Config(seed=seed, cycle=cycle))
    values = runner.start(main)
    assert runner.auditor_state is not None
    return values, runner.auditor_state


def test_rng_stream_does_not_shift_with_schedule() -> None:
    for seed in (0, 1, 42):
        base, base_state = rng_draws(seed, 0)
        for extra in (1, 10, 40):
            values, state = rng_draws(seed, extra)
            assert values == base, f"seed {seed}: {extra} extra tasks shifted the user RNG stream"
            assert state != base_state  # the schedule really changed
        values, state = rng_draws(seed, 10, cycle=0.003)
        assert values == base


def test_rng_stream_depends_on_seed() -> None:
    streams = {tuple(rng_draws(seed, 0)[0]) for seed in range(20)}
    assert len(streams) == 20


def test_rng_stream_independent_of_spawning_tasks_draws() -> None:
    """Tasks drawing in a fixed order (sequenced by awaits) see the same values whatever the extras."""

    def run(extra: int) -> list[float]:
        async def main(ctx: deterministic.Context) -> list[float]:
            for i in range(extra):
                ctx.spawn(lambda c: c.sleep(0.002))
            out = []
            for i in range(3):

                async def draw(c: deterministic.Context) -> float:
                    await c.sleep(0.001)
                    return c.rng.random()

                out.append(await ctx.spawn(draw))
            return out

        return deterministic.Runner.seeded(9).start(main)

    assert run(0) == run(5) == run(50)
