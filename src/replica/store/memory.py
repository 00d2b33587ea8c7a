"""The store contract kept in memory: for tests and throw-away replicas."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import contextmanager

from replica.store import TABLES, Store, Txn


class _Table:
    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.values: dict[bytes, bytes] = {}


class _MemoryTxn(Txn):
    def __init__(self, tables: dict[str, _Table], undo: list[tuple[str, bytes, bytes | None]] | None) -> None:
        self._tables = tables
        self._undo = undo

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._tables[table].values.get(key)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        if self._undo is None:
            raise RuntimeError("put() in a read transaction")
        t = self._tables[table]
        old = t.values.get(key)
        if old is None:
            bisect.insort(t.keys, key)
        self._undo.append((table, key, old))
        t.values[key] = bytes(value)

    def delete(self, table: str, key: bytes) -> None:
        if self._undo is None:
            raise RuntimeError("delete() in a read transaction")
        t = self._tables[table]
        old = t.values.pop(key, None)
        if old is not None:
            t.keys.pop(bisect.bisect_left(t.keys, key))
            self._undo.append((table, key, old))

    def scan(self, table: str, start: bytes = b"", stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        t = self._tables[table]
        lo = bisect.bisect_left(t.keys, start)
        hi = len(t.keys) if stop is None else bisect.bisect_left(t.keys, stop)
        for key in t.keys[lo:hi]:
            yield key, t.values[key]

    def last_before(self, table: str, stop: bytes) -> tuple[bytes, bytes] | None:
        t = self._tables[table]
        i = bisect.bisect_left(t.keys, stop)
        if i == 0:
            return None
        key = t.keys[i - 1]
        return key, t.values[key]


class MemoryStore(Store):
    """Tables in memory. Same transaction semantics as the LMDB store."""

    def __init__(self) -> None:
        self._tables = {name: _Table() for name in TABLES}
        self._write: _MemoryTxn | None = None
        self._undo: list[tuple[str, bytes, bytes | None]] = []

    @contextmanager
    def read(self) -> Iterator[Txn]:
        yield self._write if self._write is not None else _MemoryTxn(self._tables, None)

    @contextmanager
    def write(self) -> Iterator[Txn]:
        if self._write is not None:
            yield self._write
            return
        self._undo = []
        self._write = _MemoryTxn(self._tables, self._undo)
        try:
            yield self._write
        except BaseException:
            self._rollback()
            raise
        finally:
            self._write = None

    def _rollback(self) -> None:
        for table, key, old in reversed(self._undo):
            t = self._tables[table]
            present = key in t.values
            if old is None:
                if present:
                    del t.values[key]
                    t.keys.pop(bisect.bisect_left(t.keys, key))
            else:
                if not present:
                    bisect.insort(t.keys, key)
                t.values[key] = old
        self._undo = []

    @property
    def current_write(self) -> Txn | None:
        return self._write

    def close(self) -> None:
        self._write = None
