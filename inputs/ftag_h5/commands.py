"""``smilejax data norm|check``: the normalisation dict and the upfront check of ATLAS flavour-tagging HDF5
files (entry-point group ``smilejax.data_commands``: ``smilejax data`` calls ``register``)."""

from __future__ import annotations

import argparse
import os
import sys

from smilejax import host

from . import (
    FLAVOURS,
    FtagConfig,
    check,
    compute_norm_dict,
    expand_paths,
    inspect_file,
    open_h5,
    write_norm_dict,
)

# Drawn per flavour by `data check --plot`: (tracks field, axis label with unit, factor from the file's
# units (ATLAS's MeV and mm) to the label's, x range in the label's unit, axis: lin/log/int).
PLOT_VARS = (
    ("IP3D_signed_d0_significance", "signed $d_0/\\sigma(d_0)$", 1.0, (-10, 40), "lin"),
    ("IP3D_signed_z0_significance", "signed $z_0/\\sigma(z_0)$", 1.0, (-10, 40), "lin"),
    ("d0", "$d_0$ [mm]", 1.0, (-1, 1), "lin"),
    ("z0SinTheta", "$z_0 \\sin\\theta$ [mm]", 1.0, (-1, 1), "lin"),
    ("pt", "track $p_T$ [GeV]", 1e-3, (0.5, 100), "log"),
    ("numberOfPixelHits", "pixel hits", 1.0, (0, 10), "int"),
)


