"""Scheduler benchmarks: the deterministic runtime against stock asyncio, uvloop and trio.

Run: ``.venv/bin/python benchmarks/bench_scheduler.py [--rounds 5] [--quick] [--only a,b,c,d]
[--metric wall|cpu] [--json out.json] [--ab RUNTIME_DIR]``.  Every measurement runs in its
own interpreter; the variants of all workloads are interleaved round by round (see
``harness.py``).  Times are measured inside the event loop, from the first statement of the
workload to its last (loop construction and teardown excluded, the same for every
framework); workload (d) divides the runner's scheduling decisions by the wall time of the
whole ``Runner.start``.  Both wall and process CPU time are recorded; ``--metric`` picks the
one the ratios use (CPU time is the robust one when other jobs share the machine).
``--ab DIR`` adds every variant of ours again, run on the package copy in ``DIR`` (labels
end in ``[B]``): an interleaved A/B of a patch.

Workloads and targets (issue 2):
  (a) ping-pong of N messages between two tasks over two ``asyncio.Queue(maxsize=1)``
      (trio: two memory channels of buffer 1)          target: ours >= 1.0x stock asyncio
  (b) spawn N tasks all ready at once, then await them all
                                                        target: ours >= 0.5x stock asyncio,
      and ns/task flat from 1k to 100k tasks
  (c) T tasks each doing S seeded random virtual sleeps of 0-1 s
                                                        target: ours >= 4x trio MockClock
  (d) scheduler decisions/s, 1,000 tasks x 200 ``asyncio.sleep(0)``, recording off vs on
                                                        target: recording costs <= 15%
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
# COMMONWARE_BENCH_RUNTIME=/path/to/runtime measures another copy of the package (A/B of a
# patch): the child processes inherit the variable, so every variant sees the same copy.
sys.path.insert(0, os.environ.get("COMMONWARE_BENCH_RUNTIME") or os.path.join(ROOT, "runtime"))

from harness import (
    Case,
    Result,
    machine_info,
    main_or_worker,
    markdown_table,
    run_cases,
    summarize,
)

SCRIPT = os.path.abspath(__file__)


class Stopwatch:
    """Wall and CPU time of one stretch of work.

    The CPU time of this (single-threaded) process is reported next to the wall time: on a
    shared 2-core machine it is much less disturbed by other processes than the wall time.
    """

    __slots__ = ("_cpu", "_wall", "cpu", "wall")

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self) -> Stopwatch:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        return self

    def out(self, **extra: Any) -> dict[str, Any]:
        return {"seconds": self.wall, "cpu": self.cpu, **extra}


# --- event loops ------------------------------------------------------------------------------


def _loop_factory(impl: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if impl == "asyncio":
        return asyncio.new_event_loop
    if impl == "uvloop":
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return]
    if impl == "ours-loop":
        from commonware_runtime import deterministic

        return lambda: deterministic.EventLoop(seed=1)
    raise ValueError(f"no plain event loop for {impl!r}")


def _run_asyncio(impl: str, coro_fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``coro_fn()`` on a fresh loop of ``impl``: (its value, wall time of the whole run)."""
    gc.collect()
    t0 = time.perf_counter()
    with asyncio.Runner(loop_factory=_loop_factory(impl)) as runner:
        value = runner.run(coro_fn())
    return value, time.perf_counter() - t0


def _run_ours(main: Callable[[Any], Any], record: bool = False, strategy: str | None = None) -> tuple[Any, Stopwatch, int]:
    """Run ``main(ctx)`` on a deterministic.Runner: (value, stopwatch of the whole start(), steps)."""
    from commonware_runtime import deterministic

    recorder = deterministic.Recorder() if record else None
    # strategy None: the Config default (what an older copy of the package, under --ab, has too).
    config = deterministic.Config(seed=1) if strategy is None else deterministic.Config(seed=1, strategy=strategy)
    runner = deterministic.Runner(config, recorder=recorder)
    gc.collect()
    watch = Stopwatch()
    value = runner.start(main)
    return value, watch.stop(), runner.steps


def _run_trio(fn: Callable[[], Any], mock_clock: bool = False) -> tuple[Any, float]:
    import trio
    import trio.testing

    clock = trio.testing.MockClock(autojump_threshold=0) if mock_clock else None
    gc.collect()
    t0 = time.perf_counter()
    value = trio.run(fn, clock=clock)
    return value, time.perf_counter() - t0


# --- (a) ping-pong ----------------------------------------------------------------------------


