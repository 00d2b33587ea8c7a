"""Session events (``replica.events``): frozen dataclasses, and what ingesting a batch reports."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from replica import events
from replica.delta import make
from replica.errors import REJECT_GAP, DeltaRejected, ErrorInfo
from replica.events import (
    Acknowledged,
    Closed,
    Completed,
    Connected,
    Denied,
    Event,
    Incoming,
    IncomingSnapshot,
    IncomingSnapshotPart,
    IngestResult,
    Rejected,
)

DELTA = make("c7/h", "dev-a", 1, b"\x01\x00")

EXAMPLES: list[object] = [
    Connected("relay-1", "relay", {"c7/h": {"dev-b": 2}}, 3, 2),
    Incoming("c7/h", (DELTA,)),
    IncomingSnapshotPart("c7/h", {"dev-a": 3}, b"12345678", 10, 0, b"\x01\x00"),
    Acknowledged("relay-1", "relay", "c7/h", {"dev-a": 1}, 1),
    Denied("secret/x", "document_out_of_scope", "not covered"),
    Rejected("c7/h", "dev-a", 4, "delta_too_large", "too large"),
    Completed(),
    Closed(None),
    IngestResult(1, 0),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_events_are_frozen(event: object) -> None:
    assert dataclasses.is_dataclass(event)
    fields = dataclasses.fields(event)
    name = fields[0].name if fields else "anything"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, name, None)


def test_events_compare_by_value() -> None:
    assert Completed() == Completed()
    assert Closed(None) == Closed(None)
    error = ErrorInfo("timeout", "nothing heard", True)
    assert Closed(error) == Closed(ErrorInfo("timeout", "nothing heard", True))
    assert Closed(error) != Closed(None)
    assert Acknowledged("r", "relay", "d", {"a": 1}, 1) != Acknowledged("r", "relay", "d", {"a": 2}, 1)


def test_the_event_union_names_every_session_event() -> None:
    assert set(typing.get_args(Event)) == {
        Connected,
        Incoming,
        IncomingSnapshot,
        IncomingSnapshotPart,
        Acknowledged,
        Denied,
        Rejected,
        Completed,
        Closed,
    }
    assert IngestResult not in typing.get_args(Event)  # it goes the other way: engine to session


def test_connected_carries_no_relay_answer_by_default() -> None:
    event = Connected("dev-b", "peer", {}, 0, 0)
    assert event.credential is None and event.relay_key is None
    answered = Connected("relay-1", "relay", {}, 0, 0, credential="rc1.x", relay_key=b"k" * 32)
    assert (answered.credential, answered.relay_key) == ("rc1.x", b"k" * 32)


def test_incoming_keeps_its_deltas_in_order() -> None:
    second = make("c7/h", "dev-a", 2, b"\x01\x01")
    batch = Incoming("c7/h", (DELTA, second))
    assert [d.seq for d in batch.deltas] == [1, 2]


def test_an_ingest_result_has_no_rejection_by_default() -> None:
    result = IngestResult(applied=3, duplicates=2)
    assert (result.applied, result.duplicates, result.rejected) == (3, 2, None)
    assert result == IngestResult(3, 2, None)


def test_an_ingest_result_can_carry_the_refused_delta() -> None:
    refused = DeltaRejected(REJECT_GAP, "seq 5 after 3", document="c7/h", origin="dev-a", seq=5)
    result = IngestResult(1, 0, refused)
    assert result.rejected is refused
    assert result.rejected.seq == 5


def test_the_module_exports_what_the_edges_import() -> None:
    for name in ("Connected", "Incoming", "Acknowledged", "Denied", "Rejected", "Completed", "Closed", "IngestResult"):
        assert hasattr(events, name), name
