"""Bug-finding benchmark: runs to the first failure, per bug of the corpus and per strategy.

Run: ``.venv/bin/python benchmarks/bench_bugs.py [--budget 1000] [--only a,b]
[--strategies random,pct:3,dt:pct:3] [--workers 2] [--json out.json]``.

For every bug of ``bug_corpus.py`` and every strategy, the number of runs until the first
run that fails (raises anything: ``AssertionError``, ``RuntimeStalled``, ...), in each of 5
disjoint seed ranges (range r uses seeds ``r*10000 .. r*10000+budget-1``); a cell is the
median over the ranges, ``>budget`` when the median range found nothing (``(k/5)`` follows
when only k of the 5 ranges found the bug).

Ours: ``deterministic.Runner(Config(seed=s, strategy=NAME, ordering="any")).start(main)``
(or the bug's own ``run(config)``) for NAME in random, pct:1, pct:2, pct:3, pos, swarm.

detangle (benchmark-only peer, columns ``dt:...``): the bug's plain-asyncio ``body`` run
with ``detangle.execute(body, config=SimConfig(**bug.detangle_options), strategy=S)``, one
strategy object per seed range, ``S.start(i)`` / ``S.finish(...)`` around run ``i`` exactly
as ``detangle.explore`` drives it (so PCT learns its horizon from the runs before, as it does
in use).  ``S = detangle.strategies.make_strategy(spec, seed=r*10000)`` with spec random
(RandomWalk), pct:1..3 (PCT of that depth), dfs:2 (systematic, at most 2 delays), auto (its
default portfolio: FIFO, PCT d=2, random, PCT d=3, PCT d=1, one per run).  dfs is
deterministic (the seed is unused): every range gives the same count; ``exh@N`` means it
explored its whole bounded space in N runs without a failure.  Bugs that need the runtime's
Context (simulated network, storage) have no detangle port: ``n/a``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

OURS = ["random", "pct:1", "pct:2", "pct:3", "pos", "swarm"]
DETANGLE = ["dt:random", "dt:pct:1", "dt:pct:2", "dt:pct:3", "dt:dfs:2", "dt:auto"]
RANGES = 5
RANGE_STRIDE = 10_000


def ours_first_failure(bug_name: str, strategy: str, r: int, budget: int) -> dict[str, Any]:
    from bug_corpus import by_name
    from commonware_runtime import deterministic

    bug = by_name(bug_name)
    base = r * RANGE_STRIDE
    horizon = None
    if strategy.endswith("@cal"):
        # As the plugin does: the horizon is the length of the program's canonical run.
        strategy = strategy[: -len("@cal")]
        probe = deterministic.Canonical()
        try:
            bug.execute(deterministic.Config(seed=0, strategy=probe, ordering="any"))
        except Exception:  # noqa: BLE001 - only its length matters
            pass
        horizon = max(1, sum(1 for kind, n in probe.counts if kind == "pick" and n > 1))
    for i in range(budget):
        config = deterministic.Config(seed=base + i, strategy=strategy, ordering="any", horizon=horizon)
        try:
            bug.execute(config)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # any failure of the program is the bug showing
            return {"runs": i + 1, "seed": base + i, "error": type(exc).__name__}
    return {"runs": None}


def detangle_first_failure(bug_name: str, strategy: str, r: int, budget: int) -> dict[str, Any]:
    import detangle
    from bug_corpus import by_name
    from detangle.strategies import make_strategy

    bug = by_name(bug_name)
    if bug.body is None:
        return {"runs": None, "na": True}
    config = detangle.SimConfig(**bug.detangle_options)
    strat = make_strategy(strategy, seed=r * RANGE_STRIDE)
    for i in range(budget):
        strat.start(i)
        result = detangle.execute(bug.body, config=config, strategy=strat)
        strat.finish(result.decisions, result.failure is not None)
        if result.failure is not None:
            return {"runs": i + 1, "error": result.failure.kind}
        if strat.exhausted:
            return {"runs": None, "exhausted": i + 1}
    return {"runs": None}


def run_job(job: tuple[str, str, int, int]) -> tuple[tuple[str, str, int, int], dict[str, Any]]:
    bug_name, strategy, r, budget = job
    started = time.perf_counter()
    try:
        if strategy.startswith("dt:"):
            out = detangle_first_failure(bug_name, strategy[3:], r, budget)
        else:
            out = ours_first_failure(bug_name, strategy, r, budget)
    except Exception as exc:  # the harness itself failed (e.g. an unknown strategy name)
        out = {"runs": None, "harness_error": f"{type(exc).__name__}: {exc}"}
    out["seconds"] = time.perf_counter() - started
    return job, out


def cell(results: list[dict[str, Any]], budget: int) -> str:
    if any(res.get("na") for res in results):
        return "n/a"
    errors = [res["harness_error"] for res in results if "harness_error" in res]
    if errors:
        return "error"
    exhausted = [res["exhausted"] for res in results if "exhausted" in res]
    runs = [res["runs"] for res in results]
    found = [x for x in runs if x is not None]
    median = statistics.median([x if x is not None else float("inf") for x in runs])
    if median == float("inf"):
        text = f"exh@{exhausted[0]}" if exhausted and len(exhausted) == len(results) else f">{budget}"
    else:
        text = f"{median:g}"
    if 0 < len(found) < len(runs):
        text += f" ({len(found)}/{len(runs)})"
    return text


def found_within(results: list[dict[str, Any]]) -> tuple[bool, bool]:
    """(median range found it, some range found it)."""
    runs = [res["runs"] for res in results if not res.get("na")]
    if not runs:
        return False, False
    hits = sum(x is not None for x in runs)
    return hits * 2 > len(runs), hits > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=1000, help="runs per seed range (default 1000)")
    parser.add_argument("--only", default="", help="comma-separated bug names")
    parser.add_argument("--strategies", default="", help="comma-separated strategies (ours, then dt:...)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ranges", type=int, default=RANGES, help=argparse.SUPPRESS)
    parser.add_argument("--json", default="", help="write every raw result to this file")
    args = parser.parse_args(argv)

    from bug_corpus import BUGS

    bugs = BUGS
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        known = {bug.name for bug in BUGS}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            parser.error(f"unknown bug(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        bugs = [bug for bug in BUGS if bug.name in wanted]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] or OURS + DETANGLE

    jobs = [(bug.name, strategy, r, args.budget) for bug in bugs for strategy in strategies for r in range(args.ranges)]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    started = time.perf_counter()
    if args.workers <= 1:
        done = map(run_job, jobs)
    else:
        pool = multiprocessing.get_context("spawn").Pool(args.workers)
        done = pool.imap_unordered(run_job, jobs, chunksize=1)
    for n, (job, out) in enumerate(done, 1):
        results.setdefault((job[0], job[1]), []).append({"range": job[2], **out})
        if n % 25 == 0 or n == len(jobs):
            print(f"  {n}/{len(jobs)} jobs, {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    if args.workers > 1:
        pool.close()
        pool.join()
    elapsed = time.perf_counter() - started
    for value in results.values():
        value.sort(key=lambda res: res["range"])

    header = ["bug", "kind", "depth", *strategies]
    print(f"Runs to first failure, median of {args.ranges} seed ranges, budget {args.budget} "
          f"(ours: ordering=\"any\"; dt: detangle)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for bug in bugs:
        cells = [cell(results[(bug.name, s)], args.budget) for s in strategies]
        print(f"| {bug.name} | {bug.kind} | {bug.depth} | " + " | ".join(cells) + " |")
    print()
    for s in strategies:
        applicable = [bug for bug in bugs if not any(res.get("na") for res in results[(bug.name, s)])]
        median_hits = sum(found_within(results[(bug.name, s)])[0] for bug in applicable)
        any_hits = sum(found_within(results[(bug.name, s)])[1] for bug in applicable)
        seconds = sum(res["seconds"] for bug in bugs for res in results[(bug.name, s)])
        print(f"- {s}: {median_hits}/{len(applicable)} bugs found within budget (median range); "
              f"{any_hits}/{len(applicable)} in at least one range; {seconds:.1f}s of work")
    errors = sorted({(s, res["harness_error"]) for (_, s), rs in results.items() for res in rs if "harness_error" in res})
    for s, message in errors:
        print(f"- error in {s}: {message}")
    print(f"\n{len(jobs)} jobs in {elapsed:.0f}s on {args.workers} worker(s); python {platform.python_version()}")

    if args.json:
        payload = {
            "budget": args.budget,
            "ranges": args.ranges,
            "range_stride": RANGE_STRIDE,
            "strategies": strategies,
            "elapsed_seconds": elapsed,
            "bugs": [
                {"name": bug.name, "kind": bug.kind, "depth": bug.depth, "fifo_reachable": bug.fifo_reachable,
                 "results": {s: results[(bug.name, s)] for s in strategies}}
                for bug in bugs
            ],
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
