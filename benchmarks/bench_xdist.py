"""A seed sweep under pytest-xdist: ``-n 2`` against ``-n 0``, side by side in one run.

Run: ``.venv/bin/python benchmarks/bench_xdist.py [--rounds 3] [--seeds 1000] [--workers 2]``.

Three workloads, each a fresh temporary project run by a fresh ``python -m pytest``:

- ``sweep``: one deterministic test of about 5 ms (a producer and a consumer passing 160
  messages through an ``asyncio.Queue`` with virtual sleeps) over ``--seeds`` seeds, each
  seed its own item, the plugin's defaults (swarm, traces on failure);
- ``plain``: the same number of plain pytest items that each spin 5 ms of CPU, without the
  plugin (``-p no:commonware``): what pytest-xdist itself costs per item on this machine;
- ``sweep-20ms``: the deterministic test with 700 messages (about 20 ms), a third of the seeds.

Rounds alternate ``-n 0`` and ``-n N``; the table gives median wall times and the speed-up,
and the CPU time of the controller and of its workers (``RUSAGE_CHILDREN``) in the last round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """
import asyncio

async def test_pipeline(deterministic_context):
    queue = asyncio.Queue()

    async def producer(ctx):
        for i in range(MESSAGES):
            await queue.put(i)
            await ctx.sleep(0.001)
        await queue.put(None)

    async def consumer(ctx):
        total = 0
        while (item := await queue.get()) is not None:
            total += item
        return total

    sent = deterministic_context.spawn(producer)
    received = deterministic_context.spawn(consumer)
    await sent
    assert await received == sum(range(MESSAGES))
"""

PLAIN = """
import time

import pytest

@pytest.mark.parametrize("seed", range(SEEDS))
def test_spin(seed):
    start = time.process_time()
    while time.process_time() - start < 0.005:
        pass
"""

# Reports the controller's own CPU time and its workers' (they have exited by then).
CONFTEST = """
import resource, sys

def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):
        return
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write(f"CW-CPU {own.ru_utime + own.ru_stime:.3f} {workers.ru_utime + workers.ru_stime:.3f}\\n")
"""


def _project(root: Path, name: str, seeds: int) -> tuple[Path, list[str]]:
    project = root / name
    project.mkdir()
    (project / "conftest.py").write_text(CONFTEST)
    if name == "plain":
        (project / "test_plain.py").write_text(PLAIN.replace("SEEDS", str(seeds)))
        return project, ["-p", "no:commonware"]
    messages = 700 if name == "sweep-20ms" else 160
    (project / "test_sweep.py").write_text(SWEEP.replace("MESSAGES", str(messages)))
    return project, [f"--cw-seeds={seeds}"]


def _run(project: Path, args: list[str], workers: int) -> tuple[float, float, float]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio",
               "-p", "no:randomly", "-n", str(workers), *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {project}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    line = next(line for line in done.stderr.splitlines() if line.startswith("CW-CPU "))
    own, children = (float(x) for x in line.split()[1:])
    return wall, own, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cw-bench-xdist-") as tmp:
        for name, seeds in (("sweep", opts.seeds), ("plain", opts.seeds), ("sweep-20ms", opts.seeds // 3)):
            project, args = _project(Path(tmp), name, seeds)
            walls: dict[int, list[float]] = {0: [], opts.workers: []}
            cpu: dict[int, tuple[float, float]] = {}
            for r in range(opts.rounds):
                for n in (0, opts.workers):
                    wall, own, children = _run(project, args, n)
                    walls[n].append(wall)
                    cpu[n] = (own, children)
                    print(f"  [round {r + 1}/{opts.rounds}] {name:<10} -n {n}: {wall:6.2f} s", file=sys.stderr)
            serial, parallel = statistics.median(walls[0]), statistics.median(walls[opts.workers])
            rows.append((name, seeds, serial, parallel, cpu[0][0], cpu[opts.workers]))
    print(f"\n| workload | items | -n 0 wall | -n {opts.workers} wall | speed-up | CPU -n 0 | "
          f"CPU -n {opts.workers}: controller + workers |")
    print("|---|---|---|---|---|---|---|")
    for name, seeds, serial, parallel, cpu_serial, (own, children) in rows:
        print(f"| {name} | {seeds} | {serial:.2f} s | {parallel:.2f} s | {serial / parallel:.2f}x | "
              f"{cpu_serial:.1f} s | {own:.1f} s + {children:.1f} s |")


if __name__ == "__main__":
    main()
