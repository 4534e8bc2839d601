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
the speed-up of the items phase alone (the first item's start to the last report) beside the
fixed part of each run (interpreter start-up, plugin loading and collection before the first
item; reporting, worker shutdown and interpreter exit after the last), and the CPU time of the
controller and of its workers (``RUSAGE_CHILDREN``) in the last round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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

# Reports the controller's own CPU time and its workers' (they have exited by then), and when
# the first item started and the last report arrived, as wall-clock instants the parent turns
# into phases: start-up (launch to first item), items, and finish (last report to exit).
CONFTEST = """
import resource, sys, time

_seen = []

def pytest_runtest_logstart(nodeid, location):
    if not _seen:
        _seen.append(time.time())

def pytest_runtest_logreport(report):
    if len(_seen) < 2:
        _seen.append(0.0)
    _seen[1] = time.time()

def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):
        return
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write(f"CW-CPU {own.ru_utime + own.ru_stime:.3f} {workers.ru_utime + workers.ru_stime:.3f} "
                     f"{_seen[0]:.6f} {_seen[1]:.6f}\\n")
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


@dataclass
class Run:
    wall: float
    cpu_own: float
    cpu_children: float
    startup: float  # launch to the first item's start
    items: float  # the first item's start to the last item's report
    finish: float  # the last report to the process's exit


def _run(project: Path, args: list[str], workers: int) -> Run:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio",
               "-p", "no:randomly", "-n", str(workers), *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    launched = time.time()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {project}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    line = next(line for line in done.stderr.splitlines() if line.startswith("CW-CPU "))
    own, children, first, last = (float(x) for x in line.split()[1:])
    startup, items = first - launched, last - first
    return Run(wall, own, children, startup, items, wall - startup - items)


def _median(runs: list[Run], what: str) -> float:
    return float(statistics.median(float(getattr(run, what)) for run in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    n = opts.workers
    rows = []
    with tempfile.TemporaryDirectory(prefix="cw-bench-xdist-") as tmp:
        for name, seeds in (("sweep", opts.seeds), ("plain", opts.seeds), ("sweep-20ms", opts.seeds // 3)):
            project, args = _project(Path(tmp), name, seeds)
            runs: dict[int, list[Run]] = {0: [], n: []}
            for r in range(opts.rounds):
                for workers in (0, n):
                    run = _run(project, args, workers)
                    runs[workers].append(run)
                    print(f"  [round {r + 1}/{opts.rounds}] {name:<10} -n {workers}: {run.wall:6.2f} s "
                          f"(start-up {run.startup:.2f}, items {run.items:.2f}, finish {run.finish:.2f})",
                          file=sys.stderr)
            rows.append((name, seeds, runs[0], runs[n]))
    print(f"\n| workload | items | -n 0 wall | -n {n} wall | speed-up | items phase speed-up | "
          f"fixed (start-up + finish) -n 0 / -n {n} | CPU -n 0 | CPU -n {n}: controller + workers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seeds, serial, parallel in rows:
        s_wall, p_wall = _median(serial, "wall"), _median(parallel, "wall")
        s_items, p_items = _median(serial, "items"), _median(parallel, "items")
        s_fixed = _median(serial, "startup") + _median(serial, "finish")
        p_fixed = _median(parallel, "startup") + _median(parallel, "finish")
        last_s, last_p = serial[-1], parallel[-1]
        print(f"| {name} | {seeds} | {s_wall:.2f} s | {p_wall:.2f} s | {s_wall / p_wall:.2f}x | "
              f"{s_items / p_items:.2f}x | {s_fixed:.2f} s / {p_fixed:.2f} s | "
              f"{last_s.cpu_own:.1f} s | {last_p.cpu_own:.1f} s + {last_p.cpu_children:.1f} s |")


if __name__ == "__main__":
    main()
