"""The TrackML challenge's per-event CSV files, read and written as the challenge published them.

An event ``event000001000`` is four files in one folder (each may be gzipped, ``.csv.gz``):

* ``-hits.csv``: hit_id, x, y, z (mm), volume_id, layer_id, module_id
* ``-cells.csv``: hit_id, ch0, ch1 (channel numbers on the module), value (deposited charge)
* ``-particles.csv``: particle_id, vx, vy, vz (mm), px, py, pz (GeV), q, nhits
* ``-truth.csv``: hit_id, particle_id (0: noise), tx, ty, tz, tpx, tpy, tpz, weight

Reading uses numpy's C parser (``np.loadtxt``, ~0.1 s per 10^5 rows); when it fails, a second pass over
the text finds the first bad cell and the error names the file, the column and the row (1-based data
row, the header not counted). Columns are matched by name (extra columns are ignored, so files with a
different column order read the same).
"""

from __future__ import annotations

import csv as _csv
import gzip
import io
import os
import re
from pathlib import Path

import numpy as np

KINDS = ("hits", "cells", "particles", "truth")
INT, FLOAT = "i8", "f8"
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "hits": (
        ("hit_id", INT),
        ("x", FLOAT),
        ("y", FLOAT),
        ("z", FLOAT),
        ("volume_id", INT),
        ("layer_id", INT),
        ("module_id", INT),
    ),
    "cells": (("hit_id", INT), ("ch0", INT), ("ch1", INT), ("value", FLOAT)),
    "particles": (
        ("particle_id", INT),
        ("vx", FLOAT),
        ("vy", FLOAT),
        ("vz", FLOAT),
        ("px", FLOAT),
        ("py", FLOAT),
        ("pz", FLOAT),
        ("q", INT),
        ("nhits", INT),
    ),
    "truth": (
        ("hit_id", INT),
        ("particle_id", INT),
        ("tx", FLOAT),
        ("ty", FLOAT),
        ("tz", FLOAT),
        ("tpx", FLOAT),
        ("tpy", FLOAT),
        ("tpz", FLOAT),
        ("weight", FLOAT),
    ),
}
# how the writer prints each column (the challenge's files carry about 7 significant digits)
_FORMATS = {INT: "{:d}", FLOAT: "{:.7g}"}
EVENT_RE = re.compile(r"^(event\d+)-hits\.csv(\.gz)?$")


class CsvError(ValueError):
    """A malformed TrackML file: ``file``, ``column`` and ``row`` (1-based data row) say where."""

    def __init__(
        self, file: str | os.PathLike, message: str, column: str | None = None, row: int | None = None
    ):
        self.file, self.column, self.row = str(file), column, row
        where = "".join([f", column {column!r}" if column else "", f", row {row}" if row else ""])
        super().__init__(f"{file}{where}: {message}")


def dtype(kind: str) -> np.dtype:
    return np.dtype([(name, t) for name, t in COLUMNS[kind]])


def event_file(folder: str | os.PathLike, event: str, kind: str) -> Path | None:
    """The file of ``kind`` of ``event`` in ``folder`` (``.csv`` or ``.csv.gz``), None when neither exists."""
    for suffix in (".csv", ".csv.gz"):
        p = Path(folder) / f"{event}-{kind}{suffix}"
        if p.exists():
            return p
    return None


def find_events(folder: str | os.PathLike) -> list[str]:
    """The event names (``event000001000``, ...) whose hits file is in ``folder``, sorted."""
    names = {m.group(1) for p in Path(folder).iterdir() if (m := EVENT_RE.match(p.name))}
    return sorted(names)


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _header(path: Path, kind: str) -> list[str]:
    try:
        with _open_text(path) as f:
            first = f.readline()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise CsvError(path, f"cannot be read ({err})") from None
    names = [c.strip() for c in first.strip().split(",")]
    missing = [n for n, _ in COLUMNS[kind] if n not in names]
    if missing or not first.strip():
        raise CsvError(
            path,
            f"the header lacks {missing or [n for n, _ in COLUMNS[kind]]} (header: {first.strip()!r}); "
            f"a TrackML {kind} file has {[n for n, _ in COLUMNS[kind]]}",
            column=(missing or [None])[0],
            row=None,
        )
    return names


def _locate(path: Path, kind: str, names: list[str], err: Exception) -> CsvError:
    """The first bad cell of ``path`` (slow Python pass, only run after the fast parser failed)."""
    want = dict(COLUMNS[kind])
    with _open_text(path) as f:
        reader = _csv.reader(f)
        next(reader, None)
        for row, cells in enumerate(reader, start=1):
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if len(cells) != len(names):
                return CsvError(path, f"{len(cells)} fields, the header has {len(names)}", row=row)
            for name, text in zip(names, cells, strict=True):
                if name not in want:
                    continue
                try:
                    value = int(text) if want[name] == INT else float(text)
                except ValueError:
                    what = "an integer" if want[name] == INT else "a number"
                    return CsvError(path, f"{text!r} is not {what}", column=name, row=row)
                if want[name] == FLOAT and not np.isfinite(value):
                    return CsvError(path, f"{text!r} is not finite", column=name, row=row)
    return CsvError(path, f"unreadable ({err})")