async def _pingpong_asyncio(n: int) -> Stopwatch:
    q_in: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    q_out: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

    async def echo() -> None:
        for _ in range(n):
            await q_out.put(await q_in.get())

    watch = Stopwatch()
    task = asyncio.get_running_loop().create_task(echo())
    for i in range(n):
        await q_in.put(i)
        if await q_out.get() != i:
            raise AssertionError("ping-pong out of order")
    await task
    return watch.stop()


def work_pingpong(impl: str, n: int) -> dict[str, Any]:
    if impl in ("asyncio", "uvloop", "ours-loop"):
        watch, total = _run_asyncio(impl, lambda: _pingpong_asyncio(n))
        return watch.out(total=total)
    if impl == "ours-runner":
        async def main(ctx: Any) -> Stopwatch:
            q_in: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
            q_out: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

            async def echo(_ctx: Any) -> None:
                for _ in range(n):
                    await q_out.put(await q_in.get())

            watch = Stopwatch()
            handle = ctx.spawn(echo)
            for i in range(n):
                await q_in.put(i)
                if await q_out.get() != i:
                    raise AssertionError("ping-pong out of order")
            await handle
            return watch.stop()

        watch, run, steps = _run_ours(main)
        return watch.out(total=run.wall, steps=steps)
    if impl == "trio":
        import trio

        async def trio_main() -> Stopwatch:
            send_in, recv_in = trio.open_memory_channel[int](1)
            send_out, recv_out = trio.open_memory_channel[int](1)

            async def echo() -> None:
                for _ in range(n):
                    await send_out.send(await recv_in.receive())

            watch = Stopwatch()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo)
                for i in range(n):
                    await send_in.send(i)
                    if await recv_out.receive() != i:
                        raise AssertionError("ping-pong out of order")
            return watch.stop()

        watch, total = _run_trio(trio_main)
        return watch.out(total=total)
    raise ValueError(impl)


# --- (b) spawn and await ----------------------------------------------------------------------


async def _leaf() -> int:
    return 1


async def _spawn_asyncio(n: int) -> Stopwatch:
    watch = Stopwatch()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_leaf()) for _ in range(n)]
    results = await asyncio.gather(*tasks)
    watch.stop()
    if len(results) != n:
        raise AssertionError("lost tasks")
    return watch


def work_spawn(impl: str, n: int, gc_enabled: bool = True) -> dict[str, Any]:
    if not gc_enabled:
        gc.disable()  # isolates the scheduler's own scaling from the cyclic collector's
    if impl in ("asyncio", "uvloop", "ours-loop"):
        watch, total = _run_asyncio(impl, lambda: _spawn_asyncio(n))
        return watch.out(total=total, ns_per_task=watch.wall / n * 1e9)
    if impl == "ours-runner":
        async def leaf(_ctx: Any) -> int:
            return 1

        async def main(ctx: Any) -> Stopwatch:
            watch = Stopwatch()
            handles = [ctx.spawn(leaf) for _ in range(n)]
            got = 0
            for handle in handles:
                got += await handle
            watch.stop()
            if got != n:
                raise AssertionError("lost tasks")
            return watch

        watch, run, steps = _run_ours(main)
        return watch.out(total=run.wall, ns_per_task=watch.wall / n * 1e9, steps=steps)
    if impl == "trio":
        import trio

        async def trio_main() -> Stopwatch:
            done = 0

            async def leaf() -> None:
                nonlocal done
                done += 1

            watch = Stopwatch()
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(leaf)
            watch.stop()
            if done != n:
                raise AssertionError("lost tasks")
            return watch

        watch, total = _run_trio(trio_main)
        return watch.out(total=total, ns_per_task=watch.wall / n * 1e9)
    raise ValueError(impl)


# --- (c) random virtual sleeps ----------------------------------------------------------------


def _durations(tasks: int, sleeps: int) -> list[list[float]]:
    rng = random.Random(1)
    return [[rng.random() for _ in range(sleeps)] for _ in range(tasks)]


