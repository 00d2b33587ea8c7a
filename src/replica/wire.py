"""Frames of the sync protocol: msgpack encoding and validation of untrusted input.

Every frame is one msgpack map with a type ``t``; the first frame of each side
(``hello``, ``welcome``) carries the protocol version ``v``. The full
description, precise enough for another implementation, is in
``docs/protocol.md``. :func:`decode` validates every field of every frame from
the network and raises :class:`ProtocolError` for anything malformed; it never
raises anything else, whatever the bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from replica.delta import CHECKSUM_SIZE, Delta, Snapshot
from replica.errors import ReplicaError
from replica.vv import VersionVector

VERSION = 4  #: 2: snapshots (``snap`` frames); 3: spans in ``deltas`` frames; 4: checksums cover identity

#: Default limits; both ends announce theirs and a frame over a limit is an error.
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_BATCH = 10_000
MAX_DOCUMENTS = 1_000
#: The longest revocation list a hello or welcome may carry (characters).
MAX_REVOCATIONS_CHARS = 1 << 20

ROLES = ("device", "relay", "peer")
MODES = ("once", "live")


class ProtocolError(ReplicaError):
    """The other side broke the protocol; the connection is closed."""

    code = "bad_frame"


# -- frames ------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """First frame of the connecting side."""

    replica_id: str
    role: str
    credential: str | None
    documents: dict[str, VersionVector]
    mode: str = "once"
    tips: dict[str, dict[str, bytes]] = field(default_factory=dict)
    challenge: bytes | None = None
    proof: bytes | None = None
    device_key: bytes | None = None
    revocations: str | None = None
    resume: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # document -> (checksum, bytes held)
    version: int = VERSION


@dataclass(frozen=True)
class Welcome:
    """Answer to ``hello``: the accepting side's id and version vectors, and
    the documents it refuses with ``[code, message]``."""

    replica_id: str
    role: str
    documents: dict[str, VersionVector]
    denied: dict[str, tuple[str, str]] = field(default_factory=dict)
    tips: dict[str, dict[str, bytes]] = field(default_factory=dict)
    challenge: bytes | None = None
    proof: bytes | None = None
    credential: str | None = None
    relay_key: bytes | None = None
    revocations: str | None = None
    resume: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # document -> (checksum, bytes held)
    version: int = VERSION


@dataclass(frozen=True)
class Proof:
    """Peer handshake, initiator: its signature over the acceptor's challenge."""

    proof: bytes


@dataclass(frozen=True)
class Deltas:
    """A batch of deltas of one document, each origin's in seq order."""

    document: str
    deltas: tuple[Delta, ...]


@dataclass(frozen=True)
class SnapshotPart:
    """Bytes ``offset`` to ``offset + len(data)`` of a document's state
    (``size`` bytes in all, with ``checksum``) standing for every delta of
    it up to ``vv``; parts come in order, and the receiver acks the whole."""

    document: str
    vv: VersionVector
    checksum: bytes
    size: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class Ack:
    """The sender's version vector of ``document`` after its commit."""

    document: str
    vv: VersionVector


@dataclass(frozen=True)
class Open:
    """Live mode: start syncing one more document."""

    document: str
    vv: VersionVector


@dataclass(frozen=True)
class Opened:
    """Answer to ``open``: the document's version vector, or a refusal."""

    document: str
    vv: VersionVector
    denied: tuple[str, str] | None = None


@dataclass(frozen=True)
class Done:
    """The sender has sent everything it held when the run started."""


@dataclass(frozen=True)
class Error:
    """Sent before closing: a stable code, a message, whether retrying can
    help, and the delta concerned if there is one."""

    code: str
    message: str
    retryable: bool
    document: str | None = None
    origin: str | None = None
    seq: int | None = None


Frame = Hello | Welcome | Proof | Deltas | SnapshotPart | Ack | Open | Opened | Done | Error


