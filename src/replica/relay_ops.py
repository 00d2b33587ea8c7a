"""What a relay does for its operator, wired together: abuse limits,
metrics, health, the operator's log and the devices view.

:class:`RelayOps` makes the relay's sessions (:class:`~replica.limits.RelaySession`,
admitted through ``RelayAuthority`` and then the :class:`~replica.limits.Guard`),
follows their events (handshakes, what each device holds, the end of each
session: one log line, one device record, the counters), answers plain
HTTP (``/health``, ``/metrics``) and times the group commits. The relay
(``replica.relay``) only hands it its engine and authority and plugs its
callables into the :class:`~replica.net.Listener`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from replica import oplog
from replica.credentials import CredentialError
from replica.devices import FLUSH_INTERVAL, DeviceBook
from replica.engine import Engine
from replica.errors import ReplicaError
from replica.events import Acknowledged, Closed, Connected, Event, Incoming
from replica.limits import AbuseLimits, Guard, RelaySession
from replica.listener import remote_address
from replica.relay_http import PROBE_SETTING, Health, RelayHTTP, RelayMetrics
from replica.session import Grant, Limits, Session
from replica.trust import RelayAuthority
from replica.vv import VersionVector, merge, of_deltas
from replica.wire import Hello

log = logging.getLogger("replica.relay_ops")

DAY = 24 * 3600.0


@dataclass(slots=True)
class _Watch:
    """What the relay follows of one session."""

    address: str
    #: The credential presented, if this relay signed it: (replica id, expires at, issued at).
    credential: tuple[str, float, float] | None = None
    claimed: str | None = None  #: the replica id its hello named (checked or not)
    held: dict[str, VersionVector] = field(default_factory=dict)


class RelayOps:
    """The operator's side of one running relay (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        authority: RelayAuthority,
        *,
        folder: str,
        limits: Limits,
        abuse: AbuseLimits | None = None,
    ) -> None:
        self.engine = engine
        self.authority = authority
        self.limits = limits
        self.guard = Guard(abuse)
        self.devices = DeviceBook(folder)
        self._watches: weakref.WeakKeyDictionary[Session, _Watch] = weakref.WeakKeyDictionary()
        self._open = 0
        self._stored_now = self._failed_now = False  # what the group commit under way did
        #: TCP connections open now (the relay points it at its listener's count).
        self.connections: Callable[[], int] = lambda: 0
        self.metrics = RelayMetrics(
            connections=lambda: float(self.connections()),
            links=lambda: float(self._open),
            documents_loaded=lambda: float(len(engine.loaded()[0])) if not engine.closed else 0.0,
            devices_recent=lambda: float(self.devices.seen_within(DAY, time.time())),
        )
        #: Raises if the log shared with other relays cannot take writes (a relay of several sets it).
        self.shared_check: Callable[[], None] | None = None
        self.health = Health(self._probe, self.metrics.storage_failures.inc)
        self.http = RelayHTTP(self.metrics, self.health, self._describe)
        self._flusher: asyncio.Task[None] | None = None

    # -- sessions ------------------------------------------------------------

    def make_session(self) -> Session:
        """The listener's ``make_session``: called in the task serving the connection."""
        watch = _Watch(remote_address())
        session: RelaySession

        def authorize(hello: Hello, now: float) -> Grant:
            watch.claimed = hello.replica_id
            watch.credential = self._presented(hello)
            grant = self.authority.authorize(hello, now)
            self.guard.admit(hello.replica_id, now)
            session.admitted = hello.replica_id
            return grant

        session = RelaySession(
            self.engine, authorize=authorize, guard=self.guard, limits=self.limits, on_traffic=self.metrics.traffic
        )
        self._watches[session] = watch
        self.metrics.sessions.inc()
        self._open += 1
        return session

    def _presented(self, hello: Hello) -> tuple[str, float, float] | None:
        try:
            credential = self.authority.public_key.verify(hello.credential)
        except CredentialError:
            return None
        if credential.replica_id != hello.replica_id:
            return None
        return credential.replica_id, credential.expires_at, credential.issued_at

    def on_event(self, session: Session, event: Event) -> None:
        """The listener's event handler."""
        watch = self._watches.get(session)
        if watch is None or not isinstance(session, RelaySession):
            return
        if isinstance(event, Connected):
            self.metrics.handshakes.labels("accepted").inc()
            for document, vv in event.documents.items():
                merge(watch.held.setdefault(document, {}), vv)
        elif isinstance(event, Incoming):
            merge(watch.held.setdefault(event.document, {}), of_deltas(event.deltas))
            self._stored_now = True
        elif isinstance(event, Acknowledged):
            self.metrics.acks_received.inc()
            self.metrics.deltas_sent.inc(event.count)
            merge(watch.held.setdefault(event.document, {}), event.vv)
        elif isinstance(event, Closed):
            self._ended(session, watch)

    def _ended(self, session: RelaySession, watch: _Watch) -> None:
        self._open -= 1
        if session.admitted is not None:
            self.guard.release(session.admitted)
        summary = oplog.summarize(session, watch.address)
        if summary.device is None and watch.claimed is not None:  # refused: say whom it claimed to be
            summary = replace(summary, device=watch.claimed)
        oplog.log_summary(summary)
        self.metrics.outcomes.labels(summary.outcome).inc()
        if summary.outcome == oplog.REFUSED:
            self.metrics.handshakes.labels("refused").inc()
        if summary.code is not None and summary.code != "connection_lost":
            self.metrics.refusals.labels(summary.code).inc()
        if summary.code == "storage_error":
            self._failed_now = True
        if watch.credential is not None:  # a device this relay knows (its credential verified), even if refused
            replica_id, expires_at, issued_at = watch.credential
            self.devices.record(
                replica_id,
                now=time.time(),
                outcome=summary.outcome,
                code=summary.code,
                message=summary.message,
                address=watch.address,
                held=watch.held if session.authenticated else {},
                expires_at=expires_at,
                issued_at=issued_at,
            )

    def committed(self, links: int, seconds: float) -> None:
        """The listener's ``on_commit``: after each group commit (its events already seen)."""
        self.metrics.committed(links, seconds)
        if self._failed_now:
            self.health.storage_failed("the last commit failed: the disk is full or failing")
            self.metrics.storage_failures.inc()
        elif self._stored_now:
            self.health.stored()
        self._stored_now = self._failed_now = False

    # -- health, devices -----------------------------------------------------

    def _probe(self, value: str) -> None:
        if self.engine.closed:
            raise ReplicaError("the relay is stopping", code="stopping")
        self.engine.set_setting(PROBE_SETTING, value)
        if self.shared_check is not None:
            self.shared_check()

    def _describe(self) -> dict[str, object]:
        return {"replica_id": self.authority.replica_id, "links": self._open}

    def start(self) -> None:
        """Start writing the devices file every :data:`~replica.devices.FLUSH_INTERVAL` seconds."""
        self._flusher = asyncio.get_running_loop().create_task(self._flush_now_and_then())

    async def _flush_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self._flush()

    def _flush(self) -> None:
        try:
            self.devices.flush()
        except OSError as exc:  # the deltas are safe in the log; the view catches up at the next flush
            log.warning("could not write the devices file %s: %s", self.devices.path, exc)

    def stop(self) -> None:
        """Write the devices file a last time (after the links closed)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self._flush()
