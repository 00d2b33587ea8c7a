"""One contract, two stores: every test runs on LMDB and in memory."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from replica import Replica
from replica.errors import ReplicaLocked
from replica.store import TABLES, Store, StoreFailure, prefix_end
from replica.store.lmdb import LmdbStore
from replica.store.memory import MemoryStore


@pytest.fixture(params=["lmdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = LmdbStore(tmp_path / "data") if request.param == "lmdb" else MemoryStore()
    yield made
    made.close()


def test_put_get_delete(store: Store) -> None:
    with store.write() as txn:
        txn.put("meta", b"a", b"1")
        txn.put("deltas", b"a", b"2")
    with store.read() as txn:
        assert txn.get("meta", b"a") == b"1"
        assert txn.get("deltas", b"a") == b"2"
        assert txn.get("meta", b"b") is None
    with store.write() as txn:
        txn.delete("meta", b"a")
        txn.delete("meta", b"missing")
    with store.read() as txn:
        assert txn.get("meta", b"a") is None


def test_scan_and_last_before(store: Store) -> None:
    with store.write() as txn:
        for key in [b"a1", b"a2", b"b1", b"b3", b"c"]:
            txn.put("index", key, key.upper())
    with store.read() as txn:
        assert [k for k, _ in txn.scan("index", b"b", b"c")] == [b"b1", b"b3"]
        assert [v for _, v in txn.scan("index", b"a2")] == [b"A2", b"B1", b"B3", b"C"]
        assert list(txn.scan("index", b"d")) == []
        assert txn.last_before("index", b"b2") == (b"b1", b"B1")
        assert txn.last_before("index", b"z") == (b"c", b"C")
        assert txn.last_before("index", b"a1") is None


def test_writes_are_reentrant_and_commit_at_the_outermost(store: Store) -> None:
    with store.write() as outer:
        outer.put("meta", b"k", b"1")
        with store.write() as inner:
            assert inner is outer
            inner.put("meta", b"j", b"2")
        assert store.in_write
        with store.read() as txn:
            assert txn.get("meta", b"j") == b"2"
    assert not store.in_write
    with store.read() as txn:
        assert txn.get("meta", b"k") == b"1"


def test_an_exception_aborts_everything(store: Store) -> None:
    with store.write() as txn:
        txn.put("meta", b"keep", b"1")
    with pytest.raises(RuntimeError), store.write() as txn:
        txn.put("meta", b"new", b"x")
        txn.put("meta", b"keep", b"changed")
        txn.delete("meta", b"keep")
        raise RuntimeError("boom")
    with store.read() as txn:
        assert txn.get("meta", b"new") is None
        assert txn.get("meta", b"keep") == b"1"
        assert [k for k, _ in txn.scan("meta")] == [b"keep"]


def test_prefix_end() -> None:
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None


def test_lmdb_survives_reopen(tmp_path: Path) -> None:
    first = LmdbStore(tmp_path)
    with first.write() as txn:
        txn.put("meta", b"k", b"v")
    first.close()
    second = LmdbStore(tmp_path)
    with second.read() as txn:
        assert txn.get("meta", b"k") == b"v"
    second.close()


def test_lmdb_refuses_a_second_open_in_this_process(tmp_path: Path) -> None:
    first = LmdbStore(tmp_path)
    with pytest.raises(ReplicaLocked):
        LmdbStore(tmp_path)
    first.close()
    LmdbStore(tmp_path).close()


def test_lmdb_refuses_a_second_process(tmp_path: Path) -> None:
    held = LmdbStore(tmp_path)
    code = (
        "import sys\nfrom replica.store.lmdb import LmdbStore\nfrom replica.errors import ReplicaLocked\n"
        f"try:\n    LmdbStore({str(tmp_path)!r})\nexcept ReplicaLocked as e:\n    print(e.code); sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "replica_locked"
    held.close()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_lmdb_grows_a_full_map(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, map_size=256 * 1024)
    blob = b"x" * 4000
    written = 0
    with pytest.raises(StoreFailure), store.write() as txn:
        for i in range(1000):
            txn.put("deltas", i.to_bytes(4, "big"), blob)
            written += 1
    assert written < 1000
    with store.write() as txn:  # the map was doubled: retrying fits more
        for i in range(written + 10):
            txn.put("deltas", i.to_bytes(4, "big"), blob)
    with store.read() as txn:
        assert len(list(txn.scan("deltas"))) == written + 10
    store.close()


def test_a_data_directory_older_than_a_table_opens_read_only(tmp_path: Path) -> None:
    """A directory written before the ``snapshots`` table existed (as every
    device's was before compaction) is read as having none, without writing."""
    with Replica.open(tmp_path, replica_id="old-dev") as device:
        device.doc("d").records("r").put("a", {"n": 1})
    env = lmdb.open(str(tmp_path), max_dbs=len(TABLES) + 2)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"snapshots", txn=txn), delete=True)
    env.close()
    with Replica.open(tmp_path, readonly=True) as reader:
        assert reader.status().unsynced == 1
        assert reader.snapshot_for("d", {}) is None and reader.tail_length("d") == 1
        assert dict(reader.doc("d").records("r").items()) == {"a": {"n": 1}}
    with Replica.open(tmp_path) as writer:  # writable: the table is made
        assert writer.compact(bound=None) == 1
