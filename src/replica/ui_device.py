"""The Sync screen's controller: one device's replica and what its user did.

:class:`Device` holds an open :class:`~replica.replica.Replica` and does what
the screen's buttons ask: sync with the relay ("Sync Data", Retry, the
morning "Log in"), live mode on and off, sync with a nearby device, save a
record. It knows which sync the user started and how it ended (the popup),
and publishes the screen (``replica.ui_screen``) to every viewer at each
change: each status the replica publishes (``Replica.subscribe``), and each
change of its own. Viewers read the screens through :meth:`Device.screens`,
which hands each one the latest screen and skips those it was too slow to
see, so a slow page never holds memory.

Nothing here speaks HTTP (``replica.ui_http`` does) or decides a status
(``replica.runs`` does; ``replica.ui_screen`` words it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from replica.errors import ErrorInfo, ReplicaError
from replica.replica import Replica
from replica.status import SyncStatus
from replica.ui_feed import Feed
from replica.ui_screen import KINDS, Facts, Outcome, Target, screen
from replica.ui_text import Catalog

log = logging.getLogger("replica.ui_device")

#: The area (document) the registration form writes to when none is given.
DEFAULT_AREA = "campaign-7/households"
#: Longest text field of a record the form saves, and the largest number.
MAX_TEXT = 200
MAX_NUMBER = 10_000


#: What the popup says when a sync stopped on a fault of this program (logged with its traceback).
CRASHED = ErrorInfo("sync_crashed", "the sync stopped on an unexpected error (logged on the device); try again", True)


class ActionError(ReplicaError):
    """A button pressed when it cannot do anything (no relay, a sync runs),
    or a form filled in wrong: nothing was done."""


def action_error(code: str, message: str) -> ActionError:
    return ActionError(message, code=code, retryable=False)


class Device:
    """The screen of one device, over its open replica (which it does not close)."""

    def __init__(
        self,
        replica: Replica,
        *,
        name: str | None = None,
        relay: str | None = None,
        credential: str | None = None,
        targets: Sequence[Target] = (),
        areas: Sequence[str] = (DEFAULT_AREA,),
        catalog: Catalog | None = None,
        timeout: float = 30.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.replica = replica
        self.tls = tls  # how a wss:// relay is verified (None: the system's trust store)
        self.name = name or replica.id
        self.relay = relay
        self.credential = credential
        self.catalog = catalog or Catalog()
        self.timeout = timeout
        self.facts = Facts(
            name=self.name,
            replica_id=replica.id,
            relay=relay is not None,
            targets=tuple(targets),
            discovery=importlib.util.find_spec("zeroconf") is not None,
            areas=tuple(areas),
        )
        self._task: asyncio.Task[None] | None = None
        self._live: asyncio.Task[SyncStatus] | None = None
        #: The screen, pushed to every viewer at each change.
        self.feed: Feed[dict[str, Any]] = Feed(self.screen)
        self._unsubscribe = replica.subscribe(lambda status: self._publish())

    # -- what the screen shows -------------------------------------------------

    def screen(self) -> dict[str, Any]:
        """The screen now."""
        return screen(self.replica.status(), self.replica.peers(), self.facts, self.catalog)

    async def screens(self, stop: asyncio.Event) -> AsyncIterator[dict[str, Any]]:
        """The current screen, then each new one (the latest, when several
        came between two reads), until ``stop`` is set or the device closes."""
        async for value in self.feed.values(stop):
            yield value

    def _set(self, **changes: Any) -> None:
        self.facts = replace(self.facts, **changes)
        self._publish()

    def _publish(self) -> None:
        if not self.replica.closed:
            self.feed.publish()

    # -- the buttons -------------------------------------------------------------

    def start_sync(self) -> None:
        """The "Sync Data" button (and Retry): one sync with the relay, shown by the overlay, then the popup."""
        if self.relay is None:
            raise action_error("no_relay", "this device has no server address; start it with --relay URL")
        if self.facts.live:
            raise action_error("live_on", "live sync is on: changes already go to the server as they are saved")
        self._check_idle()
        relay = self.relay
        self._start(self.replica.sync(relay, credential=self.credential, timeout=self.timeout, tls=self.tls), None)

    def start_peer_sync(self, url: str) -> None:
        """The "Sync with <device>" button: one sync with a nearby device serving peers."""
        target = next((t for t in self.facts.targets if t.url == url), None)
        if target is None:
            raise action_error("unknown_peer", f"no nearby device at {url!r} on this screen; add it first")
        self._check_idle()
        self._start(self.replica.sync(url, peer=True, timeout=self.timeout), target)

    def log_in(self, who: str | None = None) -> None:
        """The morning login: the user is logged in, and a sync starts (unless live mode already syncs)."""
        self._set(logged_in=who or self.name)
        if self.relay is not None and not self.facts.live and not self.busy:
            self.start_sync()

    def log_out(self) -> None:
        self._set(logged_in=None)

    def close_popup(self) -> None:
        """Close: back to the home screen."""
        self._set(outcome=None)

    @property
    def busy(self) -> bool:
        """A sync the user started is running."""
        return self._task is not None and not self._task.done()

    def _check_idle(self) -> None:
        if self.busy:
            raise action_error("sync_running", "a sync is already running; wait for its outcome")

    def _start(self, syncing: Awaitable[SyncStatus], target: Target | None) -> None:
        self._set(outcome=None, running=target, running_relay=target is None)
        self._task = asyncio.get_running_loop().create_task(self._follow(syncing, target))

    async def _follow(self, syncing: Awaitable[SyncStatus], target: Target | None) -> None:
        try:
            final = await syncing
            outcome = Outcome(final, target)
        except ReplicaError as exc:  # the sync could not run at all (a closed replica, say)
            log.warning("the sync could not run: %s", exc)
            if self.replica.closed:
                return
            outcome = Outcome(self.replica.status(), target, exc.info())
        except Exception as exc:  # a fault here: shown as a failure, so the overlay never stays up
            log.error("the sync stopped on an unexpected error", exc_info=exc)
            if self.replica.closed:
                return
            outcome = Outcome(self.replica.status(), target, CRASHED)
        if target is not None and outcome.final.peer is not None and target.peer_id != outcome.final.peer:
            found = replace(target, peer_id=outcome.final.peer)
            targets = tuple(found if t.url == target.url else t for t in self.facts.targets)
            outcome = replace(outcome, peer=found)
            self._set(targets=targets)
        self._set(outcome=outcome, running=None, running_relay=False)

    async def wait_idle(self) -> None:
        """Return once no sync the user started runs."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def set_live(self, on: bool) -> None:
        """Live mode: stay connected to the relay and sync every change as it is saved."""
        if on == self.facts.live:
            return
        if self.relay is None:
            raise action_error("no_relay", "this device has no server address; start it with --relay URL")
        if on:
            self._check_idle()
            self._live = asyncio.ensure_future(
                self.replica.sync(self.relay, credential=self.credential, live=True, timeout=self.timeout, tls=self.tls)
            )
            self._live.add_done_callback(self._live_ended)
            self._set(live=True, outcome=None)
        else:
            self._live = None
            await self.replica.stop_sync(self.relay)
            self._set(live=False)

    def _live_ended(self, task: asyncio.Task[SyncStatus]) -> None:
        """A live sync gives up only on an error retrying cannot fix: the popup says which."""
        if self._live is not task or self.feed.closed:
            return  # stopped by the toggle, or by close()
        self._live = None
        if task.cancelled():
            self._set(live=False)
        elif (exc := task.exception()) is not None:
            log.error("the live sync ended", exc_info=exc)
            info = exc.info() if isinstance(exc, ReplicaError) else None
            self._set(live=False, outcome=None if info is None else Outcome(self.replica.status(), None, info))
        else:
            self._set(live=False, outcome=Outcome(task.result()))

    def add_target(self, name: str, url: str) -> None:
        """A nearby device to offer "Sync with <device>" for."""
        if any(t.url == url for t in self.facts.targets):
            return
        self._set(targets=(*self.facts.targets, Target(name, url)))

    async def discover(self, timeout: float = 3.0) -> int:
        """Nearby devices advertised on the local network (mDNS) become
        targets; how many were found."""
        if not self.facts.discovery:
            raise action_error(
                "discovery_not_installed",
                "finding nearby devices needs the discovery extra: pip install 'replica[discovery]'",
            )
        from replica import discovery
        from replica.trust import pinned_relay_key

        key = pinned_relay_key(self.replica)
        found = await discovery.discover(timeout=timeout, relay_key_id=None if key is None else key.key_id)
        for peer in found:
            if peer.replica_id != self.replica.id:
                self.add_target(peer.replica_id, peer.url)
        return len(found)

    def give_credential(self, token: str) -> None:
        """A new credential from the relay's operator (a wider scope, a renewal): used from the next sync."""
        self.credential = token

    def save(self, form: Mapping[str, Any]) -> dict[str, str]:
        """Save one record from the registration form (``kind``, ``area``,
        ``name``, ``number``); its ``id`` and the ``message`` to show. A form
        filled in wrong is ``bad_record`` and nothing is saved."""
        kind, area = form.get("kind", KINDS[0]), form.get("area", self.facts.areas[0] if self.facts.areas else None)
        name, number = form.get("name"), form.get("number", 1)
        if kind not in KINDS:
            raise action_error("bad_record", f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if area not in self.facts.areas:
            raise action_error("bad_record", f"area must be one of {', '.join(self.facts.areas)}, not {area!r}")
        if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_TEXT:
            raise action_error("bad_record", f"name must be a text of 1 to {MAX_TEXT} characters")
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_NUMBER:
            raise action_error("bad_record", f"number must be a whole number from 0 to {MAX_NUMBER}")
        record_id = f"{kind[0]}-{uuid.uuid4().hex[:10]}"
        field = "members" if kind == "household" else "bed_nets"
        self.replica.doc(area).records(f"{kind}s").put(
            record_id, {"name": name.strip(), field: number, "by": self.replica.id}
        )
        what = self.catalog.text(f"form.kind.{kind}")
        return {"id": record_id, "message": self.catalog.text("form.saved", what=what, name=name.strip())}

    async def close(self) -> None:
        """Stop the syncs this screen started, and every viewer's stream (the replica stays open)."""
        if self.feed.closed:
            return
        tasks = [task for task in (self._task, self._live) if task is not None and not task.done()]
        if tasks and not self.replica.closed:
            await self.replica.stop_sync()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._unsubscribe()
        self.feed.close()
