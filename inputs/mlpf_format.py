"""MLPF's published dataset format: TensorFlow Datasets in ArrayRecord files, written and checked without TF.

particleflow 3.1.0 (``mlpf/heptfds/clic_pf_edm4hep/*.py``) builds each sample (``clic_edm_qq_pf``,
``clic_edm_ttbar_pf``, ...) as a TFDS ``GeneratorBasedBuilder`` with ``NUM_SPLITS = 10`` numbered builder
configs ``"1"`` .. ``"10"`` (parts of the sample, built in parallel) and splits ``train`` / ``test``.
On disk::

    DATA_DIR/<name>/<config>/<version>/<name>-<split>.array_record-00000-of-0000K
                                       dataset_info.json, features.json, metadata.json

Each record is one event, a ``FeaturesDict`` of

* ``X`` float32 [N, 17]: tracks then clusters, columns ``X_FEATURES`` (column 0 the element type,
  1 track, 2 cluster; track rows use the first 16 columns, the 17th is 0);
* ``ytarget``, ``ycand`` float32 [N, 13]: per element the target particle (and the rule-based PF
  candidate), columns ``Y_FEATURES``; column 0 is already the class index into ``CLASSES``
  (none, 211, 130, 22, 11, 13), pT / eta / sin phi / cos phi / energy are the particle's own
  (particleflow's loader turns pT and energy into log ratios to the element's, see ``mlpf_tfds``);
* ``genmet`` float32 scalar; ``genjets``, ``targetjets`` float32 [J, 4] as (pT, eta, phi, energy).

``write(data_dir, name, splits)`` writes that layout with TFDS itself (a builder declared like
particleflow's, same name, version, configs and features), so particleflow's ``PFDataset`` and
``tfds.builder(...).as_data_source`` read what smilejax makers write.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

VERSION = "3.1.0"  # particleflow 3.1.0's CLIC dataset version
NUM_CONFIGS = 10  # particleflow's NUM_SPLITS: builder configs "1" .. "10"
TRACK_FEATURES = (
    "elemtype", "pt", "eta", "sin_phi", "cos_phi", "p", "chi2", "ndf", "dEdx", "dEdxError",
    "radiusOfInnermostHit", "tanLambda", "D0", "omega", "Z0", "time",
)  # fmt: skip
CLUSTER_FEATURES = (
    "elemtype", "et", "eta", "sin_phi", "cos_phi", "energy", "position.x", "position.y", "position.z",
    "iTheta", "energy_ecal", "energy_hcal", "energy_other", "num_hits", "sigma_x", "sigma_y", "sigma_z",
)  # fmt: skip
N_X = max(len(TRACK_FEATURES), len(CLUSTER_FEATURES))  # 17
Y_FEATURES = (
    "PDG", "charge", "pt", "eta", "sin_phi", "cos_phi", "energy", "ispu", "generatorStatus",
    "simulatorStatus", "gp_to_track", "gp_to_cluster", "jet_idx",
)  # fmt: skip
N_Y = len(Y_FEATURES)  # 13
CLASSES = (0, 211, 130, 22, 11, 13)  # ytarget[:, 0] indexes this: none, ch. hadron, n. hadron, γ, e, μ
CLASS_NAMES = ("none", "charged hadron", "neutral hadron", "photon", "electron", "muon")
ELEMENT_TYPES = (1, 2)  # X[:, 0]: 1 track, 2 cluster (0 only in padding)
EVENT_KEYS = ("X", "ytarget", "ycand", "genmet", "genjets", "targetjets")
SAMPLES = {  # particleflow's CLIC samples (their builder class names follow from the dataset names)
    "clic_edm_qq_pf": "CLIC EDM4HEP ee -> gamma/Z* -> quarks at 380 GeV",
    "clic_edm_ttbar_pf": "CLIC EDM4HEP ee -> ttbar at 380 GeV",
    "clic_edm_ww_fullhad_pf": "CLIC EDM4HEP ee -> WW, fully hadronic, at 380 GeV",
    "clic_edm_zh_tautau_pf": "CLIC EDM4HEP ee -> ZH, H -> tautau, at 380 GeV",
}


def features_dict():
    """particleflow's ``FeaturesDict`` for the CLIC PF samples."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "X": tfds.features.Tensor(shape=(None, N_X), dtype=np.float32),
            "ytarget": tfds.features.Tensor(shape=(None, N_Y), dtype=np.float32),
            "ycand": tfds.features.Tensor(shape=(None, N_Y), dtype=np.float32),
            "genmet": tfds.features.Scalar(dtype=np.float32),
            "genjets": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "targetjets": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        }
    )


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))  # clic_edm_qq_pf -> ClicEdmQqPf


