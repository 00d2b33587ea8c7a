"""The pieces of a simulated network: nodes, links and their frames.

See ``replica.testing.network`` for how a fleet moves frames over them.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from replica import runs, values, wire
from replica.doc import Document
from replica.errors import ReplicaError
from replica.replica import Replica
from replica.session import Session

ACK_PREFIX = b"\xa1t\xa3ack"
DELTAS_PREFIX = b"\xa1t\xa6deltas"


def seed(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(("replica-fleet", *parts)).encode()).digest()


@dataclass(eq=False)
class Node:
    """One replica of the fleet: the relay or a device, with its own clock."""

    name: str
    role: str  # "device" or "relay"
    replica: Replica
    crashes: int = 0
    skew: float = 0.0  #: seconds this node's clock is ahead of the fleet's time
    challenges: int = 0
    settle_fault: bool = False  #: the next commit that settles its sessions fails

    def next_challenge(self) -> bytes:
        """A fresh challenge, the same on every replay of the story."""
        self.challenges += 1
        return seed("challenge", self.name, str(self.challenges))

    def __str__(self) -> str:
        return self.name


@dataclass(eq=False)
class Link:
    """Two sessions, the frames travelling between them, and the status
    rules' view of each end's run."""

    number: int
    initiator: Node
    acceptor: Node
    near: Session  # the initiator's session
    far: Session  # the acceptor's session
    mode: str
    near_run: runs.Run
    far_run: runs.Run = field(default_factory=lambda: runs.Run(runs.Facing.PEER))
    up: deque[bytes] = field(default_factory=deque)  # initiator -> acceptor
    down: deque[bytes] = field(default_factory=deque)  # acceptor -> initiator
    closing: bool = False  # a once-run completed: close when its last frames are out
    hello_given: str = ""  # the newest credential the initiator had been given when it made its hello
    hello_why: str = ""  # why the acceptor had to refuse the hello when it arrived ("" if it had not)

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


def canonical(document: Document) -> bytes:
    """The contents of a document as bytes that are equal exactly when the
    contents are (``contents()`` is canonically ordered; NaN equals NaN)."""
    return values.encode(document.contents())


def describe(frame: bytes) -> str:
    """One frame in a few words, for the story of a failing example."""
    try:
        decoded = wire.decode(frame)
    except ReplicaError as exc:
        return f"<undecodable frame: {exc}>"
    if isinstance(decoded, wire.Deltas):
        spans: dict[str, list[int]] = {}
        for item in decoded.deltas:  # a span: its first seq and its last
            spans.setdefault(item.origin, []).extend((item.start, item.seq))
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


def is_deltas(frame: bytes) -> bool:
    return frame[1 : 1 + len(DELTAS_PREFIX)] == DELTAS_PREFIX
