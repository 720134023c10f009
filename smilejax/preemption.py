"""Stop requests: SIGTERM or SIGUSR1 from the scheduler (Slurm's ``--signal`` before a limit), and Ctrl-C.

The handler only records the signal; the loop checkpoints at the next step boundary and exits with
``EXIT_PREEMPTED`` so that a requeue script can tell "stopped early, resume me" from a failure. The
first Ctrl-C (SIGINT) stops the same way with ``EXIT_INTERRUPTED``, what a shell reports for a Ctrl-C;
a second one ends the process at once with the same status, for a user who will not wait for the
checkpoint (``os._exit``: a ``KeyboardInterrupt`` may be swallowed by library code that catches
everything; the last complete checkpoint stays, as after a crash).
``listen()`` runs first thing in ``smilejax train``: a warning that arrives while JAX is still
importing or compiling is kept instead of killing the process (SIGUSR1's default action).
"""

from __future__ import annotations

import logging
import os
import signal
import types

import numpy as np

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a Ctrl-C, as a shell reports it
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
log = logging.getLogger(__name__)

_received: list[str] = []
_inherited: dict[int, object] = {}  # the handlers before listen(): an "ignore" set by a rank wrapper
_CTRL_C_NOTICE = b"\nCtrl-C: checkpointing at the next step boundary, then stopping (Ctrl-C again aborts)\n"
_ABORT_NOTICE = b"\nsmilejax: aborted by a second Ctrl-C; the last complete checkpoint is kept\n"
_announce = [True]  # whether this process acknowledges a Ctrl-C (process 0 only, once it is known)


def _record(signum: int, _frame: types.FrameType | None) -> None:
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
        if name in _received:  # the second Ctrl-C: abort now, without the checkpoint
            os.write(2, _ABORT_NOTICE)
            os._exit(EXIT_INTERRUPTED)
        if _announce[0]:  # os.write: a handler may interrupt a write to sys.stderr, which is not reentrant
            os.write(2, _CTRL_C_NOTICE)
    _received.append(name)


def exit_code(requested: str | None) -> int:
    """The exit status of a run stopped by ``requested`` (a signal name; None: it was not stopped)."""
    if requested is None:
        return 0
    return EXIT_INTERRUPTED if requested == signal.SIGINT.name else EXIT_PREEMPTED


def listen() -> None:
    """Starts recording stop signals (idempotent)."""
    for sig in SIGNALS:
        previous = signal.signal(sig, _record)
        _inherited.setdefault(sig, previous)


class StopWatch:
    """Knows whether a stop was requested; ``should_stop`` makes all processes agree on the same step and
    on the exit status (``exit_code``: an interrupt on any process wins over a scheduler's warning)."""

    def __init__(self, check_every: int, *, announce: bool = True):
        self.check_every = check_every
        self.exit_code = 0
        _announce[0] = announce
        listen()

    @property
    def requested(self) -> str | None:
        return _received[0] if _received else None

    def should_stop(self, step: int) -> bool:
        import jax

        if jax.process_count() == 1:
            self.exit_code = exit_code(self.requested)
            return self.exit_code != 0
        # A signal may reach the processes at different steps; agreeing only every few steps keeps
        # the host synchronisation off the hot path.
        if step % self.check_every:
            return False
        from jax.experimental import multihost_utils

        codes = multihost_utils.process_allgather(np.int32(exit_code(self.requested)))
        self.exit_code = int(np.max(codes))
        return self.exit_code != 0

    def restore(self) -> None:
        """Puts back the inherited handlers, so that a repeated warning cannot kill an exiting run
        whose wrapper (launch/templates/rank.sh) started it with the signal ignored."""
        _received.clear()
        _announce[0] = True
        for sig, handler in _inherited.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _inherited.clear()
