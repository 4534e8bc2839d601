"""``trace export FILE --format html``: one self-contained page picturing a recorded run.

The page is pure HTML and inline SVG with inline CSS: no script, no network, nothing
outside the file. It has a header (test id, seed, strategy, ordering, outcome, failure),
then one lane per task (a ``<g class="lane" data-tid=...>`` in the SVG) over the step index,
with a mark for every step the task ran, virtual time printed along the top where it
advances, round boundaries and checkpoints on a ruler, the failure marked at the end of the
run, and, for a bisected trace (``extra["bisect"]``), the decisive decision highlighted.

Beyond ``MAX_MARKS`` steps the marks are aggregated: a lane gets one mark per bucket of
consecutive steps in which the task ran at least once, and the page says so.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from .trace import format_seconds
from .tracefile import Trace

__all__ = ["MAX_MARKS", "html_page"]

MAX_MARKS = 20_000  # steps drawn one by one; beyond, steps are aggregated into buckets
MAX_LANES = 2_000  # lanes drawn; beyond, the rest are summarised in one line
_LANE_H = 18
_LABEL_W = 260
_TOP = 46  # ruler height above the first lane
_PLOT_W = 1400  # width of the plot area in SVG units (the page scrolls horizontally if needed)
_TIME_LABELS = 12  # at most this many virtual-time labels on the ruler


def _a(value: Any) -> str:
    return escape(str(value), quote=True)


def _seconds(ns: int) -> str:
    # Short on the ruler: the nine decimals without trailing zeros.
    return format_seconds(ns).rstrip("0").rstrip(".") + "s"


def _decisive_step(trace: Trace) -> tuple[int | None, str | None]:
    """The decisive step of a bisected trace (``None`` if none), and what to call it."""
    info = trace.extra.get("bisect") if isinstance(trace.extra, dict) else None
    if not isinstance(info, dict):
        return None, None
    step = info.get("decisive_step")
    if isinstance(step, int) and not isinstance(step, bool) and 0 <= step < trace.steps:
        return step, f"decisive decision: step {step}"
    timing = info.get("decisive_timing_choice")
    if isinstance(timing, int) and not isinstance(timing, bool):
        return None, f"decisive timing choice: #{timing} (fifo ordering: timing choices are not steps)"
    if info.get("canonical_fails"):
        return None, "the canonical schedule already fails: no single decisive decision"
    return None, None


def html_page(trace: Trace, *, max_marks: int = MAX_MARKS) -> str:
    """The whole page for ``trace`` as a string."""
    s = trace.schedule
    steps = trace.steps
    ids = s.ids
    # Lanes: every task that ran (and 0, plain callbacks, when it ran), in id order.
    used = sorted(set(ids))
    shown = used[:MAX_LANES]
    lane_of = {tid: i for i, tid in enumerate(shown)}
    aggregated = steps > max_marks
    buckets = max_marks if aggregated else max(steps, 1)
    per = steps / buckets if aggregated else 1.0  # steps per bucket
    unit = _PLOT_W / buckets  # SVG width of one bucket (one step when not aggregated)

    def x_of(step: float) -> float:
        return step / per * unit

    height = _TOP + len(shown) * _LANE_H + 30
    parts: list[str] = []
    out = parts.append

    # Header.
    failure = trace.failure(1000)
    decisive, decisive_text = _decisive_step(trace)
    title = f"{trace.test} seed={trace.seed}"
    out("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
    out(f"<title>{escape(title)}</title>")
    out("<style>"
        "body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}"
        "h1{font-size:16px;margin:0 0 8px}table.meta td{padding:1px 10px 1px 0;vertical-align:top}"
        "table.meta td:first-child{color:#666}.fail{color:#b00;font-weight:600}.pass{color:#070}"
        ".note{background:#fff6d5;border:1px solid #e6c200;padding:4px 8px;margin:8px 0;display:inline-block}"
        ".wrap{overflow-x:auto;border:1px solid #ddd;margin-top:8px}"
        "svg text{font:11px monospace;fill:#333}.lane rect.bg{fill:#fafafa}.lane:nth-child(odd) rect.bg{fill:#f0f0f0}"
        "rect.mark{fill:#3b6fd6}rect.mark.cb{fill:#999}line.round{stroke:#ccc}line.ck{stroke:#2a2}"
        ".failure line{stroke:#d00;stroke-width:2}.failure text{fill:#d00;font-weight:bold}"
        ".decisive rect{fill:#f90;stroke:#c60}.decisive line{stroke:#f90;stroke-width:2;stroke-dasharray:4 2}"
        ".decisive text{fill:#c60;font-weight:bold}pre{white-space:pre-wrap;margin:4px 0}"
        "</style></head><body>")
    out(f"<h1>{escape(trace.test)}</h1>")
    rows = [
        ("seed", f"{trace.seed} ({trace.runtime})"),
        ("strategy", trace.strategy),
        ("ordering", s.ordering + (", ready callbacks may be held back" if s.holds_back else "")),
        ("run", f"{steps} steps in {len(s.round_steps)} rounds, {len(used)} tasks, "
                f"virtual time {_seconds(s.round_times[-1]) if len(s.round_times) else '0s'}"),
        ("auditor", trace.auditor),
        ("config", " ".join(f"{k}={v}" for k, v in trace.config.items()) or "-"),
    ]
    out("<table class=\"meta\">")
    for key, value in rows:
        out(f"<tr><td>{key}</td><td>{escape(str(value))}</td></tr>")
    cls = "fail" if trace.error is not None else "pass"
    out(f"<tr><td>outcome</td><td class=\"{cls}\" id=\"outcome\">{escape(trace.outcome)}"
        + (f": {escape(failure)}" if failure else "") + "</td></tr>")
    if decisive_text:
        out(f"<tr><td>bisect</td><td class=\"decisive-text\">{escape(decisive_text)}</td></tr>")
    for key, value in trace.extra.items():
        out(f"<tr><td>extra</td><td>{escape(key)}: {escape(json.dumps(value, sort_keys=True, default=str))}</td></tr>")
    out("</table>")
    if trace.error is not None and trace.error.get("message"):
        out(f"<details><summary>error message</summary><pre>{escape(str(trace.error['message']))}</pre></details>")
    if aggregated:
        out(f"<div class=\"note\" id=\"aggregated\">{steps} steps are more than {max_marks}: each mark is a bucket of "
            f"about {per:.1f} consecutive steps in which the task ran at least once (use "
            f"<code>trace show --start STEP</code> for single steps).</div>")
    if len(used) > len(shown):
        out(f"<div class=\"note\" id=\"lanes-capped\">{len(used)} tasks: the first {len(shown)} by id are drawn, "
            f"{len(used) - len(shown)} more are not.</div>")
    out("<p>x axis: step index (each decision in the order it ran); virtual time on the ruler where it advances. "
        "A mark: the task ran at that step. Grey lines: round boundaries; green: auditor checkpoints.</p>")

    # The plot.
    width = _LABEL_W + _PLOT_W + 120
    out(f"<div class=\"wrap\"><svg width=\"{width}\" height=\"{height}\" "
        f"viewBox=\"0 0 {width} {height}\" id=\"timeline\">")
    out(f"<g transform=\"translate({_LABEL_W},0)\">")
    # Ruler: round boundaries (capped), virtual time labels where time advances.
    rounds = len(s.round_steps)
    round_stride = max(1, rounds // 500)
    bottom = _TOP + len(shown) * _LANE_H
    out("<g class=\"ruler\">")
    for r in range(0, rounds, round_stride):
        x = x_of(s.round_steps[r])
        out(f"<line class=\"round\" x1=\"{x:.2f}\" y1=\"{_TOP - 6}\" x2=\"{x:.2f}\" y2=\"{bottom}\"/>")
    last_label_x = -1e9
    labelled = 0
    prev_t = None
    for r in range(rounds):
        t = s.round_times[r]
        if t == prev_t:
            continue
        prev_t = t
        x = x_of(s.round_steps[r])
        if x - last_label_x < _PLOT_W / _TIME_LABELS and r != 0:
            continue
        out(f"<text x=\"{x:.2f}\" y=\"{_TOP - 24}\">t={_seconds(t)}</text>")
        out(f"<text x=\"{x:.2f}\" y=\"{_TOP - 10}\">step {s.round_steps[r]}</text>")
        last_label_x = x
        labelled += 1
    for c in trace.checkpoints[:: max(1, len(trace.checkpoints) // 500)]:
        x = x_of(c["step"])
        out(f"<line class=\"ck\" x1=\"{x:.2f}\" y1=\"{_TOP - 4}\" x2=\"{x:.2f}\" y2=\"{_TOP}\">"
            f"<title>checkpoint at step {c['step']}: auditor {_a(c['auditor'])}</title></line>")
    out("</g>")

    # Lanes and marks.
    marks: dict[int, list[int]] = {tid: [] for tid in shown}
    if aggregated:
        seen: dict[int, int] = {}
        for step, tid in enumerate(ids):
            if tid in lane_of:
                b = int(step / per)
                if seen.get(tid) != b:
                    seen[tid] = b
                    marks[tid].append(b)
    else:
        for step, tid in enumerate(ids):
            if tid in lane_of:
                marks[tid].append(step)
    mark_w = max(unit * 0.85, 0.6)
    out("<g class=\"lanes\">")
    for tid in shown:
        y = _TOP + lane_of[tid] * _LANE_H
        name = "<callback>" if tid == 0 else f"#{tid} {trace.label(tid)}"
        ran = len(marks[tid])
        out(f"<g class=\"lane\" data-tid=\"{tid}\" id=\"lane-{tid}\">")
        out(f"<rect class=\"bg\" x=\"{-_LABEL_W}\" y=\"{y}\" width=\"{_LABEL_W + _PLOT_W}\" height=\"{_LANE_H}\"/>")
        short = name if len(name) <= 36 else name[:35] + "…"
        out(f"<text x=\"{-_LABEL_W + 4}\" y=\"{y + 13}\"><title>{_a(name)}</title>{escape(short)}</text>")
        mclass = "mark cb" if tid == 0 else "mark"
        what = "bucket" if aggregated else "step"
        for m in marks[tid]:
            x = m * unit
            if aggregated:
                tip = f"steps {int(m * per)}..{min(steps, int((m + 1) * per)) - 1}"
            else:
                tip = f"step {m} t={_seconds(s.time_at(m))}"
            out(f"<rect class=\"{mclass}\" data-{what}=\"{m}\" x=\"{x:.2f}\" y=\"{y + 3}\" width=\"{mark_w:.2f}\" "
                f"height=\"{_LANE_H - 6}\"><title>{_a(tip)}</title></rect>")
        out(f"<desc>{ran} {what}s</desc></g>")
    out("</g>")

    # The decisive decision of a bisected trace.
    if decisive is not None:
        x = x_of(decisive)
        tid = ids[decisive]
        out(f"<g class=\"decisive\" id=\"decisive\" data-step=\"{decisive}\">"
            f"<line x1=\"{x:.2f}\" y1=\"{_TOP - 6}\" x2=\"{x:.2f}\" y2=\"{bottom + 4}\"/>")
        if tid in lane_of:
            y = _TOP + lane_of[tid] * _LANE_H
            out(f"<rect x=\"{x - 2:.2f}\" y=\"{y + 1}\" width=\"{max(mark_w, 2) + 4:.2f}\" height=\"{_LANE_H - 2}\"/>")
        out(f"<text x=\"{x + 4:.2f}\" y=\"{bottom + 16}\">decisive: step {decisive}, "
            f"{escape(trace.label(tid) or f'task {tid}')}</text>"
            f"<title>{_a(decisive_text)}</title></g>")

    # The failure (or the end of a passing run) at the end of the run.
    x = x_of(steps)
    end_class = "failure" if trace.error is not None else "end"
    end_text = (trace.error.get("type", "error") if trace.error is not None else trace.outcome)
    out(f"<g class=\"{end_class}\" id=\"{end_class}\" data-step=\"{steps}\">"
        f"<line x1=\"{x:.2f}\" y1=\"{_TOP - 30}\" x2=\"{x:.2f}\" y2=\"{bottom}\" stroke=\"#888\"/>"
        f"<text x=\"{x + 4:.2f}\" y=\"{_TOP - 30 + 10}\">{escape(str(end_text))}</text>"
        f"<title>{_a(failure or trace.outcome)} after {steps} steps</title></g>")
    out("</g></svg></div>")
    out(f"<p>{len(shown)} lanes, {sum(len(v) for v in marks.values())} marks.</p></body></html>\n")
    return "".join(parts)

