"""Version-vector arithmetic (``replica.vv``): covers, merge, counts, vectors of deltas."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replica import vv
from replica.delta import Delta, make

ORIGINS = st.sampled_from(["dev-a", "dev-b", "dev-c", "relay-1"])
VECTORS = st.dictionaries(ORIGINS, st.integers(min_value=1, max_value=50), max_size=4)


def delta(document: str, origin: str, seq: int) -> Delta:
    return make(document, origin, seq, b"\x01\x00" + bytes([seq % 256]))


# -- covers ------------------------------------------------------------------


def test_covers_compares_every_origin() -> None:
    assert vv.covers({"a": 3, "b": 1}, {"a": 3})
    assert vv.covers({"a": 3, "b": 1}, {"a": 2, "b": 1})
    assert not vv.covers({"a": 3}, {"a": 4})
    assert not vv.covers({"a": 3}, {"a": 1, "b": 1})  # an origin it has never seen


def test_covers_the_empty_vector_and_not_the_reverse() -> None:
    assert vv.covers({}, {})
    assert vv.covers({"a": 1}, {})
    assert not vv.covers({}, {"a": 1})


# -- merge -------------------------------------------------------------------


def test_merge_raises_each_origin_to_the_higher_seq() -> None:
    into = {"a": 2, "b": 7}
    vv.merge(into, {"a": 5, "c": 1})
    assert into == {"a": 5, "b": 7, "c": 1}


def test_merge_never_lowers_an_origin() -> None:
    into = {"a": 9, "b": 4}
    vv.merge(into, {"a": 3, "b": 4})
    assert into == {"a": 9, "b": 4}


def test_merge_does_not_touch_the_other_vector() -> None:
    other = {"a": 5}
    into: vv.VersionVector = {}
    vv.merge(into, other)
    into["a"] = 99
    assert other == {"a": 5}


# -- count_missing -----------------------------------------------------------


def test_count_missing_subtracts_per_origin() -> None:
    assert vv.count_missing({"a": 3, "b": 10}, {"a": 5, "b": 2, "c": 4}) == 2 + 0 + 4
    assert vv.count_missing({"a": 5}, {"a": 5}) == 0
    assert vv.count_missing({}, {"a": 7}) == 7
    assert vv.count_missing({"a": 7}, {}) == 0


# -- vectors of deltas -------------------------------------------------------


def test_of_deltas_keeps_the_highest_seq_of_each_origin() -> None:
    deltas = [delta("d", "a", 2), delta("d", "a", 1), delta("d", "b", 3), delta("d", "a", 4)]
    assert vv.of_deltas(deltas) == {"a": 4, "b": 3}
    assert vv.of_deltas([]) == {}


def test_by_document_splits_the_vectors_per_document() -> None:
    deltas = [
        delta("c7/h", "a", 1),
        delta("c7/h", "a", 2),
        delta("c7/v", "a", 5),
        delta("c7/h", "b", 1),
        delta("c7/v", "b", 3),
        delta("c7/v", "b", 2),
    ]
    assert vv.by_document(deltas) == {"c7/h": {"a": 2, "b": 1}, "c7/v": {"a": 5, "b": 3}}
    assert vv.by_document([]) == {}


def test_by_document_agrees_with_of_deltas_for_one_document() -> None:
    deltas = [delta("x", "a", 3), delta("x", "b", 1), delta("x", "a", 1)]
    assert vv.by_document(deltas) == {"x": vv.of_deltas(deltas)}


# -- properties --------------------------------------------------------------


@given(VECTORS, VECTORS)
def test_merge_covers_both_sides(a: vv.VersionVector, b: vv.VersionVector) -> None:
    merged = dict(a)
    vv.merge(merged, b)
    assert vv.covers(merged, a) and vv.covers(merged, b)
    assert set(merged) == set(a) | set(b)
    assert all(merged[o] == max(a.get(o, 0), b.get(o, 0)) for o in merged)


@given(VECTORS, VECTORS)
def test_nothing_is_missing_exactly_when_covered(have: vv.VersionVector, want: vv.VersionVector) -> None:
    assert (vv.count_missing(have, want) == 0) == vv.covers(have, want)


@given(VECTORS, VECTORS)
def test_after_merging_nothing_is_missing(have: vv.VersionVector, want: vv.VersionVector) -> None:
    missing = vv.count_missing(have, want)
    merged = dict(have)
    vv.merge(merged, want)
    assert vv.count_missing(merged, want) == 0
    assert vv.count_missing(have, merged) == missing  # what merge added is exactly what was missing


@given(st.lists(st.tuples(st.sampled_from(["d1", "d2"]), ORIGINS, st.integers(1, 20)), max_size=30))
def test_by_document_is_of_deltas_per_document(items: list[tuple[str, str, int]]) -> None:
    deltas = [delta(document, origin, seq) for document, origin, seq in items]
    expected = {name: vv.of_deltas(d for d in deltas if d.document == name) for name in {d.document for d in deltas}}
    assert vv.by_document(deltas) == expected
