"""The LFI benchmark's report (``smilejax bench train`` of an LFI config, ``bench_study``): earlier runs'
rows joined in, the table over seeds, and the plot in the layout of the benchmark's paper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

IMPLS = ("smilejax", "sbi")
COLORS = {"smilejax": "tab:blue", "sbi": "tab:orange"}  # a labelled variant gets another


def added_rows(paths: str) -> list[dict]:
    """The per-seed rows of earlier runs' ``lfi-runs.json`` (a side run apart, a seed added later)."""
    rows = []
    for path in (p.strip() for p in paths.split(",") if p.strip()):
        try:
            rows += json.loads(Path(path).read_text())["rows"]
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"--add-runs {path}: not an lfi-runs.json ({err})") from None
    return rows


def implementation(row: dict) -> str:
    """The row's implementation as the table names it: ``impl``, with its ``variant`` (``--label``) when
    it has one, so rows of another flow or embedding joined by ``--add-runs`` never pool with these."""
    variant = row.get("variant") or ""
    return f"{row['impl']} ({variant})" if variant else row["impl"]


def _listed(values: list, digits: int) -> str:
    """Per-seed values for the table, in seed order ("?" where an older row lacks one)."""
    return ", ".join("?" if v is None else f"{v:.{digits}f}" for v in values)


def summarise(rows: list[dict]) -> list[dict]:
    """Per task, budget and implementation (with its variant): mean and spread over seeds of C2ST and
    wall time, and the per-seed C2ST and epochs (as docs/LFI.md's tables list them)."""
    out = []
    keys = list(dict.fromkeys((r["task"], r["budget"], implementation(r)) for r in rows))
    for task, budget, impl in keys:
        mine = [r for r in rows if (r["task"], r["budget"], implementation(r)) == (task, budget, impl)]
        mine.sort(key=lambda r: r.get("seed", 0))
        c2st = np.array([r["c2st"] for r in mine])
        seconds = np.array([r["train_s"] for r in mine])
        epochs = [r.get("epochs") for r in mine]
        out.append(
            {
                "task": task,
                "budget": budget,
                "impl": impl,
                "seeds": len(mine),
                "c2st": float(c2st.mean()),
                "c2st_seed_std": float(c2st.std()),
                "c2st_per_seed": _listed(list(c2st), 3),
                "epochs_per_seed": _listed(epochs, 0),
                "train_s": float(seconds.mean()),
                "train_s_std": float(seconds.std()),
            }
        )
    return sorted(out, key=lambda r: (r["task"], r["budget"], r["impl"]))


def per_observation(rows: list[dict]) -> list[dict]:
    """The per-seed rows with their C2ST per observation written out (the markdown table's column)."""
    return [{**r, "per_observation": _listed(r.get("c2st_per_observation", []), 3)} for r in rows]


def plot(table: list[dict], path: Path) -> None:
    """The paper's layout: a panel per task, C2ST against budget (log), one line per implementation with
    its seed spread; below, the wall time to train."""
    from smilejax import plotting

    plt = plotting.pyplot(path)
    if plt is None or not table:
        return
    names = list(dict.fromkeys(r["task"] for r in table))
    present = {r["impl"] for r in table}
    impls = [i for i in IMPLS if i in present] + sorted(present - set(IMPLS))
    others = iter(["tab:green", "tab:purple", "tab:brown", "tab:gray", "tab:olive", "tab:cyan"])
    colors = {i: COLORS.get(i) or next(others, "black") for i in impls}
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5.4), squeeze=False, sharex=True)
    for col, name in enumerate(names):
        for impl in impls:
            mine = sorted(
                (r for r in table if r["task"] == name and r["impl"] == impl), key=lambda r: r["budget"]
            )
            if not mine:
                continue
            b = [r["budget"] for r in mine]
            kwargs = {"color": colors[impl], "marker": "o", "capsize": 3, "label": impl}
            axes[0, col].errorbar(b, [r["c2st"] for r in mine], [r["c2st_seed_std"] for r in mine], **kwargs)
            axes[1, col].errorbar(b, [r["train_s"] for r in mine], [r["train_s_std"] for r in mine], **kwargs)
        axes[0, col].set_title(name, fontsize=10)
        axes[0, col].set_ylim(0.45, 1.02)
        axes[0, col].axhline(0.5, color="0.6", lw=0.8, ls="--")
        axes[1, col].set_xscale("log")
        budgets = [r["budget"] for r in table if r["task"] == name]
        axes[1, col].set_xlim(min(budgets) / 2, max(budgets) * 2)  # a single budget gets a visible range
        axes[1, col].set_yscale("log")
        axes[1, col].set_xlabel("simulations")
    axes[0, 0].set_ylabel("C2ST (0.5 best)")
    axes[1, 0].set_ylabel("wall time to train [s]")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    plotting.save(fig, path)
