"""pytest-commonware: run async tests on commonware_runtime, over many seeds, with traces.

The pytest plugin lives in ``pytest_commonware.plugin`` (loaded through the ``pytest11``
entry point); the ``trace`` command line (``python -m pytest_commonware trace
show|diff|export``) in ``pytest_commonware.cli``.  Trace files, bisect and the golden file
are the runtime's (``commonware_runtime.deterministic.tracefile`` and its neighbours).

What a test module may import from here is the plugin's marker, for short:
``from pytest_commonware import commonware`` then ``@commonware(seeds=100)``, the same as
``@pytest.mark.commonware(seeds=100)``.
"""

from __future__ import annotations

import pytest

__all__ = ["commonware"]

commonware = pytest.mark.commonware
