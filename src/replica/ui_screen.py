"""What the Sync screen shows: a pure function of a status and a few facts.

:func:`screen` turns the relay-facing :class:`~replica.status.SyncStatus`,
the peers' :class:`~replica.status.PeerStatus` and what the screen's
controller knows (:class:`Facts`: who is logged in, whether live mode is on,
which sync the user started and how it ended) into one JSON-ready dictionary,
worded from the message catalog (``replica.ui_text``). The page only renders
it; nothing in the page, and nothing here, decides a status: the headline is
``SyncStatus.headline``, whether Retry is offered is ``ErrorInfo.retryable``,
the refusals are ``SyncStatus.rejections``. So the page can say "Data Synced"
only when the status does.

The parts of the dictionary:

- ``card``: the headline of the status, the unsynced count, last synced,
  and ``rejected`` (every refusal of the relay that holds changes back, with
  its reason: never hidden);
- ``sync``: whether "Sync Data" can be pressed, and why not;
- ``overlay``: while a sync the user started runs ("Sync in Progress", with
  sent / to send and received / to receive), else None;
- ``popup``: how the last sync the user started ended, until closed, else None;
- ``peers``: nearby devices, each with its state and "Sync with <device>".
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from replica.errors import ErrorInfo
from replica.status import Headline, PeerStatus, SyncState, SyncStatus
from replica.ui_text import Catalog

#: The kinds of record the registration form saves, and their number field.
KINDS = ("household", "delivery")


@dataclass(frozen=True)
class Target:
    """A nearby device to sync with: its name on the screen, its URL, and
    its replica id once a sync with it told it."""

    name: str
    url: str
    peer_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How a sync the user started ended: the status the sync returned,
    toward the relay (``peer`` None) or with the nearby device ``peer``;
    ``error`` when the sync could not run at all."""

    final: SyncStatus
    peer: Target | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class Facts:
    """What the screen's controller knows besides the statuses."""

    name: str  #: the device's name on the screen
    replica_id: str
    relay: bool = False  #: a relay URL is configured
    logged_in: str | None = None  #: who logged in, if anyone
    live: bool = False  #: live mode is on
    running: Target | None = None  #: the sync the user started runs with this peer...
    running_relay: bool = False  #: ...or with the relay
    outcome: Outcome | None = None  #: how the last one ended (until the popup is closed)
    targets: Sequence[Target] = ()
    discovery: bool = False  #: finding nearby devices is installed
    areas: Sequence[str] = ()  #: the documents the registration form writes to


def clock(at: float) -> str:
    """A time of day as the screen shows it."""
    return time.strftime("%H:%M:%S", time.localtime(at))


def screen(status: SyncStatus, peers: Mapping[str, PeerStatus], facts: Facts, catalog: Catalog) -> dict[str, Any]:
    """The whole screen, worded in ``catalog``'s language."""
    return {
        "device": {"name": facts.name, "replica_id": facts.replica_id},
        "language": catalog.language,
        "text": catalog.static(),
        "login": {
            "logged_in": facts.logged_in is not None,
            "line": "" if facts.logged_in is None else catalog.text("login.as", name=facts.logged_in),
        },
        "card": card(status, catalog),
        "sync": sync_button(facts, catalog),
        "live": {"on": facts.live, "available": facts.relay},
        "overlay": overlay(status, facts, catalog),
        "popup": None if facts.outcome is None else popup(facts.outcome, status, catalog),
        "peers": peer_rows(peers, facts, catalog),
        "discovery": facts.discovery,
        "form": {
            "areas": list(facts.areas),
            "kinds": [{"kind": kind, "label": catalog.text(f"form.kind.{kind}")} for kind in KINDS],
        },
    }


def card(status: SyncStatus, catalog: Catalog) -> dict[str, Any]:
    """The home screen's card: the headline, the count, and what the relay refuses."""
    headline = status.headline
    lines = []
    if headline is not Headline.UNSYNCED:
        lines.append(catalog.text("card.count", count=status.unsynced))
    if headline is Headline.FAILED and status.error is not None:
        lines.append(status.error.message)
    if status.connected:
        lines.append(catalog.text("card.connected"))
    when = status.last_synced_at
    rejected = [
        {
            "document": item.document,
            "count": item.count,
            "code": item.code,
            "line": catalog.text("card.rejected_line", count=item.count, document=item.document, reason=item.message),
        }
        for item in status.rejections
        if item.count
    ]
    return {
        "headline": headline.name.lower(),
        "title": catalog.text(f"headline.{headline.name.lower()}"),
        "count": status.unsynced,
        "lines": lines,
        "last_synced": catalog.text("card.never_synced")
        if when is None
        else catalog.text("card.last_synced", time=clock(when)),
        "rejected_count": status.rejected,
        "rejected_title": catalog.text("card.rejected_title", count=status.rejected) if rejected else "",
        "rejected": rejected,
    }


