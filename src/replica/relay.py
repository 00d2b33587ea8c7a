"""The relay: a replica that serves many devices over websockets.

It stores every delta it acknowledges (the session acks only after the commit
made by :class:`~replica.net.Hub`, which groups the batches of all links that
arrived in one event-loop turn into one LMDB transaction), fans new deltas out
to every live device that has the document open, and admits a device only
with a credential it signed itself (``replica.credentials``).

Files in the data directory besides the LMDB log: ``relay-signing.key`` (the
Ed25519 key, created on first start, mode 0600), ``relay.id`` (the relay's
replica id, so that credentials can be issued while the relay runs), and what
the operator issued and revoked (``issued.jsonl``, ``revoked.json``: see
``replica.registry``), read while the relay runs.

Stock Yjs clients (``y-websocket``) connect to ``ws://host:port/yjs/<document>``
(``replica.yjs_endpoint``, docs/yjs.md); devices connect to any other path.

Several relays (``redis=``, ``replica relay --redis URL``): they share one
log in Redis Streams (``replica.redis_log``, docs/scale-out.md); each keeps
its data directory as a copy of it, and acknowledges a delta only once Redis
holds it durably.

Compaction: the relay replaces the old deltas of a document with a snapshot
once enough follow the last one (``compact_every``), keeping the newest
(``keep``) one by one, so that a device a little behind still gets deltas
and a new or far-behind one gets the document's state and the tail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from replica import errors, registry
from replica.compacting import compact_due_in_steps
from replica.credentials import PublicKey, SigningKey
from replica.engine import Engine
from replica.limits import AbuseLimits
from replica.listener import Listener
from replica.names import new_replica_id
from replica.relay_ops import RelayOps
from replica.session import Limits
from replica.trust import RelayAuthority
from replica.yjs_endpoint import PREFIX as YJS_PREFIX
from replica.yjs_endpoint import YjsEndpoint

if TYPE_CHECKING:  # imported when a relay joins a deployment: one relay alone needs no redis package
    from replica.redis_log import Follower, SharedLog, SharedRevocations

log = logging.getLogger("replica.relay")

KEY_FILE = "relay-signing.key"
ID_FILE = "relay.id"
#: Compaction defaults: a document is compacted once this many deltas follow
#: its snapshot, keeping the newest ``KEEP_DELTAS`` one by one; checked at
#: start and every ``COMPACT_INTERVAL`` seconds for the documents that changed.
COMPACT_EVERY = 10_000
KEEP_DELTAS = 1_000
COMPACT_INTERVAL = 30.0
#: A relay of several hands Redis a document's whole state once its stream holds more than
#: this many entries (else its compacted snapshot, if any): Redis memory against AOF writes.
SHARED_TAIL = 2_000
#: Seconds between two exchanges of revocations with the other relays of a deployment.
REVOCATIONS_INTERVAL = 1.0
#: Default memory budget of the documents a relay keeps loaded (MB).
DOC_CACHE_MB = 256.0


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
        compact_every: int | None = COMPACT_EVERY,
        keep: int = KEEP_DELTAS,
        doc_cache_mb: float | None = DOC_CACHE_MB,
        tls: ssl.SSLContext | None = None,
        abuse: AbuseLimits | None = None,
        map_size: int | None = None,
        redis: str | None = None,
        shared_tail: int = SHARED_TAIL,
    ) -> None:
        self.data = Path(data)
        #: ``redis://host:port/db`` of the log shared with the deployment's other relays (None: alone).
        self.redis = redis
        #: A document's stream longer than this is trimmed behind its whole state (see :meth:`trim_shared`).
        self.shared_tail = shared_tail
        self.shared: SharedLog | None = None
        self.follower: Follower | None = None
        self._following: asyncio.Task[None] | None = None
        self._sharing: asyncio.Task[None] | None = None
        self.map_size = map_size  #: bytes of LMDB address space (None: the store's default)
        #: Rate and connection limits per connection and per device (``replica.limits``).
        self.abuse = abuse
        #: Metrics, health, the operator's log and the devices view, while running.
        self.ops: RelayOps | None = None
        #: Serve ``wss://`` with this context (``replica.tls.server_context``); None: plain ``ws://``.
        self.tls = tls
        #: A document is compacted once this many deltas follow its snapshot (None: never).
        self.compact_every = compact_every
        self.keep = keep  #: the newest deltas a compaction keeps one by one (what a device a bit behind gets)
        #: Memory budget of the loaded documents (see ``replica.doccache``); None: unbounded.
        self.doc_cache_mb = doc_cache_mb
        self._changed: set[str] = set()
        self._compactor: asyncio.Task[None] | None = None
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self.replica_id, self._key = relay_identity(self.data)
        self.public_key: PublicKey = self._key.public_key()
        self.authority = RelayAuthority(self.replica_id, self._key, revoked=registry.Revocations(self.data))
        self.replica: Engine | None = None
        self._listener: Listener | None = None
        #: The y-protocols endpoint (``ws://host:port/yjs/<document>``) for stock Yjs clients.
        self.yjs: YjsEndpoint | None = None

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS) of the running relay."""
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
        issued at ``now`` (default: the current time), recorded as issued."""
        return registry.issue_credential(
            self.data,
            self._key,
            issuer=self.replica_id,
            replica_id=replica_id,
            documents=documents,
            expires_at=expires_at,
            device_key=device_key,
            now=now,
        )

    async def start(self) -> None:
        """Open the data directory and start listening."""
        budget = None if self.doc_cache_mb is None else int(self.doc_cache_mb * 1e6)
        replica = self.replica = Engine.open(
            self.data, replica_id=self.replica_id, doc_cache_bytes=budget, map_size=self.map_size
        )

        self.compact_due()  # what grew while it was down, or before compaction existed
        try:
            await self._join_deployment(replica)
        except BaseException:
            await self._leave_deployment()
            replica.close()
            self.replica = None
            raise
        self._changed = set(replica.documents()) if self.shared is not None else set()  # trimmed at the first round
        replica.on_change(self._changed.add)
        ops = self.ops = RelayOps(replica, self.authority, folder=str(self.data), limits=self.limits, abuse=self.abuse)
        listener = self._listener = Listener(
            replica,
            ops.make_session,
            ops.on_event,
            process_request=ops.http,
            on_commit=ops.committed,
            ready=None if self.follower is None else self.follower.fresh,
        )
        ops.connections = lambda: listener.connections
        if self.shared is not None:
            ops.shared_check = self.shared.ping
        self.yjs = YjsEndpoint(replica, self.authority)
        listener.route(YJS_PREFIX, self.yjs.serve)
        try:
            await listener.start(self.host, self.port, tls=self.tls)
        except BaseException:
            await self.yjs.stop()
            await self._leave_deployment()
            replica.close()
            self.replica = self._listener = self.ops = self.yjs = None
            raise
        ops.start()
        log.info("relay %s listening on %s", self.replica_id, self.url)
        if self.compact_every is not None:
            self._compactor = asyncio.get_running_loop().create_task(self._compact_now_and_then())
        if self.follower is not None:
            self._following = asyncio.get_running_loop().create_task(self.follower.run())

    async def _join_deployment(self, replica: Engine) -> None:
        """With ``redis``: check Redis and this relay's identity there, add
        what only this directory holds, read what the others stored, and
        from now on put every delta into Redis before committing it here."""
        if self.redis is None:
            return
        try:
            from replica.redis_log import Follower, SharedLog, SharedRevocations
        except ImportError as exc:
            raise errors.ReplicaError(
                f"--redis needs the redis package ({exc}): pip install 'replica[redis]'", code="redis_not_installed"
            ) from None
        shared = self.shared = SharedLog(self.redis)
        shared.connect(self.replica_id, self.public_key.raw)
        seeded = shared.seed(replica)
        if seeded:
            log.info("added %d deltas and snapshots only this relay held to the shared log", seeded)
        self.follower = Follower(shared, replica)
        read = await self.follower.catch_up()
        log.info("read %d entries of the shared log at %s", read, self.redis)
        revocations = SharedRevocations(registry.Revocations(self.data), shared)
        await revocations.refresh()
        self.authority.revoked = revocations
        self._sharing = asyncio.get_running_loop().create_task(self._share_revocations(revocations))
        replica.publish_to(self.follower.publish)

    async def _share_revocations(self, revocations: SharedRevocations) -> None:
        """Every :data:`REVOCATIONS_INTERVAL`: this relay's revocations out, the others' in."""
        while True:
            await asyncio.sleep(REVOCATIONS_INTERVAL)
            try:
                await revocations.refresh()
            except errors.ReplicaError as exc:  # Redis failed: the last ones read stay in force
                log.warning("could not share revocations: %s", exc)

    async def _leave_deployment(self) -> None:
        tasks = [task for task in (self._sharing, self._following) if task is not None]
        if self._sharing is not None:
            self._sharing.cancel()
        if self.follower is not None:
            await self.follower.stop()  # closes the connections: no read of either task stays blocked
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sharing = self._following = None
        if self.replica is not None:
            self.replica.publish_to(None)
        if self.shared is not None:
            await self.shared.aclose()
        self.shared = self.follower = None

    def compact_due(self, documents: Iterable[str] | None = None) -> int:
        """Compact the documents (all by default) with more than
        :attr:`compact_every` deltas after their snapshot, keeping the
        :attr:`keep` newest; how many deltas were replaced."""
        if self.replica is None or self.compact_every is None:
            return 0
        return self.replica.compact_due(self.compact_every, documents, bound=None, keep=self.keep)

    async def _compact_now_and_then(self) -> None:
        """Every :data:`COMPACT_INTERVAL`, the documents that changed and are
        due, in short steps with the connections served between them
        (``replica.compacting``)."""
        while True:
            await asyncio.sleep(COMPACT_INTERVAL)
            changed = set(self._changed)  # in place: on_change holds this set's add
            self._changed.clear()
            replica = self.replica
            if replica is None or self.compact_every is None:
                continue
            replaced = 0
            try:
                replaced = await compact_due_in_steps(replica, self.compact_every, changed, bound=None, keep=self.keep)
            except errors.ReplicaError as exc:  # a storage fault: the deltas stay; try again later
                log.warning("compaction failed: %s", exc)
                self._changed.update(changed)
            if replaced:
                log.info("compacted %d deltas into snapshots", replaced)
            await self.trim_shared(changed)

    async def trim_shared(self, documents: Iterable[str] | None = None) -> int:
        """With ``redis``: hand this relay's snapshots of ``documents`` (all
        by default) to the shared log, which trims the entries they cover;
        how many entries were trimmed. A document whose stream holds more
        than :attr:`shared_tail` entries is handed its whole state (so that
        Redis keeps at most about that many entries of it); another, its
        compacted snapshot, if it has one."""
        if self.shared is None or self.replica is None:
            return 0
        total = 0
        for document in sorted(self.replica.documents() if documents is None else documents):
            try:
                if await self.shared.length(document) > self.shared_tail:
                    snapshot = self.replica.state_snapshot(document)
                else:
                    found = self.replica.snapshot_for(document, {})
                    if found is None:
                        continue
                    snapshot = found
                trimmed = await self.shared.trim(snapshot)
            except errors.ReplicaError as exc:  # Redis failed: try at the next round
                log.warning("could not trim the shared log of %r: %s", document, exc)
                self._changed.add(document)
                continue
            if trimmed:
                log.info("trimmed %d entries of %r from the shared log", trimmed, document)
            total += trimmed
        return total

    async def stop(self) -> None:
        """Close every connection and the data directory. Everything
        acknowledged is already on disk."""
        if self._compactor is not None:
            self._compactor.cancel()
            self._compactor = None
        if self.yjs is not None:  # before the listener, which waits for every connection to end
            await self.yjs.stop()
            self.yjs = None
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.ops is not None:
            self.ops.stop()
        await self._leave_deployment()  # after the last session: everything it stored is in Redis
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
