"""MLPF's TFDS ArrayRecord datasets: written by smilejax, read by smilejax and by particleflow itself.

The format test runs particleflow's ``PFDataset`` (in the reference environment, see
``launch/install_mlpf_reference.sh``) on a set smilejax wrote and compares every event with smilejax's
reader, including particleflow's log-ratio targets. Batching by element budget is checked for shapes,
padding, determinism and sharding over processes; bad datasets must fail naming what is wrong.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess

import numpy as np
import pytest
from smilejax.inputs import mlpf_format as fmt
from smilejax.inputs import mlpf_tfds, pipeline
from smilejax.models.mlpf import make_synthetic as mlpf_synthetic

from smilejax import config
from smilejax.config import ConfigError
from tests.conftest import ROOT
from tests.helpers_mlpf import INSTALL, REF_ENV

NAME = "clic_edm_qq_pf"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlpf_tfds")
    mlpf_synthetic.make(root, 120, seed=3, config=1, mean_particles=30)
    mlpf_synthetic.make(root, 60, seed=4, config=2, mean_particles=30)
    return root


def _cfg(data_dir, **kw) -> mlpf_tfds.MlpfConfig:
    return mlpf_tfds.MlpfConfig(path=str(data_dir), configs=kw.pop("configs", [1, 2]), **kw)


def test_reader_matches_particleflow_pfdataset(data_dir, tmp_path):
    """particleflow's own loader and ours agree event by event on a set smilejax wrote."""
    python = REF_ENV / "bin" / "python"
    assert python.exists(), f"the particleflow reference environment is missing: run `{INSTALL}`"
    out = tmp_path / "ref.npz"
    n = 12
    subprocess.run(
        [str(python), str(ROOT / "tests/mlpf_reference/read_dataset.py"), str(data_dir), f"{NAME}/1:3.1.0",
         "train", str(n), str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    ref = np.load(out)
    src = mlpf_tfds.source(_cfg(data_dir, configs=[1], fields=mlpf_tfds.EVAL_FIELDS), "train")
    assert int(ref["len"]) == len(src) == 96  # 120 events, 20 % test
    batch = src.read(np.arange(n), width=256)
    for i in range(n):
        k = len(ref[f"X_{i}"])
        assert batch["mask"][i].sum() == k and not batch["mask"][i, k:].any()
        for key in ("X", "ytarget", "ycand", "ytarget_pt_orig", "ytarget_e_orig"):
            np.testing.assert_array_equal(batch[key][i, :k], ref[f"{key}_{i}"], err_msg=f"{key} event {i}")
            assert not batch[key][i, k:].any()
        assert batch["genmet"][i] == ref[f"genmet_{i}"]
        for key in ("genjets", "targetjets"):
            j = len(ref[f"{key}_{i}"])
            np.testing.assert_array_equal(batch[key][i, :j], ref[f"{key}_{i}"])
    # the log ratios are real targets, not all zeros
    assert np.abs(batch["ytarget"][..., 2][batch["mask"]]).max() > 0.01


def test_configs_are_one_index_space_and_splits_differ(data_dir):
    train = mlpf_tfds.source(_cfg(data_dir), "train")
    test = mlpf_tfds.source(_cfg(data_dir), "eval")
    assert len(train) == 96 + 48 and len(test) == 24 + 12
    assert str(train.locate(96)[0]) == f"{NAME}/2:3.1.0 split 'train'" and train.locate(96)[1] == 0
    assert train.lengths.shape == (len(train),) and train.lengths.min() >= 1
    # the cached element counts equal the events' lengths
    batch = train.read(np.arange(90, 100), width=256)
    np.testing.assert_array_equal(batch["mask"].sum(1), train.lengths[90:100])
    assert set(batch) == {"X", "ytarget", "mask"}


def test_sort_by_pt_orders_elements(data_dir):
    src = mlpf_tfds.source(_cfg(data_dir, sort_by_pt=True), "train")
    batch = src.read(np.arange(5), width=256)
    for i in range(5):
        pt = batch["X"][i, : src.lengths[i], 1]
        assert (np.diff(pt) <= 0).all()


def test_budget_plan_shapes_padding_and_determinism(data_dir):
    cfg = _cfg(data_dir, bucket_widths=[16, 32, 64, 128, 256], element_budget=512, batch_multiple=2)
    assert cfg.global_batch_sizes() == [2, 4, 8, 16, 32]
    src = mlpf_tfds.source(cfg, "train")
    plan = pipeline.BudgetPlan(src.lengths, cfg.bucket_widths, [32, 16, 8, 4, 2], seed=1, shuffle=True)
    seen = []
    for step in range(plan.per_epoch):
        rows, width = plan(step)
        assert rows.size * width <= 512 and (src.lengths[rows] <= width).all()
        smaller = [w for w in cfg.bucket_widths if w < width]
        assert not smaller or (src.lengths[rows] > smaller[-1]).all()  # the smallest bucket that holds it
        seen.extend(rows.tolist())
    assert len(seen) == len(set(seen))  # no event twice in an epoch
    assert len(seen) > 0.7 * len(src)  # only the remainders of each bucket wait
    again = pipeline.BudgetPlan(src.lengths, cfg.bucket_widths, [32, 16, 8, 4, 2], seed=1, shuffle=True)
    assert all(np.array_equal(plan(s)[0], again(s)[0]) for s in range(2 * plan.per_epoch))
    assert not np.array_equal(plan(0)[0], plan(plan.per_epoch)[0])  # a new shuffle each epoch
    fixed = pipeline.BatchPlan(
        pipeline._EpochOrder(len(src), 1, True), 8, pipeline.Buckets((256,), src.lengths)
    )
    assert plan.padding_fraction() < 0.5 < fixed.padding_fraction()


def test_budget_pipeline_shards_over_processes(data_dir):
    cfg = _cfg(
        data_dir, bucket_widths=[32, 64, 128, 256], element_budget=512, batch_multiple=2, read_threads=1
    )
    src = mlpf_tfds.source(cfg, "train")
    whole = iter(mlpf_tfds.from_config(src, cfg, seed=0, process_index=0, process_count=1))
    halves = [iter(mlpf_tfds.from_config(src, cfg, seed=0, process_index=p, process_count=2)) for p in (0, 1)]
    widths = set()
    for _ in range(6):
        b = next(whole)
        parts = [next(h) for h in halves]
        widths.add(b["X"].shape[1])
        assert b["X"].shape[0] * b["X"].shape[1] <= 512
        for key in b:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), b[key])
    assert len(widths) > 1


