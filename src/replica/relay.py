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

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from replica import wire
from replica.credentials import CredentialError, PublicKey, SigningKey
from replica.errors import ReplicaError
from replica.names import new_replica_id
from replica.net import Listener
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
        self._listener: Listener | None = None

    @property
    def url(self) -> str:
        """``ws://host:port`` of the running relay."""
        if self._listener is None:
            raise RuntimeError("the relay is not running")
        return self._listener.url

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
        replica = self.replica = Replica.open(self.data, replica_id=self.replica_id)

        def session() -> Session:
            return Session(replica, role="relay", initiator=False, authorize=self._authorize, limits=self.limits)

        self._listener = Listener(replica, session, self._on_event)
        try:
            await self._listener.start(self.host, self.port)
        except BaseException:
            replica.close()
            self.replica = self._listener = None
            raise
        log.info("relay %s listening on %s", self.replica_id, self.url)

    async def stop(self) -> None:
        """Close every connection and the data directory. Everything
        acknowledged is already on disk."""
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.replica is not None:
            self.replica.close()
            self.replica = None

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- links ---------------------------------------------------------------

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
        bound = None
        if hello.device_key is not None:
            if credential.device_key not in (None, hello.device_key):
                raise CredentialError(
                    "this credential is bound to another device's key; install the credential issued for this device",
                    code="credential_invalid",
                )
            # The same rights, bound to the device's key, so that peers can check who holds it.
            bound = (
                hello.credential
                if credential.device_key
                else self._key.issue(
                    issuer=self.replica_id,
                    replica_id=credential.replica_id,
                    documents=credential.documents,
                    expires_at=credential.expires_at,
                    now=now,
                    device_key=hello.device_key,
                )
            )
        proof = None if hello.challenge is None else self._key.sign(hello.challenge)
        return Grant(hello.replica_id, credential.allows, credential=bound, relay_key=self.public_key.raw, proof=proof)

    def _on_event(self, session: Session, event: Event) -> None:
        """Nothing to do on the relay side: sessions ack and close themselves."""
