"""The protocol buffer wire format, read by hand where a message's schema is not at hand as Python
(``tf.train.Example`` records in ``inputs/tf_example``, XLA's ``HloModuleProto`` in ``xla.profile``).

Each field is a varint key ``number << 3 | wire type``, then a varint (type 0), 8 bytes (1), a varint
length and that many bytes (2), or 4 bytes (5).
"""

from __future__ import annotations

from collections.abc import Iterator

Buffer = bytes | bytearray


def varint(buf: Buffer, i: int) -> tuple[int, int]:
    """(value, next position) of the varint at ``i``; IndexError if it runs off the end."""
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def fields(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field of the message in ``buf[start:end]``; for a
    varint, start is its value. ValueError for a message that is not well formed."""
    i, end = start, len(buf) if end is None else end
    try:
        while i < end:
            key, i = varint(buf, i)
            number, kind = key >> 3, key & 7
            if kind == 0:
                value, i = varint(buf, i)
                yield number, kind, value, i
                continue
            if kind == 2:
                size, i = varint(buf, i)
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


def varint_field(message: Buffer, number: int) -> int | None:
    """The top-level varint field ``number`` of a serialized message (None: absent)."""
    for n, kind, value, _ in fields(message):
        if n == number and kind == 0:
            return value
    return None
