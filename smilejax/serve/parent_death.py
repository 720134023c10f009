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
"""

from __future__ import annotations

import os
import sys
import threading

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def supported() -> bool:
    """Whether a child started now from this thread can be tied to this process's life."""
    return sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()


def with_parent_death(cmd: list[str]) -> list[str]:
    """``cmd``, started so that it gets SIGTERM when this process dies (see the module docstring)."""
    if not supported():
        return list(cmd)
    # -I -S: no user site, no site-packages, no PYTHON* variables; the launcher needs the stdlib only.
    return [sys.executable, "-I", "-S", __file__, str(os.getpid()), *cmd]


def _launch(parent: int, cmd: list[str]) -> int:
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        print(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}", file=sys.stderr)
        return 1
    if os.getppid() != parent:  # the parent died before prctl: nobody would send the signal
        print(f"parent {parent} exited before {cmd[0]} started; not starting it", file=sys.stderr)
        return 1
    os.execv(cmd[0], cmd)  # keeps the death signal (cleared only for set-uid/set-gid binaries)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(_launch(int(sys.argv[1]), sys.argv[2:]))
