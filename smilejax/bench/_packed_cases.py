"""``bench roofline``'s packed rows, and rows whose shapes come from a real sample's track counts.

``--lengths-from FILE`` (an ``ftag_h5`` file): every jet's valid-track count is read from the file's
``tracks/valid`` field, and ``--batch`` jets are drawn uniformly at random without replacement (seed
``SEED``): the jets of one training batch, unsorted. Every row of the table then holds these jets,
as synthetic inputs and labels (``_synthetic``) whose ``valid`` masks have exactly their track
counts, leading slots first, as the bucketed and packed reads lay them out:

- padded: the batch at the padded length (``--tracks`` or the model's, 40 for GN2: salt's layout);
- bucket: the batch at the smallest ``--bucket`` length that holds its longest jet (what the bucketed
  loop without a window pads it to); none when that is the padded length;
- packed (``--pack SLOTS:JETS``): the batch packed by ``inputs.packing`` (first-fit decreasing, rows
  rounded up to a multiple of ``data.pack_row_multiple``, as in training).

The step is built with a synthetic data section (``_target.load_config``), which has no packing fields:
``data.pack_row_multiple`` is read from the config's own data section (its format's default, or a
``data.pack_row_multiple=N`` override), loaded apart (``data_config``).

Without ``--lengths-from`` the packed rows pack the synthetic padded batch (random track counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module to list the options: numpy and JAX load on use
    import numpy as np

SEED = 0  # the draw of the batch's jets: fixed, so every run of a file bounds the same jets
PAD_COLUMNS = ["tracks", "padding", "jets_per_row", "rows", "pad_fraction"]


def pack_sizes(text: str) -> list[tuple[int, int]]:
    """argparse type of ``--pack``: ``SLOTS:JETS[,SLOTS:JETS...]`` -> ``[(slots, jets), ...]``."""
    sizes = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        slots, sep, jets = item.partition(":")
        try:
            size = (int(slots), int(jets))
        except ValueError:
            size = None
        if not sep or size is None or min(size) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: expected SLOTS:JETS, positive integers (e.g. 64:16)")
        sizes.append(size)
    if not sizes:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SLOTS:JETS (e.g. 64:16)")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pack",
        type=pack_sizes,
        action="extend",
        default=[],
        metavar="SLOTS:JETS",
        help="packed rows too: SLOTS track slots holding at most JETS jets each (repeatable or "
        "comma-separated: 48:12,64:16), the rows rounded up to a multiple of the config's "
        "data.pack_row_multiple (an override sets it); the jets/s count jets, not rows",
    )
    parser.add_argument(
        "--lengths-from",
        metavar="FILE",
        help="an ftag_h5 file: every row holds --batch of its jets (drawn at random), with their track "
        "counts; a bucket row pads them to the smallest --bucket that holds the longest",
    )


def own_data_overrides(overrides: list[str]) -> list[str]:
    """The overrides of data fields that only the config's own data format has (such as
    ``data.pack_row_multiple``): the synthetic data section the step is built with lacks them."""
    from smilejax.inputs.spec import DataConfig

    generic = {f.name for f in dataclasses.fields(DataConfig)}

    def own(item: str) -> bool:
        section, _, key = item.partition("=")[0].partition(".")
        return section == "data" and bool(key) and key.split(".")[0] not in generic

    return [o for o in overrides if own(o)]


def data_config(model: str, overrides: list[str]) -> Any:
    """MODEL's data section in its own format, the overrides applied (validated as training would)."""
    from smilejax import config
    from smilejax.bench import _target

    return config.load(_target._tree(model), overrides).data


def row_multiple(args: argparse.Namespace) -> int:
    """``data.pack_row_multiple`` of the config ``args.model`` with ``args.overrides``."""
    data = data_config(args.model, args.overrides)
    multiple = getattr(data, "pack_row_multiple", None)
    if multiple is None:
        raise SystemExit(f"--pack: data format {data.format!r} does not pack (no data.pack_row_multiple)")
    return multiple


@functools.cache
def file_lengths(path: str) -> np.ndarray:
    """Valid tracks of every jet of an ``ftag_h5`` file (its ``tracks`` dataset's ``valid`` field)."""
    import numpy as np

    from smilejax.inputs.ftag_h5 import hdf5

    if not Path(path).is_file():
        raise SystemExit(f"--lengths-from {path}: no such file")
    try:
        f = hdf5.open_h5(path)
    except ValueError as err:
        raise SystemExit(f"--lengths-from {err}") from None
    with f:
        ds = f.get("tracks")
        fields = getattr(getattr(ds, "dtype", None), "names", None) or ()
        if "valid" not in fields or ds.ndim != 2:
            raise SystemExit(
                f"--lengths-from {path}: not an ftag_h5 file (no 2-D structured dataset 'tracks' with a "
                f"'valid' field; datasets: {sorted(f.keys())})"
            )
        counts = np.asarray(ds.fields("valid")[:], bool).sum(1)
    if counts.size == 0:
        raise SystemExit(f"--lengths-from {path}: the file holds no jets")
    return counts


