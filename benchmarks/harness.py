"""Shared benchmark harness: one subprocess per measurement, variants interleaved by round.

A benchmark script defines *workers* (plain functions returning a dict with at least
``"seconds"``) and *cases* (a label plus the worker name and its parameters).  The parent
process runs every case once per round, each in a fresh interpreter, rotating the order of
the cases from round to round, so drift of the machine (thermal throttling, other load,
allocator state) hits every variant alike and no variant inherits another's warm caches.

Minimal use::

    from harness import Case, main_or_worker, run_cases, summarize, markdown_table

    def work_sleep(n: int) -> dict:            # runs in the child
        t0 = time.perf_counter(); ...; return {"seconds": time.perf_counter() - t0}

    WORKERS = {"sleep": work_sleep}

    if __name__ == "__main__":
        main_or_worker(WORKERS, parent=lambda argv: ...)  # the parent builds cases, calls run_cases

The child protocol: ``python script.py --worker NAME JSON_PARAMS`` prints one line
``RESULT {json}`` on stdout (anything else the worker prints is passed through to stderr
of the parent only on failure).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Case",
    "Result",
    "machine_info",
    "main_or_worker",
    "markdown_table",
    "measure",
    "run_cases",
    "summarize",
]

RESULT_PREFIX = "RESULT "


@dataclass(frozen=True)
class Case:
    """One variant of one workload: ``label`` is what the tables show."""

    label: str
    worker: str
    params: Mapping[str, Any] = field(default_factory=dict)
    group: str = ""  # cases of one group share a baseline in ratio tables
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment of the child


@dataclass
class Result:
    case: Case
    samples: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str = "seconds") -> list[float]:
        return [float(s[key]) for s in self.samples]

    def median(self, key: str = "seconds") -> float:
        return statistics.median(self.values(key))

    def spread(self, key: str = "seconds") -> float:
        """(max - min) / median: a crude noise indicator printed next to medians."""
        vals = self.values(key)
        med = statistics.median(vals)
        return (max(vals) - min(vals)) / med if med else 0.0


def measure(script: str, case: Case, *, python: str = sys.executable, timeout: float = 300.0) -> dict[str, Any]:
    """Run one measurement of ``case`` in a fresh interpreter and return the worker's dict."""
    cmd = [python, script, "--worker", case.worker, json.dumps(dict(case.params), sort_keys=True)]
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")  # identical dict/set layouts in every child
    env.update(case.env)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"measurement {case.label!r} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])  # type: ignore[no-any-return]
    raise RuntimeError(f"measurement {case.label!r} printed no {RESULT_PREFIX!r} line:\n{proc.stdout[-2000:]}")


def run_cases(
    script: str,
    cases: Sequence[Case],
    rounds: int,
    *,
    python: str = sys.executable,
    timeout: float = 300.0,
    progress: bool = True,
) -> list[Result]:
    """Run every case ``rounds`` times, one subprocess each, interleaved and order-rotated."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    results = [Result(case) for case in cases]
    n = len(cases)
    started = time.perf_counter()
    for r in range(rounds):
        # Rotate so that no variant always runs first (cold disk cache) or right after a heavy one.
        order = [(r + k) % n for k in range(n)] if n else []
        for idx in order:
            sample = measure(script, cases[idx], python=python, timeout=timeout)
            results[idx].samples.append(sample)
            if progress:
                print(
                    f"  [round {r + 1}/{rounds} {time.perf_counter() - started:6.1f}s] "
                    f"{cases[idx].label:<34} {sample['seconds'] * 1e3:9.1f} ms"
                    + (f" (cpu {sample['cpu'] * 1e3:.1f} ms)" if "cpu" in sample else ""),
                    file=sys.stderr,
                    flush=True,
                )
    return results


def summarize(
    results: Iterable[Result],
    baseline: str,
    *,
    key: str = "seconds",
    also: Sequence[tuple[str, str]] = (),
    per: Callable[[Result], float] | None = None,
    per_unit: str = "",
) -> tuple[list[str], list[list[str]]]:
    """Table rows: variant, median of ``key`` (ms), spread, medians of ``also`` keys,
    optional per-unit figure, and speed vs ``baseline`` on ``key``.

    ``also`` lists (sample key, column title) pairs shown as ms.  Speed = baseline median /
    variant median: above 1.0 means faster than the baseline.
    """
    results = list(results)
    base = next((r for r in results if r.case.label == baseline), None)
    if base is None:
        raise ValueError(f"baseline {baseline!r} is not among {[r.case.label for r in results]}")
    base_med = base.median(key)
    headers = ["variant", f"median {key}", "spread", *(title for _, title in also)]
    if per is not None:
        headers.append(per_unit)
    headers.append(f"speed vs {baseline}")
    rows = []
    for res in results:
        med = res.median(key)
        row = [res.case.label, f"{med * 1e3:.1f} ms", f"{res.spread(key) * 100:.0f}%"]
        row += [f"{res.median(k) * 1e3:.1f} ms" for k, _ in also]
        if per is not None:
            row.append(f"{per(res):,.0f}")
        row.append(f"{base_med / med:.2f}x")
        rows.append(row)
    return headers, rows


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def machine_info() -> dict[str, str]:
    """What docs/benchmarks.md records about the machine a run was made on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for raw in f:
                if raw.startswith("model name"):
                    cpu = raw.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for mod in ("uvloop", "trio"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - an absent optional baseline is reported, not fatal
            versions[mod] = "not installed"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        **versions,
    }


def main_or_worker(workers: Mapping[str, Callable[..., dict[str, Any]]], parent: Callable[[list[str]], None]) -> None:
    """Dispatch: ``--worker NAME JSON`` runs one measurement here; anything else runs ``parent``."""
    argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        if len(argv) != 3:
            raise SystemExit("usage: --worker NAME JSON_PARAMS")
        name, params = argv[1], json.loads(argv[2])
        if name not in workers:
            raise SystemExit(f"unknown worker {name!r}; known: {sorted(workers)}")
        out = workers[name](**params)
        if "seconds" not in out:
            raise RuntimeError(f"worker {name!r} returned no 'seconds': {out!r}")
        print(RESULT_PREFIX + json.dumps(out), flush=True)
        return
    parent(argv)
