"""Bad input: every foreign delta that must not be stored is refused cleanly."""

from __future__ import annotations

import random
import time

import pytest

from replica import Delta, Replica, delta, errors

DOC = "d"


def source_deltas() -> list[Delta]:
    source = Replica.in_memory(replica_id="dev-a")
    document = source.doc(DOC)
    document.records("r").put("x", {"a": 1, "big": 2**62 + 1})
    document.text("t").insert(0, "hello world")
    document.records("r").update("x", {"b": "two"})
    document.text("t").delete(2, 3)
    document.records("r").put("y", {"c": [1, 2]})
    return source.missing_deltas(DOC, {})


def replay(replica: Replica) -> dict[str, object]:
    twin = Replica.in_memory()
    result = twin.ingest(replica.missing_deltas(DOC, {}))
    assert result.rejected is None
    return twin.doc(DOC).contents()


def refused(replica: Replica, item: Delta) -> errors.DeltaRejected:
    before = replica.doc(DOC).contents()
    vv = replica.version_vector(DOC)
    result = replica.ingest([item])
    assert result.rejected is not None and result.applied == 0
    assert replica.version_vector(DOC) == vv, "a refused delta was stored"
    assert replica.doc(DOC).contents() == before == replay(replica)
    return result.rejected


@pytest.fixture
def deltas() -> list[Delta]:
    return source_deltas()


@pytest.fixture
def target(deltas: list[Delta]) -> Replica:
    replica = Replica.in_memory(replica_id="dev-b")
    assert replica.ingest(deltas[:2]).applied == 2
    return replica


def test_garbage_is_malformed(target: Replica) -> None:
    garbage_cases = [b"\x01\x02\x03\x04\x05\x06", b"\x02\x00" + b"\xff" * 48, b"\x01\x01\xff\xff\xff\xff\x0f\x00\x09"]
    for garbage in [*garbage_cases, b"\x05hello world"]:
        exc = refused(target, delta.make(DOC, "dev-a", 3, garbage))
        assert exc.reason in (errors.REJECT_MALFORMED,), garbage
        assert (exc.document, exc.origin, exc.seq) == (DOC, "dev-a", 3)


def test_wrong_checksum(target: Replica, deltas: list[Delta]) -> None:
    exc = refused(target, deltas[2]._replace(checksum=delta.checksum(DOC, "dev-a", 3, b"other")))
    assert exc.reason == errors.REJECT_CHECKSUM and not exc.retryable


@pytest.mark.parametrize(
    ("index", "change"),
    [(0, {"origin": "dev-c"}), (3, {"seq": 3}), (0, {"document": "d2"})],
    ids=["origin", "seq", "document"],
)
def test_a_delta_whose_identity_was_altered_is_refused(
    target: Replica, deltas: list[Delta], index: int, change: dict[str, object]
) -> None:
    """Each would otherwise be the next delta of its (document, origin): a
    phantom dev-c#1, the bytes of dev-a#4 as #3, or dev-a#1 in another document."""
    vvs = {name: target.version_vector(name) for name in (DOC, "d2")}
    result = target.ingest([deltas[index]._replace(**change)])  # type: ignore[arg-type]
    assert result.rejected is not None and result.rejected.reason == errors.REJECT_CHECKSUM, result
    assert {name: target.version_vector(name) for name in (DOC, "d2")} == vvs


def test_out_of_order_seq_is_a_gap(target: Replica, deltas: list[Delta]) -> None:
    exc = refused(target, deltas[3])
    assert exc.reason == errors.REJECT_GAP and exc.retryable
    assert "3 to 3" in exc.message


def test_the_varint_bomb_is_refused_before_pycrdt(target: Replica) -> None:
    started = time.perf_counter()
    exc = refused(target, delta.make(DOC, "dev-a", 3, b"\x80\x80\x80\x80\x01"))
    assert exc.reason == errors.REJECT_MALFORMED
    assert time.perf_counter() - started < 0.5


