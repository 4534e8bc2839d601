"""Scheduler benchmarks: the deterministic runtime against stock asyncio, uvloop and trio.

Run: ``.venv/bin/python benchmarks/bench_scheduler.py [--rounds 5] [--quick] [--only a,b,c,d]
[--json out.json]``.  Every measurement runs in its own interpreter; the variants of all
workloads are interleaved round by round (see ``harness.py``).  Times are measured inside
the event loop, from the first statement of the workload to its last (loop construction
and teardown excluded, the same for every framework); workload (d) divides the runner's
scheduling decisions by the wall time of the whole ``Runner.start``.

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
import gc
import json
import os
import random
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "runtime"))

from harness import Case, Result, machine_info, main_or_worker, markdown_table, run_cases, summarize  # noqa: E402

SCRIPT = os.path.abspath(__file__)


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
    gc.collect()
    t0 = time.perf_counter()
    with asyncio.Runner(loop_factory=_loop_factory(impl)) as runner:
        value = runner.run(coro_fn())
    return value, time.perf_counter() - t0


def _run_ours(main: Callable[[Any], Any], record: bool = False) -> tuple[Any, float, int]:
    from commonware_runtime import deterministic

    recorder = deterministic.Recorder() if record else None
    runner = deterministic.Runner(deterministic.Config(seed=1), recorder=recorder)
    gc.collect()
    t0 = time.perf_counter()
    value = runner.start(main)
    return value, time.perf_counter() - t0, runner.steps


def _run_trio(fn: Callable[[], Any], mock_clock: bool = False) -> tuple[Any, float]:
    import trio
    import trio.testing

    clock = trio.testing.MockClock(autojump_threshold=0) if mock_clock else None
    gc.collect()
    t0 = time.perf_counter()
    value = trio.run(fn, clock=clock)
    return value, time.perf_counter() - t0


# --- (a) ping-pong ----------------------------------------------------------------------------


async def _pingpong_asyncio(n: int) -> float:
    q_in: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    q_out: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

    async def echo() -> None:
        for _ in range(n):
            await q_out.put(await q_in.get())

    t0 = time.perf_counter()
    task = asyncio.get_running_loop().create_task(echo())
    for i in range(n):
        await q_in.put(i)
        if await q_out.get() != i:
            raise AssertionError("ping-pong out of order")
    await task
    return time.perf_counter() - t0


def work_pingpong(impl: str, n: int) -> dict[str, Any]:
    if impl in ("asyncio", "uvloop", "ours-loop"):
        inner, total = _run_asyncio(impl, lambda: _pingpong_asyncio(n))
        return {"seconds": inner, "total": total}
    if impl == "ours-runner":
        async def main(ctx: Any) -> float:
            q_in: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
            q_out: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

            async def echo(_ctx: Any) -> None:
                for _ in range(n):
                    await q_out.put(await q_in.get())

            t0 = time.perf_counter()
            handle = ctx.spawn(echo)
            for i in range(n):
                await q_in.put(i)
                if await q_out.get() != i:
                    raise AssertionError("ping-pong out of order")
            await handle
            return time.perf_counter() - t0

        inner, total, steps = _run_ours(main)
        return {"seconds": inner, "total": total, "steps": steps}
    if impl == "trio":
        import trio

        async def trio_main() -> float:
            send_in, recv_in = trio.open_memory_channel[int](1)
            send_out, recv_out = trio.open_memory_channel[int](1)

            async def echo() -> None:
                for _ in range(n):
                    await send_out.send(await recv_in.receive())

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo)
                for i in range(n):
                    await send_in.send(i)
                    if await recv_out.receive() != i:
                        raise AssertionError("ping-pong out of order")
            return time.perf_counter() - t0

        inner, total = _run_trio(trio_main)
        return {"seconds": inner, "total": total}
    raise ValueError(impl)


# --- (b) spawn and await ----------------------------------------------------------------------


async def _leaf() -> int:
    return 1


async def _spawn_asyncio(n: int) -> float:
    t0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_leaf()) for _ in range(n)]
    results = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    if len(results) != n:
        raise AssertionError("lost tasks")
    return elapsed


def work_spawn(impl: str, n: int) -> dict[str, Any]:
    if impl in ("asyncio", "uvloop", "ours-loop"):
        inner, total = _run_asyncio(impl, lambda: _spawn_asyncio(n))
        return {"seconds": inner, "total": total, "ns_per_task": inner / n * 1e9}
    if impl == "ours-runner":
        async def leaf(_ctx: Any) -> int:
            return 1

        async def main(ctx: Any) -> float:
            t0 = time.perf_counter()
            handles = [ctx.spawn(leaf) for _ in range(n)]
            got = 0
            for handle in handles:
                got += await handle
            elapsed = time.perf_counter() - t0
            if got != n:
                raise AssertionError("lost tasks")
            return elapsed

        inner, total, steps = _run_ours(main)
        return {"seconds": inner, "total": total, "ns_per_task": inner / n * 1e9, "steps": steps}
    if impl == "trio":
        import trio

        async def trio_main() -> float:
            done = 0

            async def leaf() -> None:
                nonlocal done
                done += 1

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(leaf)
            elapsed = time.perf_counter() - t0
            if done != n:
                raise AssertionError("lost tasks")
            return elapsed

        inner, total = _run_trio(trio_main)
        return {"seconds": inner, "total": total, "ns_per_task": inner / n * 1e9}
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

        async def loop_main() -> tuple[float, float]:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            await asyncio.gather(*[loop.create_task(worker(ds)) for ds in plan])
            return time.perf_counter() - t0, loop.time()

        (inner, virtual), total = _run_asyncio(impl, loop_main)
        return {"seconds": inner, "total": total, "virtual": virtual}
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

        async def main(ctx: Any) -> tuple[float, float]:
            t0 = time.perf_counter()
            handles = [ctx.spawn(make(ds)) for ds in plan]
            for handle in handles:
                await handle
            return time.perf_counter() - t0, asyncio.get_running_loop().time()

        (inner, virtual), total, steps = _run_ours(main)
        return {"seconds": inner, "total": total, "virtual": virtual, "steps": steps}
    if impl == "trio":
        import trio

        async def trio_worker(ds: list[float]) -> None:
            for d in ds:
                await trio.sleep(d)

        async def trio_main() -> tuple[float, float]:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for ds in plan:
                    nursery.start_soon(trio_worker, ds)
            return time.perf_counter() - t0, trio.current_time()

        (inner, virtual), total = _run_trio(trio_main, mock_clock=True)
        return {"seconds": inner, "total": total, "virtual": virtual}
    raise ValueError(impl)


# --- (d) decisions per second, recording off / on ---------------------------------------------


def work_decisions(record: bool, tasks: int, yields: int) -> dict[str, Any]:
    async def spinner(_ctx: Any) -> None:
        for _ in range(yields):
            await asyncio.sleep(0)

    async def main(ctx: Any) -> None:
        handles = [ctx.spawn(spinner) for _ in range(tasks)]
        for handle in handles:
            await handle

    _, total, steps = _run_ours(main, record=record)
    return {"seconds": total, "total": total, "steps": steps, "decisions_per_s": steps / total}


WORKERS = {
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
            for impl in ("ours-runner", "ours-loop", "asyncio"):
                cases.append(Case(f"b-scale {impl} N={n}", "spawn", {"impl": impl, "n": n}, group="b-scale"))
    if "c" in only:
        tasks, sleeps = (2_000, 50) if quick else (10_000, 50)
        for impl in ("ours-ctx", "ours-runner-asyncio", "ours-loop", "trio"):
            cases.append(Case(f"c {impl}", "sleeps", {"impl": impl, "tasks": tasks, "sleeps": sleeps}, group="c"))
    if "d" in only:
        for record in (False, True):
            label = "d recording " + ("on" if record else "off")
            cases.append(Case(label, "decisions", {"record": record, "tasks": 1_000, "yields": 200}, group="d"))
    return cases


def report(results: list[Result], quick: bool) -> str:
    by_group: dict[str, list[Result]] = {}
    for res in results:
        by_group.setdefault(res.case.group, []).append(res)
    out: list[str] = []
    verdicts: list[str] = []

    def med(label: str, key: str = "seconds") -> float:
        return next(r for r in results if r.case.label == label).median(key)

    if "a" in by_group:
        n = by_group["a"][0].case.params["n"]
        headers, rows = summarize(
            by_group["a"], "a asyncio", per=lambda r: n / r.median(), per_unit="msgs/s"
        )
        out += [f"### (a) ping-pong, {n:,} messages", "", markdown_table(headers, rows), ""]
        for impl in ("ours-loop", "ours-runner"):
            ratio = med("a asyncio") / med(f"a {impl}")
            verdicts.append(f"(a) {impl}: {ratio:.2f}x stock asyncio (target >= 1.0x) {'MET' if ratio >= 1.0 else 'MISSED'}")
    if "b" in by_group:
        headers, rows = summarize(
            by_group["b"], "b asyncio N=20000", per=lambda r: r.median("ns_per_task"), per_unit="ns/task"
        )
        out += ["### (b) spawn and await 20,000 tasks", "", markdown_table(headers, rows), ""]
        for impl in ("ours-runner", "ours-loop"):
            ratio = med("b asyncio N=20000") / med(f"b {impl} N=20000")
            verdicts.append(f"(b) {impl}: {ratio:.2f}x stock asyncio (target >= 0.5x) {'MET' if ratio >= 0.5 else 'MISSED'}")
    if "b-scale" in by_group:
        scale = by_group["b-scale"]
        ns = sorted({r.case.params["n"] for r in scale})
        impls = list(dict.fromkeys(r.case.params["impl"] for r in scale))
        headers = ["variant"] + [f"ns/task N={n:,}" for n in ns] + [f"N={ns[-1]:,} / N={ns[0]:,}"]
        rows = []
        for impl in impls:
            per = [next(r for r in scale if r.case.params["impl"] == impl and r.case.params["n"] == n).median("ns_per_task") for n in ns]
            rows.append([impl] + [f"{p:,.0f}" for p in per] + [f"{per[-1] / per[0]:.2f}"])
            if impl.startswith("ours"):
                growth = per[-1] / per[0]
                verdicts.append(
                    f"(b) {impl}: per-task cost x{growth:.2f} from N={ns[0]:,} to N={ns[-1]:,} "
                    f"(target: flat, <= 1.25) {'MET' if growth <= 1.25 else 'MISSED'}"
                )
        out += ["### (b) per-task cost as N grows", "", markdown_table(headers, rows), ""]
    if "c" in by_group:
        p = by_group["c"][0].case.params
        headers, rows = summarize(
            by_group["c"], "c trio", per=lambda r: p["tasks"] * p["sleeps"] / r.median(), per_unit="sleeps/s"
        )
        out += [
            f"### (c) {p['tasks']:,} tasks x {p['sleeps']} random virtual sleeps (0-1 s)",
            "",
            markdown_table(headers, rows),
            "",
        ]
        for impl in ("ours-ctx", "ours-runner-asyncio", "ours-loop"):
            ratio = med("c trio") / med(f"c {impl}")
            verdicts.append(f"(c) {impl}: {ratio:.2f}x trio MockClock (target >= 4x) {'MET' if ratio >= 4.0 else 'MISSED'}")
    if "d" in by_group:
        rows = []
        for res in by_group["d"]:
            rows.append([
                res.case.label,
                f"{res.median('steps'):,.0f}",
                f"{res.median() * 1e3:.1f} ms",
                f"{res.spread() * 100:.0f}%",
                f"{res.median('decisions_per_s'):,.0f}",
            ])
        off, on = med("d recording off", "decisions_per_s"), med("d recording on", "decisions_per_s")
        cost = 1 - on / off
        out += [
            "### (d) scheduler decisions per second (1,000 tasks x 200 sleep(0))",
            "",
            markdown_table(["variant", "decisions", "median wall", "spread", "decisions/s"], rows),
            "",
            f"Recording costs {cost * 100:.1f}% of throughput.",
            "",
        ]
        verdicts.append(f"(d) recording costs {cost * 100:.1f}% (target <= 15%) {'MET' if cost <= 0.15 else 'MISSED'}")
    out += ["### Targets", ""] + [f"- {v}" for v in verdicts]
    if quick:
        out.insert(0, "(--quick: reduced sizes, not comparable with the full run)\n")
    return "\n".join(out)


def parent(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, 3 rounds unless --rounds is given")
    ap.add_argument("--only", default="a,b,c,d", help="comma-separated subset of workloads a,b,c,d")
    ap.add_argument("--json", help="also write every raw sample to this file")
    args = ap.parse_args(argv)
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = only - {"a", "b", "c", "d"}
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}")
    rounds = args.rounds if (args.rounds != 5 or not args.quick) else 3
    cases = build_cases(args.quick, only)
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    print(f"{len(cases)} cases x {rounds} rounds, one subprocess each", flush=True)
    started = time.perf_counter()
    results = run_cases(SCRIPT, cases, rounds)
    print(f"\nwall time of the whole benchmark: {time.perf_counter() - started:.0f}s\n")
    print(report(results, args.quick))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": info, "rounds": rounds, "quick": args.quick,
                 "results": [{"label": r.case.label, "params": dict(r.case.params), "samples": r.samples} for r in results]},
                f, indent=1,
            )


if __name__ == "__main__":
    main_or_worker(WORKERS, parent)
