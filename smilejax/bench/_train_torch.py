"""The PyTorch half of ``smilejax bench train``: the model's peer script, run by another interpreter.

It runs before JAX touches the devices, so that each framework has the accelerator to itself (JAX
preallocates most of a GPU's memory when its backend starts).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from smilejax import registry
from smilejax.config import Config

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Peer:
    result: dict | None  # the peer's JSON: torch, device, python, rows
    note: str | None = None  # why there is no result
    failed: bool = False


def run_peer(cfg: Config, args: argparse.Namespace, widths: list[int | None]) -> Peer:
    """The peer's measurements of ``widths`` (each mode of ``--torch-modes``), or why there are none."""
    bench = registry.model(cfg.model.name).bench
    if bench.torch_peer is None or bench.torch_config is None:
        return Peer(None, f"skipped: no PyTorch peer for {cfg.model.name}")
    if not args.torch_python:
        return Peer(None, "skipped: no --torch-python")
    python = shutil.which(args.torch_python) or args.torch_python
    if not Path(python).exists():
        raise SystemExit(f"--torch-python {args.torch_python}: no such interpreter")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        command = [
            python,
            str(bench.torch_peer),
            f"--batch={args.batch}",
            f"--widths={','.join(str(w) for w in widths)}",
            f"--steps={args.steps}",
            f"--repeats={args.repeats}",
            f"--precision={args.precision}",
            f"--modes={args.torch_modes}",
            f"--model={json.dumps(bench.torch_config(cfg.model))}",
            f"--out={out}",
        ]
        log.info("PyTorch peer: %s", " ".join(command))
        returncode, tail = run_echoing(command)
        if returncode or not out.exists():
            log.error("the PyTorch peer failed (exit %d):\n%s", returncode, "\n".join(tail))
            last = tail[-1] if tail else f"exit {returncode}"
            return Peer(None, f"failed: {last[:120]}", failed=True)
        return Peer(json.loads(out.read_text()))


def rows(
    peer: Peer, args: argparse.Namespace, padded: int | None, params: int, flops: dict
) -> tuple[list[dict], dict]:
    """Table rows (one note row per mode without a result) and provenance. ``flops``: XLA's count of
    the same step by length, per device; it gives the peer an MFU when JAX ran on one device."""
    import jax

    from smilejax import xla

    if peer.result is None:
        row = {"impl": "torch", "tracks": padded, "padding": "padded", "note": peer.note}
        return [{**row, "mode": m} for m in args.torch_modes.split(",") if m], {}
    result = peer.result
    peak = xla.peak_flops(jax.devices()[0])
    one_device = jax.device_count() == 1
    out = []
    for r in result["rows"]:
        if r["params"] != params:
            log.warning("PyTorch peer: %d parameters, JAX model: %d", r["params"], params)
        f = flops.get(r["tracks"])
        out.append(
            {
                **r,
                "padding": "padded" if r["tracks"] == padded else "bucket",
                "mfu": f / (r["ms_per_step"] / 1e3) / peak if f and peak and one_device else None,
                "note": f"torch {result['torch']} on {result['device']}; {r['params']:,} params",
            }
        )
    return out, {"torch": result["torch"], "torch_device": result["device"], "torch_python": result["python"]}


def run_echoing(command: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Runs ``command`` (in ``env``, default this process's), passing its stderr through as it comes
    (torch.compile takes minutes); returns the exit code and the last 20 lines of stderr."""
    tail: collections.deque[str] = collections.deque(maxlen=20)
    pipes = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with subprocess.Popen(command, **pipes, text=True, env=env) as proc:
        for line in proc.stderr:
            sys.stderr.write(f"[torch] {line}")
            tail.append(line.rstrip())
    return proc.returncode, list(tail)
