"""The relay's y-protocols endpoint, in process: a Python y-protocols client
(pycrdt ``Doc`` + ``replica.yprotocol``) against a running :class:`Relay`.
The same scenarios with real ``y-websocket`` clients are in test_yjs_node.py."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from replica import Replica, tls, yprotocol
from replica.credentials import DeviceKey
from replica.relay import Relay
from replica.trust import yjs_origin
from tls_certs import make_pki

HOUR = 3600.0


class YClient:
    """A minimal y-protocols client: a pycrdt ``Doc`` kept in sync over one websocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.doc: Doc[Any] = Doc()
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        self.awareness: dict[int, str] = {}
        self.denied: str | None = None
        self._remote = False
        self.doc.observe(self._local_update)
        self.reader = asyncio.create_task(self._read())

    def _local_update(self, event: Any) -> None:
        if not self._remote:
            asyncio.get_running_loop().create_task(self.ws.send(yprotocol.update(event.update)))

    async def start(self) -> None:
        await self.ws.send(yprotocol.sync_step1(self.doc.get_state()))

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, bytes)
                parsed = yprotocol.parse(message)
                if isinstance(parsed, yprotocol.SyncStep1):
                    await self.ws.send(yprotocol.sync_step2(self.doc.get_update(parsed.state_vector)))
                elif isinstance(parsed, (yprotocol.SyncStep2, yprotocol.Update)):
                    self._remote = True
                    try:
                        self.doc.apply_update(parsed.update)
                    finally:
                        self._remote = False
                    self.changed.set()
                    if isinstance(parsed, yprotocol.SyncStep2):
                        self.synced.set()
                elif isinstance(parsed, yprotocol.Awareness):
                    for entry in parsed.states:
                        self.awareness[entry.client] = entry.state
                    self.changed.set()
                elif isinstance(parsed, yprotocol.PermissionDenied):
                    self.denied = parsed.reason
        except ConnectionClosed:
            return

    def text(self, name: str) -> Text:
        return self.doc.get(name, type=Text)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds, polling the event loop (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


def yjs_url(relay: Relay, document: str, token: str | None) -> str:
    query = "" if token is None else f"?token={token}"
    return f"{relay.url}/yjs/{document}{query}"


@asynccontextmanager
async def synced_client(
    relay: Relay, document: str, token: str, *, ssl: ssl_module.SSLContext | None = None
) -> AsyncIterator[YClient]:
    """A client connected to ``document`` that has received the relay's state."""
    async with connect(yjs_url(relay, document, token), ssl=ssl) as ws:
        client = YClient(ws)
        await client.start()
        await asyncio.wait_for(client.synced.wait(), 10)
        yield client


def test_a_yjs_client_edit_becomes_a_delta_and_reaches_a_device(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path, port=0) as relay:
            token = relay.issue_credential("dash", ["c7/*"], expires_at=time.time() + HOUR)
            async with synced_client(relay, "c7/notes", token) as client:
                client.text("text:notes").insert(0, "hello")
                assert relay.replica is not None
                engine = relay.replica
                await until(lambda: engine.version_vector("c7/notes").get(yjs_origin("dash"), 0) == 1)
                device_token = relay.issue_credential("dev-a", ["c7/*"], expires_at=time.time() + HOUR)
                with Replica.in_memory(replica_id="dev-a") as device:
                    await device.sync(relay.url, credential=device_token)
                    assert str(device.doc("c7/notes").text("notes")) == "hello"
                    device.doc("c7/notes").text("notes").insert(5, " world")
                    await device.sync(relay.url, credential=device_token)
                await until(lambda: str(client.text("text:notes")) == "hello world")

    run(main)


def test_a_yjs_client_syncs_over_wss_with_a_device(tmp_path: Path) -> None:
    """The relay reads a Yjs client's request on its own connection, then
    hands the TLS transport to websockets' connection for the endpoint."""
    pki = make_pki(tmp_path / "pki")

    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0, tls=tls.server_context(pki.cert, pki.key)) as relay:
            assert relay.url.startswith("wss://")
            trusted = tls.client_context(pki.ca)
            token = relay.issue_credential("dash", ["c7/*"], expires_at=time.time() + HOUR)
            async with synced_client(relay, "c7/notes", token, ssl=trusted) as client:
                client.text("text:notes").insert(0, "over tls")
                device_token = relay.issue_credential("dev-a", ["c7/*"], expires_at=time.time() + HOUR)
                with Replica.in_memory(replica_id="dev-a") as device:
                    await until(lambda: relay.replica is not None and bool(relay.replica.version_vector("c7/notes")))
                    done = await device.sync(relay.url, credential=device_token, tls=trusted)
                    assert done.unsynced == 0 and str(device.doc("c7/notes").text("notes")) == "over tls", done

    run(main)