def test_mlpf_config_budget_batches_must_fit_and_divide_over_devices():
    from smilejax import mesh as meshlib
    from smilejax import trainer

    with pytest.raises(ConfigError, match=r"data.element_budget .*raise the budget to at least 65536"):
        config.load("mlpf", ["data.element_budget=16384"])  # 8 events of the widest bucket, 8192
    cfg = config.load(
        "mlpf", ["data.element_budget=1000", "data.batch_multiple=3", "data.bucket_widths=[64, 128]"]
    )
    assert cfg.data.global_batch_sizes() == [6, 15]
    with pytest.raises(
        ConfigError, match=r"batch of 6 events .*raise data.batch_multiple\)=6 must be divisible"
    ):
        trainer.check_batch(cfg, meshlib.build_mesh(cfg.mesh))
    with pytest.raises(ConfigError, match="unknown key"):
        config.load("mlpf", ["data.fields=[X, ytargets]"])


def test_unshuffled_budget_batches_mix_the_buckets(data_dir):
    """Evaluation reads budget batches in one fixed order that does not start with all small events."""
    cfg = _cfg(data_dir, bucket_widths=[16, 32, 64, 128, 256], element_budget=512, batch_multiple=2)
    src = mlpf_tfds.source(cfg, "train")
    plan = pipeline.BudgetPlan(src.lengths, cfg.bucket_widths, [32, 16, 8, 4, 2], seed=0, shuffle=False)
    widths = [plan(s)[1] for s in range(plan.per_epoch)]
    assert widths == [plan(s + plan.per_epoch)[1] for s in range(plan.per_epoch)]  # the same every epoch
    assert len(set(widths)) > 1 and widths != sorted(widths)


# ---------------------------------------------------------------- bad datasets


def _write_raw(root, events, **kw):
    """Write events without the writer's own checks (as a foreign or damaged dataset would be)."""
    original = fmt.check_event
    fmt.check_event = lambda event, where: {k: np.asarray(v, np.float32) for k, v in event.items()}
    try:
        return fmt.write(root, NAME, {"train": events, "test": events[:2]}, **kw)
    finally:
        fmt.check_event = original


def _events(n=4):
    return mlpf_synthetic.generate(n, seed=9, mean_particles=20)


