"""Deltas and the cheap checks made on foreign ones before pycrdt sees them.

A delta is the Yjs v1 update made by one committed local transaction on one
document, identified by ``(origin, seq)`` and carrying a checksum of it
computed at the origin, since Yjs updates carry none and a mutated update may be
accepted silently and diverge a replica for good (PYCRDT-FACTS.md).

The checksum covers the delta's identity as well as its bytes: ``(document,
origin, first, seq, data)``, each field length-prefixed (:func:`checksum`).
Bytes alone would let a frame whose origin or seq was altered in transit be
stored under an origin no device has, or in another delta's place.

A *span* is a delta standing for a run of them: seqs ``first..seq`` of one
origin merged into one Yjs update (``replica.spans``). It is held, sent,
checked and acknowledged as one item; its checksum is of its identity and its
merged bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import NamedTuple

from replica import errors

CHECKSUM_SIZE = 8
#: Default largest delta a replica accepts from elsewhere (8 MiB).
MAX_DELTA_BYTES = 8 * 1024 * 1024
#: Default largest document state (snapshot) a replica accepts from elsewhere (512 MiB).
MAX_SNAPSHOT_BYTES = 512 * 1024 * 1024


class Delta(NamedTuple):
    """One immutable delta of one document.

    A named tuple rather than a frozen dataclass: receivers build one per delta,
    and a frozen dataclass's ``__init__`` costs three times as much (docs/profile.md).
    """

    document: str
    origin: str
    seq: int  # the last seq it holds
    checksum: bytes
    data: bytes
    first: int = 0  # a span: the first seq it holds (0: a single delta, ``seq`` alone)

    @property
    def length(self) -> int:
        """How many seqs of its origin it holds (1 unless a span)."""
        return self.seq - self.first + 1 if self.first else 1

    @property
    def start(self) -> int:
        """The first seq it holds."""
        return self.first or self.seq

    def __repr__(self) -> str:
        seqs = f"{self.first}..{self.seq}" if self.first else f"{self.seq}"
        return f"Delta({self.document!r}, {self.origin!r}#{seqs}, {len(self.data)} B)"


class Snapshot(NamedTuple):
    """The state of ``document`` standing for every delta of it up to
    version vector ``vv``: one Yjs update holding at least their content.
    Sent instead of deltas that the sender no longer holds one by one."""

    document: str
    vv: dict[str, int]
    checksum: bytes
    data: bytes

    def __repr__(self) -> str:
        return f"Snapshot({self.document!r}, {self.vv}, {len(self.data)} B)"


_U64 = struct.Struct(">Q")


def _digest(*fields: str | int | bytes) -> bytes:
    """BLAKE2b-64 of ``fields`` in an encoding that cannot be read two ways:
    an int as 8 bytes big-endian, a str (UTF-8) or bytes as its length in 8
    bytes big-endian, then itself. The one place the encoding is written."""
    digest = hashlib.blake2b(digest_size=CHECKSUM_SIZE)
    for value in fields:
        if isinstance(value, int):
            digest.update(_U64.pack(value))
            continue
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        digest.update(_U64.pack(len(raw)))
        digest.update(raw)
    return digest.digest()


def checksum(document: str, origin: str, seq: int, data: bytes, first: int = 0) -> bytes:
    """The checksum of a delta, or of a span when ``first`` is set: BLAKE2b-64
    of ``"delta", document, origin, first, seq, data`` (see :func:`_digest`).
    Made at the origin (a span: by the relay that merged it), checked by every
    receiver, stored with the delta; the one place the rule is written."""
    return _digest("delta", document, origin, first, seq, data)


def snapshot_checksum(document: str, vv: Mapping[str, int], data: bytes) -> bytes:
    """The checksum of a snapshot: BLAKE2b-64 of ``"snapshot", document, the
    number of origins, each ``origin, seq`` in origin order, data``. It binds
    the version vector: a state claiming more than it holds loses data."""
    pairs = sorted(vv.items())
    return _digest("snapshot", document, len(pairs), *(field for pair in pairs for field in pair), data)


def make(document: str, origin: str, seq: int, data: bytes, first: int = 0) -> Delta:
    """A new delta (a span if ``first`` is set) with its checksum."""
    return Delta(document, origin, seq, checksum(document, origin, seq, data, first), data, first)


def make_snapshot(document: str, vv: Mapping[str, int], data: bytes) -> Snapshot:
    """A snapshot of ``document`` with its checksum."""
    return Snapshot(document, dict(vv), snapshot_checksum(document, vv, data), data)


def matches(item: Delta) -> bool:
    """Whether ``item``'s checksum is that of its identity and bytes."""
    return checksum(item.document, item.origin, item.seq, item.data, item.first) == item.checksum


def leading_varint(data: bytes) -> int | None:
    """The first unsigned LEB128 varint of ``data``, or None if unterminated."""
    if data and data[0] < 0x80:  # one byte: nearly every Yjs update (its count of client blocks)
        return data[0]
    value = 0
    for shift, byte in zip(range(0, 70, 7), data, strict=False):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    return None


def precheck(delta: Delta, *, max_bytes: int = MAX_DELTA_BYTES) -> None:
    """Refuse a foreign delta that must never reach pycrdt.

    Checks, cheapest first: field types, size, checksum, and the leading varint
    (a 5-byte update whose first varint is ~2**28 makes yrs allocate ~520 MB).
    Raises :class:`~replica.errors.DeltaRejected`.
    """

    def reject(reason: str, message: str) -> errors.DeltaRejected:
        return errors.DeltaRejected(
            reason,
            message,
            document=str(delta.document),
            origin=str(delta.origin),
            seq=_int_or_0(delta.first) or _int_or_0(delta.seq),
        )

    if (
        type(delta.seq) is not int
        or delta.seq < 1
        or delta.seq >= 2**63
        or type(delta.data) is not bytes
        or type(delta.checksum) is not bytes
        or type(delta.origin) is not str
        or type(delta.document) is not str
        or type(delta.first) is not int
        or not (delta.first == 0 or 1 <= delta.first < delta.seq)
    ):
        raise reject(errors.REJECT_INVALID, "fields of the wrong type or range")
    if len(delta.data) > max_bytes:
        raise reject(errors.REJECT_TOO_LARGE, f"{len(delta.data)} bytes, at most {max_bytes} accepted")
    if not matches(delta):
        raise reject(
            errors.REJECT_CHECKSUM,
            "its document, origin, seqs or bytes do not match its checksum (damaged in transit?)",
        )
    first = leading_varint(delta.data)
    if first is None or first > len(delta.data) or len(delta.data) < 2:
        raise reject(errors.REJECT_MALFORMED, "not a Yjs update (bad header)")


def _int_or_0(value: object) -> int:
    return value if type(value) is int else 0
