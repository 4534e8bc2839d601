"""pytest-commonware: run async tests on commonware_runtime, over many seeds, with traces.

The pytest plugin lives in ``pytest_commonware.plugin`` (loaded through the ``pytest11``
entry point); the ``trace`` command line (``python -m pytest_commonware trace
show|diff|export``) in ``pytest_commonware.cli``.  Trace files are the runtime's
(``commonware_runtime.deterministic.tracefile``); the names below are that module's, kept
importable from here for code written when they lived in this package.
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
        from commonware_runtime.deterministic import tracefile

        return getattr(tracefile, name)
    raise AttributeError(f"module 'pytest_commonware' has no attribute {name!r}")
