"""Opening, reopening, batching, status and storage failures of a replica."""

from __future__ import annotations

from pathlib import Path

import pytest

from replica import Replica, ReplicaError, ReplicaIdMismatch, ReplicaLocked, StorageError, SyncState


def test_replica_id_is_generated_once_and_kept(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as first:
        generated = first.id
    with Replica.open(tmp_path) as again:
        assert again.id == generated
    with Replica.open(tmp_path, replica_id=generated) as same:
        assert same.id == generated


def test_replica_id_given_at_creation(tmp_path: Path) -> None:
    with Replica.open(tmp_path, replica_id="tablet-7") as replica:
        assert replica.id == "tablet-7"
    with pytest.raises(ReplicaIdMismatch, match="tablet-7"):
        Replica.open(tmp_path, replica_id="tablet-8")
    Replica.open(tmp_path).close()  # the failed open released the directory


def test_invalid_replica_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="replica id"):
        Replica.open(tmp_path, replica_id="has space")
    Replica.open(tmp_path).close()


def test_second_open_is_locked(tmp_path: Path) -> None:
    with Replica.open(tmp_path), pytest.raises(ReplicaLocked) as info:
        Replica.open(tmp_path)
    assert info.value.retryable and info.value.code == "replica_locked"


def test_reopen_rebuilds_and_continues_seqs(tmp_path: Path) -> None:
    with Replica.open(tmp_path, replica_id="dev-a") as replica:
        document = replica.doc("d")
        document.records("r").put("x", {"n": 2**62 + 1})
        document.text("t").insert(0, "héllo")
        before = document.contents()
        old_client = document.client_id
    with Replica.open(tmp_path) as replica:
        document = replica.doc("d")
        assert document.contents() == before
        assert document.client_id != old_client
        document.records("r").update("x", {"m": 1})
        assert replica.version_vector("d") == {"dev-a": 3}
        assert [d.seq for d in replica.missing_deltas("d", {})] == [1, 2, 3]


def test_batch_commits_once_and_keeps_deltas_when_the_block_raises(tmp_path: Path) -> None:
    with Replica.open(tmp_path, replica_id="dev-a") as replica:
        rows = replica.doc("d").records("r")
        with replica.batch():
            for i in range(100):
                rows.put(str(i), {"i": i})
            assert replica.status().unsynced == 100
        with pytest.raises(RuntimeError), replica.batch():
            rows.put("last", {"i": -1})
            raise RuntimeError("user code failed")
        assert rows.get("last") == {"i": -1}
    with Replica.open(tmp_path) as replica:
        assert len(replica.doc("d").records("r")) == 101
        assert replica.version_vector("d") == {"dev-a": 101}


