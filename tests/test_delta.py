from __future__ import annotations

import hashlib
import struct

import pytest

from replica import delta, errors
from replica.delta import Delta


def good(data: bytes = b"\x01\x01\x02\x00\x00") -> Delta:
    return delta.make("doc", "dev-a", 1, data)


def test_checksum_is_stable_and_short() -> None:
    assert delta.checksum("d", "o", 1, b"abc") == delta.checksum("d", "o", 1, b"abc")
    assert len(delta.checksum("d", "o", 1, b"abc")) == delta.CHECKSUM_SIZE
    assert delta.checksum("d", "o", 1, b"abc") != delta.checksum("d", "o", 1, b"abd")


def _spec(*fields: str | int | bytes) -> bytes:
    """docs/protocol.md's *checksum*, written out again from the page."""
    out = b""
    for value in fields:
        if isinstance(value, int):
            out += struct.pack(">Q", value)
        else:
            raw = value.encode() if isinstance(value, str) else value
            out += struct.pack(">Q", len(raw)) + raw
    return hashlib.blake2b(out, digest_size=8).digest()


def test_checksum_is_the_documented_rule() -> None:
    assert delta.checksum("c7/h", "tablet-1", 5, b"\x01\x02") == _spec("delta", "c7/h", "tablet-1", 0, 5, b"\x01\x02")
    assert delta.checksum("c7/h", "tablet-1", 9, b"\x01", 3) == _spec("delta", "c7/h", "tablet-1", 3, 9, b"\x01")
    vv = {"b": 2, "a": 7}
    assert delta.snapshot_checksum("c7/h", vv, b"s") == _spec("snapshot", "c7/h", 2, "a", 7, "b", 2, b"s")


@pytest.mark.parametrize(
    "change",
    [{"origin": "dev-b"}, {"origin": "dev-A"}, {"seq": 4}, {"document": "doc2"}, {"first": 1}],
    ids=["origin", "origin-case", "seq", "document", "first"],
)
def test_a_delta_whose_identity_was_altered_fails_its_checksum(change: dict[str, object]) -> None:
    span = delta.make("doc", "dev-a", 3, b"\x01\x01\x02\x00\x00", first=2)
    assert reason(span._replace(**change)) == errors.REJECT_CHECKSUM  # type: ignore[arg-type]


def test_the_encoding_cannot_be_read_two_ways() -> None:
    """Fields are length-prefixed: moving bytes from one field to the next changes the checksum."""
    data = b"\x01\x01\x02\x00\x00"
    assert delta.checksum("ab", "c", 1, data) != delta.checksum("a", "bc", 1, data)
    assert delta.checksum("d", "o", 1, data) != delta.checksum("d", "o1", 0, data)
    assert delta.snapshot_checksum("d", {"a": 1}, data) != delta.snapshot_checksum("d", {"a": 2}, data)
    assert delta.snapshot_checksum("d", {}, data) != delta.checksum("d", "", 0, data)


@pytest.mark.parametrize(
    ("raw", "value"), [(b"\x00", 0), (b"\x7f", 127), (b"\x80\x01", 128), (b"\xff\xff\xff\xff\x01", 2**29 - 1)]
)
def test_leading_varint(raw: bytes, value: int) -> None:
    assert delta.leading_varint(raw + b"rest") == value


def test_unterminated_varint() -> None:
    assert delta.leading_varint(b"\x80\x80") is None
    assert delta.leading_varint(b"") is None


def test_precheck_accepts_a_good_delta() -> None:
    delta.precheck(good())


def reason(item: Delta, **kwargs: int) -> str:
    with pytest.raises(errors.DeltaRejected) as info:
        delta.precheck(item, **kwargs)
    assert info.value.document == str(item.document)
    return info.value.reason


def test_precheck_refuses_wrong_checksum() -> None:
    assert reason(good()._replace(checksum=b"\x00" * 8)) == errors.REJECT_CHECKSUM


def test_precheck_refuses_too_large() -> None:
    assert reason(good(b"\x00\x00" + b"x" * 100), max_bytes=50) == errors.REJECT_TOO_LARGE


def test_precheck_refuses_the_varint_bomb() -> None:
    bomb = b"\x80\x80\x80\x80\x01"  # leading varint 2**28 in a 5-byte update
    assert reason(delta.make("doc", "dev-a", 1, bomb)) == errors.REJECT_MALFORMED


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x80"])
def test_precheck_refuses_headless_bytes(data: bytes) -> None:
    assert reason(delta.make("doc", "dev-a", 1, data)) == errors.REJECT_MALFORMED


@pytest.mark.parametrize(
    "change",
    [{"seq": 0}, {"seq": -1}, {"seq": 2**63}, {"seq": "1"}, {"data": "text"}, {"origin": 5}, {"checksum": "x"}],
)
def test_precheck_refuses_wrong_types(change: dict[str, object]) -> None:
    assert reason(good()._replace(**change)) == errors.REJECT_INVALID  # type: ignore[arg-type]


def test_rejection_names_document_origin_and_seq() -> None:
    exc = errors.DeltaRejected(errors.REJECT_GAP, "gap", document="d", origin="o", seq=4)
    assert "'d'" in str(exc) and "o#4" in str(exc)
    assert exc.code == errors.REJECT_GAP and exc.retryable
    assert not errors.DeltaRejected(errors.REJECT_CLASH, "x", document="d", origin="o", seq=1).retryable
