"""Serialized ``tf.train.Example`` records of float features, straight to NumPy.

TFDS's NumPy decoder turns each feature's protobuf value list into an array one value at a time; for
MLPF's events (hundreds of elements × (17 + 2 × 13) floats) that was most of the reading time. A float
list is stored as one packed run of little-endian float32s, so this decoder walks the few message
headers (Example → Features → one map entry per feature → FloatList) and hands each run to
``np.frombuffer``: no per-value Python. Only float features are read; anything else raises
``ValueError`` naming the feature, and so does a value count that does not fit the feature's shape.

The wire format is read by ``smilejax.protowire``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from smilejax.protowire import fields

Shape = tuple[int | None, ...]


def _float_list(buf: bytearray, start: int, end: int, key: str) -> np.ndarray:
    """FloatList.value (field 1): packed runs, or (older writers) one 4-byte field per value. The
    views may sit at any byte offset: NumPy reads unaligned float32s correctly."""
    runs = []
    for number, kind, a, b in fields(buf, start, end):
        if number == 1 and kind in (2, 5):
            if (b - a) % 4:
                raise ValueError(f"feature {key!r}: a packed float list of {b - a} bytes")
            runs.append(np.frombuffer(buf, "<f4", (b - a) // 4, a))
    if len(runs) == 1:
        return runs[0]
    return np.concatenate(runs) if runs else np.zeros(0, np.float32)


def _feature_values(buf: bytearray, start: int, end: int, key: str) -> np.ndarray:
    """Feature (oneof bytes_list = 1, float_list = 2, int64_list = 3): the float values."""
    for number, _, a, b in _messages(buf, start, end, key):
        if number == 2:
            return _float_list(buf, a, b, key)
        if number in (1, 3):
            holds = "bytes" if number == 1 else "int64"
            raise ValueError(f"feature {key!r} holds {holds} values, not float32")
    return np.zeros(0, np.float32)  # an empty Feature: no values


def _messages(buf: bytearray, start: int, end: int, what: str):
    """The fields of a message whose fields are all length-delimited (Example, Features, map entries,
    Feature): a varint or fixed-size field there means the record is not a ``tf.train.Example``."""
    for number, kind, a, b in fields(buf, start, end):
        if kind != 2:
            raise ValueError(f"malformed record: {what}: field {number} has wire type {kind}")
        yield number, kind, a, b


def decode_floats(record: bytes, shapes: Mapping[str, Shape]) -> dict[str, np.ndarray]:
    """The float32 features of a serialized ``tf.train.Example`` named in ``shapes`` (one ``None`` for
    a dimension of any length; ``()`` for a scalar), as writable arrays of those shapes."""
    record = bytearray(record)  # one copy per record: the arrays below are views into it, writable
    found: dict[str, np.ndarray] = {}
    for number, _, a, b in _messages(record, 0, len(record), "Example"):
        if number != 1:  # Example.features
            continue
        for entry_number, _, ea, eb in _messages(record, a, b, "Features"):  # map entries
            if entry_number != 1:
                continue
            key, value = None, (0, 0)
            for n, _, fa, fb in _messages(record, ea, eb, "a feature map entry"):
                if n == 1:
                    key = record[fa:fb].decode()
                elif n == 2:
                    value = (fa, fb)
            if key in shapes:
                found[key] = _feature_values(record, *value, key)
    out = {}
    for key, shape in shapes.items():
        if key not in found:
            raise ValueError(f"feature {key!r} is missing from the record")
        out[key] = _reshape(found[key], shape, key)
    return out


def _reshape(values: np.ndarray, shape: Shape, key: str) -> np.ndarray:
    if shape == ():
        if values.size != 1:
            raise ValueError(f"feature {key!r} is a scalar but holds {values.size} values")
        return values.reshape(())
    known = math.prod(d for d in shape if d is not None)
    if known == 0 or values.size % known:
        raise ValueError(f"feature {key!r} holds {values.size} values, which do not fill shape {shape}")
    return values.reshape(tuple(-1 if d is None else d for d in shape))
