"""The delta log: the one layer that knows what the store's keys mean.

Theory of operation
-------------------
Every delta a replica holds, local or foreign, is appended once and never
changed (but for its checksum, rewritten once by
:meth:`DeltaLog.recompute_checksums` when a data directory of format 1 is
upgraded: see ``replica.engine``). Document names and origin replica ids are
interned to 4-byte numbers so that keys stay short. Tables (see ``replica.store``)::

    meta        b"replica_id", b"format", b"setting.*" -> utf-8 text
                b"peer." + peer id                     -> msgpack {synced_at, error, to_receive}
    documents   b"n" + name | b"i" + doc               -> doc | name
    origins     b"n" + id   | b"i" + origin            -> origin | id
    deltas      doc + pos                              -> origin + seq + checksum [+ first] + bytes
    index       doc + origin + seq                     -> pos
    watermarks  remote + 0x00 + doc                    -> msgpack {origin id: seq}
    rejected    remote + 0x00 + doc + origin           -> msgpack [from seq, code, message]
    snapshots   doc + b"v" | doc + b"d"                -> msgpack {origin id: seq} | state bytes
    partials    doc + b"h" | doc + b"p" + offset       -> msgpack [{origin: seq}, checksum, size] | bytes

A document's **snapshot** (at most one, its *base*) stands for every delta of
it up to a version vector: one Yjs update holding at least their content.
Compaction replaces the deltas it covers with it (``set_base``), and a replica
that received a document's state from another (``replica.engine``) keeps that
state as its base. Deltas after the base stay one by one: reopening replays
the base, then them. The base is part of what the replica holds, so version
vectors, ``unsynced`` and the rest count it; what it covers can only be sent
as that state (see :meth:`DeltaLog.base`), never delta by delta.

A **span** (``replica.spans``) is held as one row like a delta: its origin
number has the top bit set, and its first seq follows the checksum. The index
holds it under its last seq, so a version vector and :meth:`DeltaLog.missing`
see it as they see a delta; its seqs before the last have no index entry of
their own (:meth:`DeltaLog.checksum_of` answers None for all of them: a span's
checksum is of the span and its merged bytes, not comparable with any one delta's).

``pos`` numbers a document's deltas in the order this replica applied them.
Replaying a document in ``pos`` order is therefore always causally valid (each
delta after everything it depended on), and sending in ``pos`` order keeps each
origin's seqs in order, which pycrdt needs (PYCRDT-FACTS.md).

The version vector of a document, ``{origin: highest seq}``, is read from the
``index`` table (two cursor seeks per origin): it is derived from what is on
disk, never counted separately. Seqs of one origin are contiguous from 1,
which :meth:`DeltaLog.append` enforces, so "deltas not covered by a watermark"
is a subtraction per origin.

The log caches interned numbers, the next ``pos``, the version vectors of
documents it has written to and recently decoded rows (:class:`DecodedRows`);
:meth:`DeltaLog.write` drops those caches when a write transaction fails, so
they never outlive an aborted write.
"""

from __future__ import annotations

import heapq
import struct
from collections import OrderedDict
from collections.abc import Generator, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any

import msgpack

from replica import delta as deltas
from replica.delta import CHECKSUM_SIZE, Delta
from replica.runindex import Piece, RunIndex
from replica.store import Store, Txn, prefix_end
from replica.vv import VersionVector, count_missing, merge

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_INDEX = struct.Struct(">IIQ")  # doc, origin, seq
_DELTA_HEAD = struct.Struct(f">IQ{CHECKSUM_SIZE}s")  # origin, seq, checksum
_HEAD = _DELTA_HEAD.size
_CHECKSUM_AT = _HEAD - CHECKSUM_SIZE
_SPAN = 0x80000000  # the origin number's flag on a span's row, whose first seq follows its head
_SPAN_HEAD = _HEAD + 8
_ALL = 0xFFFFFFFF  # origin number of a whole-document rejection
_ROW_ORIGIN = struct.Struct(">IQ")  # the head of a row: origin number (with the span flag), seq
_DECODED_OVERHEAD = 200  # bytes a decoded delta holds beside its data (the tuple, its key, the cache's link)
_DENSE = 4  # DeltaLog._prefix scans rows in order when at most this many lie ahead per wanted delta


def _first(pair: tuple[bytes, Delta]) -> bytes:
    return pair[0]


