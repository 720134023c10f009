"""``smilejax import salt`` against salt itself (the ``salt-ml`` 0.13.0 wheel, PyTorch on CPU), run in its own
Python 3.11 environment.

One subprocess (``tests/salt_reference/run_reference.py`` under ``.salt-ref/bin/python``) builds salt's
GN2 from a small salt config, saves its weights as a Lightning-layout ``.ckpt`` and a plain state-dict
``.pt``, and runs it on the jets of an ATLAS-format HDF5 file written here: jets with holes (invalid
tracks between valid ones), without tracks, with every slot filled. The salt class order is not
smilejax's (``ujets, cjets, bjets, taujets``), and the jet variables come first in salt's init net but
last in smilejax's, so both reorderings are exercised.

Then ``smilejax import salt`` makes a run directory, and the model restored from it (``trained.load``, the
path eval and export take) reads the same file through the run's own input pipeline and normalisation:
jet class probabilities, track-origin probabilities and vertex logits match salt's within 1e-5 (float32).
A perturbed weight and an unordered jet head must fail that check. The run is also exported, evaluated
and trained on for two steps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx
from smilejax.models import gn2, torch_files
from smilejax.models.gn2 import features
from smilejax.models.gn2 import salt as gn2_salt

from smilejax import cli, config, registry, trained
from tests.conftest import ROOT, run_reference
from tests.salt_reference.inputs import (
    JET_VARS,
    N_JETS,
    SALT_CLASSES,
    SLOTS,
    TRACK_VARS,
    UMAMI_CLASSES,
    salt_config,
    write_jets,
    write_norm_dict,
)

REF_ENV = Path(os.environ.get(features.SALT_REF_VAR) or ROOT / features.SALT_REF_DIR)
REF_SCRIPT = ROOT / "tests" / "salt_reference" / "run_reference.py"
INSTALL = "bash launch/install_salt_reference.sh"
ATOL = 1e-5
OVERRIDES = [f"data.max_tracks={SLOTS}", f"model.max_tracks={SLOTS}"]
TRAIN_OVERRIDES = ["run.steps=2", "run.log_every=1", "run.checkpoint_every=2", "train.precision=fp32"]


@pytest.fixture(scope="module")
def salt(tmp_path_factory) -> dict:
    """salt's files and outputs: {"dir", "config", "ckpt", "pt", "jets", "valid", "out": {name: array}}."""
    tmp = tmp_path_factory.mktemp("salt")
    jets = tmp / "jets.h5"
    valid = write_jets(jets)
    write_norm_dict(tmp / "norm_dict.yaml", jets)
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(salt_config(tmp / "norm_dict.yaml", jets), sort_keys=False))
    run_reference(
        REF_ENV,
        INSTALL,
        "Python 3.11, CPU torch 2.13.0, salt-ml 0.13.0 without its training dependencies",
        str(REF_SCRIPT),
        str(cfg_path),
        str(jets),
        str(tmp),
        "7",
    )
    out = dict(np.load(tmp / "out.npz"))
    return {"dir": tmp, "config": cfg_path, "ckpt": tmp / "model.ckpt", "pt": tmp / "state_dict.pt"} | {
        "jets": jets,
        "valid": valid,
        "out": out,
    }


@pytest.fixture(scope="module")
def imported(salt, tmp_path_factory) -> Path:
    """The run directory of ``smilejax import salt`` on salt's Lightning checkpoint."""
    run_dir = tmp_path_factory.mktemp("import") / "run"
    # the config is found next to the checkpoint, as in salt's log directories
    rc = cli.main(["import", "salt", str(salt["ckpt"]), "--out", str(run_dir), *OVERRIDES])
    assert rc == 0
    return run_dir


# --- the comparison --------------------------------------------------------------------------------


def pipeline_batch(tm: trained.TrainedModel) -> dict[str, np.ndarray]:
    """Every jet of the run's evaluation file, in file order, as the run's input pipeline reads it."""
    source = registry.dataset(tm.cfg.data.format).source(tm.cfg.data, "eval")
    assert len(source) == N_JETS
    return source.read(np.arange(N_JETS))