def sync_button(facts: Facts, catalog: Catalog) -> dict[str, Any]:
    """Whether "Sync Data" can be pressed, and the note that says why not."""
    if not facts.relay:
        return {"enabled": False, "note": catalog.text("sync.no_relay")}
    if facts.live:
        return {"enabled": False, "note": catalog.text("sync.live_note")}
    busy = facts.running is not None or facts.running_relay
    return {"enabled": not busy, "note": ""}


def overlay(status: SyncStatus, facts: Facts, catalog: Catalog) -> dict[str, Any] | None:
    """The overlay, "Sync in Progress", over the whole page while a sync the user started runs."""
    if facts.running is not None:
        return {
            "title": catalog.text("overlay.peer_title", device=facts.running.name),
            "lines": [catalog.text("overlay.wait")],
            "progress": None,
        }
    if not facts.running_relay:
        return None
    p = status.progress
    if status.state is SyncState.SYNCING and (p.to_send or p.to_receive or p.sent or p.received):
        lines = [
            catalog.text("overlay.sent", sent=p.sent, to_send=p.to_send),
            catalog.text("overlay.received", received=p.received, to_receive=p.to_receive),
        ]
    else:
        lines = [catalog.text("overlay.connecting")]
    progress = {"sent": p.sent, "to_send": p.to_send, "received": p.received, "to_receive": p.to_receive}
    return {
        "title": catalog.text("overlay.title"),
        "lines": [*lines, catalog.text("overlay.wait")],
        "progress": progress,
    }


def popup(outcome: Outcome, now: SyncStatus, catalog: Catalog) -> dict[str, Any]:
    """The outcome of a sync the user started, as the popup shows it while
    the status is ``now`` (a change saved since the run makes it say so,
    not "Data Synced")."""
    shown = popup_of(outcome, now, catalog)
    shown["peer_url"] = None if outcome.peer is None else outcome.peer.url  # where Retry syncs again
    return shown


def popup_of(outcome: Outcome, now: SyncStatus, catalog: Catalog) -> dict[str, Any]:
    final = outcome.final
    error = outcome.error or (final.error if final.state is SyncState.FAILED else None)
    device = outcome.peer.name if outcome.peer is not None else final.peer
    if error is not None:
        title = catalog.text("popup.failed") if device is None else catalog.text("popup.peer_failed", device=device)
        hint = catalog.text("popup.retry_hint" if error.retryable else "popup.no_retry_hint")
        return {
            "kind": "failed",
            "title": title,
            "lines": [error.message, hint],
            "code": catalog.text("popup.code", code=error.code),
            "error_code": error.code,
            "retry": catalog.text("popup.retry") if error.retryable else None,
        }
    if device is not None:
        return {
            "kind": "peer_synced",
            "title": catalog.text("popup.peer_synced", device=device),
            "lines": [catalog.text("popup.peer_body", count=final.unsynced)],
            "code": None,
            "error_code": None,
            "retry": None,
        }
    if final.headline is Headline.SYNCED and now.headline is Headline.SYNCED:
        return {
            "kind": "synced",
            "title": catalog.text("popup.synced"),
            "lines": [catalog.text("popup.synced_body")],
            "code": None,
            "error_code": None,
            "retry": None,
        }
    # The run completed, and changes saved meanwhile (or since) wait for the next one: not "Data Synced".
    return {
        "kind": "unsynced",
        "title": catalog.text("popup.more"),
        "lines": [catalog.text("popup.more_body", count=max(final.unsynced, now.unsynced))],
        "code": None,
        "error_code": None,
        "retry": catalog.text("popup.again"),
    }


def peer_rows(peers: Mapping[str, PeerStatus], facts: Facts, catalog: Catalog) -> list[dict[str, Any]]:
    """The nearby devices to sync with, then the others this device synced with (they dialled it)."""
    rows = []
    shown = set()
    for target in facts.targets:
        known = peers.get(target.peer_id) if target.peer_id is not None else None
        shown.add(target.peer_id)
        rows.append(
            {
                "name": target.name,
                "url": target.url,
                "peer_id": target.peer_id,
                "button": catalog.text("peers.sync_with", device=target.name),
                "busy": facts.running is not None and facts.running.url == target.url,
                "lines": peer_lines(known, catalog),
            }
        )
    for peer_id, known in sorted(peers.items()):
        if peer_id not in shown:
            rows.append(
                {
                    "name": peer_id,
                    "url": None,
                    "peer_id": peer_id,
                    "button": None,
                    "busy": False,
                    "lines": peer_lines(known, catalog),
                }
            )
    return rows


def peer_lines(known: PeerStatus | None, catalog: Catalog) -> list[str]:
    """One peer's state, as :meth:`replica.Replica.peers` reports it."""
    if known is None:
        return [catalog.text("peers.never")]
    lines = [catalog.text("peers.state", to_send=known.to_send, to_receive=known.to_receive)]
    when = known.last_synced_at
    lines.append(catalog.text("peers.never") if when is None else catalog.text("peers.last", time=clock(when)))
    if known.error is not None:
        lines.append(catalog.text("peers.error", message=known.error.message))
    return lines
