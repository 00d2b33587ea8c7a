"""Events a sync session reports to its edge (see ``replica.session``).

Frozen dataclasses, as in h11: the edge (``replica.sync.settle``, the status
rules in ``replica.runs`` and the asyncio code in ``replica.net``) reads them
and decides what to store or show. :class:`IngestResult` goes the other way:
what the engine did with an :class:`Incoming` batch, told back to the session.
"""

from __future__ import annotations

from dataclasses import dataclass

from replica.delta import Delta, Snapshot
from replica.errors import DeltaRejected, ErrorInfo
from replica.vv import VersionVector


@dataclass(frozen=True)
class Connected:
    """The handshake is done; ``documents`` are the other side's version
    vectors at that moment. From a relay: ``credential`` is a credential bound
    to this device's key, ``relay_key`` the relay's public key."""

    remote_id: str
    remote_role: str
    documents: dict[str, VersionVector]
    to_send: int
    to_receive: int
    credential: str | None = None
    relay_key: bytes | None = None


@dataclass(frozen=True)
class Incoming:
    """A batch to ingest; answer with :meth:`Session.ingested`."""

    document: str
    deltas: tuple[Delta, ...]


@dataclass(frozen=True)
class IncomingSnapshot:
    """A document's state, standing for its deltas up to ``snapshot.vv``, to
    ingest; answer with :meth:`Session.ingested` like a batch."""

    document: str
    snapshot: Snapshot


@dataclass(frozen=True)
class IncomingSnapshotPart:
    """Bytes ``offset`` to ``offset + len(data)`` of a snapshot still
    arriving (``size`` bytes in all): to keep, so that a dropped connection
    resumes after them instead of from byte 0. Nothing is acknowledged."""

    document: str
    vv: dict[str, int]
    checksum: bytes
    size: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class Acknowledged:
    """The other side durably holds ``vv`` of ``document``."""

    remote_id: str
    remote_role: str
    document: str
    vv: VersionVector
    count: int


@dataclass(frozen=True)
class Denied:
    """The other side refuses ``document`` (for example: out of scope)."""

    document: str
    code: str
    message: str


@dataclass(frozen=True)
class Rejected:
    """The other side refused one of our deltas for good; it and the later
    deltas of its origin cannot be delivered to that side."""

    document: str
    origin: str
    seq: int
    code: str
    message: str


@dataclass(frozen=True)
class Completed:
    """Once: the run is complete. Live: caught up with the other side."""


@dataclass(frozen=True)
class Closed:
    """The session is over; ``error`` is None if it ended cleanly."""

    error: ErrorInfo | None


Event = (
    Connected
    | Incoming
    | IncomingSnapshot
    | IncomingSnapshotPart
    | Acknowledged
    | Denied
    | Rejected
    | Completed
    | Closed
)


@dataclass(frozen=True)
class IngestResult:
    """What the engine did with a batch of deltas, in order: it stored
    ``applied`` deltas, skipped ``duplicates`` already held, and stopped at
    ``rejected`` (not stored) if that is set."""

    applied: int
    duplicates: int
    rejected: DeltaRejected | None = None
