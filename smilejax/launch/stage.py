"""Copies a job's inputs to node-local storage; run once per node by the job script:

    python -m smilejax.launch.stage DEST SOURCE [SOURCE ...]

Files and folders land as ``DEST/<name>``. A copy goes to a temporary name first and is renamed when
complete, so a half-written file is never read; one that is already there with the same size and
modification time is kept (a job requeued onto the same node copies nothing again).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from tqdm import tqdm

_CHUNK = 16 << 20


def _files(source: Path) -> list[tuple[Path, Path]]:
    """(file, its path relative to the staged entry's parent) for a file or every file under a folder."""
    if source.is_dir():
        return [(p, p.relative_to(source.parent)) for p in sorted(source.rglob("*")) if p.is_file()]
    return [(source, Path(source.name))]


def _same(src: Path, dst: Path) -> bool:
    if not dst.exists():
        return False
    a, b = src.stat(), dst.stat()
    return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)


def _copy(src: Path, dst: Path, bar: tqdm) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part-{os.getpid()}")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            bar.update(len(chunk))
    shutil.copystat(src, tmp)
    os.replace(tmp, dst)


def stage(dest: Path, sources: list[Path], *, interactive: bool = False) -> dict:
    """Copies ``sources`` into ``dest``; returns counts for the log line. Raises naming the problem."""
    for s in sources:
        if not s.exists():
            raise FileNotFoundError(f"stage: {s} does not exist")
    pairs = [pair for s in sources for pair in _files(s)]
    todo = [(src, dest / rel) for src, rel in pairs if not _same(src, dest / rel)]
    need = sum(src.stat().st_size for src, _ in todo)
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise OSError(f"stage: {need / 1e9:.2f} GB to copy but {dest} has {free / 1e9:.2f} GB free")
    t0 = time.perf_counter()
    # In a batch log (several nodes writing) a line every 30 s is enough.
    bar = tqdm(
        total=need,
        unit="B",
        unit_scale=True,
        desc=f"stage {socket.gethostname()}",
        mininterval=1 if interactive else 30,
        disable=not todo,
    )
    with bar:
        for src, dst in todo:
            _copy(src, dst, bar)
    return {"files": len(pairs), "copied": len(todo), "bytes": need, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smilejax.launch.stage", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dest", type=Path)
    parser.add_argument("sources", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        done = stage(args.dest, args.sources, interactive=sys.stderr.isatty())
    except OSError as err:
        print(f"smilejax-stage: {socket.gethostname()}: {err}", file=sys.stderr)
        return 1
    rate = done["bytes"] / 1e9 / max(done["seconds"], 1e-9)
    print(
        f"smilejax-stage: {socket.gethostname()}: {done['copied']} of {done['files']} file(s) copied "
        f"({done['bytes'] / 1e9:.2f} GB, {done['seconds']:.1f} s, {rate:.2f} GB/s) to {args.dest}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
