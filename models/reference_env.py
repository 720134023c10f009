"""Finding a reference framework's interpreter: the Python environment a peer (sbi, particleflow) runs in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def find_python(
    explicit: str | None,
    *,
    env_var: str,
    env_dir: str,
    root: Path,
    name: str,
    install: str,
    requires: str,
    alone: str,
) -> Path:
    """The reference interpreter: ``explicit`` (``--torch-python``), else ``$env_var/bin/python``, else
    ``env_dir/bin/python`` in ``root`` or the current directory. Without one, a SystemExit says how to
    create the ``name`` environment (``install``, which ``requires``) or how to run without it (``alone``)."""
    if explicit:
        found = shutil.which(explicit) or explicit
        if not Path(found).exists():
            raise SystemExit(f"--torch-python {explicit}: no such interpreter")
        return Path(found)
    env = os.environ.get(env_var)
    places = [Path(env)] if env else list(dict.fromkeys([root / env_dir, Path.cwd() / env_dir]))
    for place in places:
        if (place / "bin" / "python").exists():
            return place / "bin" / "python"
    where = f"{env_var}={env}" if env else " or ".join(str(p) for p in places)
    raise SystemExit(
        f"the {name} reference environment is missing (looked for bin/python in {where}): create it with "
        f"`{install}` ({requires}), point {env_var} at it, or {alone}"
    )
