"""The relay's y-protocols endpoint: stock Yjs clients on ``/yjs/<document>``.

A ``y-websocket`` ``WebsocketProvider`` (or any client of the y-protocols
sync and awareness protocol, ``replica.yprotocol``) connects unchanged::

    new WebsocketProvider("ws://HOST:PORT/yjs", "campaign-7/households", ydoc, {params: {token}})

Admission (``RelayAuthority.authorize_bearer``): the credential travels as
``?token=``; the same scope rules as a device's apply, once, when the client
connects. A refusal sends y-protocols' permission-denied message, then closes
with a 44xx code (``y-websocket`` 3 stops reconnecting on those) and the reason.

What a Yjs client sends becomes deltas of the relay's log, one per update,
under the origin ``<credential's replica id>.yjs`` (``trust.yjs_origin``: a
suffix no device may use), with seqs the relay hands out in order. They go
through ``Engine.ingest`` like any delta (size, Yjs bytes; scope was checked
at admission), committed in one transaction per event-loop turn for every Yjs
connection with news (group commit), and only then relayed: to devices by the
listener's fan-out, to other Yjs clients by their writers. A refused update
closes that connection only (4400 malformed, 4413 too large), and nothing of
it is stored; a failed commit closes the connections of that commit with
4503 (try again), and their clients resend their state when they reconnect.

What reaches a Yjs client is what the log holds, committed: its step 2 is
the document's state, then every delta committed after it, read from the log
(``missing_deltas``, or the snapshot if compaction overtook it). Each writer
pulls at its own pace, so a slow client holds no queue on the relay.

Awareness is ephemeral: relayed among the Yjs clients of a document (to the
sender too, as ``y-websocket``'s server does, which keeps its idle timer
fed), never stored, never sent to devices; when a connection ends, the states
it announced are removed for the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from replica import errors, yprotocol
from replica.delta import Delta, make
from replica.engine import Engine
from replica.names import check_document_name
from replica.trust import RelayAuthority, yjs_origin

log = logging.getLogger("replica.yjs_endpoint")

#: The path under which documents are served: ``/yjs/<document>``.
PREFIX = "/yjs/"
#: Close codes. 4400-4499 mean "do not reconnect" to ``y-websocket`` 3.
CLOSE_MALFORMED = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_LARGE = 4413
CLOSE_UNAVAILABLE = 4503
CLOSE_TOO_SLOW = 4509
CLOSE_INTERNAL = 4500
CLOSE_GOING_AWAY = 1001
#: Deltas a writer sends before it yields to other connections.
SEND_BATCH = 1000
#: Messages (step 2, awareness) queued for one client beyond which it is too far behind: closed
#: with 4509 (y-websocket reconnects, and resyncs from the log).
MAX_OUTBOX = 10_000
_SCOPE_CODES = {"document_out_of_scope"}


@dataclass
class _Room:
    """The Yjs connections of one document and their awareness states."""

    connections: set[_Connection] = field(default_factory=set)
    awareness: dict[int, yprotocol.AwarenessState] = field(default_factory=dict)


class _Connection:
    """One Yjs client: what it was sent (``vv``), what it sent (``own``)."""

    def __init__(self, ws: ServerConnection, document: str, origin: str) -> None:
        self.ws = ws
        self.document = document
        self.origin = origin
        self.vv: dict[str, int] | None = None  # None until its step 1 was answered
        self.own: set[int] = set()  # seqs of ``origin`` it sent itself: never echoed
        self.outbox: list[bytes] = []  # step 2 and awareness, before deltas
        self.clients: dict[int, int] = {}  # awareness client id -> clock it announced
        self.refusal: tuple[int, str] | None = None
        self.wake = asyncio.Event()

    def refuse(self, code: int, reason: str) -> None:
        if self.refusal is None:
            self.refusal = (code, reason)
            self.wake.set()


class YjsEndpoint:
    """Serves ``/yjs/<document>`` for one relay's engine. :meth:`serve` is
    the websocket handler (the listener dispatches by path); :meth:`stop`
    closes every Yjs connection (call it before stopping the listener)."""

    def __init__(self, replica: Engine, authority: RelayAuthority, *, clock: Callable[[], float] = time.time) -> None:
        self.replica = replica
        self.authority = authority
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        self._pending: list[tuple[_Connection, bytes]] = []
        self._scheduled = False
        self._stopped = False
        self._unsubscribe: Callable[[], None] | None = replica.on_change(self._changed)

    @property
    def connections(self) -> int:
        """Yjs connections open now."""
        return sum(len(room.connections) for room in self._rooms.values())

    async def stop(self) -> None:
        """Close every Yjs connection (1001) and stop listening to the log;
        connections arriving afterwards are closed at once."""
        self._stopped = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for room in list(self._rooms.values()):
            for connection in list(room.connections):
                await connection.ws.close(CLOSE_GOING_AWAY, "the server is shutting down")

    # -- one connection --------------------------------------------------------

    async def serve(self, ws: ServerConnection) -> None:
        """Run one Yjs client's connection until it ends."""
        if self._stopped:
            await ws.close(CLOSE_GOING_AWAY, "the server is shutting down")
            return
        try:
            connection = self._admit(ws)
        except errors.ReplicaError as exc:
            log.info("refused a Yjs client from %s: %s", ws.remote_address, exc)
            code = CLOSE_FORBIDDEN if exc.code in _SCOPE_CODES else CLOSE_UNAUTHORIZED
            if exc.code == "document_invalid":
                code = CLOSE_NOT_FOUND
            await _refuse(ws, code, exc)
            return
        room = self._rooms.setdefault(connection.document, _Room())
        room.connections.add(connection)
        try:
            state = self.replica.doc(connection.document).state()
            connection.outbox.append(yprotocol.sync_step1(yprotocol.state_vector(state)))
            if room.awareness:
                connection.outbox.append(yprotocol.awareness(room.awareness.values()))
            connection.wake.set()
            writer = asyncio.create_task(self._write(connection))
            try:
                await self._read(connection, room)
            finally:
                connection.refuse(1000, "")  # ends the writer if the reader ended first
                await writer
        finally:
            room.connections.discard(connection)
            self._left(connection, room)
            if not room.connections and not room.awareness:
                self._rooms.pop(connection.document, None)

    def _admit(self, ws: ServerConnection) -> _Connection:
        request = ws.request
        target = urlsplit(request.path if request is not None else "")
        document = unquote(target.path[len(PREFIX) :])
        try:
            check_document_name(document)
        except ValueError as exc:
            raise errors.ReplicaError(str(exc), code="document_invalid") from exc
        tokens = parse_qs(target.query).get("token")
        credential = self.authority.authorize_bearer(tokens[-1] if tokens else None, document, self._clock())
        return _Connection(ws, document, yjs_origin(credential.replica_id))

    async def _read(self, connection: _Connection, room: _Room) -> None:
        most = self.replica.max_delta_bytes
        try:
            async for message in connection.ws:
                if connection.refusal is not None:
                    return
                try:
                    parsed = yprotocol.parse(message, max_update_bytes=most)
                    self._receive(connection, room, parsed)
                except yprotocol.ProtocolError as exc:
                    code = CLOSE_TOO_LARGE if exc.code == "yjs_too_large" else CLOSE_MALFORMED
                    log.warning("closing a Yjs client of %s: %s", connection.document, exc.message)
                    connection.refuse(code, f"{exc.code}: {exc.message}")
                    return
        except ConnectionClosed:
            return

    def _receive(self, connection: _Connection, room: _Room, message: yprotocol.Message) -> None:
        if isinstance(message, yprotocol.SyncStep1):
            # The state and the version vector of one instant (nothing commits in between).
            state = self.replica.doc(connection.document).state()
            vv = dict(self.replica.version_vector(connection.document))
            self._queue(connection, yprotocol.sync_step2(yprotocol.missing_from(state, message.state_vector)))
            connection.vv = vv if connection.vv is None else _merged(connection.vv, vv)
        elif isinstance(message, (yprotocol.SyncStep2, yprotocol.Update)):
            if message.update != yprotocol.EMPTY_UPDATE:
                self._pending.append((connection, message.update))
                if not self._scheduled:
                    self._scheduled = True
                    asyncio.get_running_loop().call_soon(self.flush)
        elif isinstance(message, yprotocol.Awareness):
            self._awareness(connection, room, message.states)
        elif isinstance(message, yprotocol.QueryAwareness):
            self._queue(connection, yprotocol.awareness(room.awareness.values()))
        else:  # a permission-denied message: servers send those, clients do not
            raise yprotocol.ProtocolError("a client sent a server's message")

    @staticmethod
    def _queue(connection: _Connection, message: bytes) -> None:
        if len(connection.outbox) >= MAX_OUTBOX:
            connection.refuse(CLOSE_TOO_SLOW, "too_slow: this client fell too far behind; reconnect to resync")
            return
        connection.outbox.append(message)
        connection.wake.set()

    def _awareness(self, connection: _Connection, room: _Room, states: tuple[yprotocol.AwarenessState, ...]) -> None:
        changed = []
        for entry in states:
            known = room.awareness.get(entry.client)
            if known is not None and entry.clock < known.clock:
                continue  # outdated, as y-protocols' awareness ignores it
            changed.append(entry)
            if entry.removed:
                room.awareness.pop(entry.client, None)
                connection.clients.pop(entry.client, None)
            else:
                room.awareness[entry.client] = entry
                connection.clients[entry.client] = entry.clock
        if changed:
            message = yprotocol.awareness(changed)
            for other in room.connections:
                self._queue(other, message)

    def _left(self, connection: _Connection, room: _Room) -> None:
        gone = []
        for client in connection.clients:
            entry = room.awareness.pop(client, None)
            if entry is not None:
                gone.append(yprotocol.AwarenessState(client, entry.clock + 1, "null"))
        if gone:
            message = yprotocol.awareness(gone)
            for other in room.connections:
                self._queue(other, message)

    async def _write(self, connection: _Connection) -> None:
        ws = connection.ws
        try:
            while True:
                await connection.wake.wait()
                connection.wake.clear()
                while connection.outbox:
                    queued, connection.outbox = connection.outbox, []
                    for message in queued:
                        await ws.send(message)
                if connection.refusal is not None:
                    code, reason = connection.refusal
                    if code != 1000:
                        await ws.send(yprotocol.permission_denied(reason))
                    await ws.close(code, _close_reason(reason))
                    return
                ready = connection.vv is not None and not self.replica.closed
                if ready and await self._send_deltas(connection):
                    connection.wake.set()  # more to send: after the others had a turn
                    await asyncio.sleep(0)
        except ConnectionClosed:
            return

    async def _send_deltas(self, connection: _Connection) -> bool:
        """Send what was committed since ``connection.vv``; True if more is left."""
        vv = connection.vv
        assert vv is not None
        snapshot = self.replica.snapshot_for(connection.document, vv)
        if snapshot is not None:  # compaction overtook it: the state, then the tail
            await connection.ws.send(yprotocol.update(snapshot.data))
            vv = connection.vv = _merged(vv, snapshot.vv)
        missing = self.replica.missing_deltas(connection.document, vv, most=SEND_BATCH + 1)  # one more: "more left?"
        for item in missing[:SEND_BATCH]:
            _advance(vv, item)
            if item.origin == connection.origin and item.seq in connection.own:
                connection.own.discard(item.seq)
                continue
            await connection.ws.send(yprotocol.update(item.data))
        return len(missing) > SEND_BATCH

    # -- the log ---------------------------------------------------------------

    def _changed(self, document: str) -> None:
        room = self._rooms.get(document)
        if room is not None:
            for connection in room.connections:
                connection.wake.set()

    def flush(self) -> None:
        """Commit what the Yjs clients sent since the last flush, in one
        transaction; refuse (close) the connections whose updates failed."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        pending = [(c, u) for c, u in pending if c.refusal is None]
        if not pending or self.replica.closed:
            return
        by_connection: dict[_Connection, list[bytes]] = {}
        for connection, data in pending:
            by_connection.setdefault(connection, []).append(data)
        held = {(c.document, c.origin): self.replica.version_vector(c.document).get(c.origin, 0) for c in by_connection}
        stored: list[tuple[_Connection, list[Delta]]] = []
        try:
            with self.replica.batch():
                for connection, updates in by_connection.items():
                    key = (connection.document, connection.origin)
                    first = held[key] + 1
                    deltas = [
                        make(connection.document, connection.origin, seq, data)
                        for seq, data in enumerate(updates, first)
                    ]
                    result = self.replica.ingest(deltas)
                    held[key] += result.applied
                    stored.append((connection, deltas[: result.applied]))
                    if result.rejected is not None:
                        _refuse_update(connection, result.rejected)
        except errors.ReplicaError as exc:  # the commit failed: nothing of it is stored
            log.warning("could not store what %d Yjs client(s) sent: %s", len(by_connection), exc)
            for connection in by_connection:
                connection.refuse(CLOSE_UNAVAILABLE, f"{exc.code}: not stored, reconnect to send it again")
            return
        except Exception:  # a bug, not bad input: close these connections (their clients resend), keep serving
            log.exception("could not store what %d Yjs client(s) sent", len(by_connection))
            for connection in by_connection:
                connection.refuse(CLOSE_INTERNAL, "internal_error: the relay failed unexpectedly; reconnect")
            return
        for connection, deltas in stored:
            connection.own.update(item.seq for item in deltas)


def _refuse_update(connection: _Connection, rejected: errors.DeltaRejected) -> None:
    code = CLOSE_TOO_LARGE if rejected.code == errors.REJECT_TOO_LARGE else CLOSE_MALFORMED
    log.warning("refused an update of a Yjs client of %s: %s", connection.document, rejected)
    connection.refuse(code, f"{rejected.code}: {rejected.message}")


def _advance(vv: dict[str, int], item: Delta) -> None:
    if item.seq > vv.get(item.origin, 0):
        vv[item.origin] = item.seq


def _merged(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for origin, seq in b.items():
        out[origin] = max(out.get(origin, 0), seq)
    return out


def _close_reason(reason: str) -> str:
    """A close frame's reason holds at most 123 bytes of UTF-8."""
    encoded = reason.encode()
    if len(encoded) <= 123:
        return reason
    return encoded[:120].decode("utf-8", "ignore") + "..."


async def _refuse(ws: ServerConnection, code: int, exc: errors.ReplicaError) -> None:
    reason = f"{exc.code}: {exc.message}"
    try:
        await ws.send(yprotocol.permission_denied(reason))
        await ws.close(code, _close_reason(reason))
    except ConnectionClosed:
        return
