"""Glue between sessions and a replica, shared by every edge.

:func:`settle` applies the events of one or many sessions that touch storage
(incoming batches, acknowledgements, refusals) in ONE write transaction,
then tells each session what became of its batches so that it can ack them
after the commit. A relay calls it for all its links at once (group commit);
a device for its one link; the simulated networks of ``replica.testing`` the
same way, so that every edge follows the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from replica.delta import Delta
from replica.log import Rejection, VersionVector
from replica.replica import IngestResult, Replica
from replica.session import (
    Acknowledged,
    Connected,
    Denied,
    Event,
    Incoming,
    Rejected,
    Session,
    remote_key,
)

#: Roles whose acknowledgements are kept as watermarks. A relay does not keep
#: one per device: it never needs to know what a device holds after the link.
_TRACKED_ROLES = ("relay", "peer")


def settle(replica: Replica, sessions: Iterable[Session]) -> list[tuple[Session, Event]]:
    """Apply the storage events of ``sessions`` in one commit, tell each
    session what became of its batches, and return every event, in order,
    for the edge to report (all of them already stored)."""
    stored: list[tuple[Session, Event]] = []
    others: list[tuple[Session, Event]] = []
    for session in sessions:
        for event in session.events():
            if isinstance(event, Incoming | Acknowledged | Denied | Rejected | Connected):
                stored.append((session, event))
            others.append((session, event))
    if not stored:
        return others
    results: list[tuple[Session, Incoming, IngestResult]] = []
    with replica.batch():
        for session, event in stored:
            _store(replica, session, event, results)
    for session, incoming, result in results:
        session.ingested(incoming, result)
    for session in {id(s): s for s, _, _ in results}.values():  # ingested() may complete or close a session
        others.extend((session, event) for event in session.events())
    return others


def _store(
    replica: Replica, session: Session, event: Event, results: list[tuple[Session, Incoming, IngestResult]]
) -> None:
    if session.remote_id is None or session.remote_role is None:
        return
    key = remote_key(session.remote_id, session.remote_role)
    # A device keeps watermarks for its relay and its peers, whichever side of the link it is on.
    tracked = session.remote_role in _TRACKED_ROLES or session.role == "peer"
    if isinstance(event, Incoming):
        result = replica.ingest(event.deltas)
        results.append((session, event, result))
        if tracked:  # what it sent us is in its log: on its disk
            held = event.deltas[: result.applied + result.duplicates]
            for document, vv in vv_by_document(held).items():
                replica.acknowledge(key, document, vv)
        return
    if not tracked:
        return
    if isinstance(event, Acknowledged):
        replica.acknowledge(key, event.document, event.vv)
    elif isinstance(event, Connected):
        for document, vv in event.documents.items():
            replica.acknowledge(key, document, vv)  # what it holds is on its disk
            replica.clear_rejection(key, document)
    elif isinstance(event, Denied):
        replica.record_rejection(key, Rejection(event.document, None, 0, event.code, event.message))
    elif isinstance(event, Rejected):
        replica.record_rejection(key, Rejection(event.document, event.origin, event.seq, event.code, event.message))


def vv_by_document(deltas: Iterable[Delta]) -> dict[str, VersionVector]:
    """The highest seq of each origin in ``deltas``, per document."""
    out: dict[str, VersionVector] = {}
    for item in deltas:
        vv = out.setdefault(item.document, {})
        if item.seq > vv.get(item.origin, 0):
            vv[item.origin] = item.seq
    return out
