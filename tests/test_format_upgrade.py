"""A data directory of format 1 (written before protocol version 4, when a
delta's checksum covered its bytes alone) opens, is upgraded once in one
write transaction, and syncs; a SIGKILL during the upgrade leaves a directory
that opens and is upgraded next time.

The old directory is written by this code with the previous version's two
differences put back (the bytes-only checksum, format ``"1"``): the layout of
the tables is otherwise the same. :func:`stored` reads it through the store
layer to show that it is what the previous version wrote.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import replica.delta
import replica.engine
from relay_process import RelayProcess
from replica import Replica, spans
from replica.delta import Delta
from replica.log import DeltaLog
from replica.status import SyncState
from replica.store.lmdb import LmdbStore

DOC, OTHER = "c7/households", "c7/notes"


def _bytes_only(document: str, origin: str, seq: int, data: bytes, first: int = 0) -> bytes:
    return hashlib.blake2b(data, digest_size=replica.delta.CHECKSUM_SIZE).digest()


@contextmanager
def previous_version() -> Iterator[None]:
    """This code writing as the previous version did."""
    patch = pytest.MonkeyPatch()
    patch.setattr(replica.delta, "checksum", _bytes_only)
    patch.setattr(replica.engine, "FORMAT", "1")
    try:
        yield
    finally:
        patch.undo()


def write_format_1(path: Path) -> None:
    """Local deltas, a foreign origin's deltas, and a span (as a relay sends
    them), in two documents, as the previous version stored them."""
    with previous_version():
        with Replica.in_memory(replica_id="phone-2") as other:
            records = other.doc(DOC).records("households")
            for number in range(20):
                records.put(f"p{number}", {"n": number})
            foreign = other.missing_deltas(DOC, {})
        with Replica.open(path, replica_id="tablet-1") as old:
            for number in range(5):
                old.doc(DOC).records("households").put(f"t{number}", {"n": number})
            old.doc(OTHER).text("day").insert(0, "rain")
            span = spans.merge_run(foreign[:16])
            assert old.ingest([span, *foreign[16:]]).rejected is None


def stored(path: Path) -> tuple[str | None, list[Delta]]:
    """``(format, every delta held)``, read through the store layer."""
    store = LmdbStore(path, readonly=True)
    try:
        log = DeltaLog(store)
        with log.read() as txn:
            return log.get_meta(txn, "format"), [d for name in log.documents(txn) for d in log.tail(txn, name)]
    finally:
        store.close()


def identity_checksums(items: list[Delta]) -> bool:
    return all(d.checksum == replica.delta.checksum(d.document, d.origin, d.seq, d.data, d.first) for d in items)


@pytest.fixture
def old_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tablet"
    write_format_1(path)
    found, items = stored(path)
    assert found == "1" and len(items) == 5 + 1 + 1 + 4  # 5 local, 1 text, a span and 4 deltas of phone-2
    assert any(d.first for d in items)
    assert all(d.checksum == _bytes_only(d.document, d.origin, d.seq, d.data) for d in items)
    assert not identity_checksums(items)
    return path


def test_a_format_1_directory_is_upgraded_at_its_first_read_write_open(old_dir: Path) -> None:
    with Replica.open(old_dir, readonly=True) as reader:  # `replica status`: reads it as it is
        before = {name: (reader.version_vector(name), reader.doc(name).contents()) for name in reader.documents()}
        assert reader.status().unsynced == 5 + 1 + 20
    assert stored(old_dir)[0] == "1"
    with Replica.open(old_dir) as upgraded:
        assert upgraded.id == "tablet-1"
        assert {name: (upgraded.version_vector(name), upgraded.doc(name).contents()) for name in before} == before
        tips = upgraded.tips(DOC)
    found, items = stored(old_dir)
    assert found == "2" and identity_checksums(items) and len(items) == 11
    last = {"tablet-1": 5, "phone-2": 20}  # each held one by one: what a handshake compares
    assert tips == {d.origin: d.checksum for d in items if d.document == DOC and d.seq == last[d.origin]}
    with Replica.open(old_dir) as again:  # nothing left to do
        assert again.version_vector(DOC) == {"tablet-1": 5, "phone-2": 20}
    assert stored(old_dir) == (found, items)


def test_an_upgraded_directory_syncs_through_a_relay(old_dir: Path, tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "relay") as relay:
        tokens = {name: relay.issue(name, ["c7/*"]) for name in ("tablet-1", "reader")}

        async def run() -> None:
            with Replica.open(old_dir) as device:
                status = await device.sync(relay.url, credential=tokens["tablet-1"], timeout=20)
                assert status.state is SyncState.SYNCED and status.unsynced == 0, status
                expected = {name: device.doc(name).contents() for name in device.documents()}
                vvs = {name: device.version_vector(name) for name in device.documents()}
            with Replica.open(tmp_path / "reader", replica_id="reader") as reader:
                status = await reader.sync(relay.url, credential=tokens["reader"], timeout=20)
                assert status.state is SyncState.SYNCED, status
                assert {name: reader.doc(name).contents() for name in reader.documents()} == expected
                assert {name: reader.version_vector(name) for name in reader.documents()} == vvs
            with Replica.open(old_dir) as device:  # a second run: the relay's tips match the upgraded ones
                status = await device.sync(relay.url, credential=tokens["tablet-1"], timeout=20)
                assert status.state is SyncState.SYNCED, status

        asyncio.run(run())
        relay.terminate()


#: A child that upgrades ``argv[1]`` and, with every row rewritten but nothing
#: committed, says so and waits to be killed.
_KILLED_MID_UPGRADE = """
import sys
from replica.engine import Engine
from replica.log import DeltaLog

recompute = DeltaLog.recompute_checksums

def stalled(self, txn):
    count = recompute(self, txn)
    print("rewritten", count, flush=True)
    sys.stdin.read()
    return count

DeltaLog.recompute_checksums = stalled
Engine.open(sys.argv[1])
"""


def test_a_sigkill_during_the_upgrade_leaves_a_directory_that_opens(old_dir: Path) -> None:
    _, before = stored(old_dir)
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_UPGRADE, str(old_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["rewritten", "11"]
    finally:
        child.kill()
        child.wait(timeout=30)
    assert stored(old_dir) == ("1", before)  # the transaction never committed: format 1, as it was
    with Replica.open(old_dir) as upgraded:
        assert upgraded.version_vector(DOC) == {"tablet-1": 5, "phone-2": 20}
    found, items = stored(old_dir)
    assert found == "2" and identity_checksums(items)
