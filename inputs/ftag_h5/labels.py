"""Flavours, truth labels and track origins of the ATLAS flavour-tagging files, and salt's class dicts:
the class weights of the jet-flavour and track-origin losses (``data.class_dict``)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    from .config import FtagConfig
    from .hdf5 import FileInfo

log = logging.getLogger(__name__)

FLAVOURS = ("b", "c", "light", "tau")  # the index of ``flavour``
# umami-preprocessing class names (jets.attrs["flavour_label"]) -> flavour index
FLAVOUR_NAMES = {
    "bjets": 0,
    "cjets": 1,
    "ujets": 2,
    "lightjets": 2,
    "taujets": 3,
    "b": 0,
    "c": 1,
    "u": 2,
    "light": 2,
    "tau": 3,
}
# HadronConeExcl(Extended)TruthLabelID -> flavour index
TRUTH_LABEL_IDS = {5: 0, 54: 0, 55: 0, 4: 1, 44: 1, 0: 2, 15: 3}
TRUTH_LABEL_FIELDS = ("HadronConeExclTruthLabelID", "HadronConeExclExtendedTruthLabelID")
TRACK_ORIGINS = ("Pileup", "Fake", "Primary", "FromB", "FromBC", "FromC", "FromTau", "OtherSecondary")
ORIGIN_FIELDS = ("ftagTruthOriginLabel", "truthOriginLabel")
IGNORED_ORIGINS = (-1, -2)  # salt ignores -1 (ignore_index) and masks -2 (tracks without a usable label)
VERTEX_FIELDS = ("ftagTruthVertexIndex", "truthVertexIndex")


def load_class_dict(path: str | os.PathLike) -> Mapping:
    """A YAML or JSON class dict ``{group: {label: [weights]}}``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such class dict")
    content = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    if not isinstance(content, Mapping):
        raise ValueError(f"{p}: not a class dict {{group: {{label: [weights]}}}}")
    return content


def class_weights(
    class_dict: str | os.PathLike | Mapping,
    group: str = "jets",
    label: str = "flavour_label",
    n_classes: int | None = None,
) -> np.ndarray:
    """The weights list of ``class_dict[group][label]`` (a salt/umami-preprocessing class dict, path or
    mapping) as float32, e.g. ``class_weights(path)`` for the jet flavour and
    ``class_weights(path, "tracks", "ftagTruthOriginLabel", 8)`` for the track origin."""
    where = str(class_dict) if not isinstance(class_dict, Mapping) else "<dict>"
    if not isinstance(class_dict, Mapping):
        class_dict = load_class_dict(class_dict)
    if group not in class_dict or label not in (class_dict[group] or {}):
        have = {g: list(v or {}) for g, v in class_dict.items()}
        raise ValueError(f"class dict {where} has no {group}/{label} (it has {have})")
    w = np.asarray(class_dict[group][label], np.float32)
    if w.ndim != 1 or (n_classes is not None and w.size != n_classes) or not np.isfinite(w).all():
        raise ValueError(
            f"class dict {where}: {group}/{label} = {w.tolist()} is not {n_classes or 'n'} finite weights"
        )
    return w


def model_config(cfg: FtagConfig, model_cfg: Any) -> Any:
    """``model_cfg`` with the class weights of ``cfg.class_dict`` (``DatasetSpec.model_config``), as salt's
    ``use_class_dict`` reads them: ``jets/flavour_label`` for the jet-flavour loss and, when the class
    dict has it, ``tracks/ftagTruthOriginLabel`` for the track-origin loss. Unchanged without a class dict;
    an error when the model config gives ``class_weights`` too (salt refuses both as well). A class dict
    that is not here (a run exported on another machine) leaves the weights out with a warning: only the
    loss uses them, and reading the data (``source``: training, evaluation) refuses a missing one."""
    if not cfg.class_dict:
        return model_cfg
    if "class_weights" not in {f.name for f in dataclasses.fields(model_cfg)}:
        raise ValueError(f"data.class_dict is set, but model {model_cfg.name!r} takes no class weights")
    if model_cfg.class_weights:
        raise ValueError(
            f"data.class_dict ({cfg.class_dict}) and model.class_weights both give class weights; keep one"
        )
    path = Path(cfg.class_dict).expanduser()
    if not path.exists():
        log.warning("data.class_dict %s is not here: the model's losses have no class weights", path)
        return model_cfg
    weights = _class_dict_weights(str(path), *_version(path))
    return dataclasses.replace(model_cfg, class_weights={task: list(w) for task, w in weights.items()})


def check_class_dict(cfg: FtagConfig, files: Sequence[FileInfo]) -> None:
    """``cfg.class_dict`` exists and holds weights for the model's classes, which the files list in the
    model's order."""
    path = Path(cfg.class_dict).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data.class_dict: {path}: no such class dict")
    _class_dict_weights(str(path), *_version(path))
    _check_class_order(files)


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _class_dict_weights(path: str, mtime_ns: int, size: int) -> dict[str, tuple[float, ...]]:
    """The loss weights of a class dict file, read (and logged) once per version (time, size) of the file."""
    content = load_class_dict(path)
    class_weights(path, "jets", "flavour_label", len(FLAVOURS))  # checked, errors naming the file
    weights = {"jet": tuple(float(w) for w in content["jets"]["flavour_label"])}  # as written, not float32
    tracks = content.get("tracks") or {}
    origin = next((label for label in ORIGIN_FIELDS if label in tracks), None)
    if origin:
        class_weights(path, "tracks", origin, len(TRACK_ORIGINS))
        weights["origin"] = tuple(float(w) for w in tracks[origin])
    log.info("class weights from %s: %s", path, weights)
    return weights


def _check_class_order(files: Sequence[FileInfo]) -> None:
    """A class dict's jet weights follow the file's classes, so those must be the model's b, c, light, tau."""
    for info in files:
        lut = info.flavour_lut
        if info.flavour_field == "flavour_label" and not np.array_equal(lut, np.arange(lut.size)):
            order = [FLAVOURS[k] for k in lut]
            raise ValueError(
                f"{info.path}: jets/flavour_label lists its classes as {order}; data.class_dict's weights "
                f"follow that order, and GN2's classes are {list(FLAVOURS)}: write the files with the "
                "classes in that order, or give model.class_weights in it instead of data.class_dict"
            )
