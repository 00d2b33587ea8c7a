"""The status rules: what the events of a sync run mean for what a UI shows.

Theory of operation
-------------------
Every edge that runs sessions (the device side in ``replica.net``, the peer
server in ``replica.peer``, the simulated fleet in ``replica.testing``) keeps
one :class:`Run` per session and feeds it each event with :func:`step`, which
returns the new run and the :data:`Record`\\ s to store; the edge hands those
to ``Engine.record`` and nothing else. The functions here are pure: they read
the event, a few facts of the session (:class:`SessionFacts`) and the clock
the edge passes in, so the shipped hypothesis machine runs exactly the rules
users run, and a test can call them with no network and no replica.

The rules, each in one place:

- A run is ``SYNCING`` from its start until it completes (``SYNCED``, at the
  clock time of its :class:`~replica.events.Completed`) or fails (``FAILED``,
  with the error that ended it; the first failure is the reason shown).
- Progress (sent / to send, received / to receive) is published with every
  event, not only at the end.
- A completed once-run stays ``SYNCED`` whatever follows (its link closes).
  A completed live run stays ``SYNCED`` when its link drops with an error
  retrying can fix (the live loop reconnects, and that attempt is a new run);
  an error retrying cannot fix makes it ``FAILED``: the live sync stops there.
- A run started toward the relay that reaches a peer leaves the home screen
  (its relay-facing status goes back to ``IDLE``) and is reported as a peer's,
  naming the peer (``Run.peer``): nothing it did is counted as on the relay.
- A peer's outcome is recorded once the run is decided, and only under an id
  the other side proved (``authenticated``): a device that failed the
  handshake could claim any id.
- A relay-facing run that completes while the relay refuses any delta held
  here (refused in this run or before, and still held back) is ``FAILED``
  with ``changes_refused``, which retrying cannot fix: the home screen never
  says "Data Synced" while changes are not on the relay. Its message names
  how many changes, in which documents, and why.
- ``last_synced_at`` moves only when a relay-facing run completes with
  nothing refused.
- A run is ``connected`` from the other side's welcome until its link
  closes. A live sync waiting to reconnect says when it tries next
  (``retry_at``, by the clock of the node); the next attempt is a new run.
- A run stopped by its caller (a cancelled sync) is no longer connected nor
  waiting; if it had not completed it is ``FAILED`` with ``stopped``, which
  retrying can fix.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from replica.errors import ErrorInfo
from replica.events import Closed, Completed, Connected, Event
from replica.status import Progress, Rejected, SyncState

#: The error of a run whose link closed with no reason given.
LOST = ErrorInfo("connection_lost", "the connection closed before the end", True)
#: The error of a run its caller stopped before it completed.
STOPPED = ErrorInfo("stopped", "the sync was stopped before it finished", True)
#: The code of a run that completed while the relay refuses changes held here.
CHANGES_REFUSED = "changes_refused"

#: Reads the relay's lasting refusals of deltas held here (``Engine.refused``).
Refusals = Callable[[], Sequence[Rejected]]


class Facing(enum.Enum):
    """Whose status a run feeds."""

    RELAY = "relay"  #: the home screen's (``Engine.status``)
    PEER = "peer"  #: one peer's (``Engine.peers``)


class SessionFacts(Protocol):
    """What the rules read of a session (``replica.session.Session`` has it)."""

    @property
    def mode(self) -> str: ...

    @property
    def authenticated(self) -> bool: ...

    @property
    def remote_id(self) -> str | None: ...

    @property
    def sent(self) -> int: ...

    @property
    def to_send(self) -> int: ...

    @property
    def received(self) -> int: ...

    @property
    def to_receive(self) -> int: ...


@dataclass(frozen=True)
class Run:
    """Where one sync run stands."""

    facing: Facing
    state: SyncState = SyncState.SYNCING
    progress: Progress = field(default_factory=Progress)
    error: ErrorInfo | None = None
    synced_at: float | None = None  #: when it completed, by the clock of the node that ran it
    peer: str | None = None  #: the other side's replica id, when it is a device serving peers
    connected: bool = False  #: the other side welcomed this run and its link is open
    retry_at: float | None = None  #: when a live sync tries to reconnect, after this run ended
    relay: str | None = None  #: the URL this relay-facing run connects to (of several: the one tried now)

    @property
    def decided(self) -> bool:
        """True once the run completed or failed."""
        return self.state in (SyncState.SYNCED, SyncState.FAILED)


@dataclass(frozen=True)
class RelayStatus:
    """Record: the home screen's run is now ``run``."""

    run: Run


