"""The bundled examples as a user tests them: with the pytest-commonware plugin.

Each deterministic seed is its own test item; ``traces/golden.yaml`` pins every
(test, seed) auditor state, so a change in scheduling behaviour fails here until the
golden file is refreshed on purpose (``pytest --cw-update-golden tests/test_examples_plugin.py``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.commonware(seeds=8, timeout=600)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"plugin_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


echo, pipeline, replication, durable_log = (load(n) for n in ("echo", "pipeline", "replication", "durable_log"))


@pytest.mark.commonware(runtime="both", seeds=4)
async def test_echo_on_both_runtimes(runtime_context: Any, cw_seed: int | None) -> None:
    checked = await echo.main(runtime_context)
    assert checked >= echo.CLIENTS * echo.MESSAGES


async def test_pipeline_loses_no_job(deterministic_context: Any) -> None:
    assert await pipeline.main(deterministic_context) == pipeline.JOBS


async def test_replication_survives_a_partition(deterministic_context: Any, cw_seed: int) -> None:
    assert await replication.main(deterministic_context) == replication.ENTRIES * len(replication.FOLLOWERS)


async def test_durable_log_reads_back_what_it_synced(deterministic_context: Any) -> None:
    acknowledged = await durable_log.main(deterministic_context)
    recovered = await durable_log.recover(deterministic_context)
    assert recovered[: len(acknowledged)] == acknowledged
