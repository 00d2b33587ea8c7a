"""Frames: round trips, and nothing but ProtocolError from hostile bytes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica import delta, wire
from replica.wire import ProtocolError

names = st.text(alphabet="abc/-_.0123456789", min_size=1, max_size=20)
vvs = st.dictionaries(names, st.integers(0, 2**63 - 1), max_size=4)
deltas = st.builds(
    lambda origin, seq, data: delta.make("doc/a", origin, seq, data),
    names,
    st.integers(1, 2**63 - 1),
    st.binary(max_size=64),
)
resumes = st.dictionaries(names, st.tuples(st.binary(min_size=8, max_size=8), st.integers(0, 2**40)), max_size=2)
frames = st.one_of(
    st.builds(
        wire.Hello,
        replica_id=names,
        role=st.sampled_from(wire.ROLES),
        credential=st.none() | st.text(min_size=1, max_size=50),
        documents=st.dictionaries(names, vvs, max_size=3),
        mode=st.sampled_from(wire.MODES),
        challenge=st.none() | st.binary(min_size=1, max_size=32),
        proof=st.none() | st.binary(min_size=1, max_size=64),
        resume=resumes,
    ),
    st.builds(
        wire.Welcome,
        replica_id=names,
        role=st.sampled_from(wire.ROLES),
        documents=st.dictionaries(names, vvs, max_size=3),
        denied=st.dictionaries(names, st.tuples(names, st.text(max_size=20)), max_size=2),
        resume=resumes,
    ),
    st.builds(lambda items: wire.Deltas("doc/a", tuple(items)), st.lists(deltas, max_size=5)),
    st.builds(wire.Ack, names, vvs),
    st.builds(wire.Open, names, vvs),
    st.builds(wire.Opened, names, vvs, st.none() | st.tuples(names, st.text(max_size=10))),
    st.just(wire.Done()),
    st.builds(
        wire.Error,
        code=names,
        message=st.text(min_size=1, max_size=30),
        retryable=st.booleans(),
        document=st.none() | names,
        origin=st.none() | names,
        seq=st.none() | st.integers(1, 100),
    ),
)


@given(frames)
def test_round_trip(frame: wire.Frame) -> None:
    assert wire.decode(wire.encode(frame)) == frame


def outcome(data: bytes) -> wire.Frame | ProtocolError:
    """A frame, or the ProtocolError; any other exception escapes and fails."""
    try:
        return wire.decode(data)
    except ProtocolError as exc:
        return exc


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    assert isinstance(outcome(data), ProtocolError | wire.Frame)


@given(frames, st.data())
def test_mutated_frames_raise_only_protocol_errors(frame: wire.Frame, data: st.DataObject) -> None:
    raw = bytearray(wire.encode(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    assert isinstance(outcome(bytes(raw)), ProtocolError | wire.Frame)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([1, 2], "bad_frame"),
        (7, "bad_frame"),
        ({"t": "nope"}, "bad_frame"),
        ({"t": "hello", "v": 99, "id": "a", "role": "device"}, "unsupported_version"),
        ({"t": "hello", "id": "a", "role": "device"}, "bad_frame"),
        ({"t": "hello", "v": wire.VERSION, "id": "a", "role": "king"}, "bad_frame"),
        ({"t": "hello", "v": wire.VERSION, "id": "", "role": "device"}, "bad_frame"),
        ({"t": "hello", "v": wire.VERSION, "id": "a", "role": "device", "docs": {"d": {"o": -1}}}, "bad_frame"),
        ({"t": "hello", "v": wire.VERSION, "id": "a", "role": "device", "docs": {"d": {"o": 1.5}}}, "bad_frame"),
        ({"t": "deltas", "doc": "d", "o": ["x"], "d": [[1, 1, b"12345678", b"\0\0"]]}, "bad_frame"),
        ({"t": "deltas", "doc": "d", "o": ["x"], "d": [[0, 0, b"12345678", b"\0\0"]]}, "bad_frame"),
        ({"t": "deltas", "doc": "d", "o": ["x"], "d": [[0, 1, b"short", b"\0\0"]]}, "bad_frame"),
        ({"t": "deltas", "doc": "d", "o": ["x"], "d": [[0, 1, b"12345678", "text"]]}, "bad_frame"),
        ({"t": "deltas", "doc": "d", "o": [3], "d": []}, "bad_frame"),
        ({"t": "ack", "doc": "d"}, "bad_frame"),
        ({"t": "hello", "v": wire.VERSION, "id": "a", "role": "device", "res": {"d": [b"short", 0]}}, "bad_frame"),
        ({"t": "hello", "v": wire.VERSION, "id": "a", "role": "device", "res": {"d": [b"12345678", -1]}}, "bad_frame"),
        ({"t": "welcome", "v": wire.VERSION, "id": "a", "role": "relay", "res": {"d": b"12345678"}}, "bad_frame"),
        ({"t": "snap", "doc": "d", "vv": {}, "sum": b"short", "n": 2, "at": 0, "d": b"ab"}, "bad_frame"),
        ({"t": "snap", "doc": "d", "vv": {}, "sum": b"12345678", "n": 1, "at": 0, "d": b"ab"}, "bad_frame"),
        ({"t": "snap", "doc": "d", "vv": {}, "sum": b"12345678", "n": 9, "at": -1, "d": b"ab"}, "bad_frame"),
        ({"t": "snap", "doc": "d", "vv": {}, "sum": b"12345678", "n": 9, "at": 0, "d": "text"}, "bad_frame"),
        ({"t": "snap", "doc": "d", "vv": {"o": -1}, "sum": b"12345678", "n": 2, "at": 0, "d": b"ab"}, "bad_frame"),
        ({"t": "error", "code": "x", "msg": "m", "retry": "yes"}, "bad_frame"),
    ],
)
def test_malformed_frames(body: object, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.decode(msgpack.packb(body))
    assert info.value.code == code


def test_text_messages_are_refused() -> None:
    with pytest.raises(ProtocolError):
        wire.decode("hello")  # type: ignore[arg-type]


def test_size_and_batch_limits() -> None:
    with pytest.raises(ProtocolError) as info:
        wire.decode(b"\x00" * 101, max_frame_bytes=100)
    assert info.value.code == "frame_too_large"
    many = wire.Deltas("d", tuple(delta.make("d", "o", i, b"\0\0") for i in range(1, 12)))
    with pytest.raises(ProtocolError) as info:
        wire.decode(wire.encode(many), max_batch=10)
    assert info.value.code == "batch_too_large"


def test_deltas_share_an_origin_table() -> None:
    items = tuple(delta.make("d", "a-long-origin-name", i, b"\0\0") for i in range(1, 101))
    encoded = wire.encode(wire.Deltas("d", items))
    assert encoded.count(b"a-long-origin-name") == 1
    assert wire.decode(encoded) == wire.Deltas("d", items)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_side_is_told_to_update(version: int) -> None:
    """Version 2 added snapshots, 3 spans, 4 checksums over a delta's identity:
    an app or relay of an older version could not check what it is sent."""
    assert wire.VERSION == 4
    with pytest.raises(ProtocolError) as info:
        wire.decode(msgpack.packb({"t": "hello", "v": version, "id": "a", "role": "device"}))
    assert info.value.code == "unsupported_version" and "update the app or the relay" in info.value.message


def test_a_snapshot_travels_in_parts_and_is_gathered_whole() -> None:
    from replica.delta import make_snapshot

    data = bytes(range(256)) * 40
    whole = make_snapshot("c7/h", {"dev-a": 9}, data)
    parts = wire.snapshot_parts(whole, max_frame_bytes=2048)
    assert len(parts) == 10 and all(len(p.data) <= 1024 for p in parts)
    gathering = wire.SnapshotParts(max_bytes=1 << 20)
    decoded = [wire.decode(wire.encode(part)) for part in parts]
    assert [gathering.add(p) for p in decoded[:-1]] == [None] * 9  # type: ignore[arg-type]
    assert gathering.add(decoded[-1]) == whole  # type: ignore[arg-type]
    with pytest.raises(ProtocolError) as info:
        wire.SnapshotParts(max_bytes=1 << 20).add(parts[3])  # not from the start
    assert info.value.code == "unexpected_frame"
    with pytest.raises(ProtocolError) as info:
        wire.SnapshotParts(max_bytes=100).add(parts[0])
    assert info.value.code == "snapshot_too_large"
