"""``smilejax data make mlpf-synthetic|mlpf-pythia``: MLPF events in particleflow's CLIC TFDS ArrayRecord
format (what ``data.format=mlpf_tfds`` reads). Light: the generators are imported when a maker runs."""

from __future__ import annotations

import argparse
import sys

from smilejax import host

from ..spec import Maker

SYNTHETIC_ABOUT = "synthetic MLPF events in particleflow's CLIC TFDS format (numpy only, ~1e3 events/s)"
PYTHIA_ABOUT = (
    "MLPF events in particleflow's CLIC TFDS format from Pythia 8 e+e- -> qq̄ at 380 GeV and a parametrised "
    "CLIC-like detector (~1000 events/s per core)"
)
LAYOUT = (
    ". Writes DATA_DIR/NAME/CONFIG/3.1.0/ with train and test splits, as particleflow's builders do (read it "
    "with data.format=mlpf_tfds data.path=DATA_DIR)."
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DATA_DIR", help="TFDS data directory")
    parser.add_argument("--events", required=True, type=int, metavar="N", help="events (train + test)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--name", default="clic_edm_qq_pf", help="dataset name (default clic_edm_qq_pf)")
    parser.add_argument("--config", type=int, default=1, help="builder config 1..10 (default 1)")
    parser.add_argument(
        "--test-fraction", type=float, default=0.1, help="share of events in the test split (default 0.1)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing NAME/CONFIG/3.1.0")


def _add_pythia(parser: argparse.ArgumentParser) -> None:
    from smilejax.generators.workers import add_arguments

    _add_common(parser)
    add_arguments(parser)


def _make(args: argparse.Namespace, pythia: bool) -> int:
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
        if pythia:
            from smilejax.generators.pythia import require_generators

            require_generators()
            from . import make_pythia

            folder = make_pythia.make(
                args.out, args.events, workers=args.workers, progress=not args.no_progress, **common
            )
        else:
            from . import make_synthetic

            folder = make_synthetic.make(args.out, args.events, **common)
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


def _run_synthetic(args: argparse.Namespace) -> int:
    return _make(args, pythia=False)


def _run_pythia(args: argparse.Namespace) -> int:
    return _make(args, pythia=True)


SYNTHETIC = Maker(
    about=SYNTHETIC_ABOUT,
    add_arguments=_add_common,
    run=_run_synthetic,
    description=SYNTHETIC_ABOUT + LAYOUT,
)
PYTHIA = Maker(
    about=PYTHIA_ABOUT,
    add_arguments=_add_pythia,
    run=_run_pythia,
    description=(
        f"{PYTHIA_ABOUT}{LAYOUT} Worker k generates its share from seeds (seed, k), so the dataset is "
        f"reproducible for the same --seed and --workers. Needs: {host.pip_install('.[pythia]')}"
    ),
)
