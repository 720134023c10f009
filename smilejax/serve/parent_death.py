"""A child process that gets SIGTERM when its parent dies, however the parent dies (SIGKILL, OOM kill).

``with_parent_death(cmd)`` returns ``cmd`` wrapped in a small launcher, this file run by this interpreter:
it asks Linux for ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, exits if the parent already died before that
call (``os.getppid()`` no longer the process that started it), and then ``exec``s ``cmd``, so the child
keeps the launcher's pid. A launcher rather than ``Popen(preexec_fn=...)``: preexec_fn runs Python
between fork and exec, which can deadlock when the parent has other threads (JAX's, a client's).

Linux sends the signal when the *thread* that forked the child exits, not the process: so the wrapping
applies only to a child started from the main thread (whose exit is the process's), and ``cmd`` comes
back unchanged from any other thread (e.g. the WAN bench starts Triton from a thread that entered a
network namespace and then ends). Elsewhere than Linux there is no such call: ``cmd`` comes back
unchanged and a killed parent leaves its child running.

When the launcher cannot start ``cmd`` (the parent already gone, prctl or exec failing) it exits with
``LAUNCH_FAILED`` after one stderr line starting with ``MARKER``; ``launch_error`` turns that into the
reason, so the caller's error names it rather than reporting the command's own failure.
"""

from __future__ import annotations

import os
import sys
import threading

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LAUNCH_FAILED = 125  # the launcher's own exit code (as env/timeout/docker use 125-127); Triton exits 0 or 1
MARKER = "parent-death launcher: "


def supported() -> bool:
    """Whether a child started now from this thread can be tied to this process's life."""
    return sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()


def with_parent_death(cmd: list[str]) -> list[str]:
    """``cmd``, started so that it gets SIGTERM when this process dies (see the module docstring)."""
    if not supported():
        return list(cmd)
    # -I -S: no user site, no site-packages, no PYTHON* variables; the launcher needs the stdlib only.
    return [sys.executable, "-I", "-S", __file__, str(os.getpid()), *cmd]


def launch_error(returncode: int | None, output: str | None) -> str | None:
    """Why the launcher did not start its command, when ``returncode`` says it did not (else None):
    the last ``MARKER`` line of ``output`` (the child's stderr, e.g. a log file), or where to look."""
    if returncode != LAUNCH_FAILED:
        return None
    reasons = [line[len(MARKER) :] for line in (output or "").splitlines() if line.startswith(MARKER)]
    if reasons:
        return reasons[-1]
    return "the parent-death launcher failed; its reason went to stderr"


def _fail(reason: str) -> int:
    print(MARKER + reason, file=sys.stderr, flush=True)
    return LAUNCH_FAILED


def _launch(parent: int, cmd: list[str]) -> int:
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        reason = os.strerror(ctypes.get_errno())
        return _fail(f"prctl(PR_SET_PDEATHSIG) failed: {reason}; not starting {cmd[0]}")
    if os.getppid() != parent:  # the parent died before prctl: nobody would send the signal
        return _fail(f"parent {parent} exited before {cmd[0]} started; not starting it")
    try:
        os.execv(cmd[0], cmd)  # keeps the death signal (cleared only for set-uid/set-gid binaries)
    except OSError as err:
        return _fail(f"cannot run {cmd[0]}: {err.strerror}")
    return LAUNCH_FAILED  # not reached


if __name__ == "__main__":
    sys.exit(_launch(int(sys.argv[1]), sys.argv[2:]))