@dataclass(frozen=True)
class PeerResult:
    """Record: the last run with ``peer`` ended; ``synced_at`` is set if it
    completed, ``error`` if it failed; ``to_receive`` is what the peer held
    that is still missing here."""

    peer: str
    synced_at: float | None
    error: ErrorInfo | None
    to_receive: int


Record = RelayStatus | PeerResult

#: The home screen's status before any run (and after a run left it).
IDLE = Run(Facing.RELAY, SyncState.IDLE)


def start(facing: Facing, relay: str | None = None) -> tuple[Run, list[Record]]:
    """A run begins: ``SYNCING`` with no progress yet, toward the relay at URL ``relay`` if known."""
    run = Run(facing, relay=relay)
    return run, _records(None, run, None)


def progress_of(session: SessionFacts) -> Progress:
    """The session's counts of deltas, as a UI shows them."""
    return Progress(session.sent, session.to_send, session.received, session.to_receive)


def step(
    run: Run, event: Event, session: SessionFacts, now: float, *, refused: Refusals | None = None
) -> tuple[Run, list[Record]]:
    """The run after ``event`` of ``session`` at time ``now``, and what to
    store. ``refused`` reads the relay's refusals when a relay-facing run completes."""
    new = replace(run, progress=progress_of(session))
    if isinstance(event, Connected):
        new = replace(new, connected=True)
        if event.remote_role != "relay":
            new = replace(new, facing=Facing.PEER, peer=event.remote_id)
    elif isinstance(event, Completed) and not run.decided:
        relay = run.facing is Facing.RELAY
        held_back = [r for r in refused() if r.count] if relay and refused is not None else []
        if held_back:
            new = replace(new, state=SyncState.FAILED, error=refusal_error(held_back))
        else:
            new = replace(new, state=SyncState.SYNCED, error=None, synced_at=now)
    elif isinstance(event, Closed):
        new = _closed(new, event.error, session)
    return new, _records(run, new, session)


def fail(run: Run, error: ErrorInfo, session: SessionFacts) -> tuple[Run, list[Record]]:
    """The run ended without a session event saying why (a connection that
    could not be made, a transport that gave up): as if closed with ``error``."""
    new = _closed(replace(run, progress=progress_of(session)), error, session)
    return new, _records(run, new, session)


def waiting(run: Run, retry_at: float) -> tuple[Run, list[Record]]:
    """A live sync whose ``run`` ended tries again at ``retry_at``."""
    new = replace(run, connected=False, retry_at=retry_at)
    return new, _records(run, new, None)


def stop(run: Run, session: SessionFacts) -> tuple[Run, list[Record]]:
    """The caller stopped the sync (``run`` may be connected, or waiting to reconnect)."""
    new = _closed(replace(run, progress=progress_of(session), retry_at=None), STOPPED, session)
    return new, _records(run, new, session)


def _closed(run: Run, error: ErrorInfo | None, session: SessionFacts) -> Run:
    run = replace(run, connected=False)
    if run.state is SyncState.FAILED:
        return run  # the first failure is the reason
    if run.state is SyncState.SYNCED and (session.mode == "once" or error is None or error.retryable):
        return run  # it completed; a drop after that is the next run's business
    return replace(run, state=SyncState.FAILED, error=error or LOST)


def _records(old: Run | None, new: Run, session: SessionFacts | None) -> list[Record]:
    out: list[Record] = []
    if old is not None and old.facing is Facing.RELAY and new.facing is Facing.PEER:
        out.append(RelayStatus(IDLE))  # it was a peer: the home screen is not about it
    if new.facing is Facing.RELAY:
        if new != old:
            out.append(RelayStatus(new))
        return out
    decided_now = old is None or (old.state, old.error, old.facing) != (new.state, new.error, new.facing)
    if new.decided and decided_now and session is not None and session.authenticated and session.remote_id:
        missing = max(0, session.to_receive - session.received)
        synced_at = new.synced_at if new.state is SyncState.SYNCED else None
        out.append(PeerResult(session.remote_id, synced_at, new.error, missing))
    return out


def refusal_error(refusals: Sequence[Rejected]) -> ErrorInfo:
    """The error of a run after which the relay still refuses ``refusals``."""
    parts = [f"{r.count} change{'s' if r.count != 1 else ''} to {r.document}: {r.message}" for r in refusals]
    hint = (
        "ask the relay operator for a credential that covers them"
        if any(r.code == "document_out_of_scope" for r in refusals)
        else "they stay on this device; ask the relay operator"
    )
    return ErrorInfo(CHANGES_REFUSED, f"the relay refused {'; '.join(parts)}; {hint}", False)


def ends_link(event: Event, mode: str) -> bool:
    """True if the initiator closes the link after ``event``: a once-run that completed."""
    return isinstance(event, Completed) and mode == "once"
