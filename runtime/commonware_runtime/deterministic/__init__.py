"""The deterministic runtime: seeded scheduling on virtual time, simulated network and storage."""

from .context import Context
from .explore import Exploration, explore
from .loop import EventLoop, UnsupportedOperation
from .runner import Checkpoint, Config, Runner
from .storage import StorageFaults
from .strategies import PCT, POS, Canonical, Choices, Deviations, Random, Strategy, Swarm, Walk, register_strategy
from .trace import Recorder, ReplayDivergence, Replayer, Schedule

__all__ = [
    "PCT",
    "POS",
    "Canonical",
    "Choices",
    "Deviations",
    "Random",
    "Strategy",
    "Swarm",
    "Walk",
    "register_strategy",
    "Checkpoint",
    "Config",
    "Context",
    "EventLoop",
    "Exploration",
    "explore",
    "Recorder",
    "ReplayDivergence",
    "Replayer",
    "Runner",
    "Schedule",
    "StorageFaults",
    "UnsupportedOperation",
]
