"""What the salt import test gives salt (tests/test_import_salt.py): a small salt GN2 config, as salt writes
it next to its checkpoints, and an ATLAS-format HDF5 file of jets (with holes, without tracks, with every
slot filled) and its normalisation dict."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import yaml

JET_VARS = ["pt_btagJes", "eta_btagJes"]
TRACK_VARS = ["d0", "z0SinTheta", "dphi", "deta", "qOverP", "numberOfPixelHits"]
SALT_CLASSES = ["ujets", "cjets", "bjets", "taujets"]  # salt's output order; smilejax's is b, c, light, tau
UMAMI_CLASSES = ["bjets", "cjets", "ujets", "taujets"]  # the file's flavour_label classes
N_JETS, SLOTS = 24, 10


def salt_config(norm_dict: Path, jets_file: Path) -> dict:
    """A small salt GN2 config as salt writes it next to its checkpoints (class names and weights filled)."""
    head = {"hidden_layers": [16, 8], "activation": "ReLU"}

    def task(kind: str, **args) -> dict:
        return {"class_path": f"salt.models.{kind}", "init_args": args}

    def loss(kind: str, **args) -> dict:
        return {"class_path": f"torch.nn.{kind}", "init_args": args}

    tasks = [
        task(
            "ClassificationTask",
            name="jets_classification",
            input_name="jets",
            label="flavour_label",
            class_names=SALT_CLASSES,
            loss=loss("CrossEntropyLoss", weight=[1.0, 2.0, 3.0, 4.0]),
            dense_config={**head, "input_size": 16, "output_size": 4},
        ),
        task(
            "ClassificationTask",
            name="track_origin",
            input_name="tracks",
            label="ftagTruthOriginLabel",
            weight=0.5,
            loss=loss("CrossEntropyLoss", weight=[4.0, 100.0, 1.0, 8.0, 6.0, 10.0, 1.5, 20.0]),
            dense_config={**head, "input_size": 16, "output_size": 8, "context_size": 16},
        ),
        task(
            "VertexingTask",
            name="track_vertexing",
            input_name="tracks",
            label="ftagTruthVertexIndex",
            weight=1.5,
            loss=loss("BCEWithLogitsLoss", reduction="none"),
            dense_config={**head, "input_size": 32, "output_size": 1, "context_size": 16},
        ),
    ]
    encoder = {
        "embed_dim": 32,
        "num_layers": 2,
        "out_dim": 16,
        "attn_type": "torch-math",
        "num_registers": 1,
        "attn_kwargs": {"num_heads": 4},
        "dense_kwargs": {"activation": "ReLU", "hidden_dim": 48},
    }
    model = {
        "init_nets": [
            {
                "input_name": "tracks",
                "dense_config": {"output_size": 32, "hidden_layers": [24], "activation": "ReLU"},
            }
        ],
        "encoder": {"class_path": "salt.models.TransformerV2", "init_args": encoder},
        "pool_net": {"class_path": "salt.models.GlobalAttentionPooling", "init_args": {"input_size": 16}},
        "tasks": {"class_path": "torch.nn.ModuleList", "init_args": {"modules": tasks}},
    }
    return {
        "name": "GN2_tiny",
        "model": {
            "lrs_config": {
                "initial": 1e-7,
                "max": 5e-4,
                "end": 1e-5,
                "pct_start": 0.01,
                "weight_decay": 1e-5,
            },
            "model": {"class_path": "salt.models.SaltModel", "init_args": model},
        },
        "data": {
            "global_object": "jets",
            "input_map": {"jets": "jets", "tracks": "tracks"},
            "variables": {"jets": JET_VARS, "tracks": TRACK_VARS},
            "norm_dict": str(norm_dict),
            "train_file": str(jets_file),
            "val_file": str(jets_file),
            "batch_size": 8,
        },
        "trainer": {"devices": 1},
    }


def write_jets(path: Path, seed: int = 0) -> np.ndarray:
    """ATLAS-format jets: holes, empty jets, full jets; padded slots hold finite garbage. -> valid [N, T]."""
    rng = np.random.default_rng(seed)
    valid = rng.random((N_JETS, SLOTS)) < 0.6  # holes everywhere
    valid[0] = valid[5] = False  # jets without tracks
    valid[1] = True  # every slot filled
    valid[2] = [True, False, False, True, False, True, True, False, False, True]
    jet_dtype = [(v, "f4") for v in JET_VARS] + [("flavour_label", "i4")]
    jets = np.zeros(N_JETS, jet_dtype)
    jets["pt_btagJes"] = rng.uniform(20e3, 250e3, N_JETS)
    jets["eta_btagJes"] = rng.uniform(-2.5, 2.5, N_JETS)
    jets["flavour_label"] = rng.integers(0, 4, N_JETS)
    track_dtype = [("valid", "?")] + [(v, "f4") for v in TRACK_VARS]
    track_dtype += [("ftagTruthOriginLabel", "i4"), ("ftagTruthVertexIndex", "i4")]
    tracks = np.zeros((N_JETS, SLOTS), track_dtype)
    tracks["valid"] = valid
    for k, v in enumerate(TRACK_VARS):
        tracks[v] = rng.normal(0.3 * k, 1.0 + k, (N_JETS, SLOTS))
    tracks["numberOfPixelHits"] = rng.integers(0, 6, (N_JETS, SLOTS))
    tracks["ftagTruthOriginLabel"] = np.where(valid, rng.integers(0, 8, (N_JETS, SLOTS)), -1)
    tracks["ftagTruthVertexIndex"] = np.where(valid, rng.integers(0, 3, (N_JETS, SLOTS)), -1)
    with h5py.File(path, "w") as f:
        f.create_dataset("jets", data=jets)
        f.create_dataset("tracks", data=tracks)
        f["jets"].attrs["flavour_label"] = UMAMI_CLASSES
    return valid


def write_norm_dict(path: Path, jets_file: Path) -> None:
    with h5py.File(jets_file, "r") as f:
        jets, tracks = f["jets"][:], f["tracks"][:]
    valid = tracks["valid"]
    norm = {
        "jets": {v: {"mean": float(jets[v].mean()), "std": float(jets[v].std())} for v in JET_VARS},
        "tracks": {
            v: {"mean": float(tracks[v][valid].mean()), "std": float(tracks[v][valid].std())}
            for v in TRACK_VARS
        },
    }
    path.write_text(yaml.safe_dump(norm))