def smilejax_outputs(model: gn2.GN2, batch: dict) -> dict[str, np.ndarray]:
    out = jax.device_get(model(jnp.asarray(batch["tracks"]), jnp.asarray(batch["valid"])))
    return {
        "jet_probs": np.asarray(jax.nn.softmax(out["jet_logits"], axis=-1)),
        "origin_probs": np.asarray(jax.nn.softmax(out["origin_logits"], axis=-1)),
        "vertex_logits": np.asarray(out["vertex_logits"]),
    }


def salt_in_our_order(out: dict) -> dict[str, np.ndarray]:
    order = [SALT_CLASSES.index(name) for name in UMAMI_CLASSES]  # b, c, light, tau
    return {**out, "jet_probs": out["jet_probs"][:, order]}


def worst_errors(ours: dict, ref: dict, valid: np.ndarray) -> dict[str, float]:
    """Largest |ours - salt| of each output where salt defines it: every jet, valid tracks, valid pairs."""
    pairs = valid[:, :, None] & valid[:, None, :] & ~np.eye(valid.shape[1], dtype=bool)
    masks = {"jet_probs": np.ones(len(valid), bool), "origin_probs": valid, "vertex_logits": pairs}
    return {k: float(np.max(np.abs(ours[k][m] - ref[k][m]), initial=0.0)) for k, m in masks.items()}


def test_imported_run_computes_salts_outputs(salt, imported):
    tm = trained.load(imported)
    batch = pipeline_batch(tm)
    np.testing.assert_array_equal(batch["valid"], salt["valid"])  # holes kept, empty jets empty
    errors = worst_errors(smilejax_outputs(tm.model, batch), salt_in_our_order(salt["out"]), salt["valid"])
    print("worst |smilejax - salt|:", errors)
    assert max(errors.values()) < ATOL, errors


def test_checker_fails_on_a_perturbed_weight_and_on_salts_class_order(salt, imported):
    tm = trained.load(imported)
    batch = pipeline_batch(tm)
    ref = salt_in_our_order(salt["out"])
    cfg = yaml.safe_load(salt["config"].read_text())
    layout = gn2_salt.translate(cfg).layout
    state_dict, _, _ = gn2_salt.read_checkpoint(salt["pt"])

    def outputs(sd: dict, lay: gn2_salt.SaltLayout) -> dict[str, np.ndarray]:
        graphdef, _, rest = nnx.split(tm.model, nnx.Param, ...)
        return smilejax_outputs(
            nnx.merge(graphdef, gn2_salt.convert_salt_state_dict(tm.model, sd, lay), rest), batch
        )

    assert max(worst_errors(outputs(state_dict, layout), ref, salt["valid"]).values()) < ATOL
    with nnx.use_eager_sharding(False):  # other weights until salt's are loaded into it
        fresh = gn2.build(tm.cfg.model, rngs=nnx.Rngs(1))
    assert worst_errors(smilejax_outputs(fresh, batch), ref, salt["valid"])["jet_probs"] > 1e-3
    gn2_salt.load_salt_state_dict(fresh, state_dict, layout)
    assert max(worst_errors(smilejax_outputs(fresh, batch), ref, salt["valid"]).values()) < ATOL
    bumped = dict(state_dict)
    bumped["encoder.layers.1.attn.fn.in_proj_bias"] = bumped["encoder.layers.1.attn.fn.in_proj_bias"] + 1e-3
    assert worst_errors(outputs(bumped, layout), ref, salt["valid"])["jet_probs"] > ATOL
    unordered = gn2_salt.SaltLayout(layout.tasks, layout.jet_inputs, jet_order=(0, 1, 2, 3))
    assert worst_errors(outputs(state_dict, unordered), ref, salt["valid"])["jet_probs"] > 1e-3


