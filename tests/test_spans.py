"""Spans (issue 12): a relay sends each run of one origin's deltas as one
merged delta; a receiver checks, applies and stores it as one item, and every
count still reads as if it held the deltas one by one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
import pytest

from replica import Replica, spans, wire
from replica.delta import Delta, checksum, make
from replica.engine import Engine
from replica.errors import REJECT_CHECKSUM, REJECT_CLASH, REJECT_GAP, REJECT_INVALID, ReplicaError
from replica.relay import Relay
from replica.status import SyncState
from replica.testing.checks import log_version_vectors

DOC = "c7/households"
HOUR = 3600.0


def written(path: Path, n: int, replica_id: str = "writer") -> list[Delta]:
    """``n`` deltas of one origin (records put one transaction each)."""
    with Replica.open(path, replica_id=replica_id) as writer:
        rows = writer.doc(DOC).records("households")
        with writer.batch():
            for i in range(n):
                rows.put(f"h{i % 40}", {"head": f"name {i}", "n": i})
        return writer.missing_deltas(DOC, {})


def contents(replica: Engine) -> dict[str, object]:
    return dict(replica.doc(DOC).records("households").items())


@pytest.fixture
def history(tmp_path: Path) -> list[Delta]:
    return written(tmp_path / "source", 60)


# -- making spans ------------------------------------------------------------------


def test_runs_of_one_origin_become_spans_and_the_rest_stays(history: list[Delta]) -> None:
    other = make(DOC, "other", 1, history[0].data)
    items = [*history[:20], other, *history[20:60]]
    out = spans.group(items, spans.merge_run, shortest=16, longest=25)
    assert [(d.origin, d.start, d.seq, bool(d.first)) for d in out] == [
        ("writer", 1, 20, True),
        ("other", 1, 1, False),
        ("writer", 21, 45, True),  # at most 25 a span; the 15 left are too few for one
        *[("writer", s, s, False) for s in range(46, 61)],
    ]
    assert sum(d.length for d in out) == len(items)
    assert all(d.checksum == checksum(d.document, d.origin, d.seq, d.data, d.first) for d in out)
    gap = [*history[:10], *history[11:30]]  # seq 11 missing: two runs, not one
    assert [(d.start, d.seq) for d in spans.group(gap, spans.merge_run, shortest=10)] == [(1, 10), (12, 30)]


def test_a_run_that_does_not_merge_goes_as_it_is(history: list[Delta]) -> None:
    def refuse(run: object) -> Delta:
        raise ValueError("no")

    assert spans.group(history, refuse, shortest=2) == history


def test_the_cache_merges_each_run_once(history: list[Delta]) -> None:
    cache = spans.SpanCache()
    made = cache.span(history[:30])
    assert cache.span(history[:30]) is made
    assert cache.span(history[:31]) is not made
    tiny = spans.SpanCache(budget_bytes=1)
    first = tiny.span(history[:30])
    tiny.span(history[30:])
    assert tiny.span(history[:30]) is not first  # dropped to stay within its budget


# -- on the wire -------------------------------------------------------------------


def test_a_span_crosses_the_wire_and_bad_ones_are_refused(history: list[Delta]) -> None:
    span = spans.merge_run(history[:30])
    frame = wire.decode(wire.encode(wire.Deltas(DOC, (span, history[30]))))
    assert isinstance(frame, wire.Deltas) and frame.deltas == (span, history[30])
    for first in (0, 30, 31, -1, "1", True, None):
        row = [0, span.seq, span.checksum, span.data, first]
        bad = msgpack.packb({"t": "deltas", "doc": DOC, "o": ["writer"], "d": [row]}, use_bin_type=True)
        with pytest.raises(ReplicaError):
            wire.decode(bad)


# -- in the log and through ingest ----------------------------------------------------


def test_a_span_is_held_as_one_item_and_counted_as_its_deltas(tmp_path: Path, history: list[Delta]) -> None:
    span = spans.merge_run(history[10:50])
    with Engine.open(tmp_path / "r", replica_id="receiver") as receiver:
        assert receiver.ingest(history[:10]).applied == 10
        result = receiver.ingest([span])
        assert result.rejected is None and result.applied == 1
        assert receiver.version_vector(DOC) == {"writer": 50}
        assert receiver.tail_length(DOC) == 50  # counted as the deltas it stands for
        assert receiver.checksum_of(DOC, "writer", 50) is None  # not comparable with any one delta
        assert receiver.tips(DOC) == {}
        assert [(d.start, d.seq) for d in receiver.missing_deltas(DOC, {"writer": 30})] == [(11, 50)]
        assert receiver.missing_deltas(DOC, {"writer": 50}) == []
        # held: a duplicate, whole or in part; what follows applies
        again = receiver.ingest([span, history[20], spans.merge_run(history[40:55]), *history[55:]])
        assert again.rejected is None and (again.applied, again.duplicates) == (6, 2)
        log_version_vectors(receiver)
        held = contents(receiver)
    with Engine.open(tmp_path / "r") as reopened:  # replays the span in its place
        assert contents(reopened) == held and reopened.version_vector(DOC) == {"writer": 60}


def test_bad_spans_are_refused_before_anything_is_stored(tmp_path: Path, history: list[Delta]) -> None:
    span = spans.merge_run(history[10:40])
    with Engine.open(tmp_path / "r", replica_id="receiver") as receiver:
        receiver.ingest(history[:5])
        gap = receiver.ingest([span])  # seqs 6..10 must come first
        assert gap.rejected is not None and gap.rejected.reason == REJECT_GAP
        damaged = receiver.ingest([*history[5:10], span._replace(data=span.data[:-1] + b"\x01")])
        assert damaged.rejected is not None and damaged.rejected.reason == REJECT_CHECKSUM
        assert damaged.applied == 5  # what came before it is stored
        mine = spans.merge_run(written(tmp_path / "twin", 30, replica_id="receiver"))
        clash = receiver.ingest([mine])
        assert clash.rejected is not None and clash.rejected.reason == REJECT_CLASH
        backwards = receiver.ingest([span._replace(first=41)])
        assert backwards.rejected is not None and backwards.rejected.reason == REJECT_INVALID
        assert receiver.version_vector(DOC) == {"writer": 10}


def test_compaction_counts_a_span_as_its_deltas(tmp_path: Path, history: list[Delta]) -> None:
    with Engine.open(tmp_path / "r", replica_id="receiver") as receiver:
        receiver.ingest([spans.merge_run(history[:20]), spans.merge_run(history[20:50]), *history[50:]])
        held = contents(receiver)
        assert receiver.compact(bound=None, keep=15) == 20  # 21..50 would leave fewer than 15 one by one
        assert [(d.start, d.seq) for d in receiver.missing_deltas(DOC, {})] == [(21, 50)] + [
            (s, s) for s in range(51, 61)
        ]
        log_version_vectors(receiver)
        assert receiver.compact(bound=None) == 40 and receiver.tail_length(DOC) == 0
        assert contents(receiver) == held
    with Engine.open(tmp_path / "r") as reopened:
        assert contents(reopened) == held and reopened.version_vector(DOC) == {"writer": 60}


def test_a_state_that_covers_part_of_a_span_keeps_the_span(tmp_path: Path, history: list[Delta]) -> None:
    with Engine.open(tmp_path / "r", replica_id="receiver") as receiver:
        receiver.ingest([*history[:10], spans.merge_run(history[10:50])])
        source = Engine.in_memory(replica_id="source")
        source.ingest(history[:30] + written(tmp_path / "other", 1, replica_id="other"))
        source.compact(bound=None)
        state = source.snapshot_for(DOC, {})
        assert state is not None and state.vv == {"writer": 30, "other": 1}
        assert receiver.ingest_snapshot(state).rejected is None
        assert [(d.start, d.seq) for d in receiver.missing_deltas(DOC, {})] == [(11, 50)]
        assert receiver.version_vector(DOC) == {"writer": 50, "other": 1}
        log_version_vectors(receiver)
        held = contents(receiver)
    with Engine.open(tmp_path / "r") as reopened:
        assert contents(reopened) == held


# -- through a real relay and a peer ----------------------------------------------------


def test_a_relay_sends_spans_devices_send_deltas_and_peers_pass_spans_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0, compact_every=None) as relay:
            token = lambda name: relay.issue_credential(name, ["c7/*"], expires_at=time.time() + HOUR)  # noqa: E731
            with Replica.open(tmp_path / "phone", replica_id="phone") as phone:  # knows the relay, holds nothing
                assert (await phone.sync(relay.url, credential=token("phone"))).state is SyncState.SYNCED
            written(tmp_path / "writer", 2_000)
            with Replica.open(tmp_path / "writer") as writer:
                up = await writer.sync(relay.url, credential=token("writer"))
                assert up.state is SyncState.SYNCED and up.progress.sent == 2_000
                expected = contents(writer)
            assert relay.replica is not None
            assert all(not d.first for d in relay.replica.missing_deltas(DOC, {}))  # uploads go one by one
            with (
                Replica.open(tmp_path / "tablet", replica_id="tablet") as tablet,
                Replica.open(tmp_path / "phone") as phone,
            ):
                down = await tablet.sync(relay.url, credential=token("tablet"))
                assert down.state is SyncState.SYNCED and down.unsynced == 0, down
                assert down.progress.received == 2_000 == down.progress.to_receive
                items = tablet.missing_deltas(DOC, {})
                assert len(items) < 2_000 // 10 and sum(d.length for d in items) == 2_000
                assert contents(tablet) == expected and log_version_vectors(tablet) == {DOC: {"writer": 2_000}}
                tablet.doc(DOC).records("households").put("t-1", {"head": "T"})
                async with await tablet.serve_peers("127.0.0.1", 0) as server:
                    final = await phone.sync(server.url, peer=True)
                assert final.state is SyncState.SYNCED and final.progress.received == 2_001, final
                assert contents(phone) == contents(tablet)
                assert any(d.first for d in phone.missing_deltas(DOC, {}))  # passed on as spans
                assert phone.status().unsynced == 2_001  # carried: unsynced until the relay says it holds them
                carried = await phone.sync(relay.url)
                assert carried.state is SyncState.SYNCED and carried.progress.sent == 1, carried  # the relay lacked 1
                assert carried.unsynced == 0
                assert (await tablet.sync(relay.url)).progress.sent == 0

    asyncio.run(asyncio.wait_for(main(), 60))
