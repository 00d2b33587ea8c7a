"""Documents, records and texts through a replica (in memory and on LMDB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import replica.doc as replica_doc
from replica import Replica, delta, errors


@pytest.fixture(params=["lmdb", "memory"])
def replica(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replica]:
    made = (
        Replica.open(tmp_path / "data", replica_id="dev-a")
        if request.param == "lmdb"
        else Replica.in_memory(replica_id="dev-a")
    )
    yield made
    made.close()


def seq(replica: Replica, document: str = "d") -> int:
    return replica.version_vector(document).get(replica.id, 0)


def test_records_crud(replica: Replica) -> None:
    rows = replica.doc("d").records("households")
    rows.put("h1", {"name": "Ada", "members": 3})
    rows.put("h2", {"name": "Bo"})
    assert rows.get("h1") == {"name": "Ada", "members": 3}
    assert rows.ids() == ["h1", "h2"] and list(rows) == ["h1", "h2"] and len(rows) == 2
    assert "h1" in rows and "zz" not in rows and 3 not in rows
    rows.update("h1", {"members": 4, "village": "Kano"})
    assert rows.get("h1") == {"name": "Ada", "members": 4, "village": "Kano"}
    rows.update("h1", {}, unset=["village"])
    assert rows.get("h1") == {"name": "Ada", "members": 4}
    rows.put("h1", {"other": True})
    assert rows.get("h1") == {"other": True}
    rows.delete("h2")
    assert rows.get("h2") is None and rows.ids() == ["h1"]
    assert dict(rows.items()) == {"h1": {"other": True}}
    assert seq(replica) == 6


def test_values_round_trip_exactly(replica: Replica) -> None:
    rows = replica.doc("d").records("r")
    fields = {
        "big": 2**62 + 1,
        "max": 2**63 - 1,
        "min": -(2**63),
        "huge": 2**100,
        "one": 1,
        "float": 1.0,
        "none": None,
        "flag": False,
        "text": "naïve 🌍",
        "blob": b"\x00\xff",
        "nested": [1, {"k": [2**64, 0.5, b"x"]}],
    }
    rows.put("x", fields)
    back = rows.get("x")
    assert back == fields
    assert back is not None and type(back["one"]) is int and type(back["float"]) is float


def test_missing_records_are_key_errors(replica: Replica) -> None:
    rows = replica.doc("d").records("r")
    with pytest.raises(KeyError):
        rows.update("nope", {"a": 1})
    with pytest.raises(KeyError):
        rows.delete("nope")
    assert seq(replica) == 0


@pytest.mark.parametrize(
    ("record_id", "fields"),
    [
        ("x", {"a": (1, 2)}),
        ("x", {"a": {1, 2}}),
        ("x", {"a": 1, "b": object()}),
        ("", {"a": 1}),
        (5, {"a": 1}),
        ("x", {3: 1}),
        ("x", [("a", 1)]),
    ],
)
def test_bad_input_writes_nothing(replica: Replica, record_id: object, fields: object) -> None:
    rows = replica.doc("d").records("r")
    with pytest.raises(TypeError):
        rows.put(record_id, fields)  # type: ignore[arg-type]
    assert seq(replica) == 0 and len(rows) == 0


def test_failed_update_writes_nothing(replica: Replica) -> None:
    rows = replica.doc("d").records("r")
    rows.put("x", {"a": 1})
    with pytest.raises(TypeError):
        rows.update("x", {"b": 2, "c": bytearray(b"no")})
    assert rows.get("x") == {"a": 1} and seq(replica) == 1


def test_text_uses_code_point_indices(replica: Replica) -> None:
    text = replica.doc("d").text("notes")
    text.insert(0, "héllo")
    text.insert(2, "X")
    assert str(text) == "héXllo"
    text.insert(6, "🌍!")
    text.delete(1, 2)
    assert str(text) == "hllo🌍!" and len(text) == 6
    text.delete(4, 1)
    assert str(text) == "hllo!"
    text.insert(0, "ab")
    assert str(text) == "abhllo!"
    assert seq(replica) == 6


def test_text_out_of_range_is_an_index_error(replica: Replica) -> None:
    text = replica.doc("d").text("t")
    text.insert(0, "abc")
    for bad in [
        lambda: text.insert(4, "x"),
        lambda: text.insert(-1, "x"),
        lambda: text.delete(2, 2),
        lambda: text.delete(-1),
        lambda: text.delete(0, -1),
        lambda: text.delete(3),
    ]:
        with pytest.raises(IndexError):
            bad()
    with pytest.raises(TypeError):
        text.insert(0, b"x")  # type: ignore[arg-type]
    assert str(text) == "abc" and seq(replica) == 1


def test_empty_edits_make_no_delta(replica: Replica) -> None:
    document = replica.doc("d")
    document.text("t").insert(0, "")
    document.text("t").delete(0, 0)
    document.records("r").put("x", {})
    document.records("r").update("x", {})
    with document.transaction():
        pass
    assert seq(replica) == 1


def test_transaction_groups_calls_into_one_delta(replica: Replica) -> None:
    document = replica.doc("d")
    with document.transaction():
        document.records("r").put("a", {"v": 1})
        document.records("r").put("b", {"v": 2})
        with document.transaction():
            document.text("t").insert(0, "hi")
        document.text("t").insert(2, "!")
    assert seq(replica) == 1
    assert document.contents() == {"records": {"r": {"a": {"v": 1}, "b": {"v": 2}}}, "texts": {"t": "hi!"}}


def test_a_failing_transaction_keeps_what_it_changed(replica: Replica) -> None:
    document = replica.doc("d")
    with pytest.raises(RuntimeError), document.transaction():
        document.records("r").put("a", {"v": 1})
        raise RuntimeError("boom")
    assert document.records("r").get("a") == {"v": 1}
    assert seq(replica) == 1
    twin = Replica.in_memory()
    twin.ingest(replica.missing_deltas("d", {}))
    assert twin.doc("d").contents() == document.contents()


def test_documents_are_independent(replica: Replica) -> None:
    replica.doc("a/x").records("r").put("1", {"v": 1})
    replica.doc("b").text("t").insert(0, "z")
    assert replica.documents() == ["a/x", "b"]
    assert replica.doc("a/x") is replica.doc("a/x")
    assert replica.doc("b").contents() == {"records": {}, "texts": {"t": "z"}}


def test_bad_document_names(replica: Replica) -> None:
    for bad in ["", "../etc", "a//b", "with space"]:
        with pytest.raises(ValueError, match="document name"):
            replica.doc(bad)


def test_a_log_that_does_not_replay_leaves_the_document_working(replica: Replica) -> None:
    from replica import DataDirError

    document = replica.doc("d")
    document.text("t").insert(0, "a")
    with pytest.raises(DataDirError, match="does not replay"):
        document.rebuild([b"\x01\x02\x03\x04\x05"])
    document.text("t").insert(1, "b")  # still observed: the edit becomes a delta
    assert str(document.text("t")) == "ab" and seq(replica) == 2


@pytest.mark.parametrize("payload", [b"x", b"x" * 20_000], ids=["small", "large"])
def test_local_changes_after_a_remote_apply_are_all_kept(replica: Replica, payload: bytes) -> None:
    """A large remote apply runs with the pycrdt Doc unobserved (its update is not needed), a
    small one observed; afterwards, and after a remote apply that fails, every local change
    is still captured as a delta and replays to the same contents."""
    source = Replica.in_memory(replica_id="dev-b")
    with source.batch():
        for k in range(40):
            source.doc("d").records("r").put(f"s{k}", {"blob": payload})
    incoming = source.missing_deltas("d", {})
    big = sum(len(item.data) for item in incoming) > replica_doc._QUIET_APPLY_BYTES
    assert big == (len(payload) > 1), "the remote deltas are not on the side of the threshold they test"
    assert replica.ingest(incoming).rejected is None
    rows = replica.doc("d").records("r")
    rows.put("after", {"n": 1})
    with replica.doc("d").transaction():
        rows.put("grouped", {"n": 2})
        rows.update("after", {"n": 3})
    assert seq(replica) == 2
    # A remote apply pycrdt refuses, of a large payload, then another local change.
    forged = delta.make("d", "dev-c", 1, b"\x01" + b"\xff" * 5000)
    refused = replica.ingest([forged]).rejected
    assert refused is not None and refused.reason == errors.REJECT_MALFORMED  # pycrdt saw it
    rows.put("later", {"n": 4})
    assert seq(replica) == 3
    twin = Replica.in_memory()
    assert twin.ingest(replica.missing_deltas("d", {})).rejected is None
    assert twin.doc("d").contents() == replica.doc("d").contents()
    assert rows.get("after") == {"n": 3} and rows.get("later") == {"n": 4} and len(rows) == 43