def test_too_large(deltas: list[Delta]) -> None:
    small = Replica.in_memory(max_delta_bytes=16)
    big = max(deltas, key=lambda d: len(d.data))
    assert len(big.data) > 16
    result = small.ingest([big])
    assert result.rejected is not None and result.rejected.reason == errors.REJECT_TOO_LARGE


def test_replica_id_clash(target: Replica, deltas: list[Delta]) -> None:
    imposter = delta.make(DOC, "dev-a", 2, deltas[3].data)
    exc = refused(target, imposter)
    assert exc.reason == errors.REJECT_CLASH and not exc.retryable


def test_own_origin_from_elsewhere_is_a_clash(target: Replica, deltas: list[Delta]) -> None:
    exc = refused(target, delta.make(DOC, "dev-b", 1, deltas[2].data))
    assert exc.reason == errors.REJECT_CLASH


@pytest.mark.parametrize(
    "change", [{"document": "../x"}, {"origin": "bad origin"}, {"document": ""}, {"seq": 0}, {"data": "str"}]
)
def test_invalid_fields(target: Replica, deltas: list[Delta], change: dict[str, object]) -> None:
    item = deltas[2]._replace(**change)  # type: ignore[arg-type]
    if "document" in change or "origin" in change:  # a bad name with its own checksum: refused for the name
        item = delta.make(item.document, item.origin, item.seq, item.data)
    result = target.ingest([item])
    assert result.rejected is not None and result.rejected.reason == errors.REJECT_INVALID
    assert target.version_vector(DOC) == {"dev-a": 2}


def test_ingest_stops_at_the_first_bad_delta_and_keeps_those_before(deltas: list[Delta]) -> None:
    replica = Replica.in_memory()
    bad = deltas[2]._replace(checksum=b"\x00" * 8)
    result = replica.ingest([deltas[0], deltas[1], bad, deltas[3]])
    assert (result.applied, result.duplicates) == (2, 0)
    assert result.rejected is not None and result.rejected.seq == 3
    assert replica.version_vector(DOC) == {"dev-a": 2}
    assert replica.ingest(deltas).applied == 3  # the good ones still go in afterwards


def test_truncated_updates(deltas: list[Delta]) -> None:
    for item in deltas[1:]:
        for cut in range(1, len(item.data)):
            check_any_outcome(deltas, item, item.data[:cut])


def check_any_outcome(deltas: list[Delta], original: Delta, data: bytes) -> errors.DeltaRejected | None:
    """Ingest a damaged (but correctly checksummed) delta: refused with nothing
    stored, or accepted and stored; either way documents equal their log."""
    replica = Replica.in_memory(replica_id="dev-b")
    replica.ingest(deltas[: original.seq - 1])
    before = replica.doc(DOC).contents()
    result = replica.ingest([delta.make(DOC, "dev-a", original.seq, data)])
    if result.rejected is not None:
        assert result.rejected.reason == errors.REJECT_MALFORMED
        assert replica.version_vector(DOC) == {"dev-a": original.seq - 1}
        assert replica.doc(DOC).contents() == before
    else:
        assert replica.version_vector(DOC) == {"dev-a": original.seq}
    assert replica.doc(DOC).contents() == replay(replica)
    # The replica still works: a local edit and a reopen-equivalent replay agree.
    replica.doc(DOC).records("r").put("after", {"ok": True})
    assert replica.doc(DOC).contents() == replay(replica)
    return result.rejected


def test_mutated_updates_including_panics(deltas: list[Delta]) -> None:
    rng = random.Random(20261126)
    panics = refusals = 0
    for _ in range(1500):
        original = rng.choice(deltas[1:])
        data = bytearray(original.data)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        rejected = check_any_outcome(deltas, original, bytes(data))
        if rejected is not None:
            refusals += 1
            panics += "PanicException" in rejected.message
    assert refusals > 100
    assert panics > 0, "no mutation made pycrdt panic; the panic path went untested"
