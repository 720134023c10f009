"""A tune worker: its rank among ``srun -n K`` tasks, its own devices, and a heartbeat file.

Under ``srun -n K smilejax tune ...`` every task is an independent worker that trains its trials as a
single process: the launcher's environment gives the rank (for keras-tuner's chief on task 0 and for
seeds), then ``SMILEJAX_NO_DISTRIBUTED=1`` keeps ``train()`` from joining the tasks into one JAX
system. A task that sees several GPUs of which it should own only a block gets its visible-devices
variable (``CUDA_VISIBLE_DEVICES``, or ROCm's) narrowed to that block, before JAX starts.

Each worker touches ``STUDY_DIR/workers/<id>`` every few seconds; a trial left RUNNING by a worker
whose file went stale (or whose process is gone, on this host) is handed to another worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from pathlib import Path

from smilejax import runtime

HEARTBEAT_S = 5.0


@dataclasses.dataclass(frozen=True)
class Worker:
    rank: int
    size: int
    host: str
    pid: int
    chief_host: str  # task 0's host (keras-tuner's oracle server)
    chief_port: int | None  # a port derived from the job step, None outside a launcher

    @property
    def id(self) -> str:
        return f"{self.host}-{self.pid}"

    @property
    def lead(self) -> bool:
        return self.rank == 0


def start(environ: dict | None = None) -> Worker:
    """This process as a worker; call before anything touches JAX devices."""
    environ = os.environ if environ is None else environ
    cluster = runtime.detect(environ)
    if cluster.local_device_ids is not None:
        runtime.narrow_visible_devices(environ, cluster.local_device_ids)
    environ["SMILEJAX_NO_DISTRIBUTED"] = "1"  # every trial is a single-process run
    host, port = None, None
    if cluster.coordinator:
        host, _, port_text = cluster.coordinator.rpartition(":")
        host, port = host.strip("[]"), int(port_text)
    return Worker(
        rank=cluster.process_id,
        size=cluster.num_processes,
        host=socket.gethostname(),
        pid=os.getpid(),
        chief_host=host or "127.0.0.1",
        chief_port=port,
    )


def local() -> Worker:
    """This process as the only worker, without reading or changing the environment (tests, notebooks)."""
    return Worker(
        rank=0, size=1, host=socket.gethostname(), pid=os.getpid(), chief_host="127.0.0.1", chief_port=None
    )


class Heartbeat:
    """Touches ``directory/<worker id>`` every HEARTBEAT_S seconds from a daemon thread."""

    def __init__(self, directory: Path, worker: Worker):
        self.path = directory / worker.id
        directory.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"host": worker.host, "pid": worker.pid, "rank": worker.rank}))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="tune-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.path.touch()

    def close(self) -> None:
        self._stop.set()


def is_gone(directory: Path, worker_id: str, host: str, pid: int, *, stale_after: float) -> bool:
    """Whether the worker that owns a RUNNING trial is dead: its process (on this host) or its heartbeat."""
    if host == socket.gethostname() and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    path = directory / worker_id
    if not path.exists():
        return True
    return time.time() - path.stat().st_mtime > stale_after
