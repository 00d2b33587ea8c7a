"""Glue between sessions and an engine, shared by every edge.

:func:`settle` applies the events of one or many sessions that touch storage
(incoming batches, acknowledgements, refusals) in ONE write transaction,
then tells each session what became of its batches so that it can ack them
after the commit, and that its events are stored (``Session.settled``), so
that it may decide that its run is complete. A relay calls it for all its links at once (group commit);
a device for its one link; the simulated fleet of ``replica.testing`` the
same way, so that every edge follows the same rules.

If that commit fails, nothing it held was stored: no session is told its
batches were ingested (so none is acknowledged), no change is announced, and
every session of the commit fails with a retryable ``storage_error``. The
engine rebuilt its documents from disk and keeps working.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from replica.engine import Engine
from replica.errors import StorageError
from replica.events import (
    Acknowledged,
    Connected,
    Denied,
    Event,
    Incoming,
    IncomingSnapshot,
    IncomingSnapshotPart,
    IngestResult,
    Rejected,
)
from replica.log import Rejection
from replica.names import remote_key
from replica.session import Session
from replica.trust import remember_relay_answer
from replica.vv import by_document

log = logging.getLogger("replica.sync")

#: Roles whose acknowledgements are kept as watermarks. A relay does not keep
#: one per device: it never needs to know what a device holds after the link.
_TRACKED_ROLES = ("relay", "peer")


def settle(engine: Engine, sessions: Iterable[Session]) -> list[tuple[Session, Event]]:
    """Apply the storage events of ``sessions`` in one commit, tell each
    session what became of its batches, and return every event, in order,
    for the edge to report (all of them already stored)."""
    sessions = list(sessions)
    stored: list[tuple[Session, Event]] = []
    others: list[tuple[Session, Event]] = []
    for session in sessions:
        for event in session.events():
            if isinstance(
                event, Incoming | IncomingSnapshot | IncomingSnapshotPart | Acknowledged | Denied | Rejected | Connected
            ):
                stored.append((session, event))
            others.append((session, event))
    if not stored:
        return others
    results: list[tuple[Session, Incoming | IncomingSnapshot, IngestResult]] = []
    writes = [(session, event) for session, event in stored if _writes(session, event)]
    try:
        if writes:  # a relay's acks from devices write nothing: no transaction for them
            with engine.batch():
                for session, event in writes:
                    _store(engine, session, event, results)
    except StorageError as exc:
        log.error("could not store what %d link(s) received: %s", len(sessions), exc)
        for session in sessions:
            session.fail("storage_error", f"the receiver could not store the deltas ({exc.message})", True)
        return others + [(session, event) for session in sessions for event in session.events()]
    for session, incoming, result in results:
        session.ingested(incoming, result)
    for session in sessions:  # ingested() and settled() may complete or close a session
        session.settled()
        others.extend((session, event) for event in session.events())
    return others


def _tracked(session: Session) -> bool:
    """A device keeps watermarks for its relay and its peers, whichever side of the link it is on."""
    return session.remote_role in _TRACKED_ROLES or session.role == "peer"


def _writes(session: Session, event: Event) -> bool:
    """Whether :func:`_store` writes anything for ``event``."""
    if session.remote_id is None or session.remote_role is None:
        return False
    return isinstance(event, Incoming | IncomingSnapshot | IncomingSnapshotPart) or _tracked(session)


def _store(
    engine: Engine,
    session: Session,
    event: Event,
    results: list[tuple[Session, Incoming | IncomingSnapshot, IngestResult]],
) -> None:
    """Write what ``event`` stores; called only for events :func:`_writes` admits."""
    assert session.remote_id is not None and session.remote_role is not None
    key = remote_key(session.remote_id, session.remote_role)
    tracked = _tracked(session)
    if isinstance(event, Incoming):
        result = engine.ingest(event.deltas)
        results.append((session, event, result))
        if tracked:  # what it sent us is in its log: on its disk
            held = event.deltas[: result.applied + result.duplicates]
            for document, vv in by_document(held).items():
                engine.acknowledge(key, document, vv)
        return
    if isinstance(event, IncomingSnapshotPart):
        engine.keep_snapshot_part(event)
        return
    if isinstance(event, IncomingSnapshot):
        result = engine.ingest_snapshot(event.snapshot)
        results.append((session, event, result))
        if tracked and result.rejected is None:  # it held this state: it holds those deltas
            engine.acknowledge(key, event.document, event.snapshot.vv)
        return
    if isinstance(event, Acknowledged):  # the rest only for tracked remotes (see _writes)
        engine.acknowledge(key, event.document, event.vv)
    elif isinstance(event, Connected):
        if session.remote_role == "relay":
            remember_relay_answer(engine, event.credential)  # for peers: the credential bound to this device's key
        for document, vv in event.documents.items():
            engine.acknowledge(key, document, vv)  # what it holds is on its disk
            engine.clear_rejection(key, document)
    elif isinstance(event, Denied):
        engine.record_rejection(key, Rejection(event.document, None, 0, event.code, event.message))
    elif isinstance(event, Rejected):
        engine.record_rejection(key, Rejection(event.document, event.origin, event.seq, event.code, event.message))
