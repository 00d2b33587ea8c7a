"""The asyncio edge: group commits, device links, one-shot and live syncs.

Everything that decides lives in the sans-I/O session (``replica.session``),
in :func:`replica.sync.settle` and in the status rules (``replica.runs``);
this module only moves bytes and time:

- :class:`Hub` settles the sessions of all its links in one commit per
  event-loop turn (group commit), then wakes their writers; the server side
  (``replica.listener``) uses it too;
- :class:`Link` runs a device's websocket: a reader feeding the session,
  which writes what the session queues at once, or through a writer task
  while the connection makes it wait;
- :func:`sync_once` and :func:`sync_live` are the device side of
  ``Replica.sync``; live syncs reconnect with capped exponential backoff and
  jitter, and stop on errors that retrying cannot fix.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import Close
from websockets.protocol import State
from websockets.uri import parse_uri

from replica import runs, tls, wire
from replica.engine import Engine
from replica.errors import ErrorInfo, ReplicaError
from replica.events import Event
from replica.session import Limits, Session, SessionState
from replica.status import SyncStatus
from replica.sync import settle
from replica.trust import DeviceTrust

log = logging.getLogger("replica.net")

#: websockets refuses bigger messages outright (close 1009); frames between
#: the protocol limit and this get a proper ``error`` frame.
WS_MAX_SIZE = 2 * wire.MAX_FRAME_BYTES
DEFAULT_TIMEOUT = 30.0
#: Longest wait of a device asking a server whose handshake failed whether it speaks (no) TLS.
PROBE_TIMEOUT = 3.0

EventHandler = Callable[[Session, Event], None]


class Linked(Protocol):
    """What a :class:`Hub` settles: a connection's session, and a way to
    tell the connection that the session may have frames to send."""

    @property
    def session(self) -> Session | None: ...

    def wake(self) -> None: ...


class Hub:
    """Settles the sessions of many links together (group commit);
    ``on_commit`` hears of each: links settled, seconds taken."""

    def __init__(
        self, replica: Engine, on_event: EventHandler, on_commit: Callable[[int, float], None] | None = None
    ) -> None:
        self.replica = replica
        self._on_event = on_event
        self._on_commit = on_commit
        self._dirty: dict[int, Linked] = {}
        self._scheduled = False

    def kick(self, link: Linked) -> None:
        """``link``'s session has news; settle it on the next loop turn,
        together with every other link that has news by then."""
        self._dirty[id(link)] = link
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Settle every link with news now, in one commit."""
        self._scheduled = False
        links, self._dirty = list(self._dirty.values()), {}
        if not links or self.replica.closed:
            return
        started = time.perf_counter()
        sessions = [link.session for link in links if link.session is not None]
        try:
            others = settle(self.replica, sessions)
        except Exception:  # a bug, not bad input (settle handles storage faults): fail these links, keep serving
            log.exception("could not settle %d link(s)", len(links))
            for session in sessions:
                session.fail("internal_error", "the receiver failed unexpectedly; its operator can see why", True)
            others = [(session, event) for session in sessions for event in session.events()]
        for session, event in others:
            self._on_event(session, event)
        for link in links:
            link.wake()
        if self._on_commit is not None:
            self._on_commit(len(links), time.perf_counter() - started)


