"""Serialized ``tf.train.Example`` records of float features, straight to NumPy.

TFDS's NumPy decoder turns each feature's protobuf value list into an array one value at a time; for
MLPF's events (hundreds of elements × (17 + 2 × 13) floats) that was most of the reading time. A float
list is stored as one packed run of little-endian float32s, so this decoder walks the few message
headers (Example → Features → one map entry per feature → FloatList) and hands each run to
``np.frombuffer``: no per-value Python. Only float features are read; anything else raises
``ValueError`` naming the feature, and so does a value count that does not fit the feature's shape.

Wire format (protobuf): each field is a varint key ``number << 3 | wire type`` followed by a varint
(type 0), 8 bytes (1), a varint length and that many bytes (2), or 4 bytes (5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

Shape = tuple[int | None, ...]


def _varint(buf: bytes | bytearray, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _fields(
    buf: bytes | bytearray, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field; for a varint, start is its value."""
    i, end = start, len(buf) if end is None else end
    try:
        while i < end:
            key, i = _varint(buf, i)
            number, kind = key >> 3, key & 7
            if kind == 0:
                value, i = _varint(buf, i)
                yield number, kind, value, i
                continue
            if kind == 2:
                size, i = _varint(buf, i)
            elif kind in (1, 5):
                size = 8 if kind == 1 else 4
            else:
                raise ValueError(f"malformed record: wire type {kind} at byte {i}")
            if i + size > end:
                break
            yield number, kind, i, i + size
            i += size
    except IndexError:  # a varint ran off the end
        i = end + 1
    if i != end:
        raise ValueError(f"malformed record: a field runs past its message (byte {i} of {end})")


def _float_list(buf: bytearray, start: int, end: int) -> np.ndarray:
    """FloatList.value (field 1): packed runs, or (older writers) one 4-byte field per value."""
    runs = []
    for number, kind, a, b in _fields(buf, start, end):
        if number == 1 and kind in (2, 5):
            runs.append(np.frombuffer(buf, "<f4", (b - a) // 4, a))
    if len(runs) == 1:
        return runs[0]
    return np.concatenate(runs) if runs else np.zeros(0, np.float32)


def _feature_values(buf: bytearray, start: int, end: int, key: str) -> np.ndarray:
    """Feature (oneof bytes_list = 1, float_list = 2, int64_list = 3): the float values."""
    for number, _, a, b in _fields(buf, start, end):
        if number == 2:
            return _float_list(buf, a, b)
        if number in (1, 3):
            kind = "bytes" if number == 1 else "int64"
            raise ValueError(f"feature {key!r} holds {kind} values, not float32")
    return np.zeros(0, np.float32)  # an empty Feature: no values


def decode_floats(record: bytes, shapes: Mapping[str, Shape]) -> dict[str, np.ndarray]:
    """The float32 features of a serialized ``tf.train.Example`` named in ``shapes`` (one ``None`` for
    a dimension of any length; ``()`` for a scalar), as writable arrays of those shapes."""
    record = bytearray(record)  # one copy per record: the arrays below are views into it, writable
    found: dict[str, np.ndarray] = {}
    for number, kind, a, b in _fields(record):
        if number != 1 or kind != 2:  # Example.features
            continue
        for entry_number, _, ea, eb in _fields(record, a, b):  # Features.feature: map entries
            if entry_number != 1:
                continue
            key, value = None, (0, 0)
            for n, _, fa, fb in _fields(record, ea, eb):
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