def test_torch_files_reads_what_torch_saves(salt):
    saved = torch_files.load(salt["dir"] / "tensors.pt")
    ref = np.load(salt["dir"] / "tensors.npz")
    assert saved["step"] == 7 and set(saved["tensors"]) == set(ref.files)
    for name, value in saved["tensors"].items():
        assert value.flags.c_contiguous and value.shape == ref[name].shape, name
        np.testing.assert_array_equal(np.asarray(value, ref[name].dtype), ref[name], err_msg=name)


def test_run_directory_carries_salts_config(salt, imported):
    cfg = config.load(imported / "config.yaml")
    assert (cfg.data.jet_vars, cfg.data.track_vars) == (JET_VARS, TRACK_VARS)
    assert cfg.model.track_features == len(JET_VARS) + len(TRACK_VARS)
    assert (cfg.model.embed, cfg.model.layers, cfg.model.heads, cfg.model.ff, cfg.model.out) == (
        32,
        2,
        4,
        48,
        16,
    )
    assert cfg.model.class_weights == {  # salt's jet weights in b, c, light, tau order
        "jet": [3.0, 2.0, 1.0, 4.0],
        "origin": [4.0, 100.0, 1.0, 8.0, 6.0, 10.0, 1.5, 20.0],
    }
    assert (cfg.model.origin_weight, cfg.model.vertex_weight, cfg.model.vertex_loss_norm) == (
        0.5,
        1.5,
        "matches",
    )
    assert (cfg.optimizer.lr, cfg.optimizer.initial_lr, cfg.optimizer.final_lr) == (5e-4, 1e-7, 1e-5)
    info = json.loads((imported / "run.json").read_text())
    state_dict, _, _ = gn2_salt.read_checkpoint(salt["pt"])
    salt_params = sum(
        v.size for k, v in state_dict.items() if k != "encoder.register_mask" and ".loss." not in k
    )
    assert info["param_count"] == salt_params
    assert info["imported"]["from"] == "salt" and info["imported"]["global_step"] == 1234
    assert info["imported"]["norm"] == "checkpoint buffers" and info["train_examples"] == N_JETS
    norm = yaml.safe_load((imported / "norm_dict.yaml").read_text())
    ref = yaml.safe_load((salt["dir"] / "norm_dict.yaml").read_text())
    for group in ("jets", "tracks"):
        for var, d in ref[group].items():
            assert np.float32(norm[group][var]["mean"]) == np.float32(d["mean"]), (group, var)


