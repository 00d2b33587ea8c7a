"""The server side of the asyncio edge: a light protocol object per connection.

A relay holds thousands of idle live links. websockets' asyncio connection
costs about 7 kB of each: a handler task and its coroutines, a keepalive
task, a message assembler and its futures. A :class:`Listener` drives
websockets' sans-I/O ``ServerProtocol`` (the same HTTP parser, handshake
checks, framing, limits and closing handshake) from an
:class:`asyncio.Protocol` of its own instead:

- bytes received feed the link's session at once, in the transport's
  callback, with no task woken per frame;
- frames the session queues are written a frame at a time while the
  transport takes them; while it pauses writes (a slow reader) the rest
  waits, so a ping never queues behind megabytes;
- one timer pings every open link, and closes those that sent nothing, not
  even a pong, for ``SILENT_ROUNDS`` ping intervals.

The sessions of all links are settled together by a :class:`~replica.net.Hub`
(group commit), and every newly stored batch is offered to the live links
that have its document open (fan-out). Paths given to :meth:`Listener.route`
(the relay's Yjs endpoint) get websockets' asyncio connection, handed the
transport once their request is read.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from replica import net
from replica.engine import Engine
from replica.session import Session, SessionState

log = logging.getLogger("replica.net")

#: How long a server waits for a client's websocket handshake, then for its hello.
HANDSHAKE_TIMEOUT = 5.0
#: How long a stopping server waits for its links to close before aborting them.
STOP_GRACE = 1.0
#: The close reason a stopping server gives (with code 1001): devices reconnect later.
GOING_AWAY = "the server is shutting down; reconnecting later"
#: Every open link is pinged this often.
PING_INTERVAL = 20.0
#: A link that sent nothing (not even a pong) for this many ping intervals is closed: a phone
#: applying a large state in a busy process may not read its socket for a while, a dead link never.
SILENT_ROUNDS = 2
#: How long a link that sent or answered a close frame has to close its end, before it is aborted.
CLOSE_TIMEOUT = 10.0
#: The transport pauses writes above this many buffered bytes (websockets' own default).
WRITE_LIMIT = 2**15

#: Answers a plain HTTP request instead of the websocket handshake (``/health``,
#: ``/metrics`` on the same port), or None to go on with it.
ProcessRequest = Callable[[Any, Request], Response | None]

_remote: contextvars.ContextVar[str] = contextvars.ContextVar("replica_remote_address", default="")


def remote_address() -> str:
    """``host:port`` of the client whose connection is being served (inside
    ``make_session`` and event handlers of a :class:`Listener`); ``""`` elsewhere."""
    return _remote.get()


class Listener:
    """Accepts websocket links for one replica (a relay, or a device serving
    peers): one session per link from ``make_session``, group commits across
    links, and every newly stored batch offered to the live links that have
    its document open (fan-out)."""

    def __init__(
        self,
        replica: Engine,
        make_session: Callable[[], Session],
        on_event: net.EventHandler,
        *,
        process_request: ProcessRequest | None = None,
        on_commit: Callable[[int, float], None] | None = None,
        ready: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.replica = replica
        #: Awaited before each sync session starts (a relay of several: until its copy is up to date).
        self.ready = ready
        self.make_session = make_session
        self.hub = net.Hub(replica, on_event, on_commit)
        #: Answers plain HTTP requests (``/health``, ``/metrics``) before any websocket handshake.
        self.process_request = process_request
        self.routes: list[tuple[str, Callable[[ServerConnection], Awaitable[None]]]] = []
        self.host = ""
        #: The server's TLS context (``wss://``), or None for plain ``ws://``.
        self.tls: ssl.SSLContext | None = None
        #: True once :meth:`stop` began: requests still arriving get 503.
        self.stopping = False
        #: Every TCP connection accepted and not yet closed, in any state (even
        #: before its websocket handshake), routed ones included.
        self.open: set[_Connection | ServerConnection] = set()
        #: The connections carrying a sync session.
        self.sessions: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._routed: Server | None = None  # websockets' bookkeeping for routed connections
        self._unsubscribe: Callable[[], None] | None = None
        self._pinger: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None

    def route(self, prefix: str, handler: Callable[[ServerConnection], Awaitable[None]]) -> None:
        """Hand the connections whose request path starts with ``prefix`` to
        ``handler`` instead of a sync session (the relay's Yjs endpoint)."""
        self.routes.append((prefix, handler))

    async def start(self, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        """Listen on ``host:port`` (``port=0`` picks a free one); with ``tls``
        (``replica.tls.server_context``), ``wss://`` only."""
        self.host, self.tls = host, tls
        loop = asyncio.get_running_loop()
        self._unsubscribe = self.replica.on_change(self._fan_out)
        secure: dict[str, Any] = {}
        if tls is not None:
            secure = {"ssl": tls, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT, "ssl_shutdown_timeout": CLOSE_TIMEOUT}

        async def create_server() -> asyncio.Server:
            return await loop.create_server(lambda: _Connection(self), host, port, **secure)

        # websockets' Server keeps the routed connections' books (its handler tasks), as in its serve().
        self._routed = await Server(create_server, self._serve_routed)
        self._server = self._routed.server
        self._pinger = loop.call_later(PING_INTERVAL, self._ping)

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS) while listening."""
        if self._server is None:
            raise RuntimeError("not listening")
        port = self._server.sockets[0].getsockname()[1]
        return f"{'wss' if self.tls is not None else 'ws'}://{self.host}:{port}"

    @property
    def connections(self) -> int:
        """TCP connections open now, websocket or not yet (and plain HTTP requests)."""
        return len(self.open)

    @property
    def links(self) -> int:
        """Connections carrying a sync session now."""
        return len(self.sessions)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop listening and close every link with 1001 (going away), which
        devices take as a reason to reconnect later. Connections that do not
        answer within ``grace`` seconds (silent, half-open, still in their
        handshake) are aborted. What was acknowledged is already on disk: a
        session acks only after its commit."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._pinger is not None:
            self._pinger.cancel()
        self.stopping = True
        self.hub.flush()  # what arrived before the stop is stored (and acked) first
        closing = []
        for connection in list(self.open):
            if isinstance(connection, ServerConnection):
                closing.append(asyncio.ensure_future(connection.close(1001, GOING_AWAY)))
            else:
                connection.go_away()
        if self.open:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), grace)
            except TimeoutError:
                stuck = list(self.open)
                log.info("aborting %d connection(s) that did not close within %.1f s", len(stuck), grace)
                for connection in stuck:
                    connection.transport.abort()
                await self._drained
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        await server.wait_closed()

    def closed(self, connection: _Connection | ServerConnection) -> None:
        """``connection`` is gone (its TCP connection closed, or handed over)."""
        self.open.discard(connection)
        if not self.open and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def hand_over(self, connection: _Connection, received: bytes, handler: Callable[..., Awaitable[None]]) -> None:
        """Give ``connection``'s transport to a websockets asyncio connection
        served by ``handler``, replaying the bytes read so far."""
        assert self._routed is not None
        ws = ServerConnection(ServerProtocol(max_size=net.WS_MAX_SIZE), self._routed)
        ws.handler = handler
        self.open.add(ws)
        self.closed(connection)
        transport = connection.transport
        transport.set_protocol(ws)
        ws.connection_made(transport)
        ws.data_received(received)

    async def _serve_routed(self, ws: ServerConnection) -> None:
        """A routed connection's life, as websockets' own server leads it."""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await ws.handshake()
            if ws.protocol.state is not State.OPEN:
                ws.transport.abort()
                return
            ws.start_keepalive()
            async with ws:
                await ws.handler(ws)
        except Exception:
            path = ws.request.path.split("?", 1)[0] if ws.request is not None else "?"  # its query holds a token
            log.exception("a connection to %s failed", path)
            ws.transport.abort()
        finally:
            assert self._routed is not None
            self._routed.handler_tasks.discard(asyncio.current_task())
            await ws.wait_closed()
            self.closed(ws)

    def _ping(self) -> None:
        """Ping every open link; close those silent for ``SILENT_ROUNDS`` intervals."""
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - SILENT_ROUNDS * PING_INTERVAL
        for connection in list(self.open):
            if isinstance(connection, _Connection):
                connection.keepalive(cutoff)
        self._pinger = loop.call_later(PING_INTERVAL, self._ping)

    def _fan_out(self, document: str) -> None:
        now = time.time()
        with self.replica.same_log():  # live links at the same point read the new deltas once
            for link in self.sessions:
                session = link.session
                if session is not None and session.mode == "live":  # where it is not open yet too: it offers it
                    session.local_changed(document, now)
                    link.wake()


class _Connection(asyncio.Protocol):
    """One TCP connection of a :class:`Listener`: its websocket handshake,
    then its sync session (or a plain HTTP answer, or a hand-over to a
    route)."""

    __slots__ = (
        "_held",
        "_parts",
        "_paused",
        "_received",
        "_timer",
        "_waiting",
        "_woken",
        "address",
        "heard",
        "listener",
        "protocol",
        "session",
        "transport",
    )

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.session: Session | None = None

    # -- asyncio's callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.protocol = ServerProtocol(max_size=net.WS_MAX_SIZE)
        self.address = _address(transport.get_extra_info("peername"))
        loop = asyncio.get_running_loop()
        self.heard = loop.time()
        self._received: bytearray | None = bytearray()  # the request's bytes, until it is read
        self._parts: list[bytes] | None = None  # a fragmented message's frames so far
        self._held: list[bytes] | None = None  # the session's frames the paused transport could not take yet
        self._waiting: list[bytes | str] | None = None  # messages that came before the session could start
        self._paused = False
        self._woken = False
        transport.set_write_buffer_limits(WRITE_LIMIT)
        self._timer: asyncio.TimerHandle | None = loop.call_later(HANDSHAKE_TIMEOUT, self._silent)
        self.listener.open.add(self)

    def data_received(self, data: bytes) -> None:
        _remote.set(self.address)
        self.heard = asyncio.get_running_loop().time()
        if self._received is not None:
            self._received += data
        self.protocol.receive_data(data)
        self._handle()

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._handle()  # the transport closes on return (a websocket never writes after the other's EOF)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._woken:
            self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        _remote.set(self.address)
        self._cancel_timer()
        self.protocol.receive_eof()  # idempotent: the state is CLOSED now
        listener = self.listener
        listener.closed(self)
        session = self.session
        if session is None:
            return
        listener.sessions.discard(self)
        if not session.closed:
            session.connection_lost(net.closed_reason(self.protocol.close_rcvd))
        listener.hub.kick(self)
        listener.hub.flush()
        if session.error is not None and session.error.code != "connection_lost":
            log.warning("link from %s closed: %s", session.remote_id or self.address, session.error)

    # -- the link, as a Hub sees it --------------------------------------------

    def wake(self) -> None:
        """Write what the session queued, a frame at a time until the
        transport pauses writes (the rest waits here, and goes once it
        resumes); close once the session closed and all of it went. So a
        ping or a close never queues behind megabytes the other side has
        not read yet."""
        session = self.session
        if session is None or self.protocol.state is not State.OPEN:
            return
        if self._timer is not None and session.state is SessionState.OPEN:
            self._cancel_timer()  # silence is allowed now: pings watch the link
        if self._paused:
            self._woken = True
            return
        self._woken = False
        frames = session.data_to_send(time.time())
        if self._held is not None:
            frames, self._held = self._held + frames, None
        transport, protocol = self.transport, self.protocol
        for index, frame in enumerate(frames):
            protocol.send_binary(frame)
            for data in protocol.data_to_send():
                transport.write(data)  # pause_writing() is called in here once the buffer is full
            if self._paused and index + 1 < len(frames):
                self._held = frames[index + 1 :]
                self._woken = True
                return
        if session.closed:
            protocol.send_close(1000 if session.error is None else 1008)
        self._send()

    def keepalive(self, cutoff: float) -> None:
        """The listener's ping round: close the link if it sent nothing since
        ``cutoff`` (loop time), else ping it."""
        if self.protocol.state is not State.OPEN or self._received is not None:
            return
        if self.heard < cutoff:  # dead, or too far behind to read: no closing handshake to wait for
            self.transport.abort()
            return
        self.protocol.send_ping(b"")
        self._send()

    def go_away(self) -> None:
        """The server is stopping: close with 1001 (a device reconnects later);
        a connection still in its handshake is aborted."""
        if self.session is None or self.protocol.state is not State.OPEN:
            self.transport.abort()
            return
        self.protocol.send_close(1001, GOING_AWAY)
        self._send()

    # -- inside --------------------------------------------------------------

    def _handle(self) -> None:
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                if self._request(event):
                    return  # handed over: the transport is another protocol's now
            elif isinstance(event, Frame):
                self._frame(event)
        self._send()

    def _request(self, request: Request) -> bool:
        """Answer the opening request: plain HTTP, a route, or a sync link.
        True if the connection was handed over to a route."""
        listener, protocol = self.listener, self.protocol
        received, self._received = self._received, None
        response = None if listener.process_request is None else listener.process_request(self, request)
        if listener.stopping:
            response = protocol.reject(503, "the server is shutting down\n")
        elif response is None:
            for prefix, handler in listener.routes:
                if request.path.startswith(prefix):
                    self._cancel_timer()
                    listener.hand_over(self, bytes(received or b""), handler)
                    return True
            response = protocol.accept(request)
        protocol.send_response(response)
        # websockets' parser holds the request for the connection's life: its headers (a sync link
        # never reads them again) are about 2.5 kB of each idle link, so they go, in place.
        request.headers.clear()
        response.headers.clear()
        if protocol.state is State.OPEN:
            self._timer_again()
            if listener.ready is None:
                self._start()
            else:
                self._waiting = []
                asyncio.get_running_loop().create_task(self._start_when_ready(listener.ready))
        return False

    async def _start_when_ready(self, ready: Callable[[], Awaitable[object]]) -> None:
        try:
            await ready()
        except Exception:  # a bug or a lost deployment: this link cannot be served from an up-to-date copy
            log.exception("a link from %s could not wait for this relay's copy", self.address)
            self.transport.abort()
            return
        if self.protocol.state is State.OPEN:
            self._start()

    def _start(self) -> None:
        listener = self.listener
        session = self.session = listener.make_session()
        listener.sessions.add(self)
        waiting, self._waiting = self._waiting, None
        for message in waiting or ():
            session.receive(message, time.time())
        listener.hub.kick(self)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        data = frame.data if isinstance(frame.data, bytes) else bytes(frame.data)
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._parts = [b"t" if opcode is Opcode.TEXT else b"b", data]
                return
            self._message(data if opcode is Opcode.BINARY else data.decode())
        elif opcode is Opcode.CONT and self._parts is not None:
            self._parts.append(data)
            if frame.fin:
                (kind, *parts), self._parts = self._parts, None
                message = b"".join(parts)
                self._message(message if kind == b"b" else message.decode())
        # pings are answered by the protocol itself; a pong only shows the link lives (``heard``)

    def _message(self, message: bytes | str) -> None:
        """One whole message: to the session (a text one too: it refuses it, as it must)."""
        session = self.session
        if session is None:
            if self._waiting is not None:
                self._waiting.append(message)
            return
        session.receive(message, time.time())
        if session.state is not SessionState.OPEN:
            self._timer_again()
        self.listener.hub.kick(self)

    def _send(self) -> None:
        """Write what the protocol has to send; watch a closing connection."""
        transport = self.transport
        for data in self.protocol.data_to_send():
            if transport.is_closing():
                break
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        if self.protocol.close_expected() and not transport.is_closing():
            self._cancel_timer()
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)

    def _silent(self) -> None:
        """Nothing heard for ``HANDSHAKE_TIMEOUT`` before the link opened."""
        self._timer = None
        session = self.session
        if session is None or session.state is SessionState.CLOSED:
            self.transport.abort()  # no websocket yet (or nothing left to say)
            return
        _remote.set(self.address)
        session.fail("timeout", f"nothing heard from the other side for {HANDSHAKE_TIMEOUT} s", True)
        self.listener.hub.kick(self)

    def _timer_again(self) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._silent)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _address(peer: Any) -> str:
    """A socket's peer address as ``host:port`` (``[host]:port`` for IPv6)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer or "")