class Link:
    """One websocket connection carrying one session."""

    def __init__(
        self,
        ws: Any,
        session: Session,
        hub: Hub,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.ws = ws
        self.session = session
        self.hub = hub
        self.timeout = timeout  # silence allowed once the session is open (None: forever, pings keep it honest)
        self.handshake_timeout = DEFAULT_TIMEOUT  # silence allowed before it is
        # The writer task, only while frames wait for the connection (or for the close); most links are
        # idle and write at once (see wake()), so most have none. It waits on a future when it has
        # nothing to send: not an asyncio.Event, whose waiters' deque costs 760 bytes.
        self._writer: asyncio.Task[None] | None = None
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._stop = False

    def wake(self) -> None:
        """The session may have frames to send: written now when no writer
        task is at work and the connection takes them without waiting
        (:meth:`_write_now`), else by the writer task, started if need be."""
        self._woken = True
        if self._writer is None:
            if not self._stop and self._write_now():
                return
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _write_now(self) -> bool:
        """Write what the session queued at once, as ``ws.send`` would
        (websockets' own protocol object frames each message; its transport
        writes them), when that cannot wait: the connection is open and its
        transport is not pausing writes. This spares a relay fanning a commit
        out to many links a task switch and a coroutine per frame. False:
        the writer task must do it (or close the connection)."""
        ws = self.ws
        if ws.protocol.state is not State.OPEN or ws.paused or self.session.closed:
            return False
        self._woken = False
        frames = self.session.data_to_send(time.time())
        if frames:
            for frame in frames:
                ws.protocol.send_binary(frame)
            for data in ws.protocol.data_to_send():
                ws.transport.write(data)
        return not self.session.closed

    def stop(self) -> None:
        """Finish sending what is queued, then close."""
        self._stop = True
        self.wake()

    async def run(self) -> None:
        """Read until the session or the connection ends; flush and close."""
        try:
            while not self.session.closed:
                limit = self._silence_allowed()
                try:
                    async with asyncio.timeout(limit):  # not wait_for, which makes a task of every recv()
                        message = await self.ws.recv()
                except TimeoutError:
                    if self._silence_allowed() is None:
                        continue  # it caught up meanwhile (settled after the wait began): quiet is fine now
                    self.session.fail("timeout", f"nothing heard from the other side for {limit} s", True)
                    break
                self.session.receive(message, time.time())
                self.hub.kick(self)
        except ConnectionClosed as exc:
            if not self._stop:
                self.session.connection_lost(closed_reason(exc.rcvd))
        finally:
            self.hub.kick(self)
            self.hub.flush()
            self.stop()
            writer = self._writer
            assert writer is not None  # stop() starts one to close the connection
            try:
                await asyncio.wait_for(writer, self.timeout or DEFAULT_TIMEOUT)
            except (TimeoutError, ConnectionClosed):
                writer.cancel()
            await self.ws.close(1000 if self.session.error is None else 1008)

    def _silence_allowed(self) -> float | None:
        session = self.session
        if session.state is not SessionState.OPEN:
            return self.handshake_timeout
        if session.mode == "live" and session.completed:
            return None  # a caught-up live link is quiet when nothing changes; websockets' pings watch it
        return self.timeout

    async def _write_loop(self) -> None:
        """Send what the session queues, waiting for the connection to take
        each frame; end once the connection takes frames at once again (the
        next are written by :meth:`wake`), or after :meth:`stop` (or when the
        session closed), having sent the rest and closed the connection,
        which also ends the reader."""
        try:
            while True:
                if not self._woken:
                    self._waiter = asyncio.get_running_loop().create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                self._woken = False
                for frame in self.session.data_to_send(time.time()):
                    await self.ws.send(frame)
                if self._stop or self.session.closed:
                    await self.ws.close(1000 if self.session.error is None else 1008)
                    return
                if not self._woken and not self.ws.paused:
                    return
        except ConnectionClosed:
            return  # the reader hears of it too, and ends the session
        finally:
            self._writer = None


def closed_reason(received: Close | None) -> str:
    """What a session is told when its connection ended, given the close
    frame the other side sent (None: it sent none)."""
    if received is not None and received.reason:
        return f"the connection was closed: {received.reason}"
    return "the connection was lost"


# -- device side -------------------------------------------------------------


class DeviceRun:
    """Drives one device-side session and reports it through the status
    rules (``replica.runs``): into the home screen's status when the other
    side is the relay, into that peer's when it is a peer."""

    def __init__(self, replica: Engine, session: Session, *, peer: bool, url: str | None = None) -> None:
        self.replica = replica
        self.session = session
        self.link: Link | None = None
        self.run, records = runs.start(runs.Facing.PEER, None) if peer else runs.start(runs.Facing.RELAY, url)
        replica.record(records)

    def on_event(self, session: Session, event: Event) -> None:
        """The hub's event handler: one event of this run's session."""
        self.run, records = runs.step(self.run, event, session, time.time(), refused=self.replica.refused)
        self.replica.record(records)
        if runs.ends_link(event, session.mode) and self.link is not None:
            self.link.stop()

    def fail(self, error: ErrorInfo) -> None:
        """The run ended without a session event saying why."""
        self.run, records = runs.fail(self.run, error, self.session)
        self.replica.record(records)

    def wait(self, retry_at: float) -> None:
        """The live sync tries again at ``retry_at``."""
        self.run, records = runs.waiting(self.run, retry_at)
        self.replica.record(records)

    def stop(self) -> None:
        """The caller stopped the sync."""
        self.run, records = runs.stop(self.run, self.session)
        self.replica.record(records)

    def local_changed(self, document: str) -> None:
        self.session.local_changed(document, time.time())
        if self.link is not None:
            self.link.wake()

    def status(self) -> SyncStatus:
        """The replica's status, with this run's own state, error and progress."""
        run = self.run
        return replace(
            self.replica.status(),
            state=run.state,
            error=run.error,
            progress=run.progress,
            peer=run.peer,
            connected=run.connected,
            retry_at=run.retry_at,
            relay=run.relay,
        )


async def run_link(
    replica: Engine,
    url: str,
    *,
    credential: str | None,
    mode: str,
    timeout: float,
    peer: bool = False,
    limits: Limits | None = None,
    tls: ssl.SSLContext | None = None,
) -> DeviceRun:
    """Run one device session over one connection. Once: returns when the
    run completed or failed. Live: returns when the connection ends.
    ``tls``: how a ``wss://`` server is verified (default: the system's
    trust store; see ``replica.tls``)."""
    session = Session(
        replica,
        role="device",
        initiator=True,
        mode=mode,
        trust=DeviceTrust(replica, credential, peer=peer),
        limits=limits,
    )
    run = DeviceRun(replica, session, peer=peer, url=url)
    hub = Hub(replica, run.on_event)
    try:
        secure: dict[str, Any] = {"ssl": tls} if tls is not None and url.startswith("wss://") else {}
        async with connect(url, max_size=WS_MAX_SIZE, open_timeout=timeout, compression=None, **secure) as ws:
            run.link = Link(ws, session, hub, timeout=timeout)
            unsubscribe = replica.on_change(run.local_changed)
            try:
                session.start(time.time())
                run.link.wake()
                await run.link.run()
            finally:
                unsubscribe()
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
        error = await _mixed_up_tls(url, exc, peer=peer, timeout=timeout) or _connect_error(url, exc, peer=peer)
        session.fail(error.code, error.message, error.retryable)  # a live sync stops on a bad URL
        run.fail(error)
    except asyncio.CancelledError:
        if not replica.closed:
            run.stop()
        raise
    run.fail(session.error or runs.LOST)  # if nothing decided the run yet
    return run


async def _mixed_up_tls(url: str, exc: BaseException, *, peer: bool, timeout: float) -> ErrorInfo | None:
    """A ``wss://`` URL of a plain server, or a ``ws://`` URL of a TLS one:
    the handshake failed without saying why, so ask the server the other way."""
    who = "the peer" if peer else "the relay"
    try:
        parsed = parse_uri(url)
    except InvalidURI:
        return None
    wait = min(timeout, PROBE_TIMEOUT)
    if parsed.secure and isinstance(exc, ConnectionError | ssl.SSLEOFError):
        return tls.not_offered(url, who) if await tls.answers_plain_http(parsed.host, parsed.port, wait) else None
    if not parsed.secure and isinstance(exc, InvalidHandshake | ConnectionError):
        return tls.required(url, who) if await tls.answers_tls(parsed.host, parsed.port, wait) else None
    return None


def _connect_error(url: str, exc: BaseException, *, peer: bool) -> ErrorInfo:
    who, code = ("the peer", "peer_unreachable") if peer else ("the relay", "relay_unreachable")
    if isinstance(exc, ssl.SSLError):  # before OSError, which it is: no retry cures a certificate
        return tls.connect_error(url, exc, who)
    if isinstance(exc, InvalidURI):
        return ErrorInfo("bad_url", f"{url!r} is not a websocket URL (ws://host:port)", False)
    if isinstance(exc, TimeoutError):
        return ErrorInfo("timeout", f"{who} at {url} did not answer in time; check the network", True)
    if isinstance(exc, ConnectionRefusedError):
        return ErrorInfo(code, f"{who} at {url} refused the connection; is it running?", True)
    if isinstance(exc, InvalidHandshake):
        return ErrorInfo(code, f"{url} did not accept a websocket connection ({exc})", True)
    return ErrorInfo(code, f"cannot reach {who} at {url}: {exc or type(exc).__name__}", True)


def relay_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """The relays of a sync call, in the order tried: one URL or several (failover)."""
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls:
        raise ReplicaError("no relay URL was given", code="bad_url")
    return urls


async def sync_once(
    replica: Engine,
    url: str | Sequence[str],
    *,
    credential: str | None,
    timeout: float = DEFAULT_TIMEOUT,
    peer: bool = False,
    limits: Limits | None = None,
    tls: ssl.SSLContext | None = None,
) -> SyncStatus:
    """One sync run; returns the final status (``SYNCED`` or ``FAILED``).
    With several URLs (relays serving one deployment), a run that fails in
    a way retrying can help is tried again at once with the next relay,
    each relay once; the status names the relay of the last run."""
    status = None
    for each in relay_urls(url):
        run = await run_link(
            replica, each, credential=credential, mode="once", timeout=timeout, peer=peer, limits=limits, tls=tls
        )
        status = run.status()
        if status.error is None or not status.error.retryable:
            break
        log.info("sync with %s failed (%s); trying the next relay", each, status.error)
    assert status is not None
    return status


def backoff(
    initial: float = 0.5, factor: float = 2.0, cap: float = 60.0, *, rng: random.Random | None = None
) -> Iterator[float]:
    """Retry delays: capped exponential with full jitter."""
    chooser = rng or random.Random()
    delay = initial
    while True:
        yield chooser.uniform(0, delay)
        delay = min(delay * factor, cap)


async def sync_live(
    replica: Engine,
    url: str | Sequence[str],
    *,
    credential: str | None,
    timeout: float = DEFAULT_TIMEOUT,
    peer: bool = False,
    limits: Limits | None = None,
    max_delay: float = 60.0,
    tls: ssl.SSLContext | None = None,
) -> SyncStatus:
    """Stay connected and stream deltas both ways until cancelled, or until
    an error that retrying cannot fix; reconnect after drops. With several
    URLs, a run that ended before it caught up moves on to the next relay
    (round and round, with the usual delays); one that had caught up tries
    the same relay again first."""
    urls = relay_urls(url)
    delays = backoff(cap=max_delay)
    turn = 0
    while True:
        each = urls[turn % len(urls)]
        run = await run_link(
            replica, each, credential=credential, mode="live", timeout=timeout, peer=peer, limits=limits, tls=tls
        )
        session = run.session
        if session.error is not None and not session.error.retryable:
            return run.status()
        if session.completed:  # it had caught up: this is a fresh drop, start the delays over
            delays = backoff(cap=max_delay)
        else:
            turn += 1
        pause = next(delays)
        log.info("live sync to %s ended (%s); reconnecting in %.1f s", each, session.error, pause)
        run.wait(time.time() + pause)
        try:
            await asyncio.sleep(pause)
        except asyncio.CancelledError:
            if not replica.closed:
                run.stop()
            raise
