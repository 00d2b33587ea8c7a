"""The delta log against a plain in-memory model (hypothesis stateful test)."""

from __future__ import annotations

import functools
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from replica import delta
from replica.delta import Delta
from replica.log import DeltaLog
from replica.store import Store, Txn
from replica.store.lmdb import LmdbStore
from replica.store.memory import MemoryStore

DOCS = st.sampled_from(["a", "b/c", "campaign-7/households"])
ORIGINS = st.sampled_from(["dev-a", "dev-b", "relay", "r0"])
REMOTES = st.sampled_from(["relay", "peer-1"])


class LogMachine(RuleBasedStateMachine):
    """Appends, watermarks and reopens, checked against dicts and lists."""

    backend = "lmdb"

    @initialize()
    def open(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="replica-log-"))
        self.store: Store = self._new_store()
        self.log = DeltaLog(self.store)
        self.model: dict[str, list[Delta]] = {}  # document -> deltas held one by one, in append order
        self.every: dict[str, list[Delta]] = {}  # document -> every delta appended (the snapshot's too)
        self.bases: dict[str, tuple[dict[str, int], bytes]] = {}  # document -> its snapshot
        self.marks: dict[tuple[str, str], dict[str, int]] = {}

    def _new_store(self) -> Store:
        return LmdbStore(self.dir) if self.backend == "lmdb" else MemoryStore()

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def held(self, document: str) -> dict[str, int]:
        vv: dict[str, int] = {}
        for item in self.every.get(document, []):
            vv[item.origin] = item.seq
        return vv

    @rule(document=DOCS, origin=ORIGINS, data=st.binary(min_size=2, max_size=40))
    def append(self, document: str, origin: str, data: bytes) -> None:
        seq = self.held(document).get(origin, 0) + 1
        note(f"append {document} {origin}#{seq}")
        item = delta.make(document, origin, seq, data)
        with self.log.write() as txn:
            self.log.append(txn, item)
        self.model.setdefault(document, []).append(item)
        self.every.setdefault(document, []).append(item)

    @rule(document=DOCS, data=st.data())
    def snapshot(self, document: str, data: st.DataObject) -> None:
        """A snapshot replaces a prefix of the deltas (all of them, at times:
        the next delta's ``pos`` is then one an old row had, after a reopen or
        a failed write)."""
        items = self.model.get(document, [])
        taken = data.draw(st.integers(0, len(items)))
        vv = dict(self.bases.get(document, ({}, b""))[0])
        for item in items[:taken]:
            vv[item.origin] = item.seq
        if not vv:
            return  # a snapshot of nothing: no caller makes one
        state = data.draw(st.binary(min_size=1, max_size=8))
        note(f"snapshot of {document} at {vv}")
        with self.log.write() as txn:
            self.log.set_base(txn, document, vv, state)
        self.model[document] = items[taken:]
        self.bases[document] = (vv, state)

    @rule(document=DOCS, origin=ORIGINS, skip=st.integers(min_value=2, max_value=5))
    def append_out_of_order_is_refused(self, document: str, origin: str, skip: int) -> None:
        seq = self.held(document).get(origin, 0) + skip
        with pytest.raises(ValueError), self.log.write() as txn:
            self.log.append(txn, delta.make(document, origin, seq, b"\x00\x00"))

    @rule(document=DOCS, origin=ORIGINS, data=st.binary(min_size=2, max_size=10))
    def failed_batch_leaves_nothing(self, document: str, origin: str, data: bytes) -> None:
        seq = self.held(document).get(origin, 0) + 1
        with pytest.raises(RuntimeError), self.log.write() as txn:
            self.log.append(txn, delta.make(document, origin, seq, data))
            raise RuntimeError("abort")

    @rule(remote=REMOTES, document=DOCS, data=st.data())
    def acknowledge(self, remote: str, document: str, data: st.DataObject) -> None:
        vv = {o: data.draw(st.integers(0, seq)) for o, seq in self.held(document).items()}
        note(f"{remote} acknowledges {document} {vv}")
        with self.log.write() as txn:
            self.log.set_watermark(txn, remote, document, vv)
        mark = self.marks.setdefault((remote, document), {})
        for origin, seq in vv.items():
            mark[origin] = max(mark.get(origin, 0), seq)

    @precondition(lambda self: self.backend == "lmdb")
    @rule()
    def reopen(self) -> None:
        note("reopen")
        self.store.close()
        self.store = self._new_store()
        self.log = DeltaLog(self.store)

    @invariant()
    def matches_the_model(self) -> None:
        with self.log.read() as txn:
            assert self.log.documents(txn) == sorted(self.every)
            for document, items in self.model.items():
                assert self.log.version_vector(txn, document) == self.held(document)
                assert self.log.missing(txn, document, {}) == items
                base = self.bases.get(document)
                replay = [] if base is None else [base[1]]
                assert list(self.log.payloads(txn, document)) == replay + [i.data for i in items]
                if items:
                    last = items[-1]
                    assert self.log.checksum_of(txn, document, last.origin, last.seq) == last.checksum
                for remote in ("relay", "peer-1"):
                    mark = self.marks.get((remote, document), {})
                    assert self.log.watermark(txn, remote, document) == {o: s for o, s in mark.items() if s}
                    expected = [i for i in items if i.seq > mark.get(i.origin, 0)]
                    assert self.log.missing(txn, document, mark) == expected
                    for most in (1, 2, 5):  # a bounded read is the prefix of the same order
                        assert self.log.missing(txn, document, mark, most=most) == expected[:most]
                    if expected:
                        first = len(expected[0].data)
                        assert self.log.missing(txn, document, mark, most_bytes=first) == expected[:1]
                        assert self.log.missing(txn, document, mark, most=3, most_bytes=1) == expected[:1]
                    self.pieces_match(txn, document, mark, expected, items)
            for remote in ("relay", "peer-1"):
                expected_unsynced = sum(
                    1
                    for document, items in self.every.items()
                    for i in items
                    if i.seq > self.marks.get((remote, document), {}).get(i.origin, 0)
                )
                assert self.log.sync_counts(txn, remote) == (expected_unsynced, 0)

    def pieces_match(
        self, txn: Txn, document: str, mark: dict[str, int], expected: list[Delta], items: list[Delta]
    ) -> None:
        """``missing_pieces`` (read through the run index) gives what ``missing`` gives,
        bounded at aligned seqs, and never past ``upto``."""

        def read(**bounds: Any) -> list[Delta]:
            pieces = self.log.missing_pieces(txn, document, mark, **bounds)
            assert pieces is not None  # a few runs: always indexed here
            return [d for _, piece in pieces for d in self.log.piece_deltas(txn, document, piece)]

        assert read() == expected
        for most in (1, 2, 5):
            got = read(most=most, align=2)
            assert got == expected[: len(got)] and min(most, len(expected)) <= len(got) <= most + 1
            if len(got) > most:  # past the bound only to a multiple of 2
                assert got[-1].seq % 2 == 0 and got[-1].origin == got[-2].origin
        for cut in {0, len(items) // 2, len(items)}:
            upto = dict(self.bases.get(document, ({}, b""))[0])
            for item in items[:cut]:
                upto[item.origin] = item.seq
            held = list(itertools.takewhile(functools.partial(_covered, upto), expected))
            assert read(upto=upto) == held


def _covered(vv: dict[str, int], item: Delta) -> bool:
    return item.seq <= vv.get(item.origin, 0)


class MemoryLogMachine(LogMachine):
    backend = "memory"


TestLogOnLmdb = LogMachine.TestCase
TestLogInMemory = MemoryLogMachine.TestCase


def test_missing_skips_unknown_documents(tmp_path: Path) -> None:
    log = DeltaLog(LmdbStore(tmp_path))
    with log.read() as txn:
        assert log.missing(txn, "nope", {}) == []
        assert log.version_vector(txn, "nope") == {}
        assert log.checksum_of(txn, "nope", "x", 1) is None
    log.store.close()


def test_bounded_reads_of_thin_and_thick_backlogs(tmp_path: Path) -> None:
    """A bounded read is the prefix of the whole answer both when the rows a
    remote lacks are most of what follows the first of them (read in order)
    and when they are a few among many (read through the index), and again
    when read a second time (decoded once, kept)."""
    log = DeltaLog(LmdbStore(tmp_path))
    with log.write() as txn:
        for seq in range(1, 201):
            log.append(txn, delta.make("d", "busy", seq, b"b%d" % seq))
            if seq % 10 == 0:
                log.append(txn, delta.make("d", "rare", seq // 10, b"r%d" % seq))
    with log.read() as txn:
        for remote in ({"busy": 200}, {}, {"busy": 100, "rare": 3}):
            whole = log.missing(txn, "d", remote)
            assert whole == [i for i in whole if i.seq > remote.get(i.origin, 0)]
            for most in (1, 7, 30, 500):
                for _ in range(2):
                    assert log.missing(txn, "d", remote, most=most) == whole[:most]
            sizes = [len(i.data) for i in whole]
            cut = next((n for n in range(1, len(whole) + 1) if sum(sizes[:n]) >= 9), len(whole))
            assert log.missing(txn, "d", remote, most_bytes=9) == whole[:cut]
    log.store.close()


def test_a_row_key_used_again_after_a_snapshot_reads_the_new_delta(tmp_path: Path) -> None:
    """A snapshot of every delta deletes the last rows, so the next delta's
    ``pos`` (read from disk by a log that has not written yet) is one an old
    row had: reading it gives the new delta, not the one decoded before."""
    store = LmdbStore(tmp_path)
    with DeltaLog(store).write() as txn:
        DeltaLog(store).append(txn, delta.make("d", "a", 1, b"old"))
    log = DeltaLog(store)  # as after a reopen: the next pos is not known yet
    with log.read() as txn:
        assert [i.data for i in log.missing(txn, "d", {}, most=5)] == [b"old"]
        assert [p.first for _, p in log.missing_pieces(txn, "d", {}) or []] == [1]  # the run index is built
    with log.write() as txn:
        log.set_base(txn, "d", {"a": 1}, b"state")
        log.append(txn, delta.make("d", "b", 1, b"new"))
    with log.read() as txn:
        assert [i.data for i in log.missing(txn, "d", {}, most=5)] == [b"new"]
        assert [i.data for i in log.missing(txn, "d", {})] == [b"new"]
        pieces = log.missing_pieces(txn, "d", {})
        assert pieces is not None
        assert [i.data for _, p in pieces for i in log.piece_deltas(txn, "d", p)] == [b"new"]
    store.close()
