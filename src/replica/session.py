"""The sans-I/O sync session: one link between two replicas.

Theory of operation
-------------------
A :class:`Session` is fed frames (bytes) and returns frames to send and events;
it has no socket and no clock (the caller passes ``now`` in). The same class
serves both ends of a link and every role (device, relay, peer): the side that
connects is the *initiator* and sends ``hello``; the other, the *acceptor*,
authorizes it and answers ``welcome``. From then on both sides are symmetric::

    initiator                         acceptor
    hello(id, credential, VVs)  -->
                                <--   welcome(id, VVs, denied documents)
    deltas(doc, batch)          -->   (stored, then) <-- ack(doc, VV after commit)
    ack(doc, VV after commit)   <--   deltas(doc, batch)
    done                        -->
                                <--   done
    (once: initiator closes when complete; live: stays open, streams new deltas)

Each side sends, per document, what the other lacks according to the version
vectors exchanged in the handshake, in the order its log applied them (each
origin's seqs in order), in batches whose size adapts to how fast acks come
back, with at most ``window`` unacknowledged batches in flight. ``done`` means
"I have sent everything I held when the run started".

The session never writes to the store itself. Incoming batches become
:class:`Incoming` events; the caller ingests them (a relay groups the batches of
all its links into one commit) and then calls :meth:`Session.ingested`, which
queues the ``ack`` carrying the version vector *after* that commit. Acks from
the other side become :class:`Acknowledged` events, which the caller turns into
durable watermarks.

A run is complete (:class:`Completed`) when the other side has said ``done``,
it has acknowledged every delta this side held at the handshake, and this side
holds everything the other side held then: a condition on version vectors,
not on counters. Completion is decided only once the caller has committed what
the session reported (its acks as watermarks, the handshake's version
vectors) and said so with :meth:`Session.settled`: a run whose last
acknowledgement could not be stored is not complete. Anything malformed from the other side queues an ``error``
frame, closes the session and emits :class:`Closed`; nothing it sent after
the fault is stored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from replica import spans, wire
from replica.delta import Delta, Snapshot
from replica.errors import ErrorInfo, ReplicaError
from replica.events import (
    Acknowledged,
    Closed,
    Completed,
    Connected,
    Denied,
    Event,
    Incoming,
    IncomingSnapshot,
    IncomingSnapshotPart,
    IngestResult,
    Rejected,
)
from replica.names import remote_key
from replica.session_terms import Authorizer, Grant, Limits, LogView, Trust
from replica.vv import VersionVector, count_missing, covers, merge, of_deltas

__all__ = [
    "Acknowledged",
    "Authorizer",
    "Closed",
    "Completed",
    "Connected",
    "Denied",
    "Event",
    "Grant",
    "Incoming",
    "Limits",
    "LogView",
    "Rejected",
    "Session",
    "SessionState",
    "Trust",
]


class SessionState(enum.Enum):
    """Where a session stands: ``IDLE -> HANDSHAKE -> (PROVING ->) OPEN -> CLOSED``.
    An initiator goes to ``HANDSHAKE`` when it sends its hello; an acceptor
    waits in ``IDLE`` for it, then in ``PROVING`` for a peer's proof."""

    IDLE = "idle"
    HANDSHAKE = "handshake"
    PROVING = "proving"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class _Whole:
    """A snapshot queued to send, and how many deltas the other side lacks in it."""

    snapshot: Snapshot
    count: int


@dataclass(slots=True)
class _Doc:
    remote: VersionVector  # what the other side is known to hold durably
    queued: VersionVector  # what is read into ``pending`` or sent, or known held there
    start_local: VersionVector
    start_remote: VersionVector
    #: What ``to_send`` counts, local deltas up to it that are not ``queued`` yet being still to read.
    counted: VersionVector = field(default_factory=dict)
    #: What was read and is not sent yet, the next last (taken with ``pop()``): a list, as a deque
    #: costs 760 bytes even empty, and every link holds one per document.
    pending: list[Delta | _Whole] = field(default_factory=list)
    opening: bool = False  # asked with ``open``; nothing is sent before ``opened``

    def unread(self) -> bool:
        """Counted deltas not read from the log yet."""
        return not covers(self.queued, self.counted)


