"""Typed errors: every error that reaches a user has a stable code, a message a
field supervisor can act on, and says whether retrying can help.

Two families, as in h11: :class:`ReplicaError` subclasses that also derive from
the matching builtin (``ValueError``, ``KeyError``...) when the caller misused
the API, and plain :class:`ReplicaError` subclasses when something outside the
caller's control failed (the disk, a peer's bytes).
"""

from __future__ import annotations

from dataclasses import dataclass


class ReplicaError(Exception):
    """Base class of every error raised by replica.

    ``code`` is stable across releases (UIs and logs may match on it),
    ``message`` is meant for a person, ``retryable`` says whether the same
    operation may succeed if simply tried again later.
    """

    code = "replica_error"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def info(self) -> ErrorInfo:
        """A plain, immutable summary suitable for a status snapshot."""
        return ErrorInfo(code=self.code, message=self.message, retryable=self.retryable)

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


@dataclass(frozen=True)
class ErrorInfo:
    """What a UI shows of an error: code, human message, whether Retry can help."""

    code: str
    message: str
    retryable: bool


class ReplicaLocked(ReplicaError):
    """The data directory is already open in another process (or this one)."""

    code = "replica_locked"
    retryable = True


class ReplicaIdMismatch(ReplicaError, ValueError):
    """The data directory belongs to another replica id than the one asked for."""

    code = "replica_id_mismatch"


class DataDirError(ReplicaError):
    """The data directory cannot be used (unreadable, wrong format, corrupt)."""

    code = "data_dir_error"


class StorageError(ReplicaError):
    """The disk refused a write (full, read-only, I/O error). Nothing was lost
    that a call had returned for; the replica reloaded its state from disk."""

    code = "storage_error"
    retryable = True


class DeltaRejected(ReplicaError):
    """A delta from another replica was refused and not stored.

    ``reason`` is one of the ``REJECT_*`` codes below; the error names the
    document, the origin replica and the seq so that an operator can find the
    delta that was refused.
    """

    code = "delta_rejected"

    def __init__(self, reason: str, message: str, *, document: str, origin: str, seq: int) -> None:
        what = f"delta {origin}#{seq}" if seq else "the state (snapshot)"  # seq 0: a document's whole state
        super().__init__(
            f"{what} of document {document!r} refused: {message}",
            code=reason,
            retryable=reason in RETRYABLE_REJECTS,
        )
        self.reason = reason
        self.document = document
        self.origin = origin
        self.seq = seq


#: The delta's seq does not follow the last one held from its origin; the
#: missing deltas must come first. Retrying after a full sync can succeed.
REJECT_GAP = "delta_gap"
#: The bytes do not match the checksum computed at the origin.
REJECT_CHECKSUM = "delta_checksum"
#: The delta is larger than this replica accepts.
REJECT_TOO_LARGE = "delta_too_large"
#: The bytes are not a Yjs update (pycrdt refused them or panicked).
REJECT_MALFORMED = "delta_malformed"
#: Another delta with the same origin and seq but other bytes is already held:
#: two devices share a replica id. Needs an operator.
REJECT_CLASH = "replica_id_clash"
#: The delta's fields are not of the expected types or ranges.
REJECT_INVALID = "delta_invalid"

RETRYABLE_REJECTS = frozenset({REJECT_GAP})
