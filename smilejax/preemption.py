"""Stop requests from the scheduler: SIGTERM, or SIGUSR1 as Slurm's ``--signal`` sends before a limit.

The handler only records the signal; the loop checkpoints at the next step boundary and exits with
``EXIT_PREEMPTED`` so that a requeue script can tell "stopped early, resume me" from a failure.
``listen()`` runs first thing in ``smilejax train``: a warning that arrives while JAX is still
importing or compiling is kept instead of killing the process (SIGUSR1's default action).
"""

from __future__ import annotations

import logging
import signal

import numpy as np

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
log = logging.getLogger(__name__)

_received: list[str] = []
_inherited: dict[int, object] = {}  # the handlers before listen(): an "ignore" set by a rank wrapper


def _record(signum, _frame) -> None:
    _received.append(signal.Signals(signum).name)


def listen() -> None:
    """Starts recording stop signals (idempotent)."""
    for sig in SIGNALS:
        previous = signal.signal(sig, _record)
        _inherited.setdefault(sig, previous)


class StopWatch:
    """Knows whether a stop was requested; ``should_stop`` makes all processes agree on the same step."""

    def __init__(self, check_every: int):
        self.check_every = check_every
        listen()

    @property
    def requested(self) -> str | None:
        return _received[0] if _received else None

    def should_stop(self, step: int) -> bool:
        import jax

        if jax.process_count() == 1:
            return self.requested is not None
        # A signal may reach the processes at different steps; agreeing only every few steps keeps
        # the host synchronisation off the hot path.
        if step % self.check_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
        return bool(np.max(flags))

    def restore(self) -> None:
        """Puts back the inherited handlers, so that a repeated warning cannot kill an exiting run
        whose wrapper (launch/templates/rank.sh) started it with the signal ignored."""
        _received.clear()
        for sig, handler in _inherited.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _inherited.clear()