def test_wrong_version_and_config_name_what_is_on_disk(data_dir):
    with pytest.raises(
        FileNotFoundError, match=r"version 2\.5\.0 is not on disk \(versions there: \['3\.1\.0'\]\)"
    ):
        mlpf_tfds.source(_cfg(data_dir, datasets=[f"{NAME}:2.5.0"]), "train")
    with pytest.raises(FileNotFoundError, match=r"no builder config 7 .* \(it has: \['1', '2'\]\)"):
        mlpf_tfds.source(_cfg(data_dir, configs=[1, 7]), "train")
    with pytest.raises(
        FileNotFoundError, match=r"no dataset 'clic_edm_ttbar_pf' .*it has: \['clic_edm_qq_pf'\]"
    ):
        mlpf_tfds.source(_cfg(data_dir, datasets=["clic_edm_ttbar_pf"]), "train")


def test_feature_layout_mismatch_names_the_feature(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    clic = fmt.features_dict

    def cms_like():  # 16 columns instead of CLIC's 17
        d = dict(clic())
        d["X"] = tfds.features.Tensor(shape=(None, 16), dtype=np.float32)
        return tfds.features.FeaturesDict(d)

    events = _events()
    for ev in events:
        ev["X"] = ev["X"][:, :16]
    monkeypatch.setattr(fmt, "features_dict", cms_like)
    fmt.builder_class.cache_clear()
    try:
        _write_raw(tmp_path, events)
    finally:
        fmt.builder_class.cache_clear()
    monkeypatch.undo()
    with pytest.raises(
        ValueError,
        match=r"clic_edm_qq_pf/1:3\.1\.0 split 'train': feature 'X' is float32 of shape \(None, 16\), "
        r"particleflow's layout is float32 of shape \(None, 17\)",
    ):
        mlpf_tfds.source(_cfg(tmp_path, configs=[1]), "train")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda ev: ev["X"].__setitem__((3, 0), 4), r"record \d+: feature 'X' element 3 has element type 4"),
        (
            lambda ev: ev["X"].__setitem__((2, 5), np.nan),
            r"record \d+: feature 'X' has NaN/inf \(element 2, column 5\)",
        ),
        (
            lambda ev: ev["ytarget"].__setitem__((0, 0), 7),
            r"record \d+: feature 'ytarget' element 0 has class index 7",
        ),
        (lambda ev: ev.__setitem__("genmet", np.float32(np.inf)), r"record \d+: feature 'genmet' has NaN"),
    ],
)
def test_bad_event_names_dataset_split_record_feature(tmp_path, damage, message):
    events = _events()
    damage(events[1])
    _write_raw(tmp_path, events)
    src = mlpf_tfds.source(_cfg(tmp_path, configs=[1]), "train")
    errors = []
    for record in range(len(src)):  # TFDS shuffles records on writing: find the damaged one
        try:
            src.read(np.array([record]), width=256)
        except ValueError as err:
            errors.append((record, str(err)))
    assert len(errors) == 1, errors  # the intact events read fine
    record, text = errors[0]
    assert re.search(rf"clic_edm_qq_pf/1:3\.1\.0 split 'train' {message}", text), text
    assert f"record {record}:" in text
    # the element-count pass that batching needs finds it before any batch is made
    with pytest.raises(ValueError, match=f"record {record}:"):
        _ = src.lengths


def test_writer_refuses_bad_events(tmp_path):
    events = _events()
    events[2]["ycand"] = events[2]["ycand"][:, :12]
    with pytest.raises(
        ValueError, match=r"event 2: feature 'ycand' has shape \(\d+, 12\), expected \(\d+, 13\)"
    ):
        fmt.write(tmp_path, NAME, {"train": events})
    assert not (tmp_path / NAME / "1" / "3.1.0").exists()  # nothing half-written under the final name


def test_event_longer_than_the_largest_bucket(data_dir):
    src = mlpf_tfds.source(_cfg(data_dir, bucket_widths=[16, 32]), "train")
    with pytest.raises(
        ValueError, match=r"record \d+ has \d+ elements, more than the largest of data.bucket_widths \(32\)"
    ):
        _ = src.lengths


def _default_dataset_in(cache: str) -> str:
    os.environ["SMILEJAX_CACHE"] = cache
    return mlpf_synthetic.default_dataset()


def test_two_processes_make_the_default_set_once(tmp_path):
    """srun -n 2 smilejax train mlpf on a fresh cache: one process writes, the other waits and reads."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        dirs = pool.map(_default_dataset_in, [str(tmp_path)] * 2)
    assert dirs[0] == dirs[1]
    cfg = mlpf_tfds.MlpfConfig(path=dirs[0], configs=[1, 2])
    assert len(mlpf_tfds.source(cfg, "train")) == 4000
