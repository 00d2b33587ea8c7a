"""The engine: one data directory's documents over a durable delta log.

An :class:`Engine` wires the parts below the network together: the log
(``replica.log``) over a store, the documents (``replica.doc``), and what the
sync runs recorded (``replica.runs`` records, shown by ``replica.status``).
It owns two decisions: when a local transaction becomes a durable delta, and
whether a foreign delta may be applied. It has no event loop and no socket:
the sessions read it through ``replica.session_terms.LogView``, the edges
(``replica.net``, ``replica.peer``, ``replica.testing``) store what sessions
report through :func:`replica.sync.settle` and :meth:`Engine.record`, and the
app-facing :class:`~replica.replica.Replica` adds syncing on top.

Durability: each local transaction's delta is committed (and fsynced) before
the call that made it returns, unless inside ``with replica.batch():``, which
commits every delta made inside in one transaction on exit.

Consistency between documents and log: a document's state is always the replay
of its log. Whenever a write transaction fails, every loaded document is
rebuilt from what is on disk, so that memory never runs ahead of the log.

An engine is not thread-safe: use it from one thread (or one asyncio loop).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from replica import compaction, errors, runs, spans
from replica import delta as deltas
from replica.delta import Delta, Snapshot
from replica.doc import ClientIdSource, Document
from replica.doccache import DocumentCache
from replica.events import IncomingSnapshotPart, IngestResult
from replica.log import DeltaLog, Rejection
from replica.names import RELAY, check_document_name, check_replica_id, new_replica_id
from replica.status import PeerStatus, Rejected, SyncStatus
from replica.store import Store, StoreFailure, Txn
from replica.store.memory import MemoryStore
from replica.vv import VersionVector, count_missing, covers, merge
from replica.wire import SnapshotPart

log = logging.getLogger("replica.engine")

_T = TypeVar("_T")
#: What :meth:`Engine.publish_to` hands a write transaction's foreign deltas and snapshots to.
Publisher = Callable[[list[Delta | Snapshot]], None]

#: The data directory's format, in ``meta``. 2: a stored delta's checksum covers
#: its document, origin and seqs (``replica.delta.checksum``), not only its bytes.
FORMAT = "2"
#: Formats this version opens, upgrading them to :data:`FORMAT` on a read-write open.
_UPGRADES = {"1"}


class Engine:
    """Named CRDT documents of one replica over an append-only delta log.

    Open with :meth:`open` (a data directory, LMDB) or :meth:`in_memory`.
    ``client_ids``: where the documents' Yjs client ids come from (a
    deterministic source for tests; random by default).
    """

    def __init__(
        self,
        store: Store,
        *,
        replica_id: str | None = None,
        max_delta_bytes: int = deltas.MAX_DELTA_BYTES,
        max_snapshot_bytes: int = deltas.MAX_SNAPSHOT_BYTES,
        client_ids: ClientIdSource | None = None,
        doc_cache_bytes: int | None = None,
    ) -> None:
        """Use :meth:`open` or :meth:`in_memory` rather than this."""
        self._log = DeltaLog(store)
        self.path: Path | None = None  #: the data directory (None in memory)
        self._documents = DocumentCache(doc_cache_bytes)
        self._closed = False
        self.max_delta_bytes = max_delta_bytes
        self.max_snapshot_bytes = max_snapshot_bytes
        self._touched: set[str] = set()
        self._status_dirty = False
        self._change_listeners: list[Callable[[str], None]] = []
        self._status_listeners: list[Callable[[SyncStatus], None]] = []
        self._client_ids = client_ids
        self._relay_run = runs.IDLE
        self._missing_memo: dict[Any, list[Any]] | None = None
        self._vv_memo: dict[str, VersionVector] | None = None  # version vectors read inside same_log()
        #: What missing_spans and snapshot_for answered inside same_log(), by their arguments.
        self._answers: dict[tuple[Any, ...], Any] | None = None
        self._spans = spans.SpanCache()
        #: Called with what a write transaction stored from elsewhere, before it commits (see :meth:`publish_to`).
        self._publisher: Publisher | None = None
        self._outgoing: list[Delta | Snapshot] = []
        try:
            if store.readonly:
                with self._log.read() as txn:
                    self.id = self._init_meta(txn, replica_id)
            else:
                with self._log.write() as txn:
                    self.id = self._init_meta(txn, replica_id)
        except BaseException:
            store.close()
            raise

    def _init_meta(self, txn: Txn, requested: str | None) -> str:
        if requested is not None:
            check_replica_id(requested)
        stored = self._log.get_meta(txn, "replica_id")
        if stored is None and self._log.store.readonly:
            raise errors.DataDirError("this data directory holds no replica yet")
        if stored is None:
            self._log.set_meta(txn, "format", FORMAT)
            self._log.set_meta(txn, "replica_id", requested or new_replica_id())
            stored = self._log.get_meta(txn, "replica_id")
            assert stored is not None
            return stored
        found_format = self._log.get_meta(txn, "format")
        if found_format in _UPGRADES and not self._log.store.readonly:
            self._upgrade(txn, found_format)
        elif found_format != FORMAT and found_format not in _UPGRADES:
            raise errors.DataDirError(f"data format {found_format!r} is not supported (this version reads {FORMAT!r})")
        if requested is not None and requested != stored:
            raise errors.ReplicaIdMismatch(
                f"this data directory belongs to replica {stored!r}, not {requested!r}; "
                "open it without a replica id or use another directory"
            )
        return stored

    def _upgrade(self, txn: Txn, found: str) -> None:
        """Bring a data directory of format ``found`` to :data:`FORMAT`, in
        the opening write transaction: a crash (even SIGKILL) leaves it as it
        was, to be upgraded at the next open. Read-only opens read format 1 as
        it is: they never sync, so the old checksums are never compared."""
        rewritten = self._log.recompute_checksums(txn)
        self._log.set_meta(txn, "format", FORMAT)
        log.info("data format %s upgraded to %s: %d delta checksums recomputed", found, FORMAT, rewritten)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        replica_id: str | None = None,
        map_size: int | None = None,
        max_delta_bytes: int = deltas.MAX_DELTA_BYTES,
        readonly: bool = False,
        doc_cache_bytes: int | None = None,
    ) -> Self:
        """Open (or create) the replica whose data directory is ``path``.

        ``replica_id`` is used when the directory is created (a random one
        otherwise); reopening with another id is :class:`~replica.errors.ReplicaIdMismatch`.
        A directory already open elsewhere is :class:`~replica.errors.ReplicaLocked`.
        ``map_size``: bytes of address space for LMDB; ``max_delta_bytes``:
        the largest foreign delta accepted. ``readonly``: read an existing
        directory without locking it, while another process may hold it
        (``replica status`` during a live sync); any write is a
        :class:`~replica.errors.StorageError`. ``doc_cache_bytes``: a memory
        budget for loaded documents (see ``replica.doccache``; a relay's
        option: a ``Document`` held by the caller may be evicted, so take it
        from :meth:`doc` each time); None keeps every document loaded.
        """
        from replica.store.lmdb import DEFAULT_MAP_SIZE, LmdbStore

        store = LmdbStore(path, map_size=DEFAULT_MAP_SIZE if map_size is None else map_size, readonly=readonly)
        engine = cls(store, replica_id=replica_id, max_delta_bytes=max_delta_bytes, doc_cache_bytes=doc_cache_bytes)
        engine.path = Path(path)
        return engine

    @classmethod
    def in_memory(
        cls,
        *,
        replica_id: str | None = None,
        max_delta_bytes: int = deltas.MAX_DELTA_BYTES,
        client_ids: ClientIdSource | None = None,
    ) -> Self:
        """A replica that keeps everything in memory (tests, scratch work)."""
        return cls(MemoryStore(), replica_id=replica_id, max_delta_bytes=max_delta_bytes, client_ids=client_ids)

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Close the data directory. Committed deltas are already on disk."""
        if self._closed:
            return
        if self._log.store.in_write:
            raise RuntimeError("close() inside replica.batch()")
        self._closed = True
        self._documents.close()
        self._status_listeners.clear()
        self._change_listeners.clear()
        self._log.store.close()

    @property
    def store(self) -> Store:
        """The key-value store under the log."""
        return self._log.store

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r}{' closed' if self._closed else ''}>"

    # -- documents -----------------------------------------------------------

    def doc(self, name: str) -> Document:
        """The document ``name`` (created on first write), loaded from the log."""
        found = self._documents.get(name)
        if found is None:
            self._check_open()
            check_document_name(name)
            found = Document(name, self._commit_local, client_ids=self._client_ids)
            size = 0

            def counted(txn: Txn) -> Iterator[bytes]:
                nonlocal size
                for data in self._log.payloads(txn, name):
                    size += len(data)
                    yield data

            with self._log.read() as txn:
                found.rebuild(counted(txn))
            self._documents.add(found, size)
        return found

    def loaded(self) -> tuple[list[str], int]:
        """The documents loaded in memory now (least recently used first), and
        the estimate of the memory they hold in bytes (see ``replica.doccache``)."""
        return [name for name, _ in self._documents.items()], self._documents.estimate

    def documents(self) -> list[str]:
        """Names of the documents that hold at least one delta."""
        self._check_open()
        with self._log.read() as txn:
            return self._log.documents(txn)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Commit every delta made inside in one transaction (one fsync).

        If the block raises, the deltas it made are still committed (the
        documents hold them already) before the error propagates; none of them
        is durable before the block ends.
        """
        failure: BaseException | None = None
        with self._writing():
            try:
                yield
            except errors.StorageError:
                raise  # the transaction is unusable: abort it and reload
            except BaseException as exc:
                failure = exc
        if failure is not None:
            raise failure

    # -- status ----------------------------------------------------------------

    def status(self) -> SyncStatus:
        """A snapshot of the sync status toward the relay. ``unsynced`` and
        ``rejected`` are derived from the log and the relay's durable
        watermark and refusals each time."""
        self._check_open()
        with self._log.read() as txn:
            unsynced, rejected = self._log.sync_counts(txn, RELAY)
            last = self._log.get_meta(txn, "last_synced_at")
            rejections = self._rejected(txn)
        run = self._relay_run
        return SyncStatus(
            state=run.state,
            unsynced=unsynced,
            rejected=rejected,
            progress=run.progress,
            last_synced_at=run.synced_at if run.synced_at is not None else None if last is None else float(last),
            error=run.error,
            rejections=rejections,
            connected=run.connected,
            relay=run.relay,
            retry_at=run.retry_at,
        )

    def refused(self) -> tuple[Rejected, ...]:
        """The relay's lasting refusals of deltas held here, with how many
        deltas each still holds back (cheaper than :meth:`status`)."""
        self._check_open()
        with self._log.read() as txn:
            return self._rejected(txn)

    def _rejected(self, txn: Txn) -> tuple[Rejected, ...]:
        return tuple(
            Rejected(r.document, r.origin, self._refused_count(txn, r), r.code, r.message)
            for r in self._log.rejections(txn, RELAY)
        )

    def _refused_count(self, txn: Txn, refusal: Rejection) -> int:
        held = self._log.version_vector(txn, refusal.document)
        mark = self._log.watermark(txn, RELAY, refusal.document)
        if refusal.origin is None:
            return count_missing(mark, held)
        top = held.get(refusal.origin, 0)
        return max(0, top - max(mark.get(refusal.origin, 0), refusal.seq - 1))

    def subscribe(self, callback: Callable[[SyncStatus], None]) -> Callable[[], None]:
        """Call ``callback`` with a new :class:`SyncStatus` on every change
        (sync state, progress, new deltas, acknowledgements). Returns a
        function that unsubscribes."""
        return _listen(self._status_listeners, callback)

    def _publish(self) -> None:
        if not self._status_listeners or self._closed:
            return
        snapshot = self.status()
        for callback in list(self._status_listeners):
            try:
                callback(snapshot)
            except Exception:
                log.exception("a status subscriber failed; it stays subscribed")

    def record(self, records: Iterable[runs.Record]) -> None:
        """Store what the status rules (``replica.runs``) decided: the home
        screen's run, or the end of a run with a peer. Published to
        subscribers at once.

        The deltas a run moved are stored already (``replica.sync.settle``);
        if saving a record fails, the failure is logged (the home screen's
        run is still shown from memory, its time of completion included), so
        that a storage fault never turns a finished run into a crash of the
        edge reporting it."""
        for record in records:
            try:
                if isinstance(record, runs.RelayStatus):
                    self._record_relay_run(record.run)
                else:
                    self._record_peer(record)
            except errors.StorageError as exc:
                log.warning("could not save the sync status (%s); it is kept until the replica closes", exc)

    def _record_relay_run(self, run: runs.Run) -> None:
        completed = run.synced_at is not None and run.synced_at != self._relay_run.synced_at
        self._relay_run = run
        try:
            if completed:
                with self._writing() as txn:
                    self._log.set_meta(txn, "last_synced_at", repr(run.synced_at))
        finally:
            self._publish()

    def _record_peer(self, record: runs.PeerResult) -> None:
        with self._writing() as txn:
            old = self._log.peer_record(txn, record.peer)
            synced_at = old["synced_at"] if old is not None and record.synced_at is None else record.synced_at
            error = record.error
            self._log.set_peer_record(
                txn,
                record.peer,
                {
                    "synced_at": synced_at,
                    "error": None if error is None else [error.code, error.message, error.retryable],
                    "to_receive": record.to_receive,
                },
            )
            self._status_dirty = True

    def on_change(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(document)`` after each commit that added deltas to
        ``document`` (local or ingested). Returns a function that unsubscribes."""
        return _listen(self._change_listeners, callback)

    def _notify_changes(self) -> None:
        touched, self._touched = self._touched, set()
        self._status_dirty = False
        for document in sorted(touched):
            for callback in list(self._change_listeners):
                callback(document)
        self._publish()

    # -- writes --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ReplicaError("this replica is closed; open it again", code="replica_closed")

    @contextmanager
    def _writing(self) -> Iterator[Txn]:
        """A write transaction. If it fails, loaded documents are rebuilt
        from disk so that they never hold what the log does not."""
        self._check_open()
        outermost = not self._log.store.in_write
        try:
            with self._log.write() as txn:
                yield txn
                if outermost and self._outgoing:
                    outgoing, self._outgoing = self._outgoing, []
                    assert self._publisher is not None
                    self._publisher(outgoing)  # raises StorageError: then nothing of it is committed here
        except BaseException as exc:
            if outermost:
                self._outgoing.clear()
                self._touched.clear()
                self._status_dirty = False
                self._reload()
            if isinstance(exc, StoreFailure):
                raise _storage_error(exc) from exc
            raise
        finally:
            if self._missing_memo:  # a write inside same_log(): what was read may be stale
                self._missing_memo.clear()
            if self._vv_memo:
                self._vv_memo.clear()
            if self._answers:
                self._answers.clear()
        if outermost and (self._touched or self._status_dirty):
            self._notify_changes()
        if outermost:
            self._documents.evict()

    def publish_to(self, publisher: Publisher | None) -> None:
        """Hand every delta and snapshot that a write transaction stores from
        elsewhere (``ingest``, ``ingest_snapshot``) to ``publisher`` before that
        transaction commits, in the order stored: a relay sharing its log
        (``replica.redis_log``) makes them durable there first. If it raises
        :class:`~replica.errors.StorageError`, the transaction is abandoned and
        nothing of it is stored here either. None: stop publishing."""
        self._publisher = publisher

    @contextmanager
    def unpublished(self) -> Iterator[None]:
        """Store without publishing inside (what came from the shared log itself)."""
        publisher, self._publisher = self._publisher, None
        try:
            yield
        finally:
            self._publisher = publisher

    def _reload(self) -> None:
        with self._log.read() as txn:
            for name, document in self._documents.items():
                document.rebuild(self._log.payloads(txn, name))

    def _commit_local(self, document: Document, update: bytes) -> None:
        txn = self._log.store.current_write
        if txn is None:
            with self._writing() as txn:
                self._append_local(txn, document, update)
        else:  # inside batch(): the hot path of bulk work
            try:
                self._append_local(txn, document, update)
            except StoreFailure as exc:
                raise _storage_error(exc) from exc

    def _append_local(self, txn: Txn, document: Document, update: bytes) -> None:
        self._log.append_next(txn, document.name, self.id, update)
        self._touched.add(document.name)
        self._documents.grew(document.name, len(update))

    # -- what sessions read (``replica.session_terms.LogView``) ---------------------

    def version_vector(self, document: str) -> VersionVector:
        """``{origin: highest seq held}`` for ``document``."""
        self._check_open()
        memo = self._vv_memo
        if memo is not None:  # inside same_log(): every link of a fan-out asks for the same one
            found = memo.get(document)
            if found is None:
                with self._log.read() as txn:
                    found = memo[document] = dict(self._log.version_vector(txn, document))
            return dict(found)
        with self._log.read() as txn:
            return self._log.version_vector(txn, document)

    def tips(self, document: str) -> dict[str, bytes]:
        """``{origin: checksum of its last delta held}`` for ``document``:
        compared at each handshake to find two devices sharing a replica id."""
        self._check_open()
        with self._log.read() as txn:
            return {
                origin: check
                for origin, seq in self._log.version_vector(txn, document).items()
                if (check := self._log.checksum_of(txn, document, origin, seq)) is not None
            }

    def checksum_of(self, document: str, origin: str, seq: int) -> bytes | None:
        """The checksum of a held delta, or None."""
        self._check_open()
        with self._log.read() as txn:
            return self._log.checksum_of(txn, document, origin, seq)

    def missing_deltas(
        self, document: str, remote: Mapping[str, int], *, most: int | None = None, most_bytes: int | None = None
    ) -> list[Delta]:
        """The deltas of ``document`` that a replica holding version vector
        ``remote`` lacks, in an order it can apply them; with ``most`` or
        ``most_bytes``, only the first of them (a prefix of that order, which
        it can apply as it is: see ``DeltaLog.missing``)."""
        self._check_open()
        with self._log.read() as txn:
            return self._log.missing(txn, document, remote, self._missing_memo, most=most, most_bytes=most_bytes)

    def span_of(self, run: Sequence[Delta]) -> Delta:
        """``run`` (adjacent deltas of one origin, contiguous seqs) as one
        span, merged once for every link it goes to (see ``replica.spans``)."""
        return self._spans.span(run)

    def missing_spans(
        self,
        document: str,
        remote: Mapping[str, int],
        *,
        upto: Mapping[str, int],
        most: int | None = None,
        most_bytes: int | None = None,
        shortest: int = spans.SPAN_MIN,
        longest: int = spans.SPAN_MAX,
    ) -> list[Delta]:
        """What :meth:`missing_deltas` answers (ending before the first delta
        ``upto`` does not cover), with each run of at least ``shortest``
        adjacent deltas of one origin as spans cut after every multiple of
        ``longest`` seqs (``spans.aligned``): what a relay sends. Read run by
        run from the log's index where it has one, and each span merged once
        for every link (see ``replica.runindex``)."""
        self._check_open()
        answers = self._answers
        if answers is None:
            return self._missing_spans(document, remote, upto, most, most_bytes, shortest, longest)
        key = ("spans", document, *sorted(remote.items()), None, *sorted(upto.items()), most, most_bytes)
        key += (shortest, longest)
        found = answers.get(key)
        if found is None:  # inside same_log(): every link of a fan-out at the same point asks for the same
            found = answers[key] = self._missing_spans(document, remote, upto, most, most_bytes, shortest, longest)
        return list(found)

    def _missing_spans(
        self,
        document: str,
        remote: Mapping[str, int],
        upto: Mapping[str, int],
        most: int | None,
        most_bytes: int | None,
        shortest: int,
        longest: int,
    ) -> list[Delta]:
        out: list[Delta] = []
        with self._log.read() as txn:
            pieces = self._log.missing_pieces(
                txn, document, remote, upto=upto, most=most, most_bytes=most_bytes, align=longest
            )
            if pieces is None:  # too fragmented to index: row by row, then grouped
                found = self._log.missing(txn, document, remote, self._missing_memo, most=most, most_bytes=most_bytes)
                held = list(itertools.takewhile(lambda d: d.seq <= upto.get(d.origin, 0), found))
                return spans.group(held, self._spans.span, shortest=shortest, longest=longest)
            for origin, piece in pieces:
                if piece.span:
                    out.extend(self._log.piece_deltas(txn, document, piece))
                    continue
                for first, last in spans.aligned(piece.first, piece.last, longest):
                    made = self._spans.get(document, origin, first, last) if last - first + 1 >= shortest else None
                    if made is not None:
                        out.append(made)
                        continue
                    run = self._log.piece_deltas(txn, document, piece, first, last)
                    # As spans (cut sooner if the deltas are large; one by one if pycrdt cannot merge them).
                    out.extend(spans.group(run, self._spans.span, shortest=shortest, longest=longest))
        return out

    def snapshot_for(self, document: str, remote: Mapping[str, int]) -> Snapshot | None:
        """The snapshot of ``document``, if a replica holding ``remote`` lacks
        some of what it covers (those deltas are held here only as it)."""
        self._check_open()
        answers = self._answers
        key = None if answers is None else ("snapshot", document, *sorted(remote.items()))
        if answers is not None and key in answers:  # inside same_log(), as missing_spans
            return answers[key]  # type: ignore[no-any-return]
        with self._log.read() as txn:  # on every refill of every link: read the state only when it is sent
            if covers(remote, self._log.base_vv(txn, document)):
                found = None
            else:
                found = self._log.base(txn, document)
                assert found is not None
        snapshot = None if found is None else deltas.make_snapshot(document, *found)
        if answers is not None and key is not None:
            answers[key] = snapshot
        return snapshot

    def state_snapshot(self, document: str) -> Snapshot:
        """The whole state of ``document`` now, as a snapshot standing for
        every delta it holds (what a relay of several hands the shared log)."""
        self._check_open()
        with self._log.read() as txn:
            vv = self._log.version_vector(txn, document)
        return deltas.make_snapshot(document, vv, self.doc(document).state())

    def partial_snapshots(self) -> dict[str, tuple[bytes, int]]:
        """``{document: (checksum, bytes held)}`` of the snapshots whose
        transfer a dropped connection cut: told to the other side at the
        next handshake, which sends the rest of the same state."""
        self._check_open()
        with self._log.read() as txn:
            return self._log.partials(txn)

    def partial_snapshot(self, document: str) -> SnapshotPart | None:
        """What arrived of ``document``'s snapshot before a connection
        dropped, as one part from byte 0."""
        self._check_open()
        with self._log.read() as txn:
            found = self._log.partial(txn, document)
        if found is None:
            return None
        vv, check, size, data = found
        return SnapshotPart(document, vv, check, size, 0, data)

    def keep_snapshot_part(self, part: IncomingSnapshotPart) -> None:
        """Keep a part of a snapshot still arriving (see :meth:`partial_snapshots`)."""
        with self._writing() as txn:
            self._log.add_partial(txn, part.document, part.vv, part.checksum, part.size, part.offset, part.data)

    def ingest_snapshot(self, snapshot: Snapshot) -> IngestResult:
        """Store and apply another replica's state of a document (it stands
        for every delta up to ``snapshot.vv``), checked first: names, size,
        checksum, and that it claims nothing this replica made that it does
        not hold (a replica id clash). The state joins this replica's own
        snapshot of the document, and the deltas it covers are dropped.
        ``applied`` counts the deltas it brought."""
        name = snapshot.document

        def reject(reason: str, message: str) -> IngestResult:
            refused = errors.DeltaRejected(reason, message, document=name, origin="", seq=0)
            log.warning("%s", refused)
            return IngestResult(0, 0, refused)

        with self._writing() as txn:  # whole now: what arrived of it in parts is no longer needed
            self._log.drop_partial(txn, name)
        found = compaction.refusal(snapshot, max_bytes=self.max_snapshot_bytes)
        if found is not None:
            return reject(*found)
        with self._writing() as txn:
            held = self._log.version_vector(txn, name)
            if snapshot.vv.get(self.id, 0) > held.get(self.id, 0):
                return reject(errors.REJECT_CLASH, "it holds changes of this replica's id that this replica never made")
            brought = count_missing(held, snapshot.vv)
            if not brought:
                return IngestResult(0, 1)
            document = self.doc(name)
            failure = document.apply_remote([snapshot.data])
            if failure is not None:
                document.rebuild(self._log.payloads(txn, name))
                return reject(errors.REJECT_MALFORMED, f"not a valid Yjs update ({failure[1]})")
            base = self._log.base_vv(txn, name)
            claim = dict(base)
            merge(claim, snapshot.vv)  # the old snapshot and the new state are both in the document now
            # Held only in this state from now on: what it covers, and the old snapshot's content.
            state = snapshot.data if not held else document.state()
            self._log.set_base(txn, name, claim, state)
            if self._publisher is not None:
                self._outgoing.append(snapshot)
            self._touched.add(name)
            self._documents.grew(name, len(snapshot.data))
        return IngestResult(brought, 0)

    def tail_length(self, document: str) -> int:
        """How many deltas of ``document`` follow its snapshot (all of them without one)."""
        self._check_open()
        with self._log.read() as txn:
            return count_missing(self._log.base_vv(txn, document), self._log.version_vector(txn, document))

    def compact_due(
        self, every: int, documents: Iterable[str] | None = None, *, bound: str | None = RELAY, keep: int = 0
    ) -> int:
        """:meth:`compact` the documents (all by default) that have more than
        ``every`` deltas after their snapshot; how many deltas were replaced."""
        names = self.documents() if documents is None else list(documents)
        due = [name for name in names if self.tail_length(name) > every]
        return self.compact(due, bound=bound, keep=keep) if due else 0

    def compact(
        self,
        documents: Iterable[str] | None = None,
        *,
        bound: str | None = RELAY,
        keep: int = 0,
        most: int | None = None,
    ) -> int:
        """Replace old deltas with a snapshot, document by document; returns
        how many deltas were replaced.

        Compacts the longest prefix of each document's deltas (in applied
        order, so it is causally complete) that ``bound``'s watermark covers
        (a device: only what the relay durably acknowledged, so ``unsynced``
        deltas stay one by one; ``bound=None`` on the relay: everything),
        keeping at least the ``keep`` newest deltas as they are, and at most
        ``most`` deltas per document and call (short steps for a server that
        must keep answering; see ``replica.compaction``)."""
        self._check_open()
        names = self.documents() if documents is None else list(documents)
        replaced = 0
        for name in names:
            with self._writing() as txn:
                replaced += compaction.compact_document(self._log, txn, name, bound=bound, keep=keep, most=most)
        return replaced

    @contextmanager
    def same_log(self) -> Iterator[None]:
        """A block in which nothing commits, so that :meth:`missing_deltas`,
        :meth:`missing_spans` and :meth:`snapshot_for` answer each
        ``(document, version vector)`` once, and :meth:`version_vector` each
        document once: a relay fanning one commit out to many live links at
        the same point reads the log once."""
        outer, outer_vv, outer_answers = self._missing_memo, self._vv_memo, self._answers
        self._missing_memo = {} if outer is None else outer
        self._vv_memo = {} if outer_vv is None else outer_vv
        self._answers = {} if outer_answers is None else outer_answers
        try:
            yield
        finally:
            self._missing_memo, self._vv_memo, self._answers = outer, outer_vv, outer_answers

    def ingest(self, incoming: Iterable[Delta]) -> IngestResult:
        """Store and apply deltas from another replica, in the order given.

        Enforces the delivery rules: cheap checks before pycrdt sees the bytes,
        per-origin seq order without gaps, duplicates skipped (but a different
        delta under a held ``(origin, seq)`` is a replica id clash), pycrdt
        failures caught and the document rebuilt. Stops at the first refused
        delta; those before it are stored (in one commit). Consecutive deltas
        of one document are applied in one pycrdt transaction (twice as fast
        as one each).
        """
        applied = duplicates = 0
        rejected = None
        run: list[Delta] = []  # checked deltas of one document, not applied yet
        queued: dict[str, int] = {}  # the last seq of each origin in ``run``
        known: set[tuple[str, str]] = set()  # (document, origin) names already checked
        with self._writing() as txn:
            for item in incoming:
                if run and item.document != run[0].document:
                    stored, rejected = self._apply_run(txn, run)
                    applied += stored
                    run, queued = [], {}
                    if rejected is not None:
                        break
                try:
                    new = self._check_incoming(txn, item, run, queued.get(item.origin, 0), known)
                except errors.DeltaRejected as exc:
                    rejected = exc
                    break
                if new:
                    run.append(item)
                    queued[item.origin] = item.seq
                else:
                    duplicates += 1
            if run:
                stored, failed = self._apply_run(txn, run)
                applied += stored
                rejected = failed or rejected  # a failed apply comes before a refused check
        if rejected is not None:
            log.warning("%s", rejected)
        return IngestResult(applied, duplicates, rejected)

    def _check_incoming(
        self, txn: Txn, item: Delta, run: list[Delta], queued: int, known: set[tuple[str, str]]
    ) -> bool:
        """Check one foreign delta; True if it is new, False if already held."""
        deltas.precheck(item, max_bytes=self.max_delta_bytes)

        def reject(reason: str, message: str) -> errors.DeltaRejected:
            return errors.DeltaRejected(reason, message, document=item.document, origin=item.origin, seq=item.seq)

        if (item.document, item.origin) not in known:
            try:
                check_document_name(item.document)
                check_replica_id(item.origin)
            except ValueError as exc:
                raise reject(errors.REJECT_INVALID, str(exc)) from exc
            known.add((item.document, item.origin))
        stored = self._log.held_seq(txn, item.document, item.origin)
        held = max(stored, queued)
        if item.seq <= held:
            if item.first:
                return False  # a span of held seqs: its checksum is of merged bytes, nothing to compare
            if item.seq <= stored:
                check = self._log.checksum_of(txn, item.document, item.origin, item.seq)
            else:
                same = (d for d in run if d.origin == item.origin and d.seq == item.seq and not d.first)
                check = next((d.checksum for d in same), None)
            if check is None:
                return False  # held in the snapshot or in a span: no longer one by one to compare with
            if check != item.checksum:
                raise reject(
                    errors.REJECT_CLASH,
                    "another delta with this origin and seq is already held; two devices are using the same replica id",
                )
            return False
        if item.origin == self.id:
            raise reject(errors.REJECT_CLASH, "this replica never made it; another device is using this replica's id")
        if item.start > held + 1:
            raise reject(errors.REJECT_GAP, f"seqs {held + 1} to {item.start - 1} of this origin must come first")
        return True

    def _apply_run(self, txn: Txn, run: list[Delta]) -> tuple[int, errors.DeltaRejected | None]:
        """Apply checked deltas of one document and store those that applied."""
        name = run[0].document
        document = self.doc(name)
        failure = document.apply_remote([item.data for item in run])
        good = run if failure is None else run[: failure[0]]
        for item in good:
            self._log.append(txn, item)
        if good and self._publisher is not None:
            self._outgoing.extend(good)
        if good:
            self._touched.add(name)
            self._documents.grew(name, sum(len(item.data) for item in good))
        if failure is None:
            return len(good), None
        document.rebuild(self._log.payloads(txn, name))  # a failed apply may have left partial state
        bad = run[failure[0]]
        return len(good), errors.DeltaRejected(
            errors.REJECT_MALFORMED,
            f"not a valid Yjs update ({failure[1]})",
            document=name,
            origin=bad.origin,
            seq=bad.seq,
        )

    # -- peers ---------------------------------------------------------------

    def peers(self) -> dict[str, PeerStatus]:
        """Where syncing with each peer device stands (the relay-facing
        status is :meth:`status`)."""
        self._check_open()
        out = {}
        with self._log.read() as txn:
            for peer, record in self._log.peer_records(txn):
                documents = self._log.watermarked_documents(txn, peer)
                error = None if record["error"] is None else errors.ErrorInfo(*record["error"])
                out[peer] = PeerStatus(
                    peer, self._log.not_covered(txn, peer, documents), record["to_receive"], record["synced_at"], error
                )
        return out

    # -- settings kept with the data (for the sync machinery) ----------------

    def setting(self, name: str) -> str | None:
        """A value stored with this replica's data (credentials, pinned keys)."""
        self._check_open()
        with self._log.read() as txn:
            return self._log.get_meta(txn, "setting." + name)

    def set_setting(self, name: str, value: str) -> None:
        """Store a value with this replica's data, durably."""
        with self._writing() as txn:
            self._log.set_meta(txn, "setting." + name, value)

    # -- what remotes hold and refuse (for the sync machinery) ---------------

    def acknowledge(self, remote: str, document: str, vv: Mapping[str, int]) -> None:
        """Record that ``remote`` durably holds ``vv`` of ``document``."""
        with self._writing() as txn:
            self._log.set_watermark(txn, remote, document, vv)
            self._status_dirty = True

    def watermark(self, remote: str, document: str) -> VersionVector:
        """What ``remote`` has durably acknowledged of ``document``."""
        self._check_open()
        with self._log.read() as txn:
            return self._log.watermark(txn, remote, document)

    def record_rejection(self, remote: str, rejection: Rejection) -> None:
        """Record a lasting refusal by ``remote`` (kept, counted, shown)."""
        with self._writing() as txn:
            self._log.set_rejection(txn, remote, rejection)
            self._status_dirty = True

    def clear_rejection(self, remote: str, document: str) -> None:
        """``remote`` accepts ``document`` again: forget its refusal of it."""
        with self._writing() as txn:
            self._log.clear_rejection(txn, remote, document)
            self._status_dirty = True

    def clear_rejections(self, remote: str) -> None:
        """Forget every refusal by ``remote`` (what it refused is offered again)."""
        with self._writing() as txn:
            if self._log.clear_rejections(txn, remote):
                self._status_dirty = True

    def rejections(self, remote: str = RELAY) -> list[Rejection]:
        """Lasting refusals recorded for ``remote``."""
        self._check_open()
        with self._log.read() as txn:
            return self._log.rejections(txn, remote)


def _listen(listeners: list[Callable[[_T], None]], callback: Callable[[_T], None]) -> Callable[[], None]:
    listeners.append(callback)

    def unsubscribe() -> None:
        if callback in listeners:
            listeners.remove(callback)

    return unsubscribe


def _storage_error(exc: StoreFailure) -> errors.StorageError:
    return errors.StorageError(f"could not save to the data directory ({exc}); the last changes were not kept")