def work_sleeps(impl: str, tasks: int, sleeps: int) -> dict[str, Any]:
    plan = _durations(tasks, sleeps)  # drawn before timing: the same cost for every variant
    if impl == "ours-loop":
        async def worker(ds: list[float]) -> None:
            for d in ds:
                await asyncio.sleep(d)

        async def loop_main() -> tuple[Stopwatch, float]:
            loop = asyncio.get_running_loop()
            watch = Stopwatch()
            await asyncio.gather(*[loop.create_task(worker(ds)) for ds in plan])
            return watch.stop(), loop.time()

        (watch, virtual), total = _run_asyncio(impl, loop_main)
        return watch.out(total=total, virtual=virtual)
    if impl in ("ours-ctx", "ours-runner-asyncio"):
        use_ctx = impl == "ours-ctx"

        def make(ds: list[float]) -> Callable[[Any], Any]:
            async def worker(ctx: Any) -> None:
                if use_ctx:
                    for d in ds:
                        await ctx.sleep(d)
                else:
                    for d in ds:
                        await asyncio.sleep(d)

            return worker

        async def main(ctx: Any) -> tuple[Stopwatch, float]:
            watch = Stopwatch()
            handles = [ctx.spawn(make(ds)) for ds in plan]
            for handle in handles:
                await handle
            return watch.stop(), asyncio.get_running_loop().time()

        (watch, virtual), run, steps = _run_ours(main)
        return watch.out(total=run.wall, virtual=virtual, steps=steps)
    if impl == "trio":
        import trio

        async def trio_worker(ds: list[float]) -> None:
            for d in ds:
                await trio.sleep(d)

        async def trio_main() -> tuple[Stopwatch, float]:
            watch = Stopwatch()
            async with trio.open_nursery() as nursery:
                for ds in plan:
                    nursery.start_soon(trio_worker, ds)
            return watch.stop(), trio.current_time()

        (watch, virtual), total = _run_trio(trio_main, mock_clock=True)
        return watch.out(total=total, virtual=virtual)
    raise ValueError(impl)


# --- (d) decisions per second, recording off / on ---------------------------------------------


def work_decisions(record: bool, tasks: int, yields: int, strategy: str | None = None) -> dict[str, Any]:
    async def spinner(_ctx: Any) -> None:
        for _ in range(yields):
            await asyncio.sleep(0)

    async def main(ctx: Any) -> None:
        handles = [ctx.spawn(spinner) for _ in range(tasks)]
        for handle in handles:
            await handle

    _, watch, steps = _run_ours(main, record=record, strategy=strategy)
    return watch.out(total=watch.wall, steps=steps, decisions_per_s=steps / watch.wall, cpu_decisions_per_s=steps / watch.cpu)


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "pingpong": work_pingpong,
    "spawn": work_spawn,
    "sleeps": work_sleeps,
    "decisions": work_decisions,
}


# --- parent -----------------------------------------------------------------------------------


def build_cases(quick: bool, only: set[str]) -> list[Case]:
    cases: list[Case] = []
    n_a = 50_000 if quick else 200_000
    if "a" in only:
        for impl in ("ours-loop", "ours-runner", "asyncio", "uvloop", "trio"):
            cases.append(Case(f"a {impl}", "pingpong", {"impl": impl, "n": n_a}, group="a"))
    if "b" in only:
        for impl in ("ours-runner", "ours-loop", "asyncio", "uvloop", "trio"):
            cases.append(Case(f"b {impl} N=20000", "spawn", {"impl": impl, "n": 20_000}, group="b"))
        ns = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
        for n in ns:
            for impl, gc_enabled in SCALE_VARIANTS:
                label = f"b-scale {impl}{'' if gc_enabled else ' gc-off'} N={n}"
                params = {"impl": impl, "n": n, "gc_enabled": gc_enabled}
                cases.append(Case(label, "spawn", params, group="b-scale"))
    if "c" in only:
        tasks, sleeps = (2_000, 50) if quick else (10_000, 50)
        for impl in ("ours-ctx", "ours-runner-asyncio", "ours-loop", "trio"):
            cases.append(Case(f"c {impl}", "sleeps", {"impl": impl, "tasks": tasks, "sleeps": sleeps}, group="c"))
    if "d" in only:
        for record in (False, True):
            label = "d recording " + ("on" if record else "off")
            cases.append(Case(label, "decisions", {"record": record, "tasks": 1_000, "yields": 200}, group="d"))
        for strategy in STRATEGIES:
            params = {"record": False, "tasks": 1_000, "yields": 200, "strategy": strategy}
            cases.append(Case(f"d strategy {strategy}", "decisions", params, group="d"))
    return cases


# Strategies measured per decision beside the default (random): the cost targets of issue 7.
STRATEGIES = ("pct", "pos", "swarm")
SCALE_VARIANTS = [("ours-runner", True), ("ours-loop", True), ("asyncio", True), ("ours-runner", False), ("asyncio", False)]


