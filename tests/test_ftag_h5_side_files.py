"""The ATLAS flavour-tagging HDF5 input's side files (norm and class dicts, salt's formats) and the inputs
it refuses or repairs (missing, mistyped, truncated, non-finite, mislabelled). Files: tests/conftest.py's
``ftag_files`` and ``ftag_mock``."""

from __future__ import annotations

import json
import logging
import os
import shutil

import h5py
import numpy as np
import pytest
import yaml
from flax import nnx
from smilejax.inputs import ftag_h5 as fh

from tests.conftest import FTAG_JETS
from tests.helpers_ftag import ftag_cfg, jets_and_tracks

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


# ---------------------------------------------------------------------------- norm and class dicts


def test_norm_dict_cached_and_roundtrip(ftag_files, tmp_path, monkeypatch):
    cfg = ftag_cfg(ftag_files / "s1.h5")
    fh.SPEC.source(cfg, "train")
    cached = list(ftag_files.glob("norm_dict.smilejax-*.yaml"))
    assert cached, "the computed norm dict is cached next to the data"

    def fail(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(fh.source, "compute_norm_dict", fail)
    fh.SPEC.source(cfg, "eval")  # eval uses the training part's cached normalisation
    monkeypatch.undo()

    norm = fh.compute_norm_dict(str(ftag_files / "s1.h5"), cfg, max_jets=1000)
    assert set(norm) == {"jets", "tracks"} and set(norm["tracks"]) == set(cfg.track_vars)
    path = fh.write_norm_dict(norm, tmp_path / "norm.yaml")
    assert fh.load_norm_dict(path) == norm
    (tmp_path / "norm.json").write_text(json.dumps(norm))
    src = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", norm_dict=str(tmp_path / "norm.json")), "train")
    assert np.isfinite(src.read(np.arange(10))["tracks"]).all()
    # a norm dict without a needed variable
    del norm["tracks"]["qOverP"]
    fh.write_norm_dict(norm, tmp_path / "partial.yaml")
    with pytest.raises(ValueError, match="qOverP") as err:
        fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", norm_dict=str(tmp_path / "partial.yaml")), "train")
    assert "partial.yaml" in str(err.value)


def test_class_weights_salt_format(ftag_files, tmp_path):
    # the layout salt's use_class_dict reads and umami-preprocessing writes
    salt_dict = {
        "jets": {"flavour_label": [1.0, 1.73, 1.08, 9.5]},
        "tracks": {"ftagTruthOriginLabel": [3.96, 104.05, 1.0, 8.32, 5.98, 10.22, 1.0, 21.54]},
    }
    path = tmp_path / "class_dict.yaml"
    path.write_text(yaml.safe_dump(salt_dict))
    w = fh.class_weights(str(path))
    assert w.dtype == np.float32 and w.tolist() == pytest.approx([1.0, 1.73, 1.08, 9.5])
    origin = fh.class_weights(path, "tracks", "ftagTruthOriginLabel", n_classes=8)
    assert origin.shape == (8,)
    with pytest.raises(ValueError, match="ftagTruthVertexIndex"):
        fh.class_weights(path, "tracks", "ftagTruthVertexIndex")
    with pytest.raises(ValueError, match="not 4"):
        fh.class_weights(path, "tracks", "ftagTruthOriginLabel", n_classes=4)

    computed = fh.compute_class_dict(str(ftag_files / "s1.h5"))
    flav = np.array(computed["jets"]["flavour_label"])
    _, tracks = jets_and_tracks(ftag_files / "s1.h5")
    assert flav.min() == 1.0 and flav.argmax() == 3, "tau jets are the rarest"
    counts = np.bincount(tracks["ftagTruthOriginLabel"][tracks["valid"]], minlength=8)
    orig = np.array(computed["tracks"]["ftagTruthOriginLabel"])
    assert orig.argmin() == counts.argmax() == 2, "primary tracks are the most common"
    np.testing.assert_allclose(orig, np.round(counts.max() / counts, 2), rtol=1e-2)


SALT_CLASS_DICT = {
    "jets": {"flavour_label": [1.0, 1.73, 1.08, 9.5]},
    "tracks": {"ftagTruthOriginLabel": [3.96, 104.05, 1.0, 8.32, 5.98, 10.22, 1.0, 21.54]},
}


def test_class_dict_gives_the_model_its_class_weights(ftag_files, tmp_path, caplog):
    """``data.class_dict`` is read as salt's ``use_class_dict``: the jet-flavour and track-origin loss
    weights of the model that the framework builds; a model config with ``class_weights`` too is refused."""
    from smilejax import config, registry, steps

    path = tmp_path / "class_dict.yaml"
    path.write_text(yaml.safe_dump(SALT_CLASS_DICT))
    small = ["model.embed=16", "model.init_hidden=[16]", "model.layers=1", "model.heads=2", "model.ff=16"]
    small += ["model.out=8", "model.head_hidden=[8]"]
    cfg = config.load("gn2", [f"data.class_dict={path}", *small])
    assert cfg.model.class_weights is None  # the run's config keeps naming the file
    with nnx.use_eager_sharding(False):
        model = steps.build_model(registry.model("gn2"), cfg, 0)
    np.testing.assert_allclose(model.jet_class_weights, SALT_CLASS_DICT["jets"]["flavour_label"], rtol=1e-6)
    np.testing.assert_allclose(
        model.origin_class_weights, SALT_CLASS_DICT["tracks"]["ftagTruthOriginLabel"], rtol=1e-6
    )
    expected = {"jet": SALT_CLASS_DICT["jets"]["flavour_label"]}
    expected["origin"] = SALT_CLASS_DICT["tracks"]["ftagTruthOriginLabel"]
    assert steps.model_config(cfg).class_weights == expected  # the values as written
    # without a class dict, the model's own class_weights (or none)
    assert steps.model_config(config.load("gn2")).class_weights is None
    with pytest.raises(ValueError, match=r"data.class_dict \(.*\) and model.class_weights both give"):
        steps.model_config(
            config.load("gn2", [f"data.class_dict={path}", "model.class_weights={jet: [1,1,1,1]}"])
        )
    # a class dict of the jets only weighs the jet loss only
    jets_only = tmp_path / "jets_only.json"
    jets_only.write_text(json.dumps({"jets": SALT_CLASS_DICT["jets"]}))
    assert set(fh.model_config(ftag_cfg(None, class_dict=str(jets_only)), cfg.model).class_weights) == {"jet"}
    # a missing class dict: refused when reading data (training, evaluation); a model built elsewhere
    # (an export on another machine) goes without the weights, which only the loss uses
    nope = str(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match=r"data.class_dict: .*nope\.yaml: no such class dict"):
        fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", class_dict=nope), "train")
    with caplog.at_level(logging.WARNING, logger=fh.__name__):
        assert fh.model_config(ftag_cfg(None, class_dict=nope), cfg.model) is cfg.model
    assert "nope.yaml is not here" in caplog.text
    path.write_text(yaml.safe_dump({"jets": {"flavour_label": [1.0, 2.0, 3.0]}}))
    with pytest.raises(ValueError, match=r"flavour_label = .* is not 4 finite weights"):
        fh.model_config(ftag_cfg(None, class_dict=str(path)), cfg.model)
    with pytest.raises(ValueError, match=r"flavour_label = .* is not 4 finite weights"):
        fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", class_dict=str(path)), "train")

    # the weights follow the file's class order, which must be the model's b, c, light, tau
    swapped = tmp_path / "swapped.h5"
    shutil.copy(ftag_files / "s1.h5", swapped)
    with h5py.File(swapped, "r+", locking=False) as f:
        assert list(f["jets"].attrs["flavour_label"]) == ["bjets", "cjets", "ujets", "taujets"]
        f["jets"].attrs["flavour_label"] = ["cjets", "bjets", "ujets", "taujets"]
    path.write_text(yaml.safe_dump(SALT_CLASS_DICT))
    assert len(fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", class_dict=str(path)), "train")) > 0
    with pytest.raises(ValueError, match=r"lists its classes as \['c', 'b', 'light', 'tau'\]"):
        fh.SPEC.source(ftag_cfg(swapped, class_dict=str(path)), "train")


def test_origin_labels_salt_ignores_are_read(ftag_files, tmp_path):
    """A track origin of -2 (salt masks it) or -1 (salt's ignore index) on a valid track is kept in the
    batch, where GN2's loss leaves it out (tests/test_gn2_model.py); other values are still refused."""
    _, tracks = jets_and_tracks(ftag_files / "s1.h5")
    slots = [int(np.argmax(tracks["valid"][row])) for row in (3, 5)]

    def mark(t):
        t["ftagTruthOriginLabel"][3, slots[0]] = -2
        t["ftagTruthOriginLabel"][5, slots[1]] = -1
        return t

    path = _rewrite(ftag_files / "s1.h5", tmp_path / "ignored.h5", edit_tracks=mark)
    assert fh.check(path)[path]["aux"]
    batch = fh.SPEC.source(ftag_cfg(path), "train").read(np.arange(8))
    assert batch["valid"][3, slots[0]] and batch["track_origin"][3, slots[0]] == -2
    assert batch["valid"][5, slots[1]] and batch["track_origin"][5, slots[1]] == -1
    valid = tracks["valid"][:8]
    np.testing.assert_array_equal(
        batch["track_origin"][valid], mark(tracks)["ftagTruthOriginLabel"][:8][valid]
    )
    # class weights count the labelled tracks only
    counts = fh.compute_class_dict(path)["tracks"]["ftagTruthOriginLabel"]
    assert len(counts) == 8 and min(counts) == 1.0

    def minus_three(t):
        t["ftagTruthOriginLabel"][3, slots[0]] = -3
        return t

    bad = _rewrite(ftag_files / "s1.h5", tmp_path / "minus3.h5", edit_tracks=minus_three)
    with pytest.raises(
        ValueError, match=r"ftagTruthOriginLabel = -3 at row 3 .* nor an ignored label \(-1, -2\)"
    ):
        fh.check(bad)


# --------------------------------------------------------------------------------------- bad inputs


def _rewrite(src, dst, edit_jets=None, edit_tracks=None, drop=None):
    jets, tracks = jets_and_tracks(src)
    jets = edit_jets(jets) if edit_jets else jets
    tracks = edit_tracks(tracks) if edit_tracks else tracks
    with h5py.File(dst, "w", locking=False) as f:
        if drop != "jets":
            f.create_dataset("jets", data=jets)
        if drop != "tracks":
            f.create_dataset("tracks", data=tracks)
    return str(dst)


def _retype(arr, field, dtype):
    new = np.dtype([(n, dtype if n == field else arr.dtype[n]) for n in arr.dtype.names])
    out = np.zeros(arr.shape, new)
    for n in arr.dtype.names:
        out[n] = arr[n].astype(new[n]) if n != field else arr[n].astype(dtype)
    return out


def test_missing_file_and_glob(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.h5"):
        fh.SPEC.source(ftag_cfg(tmp_path / "nope.h5"), "train")
    with pytest.raises(FileNotFoundError, match=r"none\*\.h5"):
        fh.SPEC.source(ftag_cfg(tmp_path / "none*.h5"), "train")


def test_missing_dataset(ftag_files, tmp_path):
    bad = _rewrite(ftag_files / "s1.h5", tmp_path / "no_tracks.h5", drop="tracks")
    with pytest.raises(ValueError, match="'tracks'") as err:
        fh.SPEC.source(ftag_cfg(bad), "train")
    assert bad in str(err.value)


def test_missing_variable_lists_close_names(ftag_files):
    with pytest.raises(ValueError, match="d0_sig") as err:
        fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", track_vars=["d0_sig"]), "train")
    msg = str(err.value)
    assert str(ftag_files / "s1.h5") in msg and "'tracks'" in msg
    with pytest.raises(ValueError, match="close names") as err:
        fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", track_vars=["numberOfPixelHit"]), "train")
    assert "numberOfPixelHits" in str(err.value)


def test_wrong_dtype(ftag_files, tmp_path):
    bad = _rewrite(ftag_files / "s1.h5", tmp_path / "str_d0.h5", edit_tracks=lambda t: _retype(t, "d0", "S8"))
    with pytest.raises(ValueError, match="tracks/d0 has dtype") as err:
        fh.SPEC.source(ftag_cfg(bad), "train")
    assert bad in str(err.value)
    bad = _rewrite(
        ftag_files / "s1.h5", tmp_path / "float_valid.h5", edit_tracks=lambda t: _retype(t, "valid", "f4")
    )
    with pytest.raises(ValueError, match="tracks/valid has dtype") as err:
        fh.SPEC.source(ftag_cfg(bad), "train")
    assert bad in str(err.value)


def test_truncated_and_corrupt_file(ftag_files, tmp_path):
    trunc = tmp_path / "trunc.h5"
    shutil.copy(ftag_files / "s1.h5", trunc)
    os.truncate(trunc, os.path.getsize(trunc) // 2)
    with pytest.raises(ValueError, match="truncated") as err:
        fh.SPEC.source(ftag_cfg(trunc), "train")
    assert str(trunc) in str(err.value)
    garbage = tmp_path / "garbage.h5"
    shutil.copy(ftag_files / "s1.h5", garbage)
    with open(garbage, "r+b") as f:
        f.write(b"\0" * 4096)
    with pytest.raises(ValueError, match="not a readable HDF5 file") as err:
        fh.SPEC.source(ftag_cfg(garbage), "train")
    assert str(garbage) in str(err.value)


def test_nan_and_inf_in_inputs(ftag_files, tmp_path):
    _, tracks = jets_and_tracks(ftag_files / "s1.h5")
    slot = int(np.argmax(tracks["valid"][5]))

    def nan_d0(t):
        t["d0"][5, slot] = np.nan
        return t

    def inf_pt(j):
        j["pt_btagJes"][9] = np.inf
        return j

    bad = _rewrite(ftag_files / "s1.h5", tmp_path / "nan.h5", edit_tracks=nan_d0)
    norm = str(fh.write_norm_dict(fh.compute_norm_dict(str(ftag_files / "s1.h5")), tmp_path / "n.yaml"))
    src = fh.SPEC.source(ftag_cfg(bad, norm_dict=norm), "train")
    src.read(np.arange(0, 5))  # rows before the bad one read fine
    with pytest.raises(ValueError, match=r"tracks/d0 at row 5") as err:
        src.read(np.arange(0, 64))
    assert bad in str(err.value) and "rows 0..63" in str(err.value)
    with pytest.raises(ValueError, match="tracks/d0 at row 5"):
        fh.check(bad)
    with pytest.raises(ValueError, match="tracks/d0") as err:  # computing the norm dict sees it too
        fh.SPEC.source(ftag_cfg(bad), "train")
    assert bad in str(err.value)

    bad = _rewrite(ftag_files / "s1.h5", tmp_path / "inf.h5", edit_jets=inf_pt)
    src = fh.SPEC.source(ftag_cfg(bad, norm_dict=norm), "train")
    with pytest.raises(ValueError, match="jets/pt_btagJes at row 9") as err:
        src.read(np.array([3, 9, 11]))
    assert bad in str(err.value)


def test_bad_labels(ftag_files, tmp_path):
    def bad_truth(j):
        j["HadronConeExclTruthLabelID"][12] = 7
        return j

    # rewritten without the class-name attribute on flavour_label: auto picks HadronConeExclTruthLabelID
    bad = _rewrite(ftag_files / "s1.h5", tmp_path / "label.h5", edit_jets=bad_truth)
    src = fh.SPEC.source(ftag_cfg(bad, aux_labels="off"), "train")
    with pytest.raises(ValueError, match="HadronConeExclTruthLabelID = 7 at row 12") as err:
        src.read(np.arange(10, 20))
    assert bad in str(err.value)

    def bad_origin(t):
        slot = int(np.argmax(t["valid"][3]))
        t["ftagTruthOriginLabel"][3, slot] = 9
        return t

    bad = _rewrite(ftag_files / "s1.h5", tmp_path / "origin.h5", edit_tracks=bad_origin)
    with pytest.raises(ValueError, match="ftagTruthOriginLabel = 9 at row 3") as err:
        fh.check(bad)
    assert bad in str(err.value)


def test_check_reports(ftag_files, ftag_mock):
    report = fh.check(f"{ftag_files / 's1.h5'},{ftag_mock}")
    s1 = report[str(ftag_files / "s1.h5")]
    jets, tracks = jets_and_tracks(ftag_files / "s1.h5")
    assert s1["jets"] == FTAG_JETS[0] and s1["tracks"] == int(tracks["valid"].sum()) and s1["aux"]
    assert s1["flavours"] == np.bincount(jets["flavour_label"], minlength=4).tolist()
    assert report[ftag_mock]["aux"] is False
