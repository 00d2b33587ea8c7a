"""y-protocols, the sync and awareness protocol of the Yjs world, sans I/O.

What stock ``y-websocket`` ``WebsocketProvider`` clients speak (and
pycrdt-websocket, Hocuspocus, ``@y/websocket-server`` serve). One websocket
binary message is one y-protocols message; every integer is an unsigned
LEB128 varint and every byte string is a varint length then the bytes::

    message   = type:varuint payload
    type 0    sync:       sub:varuint bytes     (0 step 1: a state vector,
                                                 1 step 2: an update,
                                                 2 update: an update)
    type 1    awareness:  bytes = count:varuint (client:varuint clock:varuint state:varstring)*
    type 2    auth:       0 (permission denied) reason:varstring   (server to client only)
    type 3    query awareness (no payload)

Theory of operation (one connection, one document):

- the client opens with step 1 (its state vector); the server answers step 2
  (what the client lacks) and sends its own step 1, which the client answers
  with step 2 (what the server lacks); from then on each side sends updates;
- awareness (who is here, cursors) is ephemeral: relayed, never stored;
- there is no acknowledgement: the sender of an update is never told whether
  it was kept (docs/yjs.md says what a client can and cannot know).

This module only parses and builds messages. :func:`parse` raises
:class:`ProtocolError` for anything malformed (the peer sent garbage) and
never hands unchecked bytes on: a state vector is fully decoded here, an
update is bounded in size and goes through the same checks as any delta
(``Engine.ingest``). The two state helpers at the end go to pycrdt
through ``replica.doc`` (the one module importing it), which guards the call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from replica.doc import update_missing_from, update_state_vector

SYNC, AWARENESS, AUTH, QUERY_AWARENESS = 0, 1, 2, 3
STEP1, STEP2, UPDATE = 0, 1, 2
PERMISSION_DENIED = 0

#: Largest awareness message accepted (awareness states are small JSON objects).
MAX_AWARENESS_BYTES = 1024 * 1024
#: Largest update accepted, unless the caller says otherwise (``Engine.max_delta_bytes``).
MAX_UPDATE_BYTES = 8 * 1024 * 1024
#: The empty update (no structs, no deletions): carries nothing, never stored.
EMPTY_UPDATE = b"\x00\x00"


class ProtocolError(ValueError):
    """The peer sent something that is not y-protocols (the connection ends)."""

    def __init__(self, message: str, *, code: str = "yjs_malformed") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SyncStep1:
    """The sender's state vector: it asks for what it lacks."""

    state_vector: bytes


@dataclass(frozen=True)
class SyncStep2:
    """What the receiver lacked, as one Yjs v1 update (the answer to step 1)."""

    update: bytes


@dataclass(frozen=True)
class Update:
    """One Yjs v1 update made by the sender (or relayed by it)."""

    update: bytes


@dataclass(frozen=True)
class AwarenessState:
    """One client's awareness entry; ``state`` is JSON text, ``"null"`` when it left."""

    client: int
    clock: int
    state: str

    @property
    def removed(self) -> bool:
        return self.state == "null"


@dataclass(frozen=True)
class Awareness:
    """Awareness entries of one or more clients."""

    states: tuple[AwarenessState, ...]


@dataclass(frozen=True)
class QueryAwareness:
    """The sender asks for every awareness state the receiver knows."""


@dataclass(frozen=True)
class PermissionDenied:
    """A server refused the client (sent before it closes the connection)."""

    reason: str


Message = SyncStep1 | SyncStep2 | Update | Awareness | QueryAwareness | PermissionDenied


# -- varints -------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def varuint(self) -> int:
        value = shift = 0
        data, at = self.data, self.at
        while True:
            if at >= len(data):
                raise ProtocolError("the message ends inside a number")
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise ProtocolError("a number longer than 64 bits")
        self.at = at
        return value

    def bytes(self, most: int) -> bytes:
        length = self.varuint()
        if length > most:
            raise ProtocolError(f"a {length}-byte field, at most {most} accepted", code="yjs_too_large")
        if self.at + length > len(self.data):
            raise ProtocolError("the message ends inside a field")
        out = self.data[self.at : self.at + length]
        self.at += length
        return out

    def string(self, most: int) -> str:
        raw = self.bytes(most)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("a string that is not UTF-8") from exc

    def end(self) -> None:
        if self.at != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.at} unexpected bytes after the message")


