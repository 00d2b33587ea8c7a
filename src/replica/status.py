"""What a UI shows about syncing: immutable :class:`SyncStatus` snapshots.

The home screen of a field app asks four questions, and a snapshot answers
them: how many changes are not yet safe on the relay (``unsynced``), is a sync
running (``state`` and ``progress``), did the last one succeed
(``last_synced_at``) and, if not, why and can it be retried (``error``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from replica.errors import ErrorInfo


class SyncState(enum.Enum):
    """Where syncing stands."""

    IDLE = "idle"  #: no sync has run since the replica was opened
    SYNCING = "syncing"  #: a sync is running
    SYNCED = "synced"  #: the last sync completed: everything it covered is on the relay
    FAILED = "failed"  #: the last sync did not complete; see ``error``


class Headline(enum.Enum):
    """The line a home screen shows, as :attr:`SyncStatus.headline` decides it."""

    SYNCING = "Sync in Progress"  #: a sync is running
    FAILED = "Sync Failed"  #: the last sync failed (see ``error``)
    SYNCED = "Data Synced"  #: the last sync completed and nothing is unsynced
    UNSYNCED = "Data unsynced"  #: anything else: the count is what matters


@dataclass(frozen=True)
class Progress:
    """Counts of deltas in the current (or last) sync run."""

    sent: int = 0
    to_send: int = 0
    received: int = 0
    to_receive: int = 0


@dataclass(frozen=True)
class SyncStatus:
    """A snapshot of the sync state of a replica toward its relay.

    ``unsynced`` is derived from the log and the relay's durable watermark each
    time a snapshot is taken, never from a counter, so it is right after a crash
    and a reopen.
    """

    state: SyncState
    unsynced: int
    rejected: int = 0
    progress: Progress = Progress()
    last_synced_at: float | None = None
    error: ErrorInfo | None = None
    rejections: tuple[Rejected, ...] = ()
    #: The status a sync call returns, when the other side was a device
    #: serving peers (its replica id), not the relay: ``unsynced`` did not move.
    peer: str | None = None
    #: A link to the relay is open now and the relay welcomed it.
    connected: bool = False
    #: When a live sync whose link ended tries to reconnect (epoch seconds), else None.
    retry_at: float | None = None
    #: The URL of the relay the current (or last) run connects to: with
    #: several (failover), the one that answered when ``connected``.
    relay: str | None = None

    @property
    def headline(self) -> Headline:
        """Which of the four lines a home screen shows (the one place that
        decides it: :attr:`label` words it in English, a UI's message catalog
        in its own language)."""
        if self.state is SyncState.SYNCING:
            return Headline.SYNCING
        if self.state is SyncState.FAILED and self.error is not None:
            return Headline.FAILED
        if self.state is SyncState.SYNCED and self.unsynced == 0:
            return Headline.SYNCED
        return Headline.UNSYNCED

    @property
    def label(self) -> str:
        """The line a home screen shows."""
        headline = self.headline
        if headline is Headline.FAILED and self.error is not None:
            retry = "retry can help" if self.error.retryable else "retrying will not help"
            return f"Sync Failed: {self.error.message} ({retry})"
        if headline is Headline.UNSYNCED:
            return f"Data unsynced: {self.unsynced}"
        return str(headline.value)

    @property
    def lines(self) -> list[str]:
        """What a home screen card shows, one line each."""
        out = [self.label]
        if self.state is SyncState.SYNCING and (self.progress.to_send or self.progress.to_receive):
            p = self.progress
            out.append(f"sent {p.sent}/{p.to_send}, received {p.received}/{p.to_receive}")
        if self.state is not SyncState.SYNCED and self.label != f"Data unsynced: {self.unsynced}":
            out.append(f"Data unsynced: {self.unsynced}")
        return out + self.refusal_lines

    @property
    def refusal_lines(self) -> list[str]:
        """One line per refusal of the relay that still holds changes back."""
        return [
            f"Refused by the relay: {item.count} changes to {item.document} ({item.message})"
            for item in self.rejections
            if item.count
        ]


@dataclass(frozen=True)
class Rejected:
    """Deltas the relay refused for good, with its reason."""

    document: str
    origin: str | None  #: None: the whole document was refused
    count: int
    code: str
    message: str


@dataclass(frozen=True)
class PeerStatus:
    """Where syncing with one peer device stands.

    ``to_send``: deltas here that the peer has not acknowledged, in the
    documents shared with it so far (derived from the log and the peer's
    watermark); ``to_receive``: what the peer held that was still missing here
    when the last sync with it ended.
    """

    peer_id: str
    to_send: int
    to_receive: int
    last_synced_at: float | None
    error: ErrorInfo | None