def test_a_late_client_gets_the_state_and_awareness_is_relayed(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path, port=0) as relay:
            token = relay.issue_credential("dash", ["c7/*"], expires_at=time.time() + HOUR)
            async with synced_client(relay, "c7/notes", token) as a:
                a.text("text:notes").insert(0, "abc")
                await a.ws.send(yprotocol.awareness([yprotocol.AwarenessState(7, 1, '{"user":"a"}')]))
                await until(lambda: a.awareness.get(7) == '{"user":"a"}')  # echoed to the sender too
                async with synced_client(relay, "c7/notes", token) as b:
                    assert str(b.text("text:notes")) == "abc"
                    await until(lambda: b.awareness.get(7) == '{"user":"a"}')
                    b.text("text:notes").insert(3, "d")
                    await until(lambda: str(a.text("text:notes")) == "abcd")
                await until(lambda: relay.yjs is not None and relay.yjs.connections == 1)

    run(main)


@pytest.mark.parametrize(
    ("documents", "token_for", "code", "reason"),
    [
        (["c7/*"], None, 4401, "credential_missing"),
        (["c7/*"], "garbage", 4401, "credential_invalid"),
        (["c8/*"], "dash", 4403, "document_out_of_scope"),
    ],
)
def test_a_bad_or_out_of_scope_token_is_refused(
    tmp_path: Path, documents: list[str], token_for: str | None, code: int, reason: str
) -> None:
    async def main() -> None:
        async with Relay(tmp_path, port=0) as relay:
            token = relay.issue_credential("dash", documents, expires_at=time.time() + HOUR)
            presented = token if token_for == "dash" else token_for
            async with connect(yjs_url(relay, "c7/notes", presented)) as ws:
                client = YClient(ws)
                await ws.wait_closed()
                await client.reader
                assert ws.close_code == code
                assert ws.close_reason is not None and ws.close_reason.startswith(reason)
                assert client.denied is not None and client.denied.startswith(reason)
            assert relay.replica is not None and relay.replica.documents() == []

    run(main)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x02\x05\x01\x02",  # an update field longer than the message
        b"\x09",  # an unknown message type
        b"\x00\x02\x04\x05\xff\xff\xff",  # an update that is no Yjs update
        "text",  # a text frame
    ],
)
def test_garbage_closes_that_connection_only(tmp_path: Path, garbage: bytes | str) -> None:
    async def main() -> None:
        async with Relay(tmp_path, port=0) as relay:
            token = relay.issue_credential("dash", ["c7/*"], expires_at=time.time() + HOUR)
            async with synced_client(relay, "c7/notes", token) as good:
                async with connect(yjs_url(relay, "c7/notes", token)) as bad:
                    await bad.send(garbage)
                    await bad.wait_closed()
                    assert bad.close_code == 4400
                good.text("text:notes").insert(0, "still here")
                assert relay.replica is not None
                engine = relay.replica
                await until(lambda: str(engine.doc("c7/notes").text("notes")) == "still here")
                assert engine.version_vector("c7/notes") == {yjs_origin("dash"): 1}

    run(main)


def test_a_device_may_not_use_the_yjs_suffix(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path, port=0) as relay:
            token = relay.issue_credential("dash.yjs", ["*"], expires_at=time.time() + HOUR)
            with Replica.in_memory(replica_id="dash.yjs") as device:
                device.doc("c7/notes").text("notes").insert(0, "x")
                status = await device.sync(relay.url, credential=token)
                assert status.error is not None and status.error.code == "replica_id_clash"

    run(main)


def test_a_bound_or_expired_credential_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path, port=0) as relay:
            now = time.time()
            bound = relay.issue_credential(
                "dash", ["c7/*"], expires_at=now + HOUR, device_key=DeviceKey.generate().public_raw
            )
            expired = relay.issue_credential("dash", ["c7/*"], expires_at=now - 1, now=now - HOUR)
            for token, reason in ((bound, "credential_invalid"), (expired, "credential_expired")):
                async with connect(yjs_url(relay, "c7/notes", token)) as ws:
                    await ws.wait_closed()
                    assert ws.close_code == 4401
                    assert ws.close_reason is not None and ws.close_reason.startswith(reason)

    run(main)


def test_stopping_the_relay_closes_yjs_clients_with_1001(tmp_path: Path) -> None:
    async def main() -> None:
        relay = Relay(tmp_path, port=0)
        await relay.start()
        token = relay.issue_credential("dash", ["c7/*"], expires_at=time.time() + HOUR)
        async with synced_client(relay, "c7/notes", token) as client:
            client.text("text:notes").insert(0, "kept")
            assert relay.replica is not None
            engine = relay.replica
            await until(lambda: engine.version_vector("c7/notes") == {yjs_origin("dash"): 1})
            await relay.stop()
            await client.ws.wait_closed()
            assert client.ws.close_code == 1001
        async with Relay(tmp_path, port=0) as again:
            assert again.replica is not None
            assert str(again.replica.doc("c7/notes").text("notes")) == "kept"

    run(main)
