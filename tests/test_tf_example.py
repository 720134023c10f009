"""``inputs/tf_example``: serialized ``tf.train.Example`` float features to NumPy, checked against TFDS's
own decoder on a whole dataset and on hand-made records (empty lists, unpacked floats, bad records)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from smilejax.inputs import mlpf_records, mlpf_tfds, tf_example
from smilejax.models.mlpf import make_synthetic as mlpf_synthetic
from tensorflow_datasets.proto import tf_example_generated_pb2 as example_pb
from tensorflow_datasets.proto import tf_feature_generated_pb2 as pb

SHAPES = {"X": (None, 3), "met": ()}


def _example(**features) -> bytes:
    feature = {}
    for key, value in features.items():
        if isinstance(value, list) and value and isinstance(value[0], int):
            feature[key] = pb.Feature(int64_list=pb.Int64List(value=value))
        else:
            feature[key] = pb.Feature(float_list=pb.FloatList(value=np.ravel(value).tolist()))
    return example_pb.Example(features=pb.Features(feature=feature)).SerializeToString()


def test_every_event_of_a_dataset_decodes_as_tfds_decodes_it(tmp_path):
    mlpf_synthetic.make(tmp_path, 80, seed=5, config=1, mean_particles=30)
    cfg = mlpf_tfds.MlpfConfig(path=str(tmp_path), configs=[1])
    part = mlpf_tfds.parts(cfg, "train")[0]
    source = mlpf_records.open_part(part)
    records = list(range(len(source)))
    ours = mlpf_records.decode(part, source, records)
    theirs = source.__getitems__(records)  # TFDS's NumPy decoder
    assert len(ours) == len(theirs) == 64
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.keys() == set(b)
        for key in a:
            assert a[key].dtype == np.float32 and a[key].flags.writeable
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"record {i} feature {key}")


def test_shapes_scalars_and_empty_lists():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = tf_example.decode_floats(_example(X=x, met=[2.5], other=[1.0]), SHAPES)
    assert set(out) == {"X", "met"}  # features not asked for are skipped
    np.testing.assert_array_equal(out["X"], x)
    assert out["met"].shape == () and float(out["met"]) == 2.5
    empty = tf_example.decode_floats(_example(X=np.zeros((0, 3)), met=[0.0]), SHAPES)
    assert empty["X"].shape == (0, 3)


def _record(float_list: bytes) -> bytes:
    """An Example holding one feature "met" whose FloatList body is ``float_list``, built by hand."""
    feature = b"\x12" + bytes([len(float_list)]) + float_list  # Feature.float_list = 2
    entry = b"\x0a\x03met" + b"\x12" + bytes([len(feature)]) + feature  # map entry: key 1, value 2
    features = b"\x0a" + bytes([len(entry)]) + entry
    return b"\x0a" + bytes([len(features)]) + features


def test_unpacked_floats_are_read_too():
    # FloatList with one 4-byte field (number 1, wire type 5) per value, as some writers emit
    values = [1.5, -2.0, 3.25]
    record = _record(b"".join(b"\x0d" + struct.pack("<f", v) for v in values))
    out = tf_example.decode_floats(record, {"met": (None,)})
    np.testing.assert_array_equal(out["met"], np.float32(values))


def test_records_that_are_no_example_are_refused():
    with pytest.raises(ValueError, match="a packed float list of 5 bytes"):
        tf_example.decode_floats(_record(b"\x0a\x05" + bytes(5)), {"met": (None,)})
    with pytest.raises(ValueError, match="Example: field 1 has wire type 0"):
        tf_example.decode_floats(b"\x08\x01", {"met": (None,)})


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_example(met=[1.0]), "feature 'X' is missing"),
        (_example(X=[1, 2, 3], met=[1.0]), "feature 'X' holds int64 values, not float32"),
        (
            _example(X=np.ones(4), met=[1.0]),
            r"feature 'X' holds 4 values, which do not fill shape \(None, 3\)",
        ),
        (_example(X=np.ones(3), met=[1.0, 2.0]), "feature 'met' is a scalar but holds 2 values"),
        (_example(X=np.ones(3), met=[1.0])[:-3], "malformed record"),
    ],
)
def test_bad_records_name_the_feature(record, message):
    with pytest.raises(ValueError, match=message):
        tf_example.decode_floats(record, SHAPES)
