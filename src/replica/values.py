"""Exact codec for record field values.

pycrdt turns ints into floats and changes large ones (PYCRDT-FACTS.md), so the
record layer never hands Python values to the CRDT: each field value is encoded
here to bytes and stored as an opaque Yjs binary. What a user stores is what
every replica reads back, type for type:

- ``None``, ``bool``, ``int`` (any size), ``float``, ``str``, ``bytes``;
- ``list`` and ``dict`` (string keys) of these, nested.

Anything else (tuples, sets, bytearrays, subclasses such as ``IntEnum``...) is a
``TypeError`` before anything is written, because it could not come back as the
same type. Encoding is msgpack; integers outside msgpack's 64-bit range use an
extension type holding the two's-complement bytes.
"""

from __future__ import annotations

from typing import Any

import msgpack

_BIG_INT = 1  # msgpack extension code for ints outside [-2**63, 2**64 - 1]
_MAX_DEPTH = 64
_SCALARS = (type(None), bool, float, str, bytes)

Value = Any  # None | bool | int | float | str | bytes | list[Value] | dict[str, Value]


def check(value: Value, _depth: int = 0) -> None:
    """Raise ``TypeError`` unless ``value`` round-trips exactly."""
    kind = type(value)
    if kind in _SCALARS or kind is int:
        return
    if _depth >= _MAX_DEPTH:
        raise TypeError(f"record values may nest at most {_MAX_DEPTH} levels deep")
    if kind is list:
        for item in value:
            check(item, _depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"dict keys in record values must be str, not {type(key).__name__}: {key!r}")
            check(item, _depth + 1)
        return
    raise TypeError(
        f"unsupported record value of type {kind.__name__}: {value!r:.80}; "
        "use None, bool, int, float, str, bytes, or lists/dicts of these"
    )


def _default(obj: object) -> msgpack.ExtType:
    if type(obj) is int:  # only reached for ints msgpack cannot hold natively
        length = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(_BIG_INT, obj.to_bytes(length, "big", signed=True))
    raise TypeError(f"unsupported record value of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> object:
    if code == _BIG_INT:
        return int.from_bytes(data, "big", signed=True)
    raise ValueError(f"unknown value extension type {code}")


_PACKER = msgpack.Packer(default=_default, use_bin_type=True, strict_types=True)


def encode(value: Value) -> bytes:
    """Encode one checked value. Call :func:`check` first."""
    packed: bytes = _PACKER.pack(value)
    return packed


def decode(data: bytes | bytearray) -> Value:
    """Decode bytes made by :func:`encode`; ``ValueError`` if they are not."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_ext_hook, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"not an encoded record value: {exc}") from exc
