"""Stop requests from the scheduler: SIGTERM, or SIGUSR1 as Slurm's ``--signal`` sends before a limit.

The handler only sets a flag; the loop checkpoints at the next step boundary and exits with
``EXIT_PREEMPTED`` so that a requeue script can tell "stopped early, resume me" from a failure.
"""

from __future__ import annotations

import logging
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
log = logging.getLogger(__name__)


class StopWatch:
    """Remembers a stop signal; ``should_stop`` makes all processes agree on the same step."""

    def __init__(self, check_every: int):
        self.requested: str | None = None
        self.check_every = check_every
        self._previous = {}
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.requested = signal.Signals(signum).name

    def should_stop(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.requested is not None
        # A signal may reach the processes at different steps; agreeing only every few steps keeps
        # the host synchronisation off the hot path.
        if step % self.check_every:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
        return bool(np.max(flags))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