def draw(lengths: np.ndarray, batch: int, path: str) -> np.ndarray:
    """The track counts of ``batch`` jets drawn uniformly at random, without replacement (``SEED``)."""
    import numpy as np

    if batch > lengths.size:
        raise SystemExit(f"--batch {batch}: more jets than --lengths-from {path} holds ({lengths.size})")
    rows = np.random.default_rng(SEED).choice(lengths.size, size=batch, replace=False)
    return lengths[rows].astype(np.int64)


def batch_with_lengths(spec, model_cfg: Any, lengths: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic batch (``_synthetic.batch``) whose boolean masks hold ``lengths`` leading valid
    slots; the labels are made after the masks, so padded slots carry the padding labels."""
    import numpy as np

    from smilejax.bench import _synthetic

    rng = np.random.default_rng(seed)
    made = _synthetic.inputs(spec, model_cfg, len(lengths), rng)
    for name, value in made.items():
        if value.dtype == np.bool_:
            made[name] = np.arange(value.shape[-1]) < lengths[:, None]
    return {**made, **spec.synthetic_labels(model_cfg, made, rng)}


def padding_columns(host: dict[str, np.ndarray]) -> dict[str, Any]:
    """``pad_fraction`` (track slots without a track) of a batch, and a packed batch's ``rows``."""
    from smilejax.inputs import packing

    out: dict[str, Any] = {"rows": len(host["valid"])} if packing.is_packed(host) else {}
    valid = host.get("valid")
    if valid is not None and valid.dtype == bool and valid.ndim == 2:
        out["pad_fraction"] = 1.0 - float(valid.sum()) / valid.size
    return out


def packed_case(padded: dict[str, np.ndarray], slots: int, jets: int, multiple: int) -> tuple[dict, dict]:
    """(row columns, packed host batch) of the padded batch ``padded`` in rows of ``slots`` slots, the
    row count rounded up to a multiple of ``multiple``."""
    from smilejax.inputs import packing

    lengths = padded["valid"].sum(1)
    if lengths.max() > slots:
        raise SystemExit(
            f"--pack {slots}:{jets}: the batch's longest jet has {int(lengths.max())} tracks, more than "
            f"{slots} slots (use at least {int(lengths.max())} slots)"
        )
    try:
        plan = packing.plan_rows(lengths, slots, jets, multiple)
    except ValueError as err:
        raise SystemExit(f"--pack {slots}:{jets} data.pack_row_multiple={multiple}: {err}") from None
    return {"tracks": slots, "padding": "packed", "jets_per_row": jets}, packing.pack(padded, plan)


def cases(cfg, spec, args: argparse.Namespace, batch: int) -> tuple[Any, list[tuple[dict, dict]]]:
    """``cfg`` at the padded length and (row columns, host batch) of the padded row, the bucket rows
    and the packed rows (module doc), the same jets in every row. ``args``: the command's (``model``
    and ``overrides`` give ``data.pack_row_multiple``)."""
    from smilejax.bench import _synthetic, _train_jax

    field, padded, widths = _train_jax.lengths(cfg, args)
    if field is None:
        raise SystemExit(f"--pack/--lengths-from: model {cfg.model.name!r} has no set length to pack")

    def at(width: int):
        return dataclasses.replace(cfg.model, **{field: width})

    if args.lengths_from:
        lengths = draw(file_lengths(args.lengths_from), batch, args.lengths_from)
        if lengths.max() > padded:
            raise SystemExit(
                f"--lengths-from {args.lengths_from}: a drawn jet has {int(lengths.max())} tracks, more "
                f"than the padded length {padded} (--tracks)"
            )
        longest = int(lengths.max())
        bucket = min(w for w in widths if w >= longest)
        rows = [(w, batch_with_lengths(spec, at(w), lengths)) for w in sorted({bucket, padded})]
        note = f"{batch} jets of {Path(args.lengths_from).name}, the longest {longest} tracks"
        if args.bucket and bucket == padded:
            note += f": no --bucket below {padded} holds it"
    else:
        rows = [(w, _synthetic.batch(spec, at(w), batch, seed=0)) for w in widths]
        note = None
    out = [({"tracks": w, "padding": "padded" if w == padded else "bucket"}, h) for w, h in rows]
    if note:
        out[-1][0]["note"] = note
    full = rows[-1][1]  # the padded batch: the one packed
    if args.pack and "valid" not in full:
        raise SystemExit(f"--pack: model {cfg.model.name!r}'s batches have no 'valid' mask to pack by")
    multiple = row_multiple(args) if args.pack else 1
    for slots, jets in args.pack:
        out.append(packed_case(full, slots, jets, multiple))
    return dataclasses.replace(cfg, model=at(padded)), out
