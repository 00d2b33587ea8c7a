"""A deterministic, simulated network of replicas: no sockets, no threads, no sleeps.

Theory of operation
-------------------
A :class:`Fleet` holds one relay and a few devices, each a real
:class:`~replica.Replica` (on LMDB in a temporary folder, or in memory; see
``replica.testing.backends``), and the *links* between them. A link is a pair
of sans-I/O sessions (``replica.session``) with one queue of frames per
direction; nothing moves unless the caller says so. Each call is one event of
the story: a local edit, a link opened or closed, the next frame of one
direction delivered, dropped, duplicated or delayed, a replica crashed and
reopened from disk, its next commit failing, its clock set wrong, a
credential revoked.

The fleet is an edge like ``replica.net``, and runs the code that ships:
after a delivery the receiver settles its sessions with
:func:`replica.sync.settle`; every event goes through the status rules of
``replica.runs`` into ``Engine.record``; the relay admits devices with
:class:`~replica.trust.RelayAuthority` and devices check the relay and each
other with :class:`~replica.trust.DeviceTrust`, with real Ed25519 keys and
credentials (deterministic seeds and challenges, so that a story replays
byte for byte). Each node has its own clock (the fleet's time plus a skew),
so expiry and clock skew are reachable from both sides of every handshake.

Alongside, the fleet keeps a :class:`Ledger` of what it saw, read from the
sessions and the wire and never from the status code: every ``ack`` a
replica sent, every delta it sent, every change it announced, what the relay
told each device, each relay-facing run's start, completion and end, and
each handshake's verdict checked against what the credentials and clocks
allow. The checks (``replica.testing.checks``) hold the replicas to it.
Frames already sent by a replica that crashes can still arrive; frames
towards it are lost.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from replica import credentials, runs, wire
from replica import sync as _sync  # looked up at call time: tests may patch settle
from replica.credentials import DeviceKey, SigningKey
from replica.doc import Document
from replica.errors import StorageError
from replica.events import Event
from replica.limits import AbuseLimits, Guard, RelaySession
from replica.names import RELAY
from replica.replica import Replica
from replica.session import Limits, Session, SessionState
from replica.testing.backends import Backend, backend_named, commit_fault_pending, fail_next_commit
from replica.testing.clientids import ClientIds
from replica.testing.ledger import Ledger, RelayRun, RunStart
from replica.testing.links import ACK_PREFIX, Link, Node, canonical, describe, is_deltas, seed
from replica.testing.strategies import Action, NetworkStep, RunPlan
from replica.trust import BOUND_CREDENTIAL, DeviceTrust, RelayAuthority, known_revocations, pinned_relay_key
from replica.vv import VersionVector, covers, merge, of_deltas

#: Abuse limits of the simulated relay: none.
NO_ABUSE_LIMITS = AbuseLimits(
    frames_per_second=None,
    bytes_per_second=None,
    credential_frames_per_second=None,
    credential_bytes_per_second=None,
    connections_per_credential=None,
)

RELAY_ID = "relay-1"
#: Simulated seconds per delivered frame (acks come back fast: batches grow).
TICK = 0.001
#: How long the credentials the fleet issues last, in simulated seconds:
#: device number ``i``'s expires at ``LIFETIME + i * EXPIRY_STEP``, so that a
#: clock can stand past some devices' expiry and not others'.
LIFETIME = 30 * 86400.0
EXPIRY_STEP = 86400.0


# -- the fleet ---------------------------------------------------------------


class Fleet:
    """One relay and ``devices`` devices on a simulated network.

    ``backend``: ``"lmdb"`` (default), ``"memory"`` or a :class:`Backend`.
    ``scope``: document patterns every device's credential allows (others
    are refused by the relay and never exchanged between peers). ``limits``:
    the sessions' batching (small batches make more frames, so more
    interleavings).
    """

    def __init__(
        self,
        devices: int = 3,
        *,
        backend: str | Backend = "lmdb",
        scope: Sequence[str] = ("c7/*",),
        limits: Limits | None = None,
        device_ids: Sequence[str] | None = None,
    ) -> None:
        self.backend = backend_named(backend) if isinstance(backend, str) else backend
        self.scope = tuple(scope)
        self.limits = limits or Limits()
        self.client_ids = ClientIds()
        self.nodes: dict[str, Node] = {}
        self.links: list[Link] = []
        self.now = 0.0
        self._numbers = 0
        self.relay_key = SigningKey.from_seed(seed("relay", RELAY_ID))
        #: Replica id -> the relay's clock when the relay revoked its credentials.
        self.revoked: dict[str, float] = {}
        self.authority = RelayAuthority(RELAY_ID, self.relay_key, revoked=self.revoked)
        #: The relay-wide abuse limits, off: the fleet's clocks jump, and no node floods.
        self.guard = Guard(NO_ABUSE_LIMITS)
        #: Per device: the credential it was given (the relay binds it to the device's key).
        self.credentials: dict[str, str] = {}
        #: Per device: when the newest credential it was given expires.
        self.expires: dict[str, float] = {}
        self.ledger = Ledger()
        self._unsubscribe: dict[str, list[Callable[[], None]]] = {}
        self.closed = False
        names = list(device_ids) if device_ids is not None else [f"dev-{i}" for i in range(devices)]
        try:
            self._add(RELAY_ID, "relay")
            for number, name in enumerate(names):
                self._add(name, "device")
                self.expires[name] = LIFETIME + number * EXPIRY_STEP
                self.credentials[name] = self.relay_key.issue(
                    issuer=RELAY_ID, replica_id=name, documents=self.scope, expires_at=self.expires[name], now=self.now
                )
        except BaseException:
            self.close()
            raise

    # -- replicas ------------------------------------------------------------

    @property
    def relay(self) -> Node:
        return self.nodes[RELAY_ID]

    @property
    def devices(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.role == "device"]

    def replica(self, name: str) -> Replica:
        """The live replica object of node ``name`` (it changes at each crash)."""
        return self.nodes[name].replica

    def replicas(self) -> list[Replica]:
        return [node.replica for node in self.nodes.values()]

    def allows(self, document: str) -> bool:
        """True if the devices' credentials cover ``document``."""
        return any(fnmatch.fnmatchcase(document, pattern) for pattern in self.scope)

    def clock(self, node: Node) -> float:
        """What ``node``'s clock says now."""
        return self.now + node.skew

    def device_key(self, name: str) -> DeviceKey:
        """Device ``name``'s key pair (the same after every restart)."""
        return DeviceKey.from_seed(seed("device", name))

    def _add(self, name: str, role: str) -> None:
        node = Node(name, role, self.backend.open(name, self.client_ids))
        self.nodes[name] = node
        for table in (self.ledger.acked, self.ledger.sent, self.ledger.announced):
            table[name] = {}
        if role == "device":
            self.ledger.relay_said[name] = {}
        self._watch(node)

    def _watch(self, node: Node) -> None:
        replica = node.replica
        announced = self.ledger.announced[node.name]
        for name in replica.documents():
            announced[name] = replica.version_vector(name)
        self.ledger.published.pop(node.name, None)
        self._unsubscribe[node.name] = [
            replica.on_change(lambda document: self._changed(node, document)),
            replica.subscribe(lambda status: self.ledger.published.__setitem__(node.name, status)),
        ]

    def _changed(self, node: Node, document: str) -> None:
        """``node`` announced new deltas of ``document``: they must be in its
        log; live sessions offer them (fan-out)."""
        vv = node.replica.version_vector(document)
        before = self.ledger.announced[node.name].get(document, {})
        if covers(before, vv):
            self.ledger.violations.append(
                f"{node} announced a change of {document}, but its log holds nothing new ({vv})"
            )
        self.ledger.announced[node.name][document] = vv
        for link in self.links:
            session = link.session_of(node)
            if session is not None and link.mode == "live" and not session.closed:
                session.local_changed(document, self.clock(node))

    def edit(self, name: str, document: str, change: Callable[[Document], Any]) -> Any:
        """Run ``change(doc)`` on a replica's document (its deltas commit as
        usual); live links offer them at once. Returns what ``change``
        returns, or None if the commit failed (a storage fault: the edit is
        not kept, and the document is as its log says)."""
        self._check_open()
        try:
            result = change(self.replica(name).doc(document))
        except StorageError:
            result = None
        self._pump()
        return result

    def read(self, name: str, read: Callable[[Replica], Any]) -> Any:
        """Run ``read(replica)`` on node ``name``'s replica."""
        self._check_open()
        return read(self.replica(name))

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this fleet is closed")

    # -- links ---------------------------------------------------------------

    def linked(self, a: str, b: str) -> Link | None:
        """The open link between nodes ``a`` and ``b``, if any."""
        for link in self.links:
            if {link.initiator.name, link.acceptor.name} == {a, b}:
                return link
        return None

    def open_link(self, initiator: str, acceptor: str | None = None, *, live: bool = False) -> Link:
        """A device connects to the relay (default) or to another device,
        and sends its hello. One link per pair at most."""
        self._check_open()
        near_node = self.nodes[initiator]
        far_node = self.nodes[acceptor or RELAY_ID]
        if near_node.role != "device" or near_node is far_node:
            raise ValueError("a device opens links, to the relay or to another device")
        if self.linked(near_node.name, far_node.name) is not None:
            raise ValueError(f"{near_node} and {far_node} are already linked")
        mode = "live" if live else "once"
        to_peer = far_node.role == "device"
        trust = DeviceTrust(
            near_node.replica,
            self.credentials[near_node.name],
            peer=to_peer,
            key=self.device_key(near_node.name),
            challenges=near_node.next_challenge,
        )
        near = Session(near_node.replica, role="device", initiator=True, mode=mode, trust=trust, limits=self.limits)
        if to_peer:
            authorize = DeviceTrust(
                far_node.replica, key=self.device_key(far_node.name), challenges=far_node.next_challenge
            ).authorize
            far = Session(far_node.replica, role="peer", initiator=False, authorize=authorize, limits=self.limits)
        else:
            far = RelaySession(  # the relay's own session class, as ``replica relay`` runs it (limits off)
                far_node.replica,
                authorize=self.authority.authorize,
                guard=self.guard,
                limits=self.limits,
                now=self.clock(far_node),
            )
        self._numbers += 1
        near_run, records = runs.start(runs.Facing.PEER if to_peer else runs.Facing.RELAY)
        link = Link(self._numbers, near_node, far_node, near, far, mode, near_run)
        link.hello_given = self.credentials[near_node.name]
        self.links.append(link)
        replica = near_node.replica
        if link.relay_facing:
            start = RunStart({name: replica.version_vector(name) for name in replica.documents()})
            self.ledger.relay_runs[near_node.name] = RelayRun(link.number, mode, start)
        replica.record(records)
        near.start(self.clock(near_node))
        self._pump()
        return link

    def close_link(self, link: Link, reason: str = "the connection was lost") -> None:
        """The transport breaks: frames in flight are lost, both ends learn it."""
        self._check_open()
        if link not in self.links:
            return
        self.links.remove(link)
        link.up.clear()
        link.down.clear()
        for node, session in ((link.initiator, link.near), (link.acceptor, link.far)):
            session.connection_lost(reason)
            self._settle(node, [session], link)
        self._look(link, closed=True)
        self._pump()

    # -- frames --------------------------------------------------------------

    def step(self, step: NetworkStep) -> str:
        """Play one :class:`~replica.testing.strategies.NetworkStep` (its
        link number taken modulo the open links); returns what happened."""
        if not self.links:
            return "no link is open"
        link = self.links[step.link % len(self.links)]
        if step.action is Action.DELIVER:
            return "; ".join(self.deliver(link, step.up) for _ in range(step.count))
        if step.action is Action.DROP:
            return self.drop(link, step.up)
        if step.action is Action.DUPLICATE:
            return self.duplicate(link, step.up)
        if step.action is Action.BREAK:
            self.close_link(link)
            return f"{link} BREAKS"
        return self.delay(link, step.up)

    def deliver(self, link: Link, up: bool, *, crash_before_commit: bool = False) -> str:
        """Deliver the next frame of one direction; the receiver settles (one
        commit) and its answers go onto the queues. With
        ``crash_before_commit``, whatever ``receive`` queued is sent, then
        the receiver crashes before settling."""
        self._check_open()
        if link not in self.links:
            return f"{link} is closed"
        queue = link.queue(up)
        if not queue:
            return f"{link} {'up' if up else 'down'}: nothing in flight"
        frame = queue.popleft()
        _, _, receiver, _ = link.ends(up)
        self._receive(link, up, frame)
        story = f"{link} {'up' if up else 'down'}: {describe(frame)}"
        if crash_before_commit:
            self._pump()
            return f"{story}, then {receiver} crashes before its commit: " + self.crash(receiver.name)
        self._settle(receiver)
        self._pump()
        self._reap()
        return story

    def drop(self, link: Link, up: bool) -> str:
        """Lose the next frame of one direction."""
        queue = link.queue(up)
        if not queue:
            return f"{link}: nothing to drop"
        return f"{link} {'up' if up else 'down'}: DROP {describe(queue.popleft())}"

    def duplicate(self, link: Link, up: bool) -> str:
        """Deliver the next frame twice."""
        queue = link.queue(up)
        if not queue:
            return f"{link}: nothing to duplicate"
        queue.insert(1, queue[0])
        return f"{link} {'up' if up else 'down'}: DUPLICATE {describe(queue[0])}"

    def delay(self, link: Link, up: bool) -> str:
        """Move the next frame behind the one after it (a reordering: the
        real transport is ordered, so this is a fault to survive safely)."""
        queue = link.queue(up)
        if len(queue) < 2:
            return f"{link}: nothing to delay"
        queue[0], queue[1] = queue[1], queue[0]
        return f"{link} {'up' if up else 'down'}: DELAY {describe(queue[1])} behind {describe(queue[0])}"

    def run(self, link: Link, plan: RunPlan | None = None, *, max_frames: int = 100_000) -> list[str]:
        """Deliver this link's frames in order, up first, until it closes or
        goes quiet: then a live link that caught up stays open, and any other
        is closed (a run that waits forever has failed). ``plan`` adds faults
        on drawn batches of deltas and perhaps a crash of a receiver; returns
        the story of what was not plain delivery."""
        faults = dict(plan.faults) if plan else {}
        story: list[str] = []
        number = 0  # batches of deltas so far, which the plan counts
        for _ in range(max_frames):
            if link not in self.links:
                break
            if not link.up and not link.down:
                if link.mode == "live" and link.near.completed:
                    break  # caught up: a live link stays open
                self.close_link(link, "nothing more came: the run stalled")
                story.append(f"{link} stalls and is closed")
                break
            up = bool(link.up)
            if plan is None or not is_deltas(link.queue(up)[0]):
                self.deliver(link, up)
                continue
            action = faults.get(number)
            if plan.commit_fault_at == number:
                story.append(self.storage_fault(link.ends(up)[0].name, settle=True))
            if plan.crash_at == number:
                receiver = link.ends(up)[2].name
                if plan.before_commit:
                    story.append(self.deliver(link, up, crash_before_commit=True))
                else:
                    story.append(f"{self.deliver(link, up)}, then {self.crash(receiver)}")
            elif action is not None:
                story.append(self.step(NetworkStep(self.links.index(link), up, action)))
            else:
                self.deliver(link, up)
            number += 1
        else:
            raise AssertionError(f"{link} still busy after {max_frames} frames")
        errors = sorted({s.error.code for s in (link.near, link.far) if s.error is not None})
        if link in self.links:
            story.append(f"{link} stays open (live)")
        elif errors:
            story.append(f"{link} ended ({', '.join(errors)})")
        else:
            story.append(f"{link} completed" if link.near.completed else f"{link} ended")
        return story

    def sync(self, device: str, other: str | None = None) -> Session:
        """One complete, fault-free once-run of ``device`` with the relay (or
        with device ``other``); returns the device's session."""
        link = self.open_link(device, other)
        self.run(link)
        return link.near

    def _receive(self, link: Link, up: bool, frame: bytes) -> None:
        sender, _, receiver, session = link.ends(up)
        if receiver.role == "relay" and session.state is SessionState.IDLE:  # it answers from its log as it is now
            track = self.ledger.relay_runs.get(link.initiator.name)
            if track is not None and track.link == link.number:
                replica = receiver.replica
                track.start.relay = {name: replica.version_vector(name) for name in replica.documents()}
        if sender.role == "relay" and receiver.role == "device":
            self._note_relay_said(receiver.name, frame)
        before = session.state, session.authenticated
        now = self.clock(receiver)
        session.receive(frame, now)
        self._check_verdict(link, receiver, session, frame, before, now)
        self.now += TICK

    def _note_relay_said(self, device: str, frame: bytes) -> None:
        decoded = wire.decode(frame)
        said = self.ledger.relay_said[device]
        if isinstance(decoded, wire.Welcome):
            for name, vv in decoded.documents.items():
                merge(said.setdefault(name, {}), vv)
        elif isinstance(decoded, (wire.Ack, wire.SnapshotPart)) or (
            isinstance(decoded, wire.Opened) and decoded.denied is None
        ):
            merge(said.setdefault(decoded.document, {}), decoded.vv)
        elif isinstance(decoded, wire.Deltas):
            merge(said.setdefault(decoded.document, {}), of_deltas(decoded.deltas))

    # -- what the handshakes may decide --------------------------------------

    def _check_verdict(
        self,
        link: Link,
        node: Node,
        session: Session,
        frame: bytes,
        before: tuple[SessionState, bool],
        now: float,
    ) -> None:
        """Hold a handshake step of ``session`` (at ``node``'s clock ``now``)
        to what the credentials it was shown, revocations and clocks allow."""
        state, authenticated = before
        if session is link.far and state is SessionState.IDLE:
            hello = wire.decode(frame)
            if not isinstance(hello, wire.Hello):
                return  # a frame out of order: refused as such, not for its credential
            why = link.hello_why = self._why_refuse(link, node, now, hello.credential)  # the acceptor judges it now
            if link.relay_facing:
                self._check_newest(link, hello.credential)
        elif session is link.far and state is SessionState.PROVING:
            why = link.hello_why  # the proof only completes what the hello presented
        elif session is link.near and state is SessionState.HANDSHAKE:
            welcome = wire.decode(frame)
            if not isinstance(welcome, wire.Welcome):
                return
            why = self._why_refuse(link, node, now, welcome.credential)
        else:
            return
        admitted = session.authenticated and not authenticated
        refused = session.closed and session.error is not None and session.error.code in credentials.CODES
        if refused and isinstance(wire.decode(frame), wire.Error):
            return  # the other side's refusal, judged there
        if not admitted and not refused:
            return
        if admitted and why:
            self.ledger.violations.append(f"{node} admitted the other side of {link} although {why}")
        elif refused and not why:
            assert session.error is not None
            self.ledger.violations.append(
                f"{node} refused the other side of {link} ({session.error.code}: {session.error.message}), "
                "although every credential was valid by its clock"
            )

    def _why_refuse(self, link: Link, node: Node, now: float, presented: str | None) -> str:
        """Why ``node``, at its clock ``now``, must refuse the other side of
        ``link``, which presented ``presented`` ("" if it must not)."""
        other = link.initiator.name if node is link.acceptor else link.acceptor.name
        if link.relay_facing:
            if node.role != "relay":
                return ""  # the device checks the relay's key, which is the one it pinned
            shown = self._read(presented)
            if shown is not None and other in self.revoked and shown.issued_at <= self.revoked[other]:
                return f"{other}'s credential is revoked"
            return self._unfit(other, presented, now, bound=False)
        for name in (node.name, other):
            if pinned_relay_key(self.replica(name)) is None:
                return f"{name} has not synced with the relay yet: it has no relay key to check with"
        mine = self.replica(node.name).setting(BOUND_CREDENTIAL) or self.credentials[node.name]
        why = self._unfit(other, presented, now, bound=True) or self._unfit(node.name, mine, now, bound=True)
        shown, known = self._read(presented), known_revocations(self.replica(node.name))
        if not why and shown is not None and known is not None and known.revokes(shown):
            why = f"{other}'s credential is revoked in the revocation list {node} holds"
        return why

    def _unfit(self, name: str, token: str | None, now: float, *, bound: bool) -> str:
        """Why ``token`` does not let device ``name`` in at time ``now`` ("" if it does)."""
        credential = self._read(token)
        if credential is None or credential.replica_id != name:
            return f"{name} presented no credential of its own signed by the relay"
        if bound and credential.device_key is None:
            return f"{name}'s credential is not bound to its key yet (it must sync with the relay once)"
        if now >= credential.expires_at:
            return f"{name}'s credential has expired by that clock"
        return ""

    def _read(self, token: str | None) -> credentials.Credential | None:
        try:
            return None if token is None else self.relay_key.public_key().verify(token)
        except credentials.CredentialError:
            return None

    def _check_newest(self, link: Link, presented: str | None) -> None:
        """A device presents its relay the newest credential it had been
        given when it made its hello (as given, or as the relay bound it)."""
        device = link.initiator.name
        shown, given = self._read(presented), self._read(link.hello_given)
        assert given is not None
        if shown is None or (shown.documents, shown.expires_at) != (given.documents, given.expires_at):
            self.ledger.violations.append(
                f"{device} presented the relay a credential other than the newest it was given "
                f"(expiring at {None if shown is None else shown.expires_at}, not {given.expires_at})"
            )

    # -- moving frames and settling ------------------------------------------

    def _pump(self) -> None:
        """Move what every session wants to send onto its queue."""
        for link in self.links:
            for up in (True, False):
                sender, session, _, _ = link.ends(up)
                for frame in session.data_to_send(self.clock(sender)):
                    link.queue(up).append(frame)
                    self._note_sent(sender, frame)

    def _note_sent(self, sender: Node, frame: bytes) -> None:
        if frame[1 : 1 + len(ACK_PREFIX)] == ACK_PREFIX:  # {"t": "ack", ...}: decode only those and deltas
            decoded = wire.decode(frame)
            if isinstance(decoded, wire.Ack):
                merge(self.ledger.acked[sender.name].setdefault(decoded.document, {}), decoded.vv)
        elif is_deltas(frame):
            decoded = wire.decode(frame)
            if isinstance(decoded, wire.Deltas):
                merge(self.ledger.sent[sender.name].setdefault(decoded.document, {}), of_deltas(decoded.deltas))

    def _settle(self, node: Node, sessions: list[Session] | None = None, link: Link | None = None) -> None:
        """Settle ``node``'s sessions (all of its links by default) in one
        commit, and report every event through the status rules."""
        if sessions is None:
            pairs = [(s, lk) for lk in self.links if (s := lk.session_of(node)) is not None]
        else:
            assert link is not None
            pairs = [(s, link) for s in sessions]
        links = {id(s): lk for s, lk in pairs}
        if node.settle_fault:
            fail_next_commit(node.replica)
        settled = _sync.settle(node.replica, [s for s, _ in pairs])
        if node.settle_fault:  # spent if settle committed; else it waits for the next settle that does
            node.settle_fault = commit_fault_pending(node.replica)
            fail_next_commit(node.replica, False)
        for session, event in settled:
            self._report(node, links[id(session)], session, event)
        for _, lk in pairs:
            self._look(lk)

    def _report(self, node: Node, link: Link, session: Session, event: Event) -> None:
        """The edge's part: the status rules, and closing a completed once-run."""
        if node.role != "device":
            return  # a relay reports nothing
        now = self.clock(node)
        if session is link.near:
            link.near_run, records = runs.step(link.near_run, event, session, now, refused=node.replica.refused)
            if runs.ends_link(event, session.mode):
                link.closing = True
        else:
            link.far_run, records = runs.step(link.far_run, event, session, now)
        node.replica.record(records)

    def _look(self, link: Link, *, closed: bool = False) -> None:
        """Note what the device's session of a relay-facing link shows now."""
        track = self.ledger.relay_runs.get(link.initiator.name)
        if track is None or track.link != link.number or track.closed:
            return
        session = link.near
        track.sent, track.received = session.sent, session.received
        shown = self.ledger.published.get(link.initiator.name)
        if (
            not session.closed
            and shown is not None
            and (shown.progress.sent, shown.progress.received)
            != (
                session.sent,
                session.received,
            )
        ):
            self.ledger.violations.append(
                f"{link.initiator} published progress sent {shown.progress.sent}, received "
                f"{shown.progress.received}; its session has sent {session.sent}, received {session.received}"
            )
        open_now = session.opened and not session.closed
        if shown is not None and shown.connected != open_now:
            self.ledger.violations.append(
                f"{link.initiator} published connected={shown.connected}; its session is "
                f"{'open' if open_now else 'not open'} ({session.state.name})"
            )
        if session.completed and track.completed_at is None:
            track.completed_at = self.clock(link.initiator)
            track.refused = link.initiator.replica.status().rejected > 0  # counted right: invariant 4
            if not track.refused:
                self.ledger.completions.setdefault(link.initiator.name, []).append(track.completed_at)
        if closed or session.closed:
            track.closed = True
            track.error = session.error

    def _reap(self) -> None:
        """Close the transports whose session ended once their last frames are out."""
        for link in list(self.links):
            if link.closing and not link.up:
                self.close_link(link, "the run is over")
            elif (link.near.closed and not link.up) or (link.far.closed and not link.down):
                self.close_link(link, "the other side closed the connection")

    # -- crashes, storage faults, clocks and credentials ---------------------

    def crash(self, name: str, *, survivors: int = 0) -> str:
        """Kill replica ``name`` and restart it from what it committed.
        Up to ``survivors`` frames it had already sent on each link still
        arrive; then the other ends see the connection drop."""
        self._check_open()
        node = self.nodes[name]
        before = self.committed_state(node)
        story = []
        # Its home screen starts IDLE again; and what its dying sessions hold (an ack received,
        # not settled) is nobody's status, so it is no longer compared with what it published.
        self.ledger.relay_runs.pop(name, None)
        for link in [lk for lk in self.links if lk.session_of(node) is not None]:
            self.links.remove(link)
            up = node is link.initiator
            queue = link.queue(up)
            _, _, other, other_session = link.ends(up)
            arrived = 0
            while queue and arrived < survivors and not other_session.closed:
                self._receive(link, up, queue.popleft())
                self._settle(other, [other_session], link)
                other_session.data_to_send(self.clock(other))  # towards the dead replica: lost
                arrived += 1
            other_session.connection_lost(f"{name} stopped answering")
            self._settle(other, [other_session], link)
            self._look(link, closed=True)
            story.append(f"{link} broken" + (f" after {arrived} more frames arrived" if arrived else ""))
        for unsubscribe in self._unsubscribe.pop(name):
            unsubscribe()
        node.replica = self.backend.reopen(node.replica, self.client_ids)
        node.crashes += 1
        self._watch(node)
        after = self.committed_state(node)
        if after != before:
            raise AssertionError(f"{name} lost committed data in a crash:\nbefore {before}\nafter  {after}")
        self._pump()
        self._reap()
        return f"{name} crashed and reopened" + (f" ({'; '.join(story)})" if story else "")

    def committed_state(self, node: Node) -> dict[str, Any]:
        """Everything a restart must find again: per document its version
        vector, its contents (canonical) and the relay's watermark."""
        replica = node.replica
        return {
            name: (replica.version_vector(name), canonical(replica.doc(name)), replica.watermark(RELAY, name))
            for name in replica.documents()
        }

    def storage_fault(self, name: str, *, settle: bool = False) -> str:
        """The next commit of replica ``name`` fails (a full or broken disk);
        with ``settle``, the next commit of what its sessions received."""
        if settle:
            self.nodes[name].settle_fault = True
            return f"{name}'s next commit of what it received will fail"
        fail_next_commit(self.replica(name))
        return f"{name}'s next commit will fail"

    def compact(self, name: str, keep: int) -> str:
        """Replica ``name`` compacts every document, keeping its ``keep``
        newest deltas: a device only what the relay acknowledged, the relay
        everything. Nothing anyone can see may change (a failed commit
        leaves the log as it was)."""
        node = self.nodes[name]
        before = self.committed_state(node)
        bound = None if node.role == "relay" else RELAY
        try:
            replaced = node.replica.compact(bound=bound, keep=keep)
        except StorageError:
            story = f"{name} tried to compact, and its commit failed"
        else:
            story = f"{name} compacted {replaced} deltas into snapshots"
        after = self.committed_state(node)
        if after != before:
            raise AssertionError(f"{name}: compaction changed what it holds:\nbefore {before}\nafter  {after}")
        return story

    def set_skew(self, name: str, skew: float) -> str:
        """Set how far ahead of the fleet's time node ``name``'s clock is."""
        self.nodes[name].skew = skew
        return f"{name}'s clock is {skew:+.0f} s off"

    def revoke(self, device: str) -> None:
        """The relay stops accepting the credentials issued to ``device`` so
        far; devices learn it from the relay's signed list, at their next relay
        sync, and carry it to each other."""
        self.revoked[device] = self.clock(self.relay)

    def restore(self, device: str) -> None:
        """The operator takes the revocation of ``device`` back."""
        self.revoked.pop(device, None)

    def renew(self, device: str) -> str:
        """The operator issues ``device`` a new credential (the same documents,
        expiring ``LIFETIME`` after its last one), given to it for its next
        syncs; peers see it once the relay has bound it to the device's key."""
        now = self.clock(self.relay)  # issued by the relay: after any revocation it made
        self.expires[device] = max(self.expires[device], now) + LIFETIME
        self.credentials[device] = self.relay_key.issue(
            issuer=RELAY_ID, replica_id=device, documents=self.scope, expires_at=self.expires[device], now=now
        )
        return f"{device} is given a new credential, expiring at {self.expires[device]:.0f}"

    # -- the end -------------------------------------------------------------

    def heal(self, *, rounds: int = 4) -> None:
        """The network comes back, every disk and clock is fixed and the
        operator takes every revocation back: close every link, then run
        fault-free syncs of every device with the relay, round after round,
        until a round changes nothing."""
        self.revoked.clear()
        for node in self.nodes.values():
            node.skew = 0.0
            node.settle_fault = False
            fail_next_commit(node.replica, False)
        for link in list(self.links):
            self.close_link(link, "the network was reset")
        for _ in range(rounds):
            before = self.fingerprint()
            for node in self.devices:
                self.sync(node.name)
            if self.fingerprint() == before:
                return

    def fingerprint(self) -> dict[str, dict[str, VersionVector]]:
        """Every replica's version vectors (quick "anything moved?")."""
        return {
            node.name: {name: node.replica.version_vector(name) for name in node.replica.documents()}
            for node in self.nodes.values()
        }

    def close(self) -> None:
        """Close every replica and delete their data."""
        if self.closed:
            return
        self.closed = True
        with ExitStack() as stack:
            stack.callback(self.backend.close)
            for node in self.nodes.values():
                stack.callback(node.replica.close)
            self.links.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
