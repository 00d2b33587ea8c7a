"""``replica demo``: a relay and a few field devices, and a field day they play.

:class:`Demo` starts, in one process and one event loop, the real relay
(``replica.relay.Relay``, on its own LMDB directory, as ``replica relay``
runs it) and three devices, each a real :class:`~replica.replica.Replica` on
its own LMDB directory with a credential the relay issued: two health
workers registering households and bed-net deliveries, and their
supervisor's tablet, which serves peers in the field. Each device gets a
Sync screen (``replica.ui_device.Device``), the same one ``replica ui``
serves.

The field day (:data:`STEPS`) presses the screens' own buttons, one step at
a time, and every step can be done by hand on the page instead: the morning
login; registration offline; a peer sync where the supervisor's tablet
takes a worker's data; the supervisor carrying it to the relay; the relay
going down during a sync (Sync Failed, Retry once it is back); a change the
relay refuses (outside the worker's credential); the operator issuing a
wider credential; and the end of the day, every device showing "Data
Synced". What the page shows is each device's own status: the demo decides
none.

:meth:`Demo.view` is the demo's page besides the screens: the relay's view
(what it holds of each device, whether it is up) and the steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replica.devices import view as devices_seen
from replica.engine import Engine
from replica.errors import ReplicaError
from replica.peer import PeerServer
from replica.relay import Relay
from replica.replica import Replica
from replica.status import Headline, SyncStatus
from replica.ui_device import Device, action_error
from replica.ui_feed import Feed
from replica.ui_screen import Target
from replica.ui_text import Catalog

log = logging.getLogger("replica.demo")

HOST = "127.0.0.1"
HOUSEHOLDS = "campaign-7/households"
ACROSS = "campaign-8/households"  #: the next district: outside the workers' first credential
SCOPE = ["campaign-7/*"]
WIDER = ["campaign-7/*", "campaign-8/*"]
DAY = 24 * 3600.0
#: Deliveries recorded at the distribution point before the sync the relay drops.
DELIVERIES = 1500


@dataclass(frozen=True)
class Member:
    """A device of the demo's team."""

    key: str  #: its path on the page, /devices/<key>/
    replica_id: str
    name: str
    role: str
    areas: tuple[str, ...] = (HOUSEHOLDS,)


TEAM = (
    Member("amina", "worker-amina", "Amina", "health worker"),
    Member("bello", "worker-bello", "Bello", "health worker", (HOUSEHOLDS, ACROSS)),
    Member("chidi", "supervisor-chidi", "Chidi", "supervisor tablet"),
)
SUPERVISOR = "chidi"


@dataclass(frozen=True)
class Step:
    """One moment of the field day."""

    title: str
    text: str
    run: Callable[[Demo], Awaitable[str]]  #: does it; what happened, in one line


