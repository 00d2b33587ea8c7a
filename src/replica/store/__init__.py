"""A small ordered key-value interface under the delta log.

The log (``replica.log``) owns what keys mean; a store only keeps bytes in
named tables, ordered by key, with transactions. ``store.lmdb`` is the durable
default and the only module that imports lmdb; ``store.memory`` keeps the same
contract in memory for tests and throw-away replicas.

Write transactions are reentrant: a ``write()`` inside another joins it, and
only the outermost commits. That is how ``Replica.batch()`` groups many deltas
into one commit (one fsync). ``read()`` inside a write sees its uncommitted
changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager

TABLES = ("meta", "documents", "origins", "deltas", "index", "watermarks", "rejected", "snapshots", "partials")


class Txn(ABC):
    """Operations inside one transaction. Keys and values are bytes."""

    @abstractmethod
    def get(self, table: str, key: bytes) -> bytes | None: ...

    @abstractmethod
    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    @abstractmethod
    def delete(self, table: str, key: bytes) -> None: ...

    @abstractmethod
    def scan(self, table: str, start: bytes = b"", stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Items with ``start <= key < stop`` in key order."""

    @abstractmethod
    def last_before(self, table: str, stop: bytes) -> tuple[bytes, bytes] | None:
        """The item with the greatest key ``< stop``, if any."""


class Store(ABC):
    """A set of ordered tables with transactions."""

    @abstractmethod
    def read(self) -> AbstractContextManager[Txn]: ...

    @abstractmethod
    def write(self) -> AbstractContextManager[Txn]:
        """A write transaction: committed when the outermost ``write()`` exits
        normally, aborted if it exits with an exception."""

    @property
    @abstractmethod
    def current_write(self) -> Txn | None:
        """The open write transaction, if any (joined by nested ``write()``)."""

    @property
    def readonly(self) -> bool:
        """True if this store only reads (``write()`` fails)."""
        return False

    @property
    def in_write(self) -> bool:
        """True while a write transaction is open."""
        return self.current_write is not None

    @abstractmethod
    def close(self) -> None: ...


class StoreFailure(Exception):
    """The backend refused an operation (disk full, I/O error). Raised by
    stores; the replica turns it into :class:`~replica.errors.StorageError`."""


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