def test_status_counts_every_delta_as_unsynced(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as replica:
        status = replica.status()
        assert status.state is SyncState.IDLE and status.unsynced == 0 and status.rejected == 0
        replica.doc("a").records("r").put("x", {})
        replica.doc("b").text("t").insert(0, "x")
        replica.doc("b").text("t").insert(0, "y")
        assert replica.status().unsynced == 3
        assert replica.status().label == "Data unsynced: 3"
    with Replica.open(tmp_path) as replica:
        assert replica.status().unsynced == 3


def test_a_full_disk_is_a_storage_error_and_nothing_diverges(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path, replica_id="dev-a", map_size=128 * 1024)
    text = replica.doc("d").text("t")
    kept = ""
    with pytest.raises(StorageError) as info:
        for _ in range(1000):
            text.insert(len(kept), "x" * 500)
            kept += "x" * 500
    assert info.value.retryable
    assert str(text) == kept  # the failed insert was rolled back from the log
    text.insert(len(kept), "y")  # the map was enlarged: the retry fits
    replica.close()
    with Replica.open(tmp_path) as again:
        assert str(again.doc("d").text("t")) == kept + "y"


def test_a_full_disk_inside_a_batch_aborts_the_batch(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path, replica_id="dev-a", map_size=128 * 1024)
    rows = replica.doc("d").records("r")
    rows.put("durable", {"v": 1})
    with pytest.raises(StorageError), replica.batch():
        for i in range(1000):
            rows.put(str(i), {"blob": b"x" * 500})
    assert rows.ids() == ["durable"]
    assert replica.version_vector("d") == {"dev-a": 1}
    replica.close()


def test_closed_replica(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path)
    replica.close()
    replica.close()
    with pytest.raises(ReplicaError, match="closed"):
        replica.status()
    with pytest.raises(ReplicaError, match="closed"):
        replica.doc("d")


def test_same_log_reads_each_delta_once_and_never_serves_stale_deltas() -> None:
    with Replica.in_memory(replica_id="dev-a") as replica:
        recs = replica.doc("d").records("r")
        recs.put("a", {"n": 1})
        reads: list[int] = []
        decode = replica._log._delta

        def counting(txn, document, row):  # type: ignore[no-untyped-def]
            found = decode(txn, document, row)
            reads.append(found.seq)
            return found

        replica._log._delta = counting  # type: ignore[method-assign]
        with replica.same_log():
            first = replica.missing_deltas("d", {})
            first.clear()  # callers own the list they get
            assert [d.seq for d in replica.missing_deltas("d", {})] == [1]
            assert replica.missing_deltas("d", {"dev-a": 1}) == []
            assert reads == [1]
            recs.put("b", {"n": 2})  # a commit inside the block drops what was read
            assert [d.seq for d in replica.missing_deltas("d", {})] == [1, 2]
            assert [d.seq for d in replica.missing_deltas("d", {"dev-a": 1})] == [2]
        assert reads == [1, 2]  # each row decoded once: the memo, then the log's decoded rows
        assert [d.seq for d in replica.missing_deltas("d", {})] == [1, 2]
        assert [d.seq for d in replica.missing_deltas("d", {}, most=1)] == [1]
        assert reads == [1, 2]


def test_same_log_answers_spans_and_snapshots_once_per_point() -> None:
    """What a relay's fan-out asks for every link: each (point, bound) read
    once inside same_log(), every other point its own answer, a commit
    inside the block dropping what was answered."""
    with Replica.in_memory(replica_id="dev-a") as replica:
        recs = replica.doc("d").records("r")
        with replica.batch():
            for i in range(6):
                recs.put(str(i), {"n": i})
        replica.compact(["d"], bound=None, keep=4)  # a snapshot of seqs 1-2, the rest one by one
        reads: list[str] = []
        pieces, base = replica._log.missing_pieces, replica._log.base

        def counting_pieces(*args, **kwargs):  # type: ignore[no-untyped-def]
            reads.append("pieces")
            return pieces(*args, **kwargs)

        def counting_base(*args, **kwargs):  # type: ignore[no-untyped-def]
            reads.append("base")
            return base(*args, **kwargs)

        replica._log.missing_pieces = counting_pieces  # type: ignore[method-assign]
        replica._log.base = counting_base  # type: ignore[method-assign]

        def spans(remote: dict[str, int], upto: dict[str, int]) -> list[tuple[int, int]]:
            found = replica.missing_spans("d", remote, upto=upto, shortest=2, longest=3)
            return [(d.first or d.seq, d.seq) for d in found]

        def snapshot(remote: dict[str, int]) -> object:
            found = replica.snapshot_for("d", remote)
            return None if found is None else found.vv

        with replica.same_log():
            assert snapshot({}) == {"dev-a": 2}
            assert snapshot({}) == {"dev-a": 2}
            assert snapshot({"dev-a": 2}) is None
            assert spans({"dev-a": 2}, {"dev-a": 6}) == [(3, 3), (4, 6)]
            assert spans({"dev-a": 2}, {"dev-a": 6}) == [(3, 3), (4, 6)]
            assert reads == ["base", "pieces"]
            assert spans({"dev-a": 3}, {"dev-a": 6}) == [(4, 6)]  # another point: its own answer
            assert spans({"dev-a": 2}, {"dev-a": 4}) == [(3, 3), (4, 4)]  # another bound: its own answer
            assert reads == ["base", "pieces", "pieces", "pieces"]
            recs.put("6", {"n": 6})  # a commit inside the block drops what was answered
            assert spans({"dev-a": 2}, {"dev-a": 7}) == [(3, 3), (4, 6), (7, 7)]
            assert snapshot({}) == {"dev-a": 2}
            assert reads[-2:] == ["pieces", "base"]
        assert spans({"dev-a": 2}, {"dev-a": 7}) == [(3, 3), (4, 6), (7, 7)]