def _everything(document: str) -> bool:
    return True


def _uncounted(state: _Doc, vv: Mapping[str, int]) -> int:
    """Deltas of ``vv`` neither counted in ``to_send`` nor queued (known held there)."""
    return sum(
        max(0, seq - max(state.counted.get(origin, 0), state.queued.get(origin, 0))) for origin, seq in vv.items()
    )


class Session:
    """One end of one sync link. See the module docstring."""

    # Slots, not a __dict__: a relay holds one per connection, most of them idle (docs/benchmarks.md).
    __slots__ = (
        "__weakref__",  # relay_ops keeps what it watches of each session by weak reference
        "_allows",
        "_authorize",
        "_batch_bytes",
        "_cuts",
        "_docs",
        "_events",
        "_grant",
        "_in_flight",
        "_last_ack_at",
        "_offered",
        "_out",
        "_parts",
        "_pending_begin",
        "_remote_done",
        "_resume",
        "_sent_done",
        "_trust",
        "_turn",
        "_unsettled",
        "_wanted",
        "_welcome_extras",
        "authenticated",
        "completed",
        "credential",
        "error",
        "initiator",
        "limits",
        "mode",
        "opened",
        "received",
        "remote_id",
        "remote_role",
        "replica",
        "role",
        "sent",
        "state",
        "to_receive",
        "to_send",
    )

    def __init__(
        self,
        replica: LogView,
        *,
        role: str,
        initiator: bool,
        mode: str = "once",
        credential: str | None = None,
        authorize: Authorizer | None = None,
        trust: Trust | None = None,
        documents: Iterable[str] | None = None,
        limits: Limits | None = None,
    ) -> None:
        if role not in wire.ROLES or mode not in wire.MODES:
            raise ValueError(f"role must be one of {wire.ROLES} and mode one of {wire.MODES}")
        if not initiator and authorize is None:
            raise ValueError("an accepting session needs an authorize callable")
        self.replica = replica
        self.role = role
        self.initiator = initiator
        self.mode = mode
        self.credential = credential
        self.limits = limits or Limits()
        self._authorize = authorize
        self._trust = trust
        self._allows: Callable[[str], bool] = _everything
        self._pending_begin: tuple[dict[str, VersionVector], dict[str, VersionVector]] | None = None
        self._welcome_extras: tuple[str | None, bytes | None] = (None, None)
        self._wanted = None if documents is None else list(documents)
        self.state = SessionState.IDLE
        self.remote_id: str | None = None
        self.remote_role: str | None = None
        self.error: ErrorInfo | None = None
        self.completed = False
        self.opened = False  # the handshake (and, with peers, both proofs) succeeded
        #: The other side's identity was checked (its credential, and with peers its proof):
        #: only then may anything be recorded under its ``remote_id``.
        self.authenticated = False
        self._grant: Grant | None = None
        self._docs: dict[str, _Doc] = {}
        self._out: list[bytes] = []
        self._events: list[Event] = []
        # document, deltas, sent at: at most ``limits.window`` (a list: a deque is 760 bytes even empty)
        self._in_flight: list[tuple[str, int, float]] = []
        self._last_ack_at = 0.0
        self._batch_bytes = self.limits.start_batch_bytes
        self._sent_done = False
        self._remote_done = False
        self._unsettled = False  # reported acks or a handshake not yet committed by the caller
        self._turn = 0
        self._cuts: dict[tuple[str, str], int] = {}  # (document, origin) -> first seq refused
        self._offered: set[str] = set()  # documents offered to the initiator (live acceptor)
        self._parts = wire.SnapshotParts(self.limits.max_snapshot_bytes)  # snapshots arriving
        self._resume: dict[str, tuple[bytes, int]] = {}  # what the other side holds of snapshots it got in part
        self.sent = self.to_send = self.received = self.to_receive = 0

    # -- the caller's vocabulary ---------------------------------------------

    def start(self, now: float) -> None:
        """Initiator: queue the ``hello``."""
        if not self.initiator or self.state is not SessionState.IDLE:
            raise RuntimeError("start() is for an idle initiating session")
        names = self.replica.documents() if self._wanted is None else self._wanted
        documents = {name: self.replica.version_vector(name) for name in names}
        tips = {name: self.replica.tips(name) for name in names}
        credential, challenge, key, revocations = self.credential, None, None, None
        if self._trust is not None:
            credential, challenge, key, revocations = self._trust.hello_fields()
        self._send(
            wire.Hello(
                self.replica.id,
                self.role,
                credential,
                documents,
                mode=self.mode,
                tips=tips,
                challenge=challenge,
                device_key=key,
                revocations=revocations,
                resume=self.replica.partial_snapshots(),
            )
        )
        self.state = SessionState.HANDSHAKE

    def receive(self, data: bytes | str, now: float) -> None:
        """Feed one message received from the other side (a text message is refused)."""
        if self.state is SessionState.CLOSED:
            return
        try:
            frame = wire.decode(data, max_frame_bytes=self.limits.max_frame_bytes, max_batch=self.limits.max_batch)
            self._handle(frame, now)
        except ReplicaError as exc:
            self.fail(exc.code, exc.message, exc.retryable)

    def ingested(self, event: Incoming | IncomingSnapshot, result: IngestResult) -> None:
        """Report what became of an :class:`Incoming` batch (or an
        :class:`IncomingSnapshot`), after its commit."""
        if self.state is SessionState.CLOSED:
            return
        rejected = result.rejected
        if rejected is not None:
            if result.applied or result.duplicates:  # what came before the refused delta is stored
                self._send(wire.Ack(event.document, self.replica.version_vector(event.document)))
            self._send(
                wire.Error(
                    rejected.code,
                    rejected.message,
                    rejected.retryable,
                    rejected.document,
                    rejected.origin or None,  # a refused snapshot names its document only
                    rejected.seq or None,
                )
            )
            self._close(rejected.info())
            return
        state = self._docs[event.document]
        arrived = event.snapshot.vv if isinstance(event, IncomingSnapshot) else of_deltas(event.deltas)
        merge(state.remote, arrived)
        self._learn(state, arrived)
        if isinstance(event, IncomingSnapshot):
            self.received += result.applied
        else:
            self.received += sum(item.length for item in event.deltas)
        self._send(wire.Ack(event.document, self.replica.version_vector(event.document)))
        self._check_complete()

    def settled(self) -> None:
        """The caller committed what this session reported so far (see
        :func:`replica.sync.settle`): completion may now be decided."""
        if self.state is SessionState.CLOSED:
            return
        self._unsettled = False
        self._check_complete()

    def local_changed(self, document: str, now: float) -> None:
        """Live mode: new deltas of ``document`` are in the local log."""
        if self.state is not SessionState.OPEN or self.mode != "live":
            return
        state = self._docs.get(document)
        if state is None:
            if self.initiator:
                self._open(document)
            elif self._grant is not None and self._grant.allows(document) and document not in self._offered:
                # A document new here that the other side may sync: offer it; it answers with ``open``.
                self._offered.add(document)
                self._send(wire.Opened(document, self.replica.version_vector(document)))
            return
        if state.opening or (self._grant is not None and not self._grant.allows(document)):
            return
        if covers(state.queued, self.replica.version_vector(document)):
            return  # nothing new for the other side (what it just sent us, say): no need to read the log
        self._count(document)
        if not state.pending:  # read now, while a relay's fan-out shares one read among its links
            self._refill(document)
        self._pump(now)

    def data_to_send(self, now: float) -> list[bytes]:
        """Frames to write to the other side, in order."""
        if self.state is SessionState.OPEN:
            self._pump(now)
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """Events since the last call."""
        out, self._events = self._events, []
        return out

    def connection_lost(self, message: str = "the connection was lost") -> None:
        """The transport closed. Retryable unless the session already ended."""
        if self.state is not SessionState.CLOSED:
            self._close(
                ErrorInfo("connection_lost", message, True) if not self.completed or self.mode == "live" else None
            )

    def fail(self, code: str, message: str, retryable: bool) -> None:
        """Queue an ``error`` frame and close (a fault found by either side)."""
        if self.state is SessionState.CLOSED:
            return
        self._send(wire.Error(code, message, retryable))
        self._close(ErrorInfo(code, message, retryable))

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def documents(self) -> list[str]:
        """Documents open on this link."""
        return sorted(self._docs)

    # -- internals -----------------------------------------------------------

    def _send(self, frame: wire.Frame) -> None:
        self._out.append(wire.encode(frame))

    def _close(self, error: ErrorInfo | None) -> None:
        self.state = SessionState.CLOSED
        self.error = error
        self._events.append(Closed(error))

    def _handle(self, frame: wire.Frame, now: float) -> None:
        if isinstance(frame, wire.Error):
            if frame.document is not None and frame.origin is not None and frame.seq and not frame.retryable:
                self._events.append(Rejected(frame.document, frame.origin, frame.seq, frame.code, frame.message))
            self._close(ErrorInfo(frame.code, frame.message, frame.retryable))
            return
        if self.state is SessionState.IDLE and not self.initiator and isinstance(frame, wire.Hello):
            self._accept(frame, now)
        elif self.state is SessionState.HANDSHAKE and isinstance(frame, wire.Welcome):
            self._welcomed(frame, now)
        elif self.state is SessionState.PROVING and isinstance(frame, wire.Proof):
            assert self._grant is not None and self._grant.verify_proof is not None and self._pending_begin
            self._grant.verify_proof(frame.proof)
            self.authenticated = True
            self._begin(*self._pending_begin)
        elif self.state is SessionState.OPEN and isinstance(frame, wire.Deltas):
            if frame.document not in self._docs:
                raise ReplicaError(
                    f"deltas for {frame.document!r}, which is not open on this link", code="document_not_open"
                )
            # It holds what it sends: never offer those deltas back (live links would echo them).
            self._learn(self._docs[frame.document], of_deltas(frame.deltas))
            self._events.append(Incoming(frame.document, frame.deltas))
        elif self.state is SessionState.OPEN and isinstance(frame, wire.SnapshotPart):
            self._snapshot_part(frame)
        elif self.state is SessionState.OPEN and isinstance(frame, wire.Ack):
            self._acked(frame, now)
        elif self.state is SessionState.OPEN and isinstance(frame, wire.Done):
            self._remote_done = True
            self._check_complete()
        elif self.state is SessionState.OPEN and isinstance(frame, wire.Open) and not self.initiator:
            self._open_requested(frame)
        elif self.state is SessionState.OPEN and isinstance(frame, wire.Opened) and self.initiator:
            self._opened(frame)
        else:
            raise ReplicaError(
                f"unexpected {type(frame).__name__.lower()} frame in state {self.state.value}", code="unexpected_frame"
            )

    def _snapshot_part(self, part: wire.SnapshotPart) -> None:
        """Gather a snapshot's parts; the whole one becomes an :class:`IncomingSnapshot`."""
        if part.document not in self._docs:
            raise ReplicaError(
                f"a snapshot of {part.document!r}, which is not open on this link", code="document_not_open"
            )
        if part.offset and not self._parts.started(part.document):  # the rest of one an earlier link cut
            held = self.replica.partial_snapshot(part.document)
            if held is not None and (held.vv, held.checksum, held.size, len(held.data)) == (
                part.vv,
                part.checksum,
                part.size,
                part.offset,
            ):
                self._parts.resume(held)
        whole = self._parts.add(part)
        if whole is None:  # kept, so that a dropped connection resumes after it
            self._events.append(
                IncomingSnapshotPart(part.document, part.vv, part.checksum, part.size, part.offset, part.data)
            )
            return
        self._learn(self._docs[part.document], whole.vv)  # it holds what it sends: never offered back
        self._events.append(IncomingSnapshot(part.document, whole))

    def _accept(self, hello: wire.Hello, now: float) -> None:
        assert self._authorize is not None
        if len(hello.documents) > self.limits.max_documents:
            raise ReplicaError(
                f"{len(hello.documents)} documents in one connection; at most {self.limits.max_documents}",
                code="too_many_documents",
            )
        grant = self._authorize(hello, now)
        self._grant = grant
        self.remote_id, self.remote_role, self.mode = hello.replica_id, hello.role, hello.mode
        denied = {
            d: ("document_out_of_scope", f"the credential does not cover {d!r}")
            for d in hello.documents
            if not grant.allows(d)
        }
        names = {d for d in hello.documents if d not in denied}
        if grant.offer_all:
            names.update(d for d in self.replica.documents() if grant.allows(d))
        if len(names) > self.limits.max_documents:
            raise ReplicaError(
                f"{len(names)} documents in one connection; at most {self.limits.max_documents}",
                code="too_many_documents",
            )
        self._check_tips(hello.documents, hello.tips)
        local = {name: self.replica.version_vector(name) for name in sorted(names)}
        tips = {name: self.replica.tips(name) for name in local}
        self._send(
            wire.Welcome(
                self.replica.id,
                self.role,
                local,
                denied,
                tips=tips,
                challenge=grant.challenge,
                proof=grant.proof,
                credential=grant.credential,
                relay_key=grant.relay_key,
                revocations=grant.revocations,
                resume=self.replica.partial_snapshots(),
            )
        )
        self._resume = hello.resume
        remote = {d: hello.documents.get(d, {}) for d in names}
        if grant.verify_proof is not None:  # a peer: wait for its proof before exchanging anything
            self.state = SessionState.PROVING
            self._pending_begin = (local, remote)
        else:
            self.authenticated = True
            self._begin(local, remote)

    def _welcomed(self, welcome: wire.Welcome, now: float) -> None:
        if self._trust is not None:
            self._allows, proof = self._trust.check_welcome(welcome, now)
        elif welcome.role == "relay":
            proof = None
        else:
            raise ReplicaError(f"a {welcome.role} answered, and this session cannot check it", code="unexpected_role")
        self.remote_id, self.remote_role = welcome.replica_id, welcome.role
        self._resume = welcome.resume
        self.authenticated = True
        self._welcome_extras = (welcome.credential, welcome.relay_key)
        for document, (code, message) in welcome.denied.items():
            self._events.append(Denied(document, code, message))
        for document in sorted(d for d in welcome.documents if not self._allows(d)):
            self._events.append(Denied(document, "document_out_of_scope", f"this device may not sync {document!r}"))
        names = {d for d in welcome.documents if self._allows(d)}
        if self._wanted is not None:
            names &= set(self._wanted)
        if len(names) > self.limits.max_documents:
            raise ReplicaError(
                f"offered {len(names)} documents; at most {self.limits.max_documents}", code="too_many_documents"
            )
        self._check_tips(welcome.documents, welcome.tips)
        if proof is not None:
            self._send(wire.Proof(proof))
        local = {name: self.replica.version_vector(name) for name in sorted(names)}
        self._begin(local, {d: welcome.documents[d] for d in names})

    def _check_tips(self, documents: dict[str, VersionVector], tips: dict[str, dict[str, bytes]]) -> None:
        """Find a replica id shared by two devices: the other side's last
        delta of an origin must be the one held here under the same seq."""
        for document, checks in tips.items():
            for origin, check in checks.items():
                seq = documents.get(document, {}).get(origin, 0)
                held = self.replica.checksum_of(document, origin, seq) if seq else None
                if held is not None and held != check:
                    raise ReplicaError(
                        f"delta {origin}#{seq} of {document!r} differs between the two sides: two devices are "
                        "using the same replica id; stop both and ask an operator",
                        code="replica_id_clash",
                    )

    def _begin(self, local: dict[str, VersionVector], remote: dict[str, VersionVector]) -> None:
        self.state = SessionState.OPEN
        self.opened = True
        assert self.remote_id is not None and self.remote_role is not None
        for refusal in self.replica.rejections(remote_key(self.remote_id, self.remote_role)):
            if refusal.origin is not None:
                self._cuts[(refusal.document, refusal.origin)] = refusal.seq
        for name, vv in local.items():
            self._docs[name] = _Doc(dict(remote[name]), dict(remote[name]), dict(vv), dict(remote[name]))
            self.to_receive += count_missing(vv, remote[name])
            self._count(name)
            self._refill(name)
        assert self.remote_id is not None and self.remote_role is not None
        self._events.append(
            Connected(self.remote_id, self.remote_role, remote, self.to_send, self.to_receive, *self._welcome_extras)
        )
        self._unsettled = True

    def _count(self, document: str) -> None:
        """Count into ``to_send`` what the other side lacks of the local log,
        by version-vector arithmetic (nothing is read; :meth:`_refill` reads
        it a window at a time). Deltas past a refusal are never offered, so
        never counted."""
        state = self._docs[document]
        local = dict(self.replica.version_vector(document))
        for (name, origin), seq in self._cuts.items():
            if name == document:  # never offered: the other side refused it for good
                local[origin] = min(local.get(origin, 0), seq - 1)
                state.start_local[origin] = min(state.start_local.get(origin, 0), seq - 1)
        self.to_send += _uncounted(state, local)
        merge(state.counted, local)

    def _learn(self, state: _Doc, vv: Mapping[str, int]) -> None:
        """The other side holds ``vv`` (it said so in an ack, or sent it):
        what of it was counted and is not read yet will never be sent."""
        for origin, seq in vv.items():
            queued = state.queued.get(origin, 0)
            if seq > queued:
                self.to_send -= max(0, min(seq, state.counted.get(origin, 0)) - queued)
                state.queued[origin] = seq

    def _refill(self, document: str) -> None:
        """Read the next window of what the other side lacks into ``pending``
        (called when it is empty): the snapshot first if the other side lacks
        some of what it covers, then at most ``pending_deltas`` deltas, or
        ``pending_bytes``, of the counted ones after ``queued`` (a relay's:
        as spans, run by run, to the next multiple of ``span_max`` seqs
        past that bound and never past ``counted``; see
        ``Engine.missing_spans``).

        Why a window keeps causality: ``missing_deltas`` answers in the order
        this log applied the deltas, and a prefix of that order holds, with
        each delta, every delta it depends on that the other side lacks
        (applied here before it, so earlier in that order). ``queued`` then
        grows by exactly that prefix (per origin its seqs are contiguous from
        ``queued`` on, and a refused origin's skipped deltas are passed over),
        so the next window is the prefix of what is left: windows go out in
        the order one read of the whole backlog would have sent them. Deltas
        committed after the last count come after every counted one in that
        order, so a window stops at the first of them: a once-run sends what
        was held when it started, a live one counts new deltas in
        :meth:`local_changed` and reads them here next."""
        state = self._docs[document]
        assert not state.pending
        whole = self.replica.snapshot_for(document, state.queued)
        if whole is not None:  # what it covers is held here only as it: send it whole (even past a refusal)
            lacking = count_missing(state.queued, whole.vv)
            self.to_send += _uncounted(state, whole.vv)  # compaction may have taken in deltas not counted yet
            merge(state.counted, whole.vv)
            merge(state.queued, whole.vv)
            state.pending.append(_Whole(whole, lacking))
        if not state.unread():
            return
        read = whole is not None
        limits = self.limits
        if self.role == "relay" and limits.span_min and not any(name == document for name, _ in self._cuts):
            # What it lacks as spans, read run by run; never past what was counted.
            window = self.replica.missing_spans(
                document,
                state.queued,
                upto=state.counted,
                most=limits.pending_deltas,
                most_bytes=limits.pending_bytes,
                shortest=limits.span_min,
                longest=limits.span_max,
            )
        else:
            window = self.replica.missing_deltas(
                document, state.queued, most=limits.pending_deltas, most_bytes=limits.pending_bytes
            )
        for item in window:
            queued = state.queued.get(item.origin, 0)
            cut = self._cuts.get((document, item.origin))
            if cut is not None and item.seq >= cut:  # refused for good: never offered, and not counted
                self.to_send -= max(0, min(item.seq, state.counted.get(item.origin, 0)) - queued)
            elif item.seq > state.counted.get(item.origin, 0):
                break  # committed after the last count, as is everything after it in this order
            else:
                # A span may start at or below ``queued`` (the other side holds its first seqs); it goes whole.
                self.to_send += item.length - (item.seq - queued)
                state.pending.append(item)
            state.queued[item.origin] = item.seq
            read = True
        state.pending.reverse()  # read in order into an empty list: the next goes last
        if not read and state.unread():  # the log lacks what its version vector says it holds
            message = f"the log of {document!r} lacks deltas it counts; its operator can see why"
            self.fail("internal_error", message, True)

    def _open_requested(self, frame: wire.Open) -> None:
        assert self._grant is not None
        if frame.document in self._docs:
            return
        if not self._grant.allows(frame.document):
            self._send(
                wire.Opened(
                    frame.document, {}, ("document_out_of_scope", f"the credential does not cover {frame.document!r}")
                )
            )
            return
        if len(self._docs) >= self.limits.max_documents:
            raise ReplicaError(
                f"more than {self.limits.max_documents} documents in one connection", code="too_many_documents"
            )
        local = self.replica.version_vector(frame.document)
        self._send(wire.Opened(frame.document, local))
        self._docs[frame.document] = _Doc(dict(frame.vv), dict(frame.vv), local, dict(frame.vv))
        self.to_receive += count_missing(local, frame.vv)
        self._count(frame.document)
        self._refill(frame.document)

    def _open(self, document: str) -> None:
        if self._allows(document) and len(self._docs) < self.limits.max_documents:
            self._docs[document] = _Doc({}, {}, {}, {}, opening=True)
            self._send(wire.Open(document, self.replica.version_vector(document)))

    def _opened(self, frame: wire.Opened) -> None:
        state = self._docs.get(frame.document)
        if state is None:  # an offer of a document new on the other side (live mode)
            if self.mode != "live" or frame.denied is not None:
                raise ReplicaError(f"opened {frame.document!r}, which was not asked for", code="unexpected_frame")
            self._open(frame.document)
            return
        if frame.denied is not None:
            del self._docs[frame.document]
            self._events.append(Denied(frame.document, *frame.denied))
            return
        state.opening = False
        state.remote.update(frame.vv)
        state.queued.update(frame.vv)
        self.to_receive += count_missing(self.replica.version_vector(frame.document), frame.vv)
        self._count(frame.document)
        self._refill(frame.document)

    def _acked(self, ack: wire.Ack, now: float) -> None:
        state = self._docs.get(ack.document)
        if state is None or not self._in_flight:
            raise ReplicaError("an ack for nothing in flight", code="unexpected_frame")
        document, count, sent_at = self._in_flight.pop(0)
        if document != ack.document:
            raise ReplicaError("acks arrived out of order", code="unexpected_frame")
        # The time this batch took the other side, not the time it queued there behind the others in flight.
        self._adapt(now - max(sent_at, self._last_ack_at))
        self._last_ack_at = now
        merge(state.remote, ack.vv)
        self._learn(state, ack.vv)
        self.sent += count
        assert self.remote_id is not None and self.remote_role is not None
        self._events.append(Acknowledged(self.remote_id, self.remote_role, ack.document, dict(ack.vv), count))
        self._unsettled = True

    def _adapt(self, elapsed: float) -> None:
        limits = self.limits
        if elapsed <= limits.fast_ack:
            self._batch_bytes = min(self._batch_bytes * 2, limits.max_batch_bytes, limits.max_frame_bytes // 2)
        elif elapsed >= limits.slow_ack:
            self._batch_bytes = max(self._batch_bytes // 2, limits.min_batch_bytes)

    def _pump(self, now: float) -> None:
        """Queue batches while the window allows, then ``done`` once."""
        while len(self._in_flight) < self.limits.window and self.state is SessionState.OPEN:
            batch = self._next_batch()
            if batch is None:
                if self._more_to_send():
                    continue  # that document's next deltas were all held there already
                break
            document, items = batch
            if isinstance(items, _Whole):
                whole = items.snapshot
                check, held = self._resume.pop(document, (b"", 0))
                start = held if check == whole.checksum else 0  # it holds the first bytes of this very state
                for part in wire.snapshot_parts(whole, self.limits.max_frame_bytes, start):
                    self._send(part)
                self._in_flight.append((document, items.count, now))
                continue
            self._send(wire.Deltas(document, tuple(items)))
            self._in_flight.append((document, sum(item.length for item in items), now))
        if self.state is SessionState.OPEN and not self._sent_done and not self._more_to_send():
            self._sent_done = True
            self._send(wire.Done())
            self._check_complete()  # the last acks may have come before the rest turned out to be held there

    def _more_to_send(self) -> bool:
        return any(state.pending or state.unread() for state in self._docs.values())

    def _next_batch(self) -> tuple[str, list[Delta] | _Whole] | None:
        names = [name for name, state in self._docs.items() if state.pending or state.unread()]
        if not names:
            return None
        self._turn = (self._turn + 1) % len(names)
        document = names[self._turn]
        state = self._docs[document]
        pending, held = state.pending, state.remote
        if not pending:
            self._refill(document)
            if not pending:
                return None
        first = pending[-1]
        if isinstance(first, _Whole):
            pending.pop()
            if covers(held, first.snapshot.vv):  # it got all of it meanwhile
                self.to_send -= first.count
                return None
            return document, first
        items: list[Delta] = []
        size = 0
        budget = min(self._batch_bytes, self.limits.max_frame_bytes // 2)
        while len(items) < self.limits.max_batch:
            if not pending:  # the window is out: the batch goes on with the next one
                if not state.unread() or self.state is not SessionState.OPEN:
                    break
                self._refill(document)
                if not pending:
                    break
            item = pending[-1]
            if isinstance(item, _Whole):
                break  # a snapshot goes alone, in the next batch
            if item.seq <= held.get(item.origin, 0):
                # It got this one meanwhile (from another device through the relay, say): its ack said so.
                pending.pop()
                self.to_send -= item.length
                continue
            cost = len(item.data) + 32
            if items and size + cost > budget:
                break
            items.append(item)
            pending.pop()
            size += cost
        if not items:
            return None
        if self.role == "relay" and self.limits.span_min:  # see replica.spans
            items = spans.group(
                items, self.replica.span_of, shortest=self.limits.span_min, longest=self.limits.span_max
            )
        return document, items

    def _check_complete(self) -> None:
        if self.completed or self.state is not SessionState.OPEN or not self._remote_done or self._in_flight:
            return
        if self._unsettled:
            return  # decided in settled(), once what it depends on is stored
        for name, state in self._docs.items():
            if state.pending or state.unread() or not covers(state.remote, state.start_local):
                return
            if not covers(self.replica.version_vector(name), state.start_remote):
                return
        self.completed = True
        self._events.append(Completed())