def test_plain_state_dict_imports_the_same_weights_without_the_data(salt, imported, tmp_path, caplog):
    """A state-dict .pt takes the normalisation from salt's norm_dict file; with the training data out of
    reach the checkpoint holds the weights alone, which evaluation's restore reads all the same, and
    training given data.path (and any data settings) starts the data from its beginning (where step 0
    stands)."""
    run_dir = tmp_path / "from_pt"
    argv = ["import", "salt", str(salt["pt"]), "--config", str(salt["config"]), "--out", str(run_dir)]
    assert cli.main([*argv, *OVERRIDES, f"data.path={tmp_path / 'elsewhere.h5'}"]) == 0
    assert (imported / "checkpoints" / "0" / "data").is_dir()
    assert not (run_dir / "checkpoints" / "0" / "data").exists()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["imported"]["norm"] == str(salt["dir"] / "norm_dict.yaml") and "train_examples" not in info
    a = nnx.to_pure_dict(nnx.state(trained.load(imported).model, nnx.Param))
    b = nnx.to_pure_dict(nnx.state(trained.load(run_dir).model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert cli.main([*argv, *OVERRIDES]) == 2  # the run is there: never overwritten

    # other data settings than the import's: there is no data position that they would not continue
    data = [f"data.path={salt['jets']}", "data.batch_size=16", "run.seed=3"]
    train = ["train", str(run_dir / "config.yaml"), *data, *TRAIN_OVERRIDES]
    with caplog.at_level(logging.INFO, logger="smilejax.checkpoint"):
        assert cli.main(train) == 0
    assert "checkpoint step 0 holds no data position: the input pipeline starts" in caplog.text
    assert "unreadable" not in caplog.text
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2 and np.isfinite(lines[-1]["loss"])
    assert (run_dir / "checkpoints" / "2" / "data").is_dir()


def test_export_eval_and_training_accept_the_run(salt, imported, tmp_path):
    assert (
        cli.main(
            ["export", str(imported), "--out", str(tmp_path / "repo"), "--format", "stablehlo", "--no-warmup"]
        )
        == 0
    )
    assert (tmp_path / "repo" / "gn2_jax" / "1" / "model.jaxexport").is_file()
    assert (
        cli.main(["eval", str(imported), "--out", str(tmp_path / "eval"), "--ip-fit-jets", str(N_JETS)]) == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["n_jets"], metrics["step"]) == (N_JETS, 0)
    run = imported.parent / "trained_on"
    shutil.copytree(imported, run)
    assert cli.main(["train", str(run / "config.yaml"), f"run.dir={run}", *TRAIN_OVERRIDES]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines and lines[-1]["step"] == 2 and np.isfinite(lines[-1]["loss"])


def test_what_gn2_cannot_compute_is_named(salt, tmp_path):
    cfg = yaml.safe_load(salt["config"].read_text())
    enc = cfg["model"]["model"]["init_args"]["encoder"]["init_args"]
    enc["dense_kwargs"]["gated"] = True
    enc["drop_registers"] = True
    cfg["model"]["model"]["init_args"]["tasks"]["init_args"]["modules"][1]["init_args"]["dense_config"][
        "hidden_layers"
    ] = [16]
    with pytest.raises(ValueError) as err:
        gn2_salt.translate(cfg)
    for part in ("dense_kwargs.gated", "drop_registers", "hidden_layers differ"):
        assert part in str(err.value)

    state_dict, _, _ = gn2_salt.read_checkpoint(salt["pt"])
    tr = gn2_salt.translate(yaml.safe_load(salt["config"].read_text()))
    layout = tr.layout
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: gn2.build(gn2.GN2Config(**tr.sections["model"]), rngs=nnx.Rngs(0)))
    missing = {k: v for k, v in state_dict.items() if k != "pool_net.gate_nn.bias"}
    with pytest.raises(KeyError, match=r"pool_net\.gate_nn\.bias"):
        gn2_salt.convert_salt_state_dict(model, missing, layout)
    with pytest.raises(KeyError, match=r"extra\.weight"):
        gn2_salt.convert_salt_state_dict(model, {**state_dict, "extra.weight": np.zeros(2)}, layout)
    compiled = {f"model._orig_mod.{k}": v for k, v in state_dict.items()} | {"norm.jets_means": np.zeros(2)}
    model_part, norm_part = gn2_salt.split_state(compiled)
    assert model_part.keys() == state_dict.keys() and list(norm_part) == ["jets_means"]
    ckpts = tmp_path / "logs" / "GN2_run" / "ckpts"  # salt's log directory: the config one folder up
    ckpts.mkdir(parents=True)
    (ckpts.parent / "config.yaml").write_text("name: GN2\n")
    assert gn2_salt.find_config(ckpts / "epoch=001.ckpt") == ckpts.parent / "config.yaml"
    with pytest.raises(FileNotFoundError, match="pass it with --config"):
        gn2_salt.find_config(tmp_path / "elsewhere" / "model.ckpt")
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02not a zip")
    with pytest.raises(ValueError, match="not a PyTorch zip checkpoint"):
        torch_files.load(tmp_path / "legacy.pt")
    assert cli.main(["import", "salt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 2
    bad = ["import", "salt", str(salt["ckpt"]), "--out", str(tmp_path / "y"), "model.nosuch=1"]
    assert cli.main(bad) == 2
    assert not (tmp_path / "y").exists()  # a failed import leaves no half-written run
