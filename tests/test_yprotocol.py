"""The y-protocols codec (``replica.yprotocol``): messages round-trip, and
anything malformed is a ``ProtocolError``, never an exception of another kind."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Text

from replica import yprotocol


def test_sync_messages_round_trip() -> None:
    doc: Doc[Any] = Doc()
    doc.get("text:notes", type=Text).insert(0, "hi")
    vector, update = doc.get_state(), doc.get_update()
    assert yprotocol.parse(yprotocol.sync_step1(vector)) == yprotocol.SyncStep1(vector)
    assert yprotocol.parse(yprotocol.sync_step2(update)) == yprotocol.SyncStep2(update)
    assert yprotocol.parse(yprotocol.update(update)) == yprotocol.Update(update)
    assert yprotocol.read_state_vector(vector) == {doc.client_id: 2}
    assert yprotocol.parse(yprotocol.query_awareness()) == yprotocol.QueryAwareness()
    assert yprotocol.parse(yprotocol.permission_denied("no")) == yprotocol.PermissionDenied("no")


def test_awareness_round_trips() -> None:
    states = (yprotocol.AwarenessState(2**40, 3, '{"user":"é"}'), yprotocol.AwarenessState(1, 4, "null"))
    parsed = yprotocol.parse(yprotocol.awareness(states))
    assert parsed == yprotocol.Awareness(states)
    assert [entry.removed for entry in states] == [False, True]


def test_the_state_helpers_match_pycrdt() -> None:
    doc: Doc[Any] = Doc()
    doc.get("text:notes", type=Text).insert(0, "hello")
    state = doc.get_update()
    assert yprotocol.state_vector(state) == doc.get_state()
    other: Doc[Any] = Doc()
    other.apply_update(yprotocol.missing_from(state, other.get_state()))
    assert str(other.get("text:notes", type=Text)) == "hello"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"", "yjs_malformed"),
        (b"\x07", "yjs_malformed"),
        (b"\x00\x05", "yjs_malformed"),
        (b"\x00\x00\x03\x01\x01", "yjs_malformed"),  # a state vector cut short
        (b"\x00\x02\xff\xff\xff\x7f", "yjs_too_large"),
        (b"\x00\x02\x01\x00\x00", "yjs_malformed"),  # trailing bytes
        (b"\x01\x05\x01\x01\x01\x01{", "yjs_malformed"),  # awareness state that is not JSON
        (b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "yjs_malformed"),
        ("text", "yjs_malformed"),
    ],
)
def test_malformed_messages_are_protocol_errors(message: Any, code: str) -> None:
    with pytest.raises(yprotocol.ProtocolError) as caught:
        yprotocol.parse(message, max_update_bytes=1024)
    assert caught.value.code == code


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_a_protocol_error(data: bytes) -> None:
    with contextlib.suppress(yprotocol.ProtocolError):
        yprotocol.parse(data)
