"""The relay: a replica that serves many devices over websockets.

It stores every delta it acknowledges (the session acks only after the commit
made by :class:`~replica.net.Hub`, which groups the batches of all links that
arrived in one event-loop turn into one LMDB transaction), fans new deltas out
to every live device that has the document open, and admits a device only
with a credential it signed itself (``replica.credentials``).

Files in the data directory besides the LMDB log: ``relay-signing.key`` (the
Ed25519 key, created on first start, mode 0600) and ``relay.id`` (the relay's
replica id, so that credentials can be issued while the relay runs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from replica import wire
from replica.credentials import CredentialError, PublicKey, SigningKey
from replica.errors import ReplicaError
from replica.names import new_replica_id
from replica.net import WS_MAX_SIZE, Hub, Link
from replica.replica import Replica
from replica.session import Event, Grant, Limits, Session

log = logging.getLogger("replica.relay")

KEY_FILE = "relay-signing.key"
ID_FILE = "relay.id"


def relay_identity(data: str | os.PathLike[str]) -> tuple[str, SigningKey]:
    """The relay's replica id and signing key, created on first use. Usable
    while the relay runs (the LMDB log stays locked by the relay)."""
    folder = Path(data)
    folder.mkdir(parents=True, exist_ok=True)
    key = SigningKey.load_or_create(folder / KEY_FILE)
    id_path = folder / ID_FILE
    if not id_path.exists():
        temporary = id_path.with_suffix(".tmp")
        temporary.write_text("relay-" + new_replica_id()[1:13] + "\n")
        os.replace(temporary, id_path)
    return id_path.read_text().strip(), key


class Relay:
    """The relay server. ``async with Relay(dir, port=0) as relay:`` starts it
    (``port=0`` picks a free port; see :attr:`url`)."""

    def __init__(
        self,
        data: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        limits: Limits | None = None,
    ) -> None:
        self.data = Path(data)
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self.replica_id, self._key = relay_identity(self.data)
        self.public_key: PublicKey = self._key.public_key()
        self.replica: Replica | None = None
        self._server: Server | None = None
        self._hub: Hub | None = None
        self._links: set[Link] = set()

    @property
    def url(self) -> str:
        """``ws://host:port`` of the running relay."""
        if self._server is None:
            raise RuntimeError("the relay is not running")
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://{self.host}:{port}"

    def issue_credential(
        self,
        replica_id: str,
        documents: Sequence[str],
        *,
        expires_at: float,
        device_key: bytes | None = None,
        now: float | None = None,
    ) -> str:
        """A credential for device ``replica_id`` on ``documents`` (patterns),
        issued at ``now`` (default: the current time)."""
        return self._key.issue(
            issuer=self.replica_id,
            replica_id=replica_id,
            documents=documents,
            expires_at=expires_at,
            now=time.time() if now is None else now,
            device_key=device_key,
        )

    async def start(self) -> None:
        """Open the data directory and start listening."""
        self.replica = Replica.open(self.data, replica_id=self.replica_id)
        self._hub = Hub(self.replica, self._on_event)
        self.replica.on_change(self._fan_out)
        self._server = await serve(
            self._serve,
            self.host,
            self.port,
            max_size=WS_MAX_SIZE,
            compression=None,
            ping_interval=20,
            ping_timeout=20,
        )
        log.info("relay %s listening on %s", self.replica_id, self.url)

    async def stop(self) -> None:
        """Close every connection and the data directory. Everything
        acknowledged is already on disk."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.replica is not None:
            self.replica.close()
            self.replica = None

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- links ---------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        assert self.replica is not None and self._hub is not None
        session = Session(self.replica, role="relay", initiator=False, authorize=self._authorize, limits=self.limits)
        link = Link(ws, session, self._hub, timeout=None)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)
            if session.error is not None and session.error.code != "connection_lost":
                log.warning("link from %s closed: %s", session.remote_id or ws.remote_address, session.error)

    def _authorize(self, hello: wire.Hello, now: float) -> Grant:
        if hello.role != "device":
            raise ReplicaError(f"a relay serves devices, not a {hello.role}", code="unexpected_role")
        if hello.credential is None:
            raise CredentialError(
                "no credential was presented; ask the relay operator for one", code="credential_missing"
            )
        credential = self.public_key.verify(hello.credential)
        credential.check(replica_id=hello.replica_id, now=now)
        if hello.replica_id == self.replica_id:
            raise ReplicaError("a device is using the relay's own replica id", code="replica_id_clash")
        return Grant(hello.replica_id, credential.allows)

    def _on_event(self, session: Session, event: Event) -> None:
        """Nothing to do on the relay side: sessions ack and close themselves."""

    def _fan_out(self, document: str) -> None:
        """New deltas of ``document`` are stored: offer them to live links."""
        now = time.time()
        for link in self._links:
            if link.session.mode == "live" and link.session.has_document(document):
                link.session.local_changed(document, now)
                link.wake()


async def run_relay(relay: Relay, *, ready: Any = None) -> None:
    """Run ``relay`` until cancelled (the CLI's SIGINT/SIGTERM handler cancels)."""
    async with relay:
        if ready is not None:
            ready(relay)
        await asyncio.Future()