class Demo:
    """The relay, the devices and their screens, over the directory ``data``."""

    def __init__(self, data: str | Path, *, step_delay: float = 2.5, catalog: Catalog | None = None) -> None:
        self.data = Path(data)
        self.step_delay = step_delay
        self.catalog = catalog or Catalog()
        self.relay: Relay | None = None
        self.relay_id = ""
        self.relay_url = ""
        self.port = 0
        self.devices: dict[str, Device] = {}
        self.members = {member.key: member for member in TEAM}
        self.done = 0  #: steps done
        self.results: list[str] = []  #: what each step done did
        self.running: asyncio.Task[None] | None = None
        self.playing = False
        self.failure: str | None = None
        #: Told each line worth printing (a step done, the end of the day).
        self.announce: Callable[[str], None] = lambda line: None
        self.held: dict[str, int] = {}  #: what the relay holds of each origin (when it was last up)
        self.feed: Feed[dict[str, Any]] = Feed(self.view)
        self._server: PeerServer | None = None
        self._replicas: dict[str, Replica] = {}
        self._unsubscribes: list[Callable[[], None]] = []

    # -- start and stop --------------------------------------------------------

    async def start(self) -> None:
        """Start the relay, open the devices with their credentials, serve the supervisor's peers."""
        await self.set_relay(True)
        assert self.relay is not None
        self.port = int(self.relay_url.rsplit(":", 1)[1])
        replicas = self._replicas
        for m in TEAM:  # kept as they open, so that close() closes them whatever fails next
            replicas[m.key] = Replica.open(self.data / m.key, replica_id=m.replica_id)
        self._server = await replicas[SUPERVISOR].serve_peers(HOST, 0)
        tablet = Target(f"{self.members[SUPERVISOR].name}'s tablet", self._server.url)
        for member in TEAM:
            replica = replicas[member.key]
            token = self.relay.issue_credential(member.replica_id, SCOPE, expires_at=time.time() + DAY)
            self.devices[member.key] = Device(
                replica,
                name=f"{member.name} ({member.role})",
                relay=self.relay_url,
                credential=token,
                targets=() if member.key == SUPERVISOR else (tablet,),
                areas=member.areas,
                catalog=self.catalog,
                timeout=10.0,
            )
            self._unsubscribes.append(replica.subscribe(lambda status: self.feed.publish()))

    async def close(self) -> None:
        """Stop the field day, the screens, the peer server and the relay; close every directory."""
        if self.running is not None:
            self.running.cancel()
            await asyncio.gather(self.running, return_exceptions=True)
        self.feed.close()
        for device in self.devices.values():
            await device.close()
        for unsubscribe in self._unsubscribes:
            unsubscribe()
        if self._server is not None:
            await self._server.stop()
        for replica in self._replicas.values():
            replica.close()
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None

    async def set_relay(self, up: bool) -> None:
        """Start the relay (on the same port and data as before) or stop it: an outage."""
        if up and self.relay is None:
            relay = Relay(self.data / "relay", host=HOST, port=self.port, compact_every=None)
            await relay.start()
            self.relay, self.relay_id, self.relay_url = relay, relay.replica_id, relay.url
            assert relay.replica is not None
            relay.replica.on_change(lambda document: self.feed.publish())
        elif not up and self.relay is not None:
            relay, self.relay = self.relay, None
            await relay.stop()
        self.feed.publish()

    def widen(self, key: str) -> None:
        """The relay's operator issues device ``key`` a credential covering the next district too."""
        device = self.device(key)
        if self.relay is None:
            raise action_error("relay_down", "the relay is down; start it before issuing a credential")
        member = self.members[key]
        device.give_credential(self.relay.issue_credential(member.replica_id, WIDER, expires_at=time.time() + DAY))

    def device(self, key: str) -> Device:
        if key not in self.devices:
            raise action_error("unknown_device", f"no device {key!r} in this demo; it has {', '.join(self.devices)}")
        return self.devices[key]

    # -- the field day ----------------------------------------------------------

    def next_step(self) -> None:
        """Play the next step of the field day."""
        self._check_free()
        self.running = asyncio.get_running_loop().create_task(self._play(1))

    def play(self) -> None:
        """Play the rest of the field day, a step every :attr:`step_delay` seconds."""
        self._check_free()
        self.running = asyncio.get_running_loop().create_task(self._play(len(STEPS)))

    def _check_free(self) -> None:
        if self.running is not None and not self.running.done():
            raise action_error("step_running", "a step of the field day is playing; wait for it to end")
        if self.done >= len(STEPS):
            raise action_error("day_over", "the field day is over; run `replica demo` again to replay it")

    async def _play(self, steps: int) -> None:
        self.playing, self.failure = True, None
        self.feed.publish()
        try:
            for number in range(steps):
                if self.done >= len(STEPS):
                    break
                if number:
                    await asyncio.sleep(self.step_delay)
                step = STEPS[self.done]
                self.feed.publish()
                try:
                    result = await step.run(self)
                except ReplicaError as exc:  # a button pressed by hand meanwhile (a sync running, live mode on)
                    self.failure = f"{step.title}: {exc.message} [{exc.code}]"
                    self.announce(f"Step {self.done + 1} not done: {exc.message}")
                    return
                except Exception as exc:  # a fault of the demo: logged with its traceback, shown, the day stops
                    log.error("step %r failed", step.title, exc_info=exc)
                    self.failure = f"{step.title}: stopped on an unexpected error (see the terminal)"
                    self.announce(f"Step {self.done + 1} not done: {exc!r}")
                    return
                self.done += 1
                self.results.append(result)
                self.announce(f"Step {self.done}/{len(STEPS)} {step.title}: {result}")
            if self.done == len(STEPS):
                self.announce(
                    "Field day done: every device shows Data Synced"
                    if self.all_synced()
                    else "Field day done, but not every device shows Data Synced"
                )
        finally:
            self.playing = False
            self.feed.publish()

    def all_synced(self) -> bool:
        """Every device's own status says "Data Synced"."""
        return all(device.replica.status().headline is Headline.SYNCED for device in self.devices.values())

    # -- the view ------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The relay's view and the field day, for the demo's page."""
        if self.relay is not None:  # while it is down, what it held when it went down
            self.held = relay_holdings(self.relay.replica)
        held = self.held
        devices = []
        for key, device in self.devices.items():
            status = device.replica.status()
            devices.append(
                {
                    "key": key,
                    "name": device.name,
                    "replica_id": device.replica.id,
                    "on_relay": held.get(device.replica.id, 0),
                    "unsynced": status.unsynced,
                    "rejected": status.rejected,
                    "headline": status.headline.name.lower(),
                    "title": self.catalog.text(f"headline.{status.headline.name.lower()}"),
                }
            )
        if self.relay is not None and self.relay.ops is not None:
            self.relay.ops.devices.flush()  # what `replica relay devices` reads (written only if it changed)
        known = devices_seen(self.data / "relay", stale=DAY) if (self.data / "relay").exists() else []
        return {
            "relay": {"up": self.relay is not None, "url": self.relay_url, "replica_id": self.relay_id},
            "known": [  # the relay's devices view: who synced when, with what outcome, on what credential
                {
                    "replica_id": row["replica_id"],
                    "last_contact": row["last_contact"],
                    "outcome": row["last_outcome"],
                    "code": row["last_code"],
                    "expires_at": row["credential_expires_at"],
                    "expired": row["credential_expired"],
                    "revoked": row["revoked"],
                }
                for row in known
            ],
            "now": time.time(),
            "devices": devices,
            "all_synced": bool(self.devices) and self.all_synced(),
            "steps": [
                {
                    "title": step.title,
                    "text": step.text,
                    "state": "done" if n < self.done else "next" if n == self.done else "later",
                    "result": self.results[n] if n < self.done else None,
                }
                for n, step in enumerate(STEPS)
            ],
            "playing": self.playing,
            "failure": self.failure,
            "over": self.done >= len(STEPS),
        }

    async def views(self, stop: asyncio.Event) -> AsyncIterator[dict[str, Any]]:
        async for value in self.feed.values(stop):
            yield value


