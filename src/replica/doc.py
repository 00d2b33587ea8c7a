"""Documents, records and texts: the only module that imports pycrdt.

A :class:`Document` wraps one pycrdt ``Doc``. Every public call that changes it
runs in one Yjs transaction, and the Yjs update that transaction produces is
handed to the owner (the replica) through ``on_commit`` exactly once, when the
outermost transaction ends. ``with doc.transaction():`` groups several calls
into one delta.

Hazards handled here (PYCRDT-FACTS.md):

- values are encoded by ``replica.values`` (pycrdt turns ints into floats);
- ``Text`` indices are UTF-8 byte offsets in pycrdt; ours are code points,
  bound-checked before pycrdt sees them (past-the-end deletes panic);
- foreign bytes are applied under ``except BaseException`` (pyo3 panics are
  not ``Exception``); a failed apply marks the document broken and the owner
  rebuilds it from its log;
- a fresh ``Doc`` (and so a fresh Yjs client id) for every session and every
  rebuild, never a reused one. ``client_ids`` is the hook for deterministic
  tests: a callable handing out ids that must never repeat (see
  ``replica.testing.clientids``); by default pycrdt draws a random one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pycrdt import Doc, Map, TransactionEvent, get_state, get_update, merge_updates
from pycrdt import Text as YText

from replica import values
from replica.errors import DataDirError

log = logging.getLogger("replica.doc")

#: Hands out Yjs client ids; each call must return one never returned before.
ClientIdSource = Callable[[], int]

_LOCAL = "replica.local"
_REMOTE = "replica.remote"
_RECORDS = "records:"
_TEXT = "text:"
# Remote updates of more bytes than this are applied with the Doc unobserved (apply_remote).
_QUIET_APPLY_BYTES = 4096


def _check_key(kind: str, key: object) -> str:
    if type(key) is not str or not key:
        raise TypeError(f"{kind} must be a non-empty str, not {key!r:.80}")
    return key


def merged_state(payloads: Iterable[bytes]) -> bytes:
    """The state of a document holding ``payloads`` (updates in an order that
    applies), as one update: replayed into a fresh ``Doc`` in one transaction,
    then ``get_update()`` (``merge_updates`` is quadratic; PYCRDT-FACTS.md).
    Raises :class:`ValueError` if they do not apply."""
    fresh: Doc[Any] = Doc()
    try:
        with fresh.transaction(origin=_REMOTE):
            for data in payloads:
                fresh.apply_update(data)
        return fresh.get_update()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 PanicException is a BaseException
        raise ValueError(f"the updates do not apply ({type(exc).__name__}: {exc})") from exc


def merged_run(payloads: Sequence[bytes]) -> bytes:
    """Updates merged into one without a document (``merge_updates``: keeps
    every struct whatever the receiver holds; quadratic, so for short runs).
    Raises :class:`ValueError` if they do not merge."""
    return _refusing(merge_updates, *payloads)


def update_state_vector(update: bytes) -> bytes:
    """The Yjs state vector of what ``update`` holds (no document needed).
    Raises :class:`ValueError` if pycrdt refuses the bytes."""
    return _refusing(get_state, update)


def update_missing_from(update: bytes, vector: bytes) -> bytes:
    """What a replica holding Yjs state vector ``vector`` lacks of ``update``.
    Raises :class:`ValueError` if pycrdt refuses either."""
    return _refusing(get_update, update, vector)


def _refusing(call: Callable[..., bytes], *args: bytes) -> bytes:
    try:
        return call(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 PanicException is a BaseException
        raise ValueError(f"pycrdt refused the bytes ({type(exc).__name__}: {exc})") from exc


class Document:
    """A named CRDT document of a replica. Get one with ``replica.doc(name)``."""

    def __init__(
        self, name: str, on_commit: Callable[[Document, bytes], None], *, client_ids: ClientIdSource | None = None
    ) -> None:
        self.name = name
        self._on_commit = on_commit
        self._client_ids = client_ids
        self._depth = 0
        self._captured: list[bytes] = []
        self._records: dict[str, Records] = {}
        self._texts: dict[str, Text] = {}
        self._remote_version = 0
        self._new_ydoc()

    def _fresh_doc(self) -> Doc[Any]:
        return Doc() if self._client_ids is None else Doc(client_id=self._client_ids())

    def _new_ydoc(self) -> None:
        self._ydoc: Doc[Any] = self._fresh_doc()
        self._subscription = self._ydoc.observe(self._observe)

    def _observe(self, event: TransactionEvent) -> None:
        if self._depth:
            self._captured.append(event.update)

    # -- public API ----------------------------------------------------------

    def records(self, collection: str) -> Records:
        """The keyed record collection ``collection`` of this document."""
        found = self._records.get(collection)
        if found is None:
            found = self._records[_check_key("collection name", collection)] = Records(self, collection)
        return found

    def text(self, name: str) -> Text:
        """The text ``name`` of this document."""
        found = self._texts.get(name)
        if found is None:
            found = self._texts[_check_key("text name", name)] = Text(self, name)
        return found

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group the calls inside into one transaction and one delta.

        Yjs cannot roll back: if the block raises, what it already changed
        stays changed and is stored as a delta before the error propagates.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        self._captured = []
        try:
            with self._ydoc.transaction(origin=_LOCAL):
                yield
        finally:
            self._finish()

    def _local(self, change: Callable[..., None], *args: Any) -> None:
        """Run one change as its own transaction (or inside the open one)."""
        if self._depth:
            change(*args)
            return
        self._depth = 1
        self._captured = []
        try:
            with self._ydoc.transaction(origin=_LOCAL):
                change(*args)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._depth = 0
        captured, self._captured = self._captured, []
        for update in captured:
            if update != b"\x00\x00":
                self._on_commit(self, update)

    @property
    def client_id(self) -> int:
        """The Yjs client id of this session (fresh for every open and rebuild)."""
        return int(self._ydoc.client_id)

    def contents(self) -> dict[str, Any]:
        """Everything in the document as plain, canonically ordered values:
        ``{"records": {collection: {id: fields}}, "texts": {name: str}}``."""
        records: dict[str, Any] = {}
        texts: dict[str, str] = {}
        for root in sorted(self._ydoc.keys()):
            if root.startswith(_RECORDS):
                collection = self.records(root[len(_RECORDS) :])
                if len(collection):
                    records[collection.name] = {i: collection.get(i) for i in collection.ids()}
            elif root.startswith(_TEXT):
                text = str(self.text(root[len(_TEXT) :]))
                if text:
                    texts[root[len(_TEXT) :]] = text
        return {"records": records, "texts": texts}

    # -- for the owner (the replica) -----------------------------------------

    def state(self) -> bytes:
        """The whole state, as one update (what a snapshot stores)."""
        return self._ydoc.get_update()

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def apply_remote(self, payloads: Sequence[bytes]) -> tuple[int, str] | None:
        """Apply foreign update bytes, in order, in one transaction. Returns
        None, or the index of the first update pycrdt refused (or panicked
        on) and why; after a failure the document may hold partial state and
        must be rebuilt with :meth:`rebuild`."""
        if self._depth:
            raise RuntimeError("cannot apply remote deltas inside a local transaction")
        self._remote_version += 1
        index = 0
        # The observer is there for local transactions, but pycrdt makes the update of every
        # observed transaction: a remote one of several updates then costs 2-3x its apply.
        # Observing again costs ~7 us, so only a large apply goes unobserved.
        quiet = sum(map(len, payloads)) > _QUIET_APPLY_BYTES
        if quiet:
            self._ydoc.unobserve(self._subscription)
        try:
            with self._ydoc.transaction(origin=_REMOTE):
                for data in payloads:
                    self._ydoc.apply_update(data)
                    index += 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pyo3 PanicException is a BaseException
            return index, f"{type(exc).__name__}: {exc}"
        finally:
            if quiet:
                self._subscription = self._ydoc.observe(self._observe)
        return None

    def close(self) -> None:
        """Drop the pycrdt subscription, which pycrdt keeps alive from Rust
        (out of reach of Python's garbage collector) until unobserved."""
        self._ydoc.unobserve(self._subscription)

    def rebuild(self, payloads: Iterable[bytes]) -> None:
        """Replace the state with a fresh ``Doc`` holding ``payloads`` (the
        log's deltas in applied order). If they do not replay, the document
        keeps its state and :class:`~replica.errors.DataDirError` is raised."""
        fresh = self._fresh_doc()
        try:
            with fresh.transaction(origin=_REMOTE):
                for data in payloads:
                    fresh.apply_update(data)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pyo3 PanicException is a BaseException
            raise DataDirError(
                f"the log of document {self.name!r} does not replay ({type(exc).__name__}: {exc}); "
                "the data directory is damaged: restore it from a backup or sync a fresh copy"
            ) from exc
        self._ydoc.unobserve(self._subscription)
        self._ydoc = fresh
        self._remote_version += 1
        self._subscription = self._ydoc.observe(self._observe)
        for records in self._records.values():
            records._bind()
        for text in self._texts.values():
            text._bind()


class Records:
    """A keyed collection of records (``{field: value}`` dicts) in a document.

    Each record is a Yjs map of fields, so concurrent ``update`` calls that set
    different fields on different devices both survive; the same field set
    concurrently ends with one value everywhere. ``put`` replaces a whole
    record. Values are those of ``replica.values``; anything else is a
    ``TypeError`` and nothing is written.
    """

    def __init__(self, document: Document, name: str) -> None:
        self._document = document
        self.name = name
        self._bind()

    def _bind(self) -> None:
        self._map: Map[Any] = self._document._ydoc.get(_RECORDS + self.name, type=Map)

    def put(self, record_id: str, fields: Mapping[str, values.Value]) -> None:
        """Create or replace the record ``record_id`` with ``fields``."""
        encoded = _encode_fields(_check_key("record id", record_id), fields)
        self._document._local(self._map.__setitem__, record_id, Map(encoded))

    def update(self, record_id: str, fields: Mapping[str, values.Value], *, unset: Iterable[str] = ()) -> None:
        """Set the given fields (and remove those in ``unset``) of an existing
        record, leaving its other fields as they are. ``KeyError`` if there is
        no such record."""
        encoded = _encode_fields(_check_key("record id", record_id), fields)
        removed = [_check_key("field name", name) for name in unset]
        record = self._map.get(record_id)
        if not isinstance(record, Map):
            raise KeyError(record_id)
        if not encoded and not removed:
            return
        self._document._local(_update_record, record, encoded, removed)

    def delete(self, record_id: str) -> None:
        """Delete the record. ``KeyError`` if there is no such record."""
        if record_id not in self._map:
            raise KeyError(record_id)
        self._document._local(self._map.__delitem__, record_id)

    def get(self, record_id: str) -> dict[str, values.Value] | None:
        """The record's fields, or None if there is no such record."""
        record = self._map.get(record_id)
        if not isinstance(record, Map):
            return None
        out = {}
        for name, raw in record.items():
            try:
                out[name] = values.decode(raw)
            except (ValueError, TypeError):
                log.warning("skipping undecodable field %r of record %r in %r", name, record_id, self.name)
        return dict(sorted(out.items()))

    def ids(self) -> list[str]:
        """Record ids, sorted (Yjs key order differs between replicas)."""
        return sorted(self._map.keys())

    def items(self) -> Iterator[tuple[str, dict[str, values.Value]]]:
        """``(id, fields)`` pairs in id order."""
        for record_id in self.ids():
            record = self.get(record_id)
            if record is not None:
                yield record_id, record

    def __len__(self) -> int:
        return len(self._map)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def __contains__(self, record_id: object) -> bool:
        return isinstance(record_id, str) and record_id in self._map

    def __repr__(self) -> str:
        return f"<Records {self.name!r} of {self._document.name!r}: {len(self)} records>"


def _update_record(record: Map[Any], encoded: dict[str, bytes], removed: list[str]) -> None:
    for name, value in encoded.items():
        record[name] = value
    for name in removed:
        if name in record:
            del record[name]


def _encode_fields(record_id: str, fields: Mapping[str, values.Value]) -> dict[str, bytes]:
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields of record {record_id!r} must be a dict, not {type(fields).__name__}")
    encoded = {}
    for name, value in fields.items():
        _check_key("field name", name)
        values.check(value)
        encoded[name] = values.encode(value)
    return encoded


class Text:
    """A collaborative text. Indices are Python string indices (code points)."""

    def __init__(self, document: Document, name: str) -> None:
        self._document = document
        self.name = name
        self._bind()

    def _bind(self) -> None:
        self._text: YText = self._document._ydoc.get(_TEXT + self.name, type=YText)
        # (remote version, length in code points, all ASCII); local edits keep
        # it current, remote ones invalidate it.
        self._cache: tuple[int, int, bool] | None = None

    def _shape(self) -> tuple[int, bool]:
        cache = self._cache
        if cache is None or cache[0] != self._document._remote_version:
            current = str(self._text)
            cache = self._cache = (self._document._remote_version, len(current), current.isascii())
        return cache[1], cache[2]

    def _offset(self, index: int, ascii_only: bool) -> int:
        return index if ascii_only else len(str(self._text)[:index].encode())

    def insert(self, index: int, content: str) -> None:
        """Insert ``content`` before code point ``index`` (0 to ``len(text)``)."""
        if type(content) is not str:
            raise TypeError(f"text content must be str, not {type(content).__name__}")
        length, ascii_only = self._shape()
        if type(index) is not int or not 0 <= index <= length:
            raise IndexError(f"insert at {index!r} outside text {self.name!r} of length {length}")
        if not content:
            return
        self._document._local(self._text.insert, self._offset(index, ascii_only), content)
        self._cache = (self._document._remote_version, length + len(content), ascii_only and content.isascii())

    def delete(self, index: int, length: int = 1) -> None:
        """Delete ``length`` code points starting at ``index``."""
        total, ascii_only = self._shape()
        if type(index) is not int or type(length) is not int or length < 0 or index < 0 or index + length > total:
            raise IndexError(f"delete of {length!r} at {index!r} outside text {self.name!r} of length {total}")
        if not length:
            return
        start = self._offset(index, ascii_only)
        stop = start + length if ascii_only else self._offset(index + length, False)
        self._document._local(self._text.__delitem__, slice(start, stop))
        self._cache = (self._document._remote_version, total - length, ascii_only)

    def __str__(self) -> str:
        return str(self._text)

    def __len__(self) -> int:
        return self._shape()[0]

    def __repr__(self) -> str:
        return f"<Text {self.name!r} of {self._document.name!r}: {len(self)} characters>"