def report(results: list[Result], quick: bool, key: str) -> str:
    """Markdown tables and target verdicts; ratios are computed on ``key`` (wall or cpu)."""
    by_group: dict[str, list[Result]] = {}
    for res in results:
        by_group.setdefault(res.case.group, []).append(res)
    other = [("cpu", "median cpu")] if key == "seconds" else [("seconds", "median wall")]
    out: list[str] = []
    verdicts: list[str] = []

    labels = {r.case.label for r in results}
    suffixes = [""] + ([" [B]"] if any(lbl.endswith(" [B]") for lbl in labels) else [])

    def med(label: str, k: str = key) -> float:
        return next(r for r in results if r.case.label == label).median(k)

    if "a" in by_group:
        n = by_group["a"][0].case.params["n"]
        headers, rows = summarize(
            by_group["a"], "a asyncio", key=key, also=other, per=lambda r: n / r.median(key), per_unit="msgs/s"
        )
        out += [f"### (a) ping-pong, {n:,} messages", "", markdown_table(headers, rows), ""]
        for impl in ("ours-loop", "ours-runner"):
            for sfx in suffixes:
                ratio = med("a asyncio") / med(f"a {impl}{sfx}")
                verdicts.append(f"(a) {impl}{sfx}: {ratio:.2f}x stock asyncio (target >= 1.0x) {'MET' if ratio >= 1.0 else 'MISSED'}")
    if "b" in by_group:
        headers, rows = summarize(
            by_group["b"], "b asyncio N=20000", key=key, also=other,
            per=lambda r: r.median(key) / r.case.params["n"] * 1e9, per_unit="ns/task",
        )
        out += ["### (b) spawn and await 20,000 tasks", "", markdown_table(headers, rows), ""]
        for impl in ("ours-runner", "ours-loop"):
            for sfx in suffixes:
                ratio = med("b asyncio N=20000") / med(f"b {impl} N=20000{sfx}")
                verdicts.append(f"(b) {impl}{sfx}: {ratio:.2f}x stock asyncio (target >= 0.5x) {'MET' if ratio >= 0.5 else 'MISSED'}")
    if "b-scale" in by_group:
        scale = by_group["b-scale"]
        ns = sorted({r.case.params["n"] for r in scale})
        headers = ["variant"] + [f"ns/task N={n:,}" for n in ns] + [f"N={ns[-1]:,} / N={ns[0]:,}"]
        rows = []
        for (impl, gc_enabled), sfx in [(v, x) for x in suffixes for v in SCALE_VARIANTS]:
            name = impl + ("" if gc_enabled else " gc-off")
            found = [
                [r for r in scale if r.case.label == f"b-scale {name} N={n}{sfx}"]
                for n in ns
            ]
            if not all(found):
                continue
            name += sfx
            per = [f[0].median(key) / n * 1e9 for f, n in zip(found, ns)]
            growth = per[-1] / per[0]
            rows.append([name] + [f"{p:,.0f}" for p in per] + [f"{growth:.2f}"])
            if impl.startswith("ours"):
                verdicts.append(
                    f"(b) {name}: per-task cost x{growth:.2f} from N={ns[0]:,} to N={ns[-1]:,} "
                    f"(target: flat, taken as <= 1.25) {'MET' if growth <= 1.25 else 'MISSED'}"
                )
        out += [f"### (b) per-task cost ({key}) as N grows", "", markdown_table(headers, rows), ""]
    if "c" in by_group:
        p = by_group["c"][0].case.params
        headers, rows = summarize(
            by_group["c"], "c trio", key=key, also=other,
            per=lambda r: p["tasks"] * p["sleeps"] / r.median(key), per_unit="sleeps/s",
        )
        out += [
            f"### (c) {p['tasks']:,} tasks x {p['sleeps']} random virtual sleeps (0-1 s)",
            "",
            markdown_table(headers, rows),
            "",
        ]
        for impl in ("ours-ctx", "ours-runner-asyncio", "ours-loop"):
            for sfx in suffixes:
                ratio = med("c trio") / med(f"c {impl}{sfx}")
                verdicts.append(f"(c) {impl}{sfx}: {ratio:.2f}x trio MockClock (target >= 4x) {'MET' if ratio >= 4.0 else 'MISSED'}")
    if "d" in by_group:
        rate_key = "decisions_per_s" if key == "seconds" else "cpu_decisions_per_s"
        rows = []
        for res in by_group["d"]:
            rows.append([
                res.case.label,
                f"{res.median('steps'):,.0f}",
                f"{res.median() * 1e3:.1f} ms",
                f"{res.median('cpu') * 1e3:.1f} ms",
                f"{res.spread(key) * 100:.0f}%",
                f"{res.median(rate_key):,.0f}",
            ])
        out += [
            "### (d) scheduler decisions per second (1,000 tasks x 200 sleep(0), whole Runner.start)",
            "",
            markdown_table(["variant", "decisions", "median wall", "median cpu", "spread", f"decisions/s ({key})"], rows),
            "",
        ]
        for sfx in suffixes:
            off, on = med(f"d recording off{sfx}", rate_key), med(f"d recording on{sfx}", rate_key)
            cost = 1 - on / off
            out += [f"Recording costs {cost * 100:.1f}% of throughput{sfx}.", ""]
            verdicts.append(f"(d){sfx} recording costs {cost * 100:.1f}% (target <= 15%) {'MET' if cost <= 0.15 else 'MISSED'}")
        if " [B]" in suffixes:
            ratio = med("d recording off", rate_key) / med("d recording off [B]", rate_key)
            verdicts.append(f"(d) random strategy: {ratio:.3f}x the decisions/s of [B] (target >= 0.95x) "
                            f"{'MET' if ratio >= 0.95 else 'MISSED'}")
        base = med("d recording off", rate_key)
        for strategy in STRATEGIES:
            label = f"d strategy {strategy}"
            if any(r.case.label == label for r in by_group["d"]):
                cost = base / med(label, rate_key)
                target = " (target <= 1.3x)" if strategy == "pct" else ""
                verdict = (" MET" if cost <= 1.3 else " MISSED") if strategy == "pct" else ""
                verdicts.append(f"(d) {strategy}: {cost:.2f}x the time per decision of random{target}{verdict}")
    out += [f"### Targets (ratios of median {'wall' if key == 'seconds' else 'CPU'} time)", ""] + [f"- {v}" for v in verdicts]
    if quick:
        out.insert(0, "(--quick: reduced sizes, not comparable with the full run)\n")
    return "\n".join(out)


