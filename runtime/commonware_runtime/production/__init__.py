"""The production runtime: asyncio or uvloop, real time, real TCP, real files.

>>> from commonware_runtime import production
>>> production.Runner(production.Config(event_loop="asyncio")).start(main)  # doctest: +SKIP
"""

from . import telemetry
from .context import Context
from .runner import Config, Runner

__all__ = ["Config", "Context", "Runner", "telemetry"]
