"""pytest-commonware: run async tests on commonware_runtime, over many seeds, with traces.

The pytest plugin lives in ``pytest_commonware.plugin`` (loaded through the ``pytest11``
entry point); trace files in ``pytest_commonware.tracefile``; the ``trace`` command line
(``python -m pytest_commonware trace show|diff|export``) in ``pytest_commonware.cli``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FORMAT",
    "VERSION",
    "Divergence",
    "Trace",
    "TraceError",
    "first_divergence",
    "load_trace",
    "trace_from_schedule",
    "trace_path",
    "write_trace",
]


def __getattr__(name: str) -> Any:
    # Loaded on first use: importing the package (which pytest does for the plugin) stays cheap.
    if name in __all__:
        from . import tracefile

        return getattr(tracefile, name)
    raise AttributeError(f"module 'pytest_commonware' has no attribute {name!r}")
