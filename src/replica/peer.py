"""Devices syncing with each other in the field, with no relay in reach.

A device serves peers with :class:`PeerServer` (``await
replica.serve_peers(host, port)`` or ``replica peer serve``); another device
syncs with it by URL through the same ``replica.sync(url, peer=True)`` and the
same protocol as with the relay. Both sides check each other offline
(``replica.trust``): a credential signed by the relay whose key each device
pinned at its first relay sync, naming the peer's replica id, unexpired, and
a signature over a fresh challenge proving the peer holds the key the
credential names. Documents are exchanged only where both credentials allow.

Every origin's deltas travel, so a device carries what it received from
others; watermarks are kept per peer, so syncing with a peer never changes the
count of deltas not yet on the relay.
"""

from __future__ import annotations

import ssl
import time
import weakref
from types import TracebackType

from replica import runs
from replica.engine import Engine
from replica.events import Event
from replica.listener import Listener
from replica.session import Limits, Session
from replica.trust import DeviceTrust


class PeerServer:
    """Accepts peer devices for one replica until stopped."""

    def __init__(self, replica: Engine, *, limits: Limits | None = None) -> None:
        self.replica = replica
        self.limits = limits or Limits()
        self._listener = Listener(replica, self._session, self._on_event)
        #: Per session, the status rules' view of its run (gone with the session).
        self._runs: weakref.WeakKeyDictionary[Session, runs.Run] = weakref.WeakKeyDictionary()

    def _session(self) -> Session:
        trust = DeviceTrust(self.replica)  # fresh: it may have synced with the relay since
        return Session(self.replica, role="peer", initiator=False, authorize=trust.authorize, limits=self.limits)

    def _on_event(self, session: Session, event: Event) -> None:
        run = self._runs.get(session) or runs.start(runs.Facing.PEER)[0]
        self._runs[session], records = runs.step(run, event, session, time.time())
        self.replica.record(records)

    @property
    def url(self) -> str:
        """``ws://host:port`` to give to peers."""
        return self._listener.url

    @property
    def links(self) -> int:
        """Peers connected now."""
        return self._listener.links

    async def start(self, host: str = "0.0.0.0", port: int = 8766, *, tls: ssl.SSLContext | None = None) -> None:
        """Listen for peers (``wss://`` with ``tls``)."""
        await self._listener.start(host, port, tls=tls)

    async def stop(self) -> None:
        await self._listener.stop()

    async def __aenter__(self) -> PeerServer:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
