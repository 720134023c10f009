"""particleflow's own dataset reader on a TFDS data directory: the reference side of tests/test_mlpf_tfds.py.

Runs in the Python 3.11 reference environment::

    .mlpf-ref/bin/python tests/mlpf_reference/read_dataset.py DATA_DIR NAME SPLIT N OUT.npz

Writes, for the first N events of ``NAME`` (e.g. ``clic_edm_qq_pf/1:3.1.0``) and SPLIT, what
particleflow's ``PFDataset`` (``TFDSDataSource.__getitem__``, no sorting or padding) returns:
``<key>_<i>`` for ``X``, ``ytarget`` (log-ratio targets), ``ycand``, ``ytarget_pt_orig``,
``ytarget_e_orig``, ``genmet``, ``genjets``, ``targetjets``, and ``len``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))  # comet_ml, pandas: imported, never called

import numpy as np
from mlpf.model.PFDataset import PFDataset

KEYS = ("X", "ytarget", "ycand", "ytarget_pt_orig", "ytarget_e_orig", "genmet", "genjets", "targetjets")


def main(data_dir: str, name: str, split: str, n: str, out: str) -> None:
    ds = PFDataset(data_dir, name, split, sort=False, pad_to_multiple=None).ds
    arrays = {"len": np.array(len(ds))}
    for i in range(min(int(n), len(ds))):
        event = ds[i]
        arrays |= {f"{k}_{i}": np.asarray(event[k]) for k in KEYS}
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:])
