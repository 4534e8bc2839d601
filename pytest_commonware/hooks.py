"""pytest-commonware's own hooks (hook specifications), added through ``pytest_addhooks``.

Implement them in a ``conftest.py`` or a plugin like any pytest hook::

    # conftest.py
    from commonware_runtime.deterministic import BaseStrategy

    class NewestFirst(BaseStrategy):
        ...

    def pytest_commonware_strategies():
        return {"newest_first": NewestFirst}

then ``pytest --cw-strategy=newest_first`` or ``@pytest.mark.commonware(strategy="newest_first")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest


@pytest.hookspec
def pytest_commonware_strategies() -> Mapping[str, Callable[[], Any]]:  # type: ignore[empty-body]
    """Scheduling strategies to make known by name (docs/SPEC.md section 5a).

    Return a dict ``{name: factory}``; ``factory()`` builds a fresh
    ``deterministic.Strategy`` (e.g. a ``deterministic.BaseStrategy`` subclass) for each
    run.  Names must be identifiers and must not shadow a built-in strategy (``random``,
    ``pct``, ``pos``, ``swarm``, ``canonical``).  The plugin calls this hook at configure
    time (so ``--cw-strategy`` may name them) and again whenever a ``conftest.py`` that
    implements it is loaded later during collection (so markers below it may name them);
    each name is registered with ``deterministic.strategies.register_strategy``.  A name
    that two implementations give different factories for is a usage error.
    """