def snapshot_parts(snapshot: Snapshot, max_frame_bytes: int = MAX_FRAME_BYTES, start: int = 0) -> list[SnapshotPart]:
    """``snapshot`` as ``snap`` frames from byte ``start`` on (the receiver
    holds the bytes before it: a transfer resumed), each part at most half
    the frame limit."""
    step = max(1, max_frame_bytes // 2)
    size = len(snapshot.data)
    head = (snapshot.document, snapshot.vv, snapshot.checksum, size)
    offsets = range(start if 0 < start < size else 0, max(size, 1), step)
    return [SnapshotPart(*head, offset, snapshot.data[offset : offset + step]) for offset in offsets]


class SnapshotParts:
    """Gathers the parts of the snapshots arriving on one link, by document."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._started: dict[str, tuple[SnapshotPart, bytearray]] = {}

    def started(self, document: str) -> bool:
        """Whether a snapshot of ``document`` is being gathered."""
        return document in self._started

    def resume(self, first: SnapshotPart) -> None:
        """Start the snapshot of ``first.document`` from what an earlier
        connection brought of it, held here: ``first`` stands for bytes 0 to
        ``len(first.data)`` (its ``offset`` is 0)."""
        self._started[first.document] = (first, bytearray(first.data))

    def add(self, part: SnapshotPart) -> Snapshot | None:
        """Take one part; the whole snapshot once its last part arrived.
        Raises :class:`ProtocolError` for a part that does not continue the
        one before, or a snapshot over the limit."""
        if part.size > self.max_bytes:
            raise ProtocolError(
                f"a snapshot of {part.size} bytes; at most {self.max_bytes} accepted", code="snapshot_too_large"
            )
        if part.offset == 0:
            self._started[part.document] = (part, bytearray())
        started = self._started.get(part.document)
        if started is None or (started[0].vv, started[0].checksum, started[0].size) != (
            part.vv,
            part.checksum,
            part.size,
        ):
            raise ProtocolError("a snapshot part that does not continue the one before", code="unexpected_frame")
        buffer = started[1]
        if part.offset != len(buffer):
            message = f"snapshot bytes from {part.offset} arrived after {len(buffer)}"
            raise ProtocolError(message, code="unexpected_frame")
        buffer += part.data
        if len(buffer) < part.size:
            return None
        del self._started[part.document]
        return Snapshot(part.document, dict(part.vv), part.checksum, bytes(buffer))


# -- encoding ----------------------------------------------------------------


def _packb(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def encode(frame: Frame) -> bytes:
    """The bytes of one frame."""
    if isinstance(frame, Deltas):
        origins: dict[str, int] = {}
        rows = [
            [origins.setdefault(d.origin, len(origins)), d.seq, d.checksum, d.data, d.first]
            if d.first
            else [origins.setdefault(d.origin, len(origins)), d.seq, d.checksum, d.data]
            for d in frame.deltas
        ]
        return _packb({"t": "deltas", "doc": frame.document, "o": list(origins), "d": rows})
    if isinstance(frame, Ack):
        return _packb({"t": "ack", "doc": frame.document, "vv": frame.vv})
    if isinstance(frame, SnapshotPart):
        return _packb(
            {
                "t": "snap",
                "doc": frame.document,
                "vv": frame.vv,
                "sum": frame.checksum,
                "n": frame.size,
                "at": frame.offset,
                "d": frame.data,
            }
        )
    if isinstance(frame, Hello):
        return _packb(
            _compact(
                {
                    "t": "hello",
                    "v": frame.version,
                    "id": frame.replica_id,
                    "role": frame.role,
                    "cred": frame.credential,
                    "docs": frame.documents,
                    "tips": frame.tips or None,
                    "mode": frame.mode,
                    "chal": frame.challenge,
                    "proof": frame.proof,
                    "key": frame.device_key,
                    "rev": frame.revocations,
                    "res": _resume_body(frame.resume),
                }
            )
        )
    if isinstance(frame, Proof):
        return _packb({"t": "proof", "proof": frame.proof})
    if isinstance(frame, Welcome):
        return _packb(
            _compact(
                {
                    "t": "welcome",
                    "v": frame.version,
                    "id": frame.replica_id,
                    "role": frame.role,
                    "docs": frame.documents,
                    "denied": {d: list(r) for d, r in frame.denied.items()},
                    "tips": frame.tips or None,
                    "chal": frame.challenge,
                    "proof": frame.proof,
                    "cred": frame.credential,
                    "rkey": frame.relay_key,
                    "rev": frame.revocations,
                    "res": _resume_body(frame.resume),
                }
            )
        )
    if isinstance(frame, Open):
        return _packb({"t": "open", "doc": frame.document, "vv": frame.vv})
    if isinstance(frame, Opened):
        body: dict[str, Any] = {"t": "opened", "doc": frame.document, "vv": frame.vv}
        if frame.denied is not None:
            body["denied"] = list(frame.denied)
        return _packb(body)
    if isinstance(frame, Done):
        return _packb({"t": "done"})
    return _packb(
        _compact(
            {
                "t": "error",
                "code": frame.code,
                "msg": frame.message,
                "retry": frame.retryable,
                "doc": frame.document,
                "origin": frame.origin,
                "seq": frame.seq,
            }
        )
    )


def _resume_body(resume: dict[str, tuple[bytes, int]]) -> dict[str, list[Any]] | None:
    return {name: [check, held] for name, (check, held) in resume.items()} or None


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


# -- decoding and validation of untrusted bytes ------------------------------


def decode(data: bytes | str, *, max_frame_bytes: int = MAX_FRAME_BYTES, max_batch: int = MAX_BATCH) -> Frame:
    """Parse and validate one frame from the network."""
    if not isinstance(data, bytes):
        raise ProtocolError("frames are binary messages", code="bad_frame")
    if len(data) > max_frame_bytes:
        raise ProtocolError(
            f"frame of {len(data)} bytes exceeds the limit of {max_frame_bytes}", code="frame_too_large"
        )
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_array_len=max_batch + 16,
            max_map_len=max(MAX_DOCUMENTS, 64) * 4,
        )
    except Exception as exc:  # msgpack raises many types for bad input
        raise ProtocolError(f"not a msgpack frame ({type(exc).__name__})") from exc
    if not isinstance(body, dict):
        raise ProtocolError("a frame must be a msgpack map")
    kind = body.get("t")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise ProtocolError(f"unknown frame type {kind!r:.40}")
    try:
        return parser(body, max_batch)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed {kind} frame: {exc}") from exc


def _str(body: Mapping[str, Any], key: str, *, optional: bool = False, limit: int = 255) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if type(value) is not str or not value or len(value) > limit:
        raise ValueError(f"field {key!r} must be a non-empty string of at most {limit} characters")
    return value


def _bytes(body: Mapping[str, Any], key: str, limit: int = 1024) -> bytes | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not bytes or len(value) > limit:
        raise ValueError(f"field {key!r} must be at most {limit} bytes")
    return value


def _seq(value: object) -> int:
    if type(value) is not int or not 0 <= value < 2**63:
        raise ValueError("seqs must be integers in [0, 2**63)")
    return value


def _vv(value: object) -> VersionVector:
    if type(value) is not dict or len(value) > 100_000:
        raise ValueError("version vectors must be maps of origin to seq")
    out = {}
    for origin, seq in value.items():
        if type(origin) is not str or not origin or len(origin) > 255:
            raise ValueError("version vector origins must be strings")
        out[origin] = _seq(seq)
    return out


def _documents(value: object) -> dict[str, VersionVector]:
    if type(value) is not dict or len(value) > MAX_DOCUMENTS * 4:
        raise ValueError("docs must be a map of document name to version vector")
    out = {}
    for name, vv in value.items():
        if type(name) is not str or not name or len(name) > 255:
            raise ValueError("document names must be strings")
        out[name] = _vv(vv)
    return out


def _tips(value: object) -> dict[str, dict[str, bytes]]:
    if type(value) is not dict or len(value) > MAX_DOCUMENTS * 4:
        raise ValueError("tips must be a map of document to {origin: checksum}")
    out = {}
    for name, checks in value.items():
        if type(name) is not str or type(checks) is not dict or len(checks) > 100_000:
            raise ValueError("tips must be a map of document to {origin: checksum}")
        for origin, check in checks.items():
            if type(origin) is not str or type(check) is not bytes or len(check) != CHECKSUM_SIZE:
                raise ValueError("tips hold 8-byte checksums")
        out[name] = checks
    return out


def _resume(value: object) -> dict[str, tuple[bytes, int]]:
    if type(value) is not dict or len(value) > MAX_DOCUMENTS:
        raise ValueError("res must be a map of document to [checksum, bytes held]")
    out = {}
    for name, entry in value.items():
        if type(name) is not str or type(entry) is not list or len(entry) != 2:
            raise ValueError("res must be a map of document to [checksum, bytes held]")
        check, held = entry
        if type(check) is not bytes or len(check) != CHECKSUM_SIZE or type(held) is not int or held < 0:
            raise ValueError("res holds an 8-byte checksum and a byte count")
        out[name] = (check, held)
    return out


def _version(body: Mapping[str, Any]) -> int:
    version = body.get("v")
    if type(version) is not int:
        raise ValueError("missing protocol version 'v'")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported (this side speaks {VERSION}); update the app or the relay",
            code="unsupported_version",
        )
    return version


def _role(body: Mapping[str, Any]) -> str:
    role = body.get("role")
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    return str(role)


def _hello(body: dict[str, Any], _: int) -> Hello:
    mode = body.get("mode", "once")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    return Hello(
        version=_version(body),
        replica_id=_str(body, "id"),
        role=_role(body),
        credential=_str(body, "cred", optional=True, limit=16384),
        documents=_documents(body.get("docs", {})),
        mode=mode,
        tips=_tips(body.get("tips", {})),
        challenge=_bytes(body, "chal"),
        proof=_bytes(body, "proof"),
        device_key=_bytes(body, "key", 32),
        revocations=_str(body, "rev", optional=True, limit=MAX_REVOCATIONS_CHARS),
        resume=_resume(body.get("res", {})),
    )


def _proof(body: dict[str, Any], _: int) -> Proof:
    proof = _bytes(body, "proof")
    if proof is None:
        raise ValueError("a proof frame carries 'proof'")
    return Proof(proof)


def _welcome(body: dict[str, Any], _: int) -> Welcome:
    denied_raw = body.get("denied", {})
    if type(denied_raw) is not dict:
        raise ValueError("denied must be a map")
    denied = {}
    for name, reason in denied_raw.items():
        if type(name) is not str or type(reason) is not list or len(reason) != 2:
            raise ValueError("denied entries are document: [code, message]")
        if not all(type(part) is str for part in reason):
            raise ValueError("denied entries are document: [code, message]")
        denied[name] = (reason[0], reason[1])
    return Welcome(
        version=_version(body),
        replica_id=_str(body, "id"),
        role=_role(body),
        documents=_documents(body.get("docs", {})),
        denied=denied,
        tips=_tips(body.get("tips", {})),
        challenge=_bytes(body, "chal"),
        proof=_bytes(body, "proof"),
        credential=_str(body, "cred", optional=True, limit=16384),
        relay_key=_bytes(body, "rkey", 32),
        revocations=_str(body, "rev", optional=True, limit=MAX_REVOCATIONS_CHARS),
        resume=_resume(body.get("res", {})),
    )


def _deltas(body: dict[str, Any], max_batch: int) -> Deltas:
    document = _str(body, "doc")
    origins = body["o"]
    rows = body["d"]
    if type(origins) is not list or type(rows) is not list:
        raise ValueError("'o' and 'd' must be arrays")
    if len(rows) > max_batch:
        raise ProtocolError(f"batch of {len(rows)} deltas exceeds the limit of {max_batch}", code="batch_too_large")
    if not all(type(o) is str and o and len(o) <= 255 for o in origins):
        raise ValueError("origins must be strings")
    out = []
    for row in rows:
        if type(row) is not list or len(row) not in (4, 5):
            raise ValueError("each delta is [origin index, seq, checksum, bytes] (a span: and its first seq)")
        index, seq, check, data = row[:4]
        if type(index) is not int or not 0 <= index < len(origins):
            raise ValueError("origin index out of range")
        if type(check) is not bytes or len(check) != CHECKSUM_SIZE or type(data) is not bytes:
            raise ValueError("checksum and data must be bytes")
        if _seq(seq) < 1:
            raise ValueError("seqs start at 1")
        first = _seq(row[4]) if len(row) == 5 else 0
        if len(row) == 5 and not 1 <= first < seq:
            raise ValueError("a span's first seq must be at least 1 and below its last")
        out.append(Delta(document, origins[index], seq, check, data, first))
    return Deltas(document, tuple(out))


def _ack(body: dict[str, Any], _: int) -> Ack:
    return Ack(_str(body, "doc"), _vv(body["vv"]))


def _open(body: dict[str, Any], _: int) -> Open:
    return Open(_str(body, "doc"), _vv(body["vv"]))


def _opened(body: dict[str, Any], _: int) -> Opened:
    denied = body.get("denied")
    if denied is not None:
        if type(denied) is not list or len(denied) != 2 or not all(type(p) is str for p in denied):
            raise ValueError("denied is [code, message]")
        denied = (denied[0], denied[1])
    return Opened(_str(body, "doc"), _vv(body.get("vv", {})), denied)


def _done(body: dict[str, Any], _: int) -> Done:
    return Done()


def _error(body: dict[str, Any], _: int) -> Error:
    retry = body.get("retry")
    if type(retry) is not bool:
        raise ValueError("'retry' must be a boolean")
    seq = body.get("seq")
    return Error(
        code=_str(body, "code", limit=64),
        message=str(_str(body, "msg", limit=2000)),
        retryable=retry,
        document=_str(body, "doc", optional=True),
        origin=_str(body, "origin", optional=True),
        seq=None if seq is None else _seq(seq),
    )


def _snapshot_part(body: dict[str, Any], max_batch: int) -> SnapshotPart:
    check = body["sum"]
    size, offset, data = body["n"], body["at"], body["d"]
    if type(check) is not bytes or len(check) != CHECKSUM_SIZE:
        raise ValueError("'sum' must be an 8-byte checksum")
    if type(size) is not int or type(offset) is not int or type(data) is not bytes:
        raise ValueError("'n' and 'at' must be integers and 'd' bytes")
    if not 0 <= offset < offset + len(data) <= size < 2**40:
        raise ValueError(f"bytes {offset} to {offset + len(data)} of {size} are out of range")
    return SnapshotPart(_str(body, "doc"), _vv(body["vv"]), check, size, offset, data)


_PARSERS: dict[str, Callable[[dict[str, Any], int], Frame]] = {
    "snap": _snapshot_part,
    "hello": _hello,
    "welcome": _welcome,
    "proof": _proof,
    "deltas": _deltas,
    "ack": _ack,
    "open": _open,
    "opened": _opened,
    "done": _done,
    "error": _error,
}