def _varuint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _varbytes(data: bytes) -> bytes:
    return _varuint(len(data)) + data


# -- parsing -------------------------------------------------------------------


def parse(message: object, *, max_update_bytes: int = MAX_UPDATE_BYTES) -> Message:
    """One message from the peer, checked; :class:`ProtocolError` if malformed."""
    if not isinstance(message, bytes):
        raise ProtocolError("a text message; y-protocols messages are binary")
    reader = _Reader(message)
    kind = reader.varuint()
    found: Message
    if kind == SYNC:
        sub = reader.varuint()
        if sub == STEP1:
            vector = reader.bytes(max_update_bytes)
            read_state_vector(vector)
            found = SyncStep1(vector)
        elif sub in (STEP2, UPDATE):
            update = reader.bytes(max_update_bytes)
            found = SyncStep2(update) if sub == STEP2 else Update(update)
        else:
            raise ProtocolError(f"unknown sync message type {sub}")
    elif kind == AWARENESS:
        found = Awareness(read_awareness(reader.bytes(MAX_AWARENESS_BYTES)))
    elif kind == QUERY_AWARENESS:
        found = QueryAwareness()
    elif kind == AUTH:
        if reader.varuint() != PERMISSION_DENIED:
            raise ProtocolError("unknown auth message type")
        found = PermissionDenied(reader.string(MAX_AWARENESS_BYTES))
    else:
        raise ProtocolError(f"unknown message type {kind}")
    reader.end()
    return found


def read_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs state vector (``{client id: clock}``), fully decoded and checked."""
    reader = _Reader(data)
    count = reader.varuint()
    if count > len(data):
        raise ProtocolError("a state vector claiming more entries than it has bytes")
    vector = {}
    for _ in range(count):
        client = reader.varuint()
        vector[client] = reader.varuint()
    reader.end()
    return vector


def read_awareness(data: bytes) -> tuple[AwarenessState, ...]:
    """The entries of an awareness update; each state must be JSON."""
    reader = _Reader(data)
    count = reader.varuint()
    if count > len(data):
        raise ProtocolError("an awareness update claiming more entries than it has bytes")
    states = []
    for _ in range(count):
        client, clock = reader.varuint(), reader.varuint()
        state = reader.string(MAX_AWARENESS_BYTES)
        try:
            json.loads(state)
        except ValueError as exc:
            raise ProtocolError("an awareness state that is not JSON") from exc
        states.append(AwarenessState(client, clock, state))
    reader.end()
    return tuple(states)


# -- building ------------------------------------------------------------------


def sync_step1(state_vector: bytes) -> bytes:
    """Step 1: our state vector."""
    return bytes((SYNC, STEP1)) + _varbytes(state_vector)


def sync_step2(update: bytes) -> bytes:
    """Step 2: what the peer lacks."""
    return bytes((SYNC, STEP2)) + _varbytes(update)


def update(data: bytes) -> bytes:
    """One update."""
    return bytes((SYNC, UPDATE)) + _varbytes(data)


def awareness(states: Iterable[AwarenessState]) -> bytes:
    """An awareness update holding ``states``."""
    entries = list(states)
    body = bytearray(_varuint(len(entries)))
    for entry in entries:
        body += _varuint(entry.client) + _varuint(entry.clock) + _varbytes(entry.state.encode())
    return bytes((AWARENESS,)) + _varbytes(bytes(body))


def query_awareness() -> bytes:
    """Ask for every awareness state."""
    return bytes((QUERY_AWARENESS,))


def permission_denied(reason: str) -> bytes:
    """Tell a client why it is refused (``y-websocket`` logs it)."""
    return bytes((AUTH, PERMISSION_DENIED)) + _varbytes(reason.encode())


def state_vector(payload: bytes) -> bytes:
    """The state vector of a document state (our step 1)."""
    try:
        return update_state_vector(payload)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc


def missing_from(state: bytes, vector: bytes) -> bytes:
    """What a peer holding state vector ``vector`` lacks of ``state`` (our step 2).
    ``vector`` must come from :func:`parse` (checked)."""
    try:
        return update_missing_from(state, vector)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
