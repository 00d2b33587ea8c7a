"""The terms a sync session works on, apart from the state machine itself
(``replica.session``): what it reads of its replica (:class:`LogView`, which
the engine provides), what an acceptor grants a remote (:class:`Grant`, made
by an :data:`Authorizer`), how an initiator presents itself and checks the
other side (:class:`Trust`), and the limits and batching it keeps
(:class:`Limits`). ``replica.session`` re-exports them all."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from replica import spans, wire
from replica.delta import MAX_SNAPSHOT_BYTES, Delta, Snapshot
from replica.log import Rejection
from replica.vv import VersionVector

__all__ = ["Authorizer", "Grant", "Limits", "LogView", "Trust"]


class LogView(Protocol):
    """The reads a session makes of its replica's log (the engine,
    ``replica.engine.Engine``, provides them). The session never writes."""

    @property
    def id(self) -> str: ...

    def documents(self) -> list[str]: ...

    def version_vector(self, document: str) -> VersionVector: ...

    def tips(self, document: str) -> dict[str, bytes]: ...

    def checksum_of(self, document: str, origin: str, seq: int) -> bytes | None: ...

    def missing_deltas(
        self, document: str, remote: Mapping[str, int], *, most: int | None = None, most_bytes: int | None = None
    ) -> list[Delta]: ...

    def snapshot_for(self, document: str, remote: Mapping[str, int]) -> Snapshot | None: ...

    def span_of(self, run: Sequence[Delta]) -> Delta: ...

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
    ) -> list[Delta]: ...

    def partial_snapshots(self) -> dict[str, tuple[bytes, int]]: ...

    def partial_snapshot(self, document: str) -> wire.SnapshotPart | None: ...

    def rejections(self, remote: str) -> list[Rejection]: ...


@dataclass(frozen=True)
class Grant:
    """What an acceptor allows a remote that passed authorization, and what
    it puts in its ``welcome``. With ``verify_proof`` set (peers), nothing is
    exchanged until the initiator's ``proof`` frame passes it."""

    replica_id: str
    allows: Callable[[str], bool]
    offer_all: bool = True  # also offer every local document it allows
    credential: str | None = None
    relay_key: bytes | None = None
    challenge: bytes | None = None
    proof: bytes | None = None
    verify_proof: Callable[[bytes], None] | None = None
    revocations: str | None = None  # the relay's signed revocation list, as the acceptor knows it


class Trust(Protocol):
    """How an initiator presents itself and checks who answered (see
    ``replica.trust``). Raise a :class:`~replica.errors.ReplicaError` to refuse."""

    def hello_fields(self) -> tuple[str | None, bytes | None, bytes | None, str | None]:
        """``(credential, challenge, device public key, revocation list)`` for the ``hello``."""
        ...

    def check_welcome(self, welcome: wire.Welcome, now: float) -> tuple[Callable[[str], bool], bytes | None]:
        """Which documents may be exchanged with that side, and the proof to
        send it (None: no proof frame, as with a relay)."""
        ...


#: Called by an acceptor with the ``hello`` and ``now``; returns a grant or
#: raises a :class:`~replica.errors.ReplicaError` (code sent to the remote).
Authorizer = Callable[[wire.Hello, float], Grant]


@dataclass(frozen=True)
class Limits:
    """Limits one side enforces on what it receives, and its batching."""

    max_frame_bytes: int = wire.MAX_FRAME_BYTES
    max_batch: int = wire.MAX_BATCH
    max_documents: int = wire.MAX_DOCUMENTS
    max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES  # largest document state received whole
    window: int = 4  # unacknowledged batches in flight
    min_batch_bytes: int = 8 * 1024
    start_batch_bytes: int = 64 * 1024
    max_batch_bytes: int = 2 * 1024 * 1024
    fast_ack: float = 0.05  # seconds: grow batches when acks are faster
    slow_ack: float = 0.5  # seconds: shrink batches when acks are slower
    span_min: int = spans.SPAN_MIN  # a relay sends runs of this many deltas as one span (0: never)
    span_max: int = spans.SPAN_MAX
    #: Deltas read from the log ahead of sending, per document: at most this many, and no more once
    #: their bytes reach ``pending_bytes``; the rest is read when these are out (see ``Session._refill``).
    pending_deltas: int = wire.MAX_BATCH
    pending_bytes: int = 512 * 1024
