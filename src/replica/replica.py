"""The app-facing replica: an engine that syncs.

:class:`Replica` is what an application opens. It is the
:class:`~replica.engine.Engine` (documents, durable deltas, status) plus the
asyncio parts wired on top: syncing with a relay or a peer (``replica.net``),
serving peers (``replica.peer``), and the status as an async iterator. Nothing
below this module imports it: the layers under it take an ``Engine``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

from replica import errors, net, runs
from replica.compacting import COMPACT_INTERVAL, compact_due_in_steps
from replica.engine import Engine
from replica.events import IngestResult
from replica.names import RELAY
from replica.peer import PeerServer
from replica.status import SyncState, SyncStatus
from replica.trust import GIVEN_CREDENTIAL, give_credential

__all__ = ["IngestResult", "Replica"]

log = logging.getLogger("replica.replica")


class Replica(Engine):
    """Named CRDT documents of one device over an append-only delta log,
    synced with a relay and with peers.

    Open with :meth:`open` (a data directory, LMDB) or :meth:`in_memory`.
    """

    #: After a completed relay sync, documents with more than this many deltas
    #: after their snapshot are compacted (what the relay acknowledged); None: never.
    compact_every: int | None = 10_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Keyed by the URLs of each sync call (one, or several for failover).
        self._sync_tasks: dict[tuple[str, ...], asyncio.Task[SyncStatus]] = {}
        self._live_relays: set[tuple[str, ...]] = set()  # the running live syncs with a relay

    @classmethod
    def open(  # type: ignore[override]
        cls,
        path: str | os.PathLike[str],
        *,
        replica_id: str | None = None,
        sync_on_open: tuple[str, str | None] | None = None,
        readonly: bool = False,
        **options: int,
    ) -> Replica:
        """Open (or create) the replica whose data directory is ``path``.

        ``replica_id`` is used when the directory is created (a random one
        otherwise); reopening with another id is :class:`~replica.errors.ReplicaIdMismatch`.
        A directory already open elsewhere is :class:`~replica.errors.ReplicaLocked`.
        ``sync_on_open=(relay_url, credential)`` starts a sync at once (the
        daily login trigger); it needs a running asyncio loop, and its
        progress and outcome show in :meth:`status` like any sync's.
        ``readonly``: read it without locking it (another process may hold
        it; see :meth:`Engine.open`). ``options``: ``map_size`` (bytes of
        address space for LMDB), ``max_delta_bytes`` (largest foreign delta
        accepted).
        """
        if sync_on_open is not None:
            asyncio.get_running_loop()  # RuntimeError before anything is opened
        replica = super().open(path, replica_id=replica_id, readonly=readonly, **options)
        if sync_on_open is not None:
            url, credential = sync_on_open
            replica._start_sync(url, credential=credential, live=False, timeout=30.0)
        return replica

    def close(self) -> None:
        """Stop running syncs and close the data directory. Committed deltas
        are already on disk."""
        if not self.closed:
            for task in self._sync_tasks.values():
                task.cancel()
        super().close()

    # -- syncing with a relay or a peer --------------------------------------

    async def sync(
        self,
        url: str | Sequence[str],
        *,
        credential: str | None = None,
        live: bool = False,
        timeout: float = 30.0,
        peer: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> SyncStatus:
        """Sync with the relay at ``url`` and return the final status.

        Once (default): one run, ending ``SYNCED`` (everything unsynced at the
        start is durably on the relay, and everything the relay held is here)
        or ``FAILED`` (with an error saying whether retrying can help). Live:
        stay connected, push each new delta at once, receive others', and
        reconnect after drops, until cancelled or a non-retryable error.
        A call while a sync with the same URL runs joins it: a one-shot call
        joining a live sync with a relay returns at its next caught-up point
        (``SYNCED`` with nothing unsynced) or failure, and the live sync goes
        on; cancelling the task awaiting a live sync stops it. ``credential``:
        the token issued by the relay (the last one used is remembered).

        The same call syncs with another device serving peers
        (:meth:`serve_peers`); pass ``peer=True`` so that the relay-facing
        :meth:`status` is left alone (the peer's shows in :meth:`peers`). The
        returned status carries this run's own state and error either way.
        ``tls``: how a ``wss://`` server is verified (default: the system's
        trust store; ``replica.tls.client_context(ca)`` for a CA of your own).

        ``url`` may be a list of the relays of one deployment (``replica relay
        --redis``): a run that fails in a way retrying can help moves on to
        the next (see ``net.sync_once``, ``net.sync_live``); ``status().relay``
        says which one the run is talking to.
        """
        key = net.relay_urls(url)
        task = self._sync_tasks.get(key)
        if task is None or task.done():
            task = self._start_sync(key, credential=credential, live=live, timeout=timeout, peer=peer, tls=tls)
        elif not live and key in self._live_relays:
            return await self._caught_up(task)
        try:
            return await asyncio.shield(task)  # a one-shot run finishes for every caller that joined it
        except asyncio.CancelledError:
            if live:
                task.cancel()  # cancelling the caller stops a live sync
            raise

    async def stop_sync(self, url: str | Sequence[str] | None = None) -> None:
        """Stop the running sync with ``url`` (one of its URLs, or all of them; every running sync if None)
        and return once it has ended: its link closed, and :meth:`status`
        saying where it stopped (a run that had not completed is ``FAILED``
        with ``stopped``, which retrying can fix; a live sync that had caught
        up stays ``SYNCED``)."""
        wanted = None if url is None else net.relay_urls(url)
        tasks = [
            task
            for key, task in self._sync_tasks.items()
            if wanted is None or key == wanted or (len(wanted) == 1 and wanted[0] in key)
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def sync_blocking(self, url: str | Sequence[str], **options: Any) -> SyncStatus:
        """:meth:`sync` for code without an event loop."""
        return asyncio.run(self.sync(url, **options))

    def _start_sync(
        self,
        url: str | tuple[str, ...],
        *,
        credential: str | None,
        live: bool,
        timeout: float,
        peer: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> asyncio.Task[SyncStatus]:
        self._check_open()
        if not peer:
            self.record(runs.start(runs.Facing.RELAY)[1])  # "Sync in Progress" from this call on
        if credential is not None:
            give_credential(self, credential)
        else:
            credential = self.setting(GIVEN_CREDENTIAL)
        runner = net.sync_live if live else net.sync_once
        key = net.relay_urls(url)

        async def run() -> SyncStatus:
            compactor = asyncio.ensure_future(self._compact_while_live()) if live and not peer else None
            try:
                final = await runner(self, url, credential=credential, timeout=timeout, peer=peer, tls=tls)
            finally:
                self._live_relays.discard(key)
                if compactor is not None:
                    compactor.cancel()
            if final.state is SyncState.SYNCED and final.peer is None and not self.closed:
                await self._compact_after_sync()
            return final

        task = asyncio.get_running_loop().create_task(run())
        self._sync_tasks[key] = task
        if live and not peer:
            self._live_relays.add(key)
        return task

    async def _caught_up(self, live: asyncio.Task[SyncStatus]) -> SyncStatus:
        """The status at the running live sync's next caught-up point (or its
        next failure, or its end); the live sync goes on."""
        queue: asyncio.Queue[SyncStatus] = asyncio.Queue()
        unsubscribe = self.subscribe(queue.put_nowait)
        try:
            status = self.status()
            while not (
                status.state is SyncState.FAILED
                or (status.state is SyncState.SYNCED and status.connected and status.unsynced == 0)
            ):
                changed = asyncio.ensure_future(queue.get())
                await asyncio.wait({changed, live}, return_when=asyncio.FIRST_COMPLETED)
                if not changed.done():
                    changed.cancel()
                    return live.result() if not live.cancelled() else self.status()
                status = changed.result()
            return status
        finally:
            unsubscribe()

    async def _compact_after_sync(self) -> None:
        """What the relay now holds durably no longer needs to be kept one by
        one: compact the documents with more than :attr:`compact_every`
        deltas after their snapshot, in short steps (a failure only leaves
        them as they are)."""
        if self.compact_every is None:
            return
        try:
            replaced = await compact_due_in_steps(self, self.compact_every, bound=RELAY)
        except errors.ReplicaError as exc:
            log.warning("compaction after the sync failed, the deltas stay as they are: %s", exc)
            return
        if replaced:
            log.info("compacted %d changes already on the relay", replaced)

    async def _compact_while_live(self) -> None:
        """A live sync never ends: every :data:`COMPACT_INTERVAL` seconds
        while it is caught up, what the relay acknowledged is compacted as
        after a one-shot sync."""
        while True:
            await asyncio.sleep(COMPACT_INTERVAL)
            status = self.status()
            if not self.closed and status.state is SyncState.SYNCED and status.connected:
                await self._compact_after_sync()

    async def serve_peers(
        self, host: str = "0.0.0.0", port: int = 8766, *, tls: ssl.SSLContext | None = None, **options: Any
    ) -> PeerServer:
        """Accept other devices syncing with this one (see ``replica.peer``);
        returns the running server (``await server.stop()``, or ``async with``).
        ``tls``: serve ``wss://`` with this context (``replica.tls.server_context``)."""
        server = PeerServer(self, **options)
        await server.start(host, port, tls=tls)
        return server

    async def statuses(self) -> AsyncIterator[SyncStatus]:
        """Every status change, as an async iterator (starting with the current one)."""
        queue: asyncio.Queue[SyncStatus] = asyncio.Queue()
        unsubscribe = self.subscribe(queue.put_nowait)
        try:
            yield self.status()
            while True:
                yield await queue.get()
        finally:
            unsubscribe()