def relay_holdings(relay: Engine | None) -> dict[str, int]:
    """How many changes of each origin the relay holds, over every document (from its version vectors)."""
    if relay is None or relay.closed:
        return {}
    out: dict[str, int] = {}
    for name in relay.documents():
        for origin, seq in relay.version_vector(name).items():
            out[origin] = out.get(origin, 0) + seq
    return out


# -- the steps ---------------------------------------------------------------------


async def synced(device: Device, *, peer: str | None = None) -> SyncStatus:
    """Press "Sync Data" (or "Sync with <peer>") on ``device`` and wait for the popup."""
    await device.wait_idle()
    if peer is None:
        device.start_sync()
    else:
        device.start_peer_sync(peer)
    await device.wait_idle()
    outcome = device.facts.outcome
    return device.replica.status() if outcome is None else outcome.final


def register(device: Device, area: str, names: list[str]) -> None:
    for number, name in enumerate(names):
        device.save({"kind": "household", "area": area, "name": name, "number": 3 + number})


async def morning(demo: Demo) -> str:
    for device in demo.devices.values():
        device.log_in()
    for device in demo.devices.values():
        await device.wait_idle()
    return ", ".join(f"{d.name.split()[0]}: {d.replica.status().label}" for d in demo.devices.values())


async def offline(demo: Demo) -> str:
    register(demo.devices["amina"], HOUSEHOLDS, ["Hauwa Musa", "Ibrahim Sani", "Fatima Bala"])
    register(demo.devices["bello"], HOUSEHOLDS, ["Yusuf Danjuma", "Zainab Ali"])
    return f"Amina {demo.devices['amina'].replica.status().label}, Bello {demo.devices['bello'].replica.status().label}"


