"""``trace export FILE --format html``: one offline page picturing a (failing, bisected) run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from commonware_runtime import deterministic
from commonware_runtime.deterministic.bisect import bisect_trace
from commonware_runtime.deterministic.picture import html_page
from commonware_runtime.deterministic.tracefile import Trace, load_trace, trace_from_schedule, write_trace
from race_program import race_main as lost_update

from pytest_commonware.cli import main as cli_main
from pytest_commonware.engine import run_deterministic


def race_main() -> Any:
    """The lost update of three labelled workers."""
    return lost_update(3)


def _failing_trace() -> Trace:
    for seed in range(100):
        config = deterministic.Config(seed=seed)
        result = run_deterministic(config, race_main())
        if result.error is not None:
            assert result.schedule is not None
            return trace_from_schedule(result.schedule, test=f"t.py::test_race[seed={seed}]", seed=seed,
                                       config=config.to_dict())
    raise AssertionError("no failing seed in 0..99")


def _busy_trace(tasks: int, rounds: int) -> Trace:
    async def worker(c: Any) -> None:
        for _ in range(rounds):
            await c.sleep(0.001)

    async def main(ctx: Any) -> None:
        handles = [ctx.with_label(f"w{i}").spawn(lambda c: worker(c)) for i in range(tasks)]
        for h in handles:
            await h

    result = run_deterministic(deterministic.Config(seed=3), main)
    assert result.error is None and result.schedule is not None
    return trace_from_schedule(result.schedule, test="t.py::test_busy[seed=3]", seed=3,
                               config=deterministic.Config(seed=3).to_dict())


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.lanes: list[str] = []
        self.marks = 0
        self.ids: set[str] = set()
        self.scripts: list[dict[str, str | None]] = []
        self.urls: list[str] = []
        self.tags = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags += 1
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a)
        if tag in ("link", "img", "iframe", "object", "embed"):
            self.urls.append(f"<{tag}>")
        classes = (a.get("class") or "").split()
        if "lane" in classes:
            self.lanes.append(str(a.get("data-tid")))
        if "mark" in classes:
            self.marks += 1
        if a.get("id"):
            self.ids.add(str(a["id"]))
        for value in a.values():
            if value and re.search(r"(https?:)?//", value):
                self.urls.append(value)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def test_html_of_a_failing_trace_has_a_lane_per_task_and_the_failure(tmp_path: Path) -> None:
    trace = _failing_trace()
    path = write_trace(tmp_path / "race.yaml", trace)
    out = tmp_path / "race.html"
    assert cli_main(["trace", "export", str(path), "--format", "html", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    page = _parse(text)
    assert sorted(page.lanes, key=int) == [str(t) for t in sorted(set(trace.schedule.ids))]
    assert len(page.lanes) == len(set(page.lanes))
    assert page.marks == trace.steps  # one mark per step below the cap
    assert "failure" in page.ids and "AssertionError" in text and "lost update" in text
    assert trace.test in text and f"{trace.seed} (deterministic)" in text
    assert trace.strategy in text and trace.schedule.ordering in text
    for label in "abc":
        assert f"#{next(t for t, n in trace.tasks.items() if n == label)} {label}" in text
    # Self-contained: no script at all, no URL of any kind.
    assert page.scripts == [] and page.urls == []
    assert not re.search(r"https?://", text)
    assert "aggregated" not in page.ids and "decisive" not in page.ids


def test_html_of_a_bisected_trace_highlights_the_decisive_decision(tmp_path: Path) -> None:
    trace = _failing_trace()
    minimal = tmp_path / "race.min.yaml"
    bisect_trace(trace, race_main, minimal, where="race.yaml")
    small = load_trace(minimal)
    step = small.extra["bisect"]["decisive_step"]
    text = html_page(small)
    page = _parse(text)
    assert "decisive" in page.ids and f'data-step="{step}"' in text
    assert f"decisive decision: step {step}" in text


def test_html_of_many_steps_aggregates_and_says_so(tmp_path: Path) -> None:
    trace = _busy_trace(tasks=40, rounds=60)  # 2,400+ steps
    assert trace.steps > 2_000
    text = html_page(trace, max_marks=500)
    page = _parse(text)
    assert "aggregated" in page.ids and f"{trace.steps} steps are more than 500" in text
    assert sorted(page.lanes, key=int) == [str(t) for t in sorted(set(trace.schedule.ids))]  # root, 40 workers, callbacks
    assert page.marks <= 500 * len(page.lanes)
    assert "end" in page.ids and "failure" not in page.ids  # a passing run: its end, no failure


def test_html_to_stdout_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_trace(tmp_path / "race.yaml", _failing_trace())
    assert cli_main(["trace", "export", str(path), "--format", "html"]) == 0
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")
    assert cli_main(["trace", "export", str(tmp_path / "missing.yaml"), "--format", "html"]) == 2


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_html_loads_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome binary on PATH")
    trace = _failing_trace()
    out = tmp_path / "race.html"
    out.write_text(html_page(trace), encoding="utf-8")
    env = dict(os.environ, HOME=str(tmp_path))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--dump-dom",
           out.as_uri()]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{browser} did not finish within 120 s")
    if done.returncode != 0 and not done.stdout.strip():
        pytest.skip(f"{browser} could not run here (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    dom = _parse(done.stdout)
    assert sorted(dom.lanes, key=int) == [str(t) for t in sorted(set(trace.schedule.ids))]
    assert "failure" in dom.ids
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], "\n".join(console)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-p", "no:asyncio"]))