def parent(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, 3 rounds unless --rounds is given")
    ap.add_argument("--only", default="a,b,c,d", help="comma-separated subset of workloads a,b,c,d")
    ap.add_argument("--json", help="also write every raw sample to this file")
    ap.add_argument(
        "--ab", metavar="RUNTIME_DIR",
        help="also run every variant of ours on the package found in RUNTIME_DIR (labels end in [B])",
    )
    ap.add_argument(
        "--metric", choices=("wall", "cpu"), default="wall",
        help="time the ratios are computed on (cpu: process CPU time, robust to other load on the machine)",
    )
    args = ap.parse_args(argv)
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = only - {"a", "b", "c", "d"}
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}")
    rounds = args.rounds if (args.rounds != 5 or not args.quick) else 3
    cases = build_cases(args.quick, only)
    if args.ab:
        # A/B a patched copy of the package: every variant of ours runs on both copies.
        path = os.path.abspath(args.ab)
        if not os.path.isdir(os.path.join(path, "commonware_runtime")):
            ap.error(f"--ab {args.ab!r}: no commonware_runtime package in that directory")
        extra = [
            dataclasses.replace(c, label=c.label + " [B]", env={"COMMONWARE_BENCH_RUNTIME": path})
            for c in cases
            if (c.worker == "decisions" and "strategy" not in c.params) or str(c.params.get("impl", "")).startswith("ours")
        ]
        cases = cases + extra
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    print(f"{len(cases)} cases x {rounds} rounds, one subprocess each", flush=True)
    started = time.perf_counter()
    results = run_cases(SCRIPT, cases, rounds)
    print(f"\nwall time of the whole benchmark: {time.perf_counter() - started:.0f}s\n")
    key = "seconds" if args.metric == "wall" else "cpu"
    print(report(results, args.quick, key))
    if key == "seconds":
        print("\n(the same ratios on CPU time)\n")
        print(report(results, args.quick, "cpu").split("### Targets", 1)[1].split("\n", 2)[2])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": info, "rounds": rounds, "quick": args.quick,
                 "results": [{"label": r.case.label, "params": dict(r.case.params), "samples": r.samples} for r in results]},
                f, indent=1,
            )


if __name__ == "__main__":
    main_or_worker(WORKERS, parent)