class DecodedRows:
    """Deltas decoded from their rows, by row key, within ``budget`` bytes,
    oldest out first: the links of a relay reading the same rows at different
    times (each its own window of its backlog) decode each row once.

    A row never changes under its key while it exists (but for the one
    rewrite of :meth:`DeltaLog.recompute_checksums`, which empties it); a key
    can be used again only after the rows at the end of a document are
    deleted, so :meth:`DeltaLog.set_base` (which deletes rows) and a failed
    write (after which the next ``pos`` is read again from disk) empty it."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._items: OrderedDict[bytes, Delta] = OrderedDict()
        self._bytes = 0

    def get(self, key: bytes) -> Delta | None:
        return self._items.get(key)

    def put(self, key: bytes, item: Delta) -> None:
        if key in self._items:
            return
        self._items[key] = item
        self._bytes += len(item.data) + _DECODED_OVERHEAD
        while self._bytes > self.budget and self._items:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped.data) + _DECODED_OVERHEAD

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


class DeltaLog:
    """Append-only deltas of every document of one replica."""

    def __init__(self, store: Store, *, decoded_bytes: int = 8 * 1024 * 1024) -> None:
        self.store = store
        self._decoded = DecodedRows(decoded_bytes)
        self._clear_caches()

    def _clear_caches(self) -> None:
        self._doc_ids: dict[str, int] = {}
        self._doc_names: dict[int, str] = {}
        self._origin_ids: dict[str, int] = {}
        self._origin_names: dict[int, str] = {}
        self._next_pos: dict[int, int] = {}
        self._vv: dict[int, dict[int, int]] = {}
        self._base_vv: dict[int, dict[int, int]] = {}
        self._decoded.clear()
        self._runs: dict[int, RunIndex | None] = {}  # see missing_pieces; None: too many runs to keep

    # -- transactions --------------------------------------------------------

    def read(self) -> AbstractContextManager[Txn]:
        return self.store.read()

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """A store write transaction; caches are dropped if it fails."""
        outermost = not self.store.in_write
        try:
            with self.store.write() as txn:
                yield txn
        except BaseException:
            if outermost:
                self._clear_caches()
            raise

    # -- meta ----------------------------------------------------------------

    def get_meta(self, txn: Txn, key: str) -> str | None:
        value = txn.get("meta", key.encode())
        return None if value is None else value.decode()

    def set_meta(self, txn: Txn, key: str, value: str) -> None:
        txn.put("meta", key.encode(), value.encode())

    # -- interning -----------------------------------------------------------

    def _intern(
        self, txn: Txn, table: str, name: str, ids: dict[str, int], names: dict[int, str], create: bool
    ) -> int | None:
        found = ids.get(name)
        if found is not None:
            return found
        raw = txn.get(table, b"n" + name.encode())
        if raw is None:
            if not create:
                return None
            last = txn.last_before(table, b"j")
            number = 0 if last is None or not last[0].startswith(b"i") else _U32.unpack(last[0][1:])[0] + 1
            txn.put(table, b"n" + name.encode(), _U32.pack(number))
            txn.put(table, b"i" + _U32.pack(number), name.encode())
        else:
            number = _U32.unpack(raw)[0]
        ids[name] = number
        names[number] = name
        return number

    def _doc(self, txn: Txn, document: str, create: bool = False) -> int | None:
        return self._intern(txn, "documents", document, self._doc_ids, self._doc_names, create)

    def _origin(self, txn: Txn, origin: str, create: bool = False) -> int | None:
        return self._intern(txn, "origins", origin, self._origin_ids, self._origin_names, create)

    def _name(self, txn: Txn, table: str, number: int, ids: dict[str, int], names: dict[int, str]) -> str:
        name = names.get(number)
        if name is None:
            raw = txn.get(table, b"i" + _U32.pack(number))
            if raw is None:
                raise LookupError(f"{table} #{number} missing from the log")
            name = raw.decode()
            names[number] = name
            ids[name] = number
        return name

    def _origin_name(self, txn: Txn, number: int) -> str:
        return self._name(txn, "origins", number, self._origin_ids, self._origin_names)

    def _doc_name(self, txn: Txn, number: int) -> str:
        return self._name(txn, "documents", number, self._doc_ids, self._doc_names)

    def documents(self, txn: Txn) -> list[str]:
        """Names of every document with at least one delta, sorted."""
        names = [key[1:].decode() for key, _ in txn.scan("documents", b"n", b"o")]
        return sorted(name for name in names if self.version_vector(txn, name))

    # -- version vectors -----------------------------------------------------

    def _vv_numbers(self, txn: Txn, doc: int) -> dict[int, int]:
        vv = dict(self._base_numbers(txn, doc))  # the index holds only deltas after it
        prefix = _U32.pack(doc)
        end = prefix_end(prefix)
        start = prefix
        while True:
            first = next(txn.scan("index", start, end), None)
            if first is None:
                return vv
            origin = _U32.unpack(first[0][4:8])[0]
            after = prefix + _U32.pack(origin + 1) if origin < 0xFFFFFFFF else end
            assert after is not None
            last = txn.last_before("index", after)
            assert last is not None
            vv[origin] = _INDEX.unpack(last[0])[2]
            start = after

    def version_vector(self, txn: Txn, document: str) -> VersionVector:
        """``{origin: highest seq held}`` of ``document``, read from the index
        (once; then kept by every append, and dropped with a failed write)."""
        doc = self._doc(txn, document)
        if doc is None:
            return {}
        return {self._origin_name(txn, o): seq for o, seq in self._cached_vv(txn, doc).items()}

    def held_seq(self, txn: Txn, document: str, origin: str) -> int:
        """The highest seq of ``origin`` held for ``document`` (0 if none)."""
        doc = self._doc(txn, document)
        number = self._origin(txn, origin)
        if doc is None or number is None:
            return 0
        return self._cached_vv(txn, doc).get(number, 0)

    def _cached_vv(self, txn: Txn, doc: int) -> dict[int, int]:
        vv = self._vv.get(doc)
        if vv is None:
            vv = self._vv[doc] = self._vv_numbers(txn, doc)
        return vv

    # -- snapshots -----------------------------------------------------------

    def _base_row(self, txn: Txn, doc: int) -> tuple[dict[int, int], bytes] | None:
        numbers = self._base_numbers(txn, doc)
        if not numbers:
            return None
        data = txn.get("snapshots", _U32.pack(doc) + b"d")
        assert data is not None, "a snapshot's version vector without its state"
        return numbers, data

    def _base_numbers(self, txn: Txn, doc: int) -> dict[int, int]:
        """What the snapshot of ``doc`` covers: a small key of its own, read
        on every ``missing()``, never the state beside it (megabytes)."""
        found = self._base_vv.get(doc)
        if found is None:
            raw = txn.get("snapshots", _U32.pack(doc) + b"v")
            found = self._base_vv[doc] = {} if raw is None else dict(msgpack.unpackb(raw, strict_map_key=False))
        return found

    def base(self, txn: Txn, document: str) -> tuple[VersionVector, bytes] | None:
        """``(version vector, state)`` of ``document``'s snapshot, if it has one."""
        doc = self._doc(txn, document)
        row = None if doc is None else self._base_row(txn, doc)
        if row is None:
            return None
        return {self._origin_name(txn, o): seq for o, seq in row[0].items()}, row[1]

    def base_vv(self, txn: Txn, document: str) -> VersionVector:
        """What ``document``'s snapshot covers (empty without one); never reads its state."""
        doc = self._doc(txn, document)
        if doc is None:
            return {}
        return {self._origin_name(txn, o): seq for o, seq in self._base_numbers(txn, doc).items()}

    def set_base(self, txn: Txn, document: str, vv: Mapping[str, int], data: bytes) -> int:
        """Make ``(vv, data)`` the snapshot of ``document`` and delete the
        deltas it covers; returns how many were deleted. ``vv`` must cover the
        old snapshot's, and ``data`` hold everything ``vv`` claims (the
        caller's duty: a snapshot that claims more than it holds loses data)."""
        doc = self._doc(txn, document, create=True)
        assert doc is not None
        old = self._base_numbers(txn, doc)
        numbers: dict[int, int] = {}
        for name, seq in vv.items():
            if seq <= 0:
                continue  # claims nothing of that origin
            number = self._origin(txn, name, create=True)
            assert number is not None
            numbers[number] = seq
        if any(numbers.get(o, 0) < seq for o, seq in old.items()):
            raise ValueError(f"a snapshot of {document!r} must cover the one it replaces")
        dropped = 0
        self._decoded.clear()  # rows go: their keys may be used again
        self._runs.pop(doc, None)
        for number, top in numbers.items():
            start = _INDEX.pack(doc, number, 0)
            stop = _INDEX.pack(doc, number, top + 1)
            for key, pos in list(txn.scan("index", start, stop)):
                txn.delete("deltas", _U32.pack(doc) + pos)
                txn.delete("index", key)
                dropped += 1
        txn.put("snapshots", _U32.pack(doc) + b"v", msgpack.packb(numbers))
        txn.put("snapshots", _U32.pack(doc) + b"d", data)
        self._base_vv[doc] = numbers
        vv_cache = self._cached_vv(txn, doc)
        for number, seq in numbers.items():
            vv_cache[number] = max(vv_cache.get(number, 0), seq)
        return dropped

    def tail(self, txn: Txn, document: str) -> Iterator[Delta]:
        """The deltas of ``document`` after its snapshot, in applied order."""
        doc = self._doc(txn, document)
        if doc is None:
            return
        prefix = _U32.pack(doc)
        for _, row in txn.scan("deltas", prefix, prefix_end(prefix)):
            yield self._delta(txn, document, row)

    # -- snapshots still arriving ----------------------------------------------

    def add_partial(
        self, txn: Txn, document: str, vv: Mapping[str, int], check: bytes, size: int, offset: int, data: bytes
    ) -> None:
        """Keep bytes ``offset`` to ``offset + len(data)`` of a snapshot still
        arriving (``size`` bytes in all, ``check`` its checksum); a first part
        (``offset`` 0) replaces whatever was kept of ``document`` before."""
        doc = self._doc(txn, document, create=True)
        assert doc is not None
        prefix = _U32.pack(doc)
        if offset == 0:
            self.drop_partial(txn, document)
            txn.put("partials", prefix + b"h", msgpack.packb([dict(vv), check, size]))
        txn.put("partials", prefix + b"p" + _U64.pack(offset), data)

    def partial(self, txn: Txn, document: str) -> tuple[VersionVector, bytes, int, bytes] | None:
        """``(vv, checksum, size, bytes held from 0)`` of ``document``'s snapshot still arriving."""
        doc = self._doc(txn, document)
        head = None if doc is None else txn.get("partials", _U32.pack(doc) + b"h")
        if doc is None or head is None:
            return None
        vv, check, size = msgpack.unpackb(head)
        data = bytearray()
        prefix = _U32.pack(doc) + b"p"
        for key, part in txn.scan("partials", prefix, prefix_end(prefix)):
            if _U64.unpack(key[len(prefix) :])[0] != len(data):
                break  # only what continues from byte 0 is of use
            data += part
        return vv, check, size, bytes(data)

    def partials(self, txn: Txn) -> dict[str, tuple[bytes, int]]:
        """``{document: (checksum, bytes held)}`` of every snapshot still arriving."""
        out = {}
        for key, _ in list(txn.scan("partials")):
            if key[4:5] == b"h":
                name = self._doc_name(txn, _U32.unpack(key[:4])[0])
                found = self.partial(txn, name)
                assert found is not None
                out[name] = (found[1], len(found[3]))
        return out

    def drop_partial(self, txn: Txn, document: str) -> None:
        """Forget what arrived of ``document``'s snapshot (it is whole now, or replaced)."""
        doc = self._doc(txn, document)
        if doc is None:
            return
        prefix = _U32.pack(doc)
        for key, _ in list(txn.scan("partials", prefix, prefix_end(prefix))):
            txn.delete("partials", key)

    # -- deltas --------------------------------------------------------------

    def append(self, txn: Txn, delta: Delta) -> None:
        """Append one delta (or span). It must hold the seq that follows the
        last one of its origin, and nothing before the ones it follows."""
        doc, origin, vv = self._slot(txn, delta.document, delta.origin)
        expected = vv.get(origin, 0) + 1
        if not delta.start <= expected <= delta.seq or (not delta.first and delta.seq != expected):
            raise ValueError(f"{delta!r} appended out of order: expected seq {expected}")
        self._put(txn, doc, origin, vv, delta.seq, delta.checksum, delta.data, delta.first)

    def append_next(self, txn: Txn, document: str, origin_id: str, data: bytes) -> Delta:
        """Append ``data`` as the next delta of ``origin_id`` (the local hot path)."""
        doc, origin, vv = self._slot(txn, document, origin_id)
        item = deltas.make(document, origin_id, vv.get(origin, 0) + 1, data)
        self._put(txn, doc, origin, vv, item.seq, item.checksum, item.data)
        return item

    def _slot(self, txn: Txn, document: str, origin_id: str) -> tuple[int, int, dict[int, int]]:
        doc = self._doc_ids.get(document)
        if doc is None:
            doc = self._doc(txn, document, create=True)
        origin = self._origin_ids.get(origin_id)
        if origin is None:
            origin = self._origin(txn, origin_id, create=True)
        assert doc is not None and origin is not None
        vv = self._vv.get(doc)
        if vv is None:
            vv = self._vv[doc] = self._vv_numbers(txn, doc)
        return doc, origin, vv

    def _put(
        self, txn: Txn, doc: int, origin: int, vv: dict[int, int], seq: int, check: bytes, data: bytes, first: int = 0
    ) -> None:
        pos = self._end_pos(txn, doc)
        packed_pos = _U64.pack(pos)
        if first:
            head = _DELTA_HEAD.pack(origin | _SPAN, seq, check) + _U64.pack(first)
        else:
            head = _DELTA_HEAD.pack(origin, seq, check)
        txn.put("deltas", _U32.pack(doc) + packed_pos, head + data)
        txn.put("index", _INDEX.pack(doc, origin, seq), packed_pos)
        self._next_pos[doc] = pos + 1
        runs = self._runs.get(doc)
        if runs is not None and not runs.add(pos, origin, first or seq, seq, len(data), span=bool(first)):
            self._runs[doc] = None
        vv[origin] = seq

    def _end_pos(self, txn: Txn, doc: int) -> int:
        """The ``pos`` the next delta of ``doc`` gets."""
        pos = self._next_pos.get(doc)
        if pos is None:
            last = txn.last_before("deltas", _U32.pack(doc + 1))
            pos = _U64.unpack(last[0][4:])[0] + 1 if last and last[0][:4] == _U32.pack(doc) else 1
        return pos

    def recompute_checksums(self, txn: Txn) -> int:
        """Give every held delta and span the checksum of today's rule
        (:func:`replica.delta.checksum`), and forget the snapshots still
        arriving (kept under the old rule, they could never be resumed).
        Returns how many rows were rewritten. For a data directory written
        before checksums covered a delta's identity: in the caller's write
        transaction, so a crash leaves the directory as it was."""
        rewritten = 0
        start = b""
        while True:
            # A chunk at a time, never the whole table in memory, and no write under an open cursor.
            chunk = [(bytes(key), bytes(row)) for key, row in islice(txn.scan("deltas", start), 1024)]
            if not chunk:
                break
            for key, row in chunk:
                item = self._delta(txn, self._doc_name(txn, _U32.unpack(key[:4])[0]), row)
                check = deltas.checksum(item.document, item.origin, item.seq, item.data, item.first)
                if check != item.checksum:
                    txn.put("deltas", key, row[:_CHECKSUM_AT] + check + row[_HEAD:])
                    rewritten += 1
            start = chunk[-1][0] + b"\x00"
        for key, _ in list(txn.scan("partials")):
            txn.delete("partials", key)
        if rewritten:
            self._decoded.clear()  # those rows changed under their keys
        return rewritten

    def checksum_of(self, txn: Txn, document: str, origin: str, seq: int) -> bytes | None:
        """The checksum of a held delta, or None if it is not held one by one
        (not at all, or in the snapshot, or in a span)."""
        row = self._row(txn, document, origin, seq)
        return None if row is None or row[0] & 0x80 else row[_CHECKSUM_AT:_HEAD]

    def _row(self, txn: Txn, document: str, origin: str, seq: int) -> bytes | None:
        doc = self._doc(txn, document)
        number = self._origin(txn, origin)
        if doc is None or number is None:
            return None
        pos = txn.get("index", _INDEX.pack(doc, number, seq))
        return None if pos is None else txn.get("deltas", _U32.pack(doc) + pos)

    def _delta(self, txn: Txn, document: str, row: bytes) -> Delta:
        origin, seq, check = _DELTA_HEAD.unpack_from(row)
        if origin & _SPAN:
            first = _U64.unpack_from(row, _HEAD)[0]
            return Delta(document, self._origin_name(txn, origin & ~_SPAN), seq, check, bytes(row[_SPAN_HEAD:]), first)
        return Delta(document, self._origin_name(txn, origin), seq, check, bytes(row[_HEAD:]))

    def _decode(self, txn: Txn, document: str, key: bytes, row: bytes | None) -> Delta:
        """The delta in the row at ``key`` of the deltas table (``row``, if
        read already), decoded once while it stays in ``_decoded``."""
        found = self._decoded.get(key)
        if found is None:
            if row is None:
                row = txn.get("deltas", key)
                assert row is not None, "index points at a missing delta"
            found = self._delta(txn, document, row)
            self._decoded.put(bytes(key), found)
        return found

    def payloads(self, txn: Txn, document: str) -> Iterator[bytes]:
        """What replays ``document``: its snapshot's state (if any), then the
        bytes of every delta after it, in applied order."""
        doc = self._doc(txn, document)
        if doc is None:
            return
        base = self._base_row(txn, doc)
        if base is not None:
            yield base[1]
        prefix = _U32.pack(doc)
        for _, row in txn.scan("deltas", prefix, prefix_end(prefix)):
            yield row[_SPAN_HEAD:] if row[0] & 0x80 else row[_HEAD:]

    def missing(
        self,
        txn: Txn,
        document: str,
        remote: Mapping[str, int],
        memo: dict[Any, list[Any]] | None = None,
        *,
        most: int | None = None,
        most_bytes: int | None = None,
    ) -> list[Delta]:
        """The deltas of ``document`` not covered by ``remote`` (a version
        vector) nor by the snapshot, in applied order, so per-origin seq order
        and causality hold. (What the snapshot covers and ``remote`` lacks
        goes as the snapshot: see :meth:`base`.)

        ``most`` and ``most_bytes`` bound the answer to a prefix of that
        order: at most ``most`` deltas, and no more once their bytes reach
        ``most_bytes`` (at least one is given). Every delta a delta of the
        prefix depends on comes before it in applied order, so it is held by
        ``remote`` or in the prefix too: a prefix can be sent on its own, and
        the rest is what ``remote`` plus the prefix lacks. Bounded, only the
        prefix is read, whatever the backlog (see :meth:`_prefix`), and each
        row is decoded once while it stays in the log's cache of decoded rows
        (``decoded_bytes``): the links of a relay, each reading its own window
        of the same backlog at its own time, share the decoding.

        ``memo``, kept by the caller while nothing commits, keeps each
        origin's run ``(pos, delta)`` read: a relay fanning one commit out to
        links at different points reads each new delta once, not once a link.
        A bounded read uses it when the whole answer fits ``most``."""
        doc = self._doc(txn, document)
        if doc is None:
            return []
        wanted = self._wanted(txn, doc, remote)
        lacking = sum(held - have for _, have, held in wanted)
        if (most is None and most_bytes is None) or (memo is not None and (most is None or lacking <= most)):
            found = self._whole_runs(txn, document, doc, wanted, memo)
            if most_bytes is None:
                return found
            size = 0
            for count, item in enumerate(found):
                size += len(item.data)
                if size >= most_bytes:
                    return found[: count + 1]
            return found
        return self._prefix(txn, document, doc, wanted, lacking, most, most_bytes)

    def _whole_runs(
        self, txn: Txn, document: str, doc: int, wanted: list[tuple[int, int, int]], memo: dict[Any, list[Any]] | None
    ) -> list[Delta]:
        runs: list[list[tuple[bytes, Delta]]] = []
        prefix = _U32.pack(doc)
        for origin, have, held in wanted:
            key = (doc, origin, have, held)
            found = None if memo is None else memo.get(key)
            if found is None:
                start = _INDEX.pack(doc, origin, have + 1)
                stop = _INDEX.pack(doc, origin, held + 1)
                found = []
                for _, pos in txn.scan("index", start, stop):
                    found.append((bytes(pos), self._decode(txn, document, prefix + pos, None)))
                if memo is not None:
                    memo[key] = found
            runs.append(found)
        if len(runs) == 1:
            return [item for _, item in runs[0]]
        return [item for _, item in heapq.merge(*runs, key=_first)]

    def _prefix(
        self,
        txn: Txn,
        document: str,
        doc: int,
        wanted: list[tuple[int, int, int]],
        lacking: int,
        most: int | None,
        most_bytes: int | None,
    ) -> list[Delta]:
        """The first of the deltas ``wanted`` in applied order, up to ``most``
        of them and ``most_bytes``, reading only the rows taken and what lies
        between them.

        Two ways, by how dense the wanted rows are after the first of them:
        dense (a remote lacking most of what came after some point, as every
        link of a storm does), one scan of the rows in ``pos`` order from the
        first wanted one, skipping the rows the remote holds by their head;
        sparse, the per-origin index runs merged by ``pos`` (a big-endian
        number, so bytes compare as numbers), one row read per delta taken."""
        start = self._first_wanted_pos(txn, doc, wanted)
        if start is None:
            return []
        end = self._end_pos(txn, doc)
        if end - _U64.unpack(start)[0] <= _DENSE * lacking:
            rows = self._dense_rows(txn, doc, start, wanted)
        else:
            rows = self._sparse_rows(txn, doc, wanted)
        out: list[Delta] = []
        size = 0
        try:
            for key, row in rows:
                item = self._decode(txn, document, key, row)
                out.append(item)
                size += len(item.data)
                if (most is not None and len(out) >= most) or (most_bytes is not None and size >= most_bytes):
                    break
        finally:
            rows.close()  # its store cursors close now, inside the transaction
        return out

    def _wanted(self, txn: Txn, doc: int, remote: Mapping[str, int]) -> list[tuple[int, int, int]]:
        """``(origin, have, held)`` for each origin of ``doc`` of which a remote
        holding ``remote`` lacks rows (what the snapshot covers it never lacks
        as rows: see :meth:`base`)."""
        base = self._base_numbers(txn, doc)
        wanted = []
        for origin, held in self._cached_vv(txn, doc).items():
            have = max(remote.get(self._origin_name(txn, origin), 0), base.get(origin, 0))
            if have < held:
                wanted.append((origin, have, held))
        return wanted

    def _first_wanted_pos(self, txn: Txn, doc: int, wanted: list[tuple[int, int, int]]) -> bytes | None:
        """The ``pos`` of the first row any of ``wanted`` lacks (None: none)."""
        firsts = [self._first_pos(txn, doc, origin, have, held) for origin, have, held in wanted]
        return min((pos for pos in firsts if pos is not None), default=None)

    @staticmethod
    def _first_pos(txn: Txn, doc: int, origin: int, have: int, held: int) -> bytes | None:
        """The ``pos`` of the first row of ``origin`` after seq ``have``."""
        scan = txn.scan("index", _INDEX.pack(doc, origin, have + 1), _INDEX.pack(doc, origin, held + 1))
        try:
            for _, pos in scan:
                return bytes(pos)
            return None
        finally:
            if isinstance(scan, Generator):
                scan.close()

    def _dense_rows(
        self, txn: Txn, doc: int, start: bytes, wanted: list[tuple[int, int, int]]
    ) -> Generator[tuple[bytes, bytes | None]]:
        have = {origin: seen for origin, seen, _ in wanted}
        scan = txn.scan("deltas", _U32.pack(doc) + start, _U32.pack(doc + 1))
        try:
            for key, row in scan:
                origin, seq = _ROW_ORIGIN.unpack_from(row)
                seen = have.get(origin & ~_SPAN)
                if seen is not None and seq > seen:
                    yield key, row
        finally:
            if isinstance(scan, Generator):
                scan.close()

    def _sparse_rows(self, txn: Txn, doc: int, wanted: list[tuple[int, int, int]]) -> Generator[tuple[bytes, None]]:
        scans = [
            txn.scan("index", _INDEX.pack(doc, origin, have + 1), _INDEX.pack(doc, origin, held + 1))
            for origin, have, held in wanted
        ]
        prefix = _U32.pack(doc)
        try:
            for pos in heapq.merge(*((bytes(pos) for _, pos in scan) for scan in scans)):
                yield prefix + pos, None
        finally:
            for scan in scans:
                if isinstance(scan, Generator):
                    scan.close()

    def missing_pieces(
        self,
        txn: Txn,
        document: str,
        remote: Mapping[str, int],
        *,
        upto: Mapping[str, int] | None = None,
        most: int | None = None,
        most_bytes: int | None = None,
        align: int = 1,
    ) -> list[tuple[str, Piece]] | None:
        """What :meth:`missing` answers, as pieces of runs with their origin's
        name, read from the document's :class:`~replica.runindex.RunIndex`
        (built the first time) without reading a row; None if the document's
        rows make too many runs to index (read them with :meth:`missing`).
        ``upto`` (a version vector) ends the answer before the first delta it
        does not cover, so it never holds one committed after ``upto`` was
        read; ``most``, ``most_bytes`` and ``align`` bound it as
        ``RunIndex.take`` does. :meth:`piece_deltas` reads a piece's deltas."""
        doc = self._doc(txn, document)
        if doc is None:
            return []
        runs = self._run_index(txn, doc)
        if runs is None:
            return None
        wanted = self._wanted(txn, doc, remote)
        start = self._first_wanted_pos(txn, doc, wanted)
        if start is None:
            return []
        limit = None
        if upto is not None:  # take() reads it for the wanted origins only
            limit = {origin: upto.get(self._origin_name(txn, origin), 0) for origin, _, _ in wanted}
        pieces = runs.take(
            _U64.unpack(start)[0],
            {origin: seen for origin, seen, _ in wanted},
            upto=limit,
            most=most,
            most_bytes=most_bytes,
            align=align,
        )
        return [(self._origin_name(txn, piece.origin), piece) for piece in pieces]

    def piece_deltas(self, txn: Txn, document: str, piece: Piece, first: int = 0, last: int = 0) -> list[Delta]:
        """The deltas of ``piece``, or of its seqs ``first..last`` only (a
        stored span's piece: the span), read through the cache of decoded
        rows. An index out of step with the rows is an internal error."""
        doc = self._doc(txn, document)
        assert doc is not None
        name = self._origin_name(txn, piece.origin)
        prefix = _U32.pack(doc)
        if piece.span:
            span = self._decode(txn, document, prefix + _U64.pack(piece.pos), None)
            assert (span.origin, span.start, span.seq) == (name, piece.first, piece.last), "run index out of step"
            return [span]
        first, last = first or piece.first, last or piece.last
        at = piece.pos + (first - piece.first)
        out = [self._decode(txn, document, prefix + _U64.pack(at + step), None) for step in range(last - first + 1)]
        assert all(d.origin == name and d.seq == first + k for k, d in enumerate(out)), "run index out of step"
        return out

    def _run_index(self, txn: Txn, doc: int) -> RunIndex | None:
        if doc in self._runs:
            return self._runs[doc]
        runs: RunIndex | None = RunIndex()
        prefix = _U32.pack(doc)
        scan = txn.scan("deltas", prefix, prefix_end(prefix))
        try:
            for key, row in scan:
                origin, seq = _ROW_ORIGIN.unpack_from(row)
                span = bool(origin & _SPAN)
                first = _U64.unpack_from(row, _HEAD)[0] if span else seq
                size = len(row) - (_SPAN_HEAD if span else _HEAD)
                assert runs is not None
                if not runs.add(_U64.unpack_from(key, 4)[0], origin & ~_SPAN, first, seq, size, span=span):
                    runs = None
                    break
        finally:
            if isinstance(scan, Generator):
                scan.close()
        self._runs[doc] = runs
        return runs

    # -- watermarks and unsynced ---------------------------------------------

    @staticmethod
    def _watermark_key(remote: str, doc: int) -> bytes:
        return remote.encode() + b"\x00" + _U32.pack(doc)

    def watermark(self, txn: Txn, remote: str, document: str) -> VersionVector:
        """The version vector ``remote`` has durably acknowledged for ``document``."""
        doc = self._doc(txn, document)
        if doc is None:
            return {}
        raw = txn.get("watermarks", self._watermark_key(remote, doc))
        return {} if raw is None else dict(msgpack.unpackb(raw))

    def set_watermark(self, txn: Txn, remote: str, document: str, vv: Mapping[str, int]) -> None:
        """Record what ``remote`` acknowledged (only ever raised, never lowered)."""
        doc = self._doc(txn, document, create=True)
        assert doc is not None
        merged = self.watermark(txn, remote, document)
        merge(merged, vv)
        txn.put("watermarks", self._watermark_key(remote, doc), msgpack.packb(merged))

    # -- rejections ----------------------------------------------------------

    def _rejection_key(self, txn: Txn, remote: str, document: str, origin: str | None) -> bytes:
        doc = self._doc(txn, document, create=True)
        number = _ALL if origin is None else self._origin(txn, origin, create=True)
        assert doc is not None and number is not None
        return remote.encode() + b"\x00" + _U32.pack(doc) + _U32.pack(number)

    def set_rejection(self, txn: Txn, remote: str, rejection: Rejection) -> None:
        """Record that ``remote`` refuses, for good, ``rejection.origin``'s
        deltas of a document from ``rejection.seq`` on (every origin's, from
        its watermark on, if ``origin`` is None)."""
        key = self._rejection_key(txn, remote, rejection.document, rejection.origin)
        old = txn.get("rejected", key)
        if old is not None and rejection.origin is not None and msgpack.unpackb(old)[0] <= rejection.seq:
            return
        txn.put("rejected", key, msgpack.packb([rejection.seq, rejection.code, rejection.message]))

    def clear_rejection(self, txn: Txn, remote: str, document: str) -> None:
        """Forget a whole-document refusal (the remote now accepts it)."""
        if self._doc(txn, document) is not None:
            txn.delete("rejected", self._rejection_key(txn, remote, document, None))

    def clear_rejections(self, txn: Txn, remote: str) -> int:
        """Forget every refusal recorded for ``remote``; returns how many there were."""
        prefix = remote.encode() + b"\x00"
        keys = [key for key, _ in txn.scan("rejected", prefix, prefix_end(prefix))]
        for key in keys:
            txn.delete("rejected", key)
        return len(keys)

    def rejections(self, txn: Txn, remote: str) -> list[Rejection]:
        """Every refusal recorded for ``remote``."""
        prefix = remote.encode() + b"\x00"
        out = []
        for key, raw in txn.scan("rejected", prefix, prefix_end(prefix)):
            doc, number = struct.unpack(">II", key[len(prefix) :])
            seq, code, message = msgpack.unpackb(raw)
            name = self._doc_name(txn, doc)
            out.append(Rejection(name, None if number == _ALL else self._origin_name(txn, number), seq, code, message))
        return out

    def sync_counts(self, txn: Txn, remote: str) -> tuple[int, int]:
        """``(unsynced, rejected)`` toward ``remote``: deltas held here, of any
        origin, not covered by its watermark, split by whether it refused them."""
        blocked: dict[tuple[str, str | None], int] = {
            (r.document, r.origin): r.seq for r in self.rejections(txn, remote)
        }
        unsynced = rejected = 0
        for _, raw in txn.scan("documents", b"i", b"j"):
            document = raw.decode()
            mark = self.watermark(txn, remote, document)
            whole = (document, None) in blocked
            for origin, held in self.version_vector(txn, document).items():
                acked = mark.get(origin, 0)
                missing = max(0, held - acked)
                cut = blocked.get((document, origin))
                refused = missing if whole else 0 if cut is None else max(0, held - max(acked, cut - 1))
                unsynced += missing - refused
                rejected += refused
        return unsynced, rejected

    def peer_records(self, txn: Txn) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(peer id, record)`` of every peer this replica synced with."""
        for key, raw in txn.scan("meta", b"peer.", b"peer/"):
            yield key[len(b"peer.") :].decode(), msgpack.unpackb(raw)

    def peer_record(self, txn: Txn, peer: str) -> dict[str, Any] | None:
        raw = txn.get("meta", b"peer." + peer.encode())
        return None if raw is None else dict(msgpack.unpackb(raw))

    def set_peer_record(self, txn: Txn, peer: str, record: dict[str, Any]) -> None:
        txn.put("meta", b"peer." + peer.encode(), msgpack.packb(record))

    def watermarked_documents(self, txn: Txn, remote: str) -> list[str]:
        """Documents for which ``remote`` has a watermark (shared with it)."""
        prefix = remote.encode() + b"\x00"
        return sorted(
            self._doc_name(txn, _U32.unpack(key[len(prefix) :])[0])
            for key, _ in txn.scan("watermarks", prefix, prefix_end(prefix))
        )

    def not_covered(self, txn: Txn, remote: str, documents: list[str]) -> int:
        """Deltas of ``documents`` held here and not in ``remote``'s watermark."""
        return sum(
            count_missing(self.watermark(txn, remote, document), self.version_vector(txn, document))
            for document in documents
        )


@dataclass(frozen=True)
class Rejection:
    """A remote's lasting refusal of deltas of ``document``: of ``origin``
    from ``seq`` on, or of the whole document when ``origin`` is None."""

    document: str
    origin: str | None
    seq: int
    code: str
    message: str
