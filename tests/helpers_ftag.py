"""ATLAS ftag HDF5 inputs that several test modules read: configs of a file, its arrays, and the bucketing
tests' synthetic file, stream and tiny training run (test_ftag_h5*.py, test_bucketing.py,
test_packed_batches.py)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from smilejax.inputs import ftag_h5 as fh

from tests.conftest import run_cli, synthetic_ftag


def ftag_cfg(path, **kw) -> fh.FtagConfig:
    return fh.FtagConfig(path=str(path), **kw)


def jets_and_tracks(path):
    """The ``jets`` and ``tracks`` arrays of the file at ``path``, as stored."""
    with fh.open_h5(str(path)) as f:
        return f["jets"][:], f["tracks"][:]


# ---------------------------------------------------------------- track-multiplicity bucketing

N_JETS, BATCH = 3000, 100
WIDTHS = [8, 12, 16]


def make_data(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic ftag file of N_JETS jets and its norm dict (shared with test_packed_batches)."""
    return synthetic_ftag(tmp_path_factory.mktemp("bucket"), N_JETS, seed=1)


def bucket_cfg(data, **kw) -> fh.FtagConfig:
    path, norm = data
    base = dict(path=str(path), norm_dict=str(norm), batch_size=BATCH, bucket_tracks=WIDTHS, read_threads=2)
    return fh.FtagConfig(**{**base, **kw})


def bucket_stream(src, cfg, process_index=0, process_count=1, seed=5):
    build = fh.SPEC.pipeline
    return iter(build(src, cfg, seed=seed, process_index=process_index, process_count=process_count))


def train_tiny_gn2(data, tmp_path, name: str, run: dict, data_options: dict) -> tuple[list[dict], Path]:
    """``smilejax train`` of a tiny GN2 on ``data`` (2 devices): its metrics records and its config file."""
    path, norm = data
    run_dir = tmp_path / "run"
    cfg = {
        "run": {"checkpoint_every": 0, "dir": str(run_dir), **run},
        "data": {"format": "ftag_h5", "path": str(path), "norm_dict": str(norm), "read_threads": 1}
        | data_options,
        "model": {
            "name": "gn2",
            **dict(embed=16, init_hidden=[16], layers=1, heads=2, ff=32, out=8, head_hidden=[8]),
        },
        "optimizer": {"lr": 1e-3},
        "logging": {"wandb": "off", "tensorboard": False, "progress": False},
    }
    cfg_path = tmp_path / f"gn2-{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    done = run_cli("train", str(cfg_path), devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, cfg_path
