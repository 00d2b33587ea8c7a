"""A deterministic, simulated network of replicas: no sockets, no threads, no sleeps.

Theory of operation
-------------------
A :class:`Fleet` holds one relay and a few devices, each a real
:class:`~replica.Replica` (on LMDB in a temporary folder, or in memory), and
the *links* between them. A link is a pair of sans-I/O sessions
(``replica.session``) with one queue of frames per direction; nothing moves
unless the caller says so. Each call is one event of the story: a local edit,
a link opened or closed, the next frame of one direction delivered, dropped,
duplicated or delayed, a replica crashed and reopened from disk, a credential
revoked. After a delivery the receiver settles its sessions with
:func:`replica.sync.settle`, exactly as every real edge does, and everything
the sessions want to send is moved onto the queues.

The fleet also plays the edge's part of the status API (``SYNCING`` when a
device opens a link to the relay, ``SYNCED`` on completion, ``FAILED`` on a
close before it) and records what it saw on the wire, so that the checks
(``replica.testing.checks``) can hold the replicas to what they announced:
every ``ack`` a replica sent, what the relay told each device, and each run's
starting point. Frames already sent by a replica that crashes can still
arrive; frames towards it are lost.

Devices reach the relay with a credential from :attr:`Fleet.credentials`
(``valid``, ``revoked`` or ``expired``): the relay refuses the last two at the
handshake; devices checking each other offline can only see expiry.
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replica import sync as _sync  # looked up at call time: tests may patch settle
from replica import wire
from replica.credentials import CredentialError
from replica.doc import Document
from replica.errors import ErrorInfo, ReplicaError
from replica.replica import Replica
from replica.session import Closed, Completed, Event, Grant, Limits, Session, merge
from replica.status import Progress, SyncState
from replica.store.lmdb import LmdbStore
from replica.store.memory import MemoryStore
from replica.testing.clientids import ClientIds
from replica.testing.strategies import Action, NetworkStep, RunPlan
from replica.wire import VersionVector

RELAY_ID = "relay-1"
VALID, REVOKED, EXPIRED = "valid", "revoked", "expired"
#: Simulated seconds per delivered frame (acks come back fast: batches grow).
TICK = 0.001
_MAP_SIZE = 1 << 28
_ACK_PREFIX = b"\xa1t\xa3ack"
_DELTAS_PREFIX = b"\xa1t\xa6deltas"


# -- storage backends --------------------------------------------------------


class Backend:
    """Where a fleet keeps its replicas; ``reopen`` is a restart after a crash."""

    name = "backend"

    def open(self, replica_id: str) -> Replica:
        raise NotImplementedError

    def reopen(self, replica: Replica) -> Replica:
        raise NotImplementedError

    def close(self) -> None:
        """Drop everything kept (after the replicas are closed)."""


class LmdbBackend(Backend):
    """One LMDB data directory per replica under a temporary folder.

    ``fsync=False`` (the default) commits without flushing to the disk: a
    simulated crash closes and reopens the environment in this process, so
    it reads back exactly what was committed either way, and the suite runs
    several times faster. Power loss is ``tests/test_crash.py``'s business.
    """

    name = "lmdb"

    def __init__(self, root: Path | None = None, *, fsync: bool = False) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="replica-fleet-")) if root is None else root
        self.fsync = fsync

    def open(self, replica_id: str) -> Replica:
        return self._open(self.root / replica_id, replica_id)

    def reopen(self, replica: Replica) -> Replica:
        replica.close()
        assert replica.path is not None
        return self._open(replica.path, None)

    def _open(self, path: Path, replica_id: str | None) -> Replica:
        if self.fsync:
            return Replica.open(path, replica_id=replica_id, map_size=_MAP_SIZE)
        store = LmdbStore(path, map_size=_MAP_SIZE, sync=False)
        replica = Replica(store, replica_id=replica_id)  # what Replica.open does, minus the fsync
        replica.path = path
        return replica

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


class MemoryBackend(Backend):
    """Replicas in memory (what ``Replica.in_memory()`` builds); a reopen
    builds a new replica over the same tables, as a restart would find them."""

    name = "memory"

    def __init__(self) -> None:
        self._stores: dict[str, MemoryStore] = {}

    def open(self, replica_id: str) -> Replica:
        store = self._stores[replica_id] = MemoryStore()
        return Replica(store, replica_id=replica_id)

    def reopen(self, replica: Replica) -> Replica:
        replica.close()
        return Replica(self._stores[replica.id])

    def close(self) -> None:
        self._stores.clear()


def backend_named(name: str) -> Backend:
    """``"lmdb"`` or ``"memory"``."""
    if name == "lmdb":
        return LmdbBackend()
    if name == "memory":
        return MemoryBackend()
    raise ValueError(f"unknown backend {name!r}; use 'lmdb' or 'memory'")


# -- nodes and links ---------------------------------------------------------


@dataclass(eq=False)
class Node:
    """One replica of the fleet: the relay or a device."""

    name: str
    role: str  # "device" or "relay"
    replica: Replica
    crashes: int = 0

    def __str__(self) -> str:
        return self.name


@dataclass(eq=False)
class Link:
    """Two sessions and the frames travelling between them."""

    number: int
    initiator: Node
    acceptor: Node
    near: Session  # the initiator's session
    far: Session  # the acceptor's session
    mode: str
    up: deque[bytes] = field(default_factory=deque)  # initiator -> acceptor
    down: deque[bytes] = field(default_factory=deque)  # acceptor -> initiator
    closing: bool = False  # a once-run completed: close when its last frames are out

    @property
    def relay_facing(self) -> bool:
        return self.acceptor.role == "relay"

    def queue(self, up: bool) -> deque[bytes]:
        return self.up if up else self.down

    def ends(self, up: bool) -> tuple[Node, Session, Node, Session]:
        """``(sender, its session, receiver, its session)`` for a direction."""
        if up:
            return self.initiator, self.near, self.acceptor, self.far
        return self.acceptor, self.far, self.initiator, self.near

    def session_of(self, node: Node) -> Session | None:
        if node is self.initiator:
            return self.near
        if node is self.acceptor:
            return self.far
        return None

    def __str__(self) -> str:
        arrow = "=>" if self.mode == "live" else "->"
        return f"L{self.number}({self.initiator}{arrow}{self.acceptor})"


@dataclass
class RunStart:
    """Where a device-relay run started: what the device held at its hello
    and what the relay held when it answered."""

    device: dict[str, VersionVector]
    relay: dict[str, VersionVector] | None = None


def describe(frame: bytes) -> str:
    """One frame in a few words, for the story of a failing example."""
    try:
        decoded = wire.decode(frame)
    except ReplicaError as exc:
        return f"<undecodable frame: {exc}>"
    if isinstance(decoded, wire.Deltas):
        spans: dict[str, list[int]] = {}
        for item in decoded.deltas:
            spans.setdefault(item.origin, []).append(item.seq)
        parts = ", ".join(f"{o}#{min(s)}" + (f"..{max(s)}" if len(s) > 1 else "") for o, s in spans.items())
        return f"deltas {decoded.document} [{parts}]"
    if isinstance(decoded, wire.Ack):
        return f"ack {decoded.document} {decoded.vv}"
    if isinstance(decoded, wire.Hello):
        return f"hello from {decoded.replica_id} ({decoded.mode}) {decoded.documents}"
    if isinstance(decoded, wire.Welcome):
        denied = f" denied {sorted(decoded.denied)}" if decoded.denied else ""
        return f"welcome from {decoded.replica_id} {decoded.documents}{denied}"
    if isinstance(decoded, wire.Error):
        return f"error {decoded.code}"
    if isinstance(decoded, wire.Open | wire.Opened):
        return f"{type(decoded).__name__.lower()} {decoded.document} {decoded.vv}"
    return type(decoded).__name__.lower()


def _is_deltas(frame: bytes) -> bool:
    return frame[1 : 1 + len(_DELTAS_PREFIX)] == _DELTAS_PREFIX


def _vv_of_deltas(frame: wire.Deltas) -> VersionVector:
    vv: VersionVector = {}
    for item in frame.deltas:
        vv[item.origin] = max(vv.get(item.origin, 0), item.seq)
    return vv


# -- trust in the simulation -------------------------------------------------


class SimTrust:
    """A device's trust decisions as initiator towards a peer (the
    ``session.Trust`` protocol), with tokens ``sim:<replica id>`` and proofs
    ``proof:<replica id>``: enough to drive the peer handshake, including its
    ``proving`` state, without keys."""

    def __init__(self, fleet: Fleet, device: str) -> None:
        self.fleet = fleet
        self.device = device

    def hello_fields(self) -> tuple[str | None, bytes | None, bytes | None]:
        return f"sim:{self.device}", b"challenge", None

    def check_welcome(self, welcome: wire.Welcome, now: float) -> tuple[Callable[[str], bool], bytes | None]:
        if welcome.role != "peer":
            raise ReplicaError(f"expected a peer, not a {welcome.role}", code="unexpected_role")
        self.fleet._check_peer_credential(welcome.credential, welcome.replica_id)
        self.fleet._check_peer_credential(f"sim:{self.device}", self.device)
        if welcome.proof != b"proof:" + welcome.replica_id.encode():
            raise CredentialError("the other device did not prove who it is", code="proof_invalid")
        return self.fleet.allows, b"proof:" + self.device.encode()


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
        self.client_ids.install()
        self.nodes: dict[str, Node] = {}
        self.links: list[Link] = []
        self.now = 0.0
        self._numbers = 0
        self.credentials: dict[str, str] = {}
        #: Per replica and document: every ``ack`` it sent, merged.
        self.acked: dict[str, dict[str, VersionVector]] = {}
        #: Per device and document: all that the relay's frames said it holds.
        self.relay_said: dict[str, dict[str, VersionVector]] = {}
        #: Per device: the start of the run whose completion made it SYNCED.
        self.synced_runs: dict[str, RunStart] = {}
        self._starts: dict[int, RunStart] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self.closed = False
        names = list(device_ids) if device_ids is not None else [f"dev-{i}" for i in range(devices)]
        with self.client_ids.active():
            try:
                self._add(RELAY_ID, "relay")
                for name in names:
                    self._add(name, "device")
                    self.credentials[name] = VALID
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

    def _add(self, name: str, role: str) -> None:
        node = Node(name, role, self.backend.open(name))
        self.nodes[name] = node
        self.acked[name] = {}
        if role == "device":
            self.relay_said[name] = {}
        self._watch(node)

    def _watch(self, node: Node) -> None:
        self._unsubscribe[node.name] = node.replica.on_change(lambda document: self._changed(node, document))

    def _changed(self, node: Node, document: str) -> None:
        """New deltas in ``node``'s log: live sessions offer them (fan-out)."""
        for link in self.links:
            session = link.session_of(node)
            if session is not None and link.mode == "live" and not session.closed:
                session.local_changed(document, self.now)

    @contextmanager
    def _acting(self) -> Iterator[None]:
        if self.closed:
            raise RuntimeError("this fleet is closed")
        with self.client_ids.active():
            yield

    def edit(self, name: str, document: str, change: Callable[[Document], Any]) -> Any:
        """Run ``change(doc)`` on a replica's document (its deltas commit as
        usual); live links offer them at once. Returns what ``change`` returns."""
        with self._acting():
            result = change(self.replica(name).doc(document))
            self._pump()
            return result

    def read(self, name: str, read: Callable[[Replica], Any]) -> Any:
        """Run ``read(replica)`` with this fleet's client ids (documents loaded
        for reading get deterministic ids too)."""
        with self._acting():
            return read(self.replica(name))

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
        with self._acting():
            near_node = self.nodes[initiator]
            far_node = self.nodes[acceptor or RELAY_ID]
            if near_node.role != "device" or near_node is far_node:
                raise ValueError("a device opens links, to the relay or to another device")
            if self.linked(near_node.name, far_node.name) is not None:
                raise ValueError(f"{near_node} and {far_node} are already linked")
            mode = "live" if live else "once"
            if far_node.role == "relay":
                near = Session(near_node.replica, role="device", initiator=True, mode=mode, limits=self.limits)
                far = Session(
                    far_node.replica, role="relay", initiator=False, authorize=self._relay_authorize, limits=self.limits
                )
            else:
                near = Session(
                    near_node.replica,
                    role="device",
                    initiator=True,
                    mode=mode,
                    trust=SimTrust(self, near_node.name),
                    limits=self.limits,
                )
                far = Session(
                    far_node.replica,
                    role="peer",
                    initiator=False,
                    authorize=self._peer_authorizer(far_node.name),
                    limits=self.limits,
                )
            self._numbers += 1
            link = Link(self._numbers, near_node, far_node, near, far, mode)
            self.links.append(link)
            replica = near_node.replica
            if link.relay_facing:
                self._starts[link.number] = RunStart(
                    {name: replica.version_vector(name) for name in replica.documents()}
                )
                replica._set_run(SyncState.SYNCING, progress=Progress())
            near.start(self.now)
            self._pump()
            return link

    def close_link(self, link: Link, reason: str = "the connection was lost") -> None:
        """The transport breaks: frames in flight are lost, both ends learn it."""
        with self._acting():
            if link not in self.links:
                return
            self.links.remove(link)
            link.up.clear()
            link.down.clear()
            for node, session in ((link.initiator, link.near), (link.acceptor, link.far)):
                session.connection_lost(reason)
                self._settle(node, [session], link)
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
        with self._acting():
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
            if plan is None or not _is_deltas(link.queue(up)[0]):
                self.deliver(link, up)
                continue
            action = faults.get(number)
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
        if receiver.role == "relay" and session.state == "idle":  # it answers from its log as it is now
            start = self._starts.get(link.number)
            if start is not None:
                replica = receiver.replica
                start.relay = {name: replica.version_vector(name) for name in replica.documents()}
        if sender.role == "relay" and receiver.role == "device":
            self._note_relay_said(receiver.name, frame)
        session.receive(frame, self.now)
        self.now += TICK

    def _note_relay_said(self, device: str, frame: bytes) -> None:
        decoded = wire.decode(frame)
        said = self.relay_said[device]
        if isinstance(decoded, wire.Welcome):
            for name, vv in decoded.documents.items():
                merge(said.setdefault(name, {}), vv)
        elif isinstance(decoded, wire.Ack):
            merge(said.setdefault(decoded.document, {}), decoded.vv)
        elif isinstance(decoded, wire.Deltas):
            merge(said.setdefault(decoded.document, {}), _vv_of_deltas(decoded))

    def _pump(self) -> None:
        """Move what every session wants to send onto its queue."""
        for link in self.links:
            for up in (True, False):
                sender, session, _, _ = link.ends(up)
                for frame in session.data_to_send(self.now):
                    link.queue(up).append(frame)
                    if frame[1 : 1 + len(_ACK_PREFIX)] == _ACK_PREFIX:  # {"t": "ack", ...}: decode only those
                        decoded = wire.decode(frame)
                        if isinstance(decoded, wire.Ack):
                            merge(self.acked[sender.name].setdefault(decoded.document, {}), decoded.vv)

    def _settle(self, node: Node, sessions: list[Session] | None = None, link: Link | None = None) -> None:
        """Settle ``node``'s sessions (all of its links by default) in one commit."""
        if sessions is None:
            pairs = [(s, lk) for lk in self.links if (s := lk.session_of(node)) is not None]
        else:
            assert link is not None
            pairs = [(s, link) for s in sessions]
        links = {id(s): lk for s, lk in pairs}
        for session, event in _sync.settle(node.replica, [s for s, _ in pairs]):
            self._on_event(node, links[id(session)], session, event)

    def _on_event(self, node: Node, link: Link, session: Session, event: Event) -> None:
        """The edge's part: statuses, and closing a completed once-run."""
        if node.role != "device":
            return
        if session is link.far and not session.opened:
            return  # a peer that never proved who it is: record nothing under its claimed id
        replica = node.replica
        progress = Progress(session.sent, session.to_send, session.received, session.to_receive)
        if isinstance(event, Completed):
            if session is link.near and link.mode == "once":
                link.closing = True
            if link.relay_facing:
                start = self._starts.get(link.number)
                assert start is not None
                self.synced_runs[node.name] = start
                replica._set_run(SyncState.SYNCED, progress=progress, synced_at=self.now)
            else:
                self._peer_result(replica, session, error=None)
        elif isinstance(event, Closed) and (not session.completed or link.mode == "live"):
            error = event.error or ErrorInfo("connection_lost", "the connection closed before the end", True)
            if link.relay_facing:
                self.synced_runs.pop(node.name, None)
                replica._set_run(SyncState.FAILED, progress=progress, error=error)
            elif session.remote_id is not None:
                self._peer_result(replica, session, error=error)

    def _peer_result(self, replica: Replica, session: Session, *, error: ErrorInfo | None) -> None:
        assert session.remote_id is not None
        missing = max(0, session.to_receive - session.received)
        synced_at = self.now if error is None else None
        replica._set_peer(session.remote_id, synced_at=synced_at, error=error, to_receive=missing)

    def _reap(self) -> None:
        """Close the transports whose session ended once their last frames are out."""
        for link in list(self.links):
            if link.closing and not link.up:
                self.close_link(link, "the run is over")
            elif (link.near.closed and not link.up) or (link.far.closed and not link.down):
                self.close_link(link, "the other side closed the connection")

    # -- crashes and credentials ---------------------------------------------

    def crash(self, name: str, *, survivors: int = 0) -> str:
        """Kill replica ``name`` and restart it from what it committed.
        Up to ``survivors`` frames it had already sent on each link still
        arrive; then the other ends see the connection drop."""
        with self._acting():
            node = self.nodes[name]
            before = self.committed_state(node)
            story = []
            for link in [lk for lk in self.links if lk.session_of(node) is not None]:
                self.links.remove(link)
                up = node is link.initiator
                queue = link.queue(up)
                _, _, other, other_session = link.ends(up)
                arrived = 0
                while queue and arrived < survivors and not other_session.closed:
                    self._receive(link, up, queue.popleft())
                    self._settle(other, [other_session], link)
                    other_session.data_to_send(self.now)  # towards the dead replica: lost
                    arrived += 1
                other_session.connection_lost(f"{name} stopped answering")
                self._settle(other, [other_session], link)
                story.append(f"{link} broken" + (f" after {arrived} more frames arrived" if arrived else ""))
            self._unsubscribe.pop(name)()
            node.replica = self.backend.reopen(node.replica)
            node.crashes += 1
            self.synced_runs.pop(name, None)
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
        from replica.testing.checks import canonical

        replica = node.replica
        with self._acting():
            return {
                name: (replica.version_vector(name), canonical(replica.doc(name)), replica.watermark("relay", name))
                for name in replica.documents()
            }

    def revoke(self, device: str, *, expired: bool = False) -> None:
        """The relay stops accepting ``device``'s credential (revoked), or it
        runs out (expired: peers see that too)."""
        self.credentials[device] = EXPIRED if expired else REVOKED

    def renew(self, device: str) -> None:
        """The operator issues ``device`` a fresh credential."""
        self.credentials[device] = VALID

    def _relay_authorize(self, hello: wire.Hello, now: float) -> Grant:
        if hello.role != "device":
            raise ReplicaError(f"a relay serves devices, not a {hello.role}", code="unexpected_role")
        state = self.credentials.get(hello.replica_id)
        if state is None:
            raise CredentialError("no credential for this replica", code="credential_missing")
        if state == EXPIRED:
            raise CredentialError("the credential has expired; ask for a new one", code="credential_expired")
        if state == REVOKED:
            raise ReplicaError("the credential was revoked", code="credential_revoked")
        return Grant(hello.replica_id, self.allows)

    def _check_peer_credential(self, token: str | None, replica_id: str) -> None:
        if token != f"sim:{replica_id}" or replica_id not in self.credentials:
            raise CredentialError("the other device presented no valid credential", code="credential_invalid")
        if self.credentials[replica_id] == EXPIRED:  # revocation cannot be seen offline
            raise CredentialError(f"the credential of {replica_id} has expired", code="credential_expired")

    def _peer_authorizer(self, acceptor: str) -> Callable[[wire.Hello, float], Grant]:
        def authorize(hello: wire.Hello, now: float) -> Grant:
            if hello.role != "device":
                raise ReplicaError(f"a device accepts devices, not a {hello.role}", code="unexpected_role")
            self._check_peer_credential(hello.credential, hello.replica_id)
            self._check_peer_credential(f"sim:{acceptor}", acceptor)
            expected = b"proof:" + hello.replica_id.encode()

            def verify(proof: bytes) -> None:
                if proof != expected:
                    raise CredentialError("the other device did not prove who it is", code="proof_invalid")

            return Grant(
                hello.replica_id,
                self.allows,
                credential=f"sim:{acceptor}",
                challenge=b"challenge",
                proof=b"proof:" + acceptor.encode(),
                verify_proof=verify,
            )

        return authorize

    # -- the end -------------------------------------------------------------

    def heal(self, *, rounds: int = 4) -> None:
        """The network comes back and the operator renews every credential:
        close every link, then run fault-free syncs of every device with the
        relay, round after round, until a round changes nothing."""
        for name in self.credentials:
            self.credentials[name] = VALID
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
            stack.callback(self.client_ids.uninstall)
            stack.callback(self.backend.close)
            for node in self.nodes.values():
                stack.callback(node.replica.close)
            self.links.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
