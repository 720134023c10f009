"""``smilejax data make|norm|check``: make datasets, compute normalisation dicts, check files up front."""

from __future__ import annotations

import argparse
import os
import sys

from smilejax import host

MAKERS = {
    "ftag-synthetic": "synthetic ATLAS flavour-tagging jets (numpy only, ~5e4 jets/s)",
    "ftag-pythia": "ATLAS flavour-tagging jets from Pythia 8 tt̄ events at 13 TeV (~400 jets/s per core)",
}
MLPF_MAKERS = {
    "mlpf-synthetic": "synthetic MLPF events in particleflow's CLIC TFDS format (numpy only, ~1e3 events/s)",
    "mlpf-pythia": "MLPF events in particleflow's CLIC TFDS format from Pythia 8 e+e- -> qq̄ at 380 GeV "
    "and a parametrised CLIC-like detector (~1000 events/s per core)",
}
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


def _add_generator_options(parser: argparse.ArgumentParser) -> None:
    """--workers and --no-progress of the Pythia makers."""
    parser.add_argument(
        "--workers",
        type=int,
        default=host.usable_cpus(),
        metavar="K",
        help="generator processes (default: the CPUs this process may use, %(default)s here)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def register(sub) -> None:
    parser = sub.add_parser(
        "data",
        help="make datasets (synthetic, Pythia), compute normalisation dicts, check files",
        description="Datasets in the ATLAS flavour-tagging HDF5 format (what data.format=ftag_h5 reads, "
        "as salt and atlas-ftag-tools do): make them, compute their normalisation dict, check them; and "
        "MLPF events in particleflow's TFDS ArrayRecord format (data.format=mlpf_tfds): make them.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    make = actions.add_parser(
        "make",
        help="generate a dataset file",
        description="Generate a dataset: ftag-* into one HDF5 file, mlpf-* into a TFDS data directory "
        "(both written under a temporary name, then renamed).",
    )
    makers = make.add_subparsers(dest="maker", metavar="MAKER", required=True)
    for name, about in MAKERS.items():
        m = makers.add_parser(name, help=about, description=about + ".")
        m.add_argument("--out", required=True, metavar="PATH", help="output file (.h5)")
        m.add_argument("--jets", required=True, type=int, metavar="N", help="number of jets")
        m.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        if name == "ftag-pythia":
            m.description += (
                " Worker k generates its share of the jets from seeds (seed, k) and the parts are merged in "
                "order, so the file is reproducible for the same --seed and --workers (not across worker "
                "counts). Needs: " + host.pip_install(".[pythia]")
            )
            _add_generator_options(m)
        m.set_defaults(run=run_make)
    for name, about in MLPF_MAKERS.items():
        m = makers.add_parser(
            name,
            help=about,
            description=about + ". Writes DATA_DIR/NAME/CONFIG/3.1.0/ with train and test splits, as "
            "particleflow's builders do (read it with data.format=mlpf_tfds data.path=DATA_DIR).",
        )
        m.add_argument("--out", required=True, metavar="DATA_DIR", help="TFDS data directory")
        m.add_argument("--events", required=True, type=int, metavar="N", help="events (train + test)")
        m.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        m.add_argument("--name", default="clic_edm_qq_pf", help="dataset name (default clic_edm_qq_pf)")
        m.add_argument("--config", type=int, default=1, help="builder config 1..10 (default 1)")
        m.add_argument(
            "--test-fraction", type=float, default=0.1, help="share of events in the test split (default 0.1)"
        )
        m.add_argument("--overwrite", action="store_true", help="replace an existing NAME/CONFIG/3.1.0")
        if name == "mlpf-pythia":
            m.description += (
                " Worker k generates its share from seeds (seed, k), so the dataset is reproducible for the "
                "same --seed and --workers. Needs: " + host.pip_install(".[pythia]")
            )
            _add_generator_options(m)
        m.set_defaults(run=run_make_mlpf)

    norm = actions.add_parser(
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

    check = actions.add_parser(
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


def _config(args: argparse.Namespace):
    from smilejax.inputs.ftag_h5 import FtagConfig

    cfg = FtagConfig()
    if args.jet_vars:
        cfg.jet_vars = [v.strip() for v in args.jet_vars.split(",") if v.strip()]
    if args.track_vars:
        cfg.track_vars = [v.strip() for v in args.track_vars.split(",") if v.strip()]
    return cfg


def run_make(args: argparse.Namespace) -> int:
    import h5py
    import numpy as np

    if args.jets < 1:
        raise ValueError(f"--jets must be at least 1, not {args.jets}")
    if args.maker == "ftag-synthetic":
        from smilejax.inputs import ftag_synthetic

        path = ftag_synthetic.make(args.out, args.jets, args.seed)
    else:
        from smilejax.inputs import ftag_pythia

        try:
            ftag_pythia.require_generators()
        except ImportError as err:
            print(f"smilejax: {err}", file=sys.stderr)
            return 2
        path = ftag_pythia.make(
            args.out, args.jets, args.seed, workers=args.workers, progress=not args.no_progress
        )
    with h5py.File(path, "r", locking=False) as f:
        flav = np.bincount(f["jets"].fields("flavour_label")[:], minlength=4)
        extra = ""
        if "n_events" in f.attrs:
            secs = float(f.attrs["seconds"])
            cpu = float(f.attrs["cpu_seconds"])
            extra = (
                f" from {int(f.attrs['n_events'])} events in {secs:.1f} s ({args.jets / secs:.0f} jets/s "
                f"with {int(f.attrs['workers'])} workers, {args.jets / cpu:.0f} jets per CPU-second)"
            )
    print(f"wrote {args.jets} jets (b {flav[0]}, c {flav[1]}, light {flav[2]}, tau {flav[3]}){extra}: {path}")
    return 0


def run_make_mlpf(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from smilejax.inputs import mlpf_tfds

    if args.events < 2:
        raise ValueError(f"--events must be at least 2 (a train and a test event), not {args.events}")
    t0 = time.perf_counter()
    common = dict(
        seed=args.seed,
        test_fraction=args.test_fraction,
        name=args.name,
        config=args.config,
        overwrite=args.overwrite,
    )
    try:
        if args.maker == "mlpf-synthetic":
            from smilejax.inputs import mlpf_synthetic

            folder = mlpf_synthetic.make(args.out, args.events, **common)
        else:
            from smilejax.inputs import mlpf_pythia

            mlpf_pythia.require_generators()
            folder = mlpf_pythia.make(
                args.out, args.events, workers=args.workers, progress=not args.no_progress, **common
            )
    except (ImportError, FileExistsError) as err:
        print(f"smilejax: {err}", file=sys.stderr)
        return 2
    secs = time.perf_counter() - t0
    cfg = mlpf_tfds.MlpfConfig(path=args.out, datasets=[args.name], configs=[args.config])
    sizes = {split: mlpf_tfds.source(cfg, split).lengths for split in ("train", "eval")}
    n = sum(len(v) for v in sizes.values())
    elements = np.concatenate(list(sizes.values())) if n else np.zeros(1)
    print(
        f"wrote {n} events (train {len(sizes['train'])}, test {len(sizes['eval'])}; elements per event "
        f"mean {elements.mean():.0f}, max {elements.max()}) in {secs:.1f} s ({n / secs:.0f} events/s): "
        f"{folder}"
    )
    return 0


def run_norm(args: argparse.Namespace) -> int:
    from smilejax.inputs import ftag_h5

    if args.jets < 1:
        raise ValueError(f"--jets must be at least 1, not {args.jets}")
    cfg = _config(args)
    norm = ftag_h5.compute_norm_dict(args.files, cfg, args.jets)
    path = ftag_h5.write_norm_dict(norm, args.out)
    n_jet, n_track = len(norm["jets"]), len(norm["tracks"])
    print(f"wrote the normalisation of {n_jet} jet and {n_track} track variables: {path}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    import yaml

    from smilejax.inputs import ftag_h5

    cfg = _config(args)
    report: dict[str, dict] = {}
    good: list[str] = []
    for arg in args.files:
        try:
            files = ftag_h5.expand_paths(arg)
        except (FileNotFoundError, ValueError) as err:
            report[arg] = {"error": str(err)}
            continue
        for path in files:
            try:
                report.update(ftag_h5.check(path, cfg))
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


def _plot(paths: list[str], cfg, out: str, max_jets: int = 20_000):
    """Per-flavour, unit-area histograms of the main track variables and of the tracks per jet, in
    physical units, saved to ``out``; returns the (closed) figure."""
    import numpy as np

    from smilejax import plotting

    plt = plotting.pyplot(out)
    if plt is None:
        raise SystemExit(
            f"data check --plot {out}: matplotlib is not installed ({host.pip_install('matplotlib')})"
        )

    from smilejax.inputs import ftag_h5

    values: dict[str, list] = {name: [] for name, *_ in PLOT_VARS}
    n_tracks, flavours = [], []
    for path in paths:
        info = ftag_h5.inspect_file(path, cfg)
        n = min(info.n_jets, max_jets)
        with ftag_h5.open_h5(path) as f:
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
        for k, label in enumerate(ftag_h5.FLAVOURS):
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
    axes.flat[-1].bar(ftag_h5.FLAVOURS, counts, color=colours)
    axes.flat[-1].set_xlabel("flavour")
    axes.flat[-1].set_ylabel("jets")
    axes.flat[0].legend()
    fig.suptitle(f"{len(paths)} file(s), {flav.size} jets (first {max_jets} per file); unit-area histograms")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return fig
