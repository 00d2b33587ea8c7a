"""Stock Yjs clients (``y-websocket``'s ``WebsocketProvider``, unchanged, in Node.js) against a
real relay process on 127.0.0.1, with replica devices on the same documents.

Node.js and ``npm install --prefix tests/node`` (``.ci/run`` does it) are needed; without them
these tests skip, saying which is missing. The client is ``tests/node/yclient.mjs``; records
are read and written in it through ``clients/js/replica-records.mjs``.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from relay_process import RelayProcess
from replica import Replica

NODE_DIR = Path(__file__).with_name("node")
CLIENT = NODE_DIR / "yclient.mjs"


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    for package in ("y-websocket", "yjs", "ws"):
        if not (NODE_DIR / "node_modules" / package).is_dir():
            return f"the Yjs clients are not installed: npm install --prefix {NODE_DIR} (no {package})"
    return None


pytestmark = pytest.mark.skipif(_node_missing() is not None, reason=f"Yjs clients in Node.js: {_node_missing()}")


class NodeClient:
    """One ``yclient.mjs`` process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, relay: RelayProcess, document: str, token: str | None, mode: str, **spec: Any) -> NodeClient:
        spec.update(url=f"{relay.url}/yjs", doc=document, token=token, mode=mode)
        process = await asyncio.create_subprocess_exec(
            "node",
            str(CLIENT),
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def result(self, timeout: float = 30.0) -> dict[str, Any]:
        """Its one JSON line of result."""
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            self.process.kill()
            raise
        if not line:
            await self.process.wait()
            assert self.process.stderr is not None
            raise AssertionError(f"the node client said nothing: {(await self.process.stderr.read()).decode()}")
        found: dict[str, Any] = json.loads(line)
        assert "error" not in found, found["error"]
        return found

    async def close(self) -> None:
        """Close its stdin (a writer stays connected until then) and reap it."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def node_client(
    relay: RelayProcess, document: str, token: str | None, mode: str, **spec: Any
) -> AsyncIterator[NodeClient]:
    """A running ``yclient.mjs``, always reaped."""
    client = await NodeClient.start(relay, document, token, mode, **spec)
    try:
        yield client
    finally:
        await client.close()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait until ``await condition()`` holds (each check is a real round trip)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 90))


def test_two_node_clients_and_two_devices_editing_text_converge(tmp_path: Path) -> None:
    inserts = {name: [f"<{name}{i}>" for i in range(12)] for name in ("n1", "n2", "d1", "d2")}
    expected = sum(len(s) - 1 for items in inserts.values() for s in items)  # each loses its first character

    async def device(name: str, token: str, relay: RelayProcess) -> str:
        rng = random.Random(name)
        with Replica.in_memory(replica_id=f"dev-{name}") as replica:
            text = replica.doc("c7/notes").text("notes")
            for item in inserts[name]:
                at = rng.randint(0, len(text))
                with replica.doc("c7/notes").transaction():
                    text.insert(at, item)
                    text.delete(at, 1)
                status = await replica.sync(relay.url, credential=token)
                assert status.error is None, status.error

            async def caught_up() -> bool:
                await replica.sync(relay.url, credential=token)
                return len(text) == expected

            await until(caught_up)
            return str(text)

    with RelayProcess(tmp_path / "relay") as relay:
        tokens = {name: relay.issue(f"dash-{name}" if name[0] == "n" else f"dev-{name}", ["c7/*"]) for name in inserts}

        async def main() -> None:
            async with AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(
                        node_client(
                            relay,
                            "c7/notes",
                            tokens[name],
                            "text",
                            text="notes",
                            inserts=inserts[name],
                            expect=expected,
                            seed=n,
                        )
                    )
                    for n, name in enumerate(("n1", "n2"), 1)
                ]
                devices = [device(name, tokens[name], relay) for name in ("d1", "d2")]
                texts = await asyncio.gather(*(c.result() for c in clients), *devices)
            node_texts = [found["text"] for found in texts[:2]]
            assert len(set(node_texts + list(texts[2:]))) == 1, texts
            assert len(node_texts[0]) == expected  # every insert of the four, each less its deleted character

        run(main)


RECORD = {
    "n": 4,
    "safe": 2**53 - 1,
    "i64": 2**62,
    "big": 2**70,
    "neg": -(2**70),
    "f": 1.5,
    "whole": 2.0,
    "s": "Awa Ndiaye é",
    "b": b"\x00\xff",
    "l": [1, "x", None, True],
    "d": {"k": False, "n": -3},
}
#: What the node client reads of RECORD, in tagged JSON.
RECORD_IN_NODE = {
    "n": 4,
    "safe": 2**53 - 1,
    "i64": {"$bigint": str(2**62)},
    "big": {"$bigint": str(2**70)},
    "neg": {"$bigint": str(-(2**70))},
    "f": 1.5,
    "whole": 2,  # a JS number: that it was a float is lost in JS (write Float to keep it one)
    "s": "Awa Ndiaye é",
    "b": {"$bytes": "00ff"},
    "l": [1, "x", None, True],
    "d": {"k": False, "n": -3},
}


def test_records_written_by_a_device_read_correctly_in_node(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "relay") as relay:
        device_token, dash_token = relay.issue("dev-a", ["c7/*"]), relay.issue("dash", ["c7/*"])

        async def main() -> None:
            with Replica.in_memory(replica_id="dev-a") as replica:
                replica.doc("c7/h").records("households").put("h1", RECORD)
                assert (await replica.sync(relay.url, credential=device_token)).error is None
            async with node_client(
                relay, "c7/h", dash_token, "read-record", collection="households", id="h1"
            ) as client:
                assert (await client.result())["fields"] == dict(sorted(RECORD_IN_NODE.items()))

        run(main)


def test_records_written_in_node_read_correctly_on_a_device(tmp_path: Path) -> None:
    fields = dict(RECORD_IN_NODE, whole={"$float": 2})
    with RelayProcess(tmp_path / "relay") as relay:
        device_token, dash_token = relay.issue("dev-a", ["c7/*"]), relay.issue("dash", ["c7/*"])

        async def main() -> None:
            plain = {"record": {"plain": "not a record"}, "field": {"raw": 3}}
            spec = {"collection": "households", "id": "h2", "fields": fields, "plain": plain}
            async with node_client(relay, "c7/h", dash_token, "write-record", **spec) as client:
                assert (await client.result())["written"]
                with Replica.in_memory(replica_id="dev-a") as replica:
                    households = replica.doc("c7/h").records("households")

                    async def arrived() -> bool:
                        await replica.sync(relay.url, credential=device_token)
                        return households.get("h2") is not None and "plain" in households

                    await until(arrived)
                    record = households.get("h2")
                    assert record == RECORD  # exact: ints stay ints, floats floats, bytes bytes; "raw" skipped
                    assert record is not None and type(record["whole"]) is float
                    assert households.get("plain") is None  # a plain value is no record (its id is listed)
                    assert households.ids() == ["h2", "plain"]

        run(main)


@pytest.mark.parametrize(
    ("scope", "token", "code", "reason"),
    [
        (["c7/*"], "not-a-credential", 4401, "credential_invalid"),
        (["c8/*"], None, 4403, "document_out_of_scope"),
    ],
)
def test_a_node_client_with_a_bad_or_out_of_scope_token_is_refused(
    tmp_path: Path, scope: list[str], token: str | None, code: int, reason: str
) -> None:
    with RelayProcess(tmp_path / "relay") as relay:
        issued = relay.issue("dash", scope)

        async def main() -> None:
            async with node_client(relay, "c7/notes", token or issued, "refused") as client:
                found = await client.result()
            assert found["code"] == code and found["reason"].startswith(reason), found
            assert found["denied"] is not None and reason in found["denied"]  # y-protocols' permission denied

        run(main)


def test_garbage_on_the_yjs_endpoint_closes_that_connection_and_the_relay_keeps_serving(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "relay") as relay:
        token = relay.issue("dash", ["c7/*"])

        async def main() -> None:
            for garbage in (b"\x00\x02\xff\xff\xff\xff\x0f", b"\x00\x02\x03\x05\xff\xff", b"\x2a", "hello"):
                async with connect(f"{relay.url}/yjs/c7/notes?token={token}") as ws:
                    await ws.send(garbage)
                    await ws.wait_closed()
                    assert ws.close_code in (4400, 4413), (garbage, ws.close_code, ws.close_reason)
            async with node_client(
                relay, "c7/notes", token, "text", text="notes", inserts=["<ok>"], expect=3
            ) as client:
                assert (await client.result())["text"] == "ok>"

        run(main)
        assert relay.running
