"""The bundled examples: the seed sweep passes, and the runtime-agnostic ones run on real TCP/files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from commonware_runtime import deterministic, production
from commonware_runtime.sweep import main as sweep_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_passes_on_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep_main(["sweep", "--examples", str(EXAMPLES), "--seeds", "10"]) == 0
    out = capsys.readouterr().out
    for name in ("echo", "durable_log", "pipeline", "replication"):
        assert name in out
    assert "all seeds passed" in out


def test_sweep_reports_a_failing_seed_with_its_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "flaky.py").write_text(
        "async def main(context):\n"
        "    assert context.rng.random() < 0.5, 'unlucky draw'\n"
    )
    assert sweep_main(["sweep", "--examples", str(tmp_path), "--seeds", "20"]) == 1
    out = capsys.readouterr().out
    assert "unlucky draw" in out
    assert "--seed " in out


def test_echo_example_runs_on_real_tcp(tmp_path: Path) -> None:
    module = load("echo")
    echoed = production.Runner(production.Config(storage_directory=tmp_path)).start(module.main)
    assert echoed >= module.CLIENTS * module.MESSAGES  # every payload is at least one byte, all checked


def test_pipeline_example_loses_no_job_in_production(tmp_path: Path) -> None:
    module = load("pipeline")
    assert production.Runner(production.Config(storage_directory=tmp_path)).start(module.main) == module.JOBS


def test_durable_log_keeps_every_synced_record_across_a_crash() -> None:
    module = load("durable_log")
    for seed in range(5):
        acknowledged, checkpoint = deterministic.Runner.seeded(seed).start_and_recover(module.main)
        recovered = deterministic.Runner.from_checkpoint(checkpoint).start(module.after_crash)
        module.check(acknowledged, recovered)