def read(path: str | os.PathLike, kind: str) -> np.ndarray:
    """One TrackML CSV (or ``.csv.gz``) as a structured array of ``dtype(kind)``."""
    path = Path(path)
    if kind not in COLUMNS:
        raise ValueError(f"unknown TrackML file kind {kind!r}; known: {list(KINDS)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    names = _header(path, kind)
    want = dict(COLUMNS[kind])
    use = [i for i, n in enumerate(names) if n in want]
    src_dtype = np.dtype([(names[i], want[names[i]]) for i in use])
    try:
        with _open_text(path) as f:
            rows = np.loadtxt(f, delimiter=",", skiprows=1, usecols=use, dtype=src_dtype, ndmin=1)
    except (ValueError, IndexError) as err:
        raise _locate(path, kind, names, err) from None
    except (OSError, EOFError) as err:
        raise CsvError(path, f"cannot be read ({err})") from None
    out = np.empty(rows.shape, dtype(kind))
    for name in out.dtype.names:
        out[name] = rows[name]
    for name, t in COLUMNS[kind]:
        if t == FLOAT and not np.isfinite(out[name]).all():
            row = int(np.flatnonzero(~np.isfinite(out[name]))[0]) + 1
            raise CsvError(path, f"{out[name][row - 1]} is not finite", column=name, row=row)
    return out


def read_event(folder: str | os.PathLike, event: str, kinds=KINDS) -> dict[str, np.ndarray]:
    """The ``kinds`` files of ``event`` in ``folder``, checked for consistency (hit ids, particle ids)."""
    out = {}
    for kind in kinds:
        path = event_file(folder, event, kind)
        if path is None:
            raise FileNotFoundError(f"{Path(folder) / event}-{kind}.csv(.gz): no such file")
        out[kind] = read(path, kind)
    check(folder, event, out)
    return out


def check(folder, event: str, files: dict[str, np.ndarray]) -> None:
    """Cross-file checks: truth has one row per hit in the same order; ids refer to existing rows."""
    if "hits" in files and "truth" in files:
        hits, truth = files["hits"], files["truth"]
        if len(truth) != len(hits) or (truth["hit_id"] != hits["hit_id"]).any():
            bad = np.flatnonzero(truth["hit_id"][: len(hits)] != hits["hit_id"][: len(truth)])
            row = int(bad[0]) + 1 if bad.size else min(len(hits), len(truth)) + 1
            raise CsvError(
                event_file(folder, event, "truth"),
                f"hit ids do not follow the hits file's ({len(truth)} rows, the hits file has {len(hits)})",
                column="hit_id",
                row=row,
            )
    if "truth" in files and "particles" in files:
        pid = files["truth"]["particle_id"]
        known = np.isin(pid, files["particles"]["particle_id"]) | (pid == 0)
        if not known.all():
            row = int(np.flatnonzero(~known)[0]) + 1
            raise CsvError(
                event_file(folder, event, "truth"),
                f"particle {pid[row - 1]} is not in the particles file",
                column="particle_id",
                row=row,
            )
    if "cells" in files and "hits" in files:
        ids = files["hits"]["hit_id"]
        known = np.isin(files["cells"]["hit_id"], ids)
        if not known.all():
            row = int(np.flatnonzero(~known)[0]) + 1
            raise CsvError(
                event_file(folder, event, "cells"),
                f"hit {files['cells']['hit_id'][row - 1]} is not in the hits file",
                column="hit_id",
                row=row,
            )


def write(path: str | os.PathLike, kind: str, rows: np.ndarray) -> Path:
    """Write ``rows`` (fields named as ``COLUMNS[kind]``) as the challenge's CSV; gzipped for ``.gz``."""
    path = Path(path)
    names = [n for n, _ in COLUMNS[kind]]
    text = []
    for name, t in COLUMNS[kind]:  # column-wise formatting, then rows: ~2x np.savetxt
        values = np.asarray(rows[name]).tolist()
        text.append(list(map(_FORMATS[t].format, values)))
    tmp = path.with_name(f".{path.name}.tmp")
    with gzip.open(tmp, "wt", compresslevel=4) if path.name.endswith(".gz") else open(tmp, "w") as f:
        f.write(",".join(names) + "\n")
        if len(rows):
            f.write("\n".join(map(",".join, zip(*text, strict=True))))
            f.write("\n")
    os.replace(tmp, path)
    return path
