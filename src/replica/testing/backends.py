"""Where a simulated fleet keeps its replicas: LMDB or memory, with storage faults.

Every store a backend opens is wrapped in a :class:`FaultyStore`, through
which the fleet makes the next commit of one replica fail as a full or broken
disk would (the store raises :class:`~replica.store.StoreFailure` and the
transaction is aborted), so that what happens around a failed commit runs in
the shipped machine like any other step.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from replica.doc import ClientIdSource
from replica.replica import Replica
from replica.store import Store, StoreFailure, Txn
from replica.store.lmdb import LmdbStore
from replica.store.memory import MemoryStore

_MAP_SIZE = 1 << 28


class FaultyStore(Store):
    """A store that fails its next outermost commit when told to."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.fail_next_commit = False

    def read(self) -> AbstractContextManager[Txn]:
        return self.inner.read()

    @contextmanager
    def write(self) -> Iterator[Txn]:
        outermost = not self.inner.in_write
        with self.inner.write() as txn:
            yield txn
            if outermost and self.fail_next_commit:
                self.fail_next_commit = False
                raise StoreFailure("the disk refused the commit (a storage fault of the simulation)")

    @property
    def current_write(self) -> Txn | None:
        return self.inner.current_write

    def close(self) -> None:
        self.inner.close()


class Backend:
    """Where a fleet keeps its replicas; ``reopen`` is a restart after a crash."""

    name = "backend"

    def open(self, replica_id: str, client_ids: ClientIdSource) -> Replica:
        raise NotImplementedError

    def reopen(self, replica: Replica, client_ids: ClientIdSource) -> Replica:
        raise NotImplementedError

    def close(self) -> None:
        """Drop everything kept (after the replicas are closed)."""


class LmdbBackend(Backend):
    """One LMDB data directory per replica under a temporary folder.

    ``fsync=False`` (the default) commits without flushing to the disk: a
    simulated crash closes and reopens the environment in this process, so
    it reads back exactly what was committed either way, and the suite runs
    several times faster. Power loss is ``tests/test_crash.py``'s business.
    """

    name = "lmdb"

    def __init__(self, root: Path | None = None, *, fsync: bool = False) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="replica-fleet-")) if root is None else root
        self.fsync = fsync

    def open(self, replica_id: str, client_ids: ClientIdSource) -> Replica:
        return self._open(self.root / replica_id, replica_id, client_ids)

    def reopen(self, replica: Replica, client_ids: ClientIdSource) -> Replica:
        replica.close()
        assert replica.path is not None
        return self._open(replica.path, None, client_ids)

    def _open(self, path: Path, replica_id: str | None, client_ids: ClientIdSource) -> Replica:
        store = FaultyStore(LmdbStore(path, map_size=_MAP_SIZE, sync=self.fsync))
        replica = Replica(store, replica_id=replica_id, client_ids=client_ids)
        replica.path = path
        return replica

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


class MemoryBackend(Backend):
    """Replicas in memory (what ``Replica.in_memory()`` builds); a reopen
    builds a new replica over the same tables, as a restart would find them."""

    name = "memory"

    def __init__(self) -> None:
        self._stores: dict[str, MemoryStore] = {}

    def open(self, replica_id: str, client_ids: ClientIdSource) -> Replica:
        store = self._stores[replica_id] = MemoryStore()
        return Replica(FaultyStore(store), replica_id=replica_id, client_ids=client_ids)

    def reopen(self, replica: Replica, client_ids: ClientIdSource) -> Replica:
        replica.close()
        return Replica(FaultyStore(self._stores[replica.id]), client_ids=client_ids)

    def close(self) -> None:
        self._stores.clear()


def backend_named(name: str) -> Backend:
    """``"lmdb"`` or ``"memory"``."""
    if name == "lmdb":
        return LmdbBackend()
    if name == "memory":
        return MemoryBackend()
    raise ValueError(f"unknown backend {name!r}; use 'lmdb' or 'memory'")


def commit_fault_pending(replica: Replica) -> bool:
    """True while the next commit of ``replica`` is set to fail."""
    store = replica.store
    return isinstance(store, FaultyStore) and store.fail_next_commit


def fail_next_commit(replica: Replica, fail: bool = True) -> None:
    """Make the next commit of a replica opened by a backend fail (or, with
    ``fail=False``, take that back: the disk was repaired)."""
    store = replica.store
    if not isinstance(store, FaultyStore):
        raise TypeError("only replicas opened by a fleet backend can be given storage faults")
    store.fail_next_commit = fail
