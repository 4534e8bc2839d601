"""The ``trace`` command line: look at, compare and export recorded runs.

    python -m pytest_commonware trace show FILE [--start STEP] [--limit N]
    python -m pytest_commonware trace diff A B
    python -m pytest_commonware trace export FILE --format chrome [-o OUT]
    python -m pytest_commonware trace export FILE --format html [-o OUT]

Exit codes: 0 success (``diff``: identical), 1 ``diff``: the traces differ, 2 bad usage
or an unreadable trace (one line on stderr: ``error: <file>: <problem>``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from commonware_runtime.arguments import NS_PER_SECOND
from commonware_runtime.deterministic.trace import format_seconds
from commonware_runtime.deterministic.tracefile import (
    FORMAT,
    Trace,
    TraceError,
    atomic_write,
    first_divergence,
    format_version,
    load_trace,
)

__all__ = ["chrome_trace", "diff", "main", "show"]


class _Usage(Exception):
    """A problem worth one ``error:`` line and exit code 2."""


_TIMING_SHOWN = 20  # timing choices listed in `show`'s header


def _task(trace: Trace, tid: int) -> str:
    return f"#{tid} {trace.label(tid)}"


def _summary(trace: Trace) -> list[str]:
    config = " ".join(f"{k}={v}" for k, v in trace.config.items())
    outcome = trace.outcome
    if trace.error is not None:
        outcome += f": {trace.failure()}"
    s = trace.schedule
    held = ", ready callbacks may be held back" if s.holds_back else ""
    timing = ""
    if s.ordering == "fifo":
        shown = " ".join(str(v) for v in s.timing[:_TIMING_SHOWN])
        more = " ..." if len(s.timing) > _TIMING_SHOWN else ""
        timing = f", {len(s.timing)} timing choices" + (f": {shown}{more}" if len(s.timing) else "")
    lines = [
        f"test:     {trace.test}",
        f"seed:     {trace.seed} ({trace.runtime})",
        f"config:   {config or '-'}",
        f"schedule: strategy {trace.strategy}, ordering {s.ordering}{held}{timing}",
        f"outcome:  {outcome}",
        (f"run:      {trace.steps} steps in {len(s.round_steps)} rounds, {len(trace.tasks)} tasks, "
         f"{len(trace.checkpoints)} checkpoints"),
        f"auditor:  {trace.auditor}",
        f"recorded: python {trace.python}, commonware-runtime {trace.commonware_runtime}",
    ]
    for key, value in trace.extra.items():
        lines.append(f"extra:    {key}: {json.dumps(value, sort_keys=True, default=str)}")
    return lines


def show(trace: Trace, out: TextIO, *, start: int = 0, limit: int | None = None) -> None:
    """Write the timeline of ``trace``: one line per decision, a marker line per round."""
    out.writelines(line + "\n" for line in _summary(trace))
    out.write("\n")
    out.write(f"{'step':>8}  {'time (s)':>16}  {'task':<32}  {'callback':>9}  event\n")
    s = trace.schedule
    checkpoints = {c["step"]: c["auditor"] for c in trace.checkpoints}
    bounds = list(s.round_steps[1:]) + [trace.steps]
    end = trace.steps if limit is None else min(trace.steps, start + limit)
    for step, t, r, new_round, pick, tid in s.iter_steps(start, end):
        time = format_seconds(t)
        if new_round:
            out.write(f"{'':>8}  {time:>16}  -- round {r}: {bounds[r] - step} ready --\n")
            if step in checkpoints:
                out.write(f"{'':>8}  {time:>16}  -- checkpoint: auditor {checkpoints[step]} --\n")
        event = "callback" if tid == 0 else "run"
        out.write(f"{step:>8}  {time:>16}  {_task(trace, tid):<32}  {'#' + str(pick):>9}  {event}\n")
    if end < trace.steps:
        out.write(f"... {trace.steps - end} more steps (use --start/--limit)\n")
    else:
        out.write(f"-- end after {trace.steps} steps: {trace.outcome}, auditor {trace.auditor} --\n")


def diff(a: Trace, b: Trace, name_a: str, name_b: str, out: TextIO) -> bool:
    """Write the first divergence between two traces; True when they are identical."""
    d = first_divergence(a, b)
    if d is None:
        out.write(f"identical: {a.steps} steps, auditor {a.auditor}\n")
        return True
    out.write(f"A: {name_a} ({a.test}, seed {a.seed}, {a.steps} steps, {a.outcome})\n")
    out.write(f"B: {name_b} ({b.test}, seed {b.seed}, {b.steps} steps, {b.outcome})\n")
    when = "" if d.time_ns is None else f", t={format_seconds(d.time_ns)}s"
    out.write(f"first divergence at step {d.step}{when}\n")
    out.write(f"  A: {d.expected}\n")
    out.write(f"  B: {d.actual}\n")
    if d.kind not in ("schedule", "length"):
        out.write(f"note: {d.message}\n")
    return False


def chrome_trace(trace: Trace) -> dict[str, Any]:
    """Chrome trace-event JSON (Perfetto, chrome://tracing): one track per task.

    Virtual time becomes trace time (microseconds). The decisions made at one virtual
    instant (a round's, or several busy rounds' when the clock stood still) are laid out one
    after another within the instant's slot (up to the next instant) in the order they ran,
    each lasting most of its share; a round's marker sits at its first decision.
    """
    s = trace.schedule
    pid = 1
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
         "args": {"name": f"{trace.test} seed={trace.seed}"}},
    ]
    used = sorted(set(s.ids))
    for tid in used:
        events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                       "args": {"name": _task(trace, tid)}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                       "args": {"sort_index": tid}})
    cycle = trace.config.get("cycle")
    cycle_ns = int(cycle * NS_PER_SECOND) if isinstance(cycle, (int, float)) and cycle > 0 else 1_000_000
    checkpoints = {c["step"]: c["auditor"] for c in trace.checkpoints}
    rounds = len(s.round_steps)
    r = 0
    while r < rounds:
        t = s.round_times[r]
        end = r + 1  # the rounds at this instant: r .. end - 1
        while end < rounds and s.round_times[end] == t:
            end += 1
        first = s.round_steps[r]
        last = s.round_steps[end] if end < rounds else trace.steps
        span = (s.round_times[end] - t) if end < rounds else cycle_ns
        slot = span / (last - first)
        for q in range(r, end):
            start = s.round_steps[q]
            ready = (s.round_steps[q + 1] if q + 1 < rounds else trace.steps) - start
            ts = (t + (start - first) * slot) / 1000
            events.append({"name": f"round {q}", "ph": "i", "s": "p", "ts": ts, "pid": pid, "tid": 0,
                           "args": {"step": start, "ready": ready, "virtual_time_ns": t}})
            if start in checkpoints:
                events.append({"name": "checkpoint", "ph": "i", "s": "p", "ts": ts, "pid": pid, "tid": 0,
                               "args": {"step": start, "auditor": checkpoints[start]}})
        for i, step in enumerate(range(first, last)):
            tid = s.ids[step]
            events.append({
                "name": trace.label(tid) or f"task {tid}", "ph": "X", "ts": (t + i * slot) / 1000,
                "dur": slot * 0.8 / 1000, "pid": pid, "tid": tid,
                "args": {"step": step, "seq": s.picks[step], "virtual_time_ns": t},
            })
        r = end
    end_ns = (s.round_times[-1] + cycle_ns) if rounds else 0
    name = trace.outcome if trace.error is None else f"{trace.outcome}: {trace.error['type']}"
    events.append({"name": name, "ph": "i", "s": "g", "ts": end_ns / 1000, "pid": pid, "tid": 0,
                   "args": {"auditor": trace.auditor, **({"error": trace.error} if trace.error else {})}})
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "format": FORMAT, "version": format_version(trace), "test": trace.test, "seed": trace.seed,
            "outcome": trace.outcome, "steps": trace.steps, "auditor": trace.auditor,
            "ordering": s.ordering, "strategy": s.strategy, "chosen": s.chosen, "holds_back": s.holds_back,
            "timing": list(s.timing),
        },
    }


def _iter_json(doc: dict[str, Any]) -> Iterator[str]:
    # One event per line: large exports stay greppable and are written in pieces.
    yield '{"traceEvents": [\n'
    events = doc["traceEvents"]
    for i, event in enumerate(events):
        yield json.dumps(event, separators=(",", ":"), allow_nan=False) + (",\n" if i + 1 < len(events) else "\n")
    rest = {k: v for k, v in doc.items() if k != "traceEvents"}
    yield "], " + json.dumps(rest, allow_nan=False)[1:] + "\n"


def _load(path: str) -> Trace:
    return load_trace(path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytest_commonware", description="pytest-commonware tools")
    commands = parser.add_subparsers(dest="command", required=True, metavar="trace")
    trace = commands.add_parser("trace", help="inspect recorded deterministic runs")
    actions = trace.add_subparsers(dest="action", required=True, metavar="{show,diff,export}")
    p = actions.add_parser("show", help="print the timeline of a trace")
    p.add_argument("file")
    p.add_argument("--start", type=_non_negative, default=0, metavar="STEP", help="first step to print")
    p.add_argument("--limit", type=_non_negative, default=None, metavar="N", help="print at most N steps")
    p = actions.add_parser("diff", help="print the first divergence between two traces (exit 1 if they differ)")
    p.add_argument("a")
    p.add_argument("b")
    p = actions.add_parser("export", help="convert a trace (Chrome trace-event JSON for Perfetto, or one offline HTML page)")
    p.add_argument("file")
    p.add_argument("--format", choices=["chrome", "html"], required=True)
    p.add_argument("-o", "--output", default=None, metavar="OUT", help="write here instead of stdout")
    return parser


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (TraceError, _Usage) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.action == "show":
        show(_load(args.file), out, start=args.start, limit=args.limit)
        return 0
    if args.action == "diff":
        a, b = _load(args.a), _load(args.b)
        return 0 if diff(a, b, args.a, args.b, out) else 1
    trace = _load(args.file)
    if args.format == "html":
        from commonware_runtime.deterministic.picture import html_page

        page = html_page(trace)
        if args.output is None:
            out.write(page)
            return 0
        try:
            atomic_write(Path(args.output), page.encode("utf-8"))
        except OSError as exc:
            raise _Usage(f"{args.output}: cannot write: {exc.strerror or exc}") from None
        return 0
    doc = chrome_trace(trace)
    if args.output is None:
        for chunk in _iter_json(doc):
            out.write(chunk)
        return 0
    try:
        atomic_write(Path(args.output), "".join(_iter_json(doc)).encode("utf-8"))
    except OSError as exc:
        raise _Usage(f"{args.output}: cannot write: {exc.strerror or exc}") from None
    return 0