@functools.cache
def builder_class(name: str, version: str = VERSION, description: str = "") -> type:
    """A TFDS builder registered as ``name`` whose examples come from ``write``'s iterables."""
    import tensorflow_datasets as tfds

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=description or SAMPLES.get(name, name) + " (written by smilejax)",
            features=features_dict(),
            homepage="https://github.com/jpata/particleflow",
            metadata=tfds.core.MetadataDict(
                x_features_track=list(TRACK_FEATURES),
                x_features_cluster=list(CLUSTER_FEATURES),
                y_features=list(Y_FEATURES),
            ),
        )

    def __init__(self, *args, splits=None, **kwargs):
        kwargs["file_format"] = tfds.core.FileFormat.ARRAY_RECORD
        self._smilejax_splits = splits or {}
        tfds.core.GeneratorBasedBuilder.__init__(self, *args, **kwargs)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(events) for split, events in self._smilejax_splits.items()}

    def _generate_examples(self, events):
        for i, event in enumerate(events):
            yield f"{i:09d}", check_event(event, f"event {i}")

    attrs = {
        "VERSION": tfds.core.Version(version),
        "BUILDER_CONFIGS": [tfds.core.BuilderConfig(name=str(c)) for c in range(1, NUM_CONFIGS + 1)],
        "__init__": __init__,
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
        "__module__": __name__,
    }
    # TFDS registers builders by class name; skip_registration keeps repeated writes in one process quiet
    return type(_class_name(name), (tfds.core.GeneratorBasedBuilder,), attrs, skip_registration=True)


def claim(
    data_dir: str | Path, name: str, config: str | int, version: str = VERSION, overwrite: bool = False
) -> Path:
    """The version folder a write goes to: FileExistsError if it exists (TFDS would silently keep the old
    data), unless ``overwrite``, which removes it."""
    target = Path(data_dir) / name / str(config) / version
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} exists (remove it, or overwrite)")
        shutil.rmtree(target)
    return target


def check_event(event: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """One event as float32 arrays of the format's shapes; ValueError naming ``where`` and the feature."""
    missing = [k for k in EVENT_KEYS if k not in event]
    if missing:
        raise ValueError(f"{where}: missing feature(s) {missing} (an event has {list(EVENT_KEYS)})")
    out = {k: np.asarray(event[k], dtype=np.float32) for k in EVENT_KEYS}
    n = out["X"].shape[0] if out["X"].ndim == 2 else -1
    shapes = {"X": (n, N_X), "ytarget": (n, N_Y), "ycand": (n, N_Y), "genmet": ()}
    shapes |= {k: (out[k].shape[0] if out[k].ndim == 2 else -1, 4) for k in ("genjets", "targetjets")}
    for key, shape in shapes.items():
        if out[key].shape != shape or n < 0:
            raise ValueError(f"{where}: feature {key!r} has shape {out[key].shape}, expected {shape}")
        if not np.isfinite(out[key]).all():
            row = int(np.argwhere(~np.isfinite(out[key]))[0][0]) if out[key].ndim else 0
            raise ValueError(f"{where}: feature {key!r} has NaN/inf (row {row})")
    return out


def write(
    data_dir: str | Path,
    name: str,
    splits: Mapping[str, Iterable[Mapping[str, np.ndarray]]],
    *,
    config: str | int = 1,
    version: str = VERSION,
    description: str = "",
    overwrite: bool = False,
) -> Path:
    """Write ``splits`` ({"train": events, "test": events}) as ``name/config/version`` under ``data_dir``.

    TFDS writes into an ``incomplete.*`` folder and renames it at the end, so an interrupted write leaves
    no half dataset. Returns the version folder.
    """
    claim(data_dir, name, config, version, overwrite)
    cls = builder_class(name, version, description)
    builder = cls(config=str(config), data_dir=str(data_dir), splits=dict(splits))
    with tempfile.TemporaryDirectory() as downloads:  # TFDS would leave an empty downloads/ behind
        builder.download_and_prepare(download_dir=downloads)
    return Path(builder.data_dir)