async def peer_sync(demo: Demo) -> str:
    amina = demo.devices["amina"]
    target = amina.facts.targets[0]
    final = await synced(amina, peer=target.url)
    chidi = demo.devices[SUPERVISOR].replica.status()
    return f"with {target.name}: {final.state.value}; Chidi now {chidi.label}, Amina still {final.unsynced} unsynced"


async def carry(demo: Demo) -> str:
    final = await synced(demo.devices[SUPERVISOR])
    held = relay_holdings(demo.relay.replica if demo.relay is not None else None)
    return f"Chidi: {final.label}; the relay holds {held.get('worker-amina', 0)} of Amina's changes"


async def outage(demo: Demo) -> str:
    bello = demo.devices["bello"]
    with bello.replica.batch():  # one commit for the distribution point's records
        for number in range(DELIVERIES):
            bello.save({"kind": "delivery", "area": HOUSEHOLDS, "name": f"household {number + 1}", "number": 2})
    welcomed = asyncio.get_running_loop().create_future()

    def watch(status: SyncStatus) -> None:
        if status.connected and not welcomed.done():
            welcomed.set_result(None)

    unsubscribe = bello.replica.subscribe(watch)
    try:
        await bello.wait_idle()
        bello.start_sync()
        done = asyncio.ensure_future(bello.wait_idle())
        await asyncio.wait({welcomed, done}, return_when=asyncio.FIRST_COMPLETED)
        await demo.set_relay(False)  # the network drops while the changes go up
        await done
    finally:
        unsubscribe()
    outcome = bello.facts.outcome
    if outcome is None or outcome.final.headline is not Headline.FAILED:
        final = await synced(bello)  # it had finished first: the relay is down for this one
        return f"the sync ended before the relay went down; the next one: {final.label}"
    return outcome.final.label


async def retry(demo: Demo) -> str:
    await demo.set_relay(True)
    final = await synced(demo.devices["bello"])
    return f"Retry: {final.label}"


async def refused(demo: Demo) -> str:
    bello = demo.devices["bello"]
    register(bello, ACROSS, ["Musa Garba"])
    final = await synced(bello)
    return final.label


async def wider(demo: Demo) -> str:
    demo.widen("bello")
    final = await synced(demo.devices["bello"])
    return f"Bello: {final.label}"


async def evening(demo: Demo) -> str:
    finals = [await synced(device) for device in demo.devices.values()]
    return ", ".join(
        f"{d.name.split()[0]}: {final.label}" for d, final in zip(demo.devices.values(), finals, strict=True)
    )


STEPS = (
    Step("Morning login", "Each device logs in; logging in syncs it with the relay, as every morning.", morning),
    Step(
        "Registration offline",
        "No network in the village: Amina registers 3 households, Bello 2. Their cards count the changes.",
        offline,
    ),
    Step(
        "Peer sync in the field",
        "Amina syncs with Chidi's tablet. Chidi now holds her households; her count stays: "
        "only the relay's acknowledgement lowers it.",
        peer_sync,
    ),
    Step("The supervisor carries it up", "Chidi reaches the network and syncs: Amina's data is on the relay.", carry),
    Step(
        "Relay outage during a sync",
        f"Bello records {DELIVERIES} bed-net deliveries and syncs; the relay goes down during the sync: "
        "Sync Failed, and retrying can help.",
        outage,
    ),
    Step("The relay is back: Retry", "The relay comes back on the same address; Bello presses Retry.", retry),
    Step(
        "A change the relay refuses",
        "Bello registers a household across the border (campaign-8), outside his credential: the relay refuses it. "
        "Sync Failed with no Retry; the card shows the refused change and why.",
        refused,
    ),
    Step(
        "A wider credential",
        "The relay's operator issues Bello a credential covering campaign-8; his next sync clears the refusal.",
        wider,
    ),
    Step("End of day", "Every device syncs: all show Data Synced.", evening),
)
