"""Where smilejax caches what it derives from datasets (default sets, counts, normalisations)."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$SMILEJAX_CACHE``, else ``~/.cache/smilejax``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("SMILEJAX_CACHE") or Path.home() / ".cache" / "smilejax").expanduser()


def derived_dir(path: str | os.PathLike, kind: str) -> Path:
    """Where files derived from the dataset file or folder ``path`` go: next to it when that folder is
    writable (they travel with the data), else ``cache_root()/kind`` (read-only shared datasets)."""
    here = Path(path).resolve().parent
    return here if os.access(here, os.W_OK) else cache_root() / kind


def save_array(path: Path, array, what: str) -> None:
    """Cache ``array`` as ``.npy`` at ``path`` via a temporary file and a rename, so a concurrent reader
    never sees half a file; a cache that cannot be written only warns (``what`` names it)."""
    import numpy as np

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.npy")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp, array)
        os.replace(tmp, path)
    except OSError as err:
        logging.getLogger(__name__).warning("could not cache %s in %s: %s", what, path, err)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) so that one process of a job makes a
    derived file while the others wait and then read it. Best effort: where the filesystem has no
    ``flock`` (some Lustre mounts), every process goes ahead, and the atomic writes keep that safe."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        with contextlib.suppress(OSError):
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
