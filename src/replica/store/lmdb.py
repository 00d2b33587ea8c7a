"""The durable store: one LMDB environment per data directory.

The only module that imports ``lmdb``. Each committed write transaction is
fsynced (``sync=True``), so a delta is on disk when ``write()`` returns. An
exclusive ``flock`` on ``replica.lock`` keeps a second process (or a second
open in this one) from becoming a silent shared writer; the kernel drops the
lock when the process dies, even by SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from replica.errors import DataDirError, ReplicaLocked
from replica.store import TABLES, Store, StoreFailure, Txn

#: Address space reserved for the map; the file only grows as data is written,
#: and the map is doubled when full.
DEFAULT_MAP_SIZE = 1 << 34
LOCK_FILE = "replica.lock"


def holds_store(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a data directory holding an LMDB store."""
    return (Path(path) / "data.mdb").is_file()


class _LmdbTxn(Txn):
    def __init__(self, txn: Any, dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, table: str, key: bytes) -> bytes | None:
        db = self._dbs[table]
        if db is None:
            return None
        value = self._txn.get(key, db=db)
        return None if value is None else bytes(value)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        try:
            self._txn.put(key, value, db=self._dbs[table])
        except lmdb.MapFullError as exc:
            raise _MapFull("the database map is full; it has been enlarged, try again") from exc
        except lmdb.Error as exc:
            raise StoreFailure(f"write failed: {exc}") from exc

    def delete(self, table: str, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[table])

    def scan(self, table: str, start: bytes = b"", stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        if self._dbs[table] is None:
            return
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            if not cursor.set_range(start):
                return
            for key, value in cursor:
                if stop is not None and key >= stop:
                    return
                yield key, value

    def last_before(self, table: str, stop: bytes) -> tuple[bytes, bytes] | None:
        if self._dbs[table] is None:
            return None
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            found = cursor.prev() if cursor.set_range(stop) else cursor.last()
            if not found:
                return None
            key, value = cursor.item()
            return (key, value) if key < stop else None


class LmdbStore(Store):
    """Tables in one LMDB environment under ``path``.

    ``readonly``: read an existing data directory without locking it, while
    another process (a live sync, a peer server) may be writing it: LMDB
    gives every reader a consistent snapshot.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self._readonly = readonly
        self._write: _LmdbTxn | None = None
        if readonly:
            self._lock_fd = -1
            if not holds_store(self.path):
                raise DataDirError(f"no data directory at {self.path}")
            try:
                self._env = lmdb.open(str(self.path), max_dbs=len(TABLES) + 2, readonly=True, lock=True)
                self._dbs = {name: self._existing_db(name) for name in TABLES}
            except lmdb.Error as exc:
                raise DataDirError(f"cannot read the database in {self.path}: {exc}") from exc
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataDirError(f"cannot use data directory {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ReplicaLocked(
                    f"data directory {self.path} is already open in another process or in this one; "
                    "close it there first"
                ) from exc
            raise DataDirError(f"cannot lock data directory {self.path}: {exc.strerror}") from exc
        try:
            self._env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=len(TABLES) + 2, sync=sync, metasync=sync, lock=True
            )
            with self._env.begin(write=True) as txn:
                self._dbs = {name: self._env.open_db(name.encode(), txn=txn) for name in TABLES}
        except lmdb.Error as exc:
            os.close(self._lock_fd)
            raise DataDirError(f"cannot open the database in {self.path}: {exc}") from exc

    def _existing_db(self, name: str) -> Any:
        """A table of a read-only store, or None (read as empty) if the data
        directory predates it: a newer version adds tables when it first
        writes there (``snapshots`` came with compaction)."""
        try:
            return self._env.open_db(name.encode(), create=False)
        except lmdb.NotFoundError:
            return None

    @contextmanager
    def read(self) -> Iterator[Txn]:
        if self._write is not None:
            yield self._write
            return
        with self._env.begin(write=False, buffers=False) as txn:
            yield _LmdbTxn(txn, self._dbs)

    @property
    def readonly(self) -> bool:
        return self._readonly

    @contextmanager
    def write(self) -> Iterator[Txn]:
        if self._readonly:
            raise StoreFailure(f"{self.path} is open for reading only")
        if self._write is not None:
            yield self._write
            return
        txn = self._env.begin(write=True)
        self._write = _LmdbTxn(txn, self._dbs)
        try:
            yield self._write
        except BaseException:
            self._write = None
            txn.abort()
            if isinstance(sys.exc_info()[1], _MapFull):
                self._grow()
            raise
        self._write = None
        try:
            txn.commit()
        except lmdb.MapFullError as exc:
            self._grow()
            raise _MapFull("the database map was full; it has been enlarged, try again") from exc
        except lmdb.Error as exc:
            raise StoreFailure(f"commit failed: {exc}") from exc

    def _grow(self) -> None:
        self._env.set_mapsize(self._env.info()["map_size"] * 2)

    @property
    def current_write(self) -> Txn | None:
        return self._write

    def close(self) -> None:
        if self._write is not None:
            raise RuntimeError("close() inside a write transaction")
        self._env.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)


class _MapFull(StoreFailure):
    """The map filled up; the store grows it once the transaction is gone."""
