"""The server side's edge (``replica.listener``) on real sockets on 127.0.0.1:
keepalive pings, fragmented and text messages, the handshake's deadline,
plain HTTP answers, and sessions fed and written without a task per link."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from replica import listener, wire
from replica.credentials import SigningKey
from replica.engine import Engine
from replica.session import Session
from replica.store.lmdb import LmdbStore
from replica.trust import RelayAuthority

DOC = "c7/households"


@asynccontextmanager
async def _relay(
    tmp_path: Path, process_request: listener.ProcessRequest | None = None
) -> AsyncIterator[tuple[listener.Listener, Callable[[str], str]]]:
    key = SigningKey.generate()
    authority = RelayAuthority("relay-1", key)
    engine = Engine(LmdbStore(tmp_path / "relay"), replica_id="relay-1")

    def session() -> Session:
        return Session(engine, role="relay", initiator=False, authorize=authority.authorize)

    def token(name: str) -> str:
        now = time.time()
        issued: str = key.issue(issuer="relay-1", replica_id=name, documents=["c7/*"], expires_at=now + 3600, now=now)
        return issued

    server = listener.Listener(engine, session, lambda s, e: None, process_request=process_request)
    await server.start("127.0.0.1", 0)
    try:
        yield server, token
    finally:
        await server.stop()
        engine.close()


def _hello(name: str, token: str) -> bytes:
    return wire.encode(wire.Hello(replica_id=name, role="device", credential=token, documents={DOC: {}}, mode="live"))


async def _live_link(url: str, name: str, token: str) -> ClientConnection:
    """A caught-up live link (hello -> welcome, done <-> done); the client
    answers pings itself and sends none of its own."""
    ws = await connect(url, ping_interval=None, compression=None)
    await ws.send(_hello(name, token))
    assert isinstance(wire.decode(await ws.recv(decode=False)), wire.Welcome)
    await ws.send(wire.encode(wire.Done()))
    assert isinstance(wire.decode(await ws.recv(decode=False)), wire.Done)
    return ws


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_a_link_that_stops_answering_pings_is_closed_and_one_that_answers_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener, "PING_INTERVAL", 0.2)

    async def main() -> None:
        async with _relay(tmp_path) as (server, token):
            alive = await _live_link(server.url, "dev-a", token("dev-a"))
            deaf = await _live_link(server.url, "dev-d", token("dev-d"))
            assert server.links == 2
            deaf.transport.pause_reading()  # it hears no ping, so it answers none: as a half-open link
            await _until(lambda: server.links == 1, timeout=3.0)
            await asyncio.sleep(1.0)  # five more ping rounds: the one answering stays
            assert server.links == 1 and server.connections == 1
            await alive.send(wire.encode(wire.Done()))  # the link still works: the relay did not drop it
            assert alive.state.name == "OPEN"
            await alive.close()
            deaf.transport.abort()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_fragmented_hello_is_one_message_and_a_text_message_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with _relay(tmp_path) as (server, token):
            ws = await connect(server.url, ping_interval=None, compression=None)
            hello = _hello("dev-f", token("dev-f"))
            await ws.send([hello[:7], hello[7:20], hello[20:]])  # three frames of one message
            assert isinstance(wire.decode(await ws.recv(decode=False)), wire.Welcome)
            await ws.close()

            ws = await connect(server.url, ping_interval=None, compression=None)
            await ws.send("hello")  # a text message: the protocol's frames are binary
            refusal = wire.decode(await ws.recv(decode=False))
            assert isinstance(refusal, wire.Error) and refusal.code == "bad_frame", refusal
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1008

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_connection_silent_before_its_hello_is_told_and_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener, "HANDSHAKE_TIMEOUT", 0.3)

    async def main() -> None:
        async with _relay(tmp_path) as (server, _):
            ws = await connect(server.url, ping_interval=None, compression=None)
            refusal = wire.decode(await asyncio.wait_for(ws.recv(decode=False), 5))
            assert isinstance(refusal, wire.Error) and refusal.code == "timeout" and refusal.retryable, refusal
            await asyncio.wait_for(ws.wait_closed(), 5)
            # a TCP connection that never finishes its request is aborted at the same deadline
            reader, writer = await asyncio.open_connection("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            await _until(lambda: server.connections == 0)
            writer.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_plain_http_is_answered_by_process_request_and_the_rest_is_refused(tmp_path: Path) -> None:
    def health(connection: Any, request: Request) -> Response | None:
        if request.path != "/health":
            return None
        return Response(200, "OK", Headers([("Content-Length", "3"), ("Connection", "close")]), b"ok\n")

    async def get(port: int, path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer

    async def main() -> None:
        async with _relay(tmp_path, health) as (server, _):
            port = int(server.url.rsplit(":", 1)[1])
            answer = await get(port, "/health")
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok\n"), answer
            refused = await get(port, "/elsewhere")  # not a websocket handshake: websockets' own 426
            assert refused.startswith(b"HTTP/1.1 426 "), refused
            await _until(lambda: server.connections == 0)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_an_idle_live_link_costs_no_task(tmp_path: Path) -> None:
    """The point of the callback edge: idle links hold no task (no reader,
    writer or keepalive coroutine each), so their memory is their state."""

    async def main() -> None:
        async with _relay(tmp_path) as (server, token):
            before = len(asyncio.all_tasks())
            links = [await _live_link(server.url, f"dev-{i}", token(f"dev-{i}")) for i in range(20)]
            await asyncio.sleep(0.1)
            assert server.links == 20
            assert len(asyncio.all_tasks()) == before, "the server started tasks for idle links"
            await asyncio.gather(*(ws.close() for ws in links))

    asyncio.run(asyncio.wait_for(main(), 30))
