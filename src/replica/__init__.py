"""replica: CRDT replication for devices that work offline in the field."""

from __future__ import annotations

from replica.delta import Delta
from replica.doc import Document, Records, Text
from replica.engine import Engine
from replica.errors import (
    DataDirError,
    DeltaRejected,
    ErrorInfo,
    ReplicaError,
    ReplicaIdMismatch,
    ReplicaLocked,
    StorageError,
)
from replica.events import IngestResult
from replica.replica import Replica
from replica.status import Progress, SyncState, SyncStatus

__all__ = [
    "DataDirError",
    "Delta",
    "DeltaRejected",
    "Document",
    "Engine",
    "ErrorInfo",
    "IngestResult",
    "Progress",
    "Records",
    "Replica",
    "ReplicaError",
    "ReplicaIdMismatch",
    "ReplicaLocked",
    "StorageError",
    "SyncState",
    "SyncStatus",
    "Text",
]

__version__ = "0.1.0"
