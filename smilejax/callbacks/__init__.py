"""The training loop's callbacks (``smilejax.loop``): logging, evaluation, checkpoints, the profiler, stop
signals and the NaN stop; ``tune.objective.Pruning`` is one more, from the tuner. ``base`` says when
the loop calls them."""

from smilejax.callbacks.base import Callback, due
from smilejax.callbacks.checkpoints import Checkpoint, Preemption
from smilejax.callbacks.evaluate import Evaluate
from smilejax.callbacks.logs import Dashboards, LogWindow, MetricsFile, NanStop, Progress
from smilejax.callbacks.profiler import Profile

__all__ = [
    "Callback",
    "Checkpoint",
    "Dashboards",
    "Evaluate",
    "LogWindow",
    "MetricsFile",
    "NanStop",
    "Preemption",
    "Profile",
    "Progress",
    "due",
]
