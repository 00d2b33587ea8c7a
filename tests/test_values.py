from __future__ import annotations

import enum
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica import values

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
record_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


def same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (1 != 1.0 != True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)  # type: ignore[attr-defined,index]
    return a == b


@given(record_values)
def test_round_trip_is_exact(value: object) -> None:
    values.check(value)
    assert same(values.decode(values.encode(value)), value)


@pytest.mark.parametrize(
    "value", [2**62 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 2**300, -(2**300), 1, 0, -1]
)
def test_ints_stay_ints(value: int) -> None:
    back = values.decode(values.encode(value))
    assert type(back) is int and back == value


def test_one_is_not_one_point_zero_nor_true() -> None:
    assert type(values.decode(values.encode(1))) is int
    assert type(values.decode(values.encode(1.0))) is float
    assert values.decode(values.encode(True)) is True


def test_special_floats() -> None:
    assert math.isnan(values.decode(values.encode(math.nan)))
    assert values.decode(values.encode(-math.inf)) == -math.inf
    assert math.copysign(1, values.decode(values.encode(-0.0))) == -1


class Colour(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [(1, 2), {1, 2}, bytearray(b"x"), Colour.RED, object(), [1, (2,)], {"a": {3: 1}}, {1: "x"}, frozenset()],
)
def test_unsupported_values_are_type_errors(value: object) -> None:
    with pytest.raises(TypeError):
        values.check(value)


def test_nesting_is_bounded() -> None:
    deep: list[object] = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(TypeError, match="nest"):
        values.check(deep)


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x92\x01", b"\xc7\x01\x07x", bytes([0x81, 0x01, 0x01])])
def test_decode_refuses_garbage_with_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        values.decode(raw)