def _add_vars(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jet-vars",
        default=None,
        metavar="A,B",
        help="jet variables (default: pt_btagJes,eta_btagJes, as data.jet_vars and the gn2 config)",
    )
    parser.add_argument(
        "--track-vars", default=None, metavar="A,B,...", help="track variables (default: GN2's 19)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``norm`` and ``check`` to the sub-commands ``sub`` of ``smilejax data``."""
    norm = sub.add_parser(
        "norm",
        help="compute the normalisation dict (mean, std) of the input variables",
        description="Mean and std of the jet variables and of the track variables on valid tracks, over the "
        "first N jets of FILES in order, written as YAML in the umami-preprocessing/salt layout "
        "{jets|tracks: {var: {mean, std}}} (use it as data.norm_dict).",
    )
    norm.add_argument("files", nargs="+", metavar="FILES", help="HDF5 files, globs or directories")
    norm.add_argument("--out", required=True, metavar="PATH", help="output YAML (e.g. norm.yaml)")
    norm.add_argument("--jets", type=int, default=200_000, metavar="N", help="jets to use (default 200000)")
    _add_vars(norm)
    norm.set_defaults(run=run_norm)

    check = sub.add_parser(
        "check",
        help="scan files for structure, dtype, label and NaN/inf problems",
        description="Read every file whole, in chunks: datasets, variables and dtypes, flavour and track "
        "labels, NaN/inf in the input variables. Prints a YAML report per file (jets, valid tracks, jets "
        "per flavour b/c/light/tau, track labels present, or the error naming file, field and row).",
        epilog="exit codes: 0 every file is fine, 2 a file has a problem (the report names it)",
    )
    check.add_argument("files", nargs="+", metavar="FILES", help="HDF5 files, globs or directories")
    check.add_argument(
        "--plot",
        metavar="PNG",
        default=None,
        help="also draw per-flavour distributions of the main track variables (first 20000 jets per file)",
    )
    _add_vars(check)
    check.set_defaults(run=run_check)


def _config(args: argparse.Namespace) -> FtagConfig:
    cfg = FtagConfig()
    if args.jet_vars:
        cfg.jet_vars = [v.strip() for v in args.jet_vars.split(",") if v.strip()]
    if args.track_vars:
        cfg.track_vars = [v.strip() for v in args.track_vars.split(",") if v.strip()]
    return cfg


def run_norm(args: argparse.Namespace) -> int:
    if args.jets < 1:
        raise ValueError(f"--jets must be at least 1, not {args.jets}")
    cfg = _config(args)
    norm = compute_norm_dict(args.files, cfg, args.jets)
    path = write_norm_dict(norm, args.out)
    n_jet, n_track = len(norm["jets"]), len(norm["tracks"])
    print(f"wrote the normalisation of {n_jet} jet and {n_track} track variables: {path}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    import yaml

    cfg = _config(args)
    report: dict[str, dict] = {}
    good: list[str] = []
    for arg in args.files:
        try:
            files = expand_paths(arg)
        except (FileNotFoundError, ValueError) as err:
            report[arg] = {"error": str(err)}
            continue
        for path in files:
            try:
                report.update(check(path, cfg))
                good.append(path)
            except (FileNotFoundError, ValueError, KeyError) as err:
                report[path] = {"error": str(err)}
    print(yaml.safe_dump(report, sort_keys=False, width=200), end="")
    bad = [p for p, r in report.items() if "error" in r]
    if args.plot and good:
        _plot(good, cfg, args.plot)
        print(f"plot: {args.plot}")
    if bad:
        print(f"smilejax: {len(bad)} of {len(report)} files have problems: {', '.join(bad)}", file=sys.stderr)
        return 2
    return 0


def _plot(paths: list[str], cfg: FtagConfig, out: str, max_jets: int = 20_000):
    """Per-flavour, unit-area histograms of the main track variables and of the tracks per jet, in
    physical units, saved to ``out``; returns the (closed) figure."""
    import numpy as np

    from smilejax import plotting

    plt = plotting.pyplot(out)
    if plt is None:
        raise SystemExit(
            f"data check --plot {out}: matplotlib is not installed ({host.pip_install('matplotlib')})"
        )

    values: dict[str, list] = {name: [] for name, *_ in PLOT_VARS}
    n_tracks, flavours = [], []
    for path in paths:
        info = inspect_file(path, cfg)
        n = min(info.n_jets, max_jets)
        with open_h5(path) as f:
            raw = f[cfg.jets_name].fields(info.flavour_field)[:n].astype(np.int64)
            fields = [v for v in values if v in (f[cfg.tracks_name].dtype.names or ())]
            trk = f[cfg.tracks_name].fields([*fields, "valid"])[:n]
        flav = info.flavour_lut[np.clip(raw, 0, info.flavour_lut.size - 1)]
        valid = trk["valid"]
        flavours.append(flav)
        n_tracks.append(valid.sum(1))
        for name in values:
            x = trk[name] if name in fields else np.full(valid.shape, np.nan)
            values[name].append([x[valid & (flav[:, None] == k)] for k in range(4)])
    flav = np.concatenate(flavours)
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    colours = ("tab:red", "tab:orange", "tab:blue", "tab:green")
    panels = [*PLOT_VARS, ("tracks per jet", "tracks per jet", 1.0, (0, 40), "int")]
    for ax, (name, xlabel, factor, (lo, hi), axis) in zip(axes.flat, panels, strict=False):
        if axis == "int":
            bins = np.arange(lo, hi + 2) - 0.5
        else:
            bins = np.geomspace(lo, hi, 41) if axis == "log" else np.linspace(lo, hi, 41)
        for k, label in enumerate(FLAVOURS):
            if name == "tracks per jet":
                x = np.concatenate(n_tracks)[flav == k]
            else:
                x = np.concatenate([per_file[k] for per_file in values[name]]) * factor
            x = x[np.isfinite(x)]
            if x.size:
                ax.hist(
                    np.clip(x, lo, hi), bins, histtype="step", density=True, color=colours[k], label=label
                )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"Normalised number of {'jets' if name == 'tracks per jet' else 'tracks'}")
        ax.set_title(name, fontsize="small")  # the file's field
        ax.set_yscale("log")
        if axis == "log":
            ax.set_xscale("log")
    counts = np.bincount(flav, minlength=4)
    axes.flat[-1].bar(FLAVOURS, counts, color=colours)
    axes.flat[-1].set_xlabel("flavour")
    axes.flat[-1].set_ylabel("jets")
    axes.flat[0].legend()
    fig.suptitle(f"{len(paths)} file(s), {flav.size} jets (first {max_jets} per file); unit-area histograms")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return fig
