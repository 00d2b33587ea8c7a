"""What a simulated fleet saw, from its sessions and the wire: the checks'
second way of knowing (see ``replica.testing.network`` and ``checks``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from replica.status import SyncStatus
from replica.vv import VersionVector


@dataclass
class RunStart:
    """Where a device-relay run started: what the device held at its hello
    and what the relay held when it answered."""

    device: dict[str, VersionVector]
    relay: dict[str, VersionVector] | None = None


@dataclass
class RelayRun:
    """One relay-facing run of a device, as the sessions show it."""

    link: int
    mode: str
    start: RunStart
    completed_at: float | None = None  #: the device's clock when its session completed
    refused: bool = False  #: the relay refused deltas held on the device when its session completed
    closed: bool = False
    error: Any = None  #: the device session's error when the link closed
    sent: int = 0  #: the session's counts at the last look
    received: int = 0


@dataclass
class Ledger:
    """What the fleet saw, from the sessions and the wire (see the module docstring)."""

    #: Per replica and document: every ``ack`` it sent, merged.
    acked: dict[str, dict[str, VersionVector]] = field(default_factory=dict)
    #: Per replica and document: every delta it sent, merged.
    sent: dict[str, dict[str, VersionVector]] = field(default_factory=dict)
    #: Per replica and document: the version vector at its last announced change.
    announced: dict[str, dict[str, VersionVector]] = field(default_factory=dict)
    #: Per device and document: all that the relay's frames said it holds.
    relay_said: dict[str, dict[str, VersionVector]] = field(default_factory=dict)
    #: Per device: its current relay-facing run (since its last restart).
    relay_runs: dict[str, RelayRun] = field(default_factory=dict)
    #: Per device: the device clock at each completion of a relay-facing run (kept across restarts).
    completions: dict[str, list[float]] = field(default_factory=dict)
    #: Per replica: the last status it published to subscribers (since its last restart).
    published: dict[str, SyncStatus] = field(default_factory=dict)
    #: What broke a rule when it happened (a change announced that the log lacks, say).
    violations: list[str] = field(default_factory=list)
