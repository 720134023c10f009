"""Plots of studies that may run on a bare GPU node (the source copied there, not installed)."""

from __future__ import annotations

import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)


def pyplot(path: str | os.PathLike) -> ModuleType | None:
    """``matplotlib.pyplot`` drawing to files, or None with a warning naming the plot ``path`` when
    matplotlib is missing: the study's JSON and tables are written without it."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: no plot %s", path)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
